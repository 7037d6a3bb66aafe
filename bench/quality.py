"""Which layers should go? Every criterion side by side, one protocol, real models, through the user's code path.

    python bench/quality.py            # SmolLM2-135M (remove 6, 10 of 30) and Gemma-3-270M (remove 4, 6 of 18)
    python bench/quality.py --quick    # SmolLM2-135M, remove 6, fewer evaluation windows and peers

Every method runs as a user runs it: ``ShapleyLayerPruner(pruning_config=ShapleyPruningConfig(method=...,
dataset_name=c4_demo.json))`` with the CLI's ``TrainingArguments`` (``pruning_arguments``), on a copy of the loaded
model, so ``optimum-shapley prune MODEL --remove N --dataset c4_demo.json --method M`` chooses the same layers (the
speed report, ``measure_speed``, is off: it times the dense and the pruned model, 10-20 s a row here, and chooses
nothing; bench/throughput.py measures speed).
Calibration: 10 blocks of 128 tokens of ../shared/data/calibration/c4_demo.json with the config's default seed (the
CLI's); the default ``shapley`` also re-scores its best sets on 40 more blocks (another seed, same file).
``--calibration FILE`` gives every method another calibration text (in-domain calibration: WikiText-2's tokenized
validation split, copied to a .txt file).
Evaluation: WikiText-2 raw test, "\\n\\n".join of the lines, non-overlapping 128-token windows, token-weighted, on
--eval-windows windows (default 128 for SmolLM2, 64 for Gemma-3) spread evenly over the whole test set (its 60
articles; since session 16), or the first ones with ``--windows first`` (the tables before: about two articles).

Each model has one run folder, so one mask-evaluation cache, shared by every method and cell (evaluations are
deterministic: a mask SLEB and ``shapley`` both ask for runs once). "evaluations" is what the method needs (its
real cost, cache or not), "tokens" the input tokens of all its evaluations (calibration and verification),
"selection s" its time as if it ran alone (its measured time plus, for every mask another method had evaluated,
the seconds that evaluation took). Extra rows: ``shapley one-shot`` removes the k lowest values of the default run
(no search), ``shapley reuse`` prunes at remove 10 with the remove-6 run's saved surrogate (SmolLM2), and
``evopress x2`` runs EvoPress at twice the default's real evaluations (``--evopress-x2`` cells).
After the table, issue #14's checks per cell: the default against the best other method (the one-shot and reuse rows
are the default's own), with a 95% paired-bootstrap interval over the evaluation windows, so a difference within the
luck of the windows drawn reads as such; the one-shot ratio, the value check, tokens against SLEB's, the reuse ratio.
Writes bench/results/quality.json, bench/results/quality.md and bench/results/quality.png.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import shutil
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from common import DEFAULT_DATA_DIR, WINDOW_CHOICES, data_paths, load_bench_model, report_markdown  # noqa: E402

from optimum_shapley import ShapleyLayerPruner, ShapleyPruningConfig  # noqa: E402
from optimum_shapley.criteria import METHODS  # noqa: E402
from optimum_shapley.evaluation import CACHE_FILE_NAME  # noqa: E402
from optimum_shapley.pruner import pruning_arguments  # noqa: E402

CELLS = {"smollm2-135m": [6, 10], "gemma3-270m": [4, 6]}
EVAL_WINDOWS = {"smollm2-135m": 128, "gemma3-270m": 64}
"""WikiText-2 windows per model: a Gemma-3 window costs about 4x a SmolLM2 one (262k-token vocabulary head)."""
REUSE = {"smollm2-135m": (6, 10)}
"""Surrogate reuse rows: the surrogate of the first cell's default run prunes at the second."""
QUICK_METHODS = ("shapley", "evopress", "sleb", "angular", "block-influence", "ppl")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="SmolLM2 only, remove 6, 32 windows, main peers")
    parser.add_argument("--models", default=None, help="comma-separated aliases (default: both, or SmolLM2 if --quick)")
    parser.add_argument("--methods", default=None, help="comma-separated methods (default: all)")
    parser.add_argument("--removed", default=None, help="comma-separated layer counts to remove (default: the cells)")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--eval-windows", type=int, default=None, help="WikiText-2 windows (default per model)")
    parser.add_argument(
        "--windows",
        choices=WINDOW_CHOICES,
        default="spread",
        help="which WikiText-2 windows: --eval-windows spread evenly over the test set (default), or the first ones",
    )
    parser.add_argument("--num-samples", type=int, default=10, help="calibration blocks (default 10)")
    parser.add_argument(
        "--calibration",
        default=None,
        help="calibration text for every method (a .txt/.json/.jsonl file; default: calibration/c4_demo.json of "
        "--data-dir), e.g. WikiText-2's tokenized validation split saved as .txt for in-domain calibration",
    )
    parser.add_argument(
        "--evopress-x2",
        default="smollm2-135m:6",
        help="cells (alias:removed, comma-separated, or 'all'/'none') that also run EvoPress at 2x the default's "
        "evaluations (default: SmolLM2 remove 6 only, for the 90-minute budget)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument("--keep-cache", action="store_true", help="reuse an earlier run's mask cache")
    parser.add_argument(
        "--default-config",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help='a ShapleyPruningConfig field for the default\'s rows (repeatable; JSON values), e.g. estimator="local"',
    )
    args = parser.parse_args()
    args.default_overrides = {}
    for item in args.default_config:
        name, _, value = item.partition("=")
        if name not in {f.name for f in dataclasses.fields(ShapleyPruningConfig)}:
            parser.error(f"--default-config {item!r}: no ShapleyPruningConfig field {name!r}")
        try:
            args.default_overrides[name] = json.loads(value)
        except json.JSONDecodeError:
            args.default_overrides[name] = value  # a bare string

    args.models = args.models.split(",") if args.models else (["smollm2-135m"] if args.quick else list(CELLS))
    args.methods = args.methods.split(",") if args.methods else list(QUICK_METHODS if args.quick else METHODS)
    if "shapley" in args.methods:  # the default runs first: its budget sizes EvoPress's
        args.methods = ["shapley"] + [m for m in args.methods if m != "shapley"]
    if args.quick and args.eval_windows is None:
        args.eval_windows = 32
    return args


def run_method(bench, cache_dir: str, c4: str, method: str, removed: int, num_samples: int, **config_overrides):
    """One method on one cell, as ``optimum-shapley prune`` runs it; returns (pruner, result, seconds reused)."""
    seconds_by_mask = _cached_seconds(cache_dir)
    surrogate = config_overrides.pop("surrogate", None)
    config = ShapleyPruningConfig(
        method=method,
        num_layers_to_remove=removed,
        dataset_name=c4,
        num_samples=num_samples,
        measure_speed=False,  # timing dense against pruned decides nothing here (bench/throughput.py measures it)
        **config_overrides,
    )
    pruner = ShapleyLayerPruner(
        model=copy.deepcopy(bench.model),
        args=pruning_arguments(cache_dir, bench.batch_size, config.seed, disable_tqdm=True),
        pruning_config=config,
        processing_class=bench.tokenizer,
        surrogate=surrogate,
    )
    result = pruner.prune(evaluate_calibration=True)
    return pruner, result, seconds_by_mask


def _cached_seconds(cache_dir: str) -> dict[str, float]:
    """(fingerprint, mask) -> seconds of every evaluation already in the cache file."""
    path = os.path.join(cache_dir, CACHE_FILE_NAME)
    out = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    out[(record["fingerprint"], record["mask"])] = float(record.get("seconds", 0.0))
    return out


def reused_seconds(before: dict, pruner) -> float:
    """Seconds the method would have spent on masks another method had already evaluated: the cache lines that
    existed before it ran and that it asked for (its own new lines are its measured time)."""
    evaluators = [pruner.evaluator] + ([pruner.evaluator.verifier] if pruner.evaluator.verifier else [])
    requested = {(e.cache.fingerprint, key) for e in evaluators for key in set(e.requests)}
    return sum(seconds for item, seconds in before.items() if item in requested)


def plot(rows: list[dict], dense: dict[str, float], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cells = sorted(
        {(r["model"], r["removed"]) for r in rows},
        key=lambda c: (list(CELLS).index(c[0]) if c[0] in CELLS else 9, c[1]),
    )
    fig = Figure(figsize=(4.6 * len(cells), 4.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(cells), squeeze=False)
    for ax, (model, removed) in zip(axes[0], cells):
        cell = [r for r in rows if (r["model"], r["removed"]) == (model, removed)]
        colors = ["#d62728" if r["method"].startswith("shapley") else "#1f77b4" for r in cell]
        ax.bar(range(len(cell)), [r["wikitext2_ppl"] for r in cell], color=colors)
        ax.axhline(dense[model], color="black", linestyle="--", linewidth=0.8, label="dense")
        ax.set_yscale("log")
        ax.set_xticks(range(len(cell)))
        ax.set_xticklabels([r["method"] for r in cell], rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{model}: remove {removed}", fontsize=10)
        ax.set_ylabel("WikiText-2 perplexity (128-token windows, log)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _x2_cells(spec: str) -> set[tuple[str, int]]:
    if spec == "none":
        return set()
    if spec == "all":
        return {(alias, r) for alias, cells in CELLS.items() for r in cells}
    out = set()
    for item in spec.split(","):
        alias, removed = item.split(":")
        out.add((alias, int(removed)))
    return out


def main() -> None:
    args = parse_args()
    _, c4 = data_paths(args.data_dir)
    if args.calibration:
        if not os.path.isfile(args.calibration):
            sys.exit(f"--calibration {args.calibration}: no such file")
        c4 = args.calibration
    os.makedirs(args.output_dir, exist_ok=True)
    cache_root = os.path.join(args.output_dir, "quality-cache")
    if not args.keep_cache:
        shutil.rmtree(cache_root, ignore_errors=True)  # every bench run measures from scratch
    x2_cells = _x2_cells(args.evopress_x2)

    rows, dense, meta = [], {}, {}
    partial = os.path.join(args.output_dir, "quality.partial.jsonl")
    open(partial, "w").close()
    bench_start = time.perf_counter()

    def record(row: dict, started: float) -> None:
        row["wall_seconds"] = time.perf_counter() - started  # the method, its reports and its WikiText-2 windows
        rows.append(row)
        with open(partial, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"  remove {row['removed']:>2} {row['method']:<16} ppl {row['wikitext2_ppl']:>12.2f} "
            f"(calib {row['calibration_ppl']:>10.2f})  evals {row['evaluations']:>4} + {row['verification']:>2} "
            f"verif  tokens {row['tokens']:>8}  {row['selection_seconds']:>7.1f} s  layers {row['removed_layers']}",
            flush=True,
        )

    for alias in args.models:
        eval_windows = args.eval_windows or EVAL_WINDOWS.get(alias, 128)
        bench = load_bench_model(alias, args.data_dir, args.num_samples, eval_windows, args.batch_size, args.windows)
        t = time.perf_counter()
        dense[alias] = bench.wikitext_ppl()
        meta[alias] = {
            "depth": bench.depth,
            "eval_windows": len(bench.windows),
            "calibration_blocks": args.num_samples,
            "eval_tokens": int(bench.windows.numel()),
            "tokens_per_window": int(bench.windows.size(1)) - 1,  # predicted tokens: 2..n of each window
            "wikitext_windows_total": bench.total_windows,
            "dense_eval_seconds": time.perf_counter() - t,
        }
        print(
            f"{alias}: {bench.depth} layers, dense WikiText-2 ppl {dense[alias]:.2f} on "
            f"{len(bench.windows)}/{bench.total_windows} windows",
            flush=True,
        )
        cache_dir = os.path.join(cache_root, alias)
        cells = [int(r) for r in args.removed.split(",")] if args.removed else CELLS[alias][: 1 if args.quick else None]
        surrogates = {}
        for removed in cells:
            default_cost = None
            for method in args.methods:
                variants = [(method, dict(args.default_overrides) if method == "shapley" else {})]
                if method == "evopress" and default_cost is not None:
                    variants = [("evopress", {"max_evaluations": default_cost})]
                    if (alias, removed) in x2_cells:
                        variants.append(("evopress x2", {"max_evaluations": 2 * default_cost}))
                for label, overrides in variants:
                    started = time.perf_counter()
                    before = _cached_seconds(cache_dir)
                    pruner, result, _ = run_method(bench, cache_dir, c4, method, removed, args.num_samples, **overrides)
                    row = make_row(alias, removed, label, result, bench, before, pruner)
                    record(row, started)
                    if method == "shapley":
                        default_cost = result.selection_evaluations + result.verification_evaluations
                        surrogates[removed] = pruner.surrogate
                        if result.values:
                            started = time.perf_counter()
                            one_shot = sorted(sorted(range(bench.depth), key=lambda i: (result.values[i], i))[:removed])
                            row = one_shot_row(alias, removed, one_shot, bench, cache_dir, c4, args.num_samples)
                            record(row, started)
                    del pruner
            reuse = REUSE.get(alias)
            if reuse and removed == reuse[1] and reuse[0] in surrogates and "shapley" in args.methods:
                started = time.perf_counter()
                before = _cached_seconds(cache_dir)
                pruner, result, _ = run_method(
                    bench,
                    cache_dir,
                    c4,
                    "shapley",
                    removed,
                    args.num_samples,
                    surrogate=surrogates[reuse[0]],
                    **args.default_overrides,
                )
                record(make_row(alias, removed, f"shapley reuse {reuse[0]}", result, bench, before, pruner), started)
                del pruner
        del bench

    total = time.perf_counter() - bench_start
    write_report(args, rows, dense, meta, total)


def make_row(alias, removed, label, result, bench, before, pruner) -> dict:
    ppl = bench.wikitext_ppl(result.removed_layers)
    game = result.game or {}
    return {
        "model": alias,
        "removed": removed,
        "method": label,
        "removed_layers": result.removed_layers,
        "wikitext2_ppl": ppl,
        "calibration_ppl": result.calibration_ppl_after,
        "evaluations": result.selection_evaluations,
        "verification": result.verification_evaluations,
        "tokens": result.tokens_processed,
        "selection_seconds": result.selection_seconds + reused_seconds(before, pruner),
        "measured_seconds": result.selection_seconds,
        "surrogate_validation_r2": (result.surrogate_fit or {}).get("validation_r2"),
        "value_check_spearman": (result.value_check or {}).get("spearman"),
        "chosen_by": game.get("chosen_by"),
        "flagged_layers": game.get("flagged_layers"),
        "spent": game.get("spent"),
        "window_nll": bench.window_nll(result.removed_layers),
    }


def one_shot_row(alias, removed, layers, bench, cache_dir, c4, num_samples) -> dict:
    """The k lowest values of the default run, removed with no search: its WikiText-2 and calibration perplexity."""
    config = ShapleyPruningConfig(method="sleb", num_layers_to_remove=removed, dataset_name=c4, num_samples=num_samples)
    pruner = ShapleyLayerPruner(
        model=bench.model,
        args=pruning_arguments(cache_dir, bench.batch_size, config.seed, disable_tqdm=True),
        pruning_config=config,
        processing_class=bench.tokenizer,
    )
    evaluator = pruner.calibration_evaluator()
    calibration = evaluator([i for i in range(bench.depth) if i not in layers]).perplexity
    return {
        "model": alias,
        "removed": removed,
        "method": "shapley one-shot",
        "removed_layers": layers,
        "wikitext2_ppl": bench.wikitext_ppl(layers),
        "calibration_ppl": calibration,
        "evaluations": 0,
        "verification": 0,
        "tokens": 0,
        "selection_seconds": 0.0,
        "measured_seconds": 0.0,
        "surrogate_validation_r2": None,
        "value_check_spearman": None,
        "chosen_by": "the k lowest values of the shapley row",
        "flagged_layers": None,
        "spent": None,
        "window_nll": bench.window_nll(layers),
    }


DERIVED_ROWS = ("shapley one-shot", "shapley reuse")
"""Rows made from the default run (its values, its surrogate): not "another method" in the comparison."""
BOOTSTRAP_DRAWS = 2000


def paired_ratio_interval(
    nll_a: list[float], nll_b: list[float], tokens_per_window: int, draws: int = BOOTSTRAP_DRAWS, seed: int = 0
) -> tuple[float, float]:
    """95% paired-bootstrap interval of ``ppl(a) / ppl(b)`` over the evaluation windows (resampled together, so the
    windows' own difficulty cancels): tells a real difference from the luck of which windows were drawn."""
    diff = np.asarray(nll_a, dtype=np.float64) - np.asarray(nll_b, dtype=np.float64)
    if len(diff) == 0:
        return float("nan"), float("nan")
    index = np.random.default_rng(seed).integers(0, len(diff), size=(draws, len(diff)))
    ratios = np.exp(diff[index].sum(axis=1) / (len(diff) * tokens_per_window))
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def cell_targets(rows: list[dict], tokens_per_window: dict[str, int]) -> list[dict]:
    """Issue #14's checks per cell: the default against the best other method (with the paired interval), the
    one-shot rule against that method, the value check, the tokens against SLEB's, and the reuse row."""
    out = []
    cells = list(dict.fromkeys((r["model"], r["removed"]) for r in rows))
    for model, removed in cells:
        cell = [r for r in rows if (r["model"], r["removed"]) == (model, removed)]
        default = next((r for r in cell if r["method"] == "shapley"), None)
        others = [r for r in cell if r["method"] != "shapley" and not r["method"].startswith(DERIVED_ROWS)]
        if default is None or not others:
            continue
        best_ppl = min(r["wikitext2_ppl"] for r in others)
        best = [r for r in others if r["wikitext2_ppl"] == best_ppl]
        ratio = default["wikitext2_ppl"] / best_ppl
        same_set = any(r["removed_layers"] == default["removed_layers"] for r in best)
        interval = (1.0, 1.0) if same_set else (float("nan"), float("nan"))
        if not same_set and default.get("window_nll") and best[0].get("window_nll"):
            interval = paired_ratio_interval(default["window_nll"], best[0]["window_nll"], tokens_per_window[model])
        verdict = "below" if ratio < 1 else "tie" if ratio == 1 else "above"
        one_shot = next((r for r in cell if r["method"] == "shapley one-shot"), None)
        reuse = next((r for r in cell if r["method"].startswith("shapley reuse")), None)
        sleb = next((r for r in cell if r["method"] == "sleb"), None)
        out.append(
            {
                "model": model,
                "removed": removed,
                "default_ppl": default["wikitext2_ppl"],
                "best_other": [r["method"] for r in best],
                "best_other_ppl": best_ppl,
                "ratio": ratio,
                "interval": interval,
                "verdict": verdict,
                "beyond_noise": not (interval[0] <= 1.0 <= interval[1]),
                "one_shot_ratio": one_shot["wikitext2_ppl"] / best_ppl if one_shot else None,
                "value_check": default.get("value_check_spearman"),
                "tokens_vs_sleb": default["tokens"] / sleb["tokens"] if sleb and sleb["tokens"] else None,
                "reuse_ratio": reuse["wikitext2_ppl"] / default["wikitext2_ppl"] if reuse else None,
            }
        )
    return out


def targets_markdown(targets: list[dict], minutes: float, full_bench: bool) -> str:
    """The checks as a table and a verdict line per target; a missing row is said to be missing, not passed."""
    lines = [
        "| model | removed | default | best other | ratio | 95% paired interval | verdict | one-shot / best "
        "| value check | tokens / SLEB | reuse / fresh |",
        "|---|---:|---:|---|---:|---|---|---:|---:|---:|---:|",
    ]

    def number(value, fmt):
        return "-" if value is None else format(value, fmt)

    for t in targets:
        low, high = t["interval"]
        noise = "" if t["verdict"] == "tie" else " (beyond window noise)" if t["beyond_noise"] else " (within noise)"
        lines.append(
            f"| {t['model']} | {t['removed']} | {t['default_ppl']:.2f} | {', '.join(t['best_other'])} "
            f"{t['best_other_ppl']:.2f} | {t['ratio']:.3f} | {low:.3f}-{high:.3f} | {t['verdict']}{noise} | "
            f"{number(t['one_shot_ratio'], '.3f')} | {number(t['value_check'], '.3f')} | "
            f"{number(t['tokens_vs_sleb'], '.2f')} | {number(t['reuse_ratio'], '.3f')} |"
        )
    below = sum(t["verdict"] == "below" for t in targets)
    above = [t for t in targets if t["verdict"] == "above"]

    def met(ok: bool) -> str:
        return "met" if ok else "MISSED"

    one_shot = [t["one_shot_ratio"] for t in targets if t["one_shot_ratio"] is not None]
    checks = [t["value_check"] for t in targets if t["value_check"] is not None]
    tokens = [t["tokens_vs_sleb"] for t in targets if t["tokens_vs_sleb"] is not None]
    reuse = [t["reuse_ratio"] for t in targets if t["reuse_ratio"] is not None]
    cells = len(targets)

    def count(done: int, of: int) -> str:
        return f"{done} of {of} cell{'' if of == 1 else 's'}"

    def passed(values: list, ok) -> str:
        """How many of the run's cells pass, and how many have no such number (a missing row is not a pass)."""
        missing = cells - len(values)
        return count(sum(bool(ok(v)) for v in values), cells) + (f" ({missing} without the row)" if missing else "")

    def every_cell(values: list, ok) -> str:
        """Met only when every cell of the run has the number and passes; a partial run says so."""
        verdict = met(bool(values) and all(ok(v) for v in values) and len(values) == cells)
        return verdict if cells >= 4 else f"{verdict} in the cells of this run"

    four_cells = met(below >= 2 and not above) if cells >= 4 else f"no verdict, this run has {cells} of the 4"
    verdicts = [
        f"- Default strictly below the best other method in {count(below, cells)}, above in {len(above)} "
        f"(target: at least 2 of 4, never above): {four_cells}.",
        f"- One-shot within 1.10x of the best other method: {passed(one_shot, lambda r: r <= 1.10)}: "
        f"{every_cell(one_shot, lambda r: r <= 1.10)}.",
        f"- Value check >= 0.8: {passed(checks, lambda c: c >= 0.8)}: {every_cell(checks, lambda c: c >= 0.8)}.",
        f"- Tokens at most 2x SLEB's: {passed(tokens, lambda r: r <= 2.0)}: {every_cell(tokens, lambda r: r <= 2.0)}.",
        "- Surrogate reuse within 1.10x of a fresh run: "
        + (
            f"{', '.join(f'{r:.3f}x' for r in reuse)}: {met(all(r <= 1.10 for r in reuse))}."
            if reuse
            else "no reuse row."
        ),
        f"- Whole bench in 90 minutes: {minutes:.1f} min"
        + (f": {met(minutes <= 90)}." if full_bench else " (not the whole bench: no verdict)."),
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(verdicts)


def write_report(args, rows, dense, meta, total) -> None:
    lines = [
        "| model | removed | method | WikiText-2 ppl | x dense | calibration ppl | evaluations | verification "
        "| tokens | tokens / SLEB | selection s | removed layers |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for alias in dense:
        lines.append(f"| {alias} | 0 | dense | {dense[alias]:.2f} | 1.00 | - | 0 | 0 | 0 | - | 0 | - |")
        for r in (r for r in rows if r["model"] == alias):
            cell = [x for x in rows if (x["model"], x["removed"]) == (alias, r["removed"])]
            best = min(x["wikitext2_ppl"] for x in cell)
            sleb = next((x["tokens"] for x in cell if x["method"] == "sleb"), None)
            ratio = f"{r['tokens'] / sleb:.2f}" if sleb and r["tokens"] else "-"
            ppl = f"**{r['wikitext2_ppl']:.2f}**" if r["wikitext2_ppl"] == best else f"{r['wikitext2_ppl']:.2f}"
            calib = f"{r['calibration_ppl']:.2f}" if r["calibration_ppl"] is not None else "-"
            lines.append(
                f"| {alias} | {r['removed']} | {r['method']} | {ppl} | {r['wikitext2_ppl'] / dense[alias]:.2f} | "
                f"{calib} | {r['evaluations']} | {r['verification']} | {r['tokens']} | {ratio} | "
                f"{r['selection_seconds']:.1f} | {', '.join(map(str, r['removed_layers']))} |"
            )
    table = "\n".join(lines)
    note = (
        f"WikiText-2 perplexity on the {'first' if args.windows == 'first' else 'evenly spread'} "
        + ", ".join(f"{meta[a]['eval_windows']} ({a})" for a in meta)
        + f" non-overlapping 128-token windows of the raw test set; calibration {args.num_samples} x 128 tokens of "
        f"{os.path.basename(args.calibration or 'c4_demo.json')} (the config's seed); {'--quick; ' if args.quick else ''}whole bench {total / 60:.1f} min on "
        f"{os.cpu_count()} CPUs."
        + (f" The default's rows ran with {args.default_overrides}." if args.default_overrides else "")
    )
    full_bench = (
        not args.quick
        and not args.removed
        and list(args.models) == list(CELLS)
        and set(args.methods) == set(METHODS)
        and not args.default_overrides
    )
    targets = cell_targets(rows, {alias: meta[alias]["tokens_per_window"] for alias in meta})
    if targets:
        note += (
            "\n\nIssue #14's checks (\"best other\" excludes the default's own one-shot and reuse rows; the interval "
            f"resamples the evaluation windows in pairs, {BOOTSTRAP_DRAWS} draws):\n\n"
            + targets_markdown(targets, total / 60, full_bench)
        )
    report_markdown(args.output_dir, "quality", table, note)
    if rows:
        plot(rows, dense, os.path.join(args.output_dir, "quality.png"))
    with open(os.path.join(args.output_dir, "quality.json"), "w", encoding="utf-8") as f:
        info = {
            "quick": args.quick,
            "eval_windows": args.eval_windows,
            "windows": args.windows,
            "num_samples": args.num_samples,
            "calibration": args.calibration or "c4_demo.json",
            "default_overrides": args.default_overrides,
        }
        info.update(seconds=total, torch=torch.__version__, cpus=os.cpu_count(), machine=platform.machine())
        info.update(models=meta, methods=args.methods, evopress_x2=args.evopress_x2)
        json.dump({"meta": info, "dense": dense, "rows": rows, "targets": targets}, f, indent=2)
    print(f"wrote {args.output_dir}/quality.{{json,md,png}}")


if __name__ == "__main__":
    main()
