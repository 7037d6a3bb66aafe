"""Evaluate a group of layer masks computing each shared kept-layer prefix once.

Two masks that agree on layers ``0..j`` feed layer ``j + 1`` the same hidden states, so when a group is evaluated in
lexicographic order (a depth-first walk of the masks' trie) a mask can start from the hidden states the previous
mask left after their last common kept layer instead of from the embeddings. Only the decoder layers are saved: the
embedding, final norm, LM head and loss are run for every mask. ``bench/prefix_sharing.py`` measured what this saves
on the default method's mask groups (about a third of the decoder-layer passes; 26% of an evaluation's time on
SmolLM2-135M, 13% on Gemma-3-270M whose 262k-token head dominates), and the NLL is the same as a plain forward's
because the same layers run on the same inputs.

Memory: one hidden-state tensor per calibration batch and kept layer of the current mask (``num_samples x
seq_length x hidden_size`` values per layer: 2.9 MB per layer for SmolLM2 and 10 x 128 tokens).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from ..encoding import kept_to_key
from ..modes import eval_mode
from .cache import MaskEvaluation
from .losses import DenseReference, token_losses

__all__ = ["PrefixSharingRunner", "trie_order"]


def trie_order(kept_sets: Sequence[Sequence[int]], num_layers: int) -> list[int]:
    """Indices of ``kept_sets`` in lexicographic order of their masks (layer 0 first, kept before dropped), which
    puts masks with a long common prefix next to each other."""

    def key(index: int) -> str:
        kept = set(kept_sets[index])
        return "".join("0" if layer in kept else "1" for layer in range(num_layers))

    return sorted(range(len(kept_sets)), key=key)


def _hidden(value):
    return value[0] if isinstance(value, tuple) else value


class PrefixSharingRunner:
    """Callable ``kept -> MaskEvaluation`` over one group of masks, remembering the hidden states of the last mask.

    Call it with the group's kept sets in :func:`trie_order`; any order gives the right numbers, that order gives the
    saving. ``batches`` are the prepared calibration batches, held for the group's lifetime.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Iterable[Mapping[str, torch.Tensor]],
        num_layers: int,
        references: list[DenseReference] | None = None,
    ):
        from ..architectures import find_decoder_layers

        self.model = model
        self.batches = list(batches)
        self.num_layers = num_layers
        self.references = references  # the dense distributions, one per batch, for the KL objective
        parent, attribute = find_decoder_layers(model)
        self.blocks = list(getattr(parent, attribute))
        self._previous: list[int] | None = None
        self._states: list[dict[int, torch.Tensor]] = [{} for _ in self.batches]  # batch -> layer -> its output
        self.layer_passes = 0  # decoder-layer forwards actually run (per batch)

    def __call__(self, kept: list[int]) -> MaskEvaluation:
        kept = sorted(kept)
        begin = time.perf_counter()
        start, mask = self._enter(kept, self._resume_index(kept))
        batch_index = 0
        handles = []
        try:
            if start > 0:

                def substitute(module, args, kwargs):
                    state = self._states[batch_index][kept[start - 1]]
                    if args:
                        return (state, *args[1:]), kwargs
                    return args, {**kwargs, "hidden_states": state}

                handles.append(self.blocks[kept[start]].register_forward_pre_hook(substitute, with_kwargs=True))
            for layer in kept[start:]:

                def remember(module, args, output, layer=layer):
                    self._states[batch_index][layer] = _hidden(output).clone()

                handles.append(self.blocks[layer].register_forward_hook(remember))
            total, kl_total, tokens = 0.0, 0.0, 0
            shared = set(kept[:start])
            with eval_mode(self.model), torch.no_grad():
                for batch_index, batch in enumerate(self.batches):
                    states = self._states[batch_index]
                    for layer in [k for k in states if k not in shared]:
                        del states[layer]  # the previous mask's states past the shared prefix
                    reference = self.references[batch_index] if self.references is not None else None
                    nll, kl, count, _ = token_losses(self.model, batch, reference)
                    total += nll
                    kl_total += kl or 0.0
                    tokens += count
        except BaseException:
            self._previous, self._states = None, [{} for _ in self.batches]  # half-written states: never reused
            raise
        finally:
            for handle in handles:
                handle.remove()
            mask.__exit__(None, None, None)
        self.layer_passes += len(kept) - start
        self._previous = kept
        kl_sum = kl_total if self.references is not None else None
        return MaskEvaluation(
            kept_to_key(kept, self.num_layers), total, tokens, time.perf_counter() - begin, kl_sum=kl_sum
        )

    def _enter(self, kept: list[int], start: int):
        """Enter the layer mask of the layers to run; a suffix some config pattern cannot express runs in full."""
        from ..surgery import LayerMask, LayerSelectionError, UnsafeLayerRemovalError

        try:
            mask = LayerMask(self.model, kept[start:])
            mask.__enter__()
            return start, mask
        except (LayerSelectionError, UnsafeLayerRemovalError):
            if start == 0:
                raise
        mask = LayerMask(self.model, kept)
        mask.__enter__()
        return 0, mask

    def _resume_index(self, kept: list[int]) -> int:
        """Index into ``kept`` of the first layer to run: every kept layer before it lies in the prefix this mask
        shares with the previous one, so its output is remembered; at least one layer always runs."""
        if self._previous is None or not kept:
            return 0
        previous, current = set(self._previous), set(kept)
        common = 0
        while common < self.num_layers and (common in previous) == (common in current):
            common += 1
        shared = sum(1 for layer in kept if layer < common)  # kept layers whose outputs are remembered
        return min(shared, len(kept) - 1)
