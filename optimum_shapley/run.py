"""The whole pruning job as one function, for Python users and the CLI alike: ``prune_layers``.

It stages the run in ``OUTPUT.partial`` (whose mask-evaluation cache a killed run resumes from), evaluates the dense
model when asked, prunes, evaluates again, recovers with LoRA when asked, saves, makes the folder ``OUTPUT`` in one
rename (a crash leaves no output or a whole one) and pushes to the Hub when asked. ``cli.py`` only parses options,
loads the model, calls this and prints.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .atomic import publish, staged_folder
from .config import ShapleyPruningConfig
from .result import PruningResult

__all__ = [
    "PruneOutcome",
    "RecoverOutcome",
    "check_output_folder",
    "check_writable",
    "prune_layers",
    "recover_folder",
    "run_folder",
]

logger = logging.getLogger(__name__)


@dataclass
class PruneOutcome:
    """What ``prune_layers`` did: the result, where it lies, what it measured and pushed."""

    result: PruningResult
    output_dir: str
    pushed: dict[str, str] = field(default_factory=dict)
    measurements: dict[str, Any] = field(default_factory=dict)  # label -> EvaluationSuite.run output
    written: bool = True  # False on the processes of a distributed run that do not write


def run_folder(output: str) -> str:
    """Where ``prune_layers`` builds ``output`` (and keeps the mask-evaluation cache) until the run is complete."""
    return output + ".partial"


def check_output_folder(path: str, overwrite: bool) -> None:
    """Refuse, before any work, an output that is a file, cannot be created, or holds an earlier run (unless
    ``overwrite``; a folder holding only a mask-evaluation cache is a resume point, not an earlier run)."""
    from .evaluation import CACHE_FILE_NAME

    if os.path.isfile(path):
        raise ValueError(f"--output {path} is a file, expected a folder")
    check_writable(path)
    if os.path.isdir(path):
        leftovers = set(os.listdir(path)) - {CACHE_FILE_NAME}
        if leftovers and not overwrite:
            raise ValueError(
                f"output folder {path} is not empty; pass --overwrite to replace its contents "
                "(the mask-evaluation cache is kept)"
            )
    work = run_folder(path)
    if os.path.exists(work) and not os.path.isdir(work):
        raise ValueError(f"{work} (where the run is built) is a file; move it away")


def check_writable(path: str) -> None:
    """Fail now, not after hours of evaluations, if ``path`` cannot be created: try it in its nearest existing
    ancestor (a real probe: permission bits say nothing for root, a read-only mount or a path under a file)."""
    ancestor = os.path.dirname(path)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(f"--output {path} cannot be created: {ancestor} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".optimum-shapley-probe-", dir=ancestor))
    except OSError as error:
        raise ValueError(
            f"--output {path} cannot be created: {ancestor} is not writable ({error.strerror}); choose another folder"
        ) from error


def _seed_cache(output: str, work: str, cache_name: str) -> int:
    """Start ``work`` from the cache of an existing ``output`` (``--overwrite``, or a folder holding only a cache);
    returns the size of the cache ``work`` starts with, so a failure can tell new evaluations from copied ones."""
    source, target = os.path.join(output, cache_name), os.path.join(work, cache_name)
    if os.path.isfile(source) and not os.path.exists(target):
        from .evaluation import MaskEvaluationCache

        MaskEvaluationCache(output, "", persist=False)  # a damaged cache is refused under its own name
        os.makedirs(work, exist_ok=True)
        shutil.copyfile(source, target + ".tmp")
        os.replace(target + ".tmp", target)
    return os.path.getsize(target) if os.path.isfile(target) else 0


def prune_layers(
    model: Any,
    tokenizer: Any,
    config: ShapleyPruningConfig,
    output_dir: str | os.PathLike,
    *,
    surrogate: Any = None,
    overwrite: bool = False,
    batch_size: int = 8,
    evaluation: Any = None,
    recovery: dict[str, Any] | None = None,
    push_to_hub: str | None = None,
    surrogate_repo: str | None = None,
    private: bool = False,
    training_arguments: dict[str, Any] | None = None,
    show_progress: bool = True,
    announce: Callable[[str], None] | None = None,
) -> PruneOutcome:
    """Prune ``model`` with ``config`` and write the pruned model, card, plots, results and surrogate to
    ``output_dir``, resuming from its cache when an earlier run was interrupted.

    Args:
        model, tokenizer: the loaded model (``load_causal_lm`` or ``from_pretrained``) and its tokenizer.
        config: the ``ShapleyPruningConfig`` of the run.
        output_dir: the run folder; it appears complete at the end, built in ``output_dir + ".partial"`` until then.
        surrogate: a trained ``ShapleySurrogate`` to reuse.
        overwrite: replace an existing run in ``output_dir`` (its mask-evaluation cache is carried over).
        batch_size: calibration blocks per forward pass.
        evaluation: an ``EvaluationSuite`` (prepared) run on the dense, pruned and recovered model.
        recovery: ``ShapleyLayerPruner.recover`` keywords (``dataset``, ``max_steps``, ...) for LoRA recovery.
        push_to_hub, surrogate_repo, private: upload the result (and its surrogate) to these repositories.
        training_arguments: more ``TrainingArguments`` fields (``report_to``, ``run_name``, ...).
        show_progress: progress bars.
        announce: called with a line before each stage (the CLI prints them; default: ``logging.info``).
    """
    from .evaluation import CACHE_FILE_NAME
    from .pruner import ShapleyLayerPruner, pruning_arguments

    output = os.path.abspath(os.fspath(output_dir))
    check_output_folder(output, overwrite)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    work = run_folder(output)
    say = announce or logger.info
    measurements: dict[str, Any] = {}
    if evaluation is not None:
        say("Evaluating the dense model ...")
        measurements["dense"] = evaluation.run(model, tokenizer, show_progress=show_progress)

    created = not os.path.exists(work)
    seeded = 0  # bytes of cache copied in from an existing output: not new work to resume from
    main = True
    try:
        args = pruning_arguments(
            work, batch_size, config.seed, disable_tqdm=not show_progress, **(training_arguments or {})
        )
        main = args.process_index == 0  # under `accelerate launch`, only the main process writes
        pruner = ShapleyLayerPruner(
            model=model, args=args, pruning_config=config, processing_class=tokenizer, surrogate=surrogate
        )
        if main:
            seeded = _seed_cache(output, work, CACHE_FILE_NAME)
        result = pruner.prune(evaluate_calibration=True)
        if evaluation is not None:
            say("Evaluating the pruned model ...")
            measurements["pruned"] = evaluation.run(pruner.model, tokenizer, show_progress=show_progress)
        if recovery is not None:
            say(f"Recovering with LoRA on {recovery['dataset']} ...")
            pruner.recover(**recovery)
            if evaluation is not None:
                say("Evaluating the recovered model ...")
                measurements["recovered"] = evaluation.run(pruner.model, tokenizer, show_progress=show_progress)
        if evaluation is not None:
            result.evaluation = {"protocol": evaluation.protocol(), "results": measurements}
        pruner.save_pretrained(work, adapter_base_model=output)  # a kept adapter's base is the final folder
        if main:
            publish(work, output)
        pruner.accelerator.wait_for_everyone()
        pushed: dict[str, str] = {}
        if push_to_hub:
            pushed = pruner.push_to_hub(repo_id=push_to_hub, surrogate_repo_id=surrogate_repo, private=private)
    except BaseException:
        # a folder this run created that holds no new evaluations to resume from is removed again
        cache = os.path.join(work, CACHE_FILE_NAME)
        fresh = os.path.isfile(cache) and os.path.getsize(cache) > seeded
        if main and created and os.path.isdir(work) and not fresh:
            shutil.rmtree(work, ignore_errors=True)
        raise
    return PruneOutcome(result, output, pushed or {}, measurements, written=main)


@dataclass
class RecoverOutcome:
    """What ``recover_folder`` did: the recovery, where it lies, and the file that records it."""

    recovery: Any  # recovery.RecoveryResult
    output_dir: str
    record: str  # shapley_results.json of a run folder, or recovery.json
    adapter_dir: str


def recover_folder(
    model_path: str,
    output_dir: str | os.PathLike,
    recovery: dict[str, Any],
    *,
    dtype: str = "float32",
    gguf_file: str | None = None,
    overwrite: bool = False,
    announce: Callable[[str], None] | None = None,
) -> RecoverOutcome:
    """LoRA-heal the model at ``model_path`` (``recovery``: ``recover()`` keywords with ``dataset``) and write it to
    ``output_dir``, whole or not at all: merged, or base weights + ``adapter/``. A pruned run folder keeps its
    results, plots and surrogate, and its card gains a *Recovery* section."""
    import json

    from .hub import write_run_folder
    from .loading import load_causal_lm, torch_dtype
    from .pruner import SURROGATE_DIR
    from .recovery import ADAPTER_DIR, recover, save_model_and_adapter
    from .result import RESULTS_NAME

    say = announce or logger.info
    if os.path.isfile(os.path.join(model_path, ADAPTER_DIR, "adapter_config.json")):
        raise ValueError(
            f"{model_path} keeps a LoRA adapter in {ADAPTER_DIR}/: load it with PEFT and merge it first (see its card)"
        )
    output = os.path.abspath(os.fspath(output_dir))
    check_output_folder(output, overwrite)
    is_run = os.path.isfile(os.path.join(model_path, RESULTS_NAME))
    if is_run:  # read everything first: a broken run folder fails before any training
        from .surrogate import ShapleySurrogate

        result = PruningResult.from_json_file(os.path.join(model_path, RESULTS_NAME))
        pruning_config = ShapleyPruningConfig.from_pretrained(model_path)
        surrogate_path = os.path.join(model_path, SURROGATE_DIR)
        surrogate = ShapleySurrogate.from_pretrained(surrogate_path) if os.path.isdir(surrogate_path) else None
    say(f"Loading {model_path} ...")
    model, tokenizer = load_causal_lm(model_path, gguf_file=gguf_file, dtype=torch_dtype(dtype))
    options = dict(recovery)
    dataset = options.pop("dataset")
    healed = recover(model, tokenizer, dataset, **options)

    with staged_folder(output) as staging:
        if is_run:
            record = healed.to_dict()
            if result.recovery:
                record["previous"] = result.recovery
            result.recovery = record
            write_run_folder(
                staging,
                model=healed.model,
                tokenizer=tokenizer,
                pruning_config=pruning_config,
                result=result,
                surrogate=surrogate,
                surrogate_dir=SURROGATE_DIR,
                adapter_base_model=output,
            )
        else:
            if healed.merged:
                healed.model.save_pretrained(staging)
            else:
                save_model_and_adapter(healed.model, staging, output)
            tokenizer.save_pretrained(staging)
            with open(os.path.join(staging, "recovery.json"), "w", encoding="utf-8") as f:
                json.dump(healed.to_dict(), f, indent=2)
                f.write("\n")
    record_path = os.path.join(output, RESULTS_NAME if is_run else "recovery.json")
    return RecoverOutcome(healed, output, record_path, ADAPTER_DIR)


def evaluate_folder(
    model_path: str,
    suite: Any,
    *,
    dtype: str = "float32",
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    show_progress: bool = True,
    announce: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the prepared ``EvaluationSuite`` on the model at ``model_path`` (with its kept LoRA adapter, if any):
    ``{"model", "protocol", "results": {label: measurement}}``, the record ``evaluate --output-json`` writes."""

    from .loading import load_causal_lm, torch_dtype
    from .recovery import ADAPTER_DIR

    say = announce or logger.info
    say(f"Loading {model_path} ...")
    model, tokenizer = load_causal_lm(
        model_path,
        gguf_file=gguf_file,
        dtype=torch_dtype(dtype),
        trust_remote_code=trust_remote_code,
    )
    adapter = os.path.join(model_path, ADAPTER_DIR)
    if os.path.isfile(os.path.join(adapter, "adapter_config.json")):  # a recovery that kept its LoRA adapter
        from peft import PeftModel

        say(f"Applying the LoRA adapter in {adapter}")
        model = PeftModel.from_pretrained(model, adapter)
    measurement = suite.run(model, tokenizer, show_progress=show_progress)
    label = os.path.basename(os.path.normpath(model_path)) or model_path
    return {"model": model_path, "protocol": suite.protocol(), "results": {label: measurement}}
