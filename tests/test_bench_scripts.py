"""Every bench script imports and parses its arguments: ``--help`` answers with its usage (the benches are not run in
CI, so a module-level error in one would otherwise only show when someone reruns the docs' commands)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(path.name for path in BENCH.glob("*.py") if path.name != "common.py")


def test_the_bench_folder_has_scripts():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_answers_help(script):
    run = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=300, cwd=BENCH.parent
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage:" in run.stdout


def test_healing_table_renders_every_kind_of_row():
    """bench/healing.py's table and targets from rows of each kind (checked healing with ridges chosen, a refusal,
    LoRA alone without runs, linear + LoRA): the table step runs after an hour of bench, so it is tested here."""
    sys.path.insert(0, str(BENCH))
    try:
        import healing as bench_healing
    finally:
        sys.path.remove(str(BENCH))
    runs = [
        {"folded": True, "ridge": 10.0, "ridge_losses": [1.0, 0.9]},
        {"folded": False, "ridge": 0.1, "ridge_losses": [1.2, 1.3]},
    ]
    check = {"evaluations": 6}
    row = {
        "model": "m",
        "removed": 2,
        "set": "shapley",
        "removed_layers": [1, 3],
        "dense_ppl": 10.0,
        "unhealed_ppl": 20.0,
        "healed": [
            {"method": "scale", "refused": "no exact fold"},
            {
                "method": "linear (diagonal)",
                "wikitext2_ppl": 14.0,
                "heal_seconds": 2.0,
                "runs": runs,
                "check": check,
                "reload_max_abs_diff": 3e-5,
            },
            {"method": "lora", "wikitext2_ppl": 16.0, "heal_seconds": 0.0, "lora_seconds": 30.0},
            {
                "method": "linear + lora",
                "wikitext2_ppl": 12.0,
                "heal_seconds": 2.0,
                "lora_seconds": 30.0,
                "runs": runs,
                "check": check,
            },
        ],
    }
    text = bench_healing.table([row])
    assert "| refused | 14.00 (diag., 1/2 runs, ridge 10) | 16.00 | 12.00 (1/2 runs, ridge 10) |" in text
    assert "- / 2 / 30 / 32" in text
    targets = bench_healing.targets([row])
    assert any("by 30.0% (20.00 -> 14.00; target 25%: met)" in t for t in targets)
    assert any("linear + LoRA 12.00 vs LoRA alone 16.00 (target: beats it: met)" in t for t in targets)
    assert any("for all 1 healed models (largest |difference| 3.00e-05; tolerance 0.0001: met)" in t for t in targets)
    row["healed"][1]["reload_max_abs_diff"] = 0.5  # a reload that does not give the in-memory logits
    assert any("(largest |difference| 5.00e-01; tolerance 0.0001: missed)" in t for t in bench_healing.targets([row]))
    row["set"] = "sleb"  # no default's set in the rows: no default-set targets, the reload still reported
    targets = bench_healing.targets([row])
    assert not any("target 25%" in t for t in targets)
    assert any("for all 1 healed models" in t for t in targets)


def _bench_module(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(BENCH))


def test_quality_targets_for_each_way_a_cell_can_go():
    """bench/quality.py's issue-#14 checks: a tie on the same set, a win beyond window noise, a loss within noise;
    the one-shot and reuse rows are the default's own, never "the best other method"."""
    quality = _bench_module("quality")
    steady = [100.0] * 40

    def row(model, removed, method, ppl, layers, windows, **extra):
        return {
            "model": model,
            "removed": removed,
            "method": method,
            "wikitext2_ppl": ppl,
            "removed_layers": layers,
            "window_nll": windows,
            "tokens": extra.pop("tokens", 0),
            "value_check_spearman": extra.pop("value_check", None),
        }

    noisy = [100.0 + (5.0 if i % 2 else -5.0) for i in range(40)]
    rows = [
        row("a", 2, "shapley", 10.0, [1, 2], steady, tokens=150, value_check=0.9),
        row("a", 2, "shapley one-shot", 9.0, [1, 3], steady),  # better, but the default's own row
        row("a", 2, "sleb", 10.0, [1, 2], steady, tokens=100),
        row("a", 2, "angular", 12.0, [3, 4], [v + 1.0 for v in steady]),
        row("b", 3, "shapley", 20.0, [1, 2, 3], [v - 2.0 for v in steady], tokens=300, value_check=0.7),
        row("b", 3, "evopress", 21.0, [1, 2, 4], steady),
        row("b", 3, "sleb", 22.0, [1, 2, 5], steady, tokens=100),
        row("b", 3, "shapley reuse 2", 21.5, [1, 2, 4], steady),
        row("c", 2, "shapley", 30.5, [0, 1], noisy, tokens=100),
        row("c", 2, "evopress", 30.0, [0, 2], [100.0] * 40),
    ]
    targets = quality.cell_targets(rows, {"a": 127, "b": 127, "c": 127})
    a, b, c = targets
    assert (a["verdict"], a["best_other"], a["interval"]) == ("tie", ["sleb"], (1.0, 1.0))
    assert a["one_shot_ratio"] == pytest.approx(0.9) and a["tokens_vs_sleb"] == pytest.approx(1.5)
    assert b["verdict"] == "below" and b["best_other"] == ["evopress"] and b["beyond_noise"]
    assert b["interval"][1] < 1.0 and b["reuse_ratio"] == pytest.approx(21.5 / 20.0)
    assert c["verdict"] == "above" and not c["beyond_noise"] and c["interval"][0] < 1.0 < c["interval"][1]
    text = quality.targets_markdown(targets, 95.0, full_bench=True)
    assert "| b | 3 | 20.00 | evopress 21.00 | 0.952 |" in text
    assert "below (beyond window noise)" in text and "above (within noise)" in text
    assert "strictly below the best other method in 1 of 3 cells, above in 1" in text
    assert "never above): no verdict, this run has 3 of the 4." in text
    assert "Value check >= 0.8: 1 of 3 cells (1 without the row): MISSED in the cells of this run." in text
    assert "Tokens at most 2x SLEB's: 1 of 3 cells (1 without the row): MISSED" in text  # 3x in b; no SLEB in c
    four = targets + [dict(a, model="d")]  # four cells, one above: "never above" missed whatever the wins
    whole = quality.targets_markdown(four, 80.0, full_bench=True)
    assert "in 1 of 4 cells, above in 1 (target: at least 2 of 4, never above): MISSED." in whole
    assert "One-shot within 1.10x of the best other method: 2 of 4 cells (2 without the row): MISSED." in whole
    assert "Whole bench in 90 minutes: 80.0 min: met." in whole
    assert "Surrogate reuse within 1.10x of a fresh run: 1.075x: met." in text
    assert "Whole bench in 90 minutes: 95.0 min: MISSED." in text
    partial = quality.targets_markdown(targets, 20.0, full_bench=False)
    assert "20.0 min (not the whole bench: no verdict)." in partial


