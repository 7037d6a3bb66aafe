"""The optimum-shapley CLI: a real run through a subprocess, --help, and bad input (one line, non-zero, no output)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tiny_models import tiny_model, tiny_tokenizer

from optimum_shapley.cli import main

FAST = ["--num_samples", "4", "--seq_length", "16", "--num_masks", "20", "--mc_samples", "1000"]
FAST += ["--surrogate_epochs", "30", "--no-progress"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


def _cli(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
    return subprocess.run(
        [sys.executable, "-m", "optimum_shapley.cli", *args], capture_output=True, text=True, env=env, cwd=cwd
    )


def test_prune_through_subprocess(model_dir, tmp_path):
    out = tmp_path / "out"
    run = _cli("prune", model_dir, "--remove", "2", "--output", str(out), *FAST)
    assert run.returncode == 0, run.stderr
    assert "optimum-shapley summary" in run.stdout
    assert "surrogate held-out R^2" in run.stdout and "model evaluations" in run.stdout
    results = json.loads((out / "shapley_results.json").read_text())
    assert len(results["removed_layers"]) == 2
    assert (out / "plots" / "layer_contributions.png").exists()
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4

    # same command again: refused without --overwrite, then served from the cache with it
    again = _cli("prune", model_dir, "--remove", "2", "--output", str(out), *FAST)
    assert again.returncode != 0 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    rerun = _cli("prune", model_dir, "--remove", "2", "--output", str(out), "--overwrite", *FAST)
    assert rerun.returncode == 0, rerun.stderr
    # served from the cache; the only passes rebuild the dense KL reference of the calibration and verification sets
    assert "0 run, " in rerun.stdout and "+2 dense passes rebuilding the KL reference" in rerun.stdout

    # the saved surrogate prunes at another ratio with no new mask evaluations
    other = tmp_path / "other"
    reuse = _cli(
        "prune", model_dir, "--remove", "3", "--output", str(other), "--surrogate", str(out / "surrogate"), *FAST
    )
    assert reuse.returncode == 0, reuse.stderr
    assert json.loads((other / "config.json").read_text())["num_hidden_layers"] == 3


def test_help_documents_every_option():
    run = _cli("prune", "--help")
    assert run.returncode == 0
    for option in (
        "--remove",
        "--ratio",
        "--output",
        "--dataset",
        "--num_masks",
        "--strata",
        "--utility",
        "--estimator",
        "--mc_samples",
        "--seed",
        "--push-to-hub",
        "--overwrite",
        "--surrogate",
    ):
        assert option in run.stdout, option


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--remove", "2", "--ratio", "0.3"], "set exactly one of"),
        (["--remove", "0"], "must be a positive integer"),
        (["--remove", "6"], "remove between 1 and 5"),
        (["--remove", "2", "--dataset", "no_such_file.jsonl"], "not found"),
        (["--remove", "2", "--seq_length", "4096"], "exceeds the model's maximum"),
    ],
)
def test_bad_input_one_line_error(model_dir, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code = main(["prune", model_dir, "--output", str(out), *FAST, *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    errors = [line for line in err if line.startswith("optimum-shapley: error:")]
    assert errors == [err[-1]] and message in err[-1], err  # one line, the last thing printed
    assert not any("Traceback" in line for line in err)
    assert not out.exists()


def test_empty_calibration_text(model_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n\n")
    out = tmp_path / "out"
    assert main(["prune", model_dir, "--output", str(out), "--remove", "2", "--dataset", str(empty), *FAST]) == 2
    assert "empty" in capsys.readouterr().err
    assert not out.exists()


def test_unknown_hub_dataset_offline(model_dir, tmp_path):
    out = tmp_path / "out"
    run = _cli(
        "prune", model_dir, "--output", str(out), "--remove", "2", "--dataset", "no-such-org/no-such-dataset", *FAST
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert lines[-1].startswith("optimum-shapley: error:") and "no-such-org/no-such-dataset" in lines[-1]
    assert "Traceback" not in run.stderr
    assert not out.exists()


def test_surrogate_for_a_different_depth(model_dir, tmp_path, capsys):
    from optimum_shapley import ShapleySurrogate

    ShapleySurrogate(num_layers=9).save_pretrained(tmp_path / "surrogate9")
    out = tmp_path / "out"
    code = main(
        ["prune", model_dir, "--output", str(out), "--remove", "2", "--surrogate", str(tmp_path / "surrogate9"), *FAST]
    )
    assert code == 2
    assert "trained for a model with 9 layers; this model has 6" in capsys.readouterr().err
    assert not out.exists()


def test_non_empty_output_folder(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["prune", model_dir, "--output", str(out), "--remove", "2", *FAST]) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    assert os.listdir(out) == ["notes.txt"]


def test_registered_with_optimum_cli(tmp_path):
    """`optimum-cli shapley prune` comes from optimum/commands/register/ in the installed wheel."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("optimum.commands") is None or shutil.which("optimum-cli") is None:
        pytest.skip("optimum is not installed (pip install optimum)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        ["optimum-cli", "shapley", "prune", "--help"], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert run.returncode == 0, run.stderr
    assert "--num_layers_to_remove" in run.stdout and "--push-to-hub" in run.stdout


def test_method_option(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prune", model_dir, "--output", str(out), "--remove", "2", "--method", "reverse-order", *FAST]) == 0
    assert "reverse-order" in capsys.readouterr().out
    assert json.loads((out / "shapley_results.json").read_text())["removed_layers"] == [3, 4]
