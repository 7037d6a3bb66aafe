"""The quality bench prunes through the code path a user runs: for one cell it chooses what the CLI chooses."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types

from cli_runs import FAST, REPO, results, run_cli, save_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer


def _load_bench_quality():
    sys.path.insert(0, os.path.join(REPO, "bench"))
    spec = importlib.util.spec_from_file_location("bench_quality", os.path.join(REPO, "bench", "quality.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bench_and_the_cli_choose_the_same_layers(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model", num_layers=8)
    calibration = tmp_path / "calibration.json"
    from pydoc_data.topics import topics

    calibration.write_text(json.dumps([{"text": topics[k]} for k in sorted(topics)[40:120]]))
    run = run_cli(
        "prune", model_dir, "--remove", "2", "--output", str(tmp_path / "out"), "--dataset", str(calibration), *FAST
    )
    assert run.returncode == 0, run.stderr
    cli = results(str(tmp_path / "out"))

    quality = _load_bench_quality()
    bench = types.SimpleNamespace(
        model=AutoModelForCausalLM.from_pretrained(model_dir).eval(),
        tokenizer=AutoTokenizer.from_pretrained(model_dir),
        batch_size=8,  # the CLI's --batch-size default
    )
    overrides = dict(seq_length=16, num_masks=20, mc_samples=1000, surrogate_epochs=30)
    _, result, _ = quality.run_method(
        bench, str(tmp_path / "bench-cache"), str(calibration), "shapley", 2, 4, **overrides
    )
    assert result.removed_layers == cli["removed_layers"]
    assert result.selection_evaluations == cli["selection_evaluations"]
    assert result.game["chosen_by"] == cli["game"]["chosen_by"]
