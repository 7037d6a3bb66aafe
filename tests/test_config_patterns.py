"""Index-derived config patterns: converted to explicit fields, or refused, never silently wrong after reload."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import tiny_inputs, tiny_model
from transformers import AutoModelForCausalLM

from optimum_shapley import LayerMask, drop_layers
from optimum_shapley.surgery import UnsafeLayerRemovalError

MOE = dict(
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=16,
    shared_expert_intermediate_size=16,
    decoder_sparse_step=2,
)


def _is_sparse_block(block) -> bool:
    return "SparseMoe" in type(block.mlp).__name__


def test_qwen2_moe_decoder_sparse_step_converted(tmp_path):
    model = tiny_model("qwen2_moe", **MOE)
    blocks = model.model.layers
    original_sparse = [_is_sparse_block(b) for b in blocks]
    assert original_sparse == [False, True, False, True, False, True]  # (i + 1) % 2 == 0

    remove = [0, 3]  # shifts every later layer by an odd amount: a naive reload swaps dense and sparse blocks
    kept = [1, 2, 4, 5]
    pruned = drop_layers(copy.deepcopy(model), remove)
    assert pruned.config.decoder_sparse_step == 1
    assert pruned.config.mlp_only_layers == [j for j, i in enumerate(kept) if not original_sparse[i]]

    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert [_is_sparse_block(b) for b in reloaded.model.layers] == [original_sparse[i] for i in kept]
    inputs = tiny_inputs()
    with torch.no_grad():
        expected = pruned(**inputs).logits
        torch.testing.assert_close(reloaded(**inputs).logits, expected, rtol=0, atol=1e-6)
        with LayerMask(model, kept):
            torch.testing.assert_close(model(**inputs).logits, expected, rtol=0, atol=1e-6)


def test_gpt2_inverse_layer_idx_scaling_refused_and_model_untouched():
    model = tiny_model("gpt2", scale_attn_by_inverse_layer_idx=True)
    before = copy.deepcopy(model.config.to_dict())
    blocks = model.transformer.h
    with pytest.raises(UnsafeLayerRemovalError, match="scale_attn_by_inverse_layer_idx"):
        drop_layers(model, [1])
    assert model.transformer.h is blocks and len(blocks) == 6
    assert model.config.to_dict() == before
    assert [b.attn.layer_idx for b in blocks] == list(range(6))


def test_gpt2_inverse_layer_idx_scaling_allows_trailing_removal(tmp_path):
    model = tiny_model("gpt2", scale_attn_by_inverse_layer_idx=True)
    pruned = drop_layers(copy.deepcopy(model), [4, 5])  # kept layers keep their indices, so their scaling
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    inputs = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, pruned(**inputs).logits, rtol=0, atol=1e-6)


def test_qwen2_max_window_layers_kept_consistent(tmp_path):
    model = tiny_model("qwen2")  # layer_types: full, full, full, sliding, sliding, sliding
    pruned = drop_layers(copy.deepcopy(model), [0, 4])
    assert pruned.config.layer_types == ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]
    assert pruned.config.max_window_layers == 2
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.layer_types == pruned.config.layer_types


def test_gemma3_sliding_pattern_becomes_explicit_layer_types(tmp_path):
    model = tiny_model("gemma3_text")  # pattern 3: sliding, sliding, full, sliding, sliding, full
    pruned = drop_layers(copy.deepcopy(model), [0, 1])
    assert pruned.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.layer_types == pruned.config.layer_types
    assert [layer.self_attn.layer_type for layer in reloaded.model.layers] == pruned.config.layer_types


def test_index_rules_are_data_applied_by_kind():
    """architectures.LAYER_INDEX_RULES drive the rewrites: a prefix count, its refusal, a carried pattern."""
    from transformers import PretrainedConfig

    from optimum_shapley.architectures import LAYER_INDEX_RULES, CarriedPattern, PrefixCount
    from optimum_shapley.surgery import _pattern_edits

    fields = {rule.field for rule in LAYER_INDEX_RULES}
    assert {"first_k_dense_replace", "max_window_layers", "sliding_window_pattern"} <= fields
    assert any(isinstance(r, PrefixCount) and r.requires for r in LAYER_INDEX_RULES)
    kept = [0, 2, 3, 5]
    dense_prefix = PretrainedConfig(first_k_dense_replace=3, moe_layer_freq=1)
    assert _pattern_edits(dense_prefix, kept, {})["first_k_dense_replace"] == 2  # layers 0 and 2 stay dense
    with pytest.raises(UnsafeLayerRemovalError, match="first_k_dense_replace=3 with moe_layer_freq=2"):
        _pattern_edits(PretrainedConfig(first_k_dense_replace=3, moe_layer_freq=2), kept, {})
    pattern = PretrainedConfig(sliding_window_pattern=3)
    assert any(isinstance(r, CarriedPattern) and r.explicit == "layer_types" for r in LAYER_INDEX_RULES)
    with pytest.raises(UnsafeLayerRemovalError, match="no explicit 'layer_types' list"):
        _pattern_edits(pattern, kept, {})
    assert _pattern_edits(pattern, kept, {"layer_types": ["a"] * 4}) == {}  # the explicit list carries it
