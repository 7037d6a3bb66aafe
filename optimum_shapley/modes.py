"""A model's train/eval mode around a block: a measurement runs without dropout and leaves the caller's mode as it
found it, even when the block raises (one context for every evaluation pass in the package)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["eval_mode"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode (no dropout) for the block, then back in the mode the caller had."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
