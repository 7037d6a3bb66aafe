"""The bad-input matrix through the real command line: each case is its own `optimum-shapley prune` process that
must end with exit code 2, one `optimum-shapley: error:` line saying what to do, no traceback, and no file created,
removed or written anywhere under the test folder.

The processes run a few at a time (each spends most of its few seconds importing torch and transformers)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from cli_runs import FAST, run_cli, save_tiny_model, tree
from tiny_models import tiny_model, tiny_tokenizer

from optimum_shapley import ShapleySurrogate
from optimum_shapley.evaluation import CACHE_FILE_NAME, model_fingerprint


@dataclass
class Case:
    name: str
    args: Callable[[dict[str, str]], list[str]]  # paths of the shared set-up -> command-line arguments
    message: str
    env: dict[str, str | None] = field(default_factory=dict)
    before_loading: bool = False  # must fail before the model is even loaded


def _not_causal(path: str) -> str:
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model("distilbert", vocab_size=96, dim=32, n_layers=2, n_heads=4, hidden_dim=64)
    AutoModel.from_config(config).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def _unsupported(path: str) -> str:
    """xLSTM: a causal LM whose blocks do not form a stack of ``num_hidden_layers`` that we can find."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("xlstm", num_blocks=2, embedding_dim=32, hidden_size=32, num_heads=2, vocab_size=96)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def _corrupt_cache(folder: str) -> None:
    os.makedirs(folder)
    record = '{"fingerprint": "f", "mask": "111111", "nll_sum": 1.0, "num_tokens": 5, "seconds": 0.1}\n'
    with open(os.path.join(folder, CACHE_FILE_NAME), "w", encoding="utf-8") as f:
        f.write(record + "garbage that is not a record\n" + record)


def _sys_is_read_only() -> bool:
    try:
        os.rmdir(tempfile.mkdtemp(dir="/sys"))
    except OSError:
        return True
    return False


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad-input")
    paths = {"root": str(root)}
    paths["model"] = save_tiny_model(root / "model")
    paths["not_causal"] = _not_causal(str(root / "distilbert"))
    paths["unsupported"] = _unsupported(str(root / "xlstm"))
    ShapleySurrogate(num_layers=9).save_pretrained(root / "surrogate-depth9")
    other = model_fingerprint(tiny_model("llama", seed=1))  # same depth, other weights
    ShapleySurrogate(num_layers=6, base_model="another-org/other-model", model_fingerprint=other).save_pretrained(
        root / "surrogate-other-model"
    )
    paths["surrogate_depth"] = str(root / "surrogate-depth9")
    paths["surrogate_model"] = str(root / "surrogate-other-model")
    (root / "empty.txt").write_text("  \n\n")
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me, na\xefve r\xe9sum\xe9 ".encode("latin-1") * 50)
    (root / "folder.txt").mkdir()
    (root / "a-file").write_text("not a folder")
    (root / "full").mkdir()
    (root / "full" / "notes.txt").write_text("mine")
    _corrupt_cache(str(root / "resumed.partial"))
    _corrupt_cache(str(root / "previous"))
    (root / "previous" / "config.json").write_text("{}")
    (root / "hf-home").mkdir()
    return paths


def _prune(paths, *extra, output="out"):
    return ["prune", paths["model"], "--output", os.path.join(paths["root"], output), *FAST, *extra]


