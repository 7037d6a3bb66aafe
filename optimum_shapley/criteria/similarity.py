"""Criteria that read one forward pass: ShortGPT's block influence and Gromov et al.'s angular distance."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..evaluation import MaskEvaluator
from .base import CriterionEvidence, CriterionResult, LayerCriterion, lowest, register_criterion
from .hidden_states import collect_block_statistics

__all__ = ["AngularDistance", "BlockEvidence", "BlockInfluence", "angular_distances"]


@register_criterion
class BlockInfluence(LayerCriterion):
    """ShortGPT: BI_i = 1 - mean over tokens of cos(input of block i, output of block i); remove the lowest."""

    name = "block-influence"
    description = "ShortGPT block influence (one forward pass)"

    def _select(
        self, evaluator: MaskEvaluator, num_remove: int, *, seed: int, options: Any, **context: Any
    ) -> CriterionResult:
        stats = collect_block_statistics(evaluator)
        scores = [1.0 - c for c in stats.mean_cosine]
        return CriterionResult(self.name, lowest(scores, num_remove), scores=scores, num_model_evaluations=1)


@dataclass
class BlockEvidence(CriterionEvidence):
    """Angular distance: the block it removed and the distance of every block of that length."""

    kind: ClassVar[str] = "block"
    block_start: int
    distances: list[float]


def angular_distances(last_token_states: torch.Tensor, block_size: int) -> list[float]:
    """Mean over sequences of arccos(cos(h_l, h_{l+n})) / pi for every start l of a block of n layers."""
    num_boundaries = last_token_states.shape[1]
    distances = []
    for start in range(num_boundaries - block_size):
        cos = torch.nn.functional.cosine_similarity(
            last_token_states[:, start, :].double(), last_token_states[:, start + block_size, :].double(), dim=-1
        ).clamp(-1.0, 1.0)
        distances.append(float((torch.arccos(cos) / math.pi).mean()))
    return distances


@register_criterion
class AngularDistance(LayerCriterion):
    """Gromov et al.: remove the contiguous block of n layers whose input and output (last token) are closest."""

    name = "angular"
    description = "angular distance, contiguous block (one forward pass)"

    def _select(
        self, evaluator: MaskEvaluator, num_remove: int, *, seed: int, options: Any, **context: Any
    ) -> CriterionResult:
        stats = collect_block_statistics(evaluator)
        distances = angular_distances(stats.last_token_states, num_remove)
        start = min(range(len(distances)), key=lambda s: (distances[s], s))
        return CriterionResult(
            self.name,
            list(range(start, start + num_remove)),
            num_model_evaluations=1,
            evidence=BlockEvidence(block_start=start, distances=distances),
        )
