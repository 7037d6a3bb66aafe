"""Our method as a criterion: a cooperative game over the layers, played where it is measured, that chooses the set.

``shapley`` (the default) runs, within a budget of real evaluations (default: twice SLEB's cost):

1. **peers**: the sets of the one-pass criteria (angular distance, block influence) and the leave-one-out set are
   verified first, so the result is never worse than theirs on the calibration objective;
2. **design**: random masks from the strata around the target start the surrogate (an ensemble of MLPs);
3. **elimination**: SLEB on the utility (from the full model, drop the layer whose removal costs least); a step
   tries every kept layer while the rest of a full elimination fits the budget with room for the search, else only
   the layers the surrogate's marginals and the previous step rank cheapest (**screened elimination**);
4. **search**: rounds of candidates from the game's values around the best verified set (the k lowest values,
   swaps of low-value kept layers for high-value removed ones), the surrogate's own optima and the incumbent's
   one- and two-swap neighbours, ranked by an upper confidence bound over the ensemble, verified on the real
   model; the loop stops when no candidate can beat the best verified set within the ensemble's uncertainty;
5. **verification**: the best few verified sets are re-scored on a larger calibration sample (multi-fidelity, as
   EvoPress does) and the best one there is removed;
6. **value check**: each layer's real marginal at the chosen set is measured and rank-correlated with its value.

The values are the game's where it was measured (``estimator="measured"``): the coefficients of a linear game fitted
by ridge regression to the real evaluations near the best verified set (the elimination's last steps, the search
and its trust region lie there), with the neighbourhood and the ridge chosen by leave-one-out; they pick the search's
candidates around each incumbent and are reported at the chosen set. Where too few evaluations lie near a set, the
surrogate's local values stand in (``"local"``: each layer's mean marginal on the surrogate over kept sets of the
target size near it), and the result says which estimator gave the values. ``shapley-paper``
keeps the published behaviour (strata fixed for 32 layers, ``ppl(full)/ppl(mask)``, the paper's estimator, the k
lowest scores removed unverified) with our layer skipping and the same design budget.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..config import ShapleyPruningConfig
from ..encoding import key_to_mask, mask_to_key
from ..evaluation import MaskEvaluator, utilities_from_nll
from ..game_values import (
    ShapleyEstimate,
    estimate_contributions,
    measured_values,
    region_values,
    sample_region_masks,
)
from ..sampling import sample_masks
from ..search import propose_kept_sets, surrogate_predictor
from ..surrogate import ShapleySurrogate, SurrogateFit, spearman, train_surrogate
from .base import CriterionEvidence, CriterionResult, LayerCriterion, lowest, register_criterion
from .hidden_states import collect_block_statistics
from .similarity import angular_distances

__all__ = [
    "PAPER_REMOVED_OFFSETS",
    "GameEvidence",
    "GameRecord",
    "ShapleyCriterion",
    "ShapleyPaperCriterion",
    "VerifiedSet",
    "paper_configuration",
]

logger = logging.getLogger(__name__)

PAPER_REMOVED_OFFSETS = (2, 5, 8, 11, 14)
"""The paper keeps 30/27/24/21/18 of 32 layers whatever the target: 2, 5, 8, 11, 14 layers removed."""

MIN_TRAINING_MASKS = 12
"""Evaluated masks a surrogate needs at least (10 to hold out two for validation, and a little room)."""

UCB_WIDTH = 1.0
"""Ensemble standard deviations added to a candidate's predicted utility when ranking and when deciding to stop."""

REMEMBERED_SETS = 3
"""Best verified kept sets a surrogate keeps in its config (the chosen one first): where a reuse starts."""


def paper_configuration(config: ShapleyPruningConfig, num_layers: int) -> ShapleyPruningConfig:
    """The published settings (strata, utility, estimator) applied to ``config``'s budget and seed."""
    strata = sorted({min(max(num_layers - r, 1), num_layers - 1) for r in PAPER_REMOVED_OFFSETS})
    return dataclasses.replace(
        config,
        strata=strata,
        utility="ppl_ratio",
        estimator="paper",
        search_rounds=0,
        surrogate_ensemble=1,
        surrogate_features="mask",
        verify_samples=0,
        value_check=False,
        num_masks=config.num_masks if config.num_masks is not None else 128,
    )


@dataclass
class VerifiedSet:
    """A kept set of the target size evaluated on the real model."""

    removed: list[int]
    loss: float  # mean per-token objective on the calibration set (KL or NLL)
    found_by: str  # the phase (or peer) that first evaluated it
    verifier_loss: float | None = None  # on the larger verification set, when it was re-scored there


