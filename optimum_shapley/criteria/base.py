"""One interface for every layer-selection criterion: which layers should go, and at what cost.

A criterion sees the model, a ``MaskEvaluator`` (real-model evaluations of layer masks on the calibration set,
cached and counted) and the number of layers to remove. It returns the removed layers, per-layer scores where the
method has them (higher = more important), and what it cost, so that methods compare on one protocol.
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..evaluation import MaskEvaluator
from ..registry import CRITERIA, register_criterion

__all__ = [
    "CRITERIA",
    "RUN_CONTEXT",
    "CriterionEvidence",
    "CriterionResult",
    "LayerCriterion",
    "NoOptions",
    "get_criterion",
    "register_criterion",
]

RUN_CONTEXT = ("config", "surrogate", "metadata")
"""What the pruner hands every criterion besides its own options: the run's ``ShapleyPruningConfig``, a saved
surrogate (or None) and metadata for artifacts. A criterion uses what it needs and ignores the rest."""


@dataclass(frozen=True)
class NoOptions:
    """The options of a criterion that has none: any option given to it is an error."""


@dataclass
class CriterionEvidence:
    """What a criterion found besides its choice, read by attribute (one subclass per kind of method).

    ``record()`` is the JSON-ready part that lands in ``PruningResult.details`` (and ``shapley_results.json``);
    ``extra_tokens`` the input tokens the method spent outside the evaluator's counted passes (a screening set).
    """

    kind: ClassVar[str] = ""

    @property
    def extra_tokens(self) -> int:
        return 0

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class CriterionResult:
    """What a criterion chose and what it cost.

    ``scores`` (one per original layer, higher = more important) and ``stderr`` are empty for methods that only
    produce a selection (angular distance, SLEB, reverse order, random). ``num_model_evaluations`` counts
    forward passes over the whole calibration set that the method needed (cache hits included: the cost of the
    method, not of this particular run); ``num_verification_evaluations`` the passes over the larger verification
    set (multi-fidelity methods); ``tokens_processed`` the input tokens of all of them, the unit in which methods
    with different calibration sizes compare; ``evidence`` holds what the method found, typed per kind.
    """

    method: str
    removed_layers: list[int]
    scores: list[float] = field(default_factory=list)
    stderr: list[float] = field(default_factory=list)
    num_model_evaluations: int = 0
    seconds: float = 0.0
    evidence: CriterionEvidence | None = None
    num_verification_evaluations: int = 0
    tokens_processed: int = 0

    @property
    def details(self) -> dict[str, Any]:
        """The evidence's JSON record (empty for a criterion without evidence)."""
        return self.evidence.record() if self.evidence is not None else {}


class LayerCriterion(ABC):
    """Base class: subclasses set ``name``, declare ``options_class`` (a dataclass of their own options, if any)
    and implement ``_select``, which receives the parsed options as ``options`` and the run context
    (:data:`RUN_CONTEXT`) as keywords."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    options_class: ClassVar[type] = NoOptions

    def parse_options(self, options: dict[str, Any]) -> Any:
        """``options_class`` built from ``options`` (run-context keys left out); an unknown option is an error."""
        known = {f.name for f in dataclasses.fields(self.options_class)}
        unknown = sorted(set(options) - known - set(RUN_CONTEXT))
        if unknown:
            accepted = ", ".join(sorted(known)) or "none"
            raise ValueError(
                f"{self.name}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                f"(its options: {accepted})"
            )
        return self.options_class(**{k: v for k, v in options.items() if k in known})

    def select(self, evaluator: MaskEvaluator, num_remove: int, *, seed: int = 0, **options: Any) -> CriterionResult:
        """Choose ``num_remove`` layers of ``evaluator.model`` to remove; ``options`` are the criterion's own
        (``options_class``) and the run context (``config``, ``surrogate``, ``metadata``)."""
        num_layers = evaluator.num_layers
        if not 1 <= num_remove < num_layers:
            raise ValueError(f"{self.name}: cannot remove {num_remove} of {num_layers} layers")
        parsed = self.parse_options(options)
        context = {k: options[k] for k in RUN_CONTEXT if k in options}
        start = time.perf_counter()
        requests_before = len(evaluator.requests)
        references_before = evaluator.reference_passes
        verifier = evaluator.verifier
        verifier_before = len(verifier.requests) if verifier is not None else 0
        result = self._select(evaluator, num_remove, seed=seed, options=parsed, **context)
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
        result.tokens_processed = tokens + (result.evidence.extra_tokens if result.evidence is not None else 0)
        result.seconds = time.perf_counter() - start
        return result

    @abstractmethod
    def _select(
        self, evaluator: MaskEvaluator, num_remove: int, *, seed: int, options: Any, **context: Any
    ) -> CriterionResult: ...


def get_criterion(name: str) -> LayerCriterion:
    """A fresh instance of the criterion registered as ``name``."""
    if name not in CRITERIA:
        raise ValueError(f"unknown method {name!r}; choose one of {CRITERIA.names()}")
    return CRITERIA[name]()


def lowest(scores: list[float], count: int) -> list[int]:
    """Indices of the ``count`` lowest scores (ties broken by index)."""
    return sorted(sorted(range(len(scores)), key=lambda i: (scores[i], i))[:count])
