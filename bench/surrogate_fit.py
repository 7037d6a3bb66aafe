"""Is the paper's MLP the right surrogate? Held-out accuracy of candidate surrogates on real evaluated masks.

    python bench/quality.py             # first: it writes the mask caches this bench reads
    python bench/surrogate_fit.py       # seconds; reads bench/results/quality-cache/<model>/mask_evaluations.jsonl

Every mask the quality bench evaluated on the real model (stratified designs of every method, SLEB's and the
searches' verified sets) with its calibration loss; the utility is the default ``log_ppl_ratio``. Each surrogate is
trained on the same random 80% and scored on the other 20%, over ``--splits`` splits; the table reports medians of
held-out R^2, Spearman rank correlation over all held-out masks, and Spearman among held-out masks of each target kept
count (what the search relies on: ranking sets of one size). Candidates: the paper's MLP (L -> 2L -> 1, CELU, SGD,
300 epochs; our default), a wider one (L -> 8L), a longer-trained one (1,500 epochs), an additive model (ridge on the
mask bits: its Shapley values are its coefficients) and a pairwise model (ridge on bits and all products of two bits).
Ridge penalties are chosen per split by leave-one-out error on the training masks.
Writes bench/results/surrogate_fit.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from itertools import combinations

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from optimum_shapley.encoding import key_to_mask  # noqa: E402
from optimum_shapley.evaluation import MaskEvaluationCache  # noqa: E402
from optimum_shapley.evaluation.losses import utilities_from_nll  # noqa: E402
from optimum_shapley.surrogate import _r2, spearman, train_surrogate  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TARGET_KEPT = {"smollm2-135m": [24, 20], "gemma3-270m": [14, 12]}  # the quality bench's cells: remove 6/10, 4/6
RIDGE_PENALTIES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def cache_file(cache_dir: str, alias: str) -> str:
    """The quality bench's mask cache of one model; exits with what to run when it is absent."""
    path = os.path.join(cache_dir, alias, "mask_evaluations.jsonl")
    if not os.path.exists(path):
        sys.exit(f"missing {path}: run `python bench/quality.py` first (it writes the mask caches)")
    return path


