"""The ``optimum-shapley`` command line (also ``optimum-cli shapley``).

Argument parsing (``cli_arguments.py``: ``HfArgumentParser`` over dataclasses, run files) and printing around the
jobs of ``run.py``. ``optimum-shapley prune MODEL --remove K --output DIR`` runs the whole job. Bad input ends with one
line on stderr and exit code 2, and nothing half-written is left behind; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

from .atomic import write_json
from .cli_arguments import (
    add_evaluate_arguments,
    add_prune_arguments,
    add_recover_arguments,
    check_hub_access,
    command_parser,
    evaluation_suite,
    leading_config_file,
    prune_arguments,
    prune_evaluation,
    prune_recovery_kwargs,
    read_config_file,
    recovery_kwargs,
    resolve_model,
)
from .run import (
    check_output_folder,
    check_writable,
    evaluate_folder,
    prune_layers,
    recover_folder,
)

__all__ = [
    "RUNNERS",
    "build_parser",
    "main",
    "run_evaluate",
    "run_prune",
    "run_recover",
    "run_with_errors_reported",
]


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


def _print_summary(rows: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows)
    print()
    print("optimum-shapley summary")
    print("-" * (width + 40))
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


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
    recovery = prune_recovery_kwargs(args, config.seed)
    evaluation = prune_evaluation(args)  # reads its data now: bad evaluation input fails before any work
    if args.push_to_hub:
        check_hub_access(args.push_to_hub, args.surrogate_repo)

    from .loading import load_causal_lm, torch_dtype
    from .surrogate import ShapleySurrogate

    start = time.perf_counter()
    surrogate = ShapleySurrogate.from_pretrained(args.surrogate, strict=True) if args.surrogate else None
    dtype = torch_dtype(args.dtype)
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
    args = resolve_model(args)
    kwargs = recovery_kwargs(
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
    start = time.perf_counter()
    outcome = recover_folder(
        args.model,
        args.output,
        kwargs,
        dtype=args.dtype,
        gguf_file=args.gguf_file,
        overwrite=args.overwrite,
        announce=lambda line: print(line, file=sys.stderr),
    )
    recovery = outcome.recovery
    rows = [("model", args.model), *recovery.summary_rows()]
    rows += [
        ("wall time", f"{time.perf_counter() - start:.1f} s (including loading)"),
        ("output", outcome.output_dir + ("" if recovery.merged else f" (base weights) + {outcome.adapter_dir}/")),
        ("record", outcome.record),
    ]
    _print_summary(rows)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``evaluate``: perplexity and zero-shot accuracy of one model, a table on screen, JSON with
    ``--output-json`` (written whole at the end; nothing is written when anything fails)."""
    args = resolve_model(args)
    output_json = os.path.abspath(args.output_json) if args.output_json else None
    if output_json is not None:
        if os.path.isdir(output_json):
            raise ValueError(f"--output-json {args.output_json} is a folder, expected a file path")
        if not os.path.isdir(os.path.dirname(output_json)):
            raise ValueError(f"--output-json {args.output_json}: folder {os.path.dirname(output_json)} does not exist")
        check_writable(output_json)
    suite = evaluation_suite(
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
    from .evaluation.suite import evaluation_text_table

    start = time.perf_counter()
    record = evaluate_folder(
        args.model,
        suite,
        dtype=args.dtype,
        gguf_file=args.gguf_file,
        trust_remote_code=args.trust_remote_code,
        show_progress=not args.no_progress,
        announce=lambda line: print(line, file=sys.stderr),
    )
    measurement = next(iter(record["results"].values()))
    print()
    print(evaluation_text_table(record["results"]))
    print(f"\n{measurement['seconds']:.1f} s evaluating, {time.perf_counter() - start:.1f} s in all")
    if output_json is not None:
        write_json(output_json, record)
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
