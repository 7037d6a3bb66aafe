"""What healing wins back: WikiText-2 perplexity of a pruned model unhealed, scale, linear, LoRA, linear + LoRA.

    python bench/healing.py                 # SmolLM2-135M (remove 6, 10 of 30) and Gemma-3-270M (remove 4, 6 of 18)
    python bench/healing.py --quick         # SmolLM2-135M, remove 6, 32 windows, 10 LoRA steps
    python bench/healing.py --cells gemma3-270m:4 --lora-sets all --lora-steps 200

Sets, per cell: ``angular`` (chosen here: one forward pass), ``sleb`` and the default ``shapley``; a set comes from
``--removed ALIAS:K=L1,...`` (the default's), else the quality bench's ``quality.json`` in ``--output-dir``, else
``DEFAULT_REMOVED`` (the quality bench's rows in docs/benchmarks.md), else it is chosen here through
``ShapleyLayerPruner`` on c4_demo.json as the quality bench does. Sets two methods share are healed once.
Healing: ``heal_removed_layers`` on the dense model, then ``drop_layers`` (what ``ShapleyLayerPruner.prune`` does
with ``heal=``), statistics on ``--heal-samples`` x 128 tokens of calibration/c4_demo.json (seed 0, the bench
protocol of bench/common.py; default the config's ``heal_num_samples``). ``scale``: Prune&Comp magnitude scalar
per removed run. ``linear``: ReplaceMe least-squares map per run, each token's error weighted by 1 / its target's
squared norm (``--plain``: unweighted), ridge ``--ridge`` toward the identity, relative to the mean eigenvalue
(default the config's); on Gemma-3 its post-feedforward norm allows only a diagonal map (``linear`` is then the
diagonal variant, as the table says). LoRA: ``recover`` (r=8, merged) for ``--lora-steps`` on c4_demo.json, alone and after ``linear``, on
the ``--lora-sets`` (default: the default's set). Evaluation: WikiText-2 raw test, non-overlapping 128-token
windows, first ``--eval-windows``. The note states the issue's targets as measured.
Writes bench/results/healing.json, healing.md and healing.partial.jsonl (one line per finished row).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from common import DEFAULT_DATA_DIR, data_paths, load_bench_model, report_markdown  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import AutoModelForCausalLM, default_data_collator  # noqa: E402

from optimum_shapley import ShapleyLayerPruner, ShapleyPruningConfig, drop_layers  # noqa: E402
from optimum_shapley.data import build_calibration_dataset  # noqa: E402
from optimum_shapley.evaluation import MaskEvaluator, perplexity_of_windows  # noqa: E402
from optimum_shapley.healing import HealingNotExactError, heal_removed_layers, record_healing  # noqa: E402
from optimum_shapley.pruner import pruning_arguments  # noqa: E402
from optimum_shapley.recovery import recover  # noqa: E402

CHECK_BLOCKS = {f.name: f.default for f in dataclasses.fields(ShapleyPruningConfig)}["verify_samples"]
"""Held-out blocks for the healing check: the pruner checks on its verification blocks, this many."""

HEAL_DEFAULTS = {
    f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
    for f in dataclasses.fields(ShapleyPruningConfig)
    if f.name.startswith("heal_")
}
"""The config's healing defaults (what ``optimum-shapley prune --heal linear`` uses): the bench's defaults too."""

DEFAULT_REMOVED = {
    ("smollm2-135m", 6, "shapley"): [13, 14, 15, 16, 17, 18],
    ("smollm2-135m", 6, "sleb"): [5, 13, 14, 16, 17, 18],
    ("smollm2-135m", 10, "shapley"): [4, 5, 12, 13, 14, 15, 16, 17, 18, 26],
    ("smollm2-135m", 10, "sleb"): [4, 5, 12, 13, 14, 15, 16, 17, 18, 26],
    ("gemma3-270m", 4, "shapley"): [7, 8, 9, 14],
    ("gemma3-270m", 4, "sleb"): [4, 7, 8, 9],
    ("gemma3-270m", 6, "shapley"): [7, 8, 9, 14, 15, 17],
    ("gemma3-270m", 6, "sleb"): [4, 6, 7, 8, 9, 16],
}
"""The ``shapley`` and ``sleb`` rows of the quality bench in docs/benchmarks.md (10 x 128 tokens of c4_demo.json).
A set that is in neither this table nor ``quality.json`` is chosen here, through ``ShapleyLayerPruner`` as the
quality bench runs it (``angular`` always is: one forward pass)."""
SETS = ("angular", "sleb", "shapley")
"""Whose removed sets are healed: the one-pass peer, the greedy peer, the default."""
EVAL_WINDOWS = {"smollm2-135m": 128, "gemma3-270m": 64}
CELLS = {"smollm2-135m": [6, 10], "gemma3-270m": [4, 6]}
POST_NORM_FAMILIES = ("gemma2", "gemma3_text")
"""Families whose linear healing is the diagonal variant (a full map cannot fold through the post-norm)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="SmolLM2 remove 6, 32 windows, 10 LoRA steps")
    parser.add_argument("--models", default=None, help="comma-separated aliases (default: both; SmolLM2 if --quick)")
    parser.add_argument("--cells", default=None, help="ALIAS:K,... (default: every cell of the chosen models)")
    parser.add_argument(
        "--removed", action="append", default=[], metavar="ALIAS:K=L1,L2", help="the default's set (repeatable)"
    )
    parser.add_argument("--sets", default=",".join(SETS), help=f"whose sets to heal (default {','.join(SETS)})")
    parser.add_argument("--num-samples", type=int, default=10, help="calibration blocks of 128 tokens")
    parser.add_argument(
        "--ridge", type=float, default=HEAL_DEFAULTS["heal_ridge"], help="linear: ridge toward the identity (0: none)"
    )
    parser.add_argument(
        "--ridge-choices",
        default=",".join(f"{r:g}" for r in HEAL_DEFAULTS["heal_ridge_choices"]),
        help="linear, checked: each run's ridge chosen by the check among these (comma-separated; default the "
        "config's heal_ridge_choices; 'none': --ridge for every run)",
    )
    parser.add_argument(
        "--heal-samples",
        type=int,
        default=HEAL_DEFAULTS["heal_num_samples"],
        help="blocks of 128 tokens for the healing statistics (default: the config's; 0: the calibration set)",
    )
    parser.add_argument(
        "--fit",
        choices=("projection", "map"),
        default=HEAL_DEFAULTS["heal_fit"],
        help="linear: refit the MLP output projection before each run on its input ('projection'), or ReplaceMe's "
        "map on its output ('map'); default the config's heal_fit (Gemma-3's post-norm takes the diagonal map)",
    )
    parser.add_argument(
        "--plain", action="store_true", help="linear: ReplaceMe's plain least squares (no per-token relative weights)"
    )
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="fold every run's patch (default: the config's heal_check, each run kept only where it lowers the KL "
        "to the dense model on 40 held-out blocks of c4_demo.json, seed 1, as the pruner's verification blocks)",
    )
    parser.add_argument("--lora-steps", type=int, default=None, help="LoRA steps (default 50; quick 10; 0: no LoRA)")
    parser.add_argument("--lora-batch-size", type=int, default=8, help="LoRA blocks of 128 tokens per step")
    parser.add_argument(
        "--lora-sets", default="shapley", help="whose sets get the LoRA columns (default: the default's; 'all')"
    )
    parser.add_argument("--eval-windows", type=int, default=None, help="WikiText-2 windows (default 128/64; quick 32)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--from-partial",
        default=None,
        metavar="PATH",
        help="measure nothing: write the table and JSON from the rows of a run's healing.partial.jsonl (a run "
        "stopped before its end; the other options must be the run's, for the note)",
    )
    args = parser.parse_args()
    args.models = (
        args.models.split(",") if args.models else (["smollm2-135m"] if args.quick else ["smollm2-135m", "gemma3-270m"])
    )
    args.sets = args.sets.split(",")
    args.lora_sets = list(args.sets) if args.lora_sets == "all" else args.lora_sets.split(",")
    if args.lora_steps is None:
        args.lora_steps = 10 if args.quick else 50
    # as the pruner: the check chooses each run's ridge, so without it there is nothing to choose by
    choices = [] if args.ridge_choices in ("", "none") or args.no_check else args.ridge_choices.split(",")
    args.ridge_choices = sorted({float(r) for r in choices})
    return args


