"""How a layer mask is written down: one leaf module owns the encodings every other module converts between.

A mask is a boolean vector over the decoder layers, layer 0 first, True = kept. Its key (the cache's and the
surrogate's name for it) is the string of 0/1 characters; a kept set is the sorted list of kept indices.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["key_to_kept", "key_to_mask", "kept_to_key", "mask_to_key"]


def mask_to_key(mask: Sequence[bool] | np.ndarray) -> str:
    """A mask as a string of 0/1 characters, layer 0 first: the cache key of a mask."""
    return "".join("1" if bool(v) else "0" for v in mask)


def key_to_mask(key: str) -> np.ndarray:
    """The boolean mask of a key."""
    return np.array([c == "1" for c in key], dtype=bool)


def kept_to_key(kept: Iterable[int], num_layers: int) -> str:
    """The key of the mask that keeps exactly ``kept`` of ``num_layers`` layers."""
    return mask_to_key(np.isin(np.arange(num_layers), list(kept)))


def key_to_kept(key: str) -> list[int]:
    """The kept layer indices of a key, ascending."""
    return [i for i, c in enumerate(key) if c == "1"]
