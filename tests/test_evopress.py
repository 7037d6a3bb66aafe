"""EvoPress (criteria/evopress.py): valid, seeded, within budget, optimal on a known problem, verifier-aware."""

from __future__ import annotations

import json
import math
from itertools import combinations

import pytest
import torch
from tiny_models import VOCAB, tiny_model
from torch.utils.data import DataLoader
from transformers import default_data_collator

from optimum_shapley import ShapleyPruningConfig
from optimum_shapley.criteria import METHODS, select_layers
from optimum_shapley.criteria.evopress import _mutate, default_budget, default_initial, default_offspring
from optimum_shapley.data import CalibrationDataset
from optimum_shapley.encoding import mask_to_key
from optimum_shapley.evaluation import MaskEvaluation, MaskEvaluator

TOKENS = 100


def _synthetic(num_layers: int, loss, objective: str = "nll", verifier=None) -> MaskEvaluator:
    """An evaluator whose mean loss is ``loss(removed_set)``: no model, no forward pass."""

    def run(kept: list[int]) -> MaskEvaluation:
        removed = frozenset(set(range(num_layers)) - set(kept))
        value = loss(removed) * TOKENS
        key = mask_to_key([i in kept for i in range(num_layers)])
        return MaskEvaluation(key, value, TOKENS, kl_sum=value if objective == "kl" else None)

    return MaskEvaluator(
        None, lambda: [], run=run, num_layers=num_layers, show_progress=False, objective=objective, verifier=verifier
    )


def _rugged(num_layers: int):
    """Layer costs plus pair interactions: the best set is not the cheapest layers (greedy fails)."""
    weights = [((7 * i + 3) % num_layers) / num_layers for i in range(num_layers)]

    def loss(removed: frozenset) -> float:
        value = sum(weights[i] for i in removed)
        for i, j in combinations(sorted(removed), 2):
            if j == i + 1:
                value += 0.6  # adjacent removals hurt
            if (i, j) == (1, 6):
                value -= 1.5  # one far pair works well together
        return value

    return loss


def _optimum(num_layers: int, num_remove: int, loss) -> list[int]:
    return sorted(min(combinations(range(num_layers), num_remove), key=lambda s: (loss(frozenset(s)), s)))


def _evaluator(model, ids, objective="kl", batch_size=3, verifier=None):
    dataset = CalibrationDataset(ids)
    return MaskEvaluator(
        model,
        lambda: DataLoader(dataset, batch_size=batch_size, collate_fn=default_data_collator),
        show_progress=False,
        objective=objective,
        verifier=verifier,
    )


