"""Bad selections and unknown models: a clear error, and the model left exactly as it was."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import tiny_model

from optimum_shapley import LayerMask, drop_layers
from optimum_shapley.architectures import UnsupportedArchitectureError, find_decoder_layers
from optimum_shapley.surgery import LayerSelectionError


class NoStack(torch.nn.Module):
    """A model with a config but nothing that looks like a decoder stack."""

    _no_split_modules = ["Block"]

    def __init__(self):
        super().__init__()
        self.config = tiny_model("llama").config
        self.proj = torch.nn.Linear(4, 4)


def test_unknown_layout_names_class_and_what_was_looked_for():
    with pytest.raises(UnsupportedArchitectureError, match=r"NoStack.*nn.ModuleList of 6 blocks.*Block"):
        find_decoder_layers(NoStack())


@pytest.fixture()
def model():
    return tiny_model("llama")


def _snapshot(model):
    return (
        model.model.layers,
        list(model.model.layers),
        copy.deepcopy(model.config.to_dict()),
        [layer.self_attn.layer_idx for layer in model.model.layers],
    )


BAD_REMOVALS = [
    (list(range(6)), "Cannot remove all 6"),
    ([0, 6], "out of range"),
    ([-1], "out of range"),
    ([1, 1], "duplicate"),
    ([True, False], "length 2 but the model has 6"),
    ("1,2", "Expected a sequence"),
    ([1.5], "integer layer indices"),
]


@pytest.mark.parametrize(("remove", "message"), BAD_REMOVALS)
def test_drop_layers_bad_input_leaves_model_untouched(model, remove, message):
    before = _snapshot(model)
    with pytest.raises(LayerSelectionError, match=message):
        drop_layers(model, remove)
    after = _snapshot(model)
    assert after[0] is before[0] and after[1:] == before[1:]


BAD_KEEPS = [
    ([], "zero decoder layers"),
    ([False] * 6, "zero decoder layers"),
    ([0, 9], "out of range"),
    ([2, 2], "duplicate"),
    ([True] * 5, "length 5 but the model has 6"),
]


@pytest.mark.parametrize(("keep", "message"), BAD_KEEPS)
def test_layer_mask_bad_input_leaves_model_untouched(model, keep, message):
    before = _snapshot(model)
    with pytest.raises(LayerSelectionError, match=message), LayerMask(model, keep):
        pass
    after = _snapshot(model)
    assert after[0] is before[0] and after[1:] == before[1:]


def test_drop_nothing_is_a_no_op(model):
    before = _snapshot(model)
    assert drop_layers(model, []) is model
    after = _snapshot(model)
    assert after[0] is before[0] and after[1:] == before[1:]
    assert "layer_pruning" not in model.config.to_dict()
