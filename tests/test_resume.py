"""Crash safety: the mask-evaluation cache survives `kill -9` and damage is refused, a killed run resumes to the
same result with no mask evaluated twice, and the output folder appears complete or not at all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from cli_runs import REPO, cached_masks, cli_command, cli_env, read_bytes, results, run_cli, save_tiny_model

from optimum_shapley.evaluation import CACHE_FILE_NAME, MaskEvaluation, MaskEvaluationCache
from optimum_shapley.evaluation.cache import CorruptCacheError

# -- the cache file -------------------------------------------------------------------------------------------------


def _cache_with_three(tmp_path) -> str:
    cache = MaskEvaluationCache(tmp_path, "fp")
    for mask in ("1111", "1011", "1101"):
        cache.add(MaskEvaluation(mask, 10.0, 5))
    return str(tmp_path / CACHE_FILE_NAME)


def test_a_cut_off_last_record_is_dropped_before_the_next_append(tmp_path):
    path = _cache_with_three(tmp_path)
    with open(path, "ab") as f:
        f.write(b'{"fingerprint": "fp", "mask": "11')  # killed in the middle of a write
    cache = MaskEvaluationCache(tmp_path, "fp")
    assert len(cache) == 3 and cache.skipped_lines == 1
    cache.add(MaskEvaluation("0111", 11.0, 5))
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert [json.loads(line)["mask"] for line in lines] == ["1111", "1011", "1101", "0111"]  # every line a record
    assert len(MaskEvaluationCache(tmp_path, "fp")) == 4


@pytest.mark.parametrize(
    "damage",
    [
        b"this is not json\n",
        b'{"fingerprint": "fp", "mask": "1x11", "nll_sum": 1.0, "num_tokens": 5}\n',
        b'{"fingerprint": "fp", "mask": "1111"}\n',
        b"\xff\xfe\x00\n",
        b"[1, 2, 3]\n",
    ],
)
def test_a_damaged_record_before_the_end_is_refused(tmp_path, damage):
    path = _cache_with_three(tmp_path)
    with open(path, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    with open(path, "wb") as f:
        f.write(lines[0] + damage + b"".join(lines[1:]))
    before = read_bytes(os.path.dirname(path), CACHE_FILE_NAME)
    with pytest.raises(CorruptCacheError, match=r"corrupt at line 2 of 4.*delete line 2.*or delete the file"):
        MaskEvaluationCache(tmp_path, "fp")
    assert read_bytes(os.path.dirname(path), CACHE_FILE_NAME) == before  # refused, not repaired behind the user's back


def test_a_cache_that_does_not_persist_writes_nothing(tmp_path):
    cache = MaskEvaluationCache(tmp_path, "fp", persist=False)
    cache.add(MaskEvaluation("1111", 10.0, 5))
    assert "1111" in cache and not os.path.exists(tmp_path / CACHE_FILE_NAME)


# -- killed runs through the CLI --------------------------------------------------------------------------------------

# A model slow enough (about 0.15 s per mask on one thread) for a kill to land in the middle of the evaluations.
SLOW = dict(hidden_size=256, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=4, head_dim=32)
BUDGET = ["--num_samples", "16", "--seq_length", "64", "--num_masks", "20", "--mc_samples", "1000"]
BUDGET += ["--surrogate_epochs", "30", "--no-progress"]


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("slow") / "model", **SLOW)


@pytest.fixture(scope="module")
def reference(slow_model, tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce."""
    out = str(tmp_path_factory.mktemp("reference") / "out")
    run = run_cli("prune", slow_model, "--remove", "2", "--output", out, *BUDGET)
    assert run.returncode == 0, run.stderr
    return out


def _command(model: str, out: str, *extra: str) -> list[str]:
    return ["prune", model, "--remove", "2", "--output", out, *BUDGET, *extra]


