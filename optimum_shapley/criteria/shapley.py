"""Our method as a criterion: evaluate stratified masks, fit the surrogate, estimate contributions on it.

``shapley`` runs with the run's ``ShapleyPruningConfig`` (log-ratio utility, strata around the target, permutation
Shapley values). ``shapley-paper`` runs the published configuration (the paper's strata shape scaled to the depth,
``ppl(full)/ppl(mask)`` utility, sigmoid surrogate, the paper's estimator) with our correct layer skipping and the
same mask budget, so the two compare at equal cost.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np

from ..config import ShapleyPruningConfig
from ..evaluation import MaskEvaluator, utilities_from_nll
from ..sampling import key_to_mask, mask_to_key, sample_masks
from ..search import propose_kept_sets, surrogate_predictor
from ..shapley import estimate_contributions
from ..surrogate import ShapleySurrogate, train_surrogate
from .base import CriterionResult, LayerCriterion, lowest, register_criterion

__all__ = ["PAPER_REMOVED_OFFSETS", "ShapleyCriterion", "ShapleyPaperCriterion", "paper_configuration"]

logger = logging.getLogger(__name__)

PAPER_REMOVED_OFFSETS = (2, 5, 8, 11, 14)
"""The paper keeps 30/27/24/21/18 of 32 layers whatever the target: 2, 5, 8, 11, 14 layers removed."""


def paper_configuration(config: ShapleyPruningConfig, num_layers: int) -> ShapleyPruningConfig:
    """The published settings (strata, utility, estimator) applied to ``config``'s budget and seed."""
    strata = sorted({min(max(num_layers - r, 1), num_layers - 1) for r in PAPER_REMOVED_OFFSETS})
    return dataclasses.replace(config, strata=strata, utility="ppl_ratio", estimator="paper", search_rounds=0)


