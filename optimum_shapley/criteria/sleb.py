"""Criteria that evaluate candidate masks on the real model: SLEB (iterative) and Shortened-LLaMA's PPL."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from tqdm.auto import tqdm

from ..evaluation import MaskEvaluator
from .base import CriterionEvidence, CriterionResult, LayerCriterion, lowest, register_criterion

__all__ = ["GreedyEvidence", "LeaveOneOutPerplexity", "Sleb"]


@dataclass
class GreedyEvidence(CriterionEvidence):
    """SLEB: the order in which layers went and the calibration perplexity after each step."""

    kind: ClassVar[str] = "greedy"
    order: list[int]
    trajectory: list[dict[str, Any]]


def _nll(evaluation) -> float:
    value = evaluation.mean_nll
    return value if math.isfinite(value) else math.inf


@register_criterion
class Sleb(LayerCriterion):
    """SLEB: remove layers one at a time, each time the one whose removal gives the lowest calibration perplexity."""

    name = "sleb"
    description = "SLEB, iterative calibration perplexity"

    def _select(
        self, evaluator: MaskEvaluator, num_remove: int, *, seed: int, options: Any, **context: Any
    ) -> CriterionResult:
        kept = list(range(evaluator.num_layers))
        removed, trajectory = [], []
        for _ in tqdm(range(num_remove), desc="SLEB", unit="layer", disable=not evaluator.show_progress):
            trials = evaluator.evaluate_all([[k for k in kept if k != layer] for layer in kept], desc="SLEB step")
            candidates = {layer: _nll(evaluation) for layer, evaluation in zip(kept, trials)}
            best = min(kept, key=lambda layer: (candidates[layer], layer))
            kept.remove(best)
            removed.append(best)
            trajectory.append({"removed": best, "calibration_ppl": math.exp(min(candidates[best], 700.0))})
        return CriterionResult(self.name, removed, evidence=GreedyEvidence(order=removed, trajectory=trajectory))


@register_criterion
class LeaveOneOutPerplexity(LayerCriterion):
    """Shortened-LLaMA PPL criterion: remove each layer alone; the layers whose removal hurts least go, in one shot."""

    name = "ppl"
    description = "Shortened-LLaMA leave-one-out perplexity"

    def _select(
        self, evaluator: MaskEvaluator, num_remove: int, *, seed: int, options: Any, **context: Any
    ) -> CriterionResult:
        layers = range(evaluator.num_layers)
        masks = [[k for k in layers if k != layer] for layer in layers]
        # score = calibration loss without the layer: the higher, the more the layer matters
        scores = [_nll(e) for e in evaluator.evaluate_all(masks, desc="Leave-one-out perplexity")]
        return CriterionResult(self.name, lowest(scores, num_remove), scores=scores)
