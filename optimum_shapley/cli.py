"""The ``optimum-shapley`` command line (also ``optimum-cli shapley``).

``optimum-shapley prune MODEL --remove K --output DIR`` runs the whole job. Every ``ShapleyPruningConfig`` field is
an option (generated from the dataclass, so ``--help`` documents them all). Bad input ends with one line on stderr
and a non-zero exit, and nothing half-written is left behind; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from transformers import HfArgumentParser

from .cli_arguments import (
    RunArguments,
    leading_config_file,
    prune_argument_parser,
    prune_arguments,
    read_config_file,
)
from .config import ShapleyPruningConfig
from .run import check_output_folder, check_writable, prune_layers

__all__ = [
    "RUNNERS",
    "add_evaluate_arguments",
    "add_prune_arguments",
    "add_recover_arguments",
    "build_parser",
    "main",
    "run_evaluate",
    "run_prune",
    "run_recover",
    "run_with_errors_reported",
]


def command_parser(prog: str = "", **kwargs: Any) -> argparse.ArgumentParser:
    """argparse's ``parser_class`` for the sub-commands, ours and optimum-cli's: ``prune`` gets the public
    ``HfArgumentParser`` over its dataclasses (``cli_arguments.py``), the others a plain parser they fill."""
    if prog.split()[-1:] == ["prune"]:
        return prune_argument_parser(prog=prog, **kwargs)
    kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
    return argparse.ArgumentParser(prog=prog, **kwargs)


def add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    """``prune``'s options: the parser ``command_parser`` built already holds them (dataclass fields), so this
    only checks that it is that parser (optimum-cli's registration calls it like the other sub-commands')."""
    if not isinstance(parser, HfArgumentParser) or RunArguments not in parser.dataclass_types:
        raise TypeError("the prune parser is built by optimum_shapley.cli.command_parser (argparse parser_class)")


def add_recover_arguments(parser: argparse.ArgumentParser) -> None:
    """All options of ``recover`` (shared by ``optimum-shapley recover`` and ``optimum-cli shapley recover``)."""
    parser.add_argument(
        "model", help="A pruned run folder (its card and results are updated), or any model optimum-shapley loads."
    )
    parser.add_argument(
        "--dataset",
        required=True,
        help="Training text: Hub dataset id, local .txt/.json/.jsonl/.parquet file, or 'embedded'.",
    )
    parser.add_argument("--output", "-o", required=True, help="Folder for the recovered model.")
    parser.add_argument("--steps", type=int, default=200, help="Training steps.")
    parser.add_argument("--lr", type=float, default=1e-4, help="Learning rate (the paper's).")
    parser.add_argument("--batch-size", type=int, default=8, help="Blocks per training step.")
    parser.add_argument("--seq-length", type=int, default=128, help="Tokens per training block.")
    parser.add_argument(
        "--keep-adapter", action="store_true", help="Save the LoRA adapter in adapter/ instead of merging it."
    )
    parser.add_argument("--dataset-config", default=None, help="Hub dataset config name.")
    parser.add_argument("--dataset-split", default="train", help="Hub dataset split.")
    parser.add_argument("--text-column", default="text", help="Column holding the text (json, jsonl, parquet, Hub).")
    parser.add_argument("--seed", type=int, default=0, help="Seeds the LoRA initialisation and the data.")
    parser.add_argument("--overwrite", action="store_true", help="Replace the contents of an existing --output.")
    parser.add_argument("--gguf-file", default=None, help="GGUF file name inside MODEL (a folder or Hub repo).")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"], help="Weights dtype."
    )
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    parser.add_argument("--debug", action="store_true", help="Show full tracebacks on errors.")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """All options of ``evaluate`` (shared by ``optimum-shapley evaluate`` and ``optimum-cli shapley evaluate``)."""
    from .evaluation import PERPLEXITY_SOURCES, TASKS

    parser.add_argument("model", help="Hub model id, local or pruned folder, .gguf file, or a packaged alias.")
    parser.add_argument(
        "--ppl",
        metavar="TEXTS",
        default=None,
        help=f"Perplexity on these texts, comma-separated: {', '.join(PERPLEXITY_SOURCES)} or a .txt/.json/.jsonl file.",
    )
    parser.add_argument(
        "--tasks", metavar="TASKS", default=None, help=f"Zero-shot tasks, comma-separated: {', '.join(TASKS)}."
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="Folder with the release files (wikitext-2-raw/, ptb/, c4/, zeroshot/<task>/); default: the Hub.",
    )
    parser.add_argument("--limit", type=int, default=None, help="First N items of each task (quick runs).")
    parser.add_argument("--seq-length", type=int, default=128, help="Perplexity window in tokens.")
    parser.add_argument("--max-windows", type=int, default=None, help="First N perplexity windows (default: all).")
    parser.add_argument("--output-json", default=None, help="Write every number and the protocol to this file.")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "native", "lm-eval"],
        help="Zero-shot scorer: lm-eval (the harness itself), native (ours, same numbers), auto (lm-eval if installed).",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="Windows or requests per forward pass.")
    parser.add_argument("--gguf-file", default=None, help="GGUF file name inside MODEL (a folder or Hub repo).")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"], help="Weights dtype."
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="Run modelling code shipped with the checkpoint."
    )
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    parser.add_argument("--debug", action="store_true", help="Show full tracebacks on errors.")


def build_parser() -> argparse.ArgumentParser:
    """The ``optimum-shapley`` parser; ``parser.command_parsers`` maps each sub-command to its parser."""
    parser = argparse.ArgumentParser(
        prog="optimum-shapley",
        description="Remove decoder layers from a causal LM, ranked by surrogate-assisted Shapley values.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=command_parser)
    prune = subparsers.add_parser(
        "prune",
        help="Estimate layer contributions, remove the least valuable layers and save the model "
        "(`prune MODEL --remove K --output DIR`, or `prune run.yaml`).",
    )
    add_prune_arguments(prune)
    recover = subparsers.add_parser(
        "recover",
        help="Heal a (pruned) model with a short LoRA fine-tune and save it merged or with its adapter.",
    )
    add_recover_arguments(recover)
    evaluate = subparsers.add_parser(
        "evaluate",
        help="Held-out perplexity and zero-shot accuracy (lm-evaluation-harness protocol) of a model.",
    )
    add_evaluate_arguments(evaluate)
    parser.command_parsers = {"prune": prune, "recover": recover, "evaluate": evaluate}
    return parser


def _check_hub_access(repo_id: str, surrogate_repo: str | None) -> None:
    """Refuse ``--push-to-hub`` before any work when the upload could not happen."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import validate_repo_id

    for name in (repo_id, surrogate_repo or f"{repo_id}-shapley-surrogate"):
        validate_repo_id(name)
    if get_token() is None:
        raise ValueError(
            "--push-to-hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN (checked now so that a "
            "long run does not end without its upload)"
        )
    if constants.HF_HUB_OFFLINE:
        raise ValueError("--push-to-hub cannot upload while HF_HUB_OFFLINE=1 is set; unset it to push")


