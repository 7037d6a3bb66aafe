"""Security: no unpickling of untrusted files anywhere in the package, surrogates load from safetensors only, and
code shipped with a checkpoint never runs unless the user passes --trust-remote-code."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from cli_runs import cli_env, run_cli

from optimum_shapley import ShapleySurrogate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIRS = [os.path.join(REPO, "optimum_shapley"), os.path.join(REPO, "optimum")]


def _package_sources() -> dict[str, str]:
    sources = {}
    for top in PACKAGE_DIRS:
        for folder, _, files in os.walk(top):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    with open(path, encoding="utf-8") as f:
                        sources[os.path.relpath(path, REPO)] = f.read()
    assert len(sources) > 10, "the scan must see the package"
    return sources


def _call_text(source: str, start: int) -> str:
    """The text of the call whose opening parenthesis is at ``start`` (parentheses balanced)."""
    depth = 0
    for index in range(start, len(source)):
        depth += {"(": 1, ")": -1}.get(source[index], 0)
        if depth == 0:
            return source[start : index + 1]
    return source[start:]


def test_no_unsafe_deserialisation_in_the_package():
    unsafe = []
    for path, source in _package_sources().items():
        for match in re.finditer(r"\btorch\.load\s*\(", source):
            if not re.search(r"weights_only\s*=\s*True", _call_text(source, match.end() - 1)):
                unsafe.append(f"{path}: torch.load without weights_only=True")
        for pattern in (
            r"^\s*(import|from)\s+(c?pickle|dill|joblib|marshal)\b",
            r"\b(c?pickle|dill|marshal)\.loads?\(",
        ):
            unsafe += [f"{path}: {m.group(0).strip()}" for m in re.finditer(pattern, source, re.MULTILINE)]
        if re.search(r"trust_remote_code\s*=\s*True", source):
            unsafe.append(f"{path}: trust_remote_code=True hard-coded")
        if re.search(r"safe_serialization\s*=\s*False", source):
            unsafe.append(f"{path}: saves pickled weights")
    assert not unsafe, unsafe


def test_the_scan_catches_what_it_looks_for():
    bad = "state = torch.load(path,\n    map_location='cpu')\nimport pickle\n"
    call = _call_text(bad, bad.index("("))
    assert "map_location" in call and not re.search(r"weights_only\s*=\s*True", call)
    assert re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib|marshal)\b", bad, re.MULTILINE)
    good = "torch.load(path, weights_only=True)"
    assert re.search(r"weights_only\s*=\s*True", _call_text(good, good.index("(")))


def test_a_surrogate_never_unpickles(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called on a surrogate file")

    monkeypatch.setattr(torch, "load", refuse)
    surrogate = ShapleySurrogate(num_layers=4)
    torch.save(surrogate.state_dict(), tmp_path / "weights.bin")  # a pickle, as a .bin checkpoint would be
    with pytest.raises(ValueError, match="must be a model.safetensors file"):
        ShapleySurrogate._load_as_pickle(surrogate, str(tmp_path / "weights.bin"), "cpu", True)
    folder = tmp_path / "surrogate"
    surrogate.save_pretrained(folder)
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors"]
    os.remove(folder / "model.safetensors")
    torch.save(surrogate.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises((OSError, ValueError)):  # a folder without model.safetensors is not loaded at all
        ShapleySurrogate.from_pretrained(folder)


REMOTE_CODE = """
open({marker!r}, "w").close()
raise RuntimeError("remote code ran (expected only with --trust-remote-code)")
"""


@pytest.fixture()
def checkpoint_with_code(tmp_path):
    """A checkpoint whose config points at modelling code that leaves a marker file when it is executed."""
    folder = tmp_path / "custom"
    folder.mkdir()
    config = {
        "model_type": "optimum-shapley-custom",
        "architectures": ["CustomForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_custom.CustomConfig"},
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_custom.py").write_text(REMOTE_CODE.format(marker=str(tmp_path / "REMOTE_CODE_RAN")))
    return folder


def test_checkpoint_code_runs_only_with_trust_remote_code(checkpoint_with_code, tmp_path):
    """Through the CLI, with transformers' module cache in the test folder (the code is copied there to run)."""
    env = cli_env(HF_MODULES_CACHE=str(tmp_path / "modules"))
    out = str(tmp_path / "out")
    refused = run_cli("prune", str(checkpoint_with_code), "--remove", "1", "--output", out, env=env)
    assert refused.returncode == 2 and "trust_remote_code" in refused.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "REMOTE_CODE_RAN").exists()
    trusted = run_cli(
        "prune", str(checkpoint_with_code), "--remove", "1", "--output", out, "--trust-remote-code", env=env
    )
    assert trusted.returncode == 2 and "remote code ran" in trusted.stderr.strip().splitlines()[-1]
    assert (tmp_path / "REMOTE_CODE_RAN").exists()  # the flag, and only the flag, lets it run
    assert not os.path.exists(out)