def test_spread_windows_sample_the_whole_test_set():
    """The quality bench's --windows spread (its default since session 16): evenly spaced windows from the first to
    the last, each once; ``select_windows`` without a choice keeps the first ones (the tables before session 16)."""
    import torch

    common = _bench_module("common")
    windows = torch.arange(100).unsqueeze(1).repeat(1, 4)
    assert common.select_windows(windows, 3)[:, 0].tolist() == [0, 1, 2]
    spread = common.select_windows(windows, 5, "spread")[:, 0].tolist()
    assert spread == [0, 25, 50, 74, 99]  # numpy rounds half to even: 24.75 -> 25, 74.25 -> 74
    assert common.select_windows(windows, 500, "spread").shape == (100, 4)
    with pytest.raises(ValueError, match="one of"):
        common.select_windows(windows, 5, "random")


def test_neighbours_bench_summary_and_one_shot_rules(tmp_path):
    """bench/neighbours.py's oracle: every one-swap neighbour once, the exact marginals' signs (removing a kept layer
    costs, adding a removed one back gains), the k-lowest rules against quality.json's best other method, and the
    table; all after an hour of measuring, so tested here on a made-up game."""
    bench_neighbours = _bench_module("neighbours")
    around = bench_neighbours.neighbours([1, 2], 5)
    assert len(around) == 2 * 3 and len({tuple(s) for s in around}) == 6
    assert all(len(s) == 2 and s != [1, 2] for s in around) and [0, 2] in around and [1, 4] in around

    weights = [0.5, 0.1, 0.2, 0.3, 0.9]  # an additive game: the KL of a removed set is the sum of its weights
    interaction = {(2, 3): -0.25}  # removing both 2 and 3 costs 0.25 less than the sum of their weights

    def kl(removed):
        total = sum(weights[i] for i in removed)
        return total + sum(v for (a, b), v in interaction.items() if a in removed and b in removed)

    marginals = bench_neighbours.exact_marginals([1, 2], 5, kl)
    assert marginals == pytest.approx([0.5, 0.1, 0.2, 0.05, 0.9])  # 3 added to {1, 2}: 0.3 - 0.25
    ppl = {(1, 2): 10.0, (1, 3): 11.5, (2, 3): 9.0}
    quality = {
        "targets": [{"model": "m", "removed": 2, "best_other_ppl": 10.0}],
        "rows": [
            {"model": "m", "removed": 2, "method": "shapley one-shot", "removed_layers": [1, 2], "wikitext2_ppl": 10.0}
        ],
    }
    rules = bench_neighbours.one_shot_rules(quality, "m", 2, [1, 2], 5, kl, lambda s: ppl[tuple(s)])
    assert rules["marginals_one_shot"] == [1, 3] and rules["marginals_one_shot_ratio"] == pytest.approx(1.15)
    assert rules["values_one_shot_ratio"] == pytest.approx(1.0)
    assert bench_neighbours.one_shot_rules({"rows": []}, "m", 2, [1, 2], 5, kl, None) == {}  # no one-shot row
    rows = {"rows": [{"model": "m", "removed": 2, "method": "shapley", "removed_layers": [1, 2]}]}
    assert bench_neighbours.chosen_cells(rows, "m:2") == [("m", 2, [1, 2])]
    for bad in ("m", "m:two", "m:2:3", "n:2"):  # one line, before anything is written
        with pytest.raises(SystemExit, match="--cells"):
            bench_neighbours.chosen_cells(rows, bad)

    cell = [{"layers": [1, 2], "calibration_kl": kl([1, 2]), "wikitext2_ppl": 10.0}] + [
        {"layers": s, "calibration_kl": kl(s), "wikitext2_ppl": ppl.get(tuple(s), 20.0 + sum(s))} for s in around
    ]
    cell[-1]["wikitext2_ppl"] = None  # not measured on the test windows (--test-top): counted by its KL only
    summary = bench_neighbours.summarise("m", 2, cell)
    assert summary["better_on_test"] == 1 and summary["best_neighbour"] == [2, 3]
    assert summary["best_neighbour_ratio"] == pytest.approx(0.9)
    assert summary["lower_calibration_kl"] == 1 and summary["better_on_test_and_calibration"] == 1  # [2, 3]: 0.25
    summary.update(rules)
    bench_neighbours.write(str(tmp_path), cell, [summary])
    table = (tmp_path / "neighbours.md").read_text()
    assert "| m | 2 | 1, 2 | 10.00 | 6 (5) | 1 | 2, 3 | 0.900 | -0.0500 | 1 of 6 | 1 | 1 |" in table
    assert "| m | 2 | 1, 2 | 1.000 | 1, 3 | 1.150 |" in table