def _print_summary(rows: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows)
    print()
    print("optimum-shapley summary")
    print("-" * (width + 40))
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def _recovery_kwargs(
    *,
    flag: str,
    dataset: str,
    steps: int,
    lr: float,
    batch_size: int,
    seq_length: int,
    keep_adapter: bool,
    dataset_config: str | None,
    text_column: str,
    split: str,
    seed: int,
    show_progress: bool,
) -> dict:
    """Validate recovery options (``flag`` is the option prefix, for messages) and return ``recover()`` keywords."""
    from .recovery import check_recovery_source

    for name, value, minimum in (("steps", steps, 1), ("batch-size", batch_size, 1), ("seq-length", seq_length, 2)):
        if value < minimum:
            raise ValueError(f"{flag}{name} must be at least {minimum}, got {value}")
    if not lr > 0:
        raise ValueError(f"{flag}lr must be positive, got {lr}")
    check_recovery_source(dataset)
    return {
        "dataset": dataset,
        "merge": not keep_adapter,
        "max_steps": steps,
        "learning_rate": lr,
        "batch_size": batch_size,
        "seq_length": seq_length,
        "dataset_config_name": dataset_config,
        "text_column": text_column,
        "split": split,
        "seed": seed,
        "show_progress": show_progress,
    }