@dataclass
class GameEvidence:
    """How a ``shapley`` run chose its set: the typed record the result, the summary and the card read."""

    objective: str  # "kl" or "nll": what the losses below are
    values_estimator: str
    values_region: str  # in words: which coalitions the values average marginals over
    coalition_sizes: list[int]  # [smallest, largest] size of the coalitions of other layers the marginals are at
    chosen_by: str  # phase that first evaluated the removed set ("unverified" when nothing was evaluated)
    chosen_on: str  # "verification" (re-scored on the larger set), "calibration" or "surrogate" (unverified)
    top_sets: list[VerifiedSet] = field(default_factory=list)  # the best verified sets, best first
    lowest_value_set: VerifiedSet | None = None  # the k lowest values, measured (None: not evaluated)
    lowest_value_is_chosen: bool = False
    flagged_layers: list[int] = field(default_factory=list)  # value interval overlaps the cut
    value_check: dict[str, Any] | None = None  # {"spearman", "num_evaluations", "new_evaluations", ...}
    spent: dict[str, int] = field(default_factory=dict)  # phase -> new calibration-set evaluations
    verification_evaluations: int = 0  # passes over the verification set
    verification_blocks: int = 0
    budget: int = 0  # in calibration-set evaluations
    stopped: str = ""  # why the search stopped
    peers: dict[str, VerifiedSet] = field(default_factory=dict)
    reused_surrogate: bool = False
    reuse_verified: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GameRecord(CriterionEvidence):
    """Everything a surrogate game produced: its design and evaluated masks, the values' estimate, the surrogate
    and its fit, and how the set was chosen (:class:`GameEvidence`). The pruner reads it by attribute; only
    ``values_estimate`` stays in ``PruningResult.details``, the rest has fields of its own there."""

    kind: ClassVar[str] = "game"
    strata: list[int]
    utility: str
    estimator: str
    game: GameEvidence
    values_estimate: dict[str, Any]
    surrogate: ShapleySurrogate | None = None
    surrogate_fit: SurrogateFit | None = None  # the final fit (None when nothing was trained)
    masks: list[str] = field(default_factory=list)
    mean_nll: list[float] = field(default_factory=list)
    utilities: list[float] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"values_estimate": self.values_estimate}


def _removed(mask: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(~np.asarray(mask, dtype=bool))]


def _interleave(first: list[int], second: list[int]) -> list[int]:
    """``first[0], second[0], first[1], ...`` without repeats, then whatever either has left."""
    out = list(dict.fromkeys(x for pair in zip(first, second) for x in pair))
    return out + [x for x in first + second if x not in out]


def _flipped(mask: np.ndarray, layers: list[int]) -> np.ndarray:
    """One copy of ``mask`` per layer of ``layers``, with that layer flipped (dropped if kept, added back if not)."""
    trial = np.repeat(np.asarray(mask, dtype=bool)[None], len(layers), axis=0)
    trial[np.arange(len(layers)), layers] = ~trial[np.arange(len(layers)), layers]
    return trial


def _anchor(surrogate: ShapleySurrogate, target: int) -> np.ndarray | None:
    """The best verified set the surrogate remembers, of the size nearest the target (None: it remembers none)."""
    keys = surrogate.verified_kept_sets or []
    if not keys:
        return None
    return key_to_mask(min(keys, key=lambda k: abs(k.count("1") - target)))  # min keeps the first (best) of a size


def _kept_mask(num_layers: int, removed: list[int]) -> np.ndarray:
    mask = np.ones(num_layers, dtype=bool)
    mask[list(removed)] = False
    return mask


