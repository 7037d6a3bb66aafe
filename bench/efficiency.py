"""How many real model evaluations does a good choice of layers need?

    python bench/efficiency.py           # SmolLM2-135M remove 6 and Gemma-3-270M remove 4, every budget
    python bench/efficiency.py --quick   # SmolLM2-135M remove 6, two small budgets (< 10 min)

For each model: WikiText-2 perplexity of the chosen layers against the number of real mask evaluations the method
used, for the default ``shapley`` method (its initial design ``num_masks`` varied; the search adds its own verified
evaluations, counted) and for ``shapley-paper`` (the published configuration: every evaluation is a sampled mask),
with ``sleb`` (cost fixed by the depth) as the reference line. Budgets are nested (a larger ``num_masks`` draws a
superset of a smaller one's masks) and each model has one mask cache shared by every run, so the bench pays for the
largest budget, not for the sum; "evaluations" is what each run needs on its own. The protocol is the quality
bench's (``bench/common.py``: 10 calibration blocks per model).
Budgets are sized to fit 90 minutes here (SmolLM2 ~1.7 s, Gemma-3 ~5.2 s per evaluation of 10 blocks, before the
shared-prefix saving): ``shapley-paper`` stops at 400 (SmolLM2) and 200 (Gemma-3) sampled masks, not the paper's
8,000 (3.8 and 11.6 hours here).
Writes bench/results/efficiency.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import CALIBRATION_BLOCKS, DEFAULT_DATA_DIR, ROOT, data_paths, load_bench_model, report_markdown  # noqa: E402

from optimum_shapley import ShapleyPruningConfig  # noqa: E402
from optimum_shapley.criteria import select_layers  # noqa: E402

CELLS = {"smollm2-135m": 6, "gemma3-270m": 4}
BUDGETS = {
    # num_masks of the initial design: the default method adds its search's evaluations on top
    "shapley": {"smollm2-135m": [32, 64, 128, 256], "gemma3-270m": [32, 64, 128]},
    "shapley-paper": {"smollm2-135m": [100, 200, 400], "gemma3-270m": [100, 200]},
}
QUICK_BUDGETS = {"shapley": [32, 64], "shapley-paper": [64]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="SmolLM2 only, small budgets and eval set (< 10 min)")
    parser.add_argument("--models", default=None, help="comma-separated aliases (default: both; SmolLM2 if --quick)")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--eval-windows", type=int, default=None, help="WikiText-2 windows (default 64; quick 16)")
    parser.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="calibration blocks (default 10 per model; quick 4)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args()
    args.models = args.models.split(",") if args.models else (["smollm2-135m"] if args.quick else list(CELLS))
    args.eval_windows = args.eval_windows or (16 if args.quick else 64)
    if args.quick and args.num_samples is None:
        args.num_samples = 4
    return args


def plot(rows: list[dict], dense: dict[str, float], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    styles = {"shapley": ("#d62728", "o-"), "shapley-paper": ("#ff9896", "s--")}
    for ax, model in zip(axes[0], models):
        for method, (color, style) in styles.items():
            points = sorted(
                (r["evaluations"], r["wikitext2_ppl"]) for r in rows if (r["model"], r["method"]) == (model, method)
            )
            if points:
                ax.plot(*zip(*points), style, color=color, label=method)
        for r in rows:
            if (r["model"], r["method"]) == (model, "sleb"):
                ax.axhline(r["wikitext2_ppl"], color="#1f77b4", linestyle=":", label=f"sleb ({r['evaluations']} evals)")
        ax.axhline(dense[model], color="black", linestyle="--", linewidth=0.8, label="dense")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("real model evaluations")
        ax.set_ylabel("WikiText-2 perplexity of the chosen layers")
        ax.set_title(f"{model}: remove {CELLS[model]}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    data_paths(args.data_dir)
    os.makedirs(args.output_dir, exist_ok=True)
    cache_root = os.path.join(args.output_dir, "efficiency-cache")
    shutil.rmtree(cache_root, ignore_errors=True)  # every bench run measures from scratch
    rows, dense, meta = [], {}, {}
    start = time.perf_counter()
    for alias in args.models:
        num_samples = args.num_samples or CALIBRATION_BLOCKS.get(alias, 10)
        bench = load_bench_model(alias, args.data_dir, num_samples, args.eval_windows, args.batch_size)
        removed = CELLS[alias]
        dense[alias] = bench.wikitext_ppl()
        meta[alias] = {"depth": bench.depth, "removed": removed, "eval_windows": len(bench.windows)}
        meta[alias]["calibration_blocks"] = num_samples
        print(f"{alias}: remove {removed} of {bench.depth}; dense WikiText-2 ppl {dense[alias]:.2f}", flush=True)
        runs = [("sleb", None)]
        for method in ("shapley", "shapley-paper"):
            budgets = QUICK_BUDGETS[method] if args.quick else BUDGETS[method][alias]
            runs += [(method, b) for b in budgets]
        for method, num_masks in runs:
            evaluator = bench.evaluator(os.path.join(cache_root, alias))
            options = {}
            if num_masks is not None:
                options["config"] = ShapleyPruningConfig(
                    num_layers_to_remove=removed, num_masks=num_masks, seed=0, num_samples=num_samples
                )
            t = time.perf_counter()
            choice = select_layers(method, evaluator, removed, seed=0, **options)
            ppl = bench.wikitext_ppl(choice.removed_layers)
            row = {
                "model": alias,
                "removed": removed,
                "method": method,
                "num_masks": num_masks,
                "evaluations": choice.num_model_evaluations,
                "run": evaluator.num_run,
                "wikitext2_ppl": ppl,
                "removed_layers": choice.removed_layers,
                "seconds": time.perf_counter() - t,
            }
            rows.append(row)
            print(
                f"  {method:<14} num_masks {str(num_masks):>4}  evaluations {row['evaluations']:>4} (run {row['run']:>4})"
                f"  ppl {ppl:>9.2f}  layers {choice.removed_layers}",
                flush=True,
            )
        del bench
    total = time.perf_counter() - start

    lines = [
        "| model | method | num_masks | real evaluations | WikiText-2 ppl | vs sleb | removed layers |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for alias in args.models:
        sleb = next(r["wikitext2_ppl"] for r in rows if (r["model"], r["method"]) == (alias, "sleb"))
        lines.append(f"| {alias} | dense | - | 0 | {dense[alias]:.2f} | - | - |")
        for r in (r for r in rows if r["model"] == alias):
            lines.append(
                f"| {alias} | {r['method']} | {r['num_masks'] if r['num_masks'] is not None else '-'} | "
                f"{r['evaluations']} | {r['wikitext2_ppl']:.2f} | {r['wikitext2_ppl'] / sleb:.2f} | "
                f"{', '.join(map(str, r['removed_layers']))} |"
            )
    table = "\n".join(lines)
    note = (
        f"WikiText-2 perplexity on the first {args.eval_windows} non-overlapping 128-token windows of the raw test set; "
        "calibration "
        + ", ".join(f"{meta[a]['calibration_blocks']} ({a})" for a in args.models)
        + " x 128 tokens of c4_demo.json (seed 0); "
        + f"{'--quick; ' if args.quick else ''}whole bench {total / 60:.1f} min on {os.cpu_count()} CPUs."
    )
    report_markdown(args.output_dir, "efficiency", table, note)
    plot(rows, dense, os.path.join(args.output_dir, "efficiency.png"))
    info = {"quick": args.quick, "eval_windows": args.eval_windows, "num_samples": args.num_samples}
    info.update(seconds=total, torch=torch.__version__, cpus=os.cpu_count(), machine=platform.machine(), models=meta)
    with open(os.path.join(args.output_dir, "efficiency.json"), "w", encoding="utf-8") as f:
        json.dump({"meta": info, "dense": dense, "rows": rows}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
