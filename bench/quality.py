"""Which layers should go? Every criterion side by side, one protocol, real models.

    python bench/quality.py            # SmolLM2-135M (remove 6, 10 of 30) and Gemma-3-270M (remove 4, 6 of 18)
    python bench/quality.py --quick    # SmolLM2-135M, remove 6, smaller calibration, eval and mask budget

Calibration: 128-token blocks of ../shared/data/calibration/c4_demo.json (seed 0), the same blocks for every method:
10 for each model (``common.CALIBRATION_BLOCKS`` says why Gemma-3 no longer uses 5).
Evaluation: WikiText-2 raw test, "\\n\\n".join of the lines, non-overlapping 128-token windows, token-weighted; a
fixed prefix of --eval-windows windows (default 128 for SmolLM2, 64 for Gemma-3; the whole set is ~2,400 windows,
~10 min per SmolLM2 evaluation here).
Each model has one mask-evaluation cache shared by every method and cell (the evaluations are deterministic, so a
mask SLEB and ``shapley`` both ask for is run once). "evaluations" is what the method needs (its real cost, cache or
not); "run" is what this bench actually executed for it; "selection s" is the method's time as if it ran alone:
its measured time plus, for every mask another method had already evaluated, the seconds that evaluation took.
"calibration ppl" is the perplexity of the chosen layers on the calibration blocks: what the methods optimise.
Writes bench/results/quality.json, bench/results/quality.md and bench/results/quality.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from common import CALIBRATION_BLOCKS, DEFAULT_DATA_DIR, data_paths, load_bench_model, report_markdown  # noqa: E402

from optimum_shapley import ShapleyPruningConfig  # noqa: E402
from optimum_shapley.criteria import METHODS, select_layers  # noqa: E402

CELLS = {"smollm2-135m": [6, 10], "gemma3-270m": [4, 6]}
EVAL_WINDOWS = {"smollm2-135m": 128, "gemma3-270m": 64}
"""WikiText-2 windows per model: a Gemma-3 window costs about 4x a SmolLM2 one (262k-token vocabulary head)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="SmolLM2 only, remove 6, reduced budgets (< 10 min)")
    parser.add_argument("--models", default=None, help="comma-separated aliases (default: both, or SmolLM2 if --quick)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--removed", default=None, help="comma-separated layer counts to remove (default: the cells)")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument(
        "--eval-windows",
        type=int,
        default=None,
        help="WikiText-2 windows (default per model: SmolLM2 128, Gemma-3 64; quick 32)",
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="calibration blocks (default 10 per model; quick 4)",
    )
    parser.add_argument(
        "--num-masks",
        type=int,
        default=None,
        help="mask budget of the shapley methods (default: the config default; quick 64)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args()
    args.models = args.models.split(",") if args.models else (["smollm2-135m"] if args.quick else list(CELLS))
    args.methods = args.methods.split(",")
    if args.quick and args.eval_windows is None:
        args.eval_windows = 32
    if args.quick and args.num_samples is None:
        args.num_samples = 4
    args.num_masks = args.num_masks or (64 if args.quick else ShapleyPruningConfig(num_layers_to_remove=1).num_masks)
    return args


def plot(rows: list[dict], dense: dict[str, float], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = sorted(
        {(r["model"], r["removed"]) for r in rows},
        key=lambda c: (list(CELLS).index(c[0]) if c[0] in CELLS else 9, c[1]),
    )
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 4.2), squeeze=False)
    for ax, (model, removed) in zip(axes[0], cells):
        values = [
            next(r["wikitext2_ppl"] for r in rows if (r["model"], r["removed"], r["method"]) == (model, removed, m))
            for m in methods
        ]
        colors = ["#d62728" if m == "shapley" else "#ff9896" if m == "shapley-paper" else "#1f77b4" for m in methods]
        ax.bar(range(len(methods)), values, color=colors)
        ax.axhline(dense[model], color="black", linestyle="--", linewidth=0.8, label="dense")
        ax.set_yscale("log")
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{model}: remove {removed}", fontsize=10)
        ax.set_ylabel("WikiText-2 perplexity (128-token windows, log)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    data_paths(args.data_dir)
    os.makedirs(args.output_dir, exist_ok=True)
    cache_root = os.path.join(args.output_dir, "quality-cache")
    shutil.rmtree(cache_root, ignore_errors=True)  # every bench run measures from scratch

    rows, dense, calib_dense, meta = [], {}, {}, {}
    bench_start = time.perf_counter()
    for alias in args.models:
        eval_windows = args.eval_windows or EVAL_WINDOWS.get(alias, 128)
        num_samples = args.num_samples or CALIBRATION_BLOCKS.get(alias, 10)
        bench = load_bench_model(alias, args.data_dir, num_samples, eval_windows, args.batch_size)
        t = time.perf_counter()
        dense[alias] = bench.wikitext_ppl()
        dense_seconds = time.perf_counter() - t
        cache_dir = os.path.join(cache_root, alias)
        calib_dense[alias] = math.exp(bench.evaluator(cache_dir)(list(range(bench.depth))).mean_nll)
        meta[alias] = {
            "depth": bench.depth,
            "eval_windows": len(bench.windows),
            "calibration_blocks": num_samples,
            "eval_tokens": int(bench.windows.numel()),
            "wikitext_windows_total": bench.total_windows,
            "dense_eval_seconds": dense_seconds,
        }
        print(
            f"{alias}: {bench.depth} layers, dense WikiText-2 ppl {dense[alias]:.2f} on "
            f"{len(bench.windows)}/{bench.total_windows} windows",
            flush=True,
        )
        for method in args.methods:
            cells = [CELLS[alias][0]] if args.quick else CELLS[alias]
            for removed in [int(r) for r in args.removed.split(",")] if args.removed else cells:
                evaluator = bench.evaluator(cache_dir)
                reusable = {e.mask: e.seconds for e in evaluator.cache.evaluations()}
                options = {}
                if method.startswith("shapley"):
                    options["config"] = ShapleyPruningConfig(
                        num_layers_to_remove=removed, num_masks=args.num_masks, seed=0, num_samples=num_samples
                    )
                choice = select_layers(method, evaluator, removed, seed=0, **options)
                reused = sum(reusable[k] for k in set(evaluator.requests) if k in reusable)
                run = evaluator.num_run
                ppl = bench.wikitext_ppl(choice.removed_layers)
                kept = [i for i in range(bench.depth) if i not in choice.removed_layers]
                calibration_ppl = math.exp(min(evaluator(kept).mean_nll, 700.0))  # after selection: not charged
                fit = choice.details.get("surrogate_fit")
                row = {
                    "model": alias,
                    "removed": removed,
                    "method": method,
                    "removed_layers": choice.removed_layers,
                    "wikitext2_ppl": ppl,
                    "calibration_ppl": calibration_ppl,
                    "evaluations": choice.num_model_evaluations,
                    "run": run,
                    "selection_seconds": choice.seconds + reused,
                    "measured_seconds": choice.seconds,
                    "surrogate_validation_r2": fit.validation_r2 if fit is not None else None,
                }
                rows.append(row)
                print(
                    f"  remove {removed:>2} {method:<16} ppl {ppl:>10.2f} (calib {calibration_ppl:>10.2f})  "
                    f"evals {row['evaluations']:>4} "
                    f"(run {row['run']:>4})  {row['selection_seconds']:>7.1f} s  layers {choice.removed_layers}",
                    flush=True,
                )
        del bench

    total = time.perf_counter() - bench_start
    lines = [
        "| model | removed | method | WikiText-2 ppl | x dense | calibration ppl | model evaluations | selection s "
        "| removed layers |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for alias in args.models:
        lines.append(f"| {alias} | 0 | dense | {dense[alias]:.2f} | 1.00 | {calib_dense[alias]:.2f} | 0 | 0 | - |")
        for r in (r for r in rows if r["model"] == alias):
            best = min(x["wikitext2_ppl"] for x in rows if (x["model"], x["removed"]) == (alias, r["removed"]))
            ppl = f"**{r['wikitext2_ppl']:.2f}**" if r["wikitext2_ppl"] == best else f"{r['wikitext2_ppl']:.2f}"
            lines.append(
                f"| {alias} | {r['removed']} | {r['method']} | {ppl} | {r['wikitext2_ppl'] / dense[alias]:.2f} | "
                f"{r['calibration_ppl']:.2f} | {r['evaluations']} | {r['selection_seconds']:.1f} | {', '.join(map(str, r['removed_layers']))} |"
            )
    table = "\n".join(lines)
    note = (
        "WikiText-2 perplexity on the first "
        + ", ".join(f"{meta[a]['eval_windows']} ({a})" for a in args.models)
        + " non-overlapping 128-token windows of the raw test set; calibration "
        + ", ".join(f"{meta[a]['calibration_blocks']} ({a})" for a in args.models)
        + f" x 128 tokens of c4_demo.json (seed 0); shapley mask budget {args.num_masks}; "
        f"{'--quick; ' if args.quick else ''}whole bench {total / 60:.1f} min on {os.cpu_count()} CPUs."
    )
    report_markdown(args.output_dir, "quality", table, note)
    plot(rows, dense, os.path.join(args.output_dir, "quality.png"))
    with open(os.path.join(args.output_dir, "quality.json"), "w", encoding="utf-8") as f:
        info = {"quick": args.quick, "eval_windows": args.eval_windows, "num_samples": args.num_samples}
        info.update(num_masks=args.num_masks, seconds=total, torch=torch.__version__, cpus=os.cpu_count())
        info.update(machine=platform.machine(), models=meta)
        json.dump({"meta": info, "dense": dense, "calibration_dense": calib_dense, "rows": rows}, f, indent=2)
    print(f"wrote {args.output_dir}/quality.{{json,md,png}}")


if __name__ == "__main__":
    main()
