"""LayerMask and drop_layers across every architecture we claim (tiny random models)."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import ARCHITECTURES, DEPTH, VOCAB, tiny_inputs, tiny_model
from transformers import AutoModelForCausalLM

from optimum_shapley import LayerMask, drop_layers
from optimum_shapley.architectures import find_decoder_layers, get_decoder_config

# Keep sets: without layer 0, without the last layer, a single layer, alternating, and all layers.
KEEP_SETS = [[1, 2, 4], [0, 1, 2, 3, 4], [2, 3, 4, 5], [3], [0, 2, 4], list(range(DEPTH))]


def _layer_indices(model) -> list[tuple[str, int]]:
    return [
        (name, module.layer_idx)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "layer_idx", None), int)
    ]


def _pruned_copy(model, keep):
    return drop_layers(copy.deepcopy(model), [i for i in range(DEPTH) if i not in keep])


def _left_padded_prompts() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    input_ids = torch.randint(3, VOCAB, (2, 6), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, :2] = 0  # pad token, left side
    attention_mask[1, :2] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _greedy(model, prompts, **kwargs):
    return model.generate(**prompts, max_new_tokens=5, do_sample=False, pad_token_id=0, **kwargs)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model(request):
    return tiny_model(request.param)


def test_find_decoder_layers(model):
    parent, attr = find_decoder_layers(model)
    layers = getattr(parent, attr)
    assert isinstance(layers, torch.nn.ModuleList)
    assert len(layers) == DEPTH
    assert type(layers[0]).__name__ in model._no_split_modules


@pytest.mark.parametrize("keep", KEEP_SETS, ids=lambda k: "keep" + "-".join(map(str, k)))
def test_layer_mask_equals_physical_pruning(model, keep):
    inputs = tiny_inputs()
    reference = _pruned_copy(model, keep)
    parent, attr = find_decoder_layers(model)
    original_ptrs = {i: [p.data_ptr() for p in block.parameters()] for i, block in enumerate(getattr(parent, attr))}
    with torch.no_grad(), LayerMask(model, keep):
        masked_blocks = getattr(parent, attr)
        assert len(masked_blocks) == len(keep)
        # zero weight copies: the kept blocks are the very same modules and tensors
        for position, block in zip(range(len(keep)), masked_blocks):
            assert [p.data_ptr() for p in block.parameters()] == original_ptrs[keep[position]]
        masked = model(**inputs).logits
    with torch.no_grad():
        expected = reference(**inputs).logits
    torch.testing.assert_close(masked, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("keep", [[1, 2, 4], [0, 2, 4, 5]], ids=lambda k: "keep" + "-".join(map(str, k)))
def test_layer_mask_with_cache_and_generate(model, keep):
    prompts = _left_padded_prompts()
    reference = _pruned_copy(model, keep)
    with torch.no_grad(), LayerMask(model, keep):
        masked = _greedy(model, prompts)
        masked_no_cache = _greedy(model, prompts, use_cache=False)
    with torch.no_grad():
        expected = _greedy(reference, prompts)
    assert torch.equal(masked, expected)
    assert torch.equal(masked_no_cache, expected)


def test_layer_mask_restores_everything(model):
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    config_before = copy.deepcopy(model.config.to_dict())
    indices_before = _layer_indices(model)
    parent, attr = find_decoder_layers(model)
    blocks_before = getattr(parent, attr)
    decoder_config = get_decoder_config(model)
    layer_types_before = decoder_config.__dict__.get("layer_types")  # stored, not a derived property

    with torch.no_grad(), LayerMask(model, [1, 3, 5]):
        assert get_decoder_config(model).num_hidden_layers == 3
        model(**tiny_inputs())

    with pytest.raises(RuntimeError, match="boom"), LayerMask(model, [0, 2]):
        raise RuntimeError("boom")

    assert getattr(parent, attr) is blocks_before
    assert decoder_config.__dict__.get("layer_types") is layer_types_before
    assert model.config.to_dict() == config_before
    assert _layer_indices(model) == indices_before
    state_after = model.state_dict()
    assert state_after.keys() == state_before.keys()
    for key, value in state_before.items():
        assert torch.equal(state_after[key], value), key


def test_boolean_mask_equals_index_list(model):
    inputs = tiny_inputs()
    flags = [True, False, True, True, False, True]
    with torch.no_grad():
        with LayerMask(model, flags):
            by_mask = model(**inputs).logits
        with LayerMask(model, torch.tensor(flags)):
            by_tensor = model(**inputs).logits
        with LayerMask(model, [0, 2, 3, 5]):
            by_index = model(**inputs).logits
    assert torch.equal(by_mask, by_index)
    assert torch.equal(by_tensor, by_index)


@pytest.mark.parametrize("keep", [[1, 2, 4], [0, 1, 2, 3, 4]], ids=lambda k: "keep" + "-".join(map(str, k)))
def test_drop_save_reload(model, keep, tmp_path):
    pruned = _pruned_copy(model, keep)
    config = get_decoder_config(pruned)
    assert config.num_hidden_layers == len(keep)
    assert config.layer_pruning == {
        "original_num_hidden_layers": DEPTH,
        "removed_layers": [i for i in range(DEPTH) if i not in keep],
        "kept_layers": keep,
    }
    blocks = getattr(*find_decoder_layers(pruned))
    for position, block in enumerate(blocks):
        assert all(m.layer_idx == position for m in block.modules() if isinstance(getattr(m, "layer_idx", None), int))
    pruned.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    reloaded_config = get_decoder_config(reloaded)
    assert reloaded_config.num_hidden_layers == len(keep)
    assert getattr(reloaded_config, "layer_types", None) == getattr(config, "layer_types", None)
    assert reloaded_config.layer_pruning == config.layer_pruning

    inputs = tiny_inputs()
    prompts = _left_padded_prompts()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, pruned(**inputs).logits, rtol=0, atol=1e-6)
        assert torch.equal(_greedy(reloaded, prompts), _greedy(pruned, prompts))


def test_drop_layers_twice_records_original_indices(model):
    pruned = drop_layers(copy.deepcopy(model), [0, 3])  # kept originals: 1 2 4 5
    drop_layers(pruned, [1])  # removes original layer 2
    record = get_decoder_config(pruned).layer_pruning
    assert record == {"original_num_hidden_layers": DEPTH, "removed_layers": [0, 2, 3], "kept_layers": [1, 4, 5]}
    expected = _pruned_copy(model, [1, 4, 5])
    inputs = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(pruned(**inputs).logits, expected(**inputs).logits, rtol=0, atol=1e-6)
