"""EvoPress: evolutionary search over layer-drop masks at the target depth (Sieberling et al., 2024).

"EvoPress: Towards Optimal Dynamic Model Compression via Evolutionary Search" (arXiv:2410.14649); what follows is
its depth-pruning search, ``evo_drop_search.py`` with the settings of ``scripts/run_drop_search.sh`` in
IST-DASLab/EvoPress (commit 50888a0), restricted to whole blocks (``--drop_entire_block``):

* **Search points** are sets of exactly ``num_remove`` removed layers; every one evaluated has the target size.
* **Initialisation**: ``initially_generated`` (64) distinct uniformly random sets; the fittest ``population_size``
  (1) form the first population. Here: ``initial`` random sets, seeded.
* **Mutation** (level switch): copy a random parent, then ``min(randint(1, 3), randint(1, 3))`` times (biased to
  one) swap a uniformly random kept layer for a uniformly random removed one (``--max_mutations 3``). Offspring
  equal to a parent or to another offspring are rejected and drawn again, ``offspring`` (32) per generation.
* **Selection in steps**: the offspring are first scored on few tokens (2048) and the best 2 survive; the parents
  join them (elitism) and all are scored on more tokens (32768); the best ``population_size`` become the next
  population (``--survivors_per_selection 2 1 --tokens_per_selection 2048 32768``). Ties go to offspring.
* **Fitness**: the KL divergence of the pruned model's next-token distribution from the dense model's
  (``--fitness_fn kl``), lower is better: here ``evaluator.loss`` (the pruner builds the evaluator with objective
  ``"kl"``; with ``"nll"`` it is the calibration NLL).

What differs, and why:

* **Budget, not generations.** EvoPress runs ``k (n - k) / 1.5`` generations (``n`` layers, ``k`` removed) of 32
  offspring, thousands of evaluations. Methods here are compared at equal cost in evaluations of the calibration
  set, so the search stops when ``budget`` evaluations are spent: distinct masks asked of the evaluator, plus the
  dense pass behind the KL reference where ``select`` counts one (``reference_passes``), plus screening (below).
  Default: twice SLEB's cost at the same depth, ``2 * sum(n - t for t in range(k))``; it never spends more, and
  ``generations`` can cap it as well. The default ``offspring`` keeps EvoPress's ratio of generations to
  offspring, ``k (n - k) / 48``, within the budget: ``sqrt(48 * budget / (k (n - k)))``, between 4 and 32 (32 at
  EvoPress's own budget) and at most a quarter of the budget; ``initial`` is twice that (64 = 2 x 32 in EvoPress),
  at most a tenth of the budget.
* **Whole-block swaps.** With ``--drop_entire_block`` the script draws each flip for attention or MLP at random
  and then copies the attention state to the MLP, so an MLP flip is lost; here every flip swaps a whole block.
* **One fidelity by default.** EvoPress draws a fresh random minibatch for every selection step, so its fitness is
  noisy and a parent is re-scored every generation. Here the evaluator scores every mask on the whole calibration
  set, deterministically and cached: a mask's fitness never changes, so the elitist population always holds the
  best masks seen, and an offspring already evaluated in this run cannot win and is rejected like a duplicate (the
  budget goes to new masks only). The cheap first selection step is available as an option: ``screen_batches``
  first calibration batches score the offspring, the best ``screen_survivors`` (2) go on to the full set. Its
  passes are charged to the budget in full-set equivalents (tokens screened / tokens of the full set) and reported
  in ``details`` (``screening_evaluations``, ``screening_tokens``); the screening set is fixed, not redrawn.
* **Final multi-fidelity selection.** EvoPress re-scores its 2 survivors on 16x more tokens inside each
  generation. Here, when ``evaluator.verifier`` is set (the same model on a larger calibration set), the best
  ``verify_top`` (2) masks of the whole search are re-scored on it once, at the end, and the best on the verifier
  is returned; without a verifier the best on the evaluator is.
* **Several processes**: the search runs in lockstep on all of them like every criterion; the screening option
  is refused there (its uncached passes would see each process's own batches).
* **Termination** also when no new offspring can be drawn within 3 swaps of the population (small models, where
  the search space is soon exhausted), instead of looping forever.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tqdm.auto import tqdm

from ..encoding import key_to_mask, mask_to_key
from ..evaluation import MaskEvaluator
from .base import CriterionEvidence, CriterionResult, LayerCriterion, register_criterion

__all__ = [
    "EvoPress",
    "EvoPressOptions",
    "EvolutionEvidence",
    "default_budget",
    "default_initial",
    "default_offspring",
]

EVOPRESS_OFFSPRING = 32  # --offspring 32
EVOPRESS_GENERATIONS_PER_OFFSPRING = 1.5 * EVOPRESS_OFFSPRING  # generations = k (n - k) / 1.5 for 32 offspring
EVOPRESS_MAX_MUTATIONS = 3  # --max_mutations 3
EVOPRESS_SCREEN_SURVIVORS = 2  # --survivors_per_selection 2 1
EVOPRESS_VERIFY_TOP = 2


def default_budget(num_layers: int, num_remove: int) -> int:
    """Twice SLEB's cost at the same depth: ``2 * sum(n - t for t in range(k))`` distinct evaluations."""
    return 2 * sum(num_layers - t for t in range(num_remove))


