"""Surgery on the two real models that ship in PyPI packages: drop layers, save, reload with plain transformers."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from optimum_shapley import LayerMask, drop_layers
from optimum_shapley.healing import heal_removed_layers, record_healing
from optimum_shapley.surgery import num_decoder_layers

pytestmark = pytest.mark.slow


def _check_drop_save_reload(model, tokenizer, remove, tmp_path):
    depth = num_decoder_layers(model)
    keep = [i for i in range(depth) if i not in remove]
    inputs = tokenizer(["The capital of France is", "Layer pruning removes"], return_tensors="pt", padding=True)
    with torch.no_grad(), LayerMask(model, keep):
        masked_logits = model(**inputs).logits

    pruned = drop_layers(copy.deepcopy(model), remove)
    assert pruned.config.get_text_config(decoder=True).num_hidden_layers == depth - len(remove)
    pruned.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.layer_pruning["removed_layers"] == sorted(remove)
    assert reloaded.config.layer_pruning["original_num_hidden_layers"] == depth

    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        pruned_logits = pruned(**inputs).logits
        torch.testing.assert_close(reloaded(**inputs).logits, pruned_logits, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(masked_logits, pruned_logits, rtol=1e-5, atol=1e-4)
        kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert torch.equal(reloaded.generate(**prompt, **kwargs), pruned.generate(**prompt, **kwargs))
    return pruned


def test_smollm2_drop_save_reload(smollm2, tmp_path):
    model, tokenizer = smollm2
    assert num_decoder_layers(model) == 30
    _check_drop_save_reload(model, tokenizer, [0, 11, 29], tmp_path)


def test_gemma3_drop_save_reload(gemma3, tmp_path):
    model, tokenizer = gemma3
    assert num_decoder_layers(model) == 18
    pruned = _check_drop_save_reload(model, tokenizer, [0, 5, 12], tmp_path)  # 5 is a full-attention layer
    original_types = model.config.layer_types
    kept = [i for i in range(18) if i not in (0, 5, 12)]
    assert pruned.config.layer_types == [original_types[i] for i in kept]


def _check_heal_save_reload(model, tokenizer, remove, tmp_path, **options):
    """Heal a copy of the real model on a little text, drop the layers, save, reload with plain transformers: the
    reloaded model gives the logits the healed model gave in memory (issue #17: both real models)."""
    texts = [
        "Layer pruning removes whole decoder blocks from a pretrained language model.",
        "The healed weights are folded into layers the model already has, so the checkpoint reloads anywhere.",
        "Calibration text gives the statistics of one forward pass, accumulated in double precision.",
        "A small surrogate learns the utility of a set of kept layers from a few hundred evaluated masks.",
    ]
    encoded = tokenizer(texts, return_tensors="pt", padding="max_length", max_length=24, truncation=True)
    batches = [{"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}]
    healed = copy.deepcopy(model)
    before = {name: p.detach().clone() for name, p in healed.named_parameters()}
    report = heal_removed_layers(healed, remove, batches, method="linear", relative=True, **options)
    assert any(not torch.equal(before[name], p) for name, p in healed.named_parameters()), "healing changed nothing"
    drop_layers(healed, remove)
    record_healing(healed, report)
    healed.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    inputs = tokenizer(["The capital of France is", "Layer pruning removes"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, healed.eval()(**inputs).logits, rtol=1e-5, atol=1e-4)
    record = reloaded.config.get_text_config(decoder=True).layer_pruning["healing"]
    assert [run["removed_layers"] for run in record["runs"]] == [run["removed_layers"] for run in report.runs]
    return report


def test_smollm2_healed_reload(smollm2, tmp_path):
    model, tokenizer = smollm2
    report = _check_heal_save_reload(model, tokenizer, [12, 13, 14, 20], tmp_path, fit="projection", ridge=0.01)
    assert [run["fit"] for run in report.runs] == ["projection", "projection"]


def test_gemma3_healed_reload(gemma3, tmp_path):
    model, tokenizer = gemma3
    report = _check_heal_save_reload(model, tokenizer, [7, 8, 9, 14], tmp_path, diagonal=True, ridge=0.1)
    assert [run["removed_layers"] for run in report.runs] == [[7, 8, 9], [14]]