CASES = [
    Case(
        "nonexistent model path",
        lambda p: [
            "prune",
            os.path.join(p["root"], "no-such-model"),
            "-o",
            os.path.join(p["root"], "out"),
            "--remove",
            "2",
        ],
        "not found: no such folder or file",
    ),
    Case(
        "nonexistent alias or hub id",
        lambda p: ["prune", "smollm9-135m", "--output", os.path.join(p["root"], "out"), "--remove", "2"],
        "is not a local folder or a packaged alias",
    ),
    Case(
        "not a causal LM",
        lambda p: ["prune", p["not_causal"], "--output", os.path.join(p["root"], "out"), "--remove", "1"],
        "not a causal language model",
    ),
    Case(
        "unsupported architecture",
        lambda p: ["prune", p["unsupported"], "--output", os.path.join(p["root"], "out"), "--remove", "1"],
        "Cannot find the decoder layers of xLSTMForCausalLM",
    ),
    Case("--remove out of range", lambda p: _prune(p, "--remove", "6"), "remove between 1 and 5"),
    Case(
        "--remove and --ratio",
        lambda p: _prune(p, "--remove", "2", "--ratio", "0.3"),
        "set exactly one of",
        before_loading=True,
    ),
    Case(
        "unknown --method",
        lambda p: _prune(p, "--remove", "2", "--method", "magic"),
        "must be one of",
        before_loading=True,
    ),
    Case(
        "unknown dataset",
        lambda p: _prune(p, "--remove", "2", "--dataset", "no-such-org/no-such-dataset"),
        "no-such-org/no-such-dataset",
    ),
    Case(
        "missing data file",
        lambda p: _prune(p, "--remove", "2", "--dataset", os.path.join(p["root"], "missing.jsonl")),
        "not found",
    ),
    Case(
        "unreadable data file (not UTF-8)",
        lambda p: _prune(p, "--remove", "2", "--dataset", os.path.join(p["root"], "latin1.txt")),
        "is not UTF-8 text",
    ),
    Case(
        "data file is a folder",
        lambda p: _prune(p, "--remove", "2", "--dataset", os.path.join(p["root"], "folder.txt")),
        "folder.txt",
    ),
    Case(
        "empty calibration text",
        lambda p: _prune(p, "--remove", "2", "--dataset", os.path.join(p["root"], "empty.txt")),
        "calibration text is empty",
    ),
    Case(
        "seq_length above the model maximum",
        lambda p: _prune(p, "--remove", "2", "--seq_length", "4096"),
        "exceeds the model's maximum of 128 positions; lower --seq_length",
    ),
    Case(
        "num_masks below what the surrogate needs",
        lambda p: _prune(p, "--remove", "2", "--num_masks", "5"),
        "needs at least 10 masks",
        before_loading=True,
    ),
    Case(
        "output exists and is not empty",
        lambda p: _prune(p, "--remove", "2", output="full"),
        "not empty; pass --overwrite",
        before_loading=True,
    ),
    Case(
        "output under a file",
        lambda p: _prune(p, "--remove", "2", output="a-file/out"),
        "a-file is a file, not a folder",
        before_loading=True,
    ),
    Case(
        "read-only output location",
        lambda p: _prune(p, "--remove", "2", output="/sys/optimum-shapley-test-output"),
        "/sys is not writable",
        before_loading=True,
    ),
    Case(
        "corrupt cache of the run being resumed",
        lambda p: _prune(p, "--remove", "2", output="resumed"),
        "resumed.partial/mask_evaluations.jsonl is corrupt at line 2 of 3",
    ),
    Case(
        "corrupt cache in the folder being overwritten",
        lambda p: _prune(p, "--remove", "2", "--overwrite", output="previous"),
        "previous/mask_evaluations.jsonl is corrupt at line 2 of 3",
    ),
    Case(
        "surrogate for a different depth",
        lambda p: _prune(p, "--remove", "2", "--surrogate", p["surrogate_depth"]),
        "trained for a model with 9 layers; this model has 6: use the surrogate of a run on this model",
    ),
    Case(
        "surrogate for a different model",
        lambda p: _prune(p, "--remove", "2", "--surrogate", p["surrogate_model"]),
        "the surrogate was trained on another-org/other-model",
    ),
    Case(
        "--push-to-hub without credentials",
        lambda p: _prune(p, "--remove", "2", "--push-to-hub", "someone/pruned"),
        "--push-to-hub needs a Hugging Face token",
        env={"HF_TOKEN": None, "HUGGING_FACE_HUB_TOKEN": None, "HF_HOME": "{root}/hf-home"},
        before_loading=True,
    ),
]


@pytest.fixture(scope="module")
def outcomes(setup):
    """Run every case (a few processes at a time) between two snapshots of the whole test folder."""
    from cli_runs import cli_env

    before = tree(setup["root"])

    def run(case: Case):
        if case.name == "read-only output location" and not _sys_is_read_only():
            return None
        env = cli_env(**{k: v.format(root=setup["root"]) if v else v for k, v in case.env.items()})
        return run_cli(*case.args(setup), env=env)

    with ThreadPoolExecutor(max_workers=3) as pool:
        done = dict(zip((case.name for case in CASES), pool.map(run, CASES)))
    return done, before, tree(setup["root"])


def test_nothing_was_written(outcomes):
    _, before, after = outcomes
    assert after == before
    assert not os.path.exists("/sys/optimum-shapley-test-output")


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_fails_with_one_line(outcomes, case):
    run = outcomes[0][case.name]
    if run is None:
        pytest.skip("/sys is writable here, so it is not a read-only location (root ignores permission bits)")
    lines = run.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("optimum-shapley: error:")]
    assert run.returncode == 2, run.stderr[-2000:]
    assert errors == [lines[-1]], run.stderr[-2000:]  # exactly one error line, and it is the last thing printed
    assert case.message in lines[-1], lines[-1]
    assert "Traceback" not in run.stderr
    if case.before_loading:
        assert not any(line.startswith("Loading ") for line in lines), "failed only after loading the model"