def test_neighbours_bench_measures_the_lowest_kl_neighbours_on_test(tmp_path):
    """``--test-top``: every neighbour gets its calibration KL, only the centre, the ``test_top`` neighbours of lowest
    KL and those a resumed run measured before get WikiText-2; each measured set goes to the partial file."""
    from types import SimpleNamespace

    bench_neighbours = _bench_module("neighbours")
    weights = [0.5, 0.1, 0.2, 0.3, 0.9]
    asked = []

    class Bench:
        depth = 5

        def wikitext_ppl(self, removed):
            asked.append(tuple(removed))
            return 10.0 + sum(removed)

    def evaluator(kept):
        return SimpleNamespace(mean_kl=sum(weights[i] for i in range(5) if i not in kept))

    partial = tmp_path / "partial.jsonl"
    cell = bench_neighbours.Cell("m", Bench(), evaluator, {("m", (0, 1)): 99.0}, str(partial))
    records = cell.measure(2, [1, 2], test_top=2)
    assert len(records) == 7 and records[0]["centre"] and records[0]["wikitext2_ppl"] == 13.0
    assert asked == [(1, 2), (1, 3), (2, 3)]  # the centre, then KL 0.4 and 0.5; [0, 1] was measured before
    measured = {tuple(r["layers"]): r["wikitext2_ppl"] for r in records if r["wikitext2_ppl"] is not None}
    assert measured == {(1, 2): 13.0, (1, 3): 14.0, (2, 3): 15.0, (0, 1): 99.0}
    assert len(partial.read_text().splitlines()) == 4