def _kill_when_cached(args: list[str], cache: str, at_least: int) -> int:
    """Start the CLI, SIGKILL it once ``cache`` holds ``at_least`` records; return how many it held."""
    process = subprocess.Popen(
        cli_command(*args), env=cli_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while process.poll() is None and len(cached_masks(cache)) < at_least:
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before the kill: the test model is too fast"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    return len(cached_masks(cache))


def _assert_same_run(out: str, reference: str) -> None:
    got, expected = results(out), results(reference)
    for key in ("removed_layers", "masks", "mean_nll", "utilities", "values"):
        assert got[key] == expected[key], key
    assert read_bytes(out, "config.json") == read_bytes(reference, "config.json")
    assert read_bytes(out, "model.safetensors") == read_bytes(reference, "model.safetensors")


def _assert_no_leftovers(out: str) -> None:
    parent, name = os.path.split(out)
    assert sorted(os.listdir(parent)) == [name], os.listdir(parent)  # no .partial, staging or replaced folder


def test_killed_twice_during_evaluation_resumes_to_the_same_result(slow_model, reference, tmp_path):
    out = str(tmp_path / "out")
    cache = os.path.join(out + ".partial", CACHE_FILE_NAME)
    total = results(reference)["num_model_evaluations"]

    first = _kill_when_cached(_command(slow_model, out), cache, 4)
    assert not os.path.exists(out)  # no output at all, only the resumable work folder
    second = _kill_when_cached(_command(slow_model, out), cache, first + 8)
    assert first < second < total and not os.path.exists(out)

    final = run_cli(*_command(slow_model, out))
    assert final.returncode == 0, final.stderr
    resumed = results(out)
    assert resumed["num_cached_evaluations"] == second  # nothing recorded before a kill was evaluated again
    assert resumed["num_model_evaluations"] + second == total
    masks = cached_masks(os.path.join(out, CACHE_FILE_NAME))
    assert len(masks) == len(set(masks)) == total
    _assert_same_run(out, reference)
    _assert_no_leftovers(out)


DIE_WHILE_SAVING = """
import os, signal, sys
import optimum_shapley.hub as hub

def die(*args, **kwargs):  # weights, tokenizer, results and plots are written by now; the card is next
    os.kill(os.getpid(), signal.SIGKILL)

hub.build_model_card = die
from optimum_shapley.cli import main
sys.exit(main(sys.argv[1:]))
"""

DIE_BETWEEN_RENAMES = """
import os, signal, sys
output = os.path.abspath(sys.argv[sys.argv.index("--output") + 1])
rename = os.rename

def rename_then_die(src, dst, *args, **kwargs):  # the old output is moved aside; the new one not yet in place
    if os.path.abspath(dst) == output:
        os.kill(os.getpid(), signal.SIGKILL)
    return rename(src, dst, *args, **kwargs)

os.rename = rename_then_die
from optimum_shapley.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run_patched(script: str, args: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", script, *args]
    return subprocess.run(command, env=cli_env(), cwd=REPO, capture_output=True, text=True, timeout=600)


def test_killed_while_saving_leaves_no_output_folder(slow_model, reference, tmp_path):
    out = str(tmp_path / "out")
    died = _run_patched(DIE_WHILE_SAVING, _command(slow_model, out))
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert not os.path.exists(out)
    total = results(reference)["num_model_evaluations"]
    assert len(cached_masks(os.path.join(out + ".partial", CACHE_FILE_NAME))) == total

    again = run_cli(*_command(slow_model, out))
    assert again.returncode == 0, again.stderr
    assert results(out)["num_model_evaluations"] == 0  # every mask came from the cache the killed run left
    _assert_same_run(out, reference)
    _assert_no_leftovers(out)


def test_killed_while_replacing_an_output_leaves_none_then_recovers(slow_model, reference, tmp_path):
    out = str(tmp_path / "out")
    first = run_cli(*_command(slow_model, out))
    assert first.returncode == 0, first.stderr
    died = _run_patched(DIE_BETWEEN_RENAMES, _command(slow_model, out, "--overwrite"))
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert not os.path.exists(out)  # the old output moved aside, the new one not in place: no partial folder
    assert os.path.isfile(os.path.join(out + ".partial", "model.safetensors"))

    again = run_cli(*_command(slow_model, out, "--overwrite"))
    assert again.returncode == 0, again.stderr
    assert results(out)["num_model_evaluations"] == 0
    _assert_same_run(out, reference)
    _assert_no_leftovers(out)
