"""The ``prune`` command's options as dataclasses, parsed with the public ``transformers.HfArgumentParser``.

Four groups besides ``ShapleyPruningConfig``: the run (model, output, loading, Hub), LoRA recovery, held-out
evaluation, and the ``TrainingArguments`` fields that reach a pruning run (``report_to``, ``run_name``). Every
option is ``--name_with_underscores`` and ``--name-with-dashes``; a YAML or JSON file whose keys are those names
(``optimum-shapley prune run.yaml``) gives the defaults, and options on the command line override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import HfArgumentParser

from .config import ShapleyPruningConfig
from .recovery import DEFAULT_BATCH_SIZE, DEFAULT_LEARNING_RATE, DEFAULT_MAX_STEPS, DEFAULT_SEQ_LENGTH

__all__ = [
    "add_evaluate_arguments",
    "add_prune_arguments",
    "add_recover_arguments",
    "command_parser",
    "CONFIG_FILE_SUFFIXES",
    "PRUNE_ARGUMENT_TYPES",
    "COMMAND_ARGUMENT_TYPES",
    "EvaluateArguments",
    "EvaluationArguments",
    "RecoverArguments",
    "command_argument_parser",
    "resolve_model",
    "LoggingArguments",
    "PruneArguments",
    "RecoveryArguments",
    "RunArguments",
    "is_config_file",
    "leading_config_file",
    "prune_argument_parser",
    "prune_arguments",
    "read_config_file",
    "check_hub_access",
    "evaluation_suite",
    "prune_evaluation",
    "prune_recovery_kwargs",
    "recovery_kwargs",
]

DTYPES = Literal["float32", "bfloat16", "float16", "auto"]
CONFIG_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class RunArguments:
    """What to prune, where the result goes, how the model is loaded, and the Hub upload."""

    _argument_group_name = "run"

    model: str | None = field(
        default=None,
        metadata=_help(
            "Hub model id, local folder, .gguf file, or a packaged alias: smollm2-135m, gemma3-270m (also the "
            "first positional argument)."
        ),
    )
    output: str | None = field(
        default=None,
        metadata=_help(
            "Folder for the pruned model, card, plots and cache (required). It appears complete at the end (one "
            "rename); until then the run builds it in OUTPUT.partial, whose mask-evaluation cache a killed run "
            "resumes from.",
            aliases=["-o"],
        ),
    )
    overwrite: bool = field(
        default=False,
        metadata=_help("Replace an existing --output folder as a whole (its mask-evaluation cache is reused)."),
    )
    gguf_file: str | None = field(default=None, metadata=_help("GGUF file name inside MODEL (a folder or Hub repo)."))
    dtype: DTYPES = field(default="float32", metadata=_help("Weights dtype for evaluation and the saved model."))
    batch_size: int = field(default=8, metadata=_help("Calibration blocks per forward pass."))
    device_map: str | None = field(
        default=None,
        metadata=_help(
            "Spread a model too large for one device: 'auto', 'balanced', 'sequential' (from_pretrained's "
            "device_map). Default: the whole model on the process's device."
        ),
    )
    trust_remote_code: bool = field(
        default=False,
        metadata=_help("Run modelling code shipped with the checkpoint (off by default: it executes that code)."),
    )
    surrogate: str | None = field(
        default=None, metadata=_help("Reuse a trained surrogate (folder or Hub repo) instead of evaluating masks.")
    )
    push_to_hub: str | None = field(default=None, metadata=_help("Push the pruned model to this repo.", metavar="REPO"))
    surrogate_repo: str | None = field(
        default=None, metadata=_help("Hub repo for the surrogate (default: REPO-shapley-surrogate).")
    )
    private: bool = field(default=False, metadata=_help("Create the Hub repositories as private."))
    no_progress: bool = field(default=False, metadata=_help("Hide progress bars."))
    debug: bool = field(default=False, metadata=_help("Show full tracebacks on errors."))


@dataclass
class RecoveryArguments:
    """LoRA fine-tuning after pruning (off unless ``recover_dataset`` is set)."""

    _argument_group_name = "recovery: LoRA fine-tuning after pruning (off unless --recover-dataset)"

    recover_dataset: str | None = field(
        default=None,
        metadata=_help(
            "Heal the pruned model with LoRA on this text: Hub dataset id, .txt/.json/.jsonl/.parquet, or 'embedded'.",
            metavar="DATA",
        ),
    )
    recover_dataset_config: str | None = field(default=None, metadata=_help("Hub dataset config of --recover-dataset."))
    recover_text_column: str | None = field(
        default=None, metadata=_help("Column of --recover-dataset (default: text).")
    )
    recover_steps: int | None = field(default=None, metadata=_help(f"Training steps (default {DEFAULT_MAX_STEPS})."))
    recover_lr: float | None = field(
        default=None, metadata=_help(f"Learning rate (default {DEFAULT_LEARNING_RATE:g}, as the paper).")
    )
    recover_batch_size: int | None = field(
        default=None, metadata=_help(f"Blocks per step (default {DEFAULT_BATCH_SIZE}).")
    )
    recover_seq_length: int | None = field(
        default=None, metadata=_help(f"Tokens per block (default {DEFAULT_SEQ_LENGTH}).")
    )
    recover_keep_adapter: bool = field(
        default=False,
        metadata=_help("Save the LoRA adapter in adapter/ beside the pruned weights instead of merging it."),
    )


@dataclass
class EvaluationArguments:
    """Held-out perplexity and zero-shot accuracy before and after pruning, in the card."""

    _argument_group_name = (
        "evaluation: held-out perplexity and zero-shot accuracy before and after pruning, in the card (off unless "
        "--eval-ppl or --eval-tasks)"
    )

    eval_ppl: str | None = field(default=None, metadata=_help("e.g. wikitext2,ptb,c4 or a text file.", metavar="TEXTS"))
    eval_tasks: str | None = field(default=None, metadata=_help("e.g. piqa,arc_easy,hellaswag.", metavar="TASKS"))
    eval_data_dir: str | None = field(
        default=None, metadata=_help("Folder with the release files (default: the Hub datasets).")
    )
    eval_limit: int | None = field(default=None, metadata=_help("First N items of each task."))
    eval_max_windows: int | None = field(default=None, metadata=_help("First N perplexity windows."))
    eval_seq_length: int | None = field(default=None, metadata=_help("Perplexity window (default 128)."))
    eval_backend: Literal["auto", "native", "lm-eval"] | None = field(
        default=None,
        metadata=_help("Zero-shot scorer (default auto: lm-eval if installed, else native; same numbers)."),
    )


@dataclass
class LoggingArguments:
    """The ``TrainingArguments`` fields a pruning run passes to its Trainer: where the search is logged."""

    _argument_group_name = "logging: the search through the Trainer's integrations (TrainingArguments)"

    report_to: str = field(
        default="none",
        metadata=_help(
            "Integrations that receive every mask evaluation and phase, comma-separated: tensorboard, wandb, "
            "trackio, mlflow, ... ('all' for every installed one; default none: offline). TensorBoard writes to "
            "OUTPUT/runs/."
        ),
    )
    run_name: str | None = field(default=None, metadata=_help("Run name shown by the integrations."))

    def training_arguments(self) -> dict[str, Any]:
        """Keywords for ``pruning_arguments``/``TrainingArguments``."""
        given = self.report_to if isinstance(self.report_to, (list, tuple)) else str(self.report_to).split(",")
        report_to = [str(name).strip() for name in given if str(name).strip()] or ["none"]
        values: dict[str, Any] = {"report_to": report_to[0] if len(report_to) == 1 else report_to}
        if self.run_name is not None:
            values["run_name"] = self.run_name
        return values


@dataclass
class RecoverArguments:
    """The options of ``recover``: LoRA-heal a (pruned) model and save it merged or with its adapter."""

    dataset: str = field(
        metadata=_help("Training text: Hub dataset id, local .txt/.json/.jsonl/.parquet file, or 'embedded'.")
    )
    output: str = field(metadata=_help("Folder for the recovered model.", aliases=["-o"]))
    model: str | None = field(
        default=None,
        metadata=_help(
            "A pruned run folder (its card and results are updated), or any model optimum-shapley loads (also the "
            "first positional argument)."
        ),
    )
    steps: int = field(default=DEFAULT_MAX_STEPS, metadata=_help("Training steps."))
    lr: float = field(default=DEFAULT_LEARNING_RATE, metadata=_help("Learning rate (the paper's)."))
    batch_size: int = field(default=DEFAULT_BATCH_SIZE, metadata=_help("Blocks per training step."))
    seq_length: int = field(default=DEFAULT_SEQ_LENGTH, metadata=_help("Tokens per training block."))
    keep_adapter: bool = field(
        default=False, metadata=_help("Save the LoRA adapter in adapter/ instead of merging it.")
    )
    dataset_config: str | None = field(default=None, metadata=_help("Hub dataset config name."))
    dataset_split: str = field(default="train", metadata=_help("Hub dataset split."))
    text_column: str = field(default="text", metadata=_help("Column holding the text (json, jsonl, parquet, Hub)."))
    seed: int = field(default=0, metadata=_help("Seeds the LoRA initialisation and the data."))
    overwrite: bool = field(default=False, metadata=_help("Replace the contents of an existing --output."))
    gguf_file: str | None = field(default=None, metadata=_help("GGUF file name inside MODEL (a folder or Hub repo)."))
    dtype: DTYPES = field(default="float32", metadata=_help("Weights dtype."))
    no_progress: bool = field(default=False, metadata=_help("Hide progress bars."))
    debug: bool = field(default=False, metadata=_help("Show full tracebacks on errors."))


@dataclass
class EvaluateArguments:
    """The options of ``evaluate``: held-out perplexity and zero-shot accuracy of one model."""

    model: str | None = field(
        default=None,
        metadata=_help(
            "Hub model id, local or pruned folder, .gguf file, or a packaged alias (also the first positional argument)."
        ),
    )
    ppl: str | None = field(
        default=None,
        metadata=_help(
            "Perplexity on these texts, comma-separated: wikitext2, ptb, c4 or a .txt/.json/.jsonl file.",
            metavar="TEXTS",
        ),
    )
    tasks: str | None = field(
        default=None,
        metadata=_help(
            "Zero-shot tasks, comma-separated: boolq, piqa, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa.",
            metavar="TASKS",
        ),
    )
    data_dir: str | None = field(
        default=None,
        metadata=_help(
            "Folder with the release files (wikitext-2-raw/, ptb/, c4/, zeroshot/<task>/); default: the Hub."
        ),
    )
    limit: int | None = field(default=None, metadata=_help("First N items of each task (quick runs)."))
    seq_length: int = field(default=128, metadata=_help("Perplexity window in tokens."))
    max_windows: int | None = field(default=None, metadata=_help("First N perplexity windows (default: all)."))
    output_json: str | None = field(default=None, metadata=_help("Write every number and the protocol to this file."))
    backend: Literal["auto", "native", "lm-eval"] = field(
        default="auto",
        metadata=_help(
            "Zero-shot scorer: lm-eval (the harness itself), native (ours, same numbers), auto (lm-eval if installed)."
        ),
    )
    batch_size: int = field(default=8, metadata=_help("Windows or requests per forward pass."))
    gguf_file: str | None = field(default=None, metadata=_help("GGUF file name inside MODEL (a folder or Hub repo)."))
    dtype: DTYPES = field(default="float32", metadata=_help("Weights dtype."))
    trust_remote_code: bool = field(default=False, metadata=_help("Run modelling code shipped with the checkpoint."))
    no_progress: bool = field(default=False, metadata=_help("Hide progress bars."))
    debug: bool = field(default=False, metadata=_help("Show full tracebacks on errors."))


COMMAND_ARGUMENT_TYPES: dict[str, tuple[type, ...]] = {
    "recover": (RecoverArguments,),
    "evaluate": (EvaluateArguments,),
}
"""The dataclasses of the other sub-commands (``prune``'s are ``PRUNE_ARGUMENT_TYPES``)."""


def command_argument_parser(command: str, **kwargs: Any) -> HfArgumentParser:
    """``recover``'s or ``evaluate``'s parser: its dataclass's fields, plus MODEL as the first positional."""
    parser = HfArgumentParser(COMMAND_ARGUMENT_TYPES[command], **kwargs)
    parser.add_argument("model_positional", nargs="?", default=None, metavar="MODEL", help="The model (as --model).")
    return parser


def resolve_model(namespace: argparse.Namespace) -> argparse.Namespace:
    """``recover``/``evaluate``: MODEL given positionally or as ``--model`` (not both, not neither)."""
    positional = getattr(namespace, "model_positional", None)
    if positional is not None:
        if namespace.model is not None and namespace.model != positional:
            raise ValueError(f"two models given: {positional!r} and --model {namespace.model!r}")
        namespace.model = positional
    if namespace.model is None:
        raise ValueError("a model is required: give MODEL")
    return namespace


PRUNE_ARGUMENT_TYPES = (RunArguments, ShapleyPruningConfig, RecoveryArguments, EvaluationArguments, LoggingArguments)


@dataclass
class PruneArguments:
    """Everything ``prune`` was given, one dataclass per group."""

    run: RunArguments
    config: ShapleyPruningConfig
    recovery: RecoveryArguments
    evaluation: EvaluationArguments
    logging: LoggingArguments

    def namespace(self) -> argparse.Namespace:
        """One flat namespace (``args.model``, ``args.recover_steps``, ...), as the runners read it."""
        values: dict[str, Any] = {}
        for group in (self.run, self.recovery, self.evaluation, self.logging):
            values.update({f.name: getattr(group, f.name) for f in dataclasses.fields(group)})
        return argparse.Namespace(
            **values, pruning_config=self.config, training_arguments=self.logging.training_arguments()
        )


def option_names() -> set[str]:
    """Every key a config file may hold: the field names of all groups."""
    return {f.name for kind in PRUNE_ARGUMENT_TYPES for f in dataclasses.fields(kind) if f.init}


def is_config_file(path: str | None) -> bool:
    return bool(path) and str(path).lower().endswith(CONFIG_FILE_SUFFIXES) and os.path.isfile(path)


def read_config_file(path: str) -> dict[str, Any]:
    """The options of a YAML or JSON run file; unknown keys are an error that names the valid ones."""
    with open(path, encoding="utf-8") as f:
        if path.lower().endswith(".json"):
            try:
                values = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not valid JSON: {error}") from error
        else:
            import yaml

            try:
                values = yaml.safe_load(f)
            except yaml.YAMLError as error:
                raise ValueError(f"{path} is not valid YAML: {error}") from error
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of option names to values, not {type(values).__name__}")
    unknown = sorted(set(values) - option_names())
    if unknown:
        raise ValueError(
            f"{path}: unknown option {unknown[0]!r}; keys are the long option names with underscores, e.g. model, "
            "output, num_layers_to_remove, method (see `optimum-shapley prune --help`)"
        )
    return values


def add_model_positional(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model_or_file",
        nargs="?",
        default=None,
        metavar="MODEL",
        help="The model (as --model), or a run file (.yaml/.yml/.json) whose keys are the option names; options "
        "given on the command line override the file.",
    )


def prune_argument_parser(**kwargs: Any) -> HfArgumentParser:
    """The ``prune`` parser: every dataclass field an option, plus MODEL (or a run file) as the first positional."""
    parser = HfArgumentParser(PRUNE_ARGUMENT_TYPES, **kwargs)
    add_model_positional(parser)
    return parser


def leading_config_file(argv: list[str]) -> str | None:
    """The run file given as the first argument of ``prune`` (``prune run.yaml --remove 8``), or None."""
    return argv[0] if argv and is_config_file(argv[0]) else None


def prune_arguments(namespace: argparse.Namespace) -> PruneArguments:
    """The dataclasses of a parsed ``prune`` namespace (the config validates itself here: bad settings raise)."""
    groups = []
    for kind in PRUNE_ARGUMENT_TYPES:
        groups.append(kind(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(kind) if f.init}))
    run = groups[0]
    positional = getattr(namespace, "model_or_file", None)
    if positional is not None:
        if is_config_file(positional):
            raise ValueError(f"{positional}: a run file goes first, right after `prune`")
        if run.model is not None and run.model != positional:
            raise ValueError(f"two models given: {positional!r} and --model {run.model!r}")
        run.model = positional
    if run.model is None:
        raise ValueError("a model is required: give MODEL (or model: in the run file)")
    if run.output is None:
        raise ValueError("--output is required (or output: in the run file)")
    return PruneArguments(*groups)


