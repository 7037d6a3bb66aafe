"""Model surgery: run a model with a subset of its decoder layers (``LayerMask``) or remove layers for good.

Both paths do the same three things (DESIGN 3): swap the decoder ``nn.ModuleList`` for one holding only the kept
blocks, rewrite the per-layer config fields, and renumber ``layer_idx`` on the kept blocks so that KV-cache slots,
attention-mask types and RoPE choices line up with the new positions. ``LayerMask`` undoes all of it on exit;
``drop_layers`` also converts index-derived config patterns so that a plain ``from_pretrained`` rebuilds the same
model.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from .architectures import (
    INDEX_LIST_FIELDS,
    LAYER_INDEX_ATTRIBUTES,
    LAYER_INDEX_RULES,
    PER_LAYER_LIST_FIELDS,
    BuiltFromIndex,
    CarriedPattern,
    EveryKth,
    PrefixCount,
    find_decoder_layers,
    get_decoder_config,
)

__all__ = [
    "PRUNING_RECORD_KEY",
    "LayerMask",
    "LayerSelectionError",
    "UnsafeLayerRemovalError",
    "drop_layers",
    "kept_layers_from_mask",
    "num_decoder_layers",
]

PRUNING_RECORD_KEY = "layer_pruning"
"""Key under which ``drop_layers`` records the original depth and the removed original layers in the config."""


class LayerSelectionError(ValueError):
    """A keep/remove selection that does not describe a valid, non-empty subset of the decoder layers."""


class UnsafeLayerRemovalError(ValueError):
    """A config field derives structure from layer indices in a way that cannot be rewritten after removal."""


def num_decoder_layers(model: PreTrainedModel) -> int:
    """Current number of decoder blocks of ``model``."""
    parent, attr = find_decoder_layers(model)
    return len(getattr(parent, attr))


def _is_bool_sequence(values: Any) -> bool:
    if isinstance(values, torch.Tensor):
        return values.dtype == torch.bool
    if isinstance(values, np.ndarray):
        return values.dtype == np.bool_
    return len(values) > 0 and all(isinstance(v, (bool, np.bool_)) for v in values)


def _as_list(values: Any) -> list:
    if isinstance(values, (torch.Tensor, np.ndarray)):
        return values.reshape(-1).tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise LayerSelectionError(f"Expected a sequence of layer indices or a boolean mask, got {values!r}.")
    return list(values)


def _validated_indices(values: Any, num_layers: int, what: str) -> list[int]:
    items = _as_list(values)
    indices = []
    for v in items:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise LayerSelectionError(f"{what} must be integer layer indices or a boolean mask; got element {v!r}.")
        v = int(v)
        if not 0 <= v < num_layers:
            raise LayerSelectionError(f"{what}: layer index {v} is out of range for a model with {num_layers} layers.")
        indices.append(v)
    duplicates = sorted({i for i in indices if indices.count(i) > 1})
    if duplicates:
        raise LayerSelectionError(f"{what}: duplicate layer indices {duplicates}.")
    return sorted(indices)


def kept_layers_from_mask(keep: Any, num_layers: int) -> list[int]:
    """Sorted kept indices from either kept indices or a boolean mask over the ``num_layers`` layers."""
    items = keep if isinstance(keep, (torch.Tensor, np.ndarray)) else _as_list(keep)
    if _is_bool_sequence(items):
        flags = [bool(v) for v in _as_list(items)]
        if len(flags) != num_layers:
            raise LayerSelectionError(
                f"Boolean layer mask has length {len(flags)} but the model has {num_layers} decoder layers."
            )
        kept = [i for i, flag in enumerate(flags) if flag]
    else:
        kept = _validated_indices(items, num_layers, "keep")
    if not kept:
        raise LayerSelectionError("The selection keeps zero decoder layers; at least one layer must remain.")
    return kept


def _kept_from_remove(remove: Any, num_layers: int) -> list[int]:
    items = remove if isinstance(remove, (torch.Tensor, np.ndarray)) else _as_list(remove)
    if _is_bool_sequence(items):
        flags = [bool(v) for v in _as_list(items)]
        if len(flags) != num_layers:
            raise LayerSelectionError(
                f"Boolean removal mask has length {len(flags)} but the model has {num_layers} decoder layers."
            )
        removed = {i for i, flag in enumerate(flags) if flag}
    else:
        removed = set(_validated_indices(items, num_layers, "remove"))
    if len(removed) >= num_layers:
        raise LayerSelectionError(f"Cannot remove all {num_layers} decoder layers; at least one layer must remain.")
    return [i for i in range(num_layers) if i not in removed]


# ----------------------------------------------------------------------------------------------------------------
# Config edits


def _is_derived(config: PretrainedConfig, field: str) -> bool:
    attribute = getattr(type(config), field, None)
    return isinstance(attribute, property) and attribute.fset is None


def _per_layer_edits(config: PretrainedConfig, kept: Sequence[int], num_layers: int) -> dict[str, Any]:
    """New values of every per-position list and index list for the kept layers (no pattern conversion)."""
    edits: dict[str, Any] = {"num_hidden_layers": len(kept)}
    new_index = {old: new for new, old in enumerate(kept)}
    for field in PER_LAYER_LIST_FIELDS:
        if _is_derived(config, field):
            continue  # a read-only property computed from other fields (Mamba's layer_types)
        value = getattr(config, field, None)
        if isinstance(value, (list, tuple)) and len(value) == num_layers:
            edits[field] = type(value)(value[i] for i in kept)
    for field in INDEX_LIST_FIELDS:
        if _is_derived(config, field):
            continue
        value = getattr(config, field, None)
        if isinstance(value, (list, tuple)) and all(isinstance(i, int) for i in value):
            edits[field] = type(value)(new_index[i] for i in value if i in new_index)
    return edits


def _pattern_edits(config: PretrainedConfig, kept: Sequence[int], edits: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the integer fields that re-derive per-layer structure from the layer index at load time
    (``architectures.LAYER_INDEX_RULES``): each becomes an explicit list or an equivalent count for the new depth;
    what cannot be expressed is refused."""
    out: dict[str, Any] = {}
    model_type = getattr(config, "model_type", "?")
    for rule in LAYER_INDEX_RULES:
        value = getattr(config, rule.field, None)
        if isinstance(rule, EveryKth):
            if not isinstance(value, int) or value == 1:
                continue
            exceptions = set(getattr(config, rule.exceptions, None) or [])
            active = (getattr(config, rule.active_if, 0) or 0) > 0

            def marked(i: int, step: int = value, exceptions: set = exceptions, active: bool = active) -> bool:
                return i not in exceptions and active and (i + 1) % step == 0

            out[rule.exceptions] = [new for new, old in enumerate(kept) if not marked(old)]
            out[rule.field] = 1
        elif isinstance(rule, PrefixCount):
            if not isinstance(value, int) or isinstance(value, bool) or value < rule.minimum:
                continue
            for other, allowed in rule.requires:
                if getattr(config, other, None) not in allowed:
                    raise UnsafeLayerRemovalError(
                        f"{model_type}: {rule.field}={value} with {other}={getattr(config, other, None)} {rule.why}; "
                        "removing layers would reload a different model."
                    )
            out[rule.field] = sum(1 for old in kept if old < value)
        elif isinstance(rule, CarriedPattern):
            if not isinstance(value, int) or value <= 1:
                continue
            if rule.explicit not in edits:
                raise UnsafeLayerRemovalError(
                    f"{model_type}: {rule.field}={value} derives per-layer structure from layer indices and the "
                    f"config has no explicit {rule.explicit!r} list to carry it; refusing to remove layers."
                )
            # the explicit list wins at load time; the pattern integer stays only as a record of the original model
        elif isinstance(rule, BuiltFromIndex) and value and any(new != old for new, old in enumerate(kept)):
            raise UnsafeLayerRemovalError(
                f"{model_type}: {rule.field}=True {rule.why}, computed from the index when the model is built; "
                "after removing a layer that is not at the end, a reloaded model would compute the kept layers "
                "differently. Only trailing layers can be removed from this model."
            )
    return out