class _Game:
    """The state of one run: evaluations so far, which phase asked for each, the surrogate, the budget."""

    def __init__(self, evaluator: MaskEvaluator, config: ShapleyPruningConfig, num_remove: int, strata, metadata):
        self.evaluator = evaluator
        self.config = config
        self.num_layers = evaluator.num_layers
        self.target = self.num_layers - num_remove
        self.num_remove = num_remove
        self.strata = strata
        self.metadata = metadata
        self.evaluations: dict[str, Any] = {}  # key -> MaskEvaluation, in first-seen order
        self.phase_of: dict[str, str] = {}
        self.spent: dict[str, int] = {}
        self.budget = config.resolved_max_evaluations(self.num_layers, num_remove)
        self.extra_passes = 0  # one-pass statistics (peers), counted like an evaluation
        self.verification_equivalents = 0.0
        self.surrogate: ShapleySurrogate | None = None
        self.fit = None
        self.verifier_loss: dict[str, float] = {}  # key -> loss on the verification set

    # ---------------------------------------------------------------- evaluations and budget
    def used(self) -> float:
        return len(self.evaluations) + self.extra_passes + self.verification_equivalents

    def remaining(self) -> float:
        return self.budget - self.used()

    def evaluate(self, masks: list[np.ndarray], phase: str, desc: str) -> list:
        results = self.evaluator.evaluate_all(masks, desc=desc)
        for evaluation in results:
            if evaluation.mask not in self.evaluations:
                self.evaluations[evaluation.mask] = evaluation
                self.phase_of[evaluation.mask] = phase
                self.spent[phase] = self.spent.get(phase, 0) + 1
        best = self.best()
        self.evaluator.report(
            phase=phase,
            evaluations=self.used(),
            phase_evaluations=self.spent.get(phase, 0),
            **({"best_verified_loss": self.loss(best)} if best is not None else {}),
        )
        return results

    def new(self, masks) -> list[np.ndarray]:
        """The masks not evaluated yet, without duplicates, in order."""
        seen, out = set(self.evaluations), []
        for mask in masks:
            key = mask_to_key(mask)
            if key not in seen:
                seen.add(key)
                out.append(np.asarray(mask, dtype=bool))
        return out

    def loss_of(self, evaluation) -> float:
        """The utility's loss: mean KL for ``utility="kl"``, mean NLL otherwise; inf when not finite."""
        value = evaluation.mean_kl if self.config.utility == "kl" else evaluation.mean_nll
        return value if math.isfinite(value) else math.inf

    def loss(self, key: str) -> float:
        return self.loss_of(self.evaluations[key])

    def utility_of(self, key: str) -> float:
        """The utility of an evaluated key, on the scale the surrogate predicts."""
        full = self.loss(mask_to_key(np.ones(self.num_layers, dtype=bool)))
        return float(utilities_from_nll([self.loss(key)], full, self.config.utility)[0])

    def at_target(self) -> list[str]:
        """Verified keys of the target size, best (lowest loss) first; ties by first seen."""
        order = {k: i for i, k in enumerate(self.evaluations)}
        keys = [k for k in self.evaluations if k.count("1") == self.target]
        return sorted(keys, key=lambda k: (self.loss(k), order[k]))

    def best(self) -> str | None:
        keys = self.at_target()
        return keys[0] if keys else None

    def measured(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(masks, utilities)`` of every real evaluation so far, for the ``measured`` values (None: none yet)."""
        if not self.evaluations:
            return None
        keys, utilities = self.utilities()
        return np.stack([key_to_mask(k) for k in keys]), np.asarray(utilities, dtype=np.float64)

    # ---------------------------------------------------------------- surrogate
    def utilities(self) -> tuple[list[str], np.ndarray]:
        keys = list(self.evaluations)
        full = mask_to_key(np.ones(self.num_layers, dtype=bool))
        if keys[0] != full:  # the full model anchors the utility and always trains
            keys.remove(full)
            keys.insert(0, full)
        losses = [self.loss(k) for k in keys]
        broken = sum(not math.isfinite(v) for v in losses)
        if broken:
            logger.warning("%d mask(s) gave a non-finite loss; they keep the worst utility.", broken)
        return keys, utilities_from_nll(losses, losses[0], self.config.utility)

    def refit(self) -> None:
        config = self.config
        keys, utilities = self.utilities()
        self.surrogate, self.fit = train_surrogate(
            np.stack([key_to_mask(k) for k in keys]),
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
            metadata={**(self.metadata or {}), "strata": self.strata},
            mask_keys=keys,
            ensemble_size=config.surrogate_ensemble,
            features=config.surrogate_features,
        )
        self.evaluator.report(
            surrogate_train_masks=self.fit.num_train,
            surrogate_validation_r2=self.fit.validation_r2,
            surrogate_validation_spearman=self.fit.validation_spearman,
        )

    def predict(self, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ensemble mean and standard deviation of the predicted utility of ``masks``."""
        with torch.no_grad():
            rows = self.surrogate.member_predictions(torch.from_numpy(np.asarray(masks, dtype=np.float32)))
        rows = rows.double().numpy()
        spread = rows.std(axis=0, ddof=1) if len(rows) > 1 else np.zeros(rows.shape[1])
        return rows.mean(axis=0), spread

    # ---------------------------------------------------------------- one-layer steps (elimination, reuse walk)
    def cheapest_flips(self, mask: np.ndarray, layers: list[int], previous: list[int], width: int) -> list[int]:
        """A step's screen among ``layers``: the ``width`` whose flip the surrogate predicts cheapest, interleaved
        with the ``width`` cheapest of the previous step that can still flip."""
        mean, _ = self.predict(_flipped(mask, layers))
        by_surrogate = [layers[i] for i in np.argsort(-mean, kind="stable")[:width]]
        movable = set(layers)
        return _interleave(by_surrogate, [layer for layer in previous if layer in movable][:width])

    def follow_best(self, mask: np.ndarray, layers: list[int], phase: str, desc: str) -> tuple[np.ndarray, list[int]]:
        """Evaluate ``mask`` with each of ``layers`` flipped; returns the best real evaluation's mask and the other
        layers, cheapest first (SLEB's step)."""
        new = self.evaluate(list(_flipped(mask, layers)), phase, desc)
        ranked = np.argsort([self.loss_of(e) for e in new], kind="stable")
        return key_to_mask(new[int(ranked[0])].mask), [layers[i] for i in ranked[1:]]


def values_of(
    surrogate,
    config: ShapleyPruningConfig,
    num_layers: int,
    target: int,
    strata,
    center,
    measured: tuple[np.ndarray, np.ndarray] | None = None,
) -> ShapleyEstimate:
    """The run's values: the configured estimator (``center`` = best verified kept set or None). ``measured``
    (``(masks, utilities)`` of the real evaluations) feeds the ``measured`` estimator; where it cannot fit (no
    centre, fewer evaluations than layers near it) the surrogate's ``local`` values stand in, and the estimate
    says so."""
    if config.estimator == "measured" and center is not None and measured is not None:
        estimate = measured_values(measured[0], measured[1], center)
        if estimate is not None:
            return estimate
    surrogate.eval()
    if config.estimator in ("measured", "local", "semivalue"):
        return region_values(
            surrogate,
            num_layers,
            target,
            num_samples=config.mc_samples,
            center=center if config.estimator in ("measured", "local") else None,
            radius=config.value_radius,
            seed=config.seed,
        )
    estimate = estimate_contributions(
        surrogate,
        num_layers,
        estimator=config.estimator,
        num_samples=config.mc_samples,
        seed=config.seed,
        kept_counts=strata,
    )
    if config.estimator == "permutation":
        estimate.region = "every coalition size from 0 to all layers (mostly outside the surrogate's training range)"
        estimate.coalition_sizes = (0, num_layers - 1)
    else:
        estimate.region = f"masks drawn from the kept counts {list(strata)}"
        estimate.coalition_sizes = (max(min(strata) - 1, 0), max(strata))
    return estimate


def one_pass_peer_sets(stats, num_remove: int) -> dict[str, list[int]]:
    """The removed sets of angular distance (the closest contiguous block) and block influence (the lowest), from
    one pass of block statistics: the same rules as the ``angular`` and ``block-influence`` criteria."""
    distances = angular_distances(stats.last_token_states, num_remove)
    start = min(range(len(distances)), key=lambda s: (distances[s], s))
    return {
        "angular": list(range(start, start + num_remove)),
        "block-influence": lowest([1.0 - c for c in stats.mean_cosine], num_remove),
    }


def flagged(values: np.ndarray, stderr: np.ndarray, num_remove: int) -> list[int]:
    """Layers whose 95% interval overlaps the cut between the ``num_remove`` lowest values and the rest."""
    order = np.sort(values)
    cut = 0.5 * (order[num_remove - 1] + order[num_remove])
    se = np.nan_to_num(np.asarray(stderr, dtype=np.float64), nan=np.inf)
    return [int(i) for i in np.flatnonzero(np.abs(values - cut) <= 1.96 * se)]


@register_criterion
class ShapleyCriterion(LayerCriterion):
    """The cooperative game over layers, with a verified search that its values feed (our defaults)."""

    name = "shapley"
    description = "cooperative game over layers: local values, verified search (optimum-shapley)"

    def configure(self, config: ShapleyPruningConfig, num_layers: int) -> ShapleyPruningConfig:
        return config

    def _select(
        self,
        evaluator: MaskEvaluator,
        num_remove: int,
        *,
        seed: int,
        options: Any,
        config: ShapleyPruningConfig | None = None,
        surrogate: ShapleySurrogate | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> CriterionResult:
        num_layers = evaluator.num_layers
        if config is None:
            config = ShapleyPruningConfig(num_layers_to_remove=num_remove, seed=seed)
        config = self.configure(config, num_layers)
        if config.utility == "kl" and evaluator.objective != "kl":
            raise ValueError(
                f"utility='kl' needs a MaskEvaluator with objective='kl' (it measures the KL to the dense model), "
                f"got objective={evaluator.objective!r}"
            )
        strata = config.resolved_strata(num_layers, num_remove)
        game = _Game(evaluator, config, num_remove, strata, metadata)
        if surrogate is not None:
            if surrogate.num_layers != num_layers:
                raise ValueError(
                    f"the surrogate was trained for a model with {surrogate.num_layers} layers; this model has "
                    f"{num_layers}"
                )
            return self._reuse(game, surrogate)
        if config.search_rounds == 0:
            return self._one_shot(game)
        return self._fresh(game)

    # ------------------------------------------------------------------------------------------------ one shot
    def _one_shot(self, game: _Game) -> CriterionResult:
        """Design, surrogate, values, the k lowest removed unverified (the paper's procedure)."""
        config = game.config
        masks = sample_masks(game.num_layers, game.strata, config.resolved_num_masks(game.num_layers), config.seed)
        game.evaluate(list(masks), "design", "Evaluating layer masks")
        game.refit()
        estimate = values_of(game.surrogate, config, game.num_layers, game.target, game.strata, None)
        removed = lowest(np.asarray(estimate.values).tolist(), game.num_remove)
        evidence = GameEvidence(
            objective=game.evaluator.objective,
            values_estimator=estimate.estimator,
            values_region=estimate.region,
            coalition_sizes=list(estimate.coalition_sizes or ()),
            chosen_by="lowest values",
            chosen_on="surrogate",
            flagged_layers=flagged(np.asarray(estimate.values), np.asarray(estimate.stderr), game.num_remove),
            spent=dict(game.spent),
            budget=len(game.evaluations),
            stopped="no search (one shot: the k lowest values)",
        )
        return self._result(game, removed, estimate, evidence)

    # ------------------------------------------------------------------------------------------------ fresh run
    def _fresh(self, game: _Game) -> CriterionResult:
        config, evaluator, num_layers, target = game.config, game.evaluator, game.num_layers, game.target
        full = np.ones(num_layers, dtype=bool)

        # 1. peers: angular distance and block influence from one pass, leave-one-out from the single removals
        stats = collect_block_statistics(evaluator)
        game.extra_passes += 1
        singles = []
        for layer in range(num_layers):
            mask = full.copy()
            mask[layer] = False
            singles.append(mask)
        first = game.evaluate([full, *singles], "peers", "Leave-one-out (peers)")
        loo_loss = [game.loss_of(e) for e in first[1:]]
        peer_sets = {**one_pass_peer_sets(stats, game.num_remove), "leave-one-out": lowest(loo_loss, game.num_remove)}
        for name, removed in peer_sets.items():
            mask = _kept_mask(num_layers, removed)
            key = mask_to_key(mask)
            if key not in game.evaluations:
                game.evaluate([mask], f"peer:{name}", f"Verifying the {name} set")
        peers = {
            name: VerifiedSet(removed, game.loss(mask_to_key(_kept_mask(num_layers, removed))), f"peer:{name}")
            for name, removed in peer_sets.items()
        }

        # reserve what the end needs: verification of the top sets, the lowest-value set and the value check
        verifier = evaluator.verifier
        per_verification = verifier.tokens_per_mask / max(evaluator.tokens_per_mask, 1) if verifier else 0.0
        # (the verification set's own dense pass, the KL reference there, is one more verification pass)
        verifications = config.verify_top + (1 if verifier is not None and verifier.objective == "kl" else 0)
        reserve = 1 + verifications * per_verification + (num_layers if config.value_check else 0)

        # 2. design: at most 40% of what the search may still spend, and at least what a surrogate needs
        design = sample_masks(num_layers, game.strata, config.resolved_num_masks(num_layers), config.seed)
        wanted = max(int((game.remaining() - reserve) * 0.4), MIN_TRAINING_MASKS - len(game.evaluations))
        design_new = game.new(design)[: max(0, wanted)]
        if design_new:
            game.evaluate(design_new, "design", "Evaluating layer masks")
        game.refit()

        # 3. elimination (SLEB on the utility; screened by the surrogate's marginals when the budget is short)
        self._eliminate(game, singles, loo_loss, reserve)

        # 4. value-guided search rounds
        stopped = self._search(game, reserve)

        # 5. multi-fidelity verification of the best few
        chosen_key, chosen_on = self._verify(game)

        # values around the chosen set, from the surrogate that chose it
        chosen = key_to_mask(chosen_key)
        estimate = values_of(game.surrogate, config, num_layers, target, game.strata, chosen, game.measured())
        values = np.asarray(estimate.values)
        lowest_set = lowest(values.tolist(), game.num_remove)
        lowest_key = mask_to_key(_kept_mask(num_layers, lowest_set))
        if lowest_key not in game.evaluations and game.remaining() >= 1:
            game.evaluate([key_to_mask(lowest_key)], "lowest values", "Measuring the lowest-value set")

        # 6. value check at the chosen set
        value_check = self._value_check(game, chosen, values) if config.value_check else None

        evidence = self._evidence(game, estimate, chosen_key, chosen_on, lowest_key, peers, stopped, value_check)
        return self._result(game, _removed(chosen), estimate, evidence)

    def _eliminate(self, game: _Game, singles, loo_loss, reserve: float) -> None:
        """From the full model, drop one layer at a time, following the best real evaluation; the first step is
        the leave-one-out masks already evaluated. A later step tries every kept layer when the rest of a full
        elimination still fits the budget with room for two search rounds (SLEB's search on the utility); else
        it evaluates a screen of the cheapest removals: the layers with the smallest predicted marginal at the
        current mask and the cheapest of the previous step."""
        config, num_layers, target = game.config, game.num_layers, game.target
        width = min(config.search_candidates, max(3, math.ceil(num_layers / 6)))
        search_room = 2 * config.search_candidates
        order = np.argsort(loo_loss, kind="stable")
        mask = singles[int(order[0])].copy()
        previous = [int(i) for i in order[1:]]
        stale = False  # a full step needs no surrogate: refit only before a screened step and at the end
        while mask.sum() > target:
            room = int(game.remaining() - reserve)
            if room < 1:
                break  # the peers' sets stand in: the budget is spent
            kept = [int(i) for i in np.flatnonzero(mask)]
            rest_of_full = sum(range(target + 1, len(kept) + 1))  # this step and the later ones, every layer
            if room - rest_of_full >= search_room:
                screen, phase, desc = kept, "elimination", "Elimination"
            else:
                phase, desc = "screened elimination", "Screened elimination"
                if stale:
                    game.refit()
                    stale = False
                screen = game.cheapest_flips(mask, kept, previous, width)[:room]
            mask, previous = game.follow_best(mask, screen, phase, f"{desc} ({mask.sum() - 1} kept)")
            stale = True
        if stale:
            game.refit()

    def _candidates(self, game: _Game, values: np.ndarray, incumbent: np.ndarray) -> dict[str, np.ndarray]:
        """Kept sets the values propose (the k lowest; swaps of low-value kept for high-value removed layers)
        and the surrogate's own optima with the incumbent's neighbours (``propose_kept_sets``)."""
        num_layers, target, config = game.num_layers, game.target, game.config
        pool: dict[str, np.ndarray] = {}
        by_value = _kept_mask(num_layers, lowest(values.tolist(), game.num_remove))
        pool[mask_to_key(by_value)] = by_value
        kept, removed = np.flatnonzero(incumbent), np.flatnonzero(~incumbent)
        weak = kept[np.argsort(values[kept], kind="stable")[:4]]
        strong = removed[np.argsort(-values[removed], kind="stable")[:4]]
        for out_layer in weak:
            for in_layer in strong:
                swap = incumbent.copy()
                swap[out_layer], swap[in_layer] = False, True
                pool.setdefault(mask_to_key(swap), swap)
        starts = [by_value] + [key_to_mask(k) for k in game.at_target()[:3]]
        for mask in propose_kept_sets(
            surrogate_predictor(game.surrogate),
            num_layers,
            target,
            starts,
            exclude=set(game.evaluations),
            count=4 * config.search_candidates,
            anchor=incumbent,
        ):
            pool.setdefault(mask_to_key(mask), mask)
        return {k: m for k, m in pool.items() if k not in game.evaluations}

    def _search(self, game: _Game, reserve: float) -> str:
        config = game.config
        stalled = 0
        for round_index in range(config.search_rounds):
            best = game.best()
            incumbent = key_to_mask(best)
            values = np.asarray(
                values_of(
                    game.surrogate, config, game.num_layers, game.target, game.strata, incumbent, game.measured()
                ).values
            )
            pool = self._candidates(game, values, incumbent)
            if not pool:
                return "no unverified candidate left"
            keys = list(pool)
            mean, spread = game.predict(np.stack([pool[k] for k in keys]))
            ucb = mean + UCB_WIDTH * spread
            if ucb.max() <= game.utility_of(best):
                return f"round {round_index + 1}: no candidate's upper bound beats the best verified set"
            room = int(game.remaining() - reserve)
            if room < 1:
                return f"round {round_index + 1}: budget reached"
            take = [keys[i] for i in np.argsort(-ucb, kind="stable")[: min(config.search_candidates, room)]]
            game.evaluate([pool[k] for k in take], "search", f"Verifying kept sets (round {round_index + 1})")
            # trust region: random kept sets within value_radius swaps of the incumbent, so that the surrogate
            # learns the coalitions the local values average over (not ranked: no selection bias)
            room = int(game.remaining() - reserve)
            region = sample_region_masks(
                game.num_layers,
                game.target,
                8 * config.search_candidates,
                center=incumbent,
                radius=max(1, config.value_radius),
                seed=config.seed + round_index,
            ).numpy()
            region = game.new(region)[: min(config.search_candidates // 2, max(room, 0))]
            if region:
                game.evaluate(region, "region", f"Sampling around the best set (round {round_index + 1})")
            game.refit()
            improved = game.loss(game.best()) < game.loss(best)
            stalled = 0 if improved else stalled + 1
            if stalled >= config.search_patience:
                return f"round {round_index + 1}: no better verified set for {stalled} round(s)"
        return f"{config.search_rounds} rounds done"

    def _verify(self, game: _Game) -> tuple[str, str]:
        """The best few verified sets re-scored on the verification set; the best there is chosen."""
        verifier = game.evaluator.verifier
        top = game.at_target()[: game.config.verify_top]
        if verifier is None or game.config.verify_samples == 0 or len(top) < 2:
            return top[0], "calibration"
        scored = verifier.evaluate_all([key_to_mask(k) for k in top], desc="Re-scoring the best sets")
        ratio = verifier.tokens_per_mask / max(game.evaluator.tokens_per_mask, 1)
        game.verification_equivalents += ratio * verifier.num_requested  # the re-scored sets and the KL reference
        game.verifier_loss = {k: game.loss_of(e) for k, e in zip(top, scored)}
        order = {k: i for i, k in enumerate(top)}
        return min(top, key=lambda k: (game.verifier_loss[k], order[k])), "verification"

    def _value_check(self, game: _Game, chosen: np.ndarray, values: np.ndarray) -> dict[str, Any]:
        """Real marginals at the chosen set: remove each kept layer, add back each removed one."""
        num_layers = game.num_layers
        masks = []
        for layer in range(num_layers):
            mask = chosen.copy()
            mask[layer] = not mask[layer]
            masks.append(mask)
        before = len(game.evaluations)
        evaluations = game.evaluate(masks, "value check", "Value check (real marginals)")
        base = game.loss(mask_to_key(chosen))
        real = []
        for layer, evaluation in enumerate(evaluations):
            loss = game.loss_of(evaluation)
            # utility is -loss: a kept layer is worth loss(without it) - loss(S); a removed one loss(S) - loss(with it)
            real.append(loss - base if chosen[layer] else base - loss)
        finite = [i for i, r in enumerate(real) if math.isfinite(r)]
        rho = spearman(np.asarray(values)[finite], np.asarray(real)[finite]) if len(finite) > 2 else float("nan")
        return {
            "spearman": rho,
            "num_evaluations": num_layers,
            "new_evaluations": len(game.evaluations) - before,
            "real_marginals": [r if math.isfinite(r) else None for r in real],
        }

    def _evidence(self, game, estimate, chosen_key, chosen_on, lowest_key, peers, stopped, value_check):
        verifier_loss = game.verifier_loss
        top_sets = [
            VerifiedSet(_removed(key_to_mask(k)), game.loss(k), game.phase_of[k], verifier_loss.get(k))
            for k in game.at_target()[: max(game.config.verify_top, 3)]
        ]
        lowest_set = None
        if lowest_key in game.evaluations:
            lowest_set = VerifiedSet(
                _removed(key_to_mask(lowest_key)),
                game.loss(lowest_key),
                game.phase_of[lowest_key],
                verifier_loss.get(lowest_key),
            )
        for peer in peers.values():
            peer.verifier_loss = verifier_loss.get(mask_to_key(_kept_mask(game.num_layers, peer.removed)))
        verifier = game.evaluator.verifier
        return GameEvidence(
            objective=game.evaluator.objective,
            values_estimator=estimate.estimator,
            values_region=estimate.region,
            coalition_sizes=list(estimate.coalition_sizes or ()),
            chosen_by=game.phase_of.get(chosen_key, "unverified"),
            chosen_on=chosen_on,
            top_sets=top_sets,
            lowest_value_set=lowest_set,
            lowest_value_is_chosen=lowest_key == chosen_key,
            flagged_layers=flagged(np.asarray(estimate.values), np.asarray(estimate.stderr), game.num_remove),
            value_check=value_check,
            spent=dict(game.spent),
            # passes over the verification set: the re-scored sets and its own dense (KL reference) pass
            verification_evaluations=verifier.num_requested if verifier is not None and verifier_loss else 0,
            verification_blocks=game.config.verify_samples if verifier is not None and verifier_loss else 0,
            budget=game.budget,
            stopped=stopped,
            peers=peers,
        )

    # ------------------------------------------------------------------------------------------------ reuse
    def _reuse(self, game: _Game, surrogate: ShapleySurrogate) -> CriterionResult:
        """A saved surrogate at a (possibly) new target: values iterated to a fixed point of "remove the k lowest
        values around the current set", the surrogate's optima, and, with ``reuse_candidates``, a few of them and
        the one-pass peers' sets verified on the model (nothing is evaluated with ``reuse_candidates=0``). When the
        surrogate remembers the verified sets of the run that trained it, the best one is walked to the new size
        one layer at a time on the model (``_walk``) first: the surrogate knows the region around that set best,
        and its nested sets are where a fresh run at the new size tends to land."""
        config, num_layers, target = game.config, game.num_layers, game.target
        game.surrogate = surrogate
        surrogate.eval()
        estimate = region_values(surrogate, num_layers, target, num_samples=config.mc_samples, seed=config.seed)
        current = _kept_mask(num_layers, lowest(np.asarray(estimate.values).tolist(), game.num_remove))
        for _ in range(5):
            estimate = values_of(surrogate, config, num_layers, target, game.strata, current, game.measured())
            following = _kept_mask(num_layers, lowest(np.asarray(estimate.values).tolist(), game.num_remove))
            if (following == current).all():
                break
            current = following
        chosen_key, chosen_on, peers = mask_to_key(current), "surrogate", {}
        if config.reuse_candidates > 0:
            stats = collect_block_statistics(game.evaluator)
            game.extra_passes += 1
            peer_sets = one_pass_peer_sets(stats, game.num_remove)
            game.evaluate([np.ones(num_layers, dtype=bool)], "reuse", "Evaluating the full model")
            for name, removed in peer_sets.items():
                game.evaluate([_kept_mask(num_layers, removed)], f"peer:{name}", f"Verifying the {name} set")
            starts = [current]
            anchor = _anchor(surrogate, target)
            if anchor is not None:  # the nested walk from the source run's best set, verified step by step
                starts.insert(0, self._walk(game, anchor, config.reuse_candidates))
            proposals = starts + propose_kept_sets(
                surrogate_predictor(surrogate), num_layers, target, starts, exclude=set(), count=config.reuse_candidates
            )
            unique = game.new(proposals)[: config.reuse_candidates]
            game.evaluate(unique, "reuse", "Verifying the surrogate's sets")
            peers = {
                name: VerifiedSet(removed, game.loss(mask_to_key(_kept_mask(num_layers, removed))), f"peer:{name}")
                for name, removed in peer_sets.items()
            }
            chosen_key, chosen_on = self._verify(game)
        chosen = key_to_mask(chosen_key)
        estimate = values_of(surrogate, config, num_layers, target, game.strata, chosen, game.measured())
        values = np.asarray(estimate.values)
        lowest_key = mask_to_key(_kept_mask(num_layers, lowest(values.tolist(), game.num_remove)))
        value_check = None
        if config.value_check and config.reuse_candidates > 0:
            value_check = self._value_check(game, chosen, values)
        if game.evaluations:
            evidence = self._evidence(game, estimate, chosen_key, chosen_on, lowest_key, peers, "reuse", value_check)
            evidence.chosen_by = "reuse" if game.phase_of.get(chosen_key) == "reuse" else evidence.chosen_by
        else:
            evidence = GameEvidence(
                objective=game.evaluator.objective,
                values_estimator=estimate.estimator,
                values_region=estimate.region,
                coalition_sizes=list(estimate.coalition_sizes or ()),
                chosen_by="unverified",
                chosen_on="surrogate",
                lowest_value_is_chosen=lowest_key == chosen_key,
                flagged_layers=flagged(values, np.asarray(estimate.stderr), game.num_remove),
                stopped="reuse without verification",
            )
        evidence.reused_surrogate = True
        evidence.reuse_verified = sum(1 for k in game.evaluations if k.count("1") == target)
        return self._result(game, _removed(chosen), estimate, evidence)

    def _walk(self, game: _Game, start: np.ndarray, width: int) -> np.ndarray:
        """From a verified set of another size to the target, one layer at a time: drop a kept layer (or add back a
        removed one), trying the ``width`` flips the surrogate predicts cheapest, mixed with the cheapest of the
        previous step, each verified on the model; the step follows the best real evaluation (SLEB's step,
        screened). Returns the mask it reaches at the target size."""
        mask, previous = np.asarray(start, dtype=bool).copy(), []
        while mask.sum() != game.target:
            shrink = bool(mask.sum() > game.target)
            movable = [int(i) for i in np.flatnonzero(mask if shrink else ~mask)]
            screen = game.cheapest_flips(mask, movable, previous, width)[:width]
            size = int(mask.sum()) + (-1 if shrink else 1)
            mask, previous = game.follow_best(
                mask, screen, "reuse walk", f"Walking to {game.target} kept ({size} kept)"
            )
        return mask

    # ------------------------------------------------------------------------------------------------ result
    def _result(self, game: _Game, removed, estimate: ShapleyEstimate, evidence: GameEvidence) -> CriterionResult:
        record = GameRecord(
            strata=game.strata,
            utility=game.config.utility,
            estimator=estimate.estimator,
            game=evidence,
            values_estimate={k: v for k, v in estimate.to_dict().items() if k not in ("values", "stderr")},
            surrogate=game.surrogate,
            surrogate_fit=game.fit,
        )
        if game.surrogate is not None and game.evaluations and not evidence.reused_surrogate:
            # the surrogate this run trained remembers where it was verified (a reused one is left as it came)
            chosen = mask_to_key(_kept_mask(game.num_layers, removed))
            best = dict.fromkeys(([chosen] if chosen in game.evaluations else []) + game.at_target())
            game.surrogate.remember_kept_sets(list(best)[:REMEMBERED_SETS])
        if game.evaluations:
            keys, utilities = game.utilities()
            record.masks = keys
            record.mean_nll = [game.evaluations[k].mean_nll for k in keys]
            record.utilities = utilities.tolist()
        return CriterionResult(
            self.name,
            removed,
            scores=np.asarray(estimate.values, dtype=np.float64).tolist(),
            stderr=np.asarray(estimate.stderr, dtype=np.float64).tolist(),
            num_model_evaluations=game.extra_passes,
            evidence=record,
        )


@register_criterion
class ShapleyPaperCriterion(ShapleyCriterion):
    """The published configuration, with correct layer skipping and the same mask budget."""

    name = "shapley-paper"
    description = "the paper's configuration (ppl ratio, fixed strata, paper estimator)"

    def configure(self, config: ShapleyPruningConfig, num_layers: int) -> ShapleyPruningConfig:
        return paper_configuration(config, num_layers)
