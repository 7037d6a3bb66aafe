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