def _prune_recovery_kwargs(args: argparse.Namespace, seed: int) -> dict | None:
    """``recover()`` keywords from ``prune``'s ``--recover-*`` options, or None when no recovery was asked for."""
    options = ("dataset_config", "text_column", "steps", "lr", "batch_size", "seq_length")
    if args.recover_dataset is None:
        given = [name for name in options if getattr(args, f"recover_{name}") is not None]
        given += ["keep_adapter"] if args.recover_keep_adapter else []
        if given:
            raise ValueError(f"--recover-{given[0].replace('_', '-')} needs --recover-dataset")
        return None

    def value(name: str, default):
        given = getattr(args, f"recover_{name}")
        return default if given is None else given

    return _recovery_kwargs(
        flag="--recover-",
        dataset=args.recover_dataset,
        steps=value("steps", 200),
        lr=value("lr", 1e-4),
        batch_size=value("batch_size", 8),
        seq_length=value("seq_length", 128),
        keep_adapter=args.recover_keep_adapter,
        dataset_config=args.recover_dataset_config,
        text_column=value("text_column", "text"),
        split="train",
        seed=seed,
        show_progress=not args.no_progress,
    )


def run_prune(args: argparse.Namespace) -> int:
    """Run ``prune`` from parsed arguments: check every option, load the model, call ``run.prune_layers``, print
    the summary; raises on bad input (``main`` turns that into one line)."""
    parsed = prune_arguments(args)  # invalid settings fail here, before anything is loaded or written
    config = parsed.config
    args = parsed.namespace()
    output = os.path.abspath(args.output)
    check_output_folder(output, args.overwrite)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    recovery = _prune_recovery_kwargs(args, config.seed)
    evaluation = _prune_evaluation(args)  # reads its data now: bad evaluation input fails before any work
    if args.push_to_hub:
        _check_hub_access(args.push_to_hub, args.surrogate_repo)

    import torch

    from .loading import load_causal_lm
    from .surrogate import ShapleySurrogate

    start = time.perf_counter()
    surrogate = ShapleySurrogate.from_pretrained(args.surrogate, strict=True) if args.surrogate else None
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    print(f"Loading {args.model} ...", file=sys.stderr)
    load_options = {"device_map": args.device_map} if args.device_map else {}
    model, tokenizer = load_causal_lm(
        args.model, gguf_file=args.gguf_file, dtype=dtype, trust_remote_code=args.trust_remote_code, **load_options
    )
    outcome = prune_layers(
        model,
        tokenizer,
        config,
        output,
        surrogate=surrogate,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        evaluation=evaluation,
        recovery=recovery,
        push_to_hub=args.push_to_hub,
        surrogate_repo=args.surrogate_repo,
        private=args.private,
        training_arguments=args.training_arguments,
        show_progress=not args.no_progress,
        announce=lambda line: print(line, file=sys.stderr),
    )
    if not outcome.written:
        return 0

    rows = outcome.result.summary_rows()
    rows[-1] = ("wall time", f"{time.perf_counter() - start:.1f} s (including loading)")
    rows += [
        ("model", output),
        ("model card", os.path.join(output, "README.md")),
        ("plots", os.path.join(output, "plots")),
        ("surrogate", os.path.join(output, "surrogate")),
    ]
    pushed = outcome.pushed
    if pushed:
        rows += [("pushed model", pushed["model"])]
        rows += [("pushed surrogate", pushed["surrogate"])] if "surrogate" in pushed else []
    _print_summary(rows)
    if evaluation is not None:
        from .evaluation.suite import evaluation_text_table

        print()
        print(evaluation_text_table(outcome.measurements))
    return 0


