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

__all__ = [
    "CONFIG_FILE_SUFFIXES",
    "PRUNE_ARGUMENT_TYPES",
    "EvaluationArguments",
    "LoggingArguments",
    "PruneArguments",
    "RecoveryArguments",
    "RunArguments",
    "is_config_file",
    "leading_config_file",
    "prune_argument_parser",
    "prune_arguments",
    "read_config_file",
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
    recover_steps: int | None = field(default=None, metadata=_help("Training steps (default 200)."))
    recover_lr: float | None = field(default=None, metadata=_help("Learning rate (default 1e-4, as the paper)."))
    recover_batch_size: int | None = field(default=None, metadata=_help("Blocks per step (default 8)."))
    recover_seq_length: int | None = field(default=None, metadata=_help("Tokens per block (default 128)."))
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
