"""Stratified sampling of layer masks: which subsets of layers to evaluate on the real model.

A mask is a boolean vector over the decoder layers (True = kept). The surrogate only learns what it is shown, so
masks are drawn evenly across a few kept-layer counts (strata) around the pruning target, uniformly within a count,
without duplicates; the full model is always the first mask (it anchors the utility).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from itertools import combinations

import numpy as np

__all__ = ["key_to_mask", "mask_to_key", "sample_masks"]

logger = logging.getLogger(__name__)

_ENUMERATE_LIMIT = 50_000  # below this many subsets of a size, enumerate them instead of rejection sampling


def mask_to_key(mask: Sequence[bool] | np.ndarray) -> str:
    """A mask as a string of 0/1 characters, layer 0 first: the cache key of a mask."""
    return "".join("1" if bool(v) else "0" for v in mask)


def key_to_mask(key: str) -> np.ndarray:
    return np.array([c == "1" for c in key], dtype=bool)


def _allocate(requested: int, capacities: list[int]) -> list[int]:
    """Split ``requested`` as evenly as possible over strata without exceeding any stratum's capacity."""
    counts = [0] * len(capacities)
    remaining = requested
    open_strata = [i for i, c in enumerate(capacities) if c > 0]
    while remaining > 0 and open_strata:
        share, extra = divmod(remaining, len(open_strata))
        for rank, i in enumerate(open_strata):
            give = min(share + (1 if rank < extra else 0), capacities[i] - counts[i])
            counts[i] += give
            remaining -= give
        open_strata = [i for i in open_strata if counts[i] < capacities[i]]
    return counts


def _sample_subsets(rng: random.Random, num_layers: int, kept: int, count: int) -> list[tuple[int, ...]]:
    total = math.comb(num_layers, kept)
    if count >= total or total <= _ENUMERATE_LIMIT:
        return rng.sample(list(combinations(range(num_layers), kept)), min(count, total))
    chosen: set[tuple[int, ...]] = set()
    while len(chosen) < count:
        chosen.add(tuple(sorted(rng.sample(range(num_layers), kept))))
    return sorted(chosen, key=lambda s: rng.random())


def sample_masks(num_layers: int, strata: Sequence[int], num_masks: int, seed: int = 0) -> np.ndarray:
    """Return ``(n, num_layers)`` boolean masks: the full model first, then distinct masks spread over ``strata``.

    ``n`` is ``num_masks`` unless the strata hold fewer distinct masks (small models), in which case every mask of
    every stratum is returned and a warning is logged. Same arguments, same masks.
    """
    if num_layers < 2:
        raise ValueError(f"need at least 2 decoder layers to sample masks, got {num_layers}")
    strata = sorted(set(int(k) for k in strata))
    bad = [k for k in strata if not 1 <= k <= num_layers - 1]
    if not strata or bad:
        raise ValueError(f"strata must be kept-layer counts in [1, {num_layers - 1}], got {list(strata)}")
    if num_masks < 1:
        raise ValueError(f"num_masks must be at least 1, got {num_masks}")

    rng = random.Random(seed)
    capacities = [math.comb(num_layers, k) for k in strata]
    counts = _allocate(num_masks - 1, capacities)
    if sum(counts) < num_masks - 1:
        logger.warning(
            "The strata %s of a %d-layer model hold only %d distinct masks; evaluating all of them instead of %d.",
            strata,
            num_layers,
            sum(counts),
            num_masks - 1,
        )
    subsets = [s for kept, count in zip(strata, counts) for s in _sample_subsets(rng, num_layers, kept, count)]
    rng.shuffle(subsets)  # strata interleaved: an interrupted run has already covered every stratum
    masks = np.zeros((1 + len(subsets), num_layers), dtype=bool)
    masks[0] = True
    for row, subset in enumerate(subsets, start=1):
        masks[row, list(subset)] = True
    return masks
