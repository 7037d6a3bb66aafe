"""How fast are the Shapley estimators on the surrogate? Vectorised estimators vs the published row-at-a-time loop.

    python bench/shapley_speed.py [--layers 30] [--samples 80000] [--loop-samples 400] [--seed 0] [--repeats 3]

The surrogate has the paper's shape (L -> 2L -> 1, CELU, sigmoid output), seeded random weights, float32, CPU, eval
mode. Three timings:
(a) ``paper_contributions`` (vectorised published estimator) on ``--samples`` masks from the paper's strata;
(b) ``permutation_shapley`` (true Shapley values) with ``--samples`` permutations;
(c) the published implementation: a Python loop calling the surrogate on one row at a time, twice per
    (sample, layer) pair. It runs on ``--loop-samples`` masks only and is extrapolated linearly to ``--samples``;
    on those masks its per-layer means are checked against the vectorised code fed the very same masks.
Target: (a) at least 50x faster than (c). Writes bench/results/shapley_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from optimum_shapley.game_values import (  # noqa: E402
    paper_contributions,
    paper_contributions_on_masks,
    permutation_shapley,
    sample_paper_masks,
)

TARGET_SPEEDUP = 50.0
MATCH_TOLERANCE = 1e-5


def paper_strata(num_layers: int) -> list[int]:
    """The paper's kept-layer counts, as offsets from the depth: 2, 5, 8, 11 and 14 layers removed.

    For 30 layers these are [28, 25, 22, 19, 16]; other depths keep the same offsets, clipped to [1, L - 1].
    """
    return sorted({min(max(num_layers - r, 1), num_layers - 1) for r in (2, 5, 8, 11, 14)}, reverse=True)


def build_surrogate(num_layers: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(num_layers, 2 * num_layers),
        torch.nn.CELU(),
        torch.nn.Linear(2 * num_layers, 1),
        torch.nn.Sigmoid(),
    )
    return model.to(torch.float32).eval()


def published_loop(model: torch.nn.Module, masks: torch.Tensor) -> np.ndarray:
    """The published estimator as written: per sample and layer, two single-row surrogate calls.

    Returns the per-layer mean of ``f(mask with layer on) - f(mask with layer off)`` over ``masks``.
    """
    num_samples, num_layers = masks.shape
    totals = [0.0] * num_layers
    with torch.no_grad():
        for mask in masks.to(torch.float32):
            for layer in range(num_layers):
                with_layer = mask.clone()
                with_layer[layer] = 1.0
                without_layer = mask.clone()
                without_layer[layer] = 0.0
                totals[layer] += model(with_layer.unsqueeze(0)).item() - model(without_layer.unsqueeze(0)).item()
    return np.array(totals) / num_samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--samples", type=int, default=80000, help="masks for (a), permutations for (b)")
    parser.add_argument("--loop-samples", type=int, default=400, help="masks actually run through the loop (c)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timings of (a) and (b); the median is reported")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "shapley_speed.json"))
    args = parser.parse_args()
    if min(args.layers, args.samples, args.loop_samples, args.repeats) < 1:
        parser.error("--layers, --samples, --loop-samples and --repeats must be positive")

    num_layers = args.layers
    kept_counts = paper_strata(num_layers)
    model = build_surrogate(num_layers, args.seed)

    # warm-up (first-call allocations, thread pool start)
    paper_contributions(model, num_layers, kept_counts, 64, seed=args.seed)
    permutation_shapley(model, num_layers, 64, seed=args.seed)
    published_loop(model, sample_paper_masks(num_layers, kept_counts, 2, seed=args.seed))

    # (a) and (b): the median of --repeats runs (same seed, so the same estimate every time)
    paper_runs = [paper_contributions(model, num_layers, kept_counts, args.samples, seed=args.seed)]
    perm_runs = [permutation_shapley(model, num_layers, args.samples, seed=args.seed)]
    for _ in range(args.repeats - 1):
        paper_runs.append(paper_contributions(model, num_layers, kept_counts, args.samples, seed=args.seed))
        perm_runs.append(permutation_shapley(model, num_layers, args.samples, seed=args.seed))
    paper, perm = paper_runs[0], perm_runs[0]
    paper_seconds = statistics.median(run.seconds for run in paper_runs)
    perm_seconds = statistics.median(run.seconds for run in perm_runs)

    # (c) on a few masks only, and the vectorised code on exactly those masks
    loop_masks = sample_paper_masks(num_layers, kept_counts, args.loop_samples, seed=args.seed + 1)
    start = time.perf_counter()
    loop_means = published_loop(model, loop_masks)
    loop_seconds = time.perf_counter() - start
    loop_extrapolated = loop_seconds * args.samples / args.loop_samples
    same_masks = paper_contributions_on_masks(model, loop_masks)
    max_diff = float(np.abs(same_masks.values - loop_means).max())
    match = max_diff <= MATCH_TOLERANCE

    rows = [
        {
            "method": "(a) paper estimator, vectorised",
            "samples": args.samples,
            "seconds": paper_seconds,
            "utility_rows": paper.num_utility_calls,
            "all_seconds": [run.seconds for run in paper_runs],
        },
        {
            "method": "(b) permutation Shapley, vectorised",
            "samples": perm.num_samples,
            "seconds": perm_seconds,
            "utility_rows": perm.num_utility_calls,
            "all_seconds": [run.seconds for run in perm_runs],
        },
        {
            "method": f"(c) published loop (extrapolated from {args.loop_samples})",
            "samples": args.samples,
            "seconds": loop_extrapolated,
            "utility_rows": 2 * num_layers * args.samples,
            "measured_seconds": loop_seconds,
            "measured_samples": args.loop_samples,
        },
    ]
    for row in rows:
        row["speedup_vs_loop"] = loop_extrapolated / row["seconds"]
    speedup = rows[0]["speedup_vs_loop"]
    target_met = speedup >= TARGET_SPEEDUP

    print(
        f"surrogate {num_layers} -> {2 * num_layers} -> 1 (CELU, sigmoid), float32 CPU, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; kept counts {kept_counts}; "
        f"(a), (b): median of {args.repeats}"
    )
    header = f"{'method':<45} | {'samples':>8} | {'seconds':>9} | {'speed-up vs loop':>16}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['method']:<45} | {row['samples']:>8} | {row['seconds']:>9.3f} | {row['speedup_vs_loop']:>15.1f}x")
    print(
        f"(c) measured: {loop_seconds:.3f} s for {args.loop_samples} samples "
        f"({2 * num_layers * args.loop_samples} single-row calls), extrapolated linearly x{args.samples / args.loop_samples:g}"
    )
    print(
        f"loop vs vectorised on the same {args.loop_samples} masks: max |mean difference| = {max_diff:.2e} "
        f"({'match' if match else 'MISMATCH'}, tolerance {MATCH_TOLERANCE:g})"
    )
    print(
        f"target: vectorised paper estimator >= {TARGET_SPEEDUP:g}x faster than the loop: "
        f"{speedup:.1f}x, {'met' if target_met else 'NOT met'}"
    )

    meta = {
        "layers": num_layers,
        "kept_counts": kept_counts,
        "samples": args.samples,
        "loop_samples": args.loop_samples,
        "seed": args.seed,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "target_speedup": TARGET_SPEEDUP,
        "target_met": target_met,
        "loop_matches_vectorised": match,
        "loop_max_abs_diff": max_diff,
    }
    output = {
        "meta": meta,
        "rows": rows,
        "estimates": {"paper": paper.to_dict(), "permutation": perm.to_dict()},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(output, f, indent=2)
    print(f"wrote {args.output}")
    return 0 if match else 1


if __name__ == "__main__":
    sys.exit(main())