def _parse_removed(item: str) -> tuple[tuple[str, int], list[int]]:
    try:
        cell, layers = item.split("=")
        alias, k = cell.split(":")
        removed = sorted(int(i) for i in layers.split(","))
    except ValueError:
        sys.exit(f"--removed {item!r}: expected ALIAS:K=L1,L2,... e.g. smollm2-135m:6=13,14,15,16,17,18")
    if len(removed) != int(k):
        sys.exit(f"--removed {item!r}: K={k} but {len(removed)} layers listed")
    return (alias, int(k)), removed


def bench_cells(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(alias, k) cells to run: --cells, else --removed's, else every cell of the chosen models (quick: one)."""
    if args.cells:
        return [(item.split(":")[0], int(item.split(":")[1])) for item in args.cells.split(",")]
    if args.removed:
        return [_parse_removed(item)[0] for item in args.removed]
    if args.quick:
        return [("smollm2-135m", 6)]
    return [(alias, k) for alias in args.models for k in CELLS.get(alias, [])]


def known_sets(args: argparse.Namespace) -> dict[tuple[str, int, str], tuple[list[int], str]]:
    """(alias, k, method) -> (removed layers, where the set comes from): --removed (the default's), else the
    quality bench's quality.json, else DEFAULT_REMOVED (docs/benchmarks.md)."""
    sets = {key: (layers, "docs/benchmarks.md") for key, layers in DEFAULT_REMOVED.items()}
    quality = os.path.join(args.output_dir, "quality.json")
    if os.path.exists(quality):
        with open(quality, encoding="utf-8") as f:
            for row in json.load(f).get("rows", []):
                if row.get("method") in SETS:
                    key = (row["model"], int(row["removed"]), row["method"])
                    sets[key] = (sorted(int(i) for i in row["removed_layers"]), "quality.json")
    for item in args.removed:
        (alias, k), removed = _parse_removed(item)
        sets[(alias, k, "shapley")] = (removed, "--removed")
    return sets


def choose_set(bench, c4: str, method: str, k: int, num_samples: int) -> tuple[list[int], float]:
    """The method's removed set as ``optimum-shapley prune --method M --dataset c4_demo.json`` chooses it (no cache)."""
    with tempfile.TemporaryDirectory(prefix="healing-bench-") as scratch:
        config = ShapleyPruningConfig(method=method, num_layers_to_remove=k, dataset_name=c4, num_samples=num_samples)
        pruner = ShapleyLayerPruner(
            model=copy.deepcopy(bench.model),
            args=pruning_arguments(scratch, bench.batch_size, config.seed, disable_tqdm=True),
            pruning_config=config,
            processing_class=bench.tokenizer,
        )
        start = time.perf_counter()
        result = pruner.prune()
        seconds = time.perf_counter() - start
    del pruner
    gc.collect()
    return sorted(result.removed_layers), seconds


_HEAL_BLOCKS: dict[tuple[str, int], object] = {}


def _heal_blocks(bench, args: argparse.Namespace):
    """The healing statistics' text: ``--heal-samples`` blocks of c4_demo.json (the pruner's ``heal_num_samples``)."""
    if not args.heal_samples:
        return bench.calibration
    key = (bench.alias, args.heal_samples)
    if key not in _HEAL_BLOCKS:
        _, c4 = data_paths(args.data_dir)
        _HEAL_BLOCKS[key] = build_calibration_dataset(
            bench.tokenizer, c4, num_samples=args.heal_samples, seq_length=128, seed=0
        )
    return _HEAL_BLOCKS[key]


def _heal(bench, model, removed: list[int], method: str, args: argparse.Namespace) -> tuple[dict, object]:
    """Heal ``model`` in place before its layers go; (options used, report). Raises HealingNotExactError."""
    family = model.config.get_text_config(decoder=True).model_type
    options = (
        {"ridge": args.ridge, "diagonal": family in POST_NORM_FAMILIES, "relative": not args.plain, "fit": args.fit}
        if method == "linear"
        else {}
    )
    batches = DataLoader(_heal_blocks(bench, args), batch_size=bench.batch_size, collate_fn=default_data_collator)
    if not args.no_check:
        options = {**options, **_check(bench, model, removed, args)}
        if method == "linear" and args.ridge_choices:
            options["ridge_choices"] = args.ridge_choices
    return options, heal_removed_layers(model, removed, batches, method=method, **options)


_CHECKS: dict[str, tuple] = {}


def _check(bench, model, removed: list[int], args: argparse.Namespace) -> dict:
    """The pruner's ``heal_check`` on this copy: KL to the dense model on 40 held-out blocks (the verification
    blocks' size; seed 1, not the healing sample's 0), the removed layers skipped; one dense reference per model."""
    if bench.alias not in _CHECKS:
        _, c4 = data_paths(args.data_dir)
        blocks = build_calibration_dataset(bench.tokenizer, c4, num_samples=CHECK_BLOCKS, seq_length=128, seed=1)
        dense = _check_evaluator(bench.model, blocks, bench)
        _CHECKS[bench.alias] = (blocks, dense.references())
    blocks, references = _CHECKS[bench.alias]
    evaluator = _check_evaluator(model, blocks, bench)
    evaluator._references = references  # the dense model's, as the pruner shares its run's reference
    kept = [i for i in range(bench.depth) if i not in removed]
    return {
        "check": lambda: evaluator.loss(evaluator.forward(kept)),
        "check_description": f"KL to the dense model on the {CHECK_BLOCKS} held-out blocks",
    }


def _check_evaluator(model, blocks, bench) -> MaskEvaluator:
    return MaskEvaluator(
        model,
        lambda: DataLoader(blocks, batch_size=bench.batch_size, collate_fn=default_data_collator),
        num_layers=bench.depth,
        show_progress=False,
        objective="kl",
    )


def healed_ppl(bench, removed: list[int], method: str, args: argparse.Namespace) -> dict:
    """Heal a copy of the dense model, drop the layers, measure WikiText-2: the numbers and the seconds each took."""
    model = copy.deepcopy(bench.model)
    try:
        options, report = _heal(bench, model, removed, method, args)
    except HealingNotExactError as error:
        return {"method": method, "refused": str(error)}
    drop_layers(model, removed)
    record_healing(model, report)
    start = time.perf_counter()
    ppl = perplexity_of_windows(model, bench.windows, bench.batch_size)
    row = {
        "method": method + (" (diagonal)" if options.get("diagonal") else ""),
        "wikitext2_ppl": ppl,
        "heal_seconds": report.seconds,
        "eval_seconds": time.perf_counter() - start,
        "calibration_tokens": report.calibration_tokens,
        "runs": report.runs,
        "check": report.check,
        "reload_max_abs_diff": reload_difference(model, bench.windows[:RELOAD_WINDOWS]),
    }
    del model
    gc.collect()
    return row


RELOAD_WINDOWS = 4
"""WikiText-2 windows on which the reloaded checkpoint's logits are compared with the healed model's in memory."""
RELOAD_TOLERANCE = 1e-4
"""The largest absolute logit difference the reload may show (float32 kernels; tests/test_real_models.py's)."""


def reload_difference(model, windows: torch.Tensor) -> float:
    """Save the healed, pruned model, reload it with plain ``AutoModelForCausalLM.from_pretrained`` and return the
    largest absolute difference of its logits from the in-memory model's on ``windows`` (issue #17: the checkpoint
    must reload to the logits it gave in memory, on both real models)."""
    with tempfile.TemporaryDirectory(prefix="healing-reload-") as folder:
        model.save_pretrained(folder)
        reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=model.dtype).eval()
        with torch.no_grad():
            expected = model.eval()(input_ids=windows).logits
            actual = reloaded(input_ids=windows).logits
    del reloaded
    gc.collect()
    return float((actual - expected).abs().max())


