"""Which values predict the real marginals? Every estimator refitted on a finished run, against its value check.

    python bench/value_estimators.py demo-output                  # a run folder (shapley_results.json, surrogate/)
    python bench/value_estimators.py out-rm6 out-rm10 --json v.json

A default ``shapley`` run measures, at its chosen set, each layer's real marginal (remove each kept layer, add back
each removed one: ``game.value_check.real_marginals``) after computing its values. This bench recomputes the values
with each estimator from what the run had before its value check: ``measured`` on the run's evaluated masks and
utilities without the value check's new evaluations (``shapley_results.json``: ``masks``, ``utilities``,
``value_check.new_evaluations``), ``local`` and ``semivalue`` on the run's saved surrogate (``surrogate/``, when the
folder has one), and reports the Spearman rank correlation of each with the real marginals. No model is loaded: it
runs in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from optimum_shapley.encoding import key_to_mask  # noqa: E402
from optimum_shapley.game_values import measured_values, region_values  # noqa: E402
from optimum_shapley.surrogate import ShapleySurrogate, spearman  # noqa: E402


def estimates(folder: str, mc_samples: int) -> dict:
    with open(os.path.join(folder, "shapley_results.json"), encoding="utf-8") as f:
        result = json.load(f)
    check = (result.get("game") or {}).get("value_check") or {}
    if not check.get("real_marginals"):
        sys.exit(f"{folder}: no value check with real marginals (a default shapley run writes one)")
    layers = result["num_layers"]
    real = np.asarray(check["real_marginals"], dtype=np.float64)
    before = len(result["masks"]) - int(check.get("new_evaluations", 0))
    masks = np.stack([key_to_mask(k) for k in result["masks"][:before]])
    utilities = np.asarray(result["utilities"][:before], dtype=np.float64)
    chosen = np.ones(layers, dtype=bool)
    chosen[result["removed_layers"]] = False
    row = {
        "folder": folder,
        "layers": layers,
        "removed": len(result["removed_layers"]),
        "run_estimator": result.get("estimator"),
        "run_spearman": check.get("spearman"),
        "evaluations_before_check": before,
    }
    measured = measured_values(masks, utilities, chosen)
    row["measured"] = spearman(measured.values, real) if measured is not None else None
    row["measured_region"] = measured.region if measured is not None else "too few evaluations near the set"
    surrogate_dir = os.path.join(folder, "surrogate")
    if os.path.isdir(surrogate_dir):
        surrogate = ShapleySurrogate.from_pretrained(surrogate_dir).eval()
        target = layers - row["removed"]
        for name, center in (("local", chosen), ("semivalue", None)):
            estimate = region_values(surrogate, layers, target, num_samples=mc_samples, center=center, seed=0)
            row[name] = spearman(estimate.values, real)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="run folders of default shapley runs")
    parser.add_argument("--mc-samples", type=int, default=20000)
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    rows = [estimates(folder, args.mc_samples) for folder in args.folders]

    def fmt(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    print("| run | removed | the run's values (estimator) | measured | local (surrogate) | semivalue (surrogate) |")
    print("|---|---:|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {os.path.basename(os.path.normpath(row['folder']))} | {row['removed']} of {row['layers']} | "
            f"{fmt(row['run_spearman'])} ({row['run_estimator']}) | {fmt(row['measured'])} | "
            f"{fmt(row.get('local'))} | {fmt(row.get('semivalue'))} |"
        )
    print("\nSpearman rank correlation with the real marginals at the chosen set (the run's value check).")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
