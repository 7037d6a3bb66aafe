"""Could any method have beaten the set the strong searches agree on? Its one-swap neighbours, on the test windows.

    python bench/neighbours.py --quality bench/results/quality.json --calibration /tmp/wiki.valid.txt

Issue #14 asks the default to land strictly below the best other method's WikiText-2 perplexity. Where the default,
SLEB and EvoPress choose the same set (a "tie" in quality.json's verdict), this bench asks whether a set one swap
away (one removed layer kept, one kept layer removed) was better, and whether the calibration objective could have
told: for the centre set and each of its ``removed x kept`` neighbours it measures the WikiText-2 perplexity on the
quality bench's windows (the same model, windows and protocol, so the numbers compare with its table) and the
calibration KL the default minimises (through ``ShapleyLayerPruner.calibration_evaluator``: the default's calibration
blocks and mask cache; ``--keep-cache`` reuses quality.py's cache folder, so a mask it evaluated costs nothing).

This is an oracle: it reads the test set, which no method may. It says how far the agreed set is from the best
neighbour on the test windows and how well the calibration KL ranks the neighbours there (Spearman), not how to
choose. Writes neighbours.json (one record per set, as they come: a stop loses nothing) and neighbours.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from common import DEFAULT_DATA_DIR, data_paths, load_bench_model, report_markdown  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from optimum_shapley import ShapleyLayerPruner, ShapleyPruningConfig  # noqa: E402
from optimum_shapley.pruner import pruning_arguments  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quality", required=True, help="a quality.json of bench/quality.py: its cells and sets")
    parser.add_argument(
        "--cells",
        default="ties",
        help="'ties' (the cells where the default ties the best other method), 'all', or alias:removed,...",
    )
    parser.add_argument(
        "--calibration", default=None, help="calibration text (default: the one the quality.json ran with)"
    )
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--num-samples", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument(
        "--cache-dir", default=None, help="mask cache root to reuse (quality.py's <output-dir>/quality-cache)"
    )
    parser.add_argument(
        "--test-top",
        type=int,
        default=None,
        help="WikiText-2 only for this many neighbours of lowest calibration KL (default: every neighbour)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep the WikiText-2 perplexities of an earlier neighbours.partial.jsonl"
    )
    return parser.parse_args()


def chosen_cells(quality: dict, spec: str) -> list[tuple[str, int, list[int]]]:
    """(alias, removed, the default's removed layers) for the requested cells of a quality.json."""
    default = {(r["model"], r["removed"]): r["removed_layers"] for r in quality["rows"] if r["method"] == "shapley"}
    if spec == "all":
        keys = list(default)
    elif spec == "ties":
        keys = [(t["model"], t["removed"]) for t in quality.get("targets", []) if t["verdict"] == "tie"]
    else:
        try:
            keys = [(alias, int(removed)) for alias, removed in (item.split(":") for item in spec.split(","))]
        except ValueError:
            sys.exit(f"--cells {spec!r}: 'ties', 'all' or alias:removed,... (e.g. gemma3-270m:4)")
    missing = [k for k in keys if k not in default]
    if missing:
        sys.exit(f"--cells: no default row for {missing} in the quality.json")
    return [(alias, removed, default[(alias, removed)]) for alias, removed in keys]


def neighbours(removed: list[int], depth: int) -> list[list[int]]:
    """Every set one swap from ``removed``: one of its layers kept instead of one kept layer."""
    out = []
    for back in removed:
        for out_layer in range(depth):
            if out_layer not in removed:
                out.append(sorted([layer for layer in removed if layer != back] + [out_layer]))
    return out


def main() -> None:
    args = parse_args()
    _, c4 = data_paths(args.data_dir)
    with open(args.quality, encoding="utf-8") as f:
        quality = json.load(f)
    calibration = args.calibration or quality["meta"].get("calibration") or c4
    if not os.path.isfile(calibration):
        sys.exit(f"calibration {calibration}: no such file")
    cells = chosen_cells(quality, args.cells)
    os.makedirs(args.output_dir, exist_ok=True)
    partial = os.path.join(args.output_dir, "neighbours.partial.jsonl")
    measured = {}
    if args.resume and os.path.isfile(partial):
        with open(partial, encoding="utf-8") as f:
            for line in f:
                earlier = json.loads(line)
                measured[(earlier["model"], tuple(earlier["layers"]))] = earlier["wikitext2_ppl"]
    with open(partial, "w", encoding="utf-8") as f:  # rewritten: the resumed records again, then the new ones
        f.writelines(
            json.dumps({"model": model, "layers": list(layers), "wikitext2_ppl": ppl}) + "\n"
            for (model, layers), ppl in measured.items()
        )
    records, summaries = [], []
    by_model: dict[str, list] = {}
    for alias, removed, layers in cells:
        by_model.setdefault(alias, []).append((removed, layers))
    for alias, model_cells in by_model.items():
        windows = quality["meta"]["models"][alias]["eval_windows"]
        bench = load_bench_model(
            alias, args.data_dir, args.num_samples, windows, args.batch_size, quality["meta"]["windows"]
        )
        cache_dir = os.path.join(args.cache_dir or os.path.join(args.output_dir, "neighbours-cache"), alias)
        for removed, layers in model_cells:
            config = ShapleyPruningConfig(
                num_layers_to_remove=removed,
                dataset_name=calibration,
                num_samples=args.num_samples,
                measure_speed=False,
            )
            pruner = ShapleyLayerPruner(
                model=copy.deepcopy(bench.model),
                args=pruning_arguments(cache_dir, bench.batch_size, config.seed, disable_tqdm=True),
                pruning_config=config,
                processing_class=bench.tokenizer,
            )
            cell = Cell(alias, bench, pruner.calibration_evaluator(), measured, partial)
            records.extend(cell.measure(removed, layers, args.test_top))
            summary = summarise(alias, removed, cell.records)
            summary.update(one_shot_rules(quality, alias, removed, layers, bench.depth, cell.kl, cell.test_ppl))
            summaries.append(summary)
            del pruner
        del bench
    write(args.output_dir, records, summaries)


class Cell:
    """One model's measurements: calibration KL through the pruner's evaluator (cached), WikiText-2 perplexity
    (remembered across cells and, with ``--resume``, across runs)."""

    def __init__(self, alias: str, bench, evaluator, measured: dict, partial: str):
        self.alias, self.bench, self.evaluator, self.measured, self.partial = alias, bench, evaluator, measured, partial
        self.records: list[dict] = []

    def kl(self, candidate: list[int]) -> float:
        return self.evaluator([i for i in range(self.bench.depth) if i not in candidate]).mean_kl

    def test_ppl(self, candidate: list[int]) -> float:
        key = (self.alias, tuple(candidate))
        if key not in self.measured:
            self.measured[key] = self.bench.wikitext_ppl(candidate)
        return self.measured[key]

    def measure(self, removed: int, layers: list[int], test_top: int | None = None) -> list[dict]:
        """The centre and each of its one-swap neighbours (calibration KL for all; WikiText-2 for the ``test_top``
        neighbours of lowest calibration KL, or all), written to the partial file as they come."""
        around = neighbours(layers, self.bench.depth)
        kls = {tuple(candidate): self.kl(candidate) for candidate in [layers] + around}
        ranked = sorted(around, key=lambda candidate: kls[tuple(candidate)])
        tested = {tuple(candidate) for candidate in ranked[: len(ranked) if test_top is None else test_top]}
        tested |= {key for key in kls if (self.alias, key) in self.measured}  # measured before: free
        for index, candidate in enumerate([layers] + ranked):
            start = time.perf_counter()
            on_test = index == 0 or tuple(candidate) in tested
            record = {
                "model": self.alias,
                "removed": removed,
                "layers": candidate,
                "centre": index == 0,
                "calibration_kl": kls[tuple(candidate)],
                "wikitext2_ppl": self.test_ppl(candidate) if on_test else None,
                "seconds": time.perf_counter() - start,
            }
            self.records.append(record)
            if on_test:
                with open(self.partial, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                print(
                    f"{self.alias} rm{removed} {index:>3} {candidate}: ppl {record['wikitext2_ppl']:.2f}, "
                    f"KL {record['calibration_kl']:.4f}",
                    flush=True,
                )
        return self.records


def summarise(alias: str, removed: int, cell: list[dict]) -> dict:
    """One cell's row: the neighbours better on the test windows (among those measured there) and where the
    calibration KL ranks them (among all)."""
    centre, every = cell[0], cell[1:]
    around = [r for r in every if r["wikitext2_ppl"] is not None]
    best = min(around, key=lambda r: r["wikitext2_ppl"])
    better = [r for r in around if r["wikitext2_ppl"] < centre["wikitext2_ppl"]]
    rho = spearmanr([r["calibration_kl"] for r in around], [r["wikitext2_ppl"] for r in around]).statistic
    lower_kl = [r for r in every if r["calibration_kl"] < centre["calibration_kl"]]
    return {
        "model": alias,
        "removed": removed,
        "centre": centre["layers"],
        "centre_ppl": centre["wikitext2_ppl"],
        "neighbours": len(every),
        "on_test": len(around),
        "better_on_test": len(better),
        "best_neighbour": best["layers"],
        "best_neighbour_ratio": best["wikitext2_ppl"] / centre["wikitext2_ppl"],
        "best_neighbour_kl_above_centre": best["calibration_kl"] - centre["calibration_kl"],
        "best_neighbour_kl_rank": 1 + sum(r["calibration_kl"] < best["calibration_kl"] for r in every),
        "better_on_test_and_calibration": sum(r["calibration_kl"] < centre["calibration_kl"] for r in better),
        "lower_calibration_kl": len(lower_kl),
        "spearman_kl_vs_test": float(rho) if math.isfinite(rho) else None,
    }


def exact_marginals(centre: list[int], depth: int, kl) -> list[float]:
    """Each layer's real marginal at the centre, as the value check measures it: how much the calibration KL rises
    when a kept layer is removed too, or falls when a removed layer is added back (one evaluation each)."""
    base = kl(centre)
    return [
        base - kl([i for i in centre if i != layer]) if layer in centre else kl(sorted(centre + [layer])) - base
        for layer in range(depth)
    ]


def one_shot_rules(quality: dict, alias: str, removed: int, centre: list[int], depth: int, kl, test_ppl) -> dict:
    """The k-lowest rule twice: on the default run's values (quality.json's one-shot row) and on the exact marginals
    at its chosen set; each set's WikiText-2 perplexity against the best other method's (quality.json's verdict)."""
    target = next((t for t in quality.get("targets", []) if (t["model"], t["removed"]) == (alias, removed)), None)
    row = next(
        (r for r in quality["rows"] if (r["model"], r["removed"], r["method"]) == (alias, removed, "shapley one-shot")),
        None,
    )
    if target is None or row is None:
        return {}  # a quality.json without the verdict or the one-shot row: the neighbours table alone
    marginals = exact_marginals(centre, depth, kl)
    exact = sorted(sorted(range(depth), key=lambda i: (marginals[i], i))[:removed])
    exact_ppl = test_ppl(exact)
    return {
        "best_other_ppl": target["best_other_ppl"],
        "values_one_shot": row["removed_layers"],
        "values_one_shot_ratio": row["wikitext2_ppl"] / target["best_other_ppl"],
        "exact_marginals": marginals,
        "marginals_one_shot": exact,
        "marginals_one_shot_ratio": exact_ppl / target["best_other_ppl"],
    }


def write(output_dir: str, records: list[dict], summaries: list[dict]) -> None:
    with open(os.path.join(output_dir, "neighbours.json"), "w", encoding="utf-8") as f:
        json.dump({"cells": summaries, "sets": records}, f, indent=1)
    lines = [
        "| model | removed | centre | centre ppl | neighbours (on test) | better on test | best neighbour | ratio "
        "| its KL - centre's | its KL rank | better on test and calibration | lower calibration KL | Spearman KL vs test |",
        "|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        rho = "-" if s["spearman_kl_vs_test"] is None else f"{s['spearman_kl_vs_test']:.3f}"
        lines.append(
            f"| {s['model']} | {s['removed']} | {', '.join(map(str, s['centre']))} | {s['centre_ppl']:.2f} | "
            f"{s['neighbours']} ({s['on_test']}) | {s['better_on_test']} | "
            f"{', '.join(map(str, s['best_neighbour']))} | "
            f"{s['best_neighbour_ratio']:.3f} | {s['best_neighbour_kl_above_centre']:+.4f} | "
            f"{s['best_neighbour_kl_rank']} of {s['neighbours']} | "
            f"{s['better_on_test_and_calibration']} | {s['lower_calibration_kl']} | {rho} |"
        )
    lines += [
        "",
        "| model | removed | k lowest values (the default run's) | / best other | k lowest exact marginals at the "
        "chosen set | / best other |",
        "|---|---:|---|---:|---|---:|",
    ]
    for s in [summary for summary in summaries if "values_one_shot" in summary]:
        lines.append(
            f"| {s['model']} | {s['removed']} | {', '.join(map(str, s['values_one_shot']))} | "
            f"{s['values_one_shot_ratio']:.3f} | {', '.join(map(str, s['marginals_one_shot']))} | "
            f"{s['marginals_one_shot_ratio']:.3f} |"
        )
    note = (
        "Oracle: the test windows rank the neighbours; no method may read them. 'better on test and calibration' "
        "counts neighbours a calibration-driven search could have preferred and that were also better on the test."
    )
    report_markdown(output_dir, "neighbours", "\n".join(lines), note)


if __name__ == "__main__":
    main()