def _ids(seed=0, n=4, length=16):
    return torch.randint(3, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def test_registered():
    assert "evopress" in METHODS


def test_defaults_follow_the_documented_formulas():
    assert default_budget(6, 2) == 2 * (6 + 5)
    assert default_budget(30, 8) == 2 * sum(range(23, 31))
    # EvoPress's own scale (32 layers, 12 removed, 160 generations of 32): 32 offspring, 64 initial
    assert default_offspring(160 * 32, 32, 12) == 32
    assert default_initial(160 * 32, 32) == 64
    assert 4 <= default_offspring(default_budget(30, 8), 30, 8) < 32
    assert default_offspring(22, 6, 2) == 5 and default_initial(22, 5) == 2


def test_mutation_is_a_level_switch():
    import random

    rng = random.Random(0)
    parent = "11001111"
    for _ in range(200):
        child = _mutate(rng, parent, 3)
        assert child.count("0") == parent.count("0")
        differing = sum(a != b for a, b in zip(parent, child))
        assert differing in (0, 2, 4, 6)  # at most 3 swaps (a later swap may undo an earlier one)


def test_selects_distinct_layers_and_is_deterministic():
    loss = _rugged(8)
    first = select_layers("evopress", _synthetic(8, loss), 3, seed=4, budget=30)
    again = select_layers("evopress", _synthetic(8, loss), 3, seed=4, budget=30)
    assert len(set(first.removed_layers)) == 3 and all(0 <= i < 8 for i in first.removed_layers)
    assert first.removed_layers == again.removed_layers
    assert first.details == again.details
    other = [select_layers("evopress", _synthetic(8, loss), 3, seed=s, budget=30).details for s in range(4)]
    assert len({json.dumps(d["best_mask_per_generation"]) for d in other}) > 1  # the seed matters
    json.dumps(first.details)  # JSON-serialisable


def test_config_supplies_the_seed_and_the_run_context_is_accepted():
    loss = _rugged(8)
    config = ShapleyPruningConfig(num_layers_to_remove=3, seed=7)
    with_config = select_layers(
        "evopress", _synthetic(8, loss), 3, seed=0, budget=20, config=config, surrogate=None, metadata={}
    )
    plain = select_layers("evopress", _synthetic(8, loss), 3, seed=7, budget=20)
    assert with_config.details == plain.details and with_config.details["seed"] == 7


@pytest.mark.parametrize("budget", [1, 2, 5, 13, 27, 40, 200])
@pytest.mark.parametrize("offspring", [None, 1, 6])
def test_never_exceeds_the_budget(budget, offspring):
    evaluator = _synthetic(8, _rugged(8))
    result = select_layers("evopress", evaluator, 3, seed=1, budget=budget, offspring=offspring)
    distinct = len(set(evaluator.requests))
    assert distinct == result.num_model_evaluations == result.details["evaluations"]
    assert distinct <= budget
    if result.details["stopped"] == "budget":
        assert distinct == budget  # the last generation is cut to what is left
    assert result.details["budget"] == budget


def test_default_budget_is_spent_but_not_exceeded():
    evaluator = _synthetic(10, lambda removed: sum(removed) / 10)
    result = select_layers("evopress", evaluator, 3, seed=0)
    assert result.details["budget"] == default_budget(10, 3) == 2 * (10 + 9 + 8)
    assert result.num_model_evaluations == result.details["budget"]
    assert result.details["stopped"] == "budget"
    assert result.details["generations"] == len(result.details["best_loss_per_generation"]) > 0
    losses = result.details["best_loss_per_generation"]
    assert all(b <= a for a, b in zip(losses, losses[1:]))  # elitism: the best never gets worse


def test_small_space_stops_when_exhausted():
    evaluator = _synthetic(5, lambda removed: sum(removed))
    result = select_layers("evopress", evaluator, 2, seed=0, budget=1000)
    assert result.details["stopped"] == "exhausted"
    assert result.num_model_evaluations <= math.comb(5, 2)
    assert result.removed_layers == [0, 1]


@pytest.mark.parametrize("seed", range(3))
def test_finds_the_optimum_of_a_rugged_problem(seed):
    loss = _rugged(8)
    best = _optimum(8, 3, loss)
    assert best == [1, 3, 6]  # not the three cheapest layers, nor adjacent ones
    cheapest = sorted(sorted(range(8), key=lambda i: ((7 * i + 3) % 8, i))[:3])
    assert cheapest != best
    result = select_layers("evopress", _synthetic(8, loss), 3, seed=seed, budget=45)
    assert result.num_model_evaluations <= 45 < math.comb(8, 3)
    assert result.removed_layers == best
    assert result.details["loss"] == pytest.approx(loss(frozenset(best)))


def test_the_verifier_overrides_the_evaluator_ranking():
    # main loss: removing low indices is cheapest; the verifier prefers the main evaluator's second-best set
    main_loss = lambda removed: sum(removed)  # noqa: E731
    main_best, main_second = [0, 1], [0, 2]
    verifier_loss = lambda removed: 0.0 if sorted(removed) == main_second else 10.0 + sum(removed)  # noqa: E731
    verifier = _synthetic(6, verifier_loss)
    evaluator = _synthetic(6, main_loss, verifier=verifier)
    result = select_layers("evopress", evaluator, 2, seed=0, budget=15)  # all 15 sets: the ranking is exact
    assert result.removed_layers == main_second
    assert result.details["selected_by"] == "verifier"
    verified = result.details["verified"]
    assert [v["mask"] for v in verified] == ["001111", "010111"]
    assert [v["loss"] for v in verified] == [pytest.approx(1.0), pytest.approx(2.0)]
    assert [v["verifier_loss"] for v in verified] == [pytest.approx(11.0), pytest.approx(0.0)]
    assert result.num_verification_evaluations == 2 == len(set(verifier.requests))
    assert result.num_model_evaluations <= 15  # verifier passes are reported, not charged to the main budget
    alone = select_layers("evopress", _synthetic(6, main_loss), 2, seed=0, budget=15)
    assert alone.removed_layers == main_best and alone.details["verified"] == []


def test_kl_objective_end_to_end_on_a_tiny_model(tmp_path):
    from optimum_shapley.evaluation import MaskEvaluationCache

    model = tiny_model("llama")
    evaluator = _evaluator(model, _ids())
    evaluator.cache = MaskEvaluationCache(tmp_path, "fingerprint")
    result = select_layers("evopress", evaluator, 2, seed=0)
    again = select_layers("evopress", _evaluator(model, _ids()), 2, seed=0)
    assert result.removed_layers == again.removed_layers
    assert len(set(result.removed_layers)) == 2
    details = result.details
    assert details["objective"] == "kl" and details["tokens_per_mask"] == 4 * 16
    assert 0 < result.num_model_evaluations <= details["budget"] == default_budget(6, 2)
    assert result.num_model_evaluations == details["evaluations"] + details["reference_passes"]
    assert math.isfinite(details["loss"]) and details["loss"] > 0
    # the chosen set is the best of all it evaluated (no verifier), its loss the KL measured for it
    # (the full model is among the requests: its pass built the KL reference)
    losses = {key: evaluator.loss(evaluator.cache.get(key)) for key in set(evaluator.requests) if key.count("1") == 4}
    chosen = "".join("0" if i in result.removed_layers else "1" for i in range(6))
    assert details["mask"] == chosen and losses[chosen] == pytest.approx(details["loss"]) == min(losses.values())
    json.dumps(details)


def test_tiny_model_with_verifier_and_screening():
    model = tiny_model("llama", num_layers=8)
    verifier = _evaluator(model, _ids(seed=1, n=8))
    evaluator = _evaluator(model, _ids(n=6), batch_size=2, verifier=verifier)  # 3 batches of 2 x 16 tokens
    result = select_layers("evopress", evaluator, 2, seed=0, budget=12, screen_batches=1, offspring=6)
    details = result.details
    assert details["screen_batches"] == 1 and details["screening_evaluations"] > 0
    # screening passes (a third of the tokens each, plus the dense reference) are charged to the budget
    assert details["screening_tokens"] == details["screening_evaluations"] * 32
    cost = details["evaluations"] + details["screening_tokens"] / details["tokens_per_mask"]
    assert details["cost_in_evaluations"] == pytest.approx(cost) and cost <= 12
    # no cache: the dense KL reference pass is the full model's evaluation, a request charged to the budget
    assert details["reference_passes"] == 0 and details["evaluations"] == len(set(evaluator.requests))
    assert "1" * 8 in evaluator.requests
    assert result.num_model_evaluations == details["evaluations"]
    assert len(details["verified"]) == 2 and details["selected_by"] == "verifier"
    chosen = min(details["verified"], key=lambda v: v["verifier_loss"])
    assert result.removed_layers == [i for i, c in enumerate(chosen["mask"]) if c == "0"]
    assert result.num_verification_evaluations == 3  # the verifier's dense (reference) pass and the 2 sets
    screening = details["screening_tokens"]
    assert result.tokens_processed == result.num_model_evaluations * 96 + 3 * 8 * 16 + screening


def test_bad_options():
    evaluator = _synthetic(6, lambda removed: sum(removed))
    for options in ({"budget": 0}, {"offspring": 0}, {"budget": 2.5}, {"max_mutations": True}):
        with pytest.raises(ValueError, match="evopress"):
            select_layers("evopress", evaluator, 2, **options)
    with pytest.raises(ValueError, match="screen_batches"):
        select_layers("evopress", _evaluator(tiny_model("llama"), _ids()), 2, screen_batches=2)


def test_kl_budget_counts_the_reference_pass_as_select_does(tmp_path):
    from optimum_shapley.evaluation import MaskEvaluationCache

    model = tiny_model("llama", num_layers=8)
    options = dict(offspring=3, initial=2)  # the same masks in the same order whatever the budget
    # no cache, or a cache without the full model: the dense reference pass is the full model's evaluation (a
    # request); the cache again with a larger budget: the full model is served from it and the reference is rebuilt
    # by an extra pass (counted)
    for cache, budget, passes in ((None, 10, 0), ("first", 10, 0), ("second", 12, 1)):
        evaluator = _evaluator(model, _ids())
        if cache is not None:
            evaluator.cache = MaskEvaluationCache(tmp_path, "fingerprint")
        result = select_layers("evopress", evaluator, 2, seed=0, budget=budget, **options)
        assert result.details["stopped"] == "budget"
        assert result.details["reference_passes"] == passes
        assert result.num_model_evaluations == budget  # spent exactly, never more
        assert result.details["evaluations"] == budget - passes
