"""Every layer-selection criterion behind one interface (``select_layers``), ours and the peers'.

| name | method | real-model cost |
|---|---|---|
| ``shapley`` | surrogate-assisted Shapley values (default) | ``num_masks`` evaluations |
| ``shapley-paper`` | the paper's configuration | ``num_masks`` evaluations |
| ``block-influence`` | ShortGPT | 1 forward pass |
| ``angular`` | Gromov et al., contiguous block | 1 forward pass |
| ``sleb`` | SLEB, iterative | sum over steps of the remaining layers |
| ``ppl`` | Shortened-LLaMA leave-one-out perplexity | one evaluation per layer |
| ``taylor`` | Shortened-LLaMA first-order Taylor | 1 forward + backward |
| ``reverse-order`` | last layers before the final one | none |
| ``random`` | seeded random | none |

Each criterion returns its evidence typed (``GameRecord``, ``EvolutionEvidence``, ``GreedyEvidence``,
``BlockEvidence``; none for the score-only ones) and declares its options as a dataclass (``EvoPressOptions``;
``NoOptions`` for the rest): an unknown option is an error.
"""

from typing import Any

from ..evaluation import MaskEvaluator
from ..registry import BUILTIN_METHODS, CRITERIA, register_criterion
from . import evopress, shapley, similarity, simple, sleb  # noqa: F401  (importing registers the criteria)
from .base import CriterionEvidence, CriterionResult, LayerCriterion, NoOptions, get_criterion
from .evopress import EvolutionEvidence, EvoPressOptions
from .shapley import GameEvidence, GameRecord
from .similarity import BlockEvidence
from .sleb import GreedyEvidence

__all__ = [
    "CRITERIA",
    "METHODS",
    "BlockEvidence",
    "CriterionEvidence",
    "CriterionResult",
    "EvoPressOptions",
    "EvolutionEvidence",
    "GameEvidence",
    "GameRecord",
    "GreedyEvidence",
    "LayerCriterion",
    "NoOptions",
    "get_criterion",
    "register_criterion",
    "select_layers",
]

METHODS = BUILTIN_METHODS
"""The built-in methods, in display order (a user's own registered later are in ``CRITERIA.names()``)."""
assert set(METHODS) == set(CRITERIA), "every built-in method has a registered criterion"


def select_layers(
    method: str, evaluator: MaskEvaluator, num_remove: int, *, seed: int = 0, **options: Any
) -> CriterionResult:
    """Choose ``num_remove`` layers to remove with ``method`` (see the table above)."""
    return get_criterion(method).select(evaluator, num_remove, seed=seed, **options)