def _verify_reload(config: PretrainedConfig, edits: dict[str, Any]) -> None:
    """Rebuild the edited config from its dict, as ``from_pretrained`` would, and check nothing is re-derived."""
    probe = copy.deepcopy(config)
    for key, value in edits.items():
        setattr(probe, key, value)
    reloaded = type(probe).from_dict(probe.to_dict())
    for key, value in edits.items():
        got = getattr(reloaded, key, None)
        if (list(got) if isinstance(got, tuple) else got) != (list(value) if isinstance(value, tuple) else value):
            raise UnsafeLayerRemovalError(
                f"{getattr(config, 'model_type', '?')}: after removing layers, {key} would reload as {got!r} instead "
                f"of {value!r}; refusing to write a checkpoint that reloads silently wrong."
            )


# ----------------------------------------------------------------------------------------------------------------
# Module edits


def _renumber(blocks: Sequence[nn.Module]) -> list[tuple[nn.Module, str, Any]]:
    """Set every ``layer_idx`` under block j to j; return what was there before."""
    previous = []
    for position, block in enumerate(blocks):
        for module in block.modules():
            for attr in LAYER_INDEX_ATTRIBUTES:
                value = getattr(module, attr, None)
                if isinstance(value, int) and not isinstance(value, bool):
                    previous.append((module, attr, value))
                    setattr(module, attr, position)
    return previous