def lora_ppl(bench, c4: str, removed: list[int], heal: str | None, args: argparse.Namespace) -> dict:
    """LoRA (``recover``, merged) on a pruned copy, healed first when ``heal`` is given: WikiText-2 and seconds."""
    model = copy.deepcopy(bench.model)
    name, heal_seconds, options, report = "lora", 0.0, {}, None
    if heal:
        try:
            options, report = _heal(bench, model, removed, heal, args)
        except HealingNotExactError as error:
            return {"method": f"{heal} + lora", "refused": str(error)}
        name, heal_seconds = f"{heal} + lora", report.seconds
    drop_layers(model, removed)
    recovery = recover(
        model,
        bench.tokenizer,
        c4,
        max_steps=args.lora_steps,
        batch_size=args.lora_batch_size,
        seq_length=128,
        show_progress=False,
    )
    start = time.perf_counter()
    ppl = perplexity_of_windows(recovery.model, bench.windows, bench.batch_size)
    row = {
        "method": name + (" (diagonal)" if options.get("diagonal") else ""),
        "wikitext2_ppl": ppl,
        "heal_seconds": heal_seconds,
        "lora_seconds": recovery.seconds,
        "lora_steps": recovery.steps,
        "lora_tokens": recovery.tokens,
        "train_loss_first": recovery.train_loss_first,
        "train_loss_last": recovery.train_loss_last,
        "eval_seconds": time.perf_counter() - start,
    }
    if report is not None:
        row.update(runs=report.runs, check=report.check)
    del model, recovery
    gc.collect()
    return row