@register_criterion
class ShapleyCriterion(LayerCriterion):
    """Surrogate-assisted Shapley values (our defaults)."""

    name = "shapley"
    description = "surrogate-assisted Shapley values (optimum-shapley)"

    def configure(self, config: ShapleyPruningConfig, num_layers: int) -> ShapleyPruningConfig:
        return config

    def _select(
        self,
        evaluator: MaskEvaluator,
        num_remove: int,
        *,
        seed: int,
        config: ShapleyPruningConfig | None = None,
        surrogate: ShapleySurrogate | None = None,
        metadata: dict[str, Any] | None = None,
        **options: Any,
    ) -> CriterionResult:
        num_layers = evaluator.num_layers
        if config is None:
            config = ShapleyPruningConfig(num_layers_to_remove=num_remove, seed=seed)
        config = self.configure(config, num_layers)
        strata = config.resolved_strata(num_layers)
        details: dict[str, Any] = {"strata": strata, "utility": config.utility, "estimator": config.estimator}
        fit = None
        removed = None
        if surrogate is None:
            masks = sample_masks(num_layers, strata, config.num_masks, config.seed)
            evaluations = evaluator.evaluate_all(masks)
            surrogate, fit, utilities = self._fit(config, evaluations, strata, metadata)
            if config.search_rounds > 0:
                estimate = self._estimate(surrogate, num_layers, config, strata)
                evaluations, surrogate, fit, utilities, removed, rounds = self._search(
                    evaluator, config, evaluations, utilities, surrogate, fit, estimate, num_remove, strata, metadata
                )
                details["search"] = rounds
            mean_nll = [e.mean_nll for e in evaluations]
            details.update(masks=[e.mask for e in evaluations], mean_nll=mean_nll, utilities=utilities.tolist())
        elif surrogate.num_layers != num_layers:
            raise ValueError(
                f"the surrogate was trained for a model with {surrogate.num_layers} layers; this model has {num_layers}"
            )
        estimate = self._estimate(surrogate, num_layers, config, strata)
        values = np.asarray(estimate.values, dtype=np.float64).tolist()
        details.update(surrogate=surrogate, surrogate_fit=fit)
        return CriterionResult(
            self.name,
            removed if removed is not None else lowest(values, num_remove),
            scores=values,
            stderr=np.asarray(estimate.stderr, dtype=np.float64).tolist(),
            details=details,
        )

    @staticmethod
    def _estimate(surrogate, num_layers, config, strata):
        surrogate.eval()
        return estimate_contributions(
            surrogate,
            num_layers,
            estimator=config.estimator,
            num_samples=config.mc_samples,
            seed=config.seed,
            kept_counts=strata,
        )

    @staticmethod
    def _fit(config, evaluations, strata, metadata):
        mean_nll = [e.mean_nll for e in evaluations]
        utilities = utilities_from_nll(mean_nll, mean_nll[0], config.utility)
        broken = sum(not math.isfinite(v) for v in mean_nll)
        if broken:
            logger.warning("%d mask(s) gave a non-finite loss; they keep the worst utility.", broken)
        masks = np.stack([key_to_mask(e.mask) for e in evaluations])
        surrogate, fit = train_surrogate(
            masks,
            utilities,
            hidden_multiplier=config.surrogate_hidden_multiplier,
            activation=config.surrogate_activation,
            utility=config.utility,
            learning_rate=config.surrogate_learning_rate,
            momentum=config.surrogate_momentum,
            epochs=config.surrogate_epochs,
            batch_size=config.surrogate_batch_size,
            validation_fraction=config.validation_fraction,
            seed=config.seed,
            metadata={**(metadata or {}), "strata": strata},
            mask_keys=[e.mask for e in evaluations],
        )
        return surrogate, fit, utilities

    def _screened_elimination(self, evaluator, config, evaluations, surrogate, target, strata, metadata):
        """SLEB, screened: from the full model, drop one layer at a time, following the best real evaluation.

        The first step evaluates every single-layer removal (they also teach the surrogate each layer's own effect).
        Later steps evaluate only a screen: the ``search_candidates`` removals the surrogate ranks best, plus the
        ``search_candidates`` layers whose removal cost least at the previous step (a layer that was nearly free to
        drop usually still is). On SmolLM2 the previous step's real top 8 held the next step's best layer at every
        step of a full SLEB run, while the surrogate, trained on random masks, cannot rank near-optimal sets.

        Also verifies the leave-one-out set (the layers whose lone removal cost least at the first step:
        Shortened-LLaMA's choice), a second start that costs one evaluation: on Gemma-3-270M, remove 6, it
        beat the elimination's set by two swaps."""
        known = {e.mask for e in evaluations}
        leave_one_out = None
        mask = np.ones(evaluator.num_layers, dtype=bool)
        verified = 0
        fit, utilities = None, None
        previous: list[int] = []  # layers ordered by the loss of removing them at the previous step, best first
        while mask.sum() > target:
            kept = np.flatnonzero(mask)
            trial = np.repeat(mask[None], len(kept), axis=0)
            trial[np.arange(len(kept)), kept] = False
            if previous:
                by_surrogate = np.argsort(-surrogate_predictor(surrogate)(trial), kind="stable")
                screen = {int(kept[i]) for i in by_surrogate[: config.search_candidates]}
                screen.update([layer for layer in previous if mask[layer]][: config.search_candidates])
                rows = [i for i, layer in enumerate(kept) if layer in screen]
            else:
                rows = list(range(len(kept)))
            new = evaluator.evaluate_all(trial[rows], desc=f"Screened elimination ({mask.sum() - 1} kept)")
            verified += sum(e.mask not in known for e in new)
            loss = [e.mean_nll if math.isfinite(e.mean_nll) else math.inf for e in new]
            order = np.argsort(loss, kind="stable")
            if leave_one_out is None:  # the first step evaluated every single-layer removal
                leave_one_out = np.ones(evaluator.num_layers, dtype=bool)
                leave_one_out[lowest(loss, len(mask) - target)] = False  # exactly the `ppl` criterion's choice
            previous = [int(kept[rows[i]]) for i in order[1:]]
            mask = key_to_mask(new[int(order[0])].mask)
            evaluations = evaluations + [e for e in new if e.mask not in known]
            known.update(e.mask for e in new)
            surrogate, fit, utilities = self._fit(config, evaluations, strata, metadata)
        if leave_one_out is not None and mask_to_key(leave_one_out) not in known:
            new = evaluator.evaluate_all([leave_one_out], desc="Verifying the leave-one-out set")
            verified += 1
            evaluations = evaluations + new
            surrogate, fit, utilities = self._fit(config, evaluations, strata, metadata)
        return evaluations, surrogate, fit, utilities, verified

    def _search(
        self, evaluator, config, evaluations, utilities, surrogate, fit, estimate, num_remove, strata, metadata
    ):
        """Surrogate-guided search of the kept set, verified on the real model (see ``search.py``)."""
        num_layers = evaluator.num_layers
        target = num_layers - num_remove

        def best_verified(evals, utils):
            at_target = [i for i, e in enumerate(evals) if e.mask.count("1") == target]
            return max(at_target, key=lambda i: (utils[i], -i)) if at_target else None

        shapley_start = np.ones(num_layers, dtype=bool)
        shapley_start[lowest(np.asarray(estimate.values).tolist(), num_remove)] = False
        rounds = []
        if getattr(self, "screened_elimination", True):
            evaluations, surrogate, fit, utilities, verified = self._screened_elimination(
                evaluator, config, evaluations, surrogate, target, strata, metadata
            )
            best = best_verified(evaluations, utilities)
            rounds.append(
                {
                    "phase": "screened elimination",
                    "verified": verified,
                    "best_utility": float(utilities[best]),
                    "best_mask": evaluations[best].mask,
                }
            )
        stalled = 0
        for round_index in range(config.search_rounds):
            best = best_verified(evaluations, utilities)
            best_before = float(utilities[best]) if best is not None else -math.inf
            at_target = sorted(
                (i for i, e in enumerate(evaluations) if e.mask.count("1") == target), key=lambda i: -utilities[i]
            )
            starts = [shapley_start] + [key_to_mask(evaluations[i].mask) for i in at_target[:3]]
            candidates = propose_kept_sets(
                surrogate_predictor(surrogate),
                num_layers,
                target,
                starts,
                exclude={e.mask for e in evaluations},
                count=config.search_candidates,
                anchor=key_to_mask(evaluations[best].mask) if best is not None else None,
            )
            if not candidates:
                break
            new = evaluator.evaluate_all(candidates, desc=f"Verifying kept sets (round {round_index + 1})")
            evaluations = evaluations + new
            surrogate, fit, utilities = self._fit(config, evaluations, strata, metadata)
            best = best_verified(evaluations, utilities)
            rounds.append(
                {"verified": len(new), "best_utility": float(utilities[best]), "best_mask": evaluations[best].mask}
            )
            stalled = stalled + 1 if float(utilities[best]) <= best_before else 0
            if stalled >= config.search_patience:
                break
        best = best_verified(evaluations, utilities)
        removed = [i for i, c in enumerate(evaluations[best].mask) if c == "0"] if best is not None else None
        return evaluations, surrogate, fit, utilities, removed, rounds


@register_criterion
class ShapleyPaperCriterion(ShapleyCriterion):
    """The published configuration, with correct layer skipping and the same mask budget."""

    name = "shapley-paper"
    description = "the paper's configuration (ppl ratio, fixed strata, paper estimator)"

    def configure(self, config: ShapleyPruningConfig, num_layers: int) -> ShapleyPruningConfig:
        return paper_configuration(config, num_layers)
