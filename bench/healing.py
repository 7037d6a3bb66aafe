"""What training-free healing wins back: WikiText-2 perplexity of a pruned model unhealed, scale-healed, linear-healed.

    python bench/healing.py                 # SmolLM2-135M (remove 6, 10 of 30) and Gemma-3-270M (remove 4, 6 of 18)
    python bench/healing.py --quick         # SmolLM2-135M, remove 6, 32 windows
    python bench/healing.py --removed smollm2-135m:6=13,14,15,16,17,18 --removed gemma3-270m:4=7,8,9,12

Removed sets: ``--removed ALIAS:K=L1,L2,...`` where given; else the ``shapley`` row of ``bench/results/quality.json``
when that file is present; else the sets the quality bench chose in docs/benchmarks.md (``DEFAULT_REMOVED``). The
layer choice is not re-run here: this bench measures healing alone, on fixed removed sets.
Healing: ``heal_removed_layers`` on the dense model, then ``drop_layers`` (what ``ShapleyLayerPruner.prune`` does
with ``heal=``), calibration ``--num-samples`` x 128 tokens of calibration/c4_demo.json (seed 0, the bench protocol
of bench/common.py). ``scale``: Prune&Comp magnitude scalar per removed run. ``linear``: ReplaceMe least-squares map
per run (ridge ``--ridge`` toward the identity, relative to the mean eigenvalue; 0 = plain least squares); on
Gemma-3 its post-feedforward norm allows only a diagonal map (``linear`` is then the diagonal variant, as the
table says). Evaluation: WikiText-2 raw test, non-overlapping 128-token windows, first ``--eval-windows``.
LoRA columns (pruner.recover after healing) are not measured yet: see bench/recovery.py for LoRA alone.
Writes bench/results/healing.json and bench/results/healing.md.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from common import DEFAULT_DATA_DIR, load_bench_model, report_markdown  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import default_data_collator  # noqa: E402

from optimum_shapley import drop_layers  # noqa: E402
from optimum_shapley.evaluation import perplexity_of_windows  # noqa: E402
from optimum_shapley.healing import HealingNotExactError, heal_removed_layers  # noqa: E402

DEFAULT_REMOVED = {
    ("smollm2-135m", 6): [13, 14, 15, 16, 17, 18],
    ("smollm2-135m", 10): [4, 5, 12, 13, 14, 15, 16, 17, 18, 26],
    ("gemma3-270m", 4): [7, 8, 9, 14],
    ("gemma3-270m", 6): [4, 7, 8, 9, 14, 15],
}
"""The ``shapley`` rows of the quality bench in docs/benchmarks.md (10 x 128 tokens of c4_demo.json; Gemma-3
remove 6: the previous default's, not rerun with the current one)."""
EVAL_WINDOWS = {"smollm2-135m": 128, "gemma3-270m": 64}
POST_NORM_FAMILIES = ("gemma2", "gemma3_text")
"""Families whose linear healing is the diagonal variant (a full map cannot fold through the post-norm)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="SmolLM2 remove 6 only, 32 windows")
    parser.add_argument("--models", default=None, help="comma-separated aliases (default: both; SmolLM2 if --quick)")
    parser.add_argument(
        "--removed", action="append", default=[], metavar="ALIAS:K=L1,L2", help="a removed set (repeatable)"
    )
    parser.add_argument("--num-samples", type=int, default=10, help="calibration blocks of 128 tokens")
    parser.add_argument("--ridge", type=float, default=1.0, help="linear: ridge toward the identity (0: plain LS)")
    parser.add_argument("--eval-windows", type=int, default=None, help="WikiText-2 windows (default 128/64; quick 32)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    args.models = (
        args.models.split(",") if args.models else (["smollm2-135m"] if args.quick else ["smollm2-135m", "gemma3-270m"])
    )
    return args


def removed_sets(args: argparse.Namespace) -> dict[tuple[str, int], list[int]]:
    """(alias, k) -> removed layers: --removed, else quality.json's shapley rows, else DEFAULT_REMOVED."""
    sets = dict(DEFAULT_REMOVED)
    quality = os.path.join(args.output_dir, "quality.json")
    if os.path.exists(quality):
        with open(quality, encoding="utf-8") as f:
            for row in json.load(f).get("rows", []):
                if row.get("method") == "shapley":
                    sets[(row["model"], int(row["removed"]))] = sorted(int(i) for i in row["removed_layers"])
    given = {}
    for item in args.removed:
        try:
            cell, layers = item.split("=")
            alias, k = cell.split(":")
            given[(alias, int(k))] = sorted(int(i) for i in layers.split(","))
        except ValueError:
            sys.exit(f"--removed {item!r}: expected ALIAS:K=L1,L2,... e.g. smollm2-135m:6=13,14,15,16,17,18")
        if len(given[(alias, int(k))]) != int(k):
            sys.exit(f"--removed {item!r}: K={k} but {len(given[(alias, int(k))])} layers listed")
    if given:
        return given
    cells = [(alias, k) for (alias, k) in sets if alias in args.models]
    if args.quick:
        cells = [("smollm2-135m", 6)]
    return {cell: sets[cell] for cell in cells}


def healed_ppl(bench, removed: list[int], method: str, ridge: float) -> dict:
    """Heal a copy of the dense model, drop the layers, measure WikiText-2: the numbers and the seconds each took."""
    model = copy.deepcopy(bench.model)
    family = model.config.get_text_config(decoder=True).model_type
    options = {}
    if method == "linear":
        options = {"ridge": ridge, "diagonal": family in POST_NORM_FAMILIES}
    batches = DataLoader(bench.calibration, batch_size=bench.batch_size, collate_fn=default_data_collator)
    try:
        report = heal_removed_layers(model, removed, batches, method=method, **options)
    except HealingNotExactError as error:
        return {"method": method, "refused": str(error)}
    drop_layers(model, removed)
    start = time.perf_counter()
    ppl = perplexity_of_windows(model, bench.windows, bench.batch_size)
    row = {
        "method": method + (" (diagonal)" if options.get("diagonal") else ""),
        "wikitext2_ppl": ppl,
        "heal_seconds": report.seconds,
        "eval_seconds": time.perf_counter() - start,
        "calibration_tokens": report.calibration_tokens,
        "runs": report.runs,
    }
    del model
    gc.collect()
    return row


def table(cells: list[dict]) -> str:
    lines = [
        "| model | removed | removed layers | dense | unhealed | scale | linear | heal s (scale / linear) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for cell in cells:
        by = {row["method"].split(" ")[0]: row for row in cell["healed"]}

        def ppl(name: str, by: dict = by) -> str:
            row = by.get(name, {})
            if "refused" in row:
                return "refused"
            suffix = " (diag.)" if "diagonal" in row.get("method", "") else ""
            return f"{row['wikitext2_ppl']:.2f}{suffix}" if row else "-"

        seconds = " / ".join(
            f"{by[m]['heal_seconds']:.1f}" if "heal_seconds" in by.get(m, {}) else "-" for m in ("scale", "linear")
        )
        lines.append(
            f"| {cell['model']} | {cell['removed']} | {', '.join(map(str, cell['removed_layers']))} | "
            f"{cell['dense_ppl']:.2f} | {cell['unhealed_ppl']:.2f} | {ppl('scale')} | {ppl('linear')} | {seconds} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    sets = removed_sets(args)
    start = time.perf_counter()
    cells, dense = [], {}
    for alias in dict.fromkeys(alias for alias, _ in sets):
        windows = args.eval_windows or (32 if args.quick else EVAL_WINDOWS.get(alias, 128))
        bench = load_bench_model(alias, args.data_dir, args.num_samples, windows, args.batch_size)
        t = time.perf_counter()
        dense[alias] = bench.wikitext_ppl()
        print(
            f"{alias}: dense WikiText-2 ppl {dense[alias]:.2f} on {len(bench.windows)} windows "
            f"({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
        for (cell_alias, k), removed in sets.items():
            if cell_alias != alias:
                continue
            t = time.perf_counter()
            cell = {
                "model": alias,
                "removed": k,
                "removed_layers": removed,
                "dense_ppl": dense[alias],
                "unhealed_ppl": bench.wikitext_ppl(removed),
                "unhealed_eval_seconds": time.perf_counter() - t,
                "eval_windows": len(bench.windows),
                "healed": [],
            }
            print(f"  remove {k} {removed}: unhealed {cell['unhealed_ppl']:.2f}", flush=True)
            for method in ("scale", "linear"):
                row = healed_ppl(bench, removed, method, args.ridge)
                cell["healed"].append(row)
                if "refused" in row:
                    print(f"    {method}: refused: {row['refused']}", flush=True)
                else:
                    print(
                        f"    {row['method']}: {row['wikitext2_ppl']:.2f} (heal {row['heal_seconds']:.1f} s, "
                        f"eval {row['eval_seconds']:.1f} s)",
                        flush=True,
                    )
            cells.append(cell)
        del bench
        gc.collect()
    total = time.perf_counter() - start

    text = table(cells)
    note = (
        f"WikiText-2 raw test perplexity (first {cells[0]['eval_windows'] if cells else '?'} non-overlapping 128-token "
        f"windows per model) of the pruned model without healing and with each training-free healing, fitted on "
        f"{args.num_samples} x 128 tokens of c4_demo.json (seed 0) and folded into the kept weights (the checkpoint "
        f"keeps its stock architecture). scale: Prune&Comp magnitude scalar per removed run; linear: ReplaceMe "
        f"least-squares map per run, ridge {args.ridge:g} toward the identity (relative to the mean eigenvalue), the "
        f"diagonal variant on Gemma-3 (its post-feedforward norm admits no exact full-matrix fold). 'heal s' is the "
        f"statistics pass plus the fit. LoRA columns: not measured yet. {'--quick; ' if args.quick else ''}"
        f"Whole bench {total / 60:.1f} min on {os.cpu_count()} CPUs."
    )
    report_markdown(args.output_dir, "healing", text, note)
    with open(os.path.join(args.output_dir, "healing.json"), "w", encoding="utf-8") as f:
        meta = {
            "quick": args.quick,
            "num_samples": args.num_samples,
            "ridge": args.ridge,
            "seconds": total,
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(),
        }
        json.dump({"meta": meta, "dense": dense, "cells": cells}, f, indent=2)
    print(f"wrote {args.output_dir}/healing.{{json,md}}")


if __name__ == "__main__":
    main()