# ------------------------------------------------------------------------------------------ checks of the options
# Each turns options into what the job takes, or raises ValueError naming the option: before any model is loaded.


def check_hub_access(repo_id: str, surrogate_repo: str | None) -> None:
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


def recovery_kwargs(
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


def prune_recovery_kwargs(args: argparse.Namespace, seed: int) -> dict | None:
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

    return recovery_kwargs(
        flag="--recover-",
        dataset=args.recover_dataset,
        steps=value("steps", DEFAULT_MAX_STEPS),
        lr=value("lr", DEFAULT_LEARNING_RATE),
        batch_size=value("batch_size", DEFAULT_BATCH_SIZE),
        seq_length=value("seq_length", DEFAULT_SEQ_LENGTH),
        keep_adapter=args.recover_keep_adapter,
        dataset_config=args.recover_dataset_config,
        text_column=value("text_column", "text"),
        split="train",
        seed=seed,
        show_progress=not args.no_progress,
    )


def evaluation_suite(flag: str, **options):
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


def prune_evaluation(args: argparse.Namespace):
    """The suite ``prune --eval-*`` runs before and after pruning, or None when no evaluation was asked for."""
    names = ("data_dir", "limit", "max_windows", "seq_length", "backend")
    given = [name for name in names if getattr(args, f"eval_{name}") is not None]
    if args.eval_ppl is None and args.eval_tasks is None:
        if given:
            raise ValueError(f"--eval-{given[0].replace('_', '-')} needs --eval-ppl or --eval-tasks")
        return None
    return evaluation_suite(
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


# ------------------------------------------------------------------------------------------ the parsers


def command_parser(prog: str = "", **kwargs: Any) -> argparse.ArgumentParser:
    """argparse's ``parser_class`` for the sub-commands, ours and optimum-cli's: the public ``HfArgumentParser``
    over each sub-command's dataclasses (``cli_arguments.py``); a plain parser for anything else."""
    command = (prog.split() or [""])[-1]
    if command == "prune":
        return prune_argument_parser(prog=prog, **kwargs)
    if command in COMMAND_ARGUMENT_TYPES:
        return command_argument_parser(command, prog=prog, **kwargs)
    kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
    return argparse.ArgumentParser(prog=prog, **kwargs)


def add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    """``prune``'s options: ``command_parser`` built them from the dataclasses (checked here; optimum-cli's
    registration calls it like the other sub-commands')."""
    _check_built(parser, RunArguments)


def add_recover_arguments(parser: argparse.ArgumentParser) -> None:
    """``recover``'s options: ``command_parser`` built them from ``RecoverArguments`` (checked here)."""
    _check_built(parser, RecoverArguments)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """``evaluate``'s options: ``command_parser`` built them from ``EvaluateArguments`` (checked here)."""
    _check_built(parser, EvaluateArguments)


def _check_built(parser: argparse.ArgumentParser, kind: type) -> None:
    if not isinstance(parser, HfArgumentParser) or kind not in parser.dataclass_types:
        raise TypeError(
            "the sub-command parsers are built by optimum_shapley.cli_arguments.command_parser (argparse parser_class)"
        )
