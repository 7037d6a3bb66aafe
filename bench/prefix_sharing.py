"""How much would sharing the hidden states of common kept-layer prefixes save? (search-efficiency direction 3)

    python bench/quality.py             # first: it writes the mask caches this bench reads (per-mask seconds)
    python bench/prefix_sharing.py      # a second; pure counting, no model
    python bench/prefix_sharing.py --measure 32   # and time 32 design masks both ways on each model (~10 min)

Masks evaluated together can be ordered as a trie over layers 0..L-1: two masks that agree on layers 0..j need the
hidden states after layer j only once, and a dropped layer costs nothing, so the decoder-layer work of a group is the
number of distinct prefixes that end in a kept layer (against the sum of kept counts when every mask runs alone).
The embedding, the LM head and the loss are paid per mask either way. The groups are what the default method knows
at once: its initial stratified design (128 and 256 masks, the default strata), the screened elimination's first
step (every leave-one-out mask) and, as an upper bound no run can reach, every mask the quality bench evaluated.
Seconds per evaluation are fitted as ``a + b * kept`` on the quality bench's cached timings, which turns saved
layer passes into saved time; those timings must come from plain evaluations (a cache written with
``share_prefixes=False`` or before it existed: a shared-prefix run's per-mask seconds are already reduced). ``--measure N`` checks the model against the real thing: the first N masks of each
model's initial design evaluated plain and with shared prefixes (``MaskEvaluator(share_prefixes=...)``), alternating,
``--repeats`` times, on the efficiency bench's calibration blocks; medians, and the largest NLL difference.
Writes bench/results/prefix_sharing.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from surrogate_fit import cache_file  # noqa: E402

from optimum_shapley.config import default_strata  # noqa: E402
from optimum_shapley.sampling import sample_masks  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CELLS = {"smollm2-135m": (30, 6), "gemma3-270m": (18, 4)}  # depth, removed: the efficiency bench's cells


def layer_passes(masks: np.ndarray) -> tuple[int, int]:
    """(decoder-layer passes when every mask runs alone, passes when common kept prefixes are computed once)."""
    alone = int(masks.sum())
    shared = 0
    for depth in range(1, masks.shape[1] + 1):
        ends_kept = masks[:, depth - 1]
        shared += len({row[:depth].tobytes() for row in masks[ends_kept]})
    return alone, shared


def timing_fit(path: str) -> tuple[float, float, int]:
    """Least-squares ``seconds = a + b * kept`` over a cache's records (the first, warm-up record excluded)."""
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()][1:]
    kept = np.array([r["mask"].count("1") for r in records], dtype=np.float64)
    seconds = np.array([r["seconds"] for r in records], dtype=np.float64)
    b, a = np.polyfit(kept, seconds, 1)
    return float(a), float(b), len(records)


def cache_masks(path: str) -> np.ndarray:
    with open(path, encoding="utf-8") as f:
        keys = list(dict.fromkeys(json.loads(line)["mask"] for line in f if line.strip()))
    return np.array([[c == "1" for c in key] for key in keys], dtype=bool)


