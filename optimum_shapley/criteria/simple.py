"""Criteria that need no real evaluation (the sanity floors) or one forward+backward (Taylor)."""

from __future__ import annotations

import random
from typing import Any

import torch

from ..architectures import find_decoder_layers
from ..evaluation import MaskEvaluator
from ..modes import eval_mode
from .base import CriterionResult, LayerCriterion, lowest, register_criterion

__all__ = ["RandomLayers", "ReverseOrder", "Taylor"]


@register_criterion
class ReverseOrder(LayerCriterion):
    """Drop the last layers before the final one (the final layer stays: it feeds the head)."""

    name = "reverse-order"
    description = "reverse order (last layers before the final one)"

    def _select(
        self, evaluator: MaskEvaluator, num_remove: int, *, seed: int, options: Any, **context: Any
    ) -> CriterionResult:
        last = evaluator.num_layers - 1
        return CriterionResult(self.name, list(range(last - num_remove, last)))


@register_criterion
class RandomLayers(LayerCriterion):
    """Remove a seeded uniformly random set of layers."""

    name = "random"
    description = "random (seeded)"

    def _select(
        self, evaluator: MaskEvaluator, num_remove: int, *, seed: int, options: Any, **context: Any
    ) -> CriterionResult:
        return CriterionResult(self.name, random.Random(seed).sample(range(evaluator.num_layers), num_remove))


def _target_weights(batch) -> torch.Tensor:
    """1 for every next-token target that is not padding, flattened like the per-token losses."""
    ids, mask = batch["input_ids"], batch.get("attention_mask")
    weights = mask[:, 1:] if mask is not None else torch.ones_like(ids[:, 1:])
    return weights.reshape(-1).float()


@register_criterion
class Taylor(LayerCriterion):
    """Shortened-LLaMA Taylor criterion: block importance = sum over its weights of |w * dL/dw| on calibration
    data (first-order estimate of the loss change if the block's weights were zeroed); remove the lowest."""

    name = "taylor"
    description = "Shortened-LLaMA first-order Taylor (one forward + backward)"

    def _select(
        self, evaluator: MaskEvaluator, num_remove: int, *, seed: int, options: Any, **context: Any
    ) -> CriterionResult:
        model = evaluator.model
        blocks = getattr(*find_decoder_layers(model))
        groups = [list(block.parameters()) for block in blocks]
        saved = {id(p): (p.requires_grad, p.grad) for p in model.parameters()}
        try:
            for p in model.parameters():
                p.requires_grad_(False)
                p.grad = None
            for p in (p for group in groups for p in group):
                p.requires_grad_(True)
            batches = list(evaluator.prepared_batches())
            total_tokens = sum(float(_target_weights(b).sum()) for b in batches)
            with eval_mode(model):
                for batch in batches:  # gradient of the token-weighted mean loss over the whole calibration set
                    ids = batch["input_ids"]
                    logits = model(input_ids=ids, attention_mask=batch.get("attention_mask"), use_cache=False).logits
                    losses = torch.nn.functional.cross_entropy(
                        logits[:, :-1].float().reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none"
                    )
                    ((losses * _target_weights(batch)).sum() / total_tokens).backward()
            scores = [
                float(sum((p.detach() * p.grad).abs().sum(dtype=torch.float64) for p in group if p.grad is not None))
                for group in groups
            ]
        finally:
            for p in model.parameters():
                p.requires_grad_(saved[id(p)][0])
                p.grad = saved[id(p)][1]
        return CriterionResult(self.name, lowest(scores, num_remove), scores=scores, num_model_evaluations=1)