COLUMNS = ("scale", "linear", "lora", "linear + lora")


def _cell_text(row: dict | None) -> str:
    if not row:
        return "-"
    if "refused" in row:
        return "refused"
    refits = [run for run in row.get("runs", []) if run.get("fit") == "projection"]
    notes = (
        (["diag."] if "diagonal" in row["method"] else [])
        + (["refit"] if refits else [])
        + ([f"{sum(run['folded'] for run in row['runs'])}/{len(row['runs'])} runs"] if row.get("check") else [])
    )
    ridges = [f"{run['ridge']:g}" for run in row.get("runs", []) if run.get("folded") and "ridge_losses" in run]
    notes += [f"ridge {'/'.join(ridges)}"] if ridges else []  # each folded run's ridge, where the check chose it
    return f"{row['wikitext2_ppl']:.2f}" + (f" ({', '.join(notes)})" if notes else "")


def _seconds(row: dict | None) -> str:
    if not row or "refused" in row:
        return "-"
    return f"{row['heal_seconds'] + row.get('lora_seconds', 0.0):.0f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| model | removed | set | removed layers | dense | unhealed | scale | linear | LoRA | linear + LoRA | "
        "s: scale / linear / LoRA / linear + LoRA |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        by = {r["method"].replace(" (diagonal)", ""): r for r in row["healed"]}
        cells = " | ".join(_cell_text(by.get(c)) for c in COLUMNS)
        seconds = " / ".join(_seconds(by.get(c)) for c in COLUMNS)
        lines.append(
            f"| {row['model']} | {row['removed']} | {row['set']} | {', '.join(map(str, row['removed_layers']))} | "
            f"{row['dense_ppl']:.2f} | {row['unhealed_ppl']:.2f} | {cells} | {seconds} |"
        )
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[str]:
    """Issue #17's targets on the default's set at each model's deepest cut, and the reload check on every healed
    model of each model, as measured sentences."""
    out = []
    for alias in dict.fromkeys(r["model"] for r in rows):
        out += _default_set_targets(alias, [r for r in rows if r["model"] == alias and r["set"] == "shapley"])
        out += _reload_target(alias, [r for r in rows if r["model"] == alias])
    return out