def run_recover(args: argparse.Namespace) -> int:
    """Run ``recover``: LoRA-heal a model, save it merged (or base + ``adapter/``); a pruned run folder keeps its
    results, plots and surrogate, and its card gains a *Recovery* section."""
    kwargs = _recovery_kwargs(
        flag="--",
        dataset=args.dataset,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        seq_length=args.seq_length,
        keep_adapter=args.keep_adapter,
        dataset_config=args.dataset_config,
        text_column=args.text_column,
        split=args.dataset_split,
        seed=args.seed,
        show_progress=not args.no_progress,
    )
    from .recovery import ADAPTER_DIR

    if os.path.isfile(os.path.join(args.model, ADAPTER_DIR, "adapter_config.json")):
        raise ValueError(
            f"{args.model} keeps a LoRA adapter in {ADAPTER_DIR}/: load it with PEFT and merge it first (see its card)"
        )
    output = os.path.abspath(args.output)
    check_output_folder(output, args.overwrite)

    import json

    import torch

    from .hub import staged_folder, write_run_folder
    from .loading import load_causal_lm
    from .pruner import SURROGATE_DIR
    from .recovery import recover, save_model_and_adapter
    from .result import RESULTS_NAME, PruningResult

    start = time.perf_counter()
    run_folder = os.path.isfile(os.path.join(args.model, RESULTS_NAME))
    if run_folder:  # read everything first: a broken run folder fails before any training
        from .surrogate import ShapleySurrogate

        result = PruningResult.from_json_file(os.path.join(args.model, RESULTS_NAME))
        pruning_config = ShapleyPruningConfig.from_pretrained(args.model)
        surrogate_path = os.path.join(args.model, SURROGATE_DIR)
        surrogate = ShapleySurrogate.from_pretrained(surrogate_path) if os.path.isdir(surrogate_path) else None
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    print(f"Loading {args.model} ...", file=sys.stderr)
    model, tokenizer = load_causal_lm(args.model, gguf_file=args.gguf_file, dtype=dtype)
    dataset = kwargs.pop("dataset")
    recovery = recover(model, tokenizer, dataset, **kwargs)

    with staged_folder(output) as staging:
        if run_folder:
            record = recovery.to_dict()
            if result.recovery:
                record["previous"] = result.recovery
            result.recovery = record
            write_run_folder(
                staging,
                model=recovery.model,
                tokenizer=tokenizer,
                pruning_config=pruning_config,
                result=result,
                surrogate=surrogate,
                surrogate_dir=SURROGATE_DIR,
                adapter_base_model=output,
            )
        else:
            if recovery.merged:
                recovery.model.save_pretrained(staging)
            else:
                save_model_and_adapter(recovery.model, staging, output)
            tokenizer.save_pretrained(staging)
            with open(os.path.join(staging, "recovery.json"), "w", encoding="utf-8") as f:
                json.dump(recovery.to_dict(), f, indent=2)
                f.write("\n")

    rows = [("model", args.model), *recovery.summary_rows()]
    rows += [
        ("wall time", f"{time.perf_counter() - start:.1f} s (including loading)"),
        ("output", output + ("" if recovery.merged else f" (base weights) + {ADAPTER_DIR}/")),
        ("record", os.path.join(output, RESULTS_NAME if run_folder else "recovery.json")),
    ]
    _print_summary(rows)
    return 0


def _evaluation_suite(flag: str, **options):
    """An ``EvaluationSuite`` with its data read (``flag`` is the option prefix, for messages): bad options, unknown
    tasks, missing files and malformed lines fail here, before a model is loaded."""
    from .evaluation.suite import EvaluationConfig, EvaluationSuite

    for name, minimum in (("limit", 1), ("max_windows", 1), ("seq_length", 2), ("batch_size", 1)):
        value = options.get(name)
        if value is not None and value < minimum:
            raise ValueError(f"{flag}{name.replace('_', '-')} must be at least {minimum}, got {value}")
    if not options.get("ppl") and not options.get("tasks"):
        raise ValueError(f"nothing to evaluate: pass {flag}ppl and/or {flag}tasks")
    options = {key: value for key, value in options.items() if value is not None}
    return EvaluationSuite(EvaluationConfig(**options)).prepare()


