"""`prune` on the public HfArgumentParser (issue #16): dataclass options, every old flag, run files in YAML and
JSON (the command line overrides them), unknown keys refused, `--report_to` reaching the Trainer, optimum-cli."""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess

import pytest
from cli_runs import FAST, REPO, cli_env, run_cli, save_tiny_model
from transformers import HfArgumentParser

from optimum_shapley import ShapleyPruningConfig
from optimum_shapley.cli import build_parser
from optimum_shapley.cli_arguments import (
    PRUNE_ARGUMENT_TYPES,
    LoggingArguments,
    RunArguments,
    prune_arguments,
    read_config_file,
)


def _parse(*argv: str):
    return prune_arguments(build_parser().parse_args(["prune", *argv]))


def test_the_prune_parser_is_hf_argument_parser_over_the_dataclasses():
    prune = build_parser().command_parsers["prune"]
    assert isinstance(prune, HfArgumentParser)
    assert tuple(prune.dataclass_types) == PRUNE_ARGUMENT_TYPES and ShapleyPruningConfig in PRUNE_ARGUMENT_TYPES
    for name in ("cli.py", "cli_arguments.py"):
        with open(os.path.join(REPO, "optimum_shapley", name), encoding="utf-8") as f:
            assert "_parse_dataclass_field" not in f.read()  # no private HfArgumentParser API


def test_old_flags_and_underscore_names_give_the_same_arguments():
    dashed = _parse("m", "--remove", "3", "-o", "out", "--batch-size", "2", "--no-progress", "--gguf-file", "f.gguf")
    underscored = _parse(
        "--model", "m", "--num_layers_to_remove", "3", "--output", "out", "--batch_size", "2", "--no_progress",
        "--gguf_file", "f.gguf",
    )  # fmt: skip
    assert dashed == underscored
    assert dashed.run.model == "m" and dashed.config.num_layers_to_remove == 3 and dashed.run.batch_size == 2
    assert dashed.logging.training_arguments() == {"report_to": "none"}  # offline unless asked


def test_report_to_and_run_name_are_training_arguments():
    parsed = _parse("m", "--remove", "2", "-o", "out", "--report_to", "tensorboard,wandb", "--run_name", "r1")
    assert parsed.logging.training_arguments() == {"report_to": ["tensorboard", "wandb"], "run_name": "r1"}
    assert LoggingArguments(report_to=["tensorboard"]).training_arguments() == {"report_to": "tensorboard"}


def test_missing_model_or_output_and_two_models_are_errors():
    with pytest.raises(ValueError, match="a model is required"):
        _parse("--remove", "2", "-o", "out")
    with pytest.raises(ValueError, match="--output is required"):
        _parse("m", "--remove", "2")
    with pytest.raises(ValueError, match="two models given"):
        _parse("m", "--model", "n", "--remove", "2", "-o", "out")


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_run_file_sets_defaults_and_the_command_line_overrides(tmp_path, suffix):
    values = {"model": "m", "num_layers_to_remove": 4, "output": "out", "method": "sleb", "overwrite": True}
    path = tmp_path / f"run{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(values))
    else:
        path.write_text("".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}\n" for k, v in values.items()))
    assert read_config_file(str(path)) == values
    parser = build_parser()
    parser.command_parsers["prune"].set_defaults(**read_config_file(str(path)))
    parsed = prune_arguments(parser.parse_args(["prune", "--method", "angular"]))
    assert parsed.run == RunArguments(model="m", output="out", overwrite=True)
    assert parsed.config.num_layers_to_remove == 4 and parsed.config.method == "angular"  # overridden


def test_bad_run_files_name_the_problem(tmp_path):
    unknown = tmp_path / "run.yaml"
    unknown.write_text("model: m\nnum_layer_to_remove: 4\n")
    with pytest.raises(ValueError, match="unknown option 'num_layer_to_remove'"):
        read_config_file(str(unknown))
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a mapping"):
        read_config_file(str(listed))
    broken = tmp_path / "broken.json"
    broken.write_text("{model: ")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_config_file(str(broken))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(str(tmp_path_factory.mktemp("model") / "tiny"))