def default_offspring(budget: int, num_layers: int, num_remove: int) -> int:
    """Offspring per generation keeping EvoPress's generations-to-offspring ratio ``k (n - k) / 48`` in ``budget``."""
    neighbourhood = num_remove * (num_layers - num_remove)
    offspring = round(math.sqrt(EVOPRESS_GENERATIONS_PER_OFFSPRING * budget / neighbourhood))
    return max(1, min(EVOPRESS_OFFSPRING, max(4, offspring), budget // 4))


def default_initial(budget: int, offspring: int) -> int:
    """Random sets scored first: twice the offspring (EvoPress: 64 for 32), at most a tenth of the budget."""
    return max(1, min(2 * offspring, budget // 10))


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < minimum:
        raise ValueError(f"evopress: {name} must be an integer >= {minimum}, got {value!r}")
    return int(number)


@dataclass(frozen=True)
class EvoPressOptions:
    """EvoPress's own options; ``None`` means the default computed from the model and the budget."""

    budget: int | None = None  # distinct evaluations; default :func:`default_budget` (or the config's max_evaluations)
    offspring: int | None = None  # per generation; default :func:`default_offspring`
    initial: int | None = None  # random sets drawn first; default :func:`default_initial`
    population: int = 1
    max_mutations: int = EVOPRESS_MAX_MUTATIONS
    generations: int | None = None  # no cap by default: the budget ends the search
    verify_top: int = EVOPRESS_VERIFY_TOP  # best masks re-scored on the verifier
    screen_batches: int = 0  # 0: no cheap screening step
    screen_survivors: int = EVOPRESS_SCREEN_SURVIVORS

    def __post_init__(self) -> None:
        for name in ("budget", "offspring", "initial", "generations"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name), minimum=0 if name == "generations" else 1)
        for name in ("population", "max_mutations", "verify_top", "screen_survivors"):
            _positive_int(name, getattr(self, name))
        _positive_int("screen_batches", self.screen_batches, minimum=0)


@dataclass
class EvolutionEvidence(CriterionEvidence):
    """EvoPress: the search's trajectory, its verified finalists, its settings and what it spent."""

    kind: ClassVar[str] = "evolution"
    generations: int
    initial_loss: float | None
    best_loss_per_generation: list[float | None]
    best_mask_per_generation: list[str]
    verified: list[dict[str, Any]]
    selected_by: str  # "verifier" or "evaluator"
    mask: str
    loss: float | None
    budget: int
    evaluations: int
    reference_passes: int
    cost_in_evaluations: float
    stopped: str
    offspring: int
    initial: int
    population: int
    max_mutations: int
    objective: str
    tokens_per_mask: int
    seed: int
    screening: dict[str, int] = field(default_factory=dict)  # screen_batches, screen_survivors, evaluations, tokens

    @property
    def extra_tokens(self) -> int:
        return int(self.screening.get("screening_tokens", 0))

    def record(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record.update(record.pop("screening"))  # the flat keys results and benches read
        return record


class _Search:
    """One run's bookkeeping: what was asked of which evaluator, what it cost, and the losses."""

    def __init__(self, evaluator: MaskEvaluator, budget: int, screen: MaskEvaluator | None, progress):
        self.evaluator = evaluator
        self.screen = screen
        self.progress = progress
        self.loss: dict[str, float] = {}  # main evaluator, in the order asked
        self.screen_loss: dict[str, float] = {}
        # costs in tokens: the budget is in evaluations of the main calibration set
        self.full_tokens = evaluator.tokens_per_mask if screen is not None else 1
        self.screen_tokens = screen.tokens_per_mask if screen is not None else 0
        if screen is not None and not 0 < self.screen_tokens < self.full_tokens:
            raise ValueError(
                f"evopress: screening needs fewer tokens than the calibration set ({self.screen_tokens} of "
                f"{self.full_tokens})"
            )
        self.budget_tokens = budget * self.full_tokens
        self.references_before = evaluator.reference_passes
        # distinct requests since the start: the candidates and, when the KL reference is built here, the full model
        self.requests_before = len(evaluator.requests)
        self.screen_requests_before = len(screen.requests) if screen is not None else 0

    @staticmethod
    def _reference_pending(evaluator: MaskEvaluator | None) -> bool:
        """Whether a KL reference is still to be built: its dense pass may be charged (``reference_passes``, counted
        by ``select`` when the full model's evaluation is cached or there is no cache), so it stays reserved."""
        return evaluator is not None and evaluator.objective == "kl" and getattr(evaluator, "_references", None) is None

    @property
    def reference_passes(self) -> int:
        return self.evaluator.reference_passes - self.references_before

    @property
    def evaluations(self) -> int:
        """Distinct masks asked of the main evaluator (the full model included when its pass built the reference)."""
        return len(set(self.evaluator.requests[self.requests_before :]))

    @property
    def spent_tokens(self) -> int:
        screened = 0
        if self.screen is not None:
            screened = len(set(self.screen.requests[self.screen_requests_before :])) + self.screen.reference_passes
        main = self.evaluations + self.reference_passes
        return main * self.full_tokens + screened * self.screen_tokens

    def seen(self, key: str) -> bool:
        return key in self.loss or key in self.screen_loss

    def affordable(self, wanted: int, survivors: int) -> int:
        """How many new candidates (<= ``wanted``) the remaining budget can still select among."""
        left = self.budget_tokens - self.spent_tokens
        left -= self.full_tokens if self._reference_pending(self.evaluator) else 0
        for count in range(wanted, 0, -1):
            if self.screen is None:
                cost = count
            else:
                passes = count + (1 if self._reference_pending(self.screen) else 0)
                cost = passes * self.screen_tokens + min(survivors, count) * self.full_tokens
            if cost <= left:
                return count
        return 0

    def evaluate(self, keys: list[str], desc: str) -> None:
        new = [key for key in keys if key not in self.loss]
        if not new:
            return
        before = self.spent_tokens
        evaluations = self.evaluator.evaluate_all([key_to_mask(key) for key in new], desc=desc)
        for key, evaluation in zip(new, evaluations):
            self.loss[key] = self.evaluator.loss(evaluation)
        self._tick(before)

    def screen_all(self, keys: list[str]) -> list[float]:
        new = [key for key in keys if key not in self.screen_loss]
        if new:
            before = self.spent_tokens
            evaluations = self.screen.evaluate_all([key_to_mask(key) for key in new], desc="EvoPress screening")
            for key, evaluation in zip(new, evaluations):
                self.screen_loss[key] = self.screen.loss(evaluation)
            self._tick(before)
        return [self.screen_loss[key] for key in keys]

    def _tick(self, before: int) -> None:
        self.progress.update((self.spent_tokens - before) / self.full_tokens)


def _random_set(rng: random.Random, num_layers: int, num_remove: int) -> str:
    removed = set(rng.sample(range(num_layers), num_remove))
    return mask_to_key([i not in removed for i in range(num_layers)])


def _mutate(rng: random.Random, parent: str, max_mutations: int) -> str:
    """EvoPress's level switch, ``min(U{1..m}, U{1..m})`` times: a kept layer is removed, a removed one restored."""
    kept = key_to_mask(parent).tolist()
    for _ in range(min(rng.randint(1, max_mutations), rng.randint(1, max_mutations))):
        drop = rng.choice([i for i, k in enumerate(kept) if k])
        restore = rng.choice([i for i, k in enumerate(kept) if not k])
        kept[drop], kept[restore] = False, True
    return mask_to_key(kept)


@register_criterion
class EvoPress(LayerCriterion):
    """EvoPress: (1 + lambda) evolutionary search over removed-layer sets of the target size, KL fitness.

    Options: :class:`EvoPressOptions` (an unknown one is an error). ``config`` supplies its ``seed`` and, without a
    ``budget`` option, its ``max_evaluations`` as the budget.
    """

    name = "evopress"
    description = "EvoPress evolutionary search over layer-drop masks (KL fitness)"
    options_class = EvoPressOptions

    def _select(
        self, evaluator: MaskEvaluator, num_remove: int, *, seed: int, options: EvoPressOptions, **context: Any
    ) -> CriterionResult:
        num_layers = evaluator.num_layers
        config = context.get("config")
        if config is not None and getattr(config, "seed", None) is not None:
            seed = config.seed
        budget = options.budget
        if budget is None and config is not None and getattr(config, "max_evaluations", None) is not None:
            budget = _positive_int("budget", config.max_evaluations)  # the run's budget, as for the default method
        budget = default_budget(num_layers, num_remove) if budget is None else budget
        offspring = options.offspring
        if offspring is None:
            offspring = default_offspring(budget, num_layers, num_remove)
        initial = default_initial(budget, offspring) if options.initial is None else options.initial
        population_size, max_mutations, generations = options.population, options.max_mutations, options.generations
        verify_top, screen_batches, screen_survivors = (
            options.verify_top,
            options.screen_batches,
            options.screen_survivors,
        )
        total_sets = math.comb(num_layers, num_remove)
        initial = min(initial, total_sets)

        screen = self._screening_evaluator(evaluator, screen_batches) if screen_batches else None
        rng = random.Random(f"evopress/{seed}/{num_layers}/{num_remove}")
        progress = tqdm(total=budget, desc="EvoPress", unit="eval", disable=not evaluator.show_progress)
        search = _Search(evaluator, budget, screen, progress)

        def select(candidates: list[str], parents: list[str], desc: str) -> list[str]:
            """EvoPress's selection: screen (optional), then the survivors and the parents on the full set."""
            survivors = candidates
            if screen is not None:
                losses = search.screen_all(candidates)
                order = sorted(range(len(candidates)), key=lambda i: (losses[i], i))
                survivors = [candidates[i] for i in order[:screen_survivors]]
            search.evaluate(survivors, desc)
            pool = survivors + [p for p in parents if p not in survivors]  # elitism; ties go to offspring
            ranked = sorted(range(len(pool)), key=lambda i: (search.loss[pool[i]], i))
            return [pool[i] for i in ranked[:population_size]]

        try:
            # initialisation: distinct uniformly random sets at the target size
            count = search.affordable(initial, screen_survivors)
            if count == 0:
                raise ValueError(
                    f"evopress: a budget of {budget} cannot pay for one evaluation (and the dense KL reference pass)"
                )
            first: list[str] = []
            while len(first) < count:
                key = _random_set(rng, num_layers, num_remove)
                if key not in first:
                    first.append(key)
            population = select(first, [], "EvoPress initial population")
            initial_loss = _finite(search.loss[population[0]])
            best_per_generation: list[float | None] = []
            best_masks: list[str] = []
            stopped = "generations"
            while generations is None or len(best_per_generation) < generations:
                wanted = search.affordable(offspring, screen_survivors)
                if wanted == 0:
                    stopped = "budget"
                    break
                children = self._offspring(rng, population, wanted, max_mutations, search)
                if not children:
                    stopped = "exhausted"
                    break
                population = select(children, population, f"EvoPress generation {len(best_per_generation) + 1}")
                best_per_generation.append(_finite(search.loss[population[0]]))
                best_masks.append(population[0])
        finally:
            progress.close()

        # the population's best (the best seen: fitness is deterministic, selection elitist), then the next best
        others = sorted((key for key in search.loss if key != population[0]), key=lambda key: search.loss[key])
        finalists = [population[0], *others][:verify_top]
        verifier = getattr(evaluator, "verifier", None)
        verified: list[dict[str, Any]] = []
        chosen = population[0]
        if verifier is not None:  # its passes are counted by ``select`` (num_verification_evaluations)
            checks = verifier.evaluate_all([key_to_mask(key) for key in finalists], desc="EvoPress verification")
            verifier_losses = [verifier.loss(evaluation) for evaluation in checks]
            best = min(range(len(finalists)), key=lambda i: (verifier_losses[i], i))
            chosen = finalists[best]
            verified = [
                {"mask": key, "loss": _finite(search.loss[key]), "verifier_loss": _finite(value)}
                for key, value in zip(finalists, verifier_losses)
            ]
        removed = [i for i, kept in enumerate(key_to_mask(chosen)) if not kept]
        screening: dict[str, int] = {}
        if screen is not None:
            passes = len(set(screen.requests[search.screen_requests_before :])) + screen.reference_passes
            screening = {
                "screen_batches": screen_batches,
                "screen_survivors": screen_survivors,
                "screening_evaluations": passes,
                "screening_tokens": passes * screen.tokens_per_mask,
            }
        evidence = EvolutionEvidence(
            generations=len(best_per_generation),
            initial_loss=initial_loss,
            best_loss_per_generation=best_per_generation,
            best_mask_per_generation=best_masks,
            verified=verified,
            selected_by="verifier" if verifier is not None else "evaluator",
            mask=chosen,
            loss=_finite(search.loss[chosen]),
            budget=budget,
            evaluations=search.evaluations,
            reference_passes=search.reference_passes,
            cost_in_evaluations=search.spent_tokens / search.full_tokens,
            stopped=stopped,
            offspring=offspring,
            initial=count,
            population=population_size,
            max_mutations=max_mutations,
            objective=evaluator.objective,
            tokens_per_mask=evaluator.tokens_per_mask,
            seed=seed,
            screening=screening,
        )
        return CriterionResult(self.name, removed, evidence=evidence)

    @staticmethod
    def _offspring(
        rng: random.Random, population: list[str], wanted: int, max_mutations: int, search: _Search
    ) -> list[str]:
        """Up to ``wanted`` new offspring by level switches, none already in this run (fitness is deterministic)."""
        children: list[str] = []
        attempts = 0
        limit = 200 + 50 * wanted  # a population whose 3-swap neighbourhood is all seen yields none
        while len(children) < wanted and attempts < limit:
            attempts += 1
            child = _mutate(rng, rng.choice(population), max_mutations)
            if child in children or child in population or search.seen(child):
                continue
            children.append(child)
        return children

    @staticmethod
    def _screening_evaluator(evaluator: MaskEvaluator, num_batches: int) -> MaskEvaluator:
        """The same model on the first ``num_batches`` calibration batches, uncached (EvoPress's few-token step)."""
        if getattr(evaluator, "accelerator", None) is not None:
            raise ValueError("evopress: screen_batches is not supported with several processes; leave it at 0")
        total = sum(1 for _ in evaluator.batches())
        if num_batches >= total:
            raise ValueError(
                f"evopress: screen_batches={num_batches} must be fewer than the calibration set's {total} batches"
            )
        source = evaluator.batches
        return MaskEvaluator(
            evaluator.model,
            lambda: itertools.islice(iter(source()), num_batches),
            prepare=evaluator.prepare,
            num_layers=evaluator.num_layers,
            objective=evaluator.objective,
            kl_top_k=evaluator.kl_top_k,
            show_progress=False,
        )
