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

from .encoding import key_to_mask, mask_to_key

__all__ = ["key_to_mask", "mask_to_key", "sample_masks"]

logger = logging.getLogger(__name__)

_ENUMERATE_LIMIT = 50_000  # below this many subsets of a size, enumerate them instead of rejection sampling


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


def _stratum_sequence(seed: int, num_layers: int, kept: int, count: int) -> list[tuple[int, ...]]:
    """The first ``count`` subsets of one seeded random order of all ``kept``-subsets (uniform, distinct).

    The order depends only on the seed, the depth and the stratum, never on ``count``: a larger budget draws a
    superset of a smaller one's masks, so the evaluations of a smaller run are all reused from the cache."""
    rng = random.Random(f"optimum-shapley/{seed}/{num_layers}/{kept}")
    total = math.comb(num_layers, kept)
    if total <= _ENUMERATE_LIMIT:
        subsets = list(combinations(range(num_layers), kept))
        rng.shuffle(subsets)
        return subsets[:count]
    chosen: dict[tuple[int, ...], None] = {}
    while len(chosen) < min(count, total):
        chosen.setdefault(tuple(sorted(rng.sample(range(num_layers), kept))), None)
    return list(chosen)


def sample_masks(num_layers: int, strata: Sequence[int], num_masks: int, seed: int = 0) -> np.ndarray:
    """Return ``(n, num_layers)`` boolean masks: the full model first, then distinct masks spread over ``strata``.

    Budgets are nested: the masks of a smaller ``num_masks`` (same seed and strata) are a subset of a larger one's.
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
    sequences = [_stratum_sequence(seed, num_layers, kept, count) for kept, count in zip(strata, counts)]
    # strata interleaved round-robin: an interrupted run has already covered every stratum
    subsets = [seq[i] for i in range(max(counts, default=0)) for seq in sequences if i < len(seq)]
    masks = np.zeros((1 + len(subsets), num_layers), dtype=bool)
    masks[0] = True
    for row, subset in enumerate(subsets, start=1):
        masks[row, list(subset)] = True
    return masks