def test_prune_from_a_yaml_file_with_an_override_and_tensorboard(model_dir, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package (test extra) writes the event file")
    out = tmp_path / "out"
    run_file = tmp_path / "run.yaml"
    run_file.write_text(f"model: {model_dir}\nnum_layers_to_remove: 3\noutput: {out}\nmethod: sleb\n")
    run = run_cli("prune", str(run_file), "--num_layers_to_remove", "2", "--report_to", "tensorboard", *FAST)
    assert run.returncode == 0, run.stderr
    results = json.loads((out / "shapley_results.json").read_text())
    assert results["method"] == "sleb" and len(results["removed_layers"]) == 2  # the command line won
    assert glob.glob(str(out / "runs" / "*" / "events.out.tfevents.*")), os.listdir(out)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("pruning/mask_loss" in row for row in history)


def test_a_run_file_with_an_unknown_key_exits_2_and_writes_nothing(model_dir, tmp_path):
    out = tmp_path / "out"
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps({"model": model_dir, "remove": 2, "output": str(out)}))
    run = run_cli("prune", str(run_file))
    assert run.returncode == 2
    assert "unknown option 'remove'" in run.stderr and run.stderr.count("\n") == 1
    assert not out.exists() and not os.path.exists(f"{out}.partial")


@pytest.mark.skipif(shutil.which("optimum-cli") is None, reason="optimum is not installed (test extra)")
def test_optimum_cli_takes_the_same_run_file(model_dir, tmp_path):
    out = tmp_path / "out"
    run_file = tmp_path / "run.yaml"
    run_file.write_text(f"model: {model_dir}\nnum_layers_to_remove: 2\noutput: {out}\nmethod: angular\n")
    run = subprocess.run(
        [shutil.which("optimum-cli"), "shapley", "prune", str(run_file), "--no-progress"],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=str(tmp_path),
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads((out / "shapley_results.json").read_text())["method"] == "angular"
    help_text = subprocess.run(
        [shutil.which("optimum-cli"), "shapley", "prune", "--help"], capture_output=True, text=True, env=cli_env()
    ).stdout
    assert "--report_to" in help_text and "--num_layers_to_remove" in help_text


def test_the_namespace_keeps_the_runners_names():
    parsed = _parse("m", "--remove", "2", "-o", "out", "--recover-dataset", "embedded")
    namespace = parsed.namespace()
    assert isinstance(namespace, argparse.Namespace)
    assert namespace.recover_dataset == "embedded" and namespace.pruning_config is parsed.config


def test_a_run_file_gives_the_same_config_json_as_the_same_flags(model_dir, tmp_path):
    """Issue #16's acceptance: `prune run.yaml` and the same options as flags write the same config.json."""
    by_flags, by_file = tmp_path / "flags", tmp_path / "file"
    flags = run_cli("prune", model_dir, "--remove", "2", "--method", "sleb", "-o", str(by_flags), *FAST)
    assert flags.returncode == 0, flags.stderr
    options = dict(zip(FAST[:-1:2], FAST[1:-1:2], strict=True))
    run_file = tmp_path / "run.yaml"
    run_file.write_text(
        f"model: {model_dir}\nnum_layers_to_remove: 2\nmethod: sleb\noutput: {by_file}\nno_progress: true\n"
        + "".join(f"{name.removeprefix('--')}: {value}\n" for name, value in options.items())
    )
    from_file = run_cli("prune", str(run_file))
    assert from_file.returncode == 0, from_file.stderr
    for name in ("config.json", "shapley_pruning_config.json"):  # the model, and the pruning options that made it
        written = [json.loads((folder / name).read_text()) for folder in (by_flags, by_file)]
        assert written[0] == written[1], name
    assert written[0]["method"] == "sleb" and written[0]["num_samples"] == 4
