"""One interface for every layer-selection criterion: which layers should go, and at what cost.

A criterion sees the model, a ``MaskEvaluator`` (real-model evaluations of layer masks on the calibration set,
cached and counted) and the number of layers to remove. It returns the removed layers, per-layer scores where the
method has them (higher = more important), and what it cost, so that methods compare on one protocol.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..evaluation import MaskEvaluator
from ..registry import CRITERIA, register_criterion

__all__ = ["CRITERIA", "CriterionResult", "LayerCriterion", "get_criterion", "register_criterion"]


@dataclass
class CriterionResult:
    """What a criterion chose and what it cost.

    ``scores`` (one per original layer, higher = more important) and ``stderr`` are empty for methods that only
    produce a selection (angular distance, SLEB, reverse order, random). ``num_model_evaluations`` counts
    forward passes over the whole calibration set that the method needed (cache hits included: the cost of the
    method, not of this particular run); ``num_verification_evaluations`` the passes over the larger verification
    set (multi-fidelity methods); ``tokens_processed`` the input tokens of all of them, the unit in which methods
    with different calibration sizes compare; ``details`` holds method-specific evidence.
    """

    method: str
    removed_layers: list[int]
    scores: list[float] = field(default_factory=list)
    stderr: list[float] = field(default_factory=list)
    num_model_evaluations: int = 0
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    num_verification_evaluations: int = 0
    tokens_processed: int = 0


class LayerCriterion(ABC):
    """Base class: subclasses set ``name`` and implement ``_select``."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    def select(self, evaluator: MaskEvaluator, num_remove: int, *, seed: int = 0, **options: Any) -> CriterionResult:
        """Choose ``num_remove`` layers of ``evaluator.model`` to remove."""
        num_layers = evaluator.num_layers
        if not 1 <= num_remove < num_layers:
            raise ValueError(f"{self.name}: cannot remove {num_remove} of {num_layers} layers")
        start = time.perf_counter()
        requests_before = len(evaluator.requests)
        references_before = evaluator.reference_passes
        verifier = evaluator.verifier
        verifier_before = len(verifier.requests) if verifier is not None else 0
        result = self._select(evaluator, num_remove, seed=seed, **options)
        result.removed_layers = sorted(int(i) for i in result.removed_layers)
        if len(result.removed_layers) != num_remove or len(set(result.removed_layers)) != num_remove:
            raise RuntimeError(f"{self.name} selected {result.removed_layers}, expected {num_remove} distinct layers")
        # distinct masks: one asked for twice (e.g. a search step reaching a sampled mask) is one evaluation
        result.num_model_evaluations += len(set(evaluator.requests[requests_before:]))
        result.num_model_evaluations += evaluator.reference_passes - references_before
        tokens = result.num_model_evaluations * evaluator.tokens_per_mask if result.num_model_evaluations else 0
        if verifier is not None:
            result.num_verification_evaluations = len(set(verifier.requests[verifier_before:]))
            if result.num_verification_evaluations:
                tokens += result.num_verification_evaluations * verifier.tokens_per_mask
        result.tokens_processed = tokens + int(result.details.get("screening_tokens", 0) or 0)
        result.seconds = time.perf_counter() - start
        return result

    @abstractmethod
    def _select(self, evaluator: MaskEvaluator, num_remove: int, *, seed: int, **options: Any) -> CriterionResult: ...


def get_criterion(name: str) -> LayerCriterion:
    """A fresh instance of the criterion registered as ``name``."""
    if name not in CRITERIA:
        raise ValueError(f"unknown method {name!r}; choose one of {CRITERIA.names()}")
    return CRITERIA[name]()


def lowest(scores: list[float], count: int) -> list[int]:
    """Indices of the ``count`` lowest scores (ties broken by index)."""
    return sorted(sorted(range(len(scores)), key=lambda i: (scores[i], i))[:count])