def measure(alias: str, depth: int, removed: int, count: int, repeats: int, data_dir: str) -> dict:
    """Seconds to evaluate ``count`` design masks plainly and sharing prefixes (medians), and their NLL agreement."""
    from common import CALIBRATION_BLOCKS, load_bench_model
    from torch.utils.data import DataLoader
    from transformers import default_data_collator

    from optimum_shapley.evaluation import MaskEvaluator

    bench = load_bench_model(alias, data_dir, CALIBRATION_BLOCKS[alias], eval_windows=1)
    masks = sample_masks(depth, default_strata(depth, removed), count + 1, seed=0)[1:]

    def batches():
        return DataLoader(bench.calibration, batch_size=bench.batch_size, collate_fn=default_data_collator)

    seconds = {"plain": [], "shared": []}
    nll = {}
    for _ in range(repeats):
        for mode in ("plain", "shared"):
            evaluator = MaskEvaluator(bench.model, batches, show_progress=False, share_prefixes=mode == "shared")
            start = time.perf_counter()
            nll[mode] = [e.nll_sum for e in evaluator.evaluate_all(masks)]
            seconds[mode].append(time.perf_counter() - start)
    plain, shared = statistics.median(seconds["plain"]), statistics.median(seconds["shared"])
    difference = max(abs(a - b) / abs(a) for a, b in zip(nll["plain"], nll["shared"]))
    print(
        f"{alias}: {count} masks plain {plain:.1f} s, shared {shared:.1f} s ({1 - shared / plain:.0%} saved); "
        f"largest relative NLL difference {difference:.1e}",
        flush=True,
    )
    return {
        "model": alias,
        "masks": count,
        "repeats": repeats,
        "plain_seconds": plain,
        "shared_seconds": shared,
        "time_saving": 1 - shared / plain,
        "max_relative_nll_difference": difference,
        "all_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=os.path.join(ROOT, "bench", "results", "quality-cache"))
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument("--measure", type=int, default=0, help="also time this many design masks on each model")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    args = parser.parse_args()
    rows, fits = [], {}
    for alias, (depth, removed) in CELLS.items():
        path = cache_file(args.cache_dir, alias)
        a, b, n = timing_fit(path)
        fits[alias] = {"fixed_seconds": a, "seconds_per_layer": b, "records": n}
        leave_one_out = ~np.eye(depth, dtype=bool)
        groups = {
            f"initial design, {m} masks": sample_masks(depth, default_strata(depth, removed), m, seed=0)[1:]
            for m in (128, 256)
        }
        groups["screened elimination, first step"] = leave_one_out
        groups["every mask the quality bench ran (bound)"] = cache_masks(path)
        for name, masks in groups.items():
            alone, shared = layer_passes(masks)
            time_alone = len(masks) * a + alone * b
            time_shared = len(masks) * a + shared * b
            rows.append(
                {
                    "model": alias,
                    "group": name,
                    "masks": len(masks),
                    "layer_passes_alone": alone,
                    "layer_passes_shared": shared,
                    "layer_saving": 1 - shared / alone,
                    "time_saving": 1 - time_shared / time_alone,
                }
            )
    lines = [
        "| model | masks evaluated together | masks | layer passes alone | shared | layer work saved | time saved |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['group']} | {r['masks']} | {r['layer_passes_alone']} | {r['layer_passes_shared']} | "
            f"{r['layer_saving']:.0%} | {r['time_saving']:.0%} |"
        )
    note = (
        "Time model fitted on the quality bench's per-mask seconds: "
        + "; ".join(
            f"{alias}: {f['fixed_seconds']:.2f} s + {f['seconds_per_layer']:.3f} s per kept layer ({f['records']} masks)"
            for alias, f in fits.items()
        )
        + "."
    )
    measured = []
    if args.measure:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        measured = [measure(a, d, r, args.measure, args.repeats, args.data_dir) for a, (d, r) in CELLS.items()]
        lines += [
            "",
            "| model | design masks timed | plain (median s) | shared prefixes (median s) | time saved | max NLL difference |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {m['model']} | {m['masks']} | {m['plain_seconds']:.1f} | {m['shared_seconds']:.1f} | "
            f"{m['time_saving']:.0%} | {m['max_relative_nll_difference']:.1e} |"
            for m in measured
        ]
        note += f" Timed: medians of {args.repeats} alternating runs each way on {os.cpu_count()} CPUs."
    os.makedirs(args.output_dir, exist_ok=True)
    print("\n".join(lines) + "\n\n" + note)
    with open(os.path.join(args.output_dir, "prefix_sharing.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n\n" + note + "\n")
    with open(os.path.join(args.output_dir, "prefix_sharing.json"), "w", encoding="utf-8") as f:
        json.dump({"timing": fits, "rows": rows, "measured": measured}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