def read_cache(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Masks and log-ratio utilities of one cache file; its first record (the full model) fixes the fingerprint."""
    with open(path, encoding="utf-8") as f:
        fingerprint = json.loads(f.readline())["fingerprint"]
    evaluations = MaskEvaluationCache(os.path.dirname(path), fingerprint).evaluations()
    full = next(e for e in evaluations if set(e.mask) == {"1"})
    evaluations = [full] + [e for e in evaluations if e is not full]  # row 0 = the full model, as in the pruner
    utilities = utilities_from_nll([e.mean_nll for e in evaluations], full.mean_nll, "log_ppl_ratio")
    return np.stack([key_to_mask(e.mask) for e in evaluations]), utilities


def pairwise_features(masks: np.ndarray) -> np.ndarray:
    x = masks.astype(np.float64)
    pairs = [x[:, i] * x[:, j] for i, j in combinations(range(x.shape[1]), 2)]
    return np.column_stack([x, *pairs])


def ridge(features_train: np.ndarray, y_train: np.ndarray, features_all: np.ndarray) -> np.ndarray:
    """Ridge regression (intercept unpenalised) with the penalty of least leave-one-out error; predicts every row."""
    mean_x, mean_y = features_train.mean(0), y_train.mean()
    xc, yc = features_train - mean_x, y_train - mean_y
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    uty = u.T @ yc
    best = None
    for penalty in RIDGE_PENALTIES:
        shrink = s**2 / (s**2 + penalty)
        fitted = u @ (shrink * uty)
        leverage = (u**2 * shrink).sum(1) + 1.0 / len(y_train)
        loo = float((((yc - fitted) / np.maximum(1.0 - leverage, 1e-9)) ** 2).mean())
        if best is None or loo < best[0]:
            best = (loo, vt.T @ (s / (s**2 + penalty) * uty))
    return (features_all - mean_x) @ best[1] + mean_y


def mlp(masks, utilities, split_seed, **options):
    """Our ``train_surrogate`` (its own seeded 80/20 split, the one ``validation_split`` returns): predictions for
    every row."""
    surrogate, fit = train_surrogate(masks, utilities, utility="log_ppl_ratio", seed=split_seed, **options)
    import torch

    with torch.no_grad():
        predicted = surrogate(torch.from_numpy(masks.astype(np.float32))).double().numpy()
    return predicted


SURROGATES = {
    "mlp L-2L-1 (paper, default)": lambda m, u, s, f, tr: mlp(m, u, s),
    "mlp L-8L-1": lambda m, u, s, f, tr: mlp(m, u, s, hidden_multiplier=8),
    "mlp L-2L-1, 1500 epochs": lambda m, u, s, f, tr: mlp(m, u, s, epochs=1500),
    "additive (ridge)": lambda m, u, s, f, tr: ridge(m[tr].astype(np.float64), u[tr], m.astype(np.float64)),
    "pairwise (ridge)": lambda m, u, s, f, tr: ridge(f[tr], u[tr], f),
}


def validation_split(n: int, seed: int, fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """The exact split ``train_surrogate`` makes for ``seed`` (row 0 always trains)."""
    num_validation = int(np.floor(fraction * n))
    order = 1 + np.random.default_rng(seed).permutation(n - 1)
    return np.sort(np.concatenate([[0], order[num_validation:]])), np.sort(order[:num_validation])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=os.path.join(ROOT, "bench", "results", "quality-cache"))
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args()
    start = time.perf_counter()
    rows, counts = [], {}
    for alias, targets in TARGET_KEPT.items():
        masks, utilities = read_cache(cache_file(args.cache_dir, alias))
        kept = masks.sum(1)
        counts[alias] = {"masks": len(masks), **{f"kept {k}": int((kept == k).sum()) for k in targets}}
        features = pairwise_features(masks)
        for name, fit in SURROGATES.items():
            scores = {"r2": [], "spearman": [], **{k: [] for k in targets}}
            for seed in range(args.splits):
                train, held_out = validation_split(len(masks), seed)
                predicted = fit(masks, utilities, seed, features, train)
                measured, guess = utilities[held_out], predicted[held_out]
                scores["r2"].append(_r2(measured, guess))
                scores["spearman"].append(spearman(measured, guess))
                for k in targets:
                    at = kept[held_out] == k
                    scores[k].append(spearman(measured[at], guess[at]) if at.sum() >= 5 else float("nan"))
            row = {"model": alias, "surrogate": name}
            row.update({key: statistics.median(v) for key, v in scores.items() if key in ("r2", "spearman")})
            row["spearman_at_kept"] = {str(k): float(np.nanmedian(scores[k])) for k in targets}
            rows.append(row)
            print(
                f"{alias:<13} {name:<28} R^2 {row['r2']:.3f}  Spearman {row['spearman']:.3f}  at kept "
                + "  ".join(f"{k}: {v:.3f}" for k, v in row["spearman_at_kept"].items()),
                flush=True,
            )

    lines = [
        "| model | surrogate | held-out R^2 | Spearman (all) | Spearman at target kept counts |",
        "|---|---|---:|---:|---|",
    ]
    for r in rows:
        at = ", ".join(f"{k}: {v:.3f}" for k, v in r["spearman_at_kept"].items())
        lines.append(f"| {r['model']} | {r['surrogate']} | {r['r2']:.3f} | {r['spearman']:.3f} | {at} |")
    sizes = "; ".join(
        f"{a}: {c['masks']} masks (" + ", ".join(f"{k}: {v}" for k, v in c.items() if k != "masks") + ")"
        for a, c in counts.items()
    )
    note = (
        f"Medians over {args.splits} random 80/20 splits of the quality bench's evaluated masks ({sizes}); utility "
        f"log(ppl(full)/ppl(mask)) on the calibration blocks; {time.perf_counter() - start:.0f} s on {os.cpu_count()} CPUs."
    )
    os.makedirs(args.output_dir, exist_ok=True)
    print("\n" + "\n".join(lines) + "\n\n" + note)
    with open(os.path.join(args.output_dir, "surrogate_fit.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n\n" + note + "\n")
    with open(os.path.join(args.output_dir, "surrogate_fit.json"), "w", encoding="utf-8") as f:
        json.dump({"splits": args.splits, "masks": counts, "rows": rows}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