def _default_set_targets(alias: str, mine: list[dict]) -> list[str]:
    if not mine:
        return []
    out = []
    deepest = max(mine, key=lambda r: r["removed"])
    by = {r["method"].replace(" (diagonal)", ""): r for r in deepest["healed"] if "refused" not in r}
    if "linear" in by:
        drop = 1 - by["linear"]["wikitext2_ppl"] / deepest["unhealed_ppl"]
        verdict = "met" if drop >= 0.25 else "missed"
        out.append(
            f"{alias} remove {deepest['removed']} (default's set): linear lowers WikiText-2 perplexity by "
            f"{100 * drop:.1f}% ({deepest['unhealed_ppl']:.2f} -> {by['linear']['wikitext2_ppl']:.2f}; target "
            f"25%: {verdict})"
        )
    if "lora" in by and "linear + lora" in by:
        better = by["linear + lora"]["wikitext2_ppl"] < by["lora"]["wikitext2_ppl"]
        out.append(
            f"{alias} remove {deepest['removed']}: linear + LoRA {by['linear + lora']['wikitext2_ppl']:.2f} vs "
            f"LoRA alone {by['lora']['wikitext2_ppl']:.2f} (target: beats it: {'met' if better else 'missed'})"
        )
    return out


def _reload_target(alias: str, rows: list[dict]) -> list[str]:
    healed = {  # a set two methods share is healed, and reloaded, once: count each healing once
        (tuple(r["removed_layers"]), h["method"]): h["reload_max_abs_diff"]
        for r in rows
        for h in r["healed"]
        if "reload_max_abs_diff" in h
    }
    if not healed:
        return []
    worst = max(healed.values())
    return [
        f"{alias}: the healed checkpoint reloaded with plain from_pretrained gives the in-memory logits on "
        f"{RELOAD_WINDOWS} WikiText-2 windows for all {len(healed)} healed models (largest |difference| "
        f"{worst:.2e}; tolerance {RELOAD_TOLERANCE:g}: {'met' if worst <= RELOAD_TOLERANCE else 'missed'})"
    ]


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    _, c4 = data_paths(args.data_dir)
    if args.from_partial:
        with open(args.from_partial, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        dense = {row["model"]: row["dense_ppl"] for row in rows}
        write_report(rows, dense, None, args)
        return
    cells, known = bench_cells(args), known_sets(args)
    partial = os.path.join(args.output_dir, "healing.partial.jsonl")
    open(partial, "w").close()
    start = time.perf_counter()
    rows, dense = [], {}
    for alias in dict.fromkeys(alias for alias, _ in cells):
        windows = args.eval_windows or (32 if args.quick else EVAL_WINDOWS.get(alias, 128))
        bench = load_bench_model(alias, args.data_dir, args.num_samples, windows, args.batch_size)
        t = time.perf_counter()
        dense[alias] = bench.wikitext_ppl()
        print(
            f"{alias}: dense WikiText-2 ppl {dense[alias]:.2f} on {len(bench.windows)} windows "
            f"({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
        for k in [k for a, k in cells if a == alias]:
            measured: dict[tuple[int, ...], list[dict]] = {}  # sets two methods share are healed once
            for method in args.sets:
                if method != "angular" and (alias, k, method) in known:
                    removed, source = known[(alias, k, method)]
                    selection_seconds = None
                else:
                    removed, selection_seconds = choose_set(bench, c4, method, k, args.num_samples)
                    source = "chosen here"
                row = {
                    "model": alias,
                    "removed": k,
                    "set": method,
                    "set_source": source,
                    "selection_seconds": selection_seconds,
                    "removed_layers": removed,
                    "dense_ppl": dense[alias],
                    "unhealed_ppl": bench.wikitext_ppl(removed),
                    "eval_windows": len(bench.windows),
                }
                print(f"  remove {k} {method} {removed} ({source}): unhealed {row['unhealed_ppl']:.2f}", flush=True)
                healed = measured.setdefault(tuple(removed), [])
                wanted = ["scale", "linear"] + (["lora", "linear + lora"] if method in args.lora_sets else [])
                if args.lora_steps == 0:
                    wanted = wanted[:2]
                for column in wanted:
                    if any(r["method"].replace(" (diagonal)", "") == column for r in healed):
                        continue
                    if column in ("scale", "linear"):
                        result = healed_ppl(bench, removed, column, args)
                    else:
                        result = lora_ppl(bench, c4, removed, "linear" if column != "lora" else None, args)
                    healed.append(result)
                    if "refused" in result:
                        print(f"    {column}: refused: {result['refused']}", flush=True)
                    else:
                        lora = f", LoRA {result['lora_seconds']:.0f} s" if "lora_seconds" in result else ""
                        print(
                            f"    {result['method']}: {result['wikitext2_ppl']:.2f} "
                            f"(heal {result['heal_seconds']:.1f} s{lora})",
                            flush=True,
                        )
                row["healed"] = [r for r in healed if r["method"].replace(" (diagonal)", "") in wanted]
                rows.append(row)
                with open(partial, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
        del bench
        gc.collect()
    write_report(rows, dense, time.perf_counter() - start, args)


def write_report(rows: list[dict], dense: dict, total: float | None, args: argparse.Namespace) -> None:
    """healing.md (table, protocol, targets) and healing.json; ``total`` None: rows read back from a partial file."""
    text = table(rows)
    verdicts = targets(rows)
    note = (
        "WikiText-2 raw test perplexity (first "
        + (" / ".join(f"{n} ({m})" for m, n in {r["model"]: r["eval_windows"] for r in rows}.items()) or "?")
        + " non-overlapping 128-token "
        f"windows) of the pruned model without healing, with each training-free healing, with LoRA alone "
        f"and with linear healing followed by LoRA. Healing is fitted on "
        f"{args.heal_samples or args.num_samples} x 128 tokens of c4_demo.json (seed 0) and folded into the kept "
        f"weights (the checkpoint keeps its stock architecture): "
        f"scale, the Prune&Comp magnitude scalar per removed run; linear, "
        + (
            "the weight of the MLP output projection before each run refitted by least squares on its input "
            "('refit'; a run with no such projection takes the ReplaceMe map)"
            if args.fit == "projection"
            else "the ReplaceMe least-squares map per run"
        )
        + f"{' (plain)' if args.plain else ', each token weighted by 1 / its target squared norm'}, "
        + (
            "each run's ridge toward the unhealed weights (relative to the mean eigenvalue) chosen by the check among "
            + ", ".join(f"{r:g}" for r in args.ridge_choices)
            if args.ridge_choices
            else f"ridge {args.ridge:g} toward the unhealed weights (relative to the mean eigenvalue)"
        )
        + ", the diagonal variant on "
        "Gemma-3 (its post-feedforward norm admits no exact full-matrix fold). "
        + (
            "Every patch was folded (--no-check). "
            if args.no_check
            else f"Checked (the config's heal_check): each run's patch folded only where it lowers the KL to the dense "
            f"model on {CHECK_BLOCKS} held-out blocks of c4_demo.json (seed 1), the helpful ones added best first while "
            "it falls; 'k/n runs' says how many were folded. "
        )
        + (
            f"LoRA: recover() (r=8, alpha 16, merged), {args.lora_steps} steps x {args.lora_batch_size} x 128 tokens "
            f"of c4_demo.json, lr 1e-4 (a reduced budget: the recovery bench runs 200 steps), on the sets of "
            f"{', '.join(args.lora_sets)} only. "
            if args.lora_steps
            else "No LoRA columns (--lora-steps 0). "
        )
        + "'s' is the healing statistics pass plus the fit, plus the LoRA training; every scale- and linear-healed "
        "model is saved and reloaded with plain from_pretrained and its logits compared on "
        f"{RELOAD_WINDOWS} WikiText-2 windows. Sets: {', '.join(args.sets)}; "
        f"angular is chosen here (one forward pass), the others come from quality.json or docs/benchmarks.md "
        f"where the quality bench measured them, else are chosen here the way the quality bench does. "
        f"{'--quick; ' if args.quick else ''}"
        + (
            f"Whole bench {total / 60:.1f} min on {os.cpu_count()} CPUs."
            if total is not None
            else f"Rows read back from {os.path.basename(args.from_partial)} (--from-partial), {len(rows)} rows."
        )
        + ("\n\n" + "\n".join(f"- {v}" for v in verdicts) if verdicts else "")
    )
    report_markdown(args.output_dir, "healing", text, note)
    with open(os.path.join(args.output_dir, "healing.json"), "w", encoding="utf-8") as f:
        meta = {
            "quick": args.quick,
            "num_samples": args.num_samples,
            "heal_samples": args.heal_samples,
            "relative": not args.plain,
            "fit": args.fit,
            "ridge": None if args.ridge_choices else args.ridge,
            "ridge_choices": args.ridge_choices,
            "check": not args.no_check,
            "lora_steps": args.lora_steps,
            "lora_batch_size": args.lora_batch_size,
            "lora_sets": args.lora_sets,
            "seconds": total,
            "from_partial": args.from_partial,
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(),
        }
        json.dump({"meta": meta, "dense": dense, "rows": rows, "targets": verdicts}, f, indent=2)
    print(f"wrote {args.output_dir}/healing.{{json,md}}")


if __name__ == "__main__":
    main()
