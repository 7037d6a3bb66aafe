"""The one mechanism that writes outputs whole or not at all (optimum_shapley/atomic.py)."""

from __future__ import annotations

import json
import os

import pytest

from optimum_shapley.atomic import publish, staged_folder, write_json


def _folder(path, **files):
    os.makedirs(path, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(path, name), "w", encoding="utf-8") as f:
            f.write(text)
    return str(path)


def _read(*parts: str) -> str:
    with open(os.path.join(*parts), encoding="utf-8") as f:
        return f.read()


def test_publish_creates_replaces_whole_or_merges(tmp_path):
    out = str(tmp_path / "out")
    publish(_folder(tmp_path / "a", model="1"), out)
    assert sorted(os.listdir(out)) == ["model"]
    _folder(out, cache="keep")
    publish(_folder(tmp_path / "b", model="2"), out, merge=True)  # same names replaced, the cache kept
    assert sorted(os.listdir(out)) == ["cache", "model"] and _read(out, "model") == "2"
    publish(_folder(tmp_path / "c", model="3"), out)  # replaced whole
    assert sorted(os.listdir(out)) == ["model"] and _read(out, "model") == "3"
    assert sorted(os.listdir(tmp_path)) == ["out"]  # nothing set aside is left behind


def test_a_failed_stage_leaves_the_output_as_it_was(tmp_path):
    out = _folder(tmp_path / "out", model="old")
    with pytest.raises(RuntimeError), staged_folder(out) as staging:
        _folder(staging, model="new")
        raise RuntimeError("disk full")
    assert _read(out, "model") == "old" and sorted(os.listdir(tmp_path)) == ["out"]
    with staged_folder(out) as staging:
        _folder(staging, model="new")
    assert _read(out, "model") == "new"


def test_write_json_is_whole_or_absent(tmp_path):
    path = str(tmp_path / "record.json")
    write_json(path, {"a": 1})
    assert json.loads(_read(path)) == {"a": 1}
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})  # not serialisable: the earlier record stays, no temporary left
    assert json.loads(_read(path)) == {"a": 1} and os.listdir(tmp_path) == ["record.json"]
