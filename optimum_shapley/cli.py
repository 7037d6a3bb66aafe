"""The ``optimum-shapley`` command line (also ``optimum-cli shapley``).

``optimum-shapley prune MODEL --remove K --output DIR`` runs the whole job. Every ``ShapleyPruningConfig`` field is
an option (generated from the dataclass, so ``--help`` documents them all). Bad input ends with one line on stderr
and a non-zero exit, and nothing half-written is left behind; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import get_type_hints

from .config import ShapleyPruningConfig

__all__ = ["RUNNERS", "add_prune_arguments", "build_parser", "main", "run_prune", "run_with_errors_reported"]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one option per ``ShapleyPruningConfig`` field, the way ``HfArgumentParser`` does."""
    from transformers import HfArgumentParser

    hints = get_type_hints(ShapleyPruningConfig)
    group = parser.add_argument_group("pruning configuration (ShapleyPruningConfig)")
    for field in dataclasses.fields(ShapleyPruningConfig):
        field.type = hints[field.name]  # already resolved (config.py has no postponed annotations); made explicit
        HfArgumentParser._parse_dataclass_field(group, field)


def add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    """All options of ``prune`` (shared by ``optimum-shapley prune`` and ``optimum-cli shapley prune``)."""
    parser.add_argument(
        "model", help="Hub model id, local folder, .gguf file, or a packaged alias: smollm2-135m, gemma3-270m."
    )
    parser.add_argument("--output", "-o", required=True, help="Folder for the pruned model, card, plots and cache.")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace the results of an earlier run in --output (its mask-evaluation cache is kept and reused).",
    )
    parser.add_argument("--gguf-file", default=None, help="GGUF file name inside MODEL (a folder or Hub repo).")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16", "auto"],
        help="Weights dtype for evaluation and the saved model.",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="Calibration blocks per forward pass.")
    parser.add_argument(
        "--surrogate",
        default=None,
        help="Reuse a trained surrogate (folder or Hub repo) instead of evaluating masks.",
    )
    parser.add_argument("--push-to-hub", metavar="REPO", default=None, help="Push the pruned model to this repo.")
    parser.add_argument(
        "--surrogate-repo", default=None, help="Hub repo for the surrogate (default: REPO-shapley-surrogate)."
    )
    parser.add_argument("--private", action="store_true", help="Create the Hub repositories as private.")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    parser.add_argument("--debug", action="store_true", help="Show full tracebacks on errors.")
    add_config_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optimum-shapley",
        description="Remove decoder layers from a causal LM, ranked by surrogate-assisted Shapley values.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    prune = subparsers.add_parser(
        "prune",
        help="Estimate layer contributions, remove the least valuable layers and save the model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_prune_arguments(prune)
    return parser


def _config_from_args(args: argparse.Namespace) -> ShapleyPruningConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ShapleyPruningConfig)}
    return ShapleyPruningConfig(**values)


def _check_output_folder(path: str, overwrite: bool) -> None:
    if os.path.isfile(path):
        raise ValueError(f"--output {path} is a file, expected a folder")
    if not os.path.isdir(path):
        return
    from .evaluation import CACHE_FILE_NAME

    leftovers = set(os.listdir(path)) - {CACHE_FILE_NAME}
    if leftovers and not overwrite:
        raise ValueError(
            f"output folder {path} is not empty; pass --overwrite to replace its contents "
            "(the mask-evaluation cache is kept)"
        )


def _print_summary(rows: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows)
    print()
    print("optimum-shapley summary")
    print("-" * (width + 40))
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def run_prune(args: argparse.Namespace) -> int:
    """Run ``prune`` from parsed arguments; raises on bad input (``main`` turns that into one line)."""
    config = _config_from_args(args)  # invalid settings fail here, before anything is loaded or written
    output = os.path.abspath(args.output)
    _check_output_folder(output, args.overwrite)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")

    import torch
    from transformers import TrainingArguments

    from .evaluation import CACHE_FILE_NAME
    from .loading import load_causal_lm
    from .pruner import ShapleyLayerPruner
    from .surrogate import ShapleySurrogate

    start = time.perf_counter()
    surrogate = ShapleySurrogate.from_pretrained(args.surrogate, strict=True) if args.surrogate else None
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    print(f"Loading {args.model} ...", file=sys.stderr)
    model, tokenizer = load_causal_lm(args.model, gguf_file=args.gguf_file, dtype=dtype)

    created = not os.path.exists(output)
    try:
        training_args = TrainingArguments(
            output_dir=output,
            per_device_eval_batch_size=args.batch_size,
            report_to="none",
            disable_tqdm=args.no_progress,
            dataloader_pin_memory=torch.cuda.is_available(),
            seed=config.seed,
        )
        pruner = ShapleyLayerPruner(
            model=model,
            args=training_args,
            pruning_config=config,
            processing_class=tokenizer,
            surrogate=surrogate,
        )
        result = pruner.prune(evaluate_calibration=True)
        pruner.save_pretrained(output)
        pushed = None
        if args.push_to_hub:
            pushed = pruner.push_to_hub(args.push_to_hub, surrogate_repo_id=args.surrogate_repo, private=args.private)
    except BaseException:
        # a folder this run created and that holds no evaluations to resume from is removed again
        if created and os.path.isdir(output) and CACHE_FILE_NAME not in os.listdir(output):
            shutil.rmtree(output, ignore_errors=True)
        raise

    rows = result.summary_rows()
    rows[-1] = ("wall time", f"{time.perf_counter() - start:.1f} s (including loading)")
    rows += [
        ("model", output),
        ("model card", os.path.join(output, "README.md")),
        ("plots", os.path.join(output, "plots")),
        ("surrogate", os.path.join(output, "surrogate")),
    ]
    if pushed:
        rows += [("pushed model", pushed["model"]), ("pushed surrogate", pushed["surrogate"])]
    _print_summary(rows)
    return 0


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


RUNNERS: dict[str, Callable[[argparse.Namespace], int]] = {"prune": run_prune}
"""Sub-command name -> the function that runs it (each raises on bad input; ``run_with_errors_reported`` reports)."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
