"""Does spending evaluations where an ensemble of surrogates disagrees beat more stratified random masks?

    python bench/quality.py              # first: it writes the mask caches this bench reads
    python bench/adaptive_sampling.py    # a few minutes; no model, the utilities are the cached real ones

A pool-based simulation of search-efficiency direction 1 on real utilities. The pool is every mask the quality bench
evaluated for a model; half of its masks at the target kept count (remove 6 of 30 for SmolLM2, 4 of 18 for Gemma-3),
drawn anew for every repeat, is the test set. Each strategy starts from the same ``--initial`` random pool masks (plus the full model)
and adds ``--step`` masks at a time up to ``--budget``:

- ``random``: uniformly from the rest of the pool (what more stratified masks do);
- ``uncertainty``: the masks where an ensemble of 5 surrogates (the default MLP, each trained on its own random 80%
  of the masks so far) disagrees most (largest standard deviation of the predictions);
- ``uncertainty near target``: the same, only among masks within one layer of the target kept count.

After each step the default surrogate is trained on the masks so far and scored on the test set: Spearman rank
correlation (how well it orders sets of the target size, what the search relies on) and regret, the utility gap
between the best test set and the test set the surrogate ranks first (0: it would pick the best). Medians over
``--repeats`` random starts. Writes bench/results/adaptive_sampling.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from surrogate_fit import cache_file, read_cache  # noqa: E402

from optimum_shapley.surrogate import spearman, train_surrogate  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TARGET_KEPT = {"smollm2-135m": 24, "gemma3-270m": 14}
ENSEMBLE = 5


def predict(masks: np.ndarray, utilities: np.ndarray, rows: np.ndarray, seed: int, everything: torch.Tensor):
    """The default surrogate trained on ``rows`` (its own 80/20 split by ``seed``), predicting every pool mask."""
    surrogate, _ = train_surrogate(masks[rows], utilities[rows], utility="log_ppl_ratio", seed=seed)
    with torch.no_grad():
        return surrogate(everything).double().numpy()


def simulate(masks, utilities, test, strategy, initial, step, budget, seed) -> list[dict]:
    rng = np.random.default_rng(seed)
    kept = masks.sum(1)
    target = int(kept[test[0]])
    everything = torch.from_numpy(masks.astype(np.float32))
    candidates = np.setdiff1d(np.arange(1, len(masks)), test)
    chosen = np.concatenate([[0], rng.choice(candidates, initial, replace=False)])
    curve = []
    while True:
        predicted = predict(masks, utilities, chosen, seed, everything)
        measured, guess = utilities[test], predicted[test]
        curve.append(
            {
                "evaluations": len(chosen),
                "spearman": spearman(measured, guess),
                "regret": float(measured.max() - measured[np.argmax(guess)]),
            }
        )
        if len(chosen) >= budget:
            return curve
        rest = np.setdiff1d(candidates, chosen)
        if strategy == "uncertainty near target":
            rest = rest[np.abs(kept[rest] - target) <= 1]
        if strategy == "random" or len(rest) <= step:
            pick = rng.choice(rest, min(step, len(rest)), replace=False)
        else:
            members = np.stack(
                [predict(masks, utilities, chosen, seed * 100 + m + 1, everything) for m in range(ENSEMBLE)]
            )
            spread = members[:, rest].std(0)
            pick = rest[np.argsort(-spread, kind="stable")[:step]]
        chosen = np.concatenate([chosen, pick])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=os.path.join(ROOT, "bench", "results", "quality-cache"))
    parser.add_argument("--initial", type=int, default=32)
    parser.add_argument("--step", type=int, default=16)
    parser.add_argument("--budget", type=int, default=129)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args()
    start = time.perf_counter()
    torch.set_num_threads(1)  # tiny networks: threads only add overhead
    strategies = ("random", "uncertainty", "uncertainty near target")
    rows, pools = [], {}
    for alias, target in TARGET_KEPT.items():
        masks, utilities = read_cache(cache_file(args.cache_dir, alias))
        at_target = np.flatnonzero(masks.sum(1) == target)
        tests = [
            np.sort(np.random.default_rng(seed).choice(at_target, len(at_target) // 2, replace=False))
            for seed in range(args.repeats)
        ]
        pools[alias] = {"pool": len(masks), "at_target": len(at_target), "test": len(tests[0])}
        for strategy in strategies:
            curves = [
                simulate(masks, utilities, tests[seed], strategy, args.initial, args.step, args.budget, seed)
                for seed in range(args.repeats)
            ]
            for point in range(len(curves[0])):
                row = {"model": alias, "strategy": strategy, "evaluations": curves[0][point]["evaluations"]}
                for metric in ("spearman", "regret"):
                    row[metric] = statistics.median(c[point][metric] for c in curves)
                rows.append(row)
            last = rows[-1]
            print(
                f"{alias:<13} {strategy:<24} at {last['evaluations']} masks: Spearman {last['spearman']:.3f}, "
                f"regret {last['regret']:.4f}",
                flush=True,
            )

    budgets = sorted({r["evaluations"] for r in rows})
    lines = [
        "| model | strategy | " + " | ".join(f"{b} masks" for b in budgets) + " |",
        "|---|---|" + "---:|" * len(budgets),
    ]
    for alias in TARGET_KEPT:
        for strategy in strategies:
            cells = {r["evaluations"]: r for r in rows if (r["model"], r["strategy"]) == (alias, strategy)}
            lines.append(
                f"| {alias} | {strategy} | "
                + " | ".join(f"{cells[b]['spearman']:.2f} / {cells[b]['regret']:.3f}" for b in budgets)
                + " |"
            )
    pool_text = "; ".join(
        f"{a}: {p['pool']} masks, {p['test']} of {p['at_target']} at the target held out" for a, p in pools.items()
    )
    note = (
        f"Each cell: test-set Spearman / regret (log-ppl-ratio units), medians of {args.repeats} random starts "
        f"({pool_text}); {time.perf_counter() - start:.0f} s on {os.cpu_count()} CPUs."
    )
    print("\n" + "\n".join(lines) + "\n\n" + note)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "adaptive_sampling.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n\n" + note + "\n")
    with open(os.path.join(args.output_dir, "adaptive_sampling.json"), "w", encoding="utf-8") as f:
        json.dump({"settings": vars(args), "pools": pools, "rows": rows}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
