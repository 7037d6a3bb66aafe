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