class LayerMask:
    """Run ``model`` with only the ``keep`` decoder layers, without copying a single weight.

    ``keep`` is a sequence of kept layer indices or a boolean mask over the current layers. Inside the context the
    model behaves exactly like a physically pruned copy, with or without KV cache and in ``generate()``: the block
    list holds the kept blocks, per-layer config lists are sliced, ``num_hidden_layers`` is the kept count and
    ``layer_idx`` is renumbered. On exit, also after an exception, all of it is restored to the same objects.
    Not thread-safe and not for use under ``torch.compile``: it edits the shared config.

    Example::

        with LayerMask(model, keep=[0, 1, 3, 5]):
            loss = model(**batch, labels=batch["input_ids"]).loss
    """

    def __init__(self, model: PreTrainedModel, keep: Any):
        self.model = model
        self._parent, self._attr = find_decoder_layers(model)
        self.num_layers = len(getattr(self._parent, self._attr))
        self.kept = kept_layers_from_mask(keep, self.num_layers)
        self._active = False

    def __enter__(self) -> PreTrainedModel:
        if self._active:
            raise RuntimeError("This LayerMask is already active; create a new one to nest masks.")
        config = get_decoder_config(self.model)
        blocks = getattr(self._parent, self._attr)
        edits = _per_layer_edits(config, self.kept, self.num_layers)
        self._config = config
        self._saved_config = {key: getattr(config, key) for key in edits}
        self._saved_blocks = blocks
        kept_blocks = [blocks[i] for i in self.kept]
        try:
            setattr(self._parent, self._attr, nn.ModuleList(kept_blocks))
            for key, value in edits.items():
                setattr(config, key, value)
            self._saved_indices = _renumber(kept_blocks)
        except BaseException:
            self._saved_indices = getattr(self, "_saved_indices", [])
            self._restore()
            raise
        self._active = True
        return self.model

    def _restore(self) -> None:
        for module, attr, value in reversed(self._saved_indices):
            setattr(module, attr, value)
        for key, value in self._saved_config.items():
            setattr(self._config, key, value)
        setattr(self._parent, self._attr, self._saved_blocks)

    def __exit__(self, *exc_info) -> None:
        self._restore()
        self._active = False


def drop_layers(model: PreTrainedModel, remove: Any) -> PreTrainedModel:
    """Permanently remove the ``remove`` decoder layers from ``model`` (in place) and return it.

    The config gets the new ``num_hidden_layers``, sliced per-layer lists, remapped index lists and explicit
    versions of index-derived pattern fields, and records the original depth and the removed *original* layer
    indices under ``config.layer_pruning`` (composed across repeated removals). Everything is checked before the
    model is touched: an invalid selection or a config that cannot be rewritten faithfully raises and leaves the
    model as it was.
    """
    parent, attr = find_decoder_layers(model)
    blocks = getattr(parent, attr)
    num_layers = len(blocks)
    kept = _kept_from_remove(remove, num_layers)
    if len(kept) == num_layers:
        return model

    config = get_decoder_config(model)
    edits = _per_layer_edits(config, kept, num_layers)
    edits.update(_pattern_edits(config, kept, edits))

    previous = getattr(config, PRUNING_RECORD_KEY, None)
    if isinstance(previous, dict) and "kept_layers" in previous:
        original_depth = int(previous["original_num_hidden_layers"])
        original_kept = [int(previous["kept_layers"][i]) for i in kept]
    else:
        original_depth = num_layers
        original_kept = list(kept)
    edits[PRUNING_RECORD_KEY] = {
        "original_num_hidden_layers": original_depth,
        "removed_layers": [i for i in range(original_depth) if i not in set(original_kept)],
        "kept_layers": original_kept,
    }
    _verify_reload(config, edits)

    kept_blocks = [blocks[i] for i in kept]
    setattr(parent, attr, nn.ModuleList(kept_blocks))
    for key, value in edits.items():
        setattr(config, key, value)
    _renumber(kept_blocks)
    return model