def _prune_evaluation(args: argparse.Namespace):
    """The suite ``prune --eval-*`` runs before and after pruning, or None when no evaluation was asked for."""
    names = ("data_dir", "limit", "max_windows", "seq_length", "backend")
    given = [name for name in names if getattr(args, f"eval_{name}") is not None]
    if args.eval_ppl is None and args.eval_tasks is None:
        if given:
            raise ValueError(f"--eval-{given[0].replace('_', '-')} needs --eval-ppl or --eval-tasks")
        return None
    return _evaluation_suite(
        "--eval-",
        ppl=args.eval_ppl,
        tasks=args.eval_tasks,
        data_dir=args.eval_data_dir,
        limit=args.eval_limit,
        max_windows=args.eval_max_windows,
        seq_length=args.eval_seq_length,
        batch_size=args.batch_size,
        backend=args.eval_backend,
    )


def _write_json_atomically(path: str, record: dict) -> None:
    import json
    import tempfile

    folder = os.path.dirname(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``evaluate``: perplexity and zero-shot accuracy of one model, a table on screen, JSON with
    ``--output-json`` (written whole at the end; nothing is written when anything fails)."""
    output_json = os.path.abspath(args.output_json) if args.output_json else None
    if output_json is not None:
        if os.path.isdir(output_json):
            raise ValueError(f"--output-json {args.output_json} is a folder, expected a file path")
        if not os.path.isdir(os.path.dirname(output_json)):
            raise ValueError(f"--output-json {args.output_json}: folder {os.path.dirname(output_json)} does not exist")
        check_writable(output_json)
    suite = _evaluation_suite(
        "--",
        ppl=args.ppl,
        tasks=args.tasks,
        data_dir=args.data_dir,
        limit=args.limit,
        max_windows=args.max_windows,
        seq_length=args.seq_length,
        batch_size=args.batch_size,
        backend=args.backend,
    )

    import torch

    from .evaluation.suite import evaluation_text_table
    from .loading import load_causal_lm
    from .recovery import ADAPTER_DIR

    start = time.perf_counter()
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    print(f"Loading {args.model} ...", file=sys.stderr)
    model, tokenizer = load_causal_lm(
        args.model, gguf_file=args.gguf_file, dtype=dtype, trust_remote_code=args.trust_remote_code
    )
    adapter = os.path.join(args.model, ADAPTER_DIR)
    if os.path.isfile(os.path.join(adapter, "adapter_config.json")):  # a recovery that kept its LoRA adapter
        from peft import PeftModel

        print(f"Applying the LoRA adapter in {adapter}", file=sys.stderr)
        model = PeftModel.from_pretrained(model, adapter)
    measurement = suite.run(model, tokenizer, show_progress=not args.no_progress)
    label = os.path.basename(os.path.normpath(args.model)) or args.model
    record = {"model": args.model, "protocol": suite.protocol(), "results": {label: measurement}}
    print()
    print(evaluation_text_table(record["results"]))
    print(f"\n{measurement['seconds']:.1f} s evaluating, {time.perf_counter() - start:.1f} s in all")
    if output_json is not None:
        _write_json_atomically(output_json, record)
        print(f"wrote {output_json}")
    return 0


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


RUNNERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "prune": run_prune,
    "recover": run_recover,
    "evaluate": run_evaluate,
}
"""Sub-command name -> the function that runs it (each raises on bad input; ``run_with_errors_reported`` reports)."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    run_file = leading_config_file(argv[1:]) if argv[:1] == ["prune"] else None
    if run_file is not None:  # its keys become the prune parser's defaults; the command line overrides them
        try:
            parser.command_parsers["prune"].set_defaults(**read_config_file(run_file))
        except (OSError, ValueError) as error:
            print(f"optimum-shapley: error: {_one_line(error)}", file=sys.stderr)
            return 2
        del argv[1]
    args = parser.parse_args(argv)
    return run_with_errors_reported(args, RUNNERS[args.command])


def run_with_errors_reported(args: argparse.Namespace, run: Callable[[argparse.Namespace], int] = run_prune) -> int:
    """Run a sub-command and turn expected failures into one line on stderr and exit code 2 (130 on Ctrl-C)."""
    try:
        return run(args)
    except KeyboardInterrupt:
        print("optimum-shapley: interrupted; run the same command again to resume from the cache", file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError, RuntimeError) as error:
        if getattr(args, "debug", False):
            raise
        print(f"optimum-shapley: error: {_one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
