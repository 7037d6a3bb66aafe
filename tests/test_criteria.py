"""Every layer-selection criterion under one interface: count, validity, determinism, hand-computed values."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from tiny_models import DEPTH, VOCAB, tiny_model
from torch.utils.data import DataLoader
from transformers import default_data_collator

from optimum_shapley import ShapleyPruningConfig
from optimum_shapley.criteria import (
    METHODS,
    BlockEvidence,
    CriterionEvidence,
    EvolutionEvidence,
    GameEvidence,
    GameRecord,
    GreedyEvidence,
    select_layers,
)
from optimum_shapley.criteria.similarity import angular_distances
from optimum_shapley.data import CalibrationDataset
from optimum_shapley.evaluation import MaskEvaluator

SHAPLEY_OPTIONS = dict(num_masks=30, mc_samples=1000, surrogate_epochs=50, num_samples=4, seq_length=16)


def _evaluator(model, ids: torch.Tensor, objective: str = "kl") -> MaskEvaluator:
    dataset = CalibrationDataset(ids)
    return MaskEvaluator(
        model,
        lambda: DataLoader(dataset, batch_size=3, collate_fn=default_data_collator),
        show_progress=False,
        objective=objective,  # what the default utility (kl) needs; the other criteria read the NLL
    )


def _random_ids(seed=0, n=4, length=16):
    return torch.randint(3, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def _options(method, remove, seed):
    if method.startswith("shapley"):
        return {"config": ShapleyPruningConfig(num_layers_to_remove=remove, seed=seed, **SHAPLEY_OPTIONS)}
    return {}


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
@pytest.mark.parametrize("method", METHODS)
def test_every_criterion_is_valid_and_deterministic(model_type, method):
    model = tiny_model(model_type)
    ids = _random_ids()
    objective = "kl" if method in ("shapley", "evopress") else "nll"
    first = select_layers(method, _evaluator(model, ids, objective), 2, seed=5, **_options(method, 2, 5))
    again = select_layers(method, _evaluator(model, ids, objective), 2, seed=5, **_options(method, 2, 5))
    assert len(first.removed_layers) == 2 and len(set(first.removed_layers)) == 2
    assert all(0 <= i < DEPTH for i in first.removed_layers)
    assert first.removed_layers == again.removed_layers
    assert first.scores == again.scores
    assert first.method == method and first.seconds > 0
    if first.scores:
        assert len(first.scores) == DEPTH
    # the model is left as it was
    assert model.config.num_hidden_layers == DEPTH and len(model.model.layers) == DEPTH
    assert all(p.grad is None for p in model.parameters())
    # what it found comes typed, one kind per family of methods, and its record is JSON
    kind = EVIDENCE_KIND.get(method)
    assert (first.evidence is None) if kind is None else isinstance(first.evidence, kind)
    json.dumps(first.details)


EVIDENCE_KIND = {"shapley": GameRecord, "shapley-paper": GameRecord, "evopress": EvolutionEvidence}
EVIDENCE_KIND.update({"sleb": GreedyEvidence, "angular": BlockEvidence})


@pytest.mark.parametrize("method", METHODS)
def test_an_unknown_option_is_an_error_for_every_criterion(method):
    evaluator = _evaluator(tiny_model("llama"), _random_ids(), "kl" if method in ("shapley", "evopress") else "nll")
    with pytest.raises(ValueError, match=rf"{method}: unknown option 'buget' \(its options: "):
        select_layers(method, evaluator, 2, buget=10, **_options(method, 2, 0))
    assert evaluator.requests == []  # refused before any evaluation


def test_a_users_evidence_record_is_its_fields():
    @dataclasses.dataclass
    class Mine(CriterionEvidence):
        order: list

    assert Mine(order=[2, 1]).record() == {"order": [2, 1]} and Mine(order=[]).extra_tokens == 0


EXPECTED_COST = {"block-influence": 1, "angular": 1, "taylor": 1, "ppl": DEPTH, "sleb": DEPTH + (DEPTH - 1)}
EXPECTED_COST.update({"reverse-order": 0, "random": 0})


@pytest.mark.parametrize("method", sorted(EXPECTED_COST))
def test_cost_is_recorded(method):
    result = select_layers(method, _evaluator(tiny_model("llama"), _random_ids(), "nll"), 2, seed=0)
    assert result.num_model_evaluations == EXPECTED_COST[method]


def _search_options():
    # 8 layers: 70 kept sets of the target size, more than the 30 sampled masks, so the search has sets to verify
    return {"config": ShapleyPruningConfig(num_layers_to_remove=2, search_rounds=4, **SHAPLEY_OPTIONS)}


def test_shapley_cost_is_its_masks_plus_the_peers_pass():
    result = select_layers(
        "shapley", _evaluator(tiny_model("llama", num_layers=8), _random_ids()), 2, **_search_options()
    )
    record = result.evidence
    assert isinstance(record, GameRecord) and isinstance(record.game, GameEvidence)
    # every distinct mask it evaluated, plus the one pass that measures angular distance and block influence
    assert result.num_model_evaluations == len(record.masks) + 1 == sum(record.game.spent.values()) + 1
    assert result.num_model_evaluations <= record.game.budget + 1 == 2 * (8 + 7) + 1
    single_removals = {"1" * i + "0" + "1" * (7 - i) for i in range(8)}
    assert single_removals <= set(record.masks)  # the peers' step evaluates every single removal


def test_the_peers_sets_are_verified_first():
    result = select_layers(
        "shapley", _evaluator(tiny_model("llama", num_layers=8), _random_ids()), 2, **_search_options()
    )
    game = result.evidence.game
    assert set(game.peers) == {"angular", "block-influence", "leave-one-out"}
    for peer in game.peers.values():
        key = "".join("0" if i in peer.removed else "1" for i in range(8))
        assert key in result.evidence.masks  # each peer's choice is among the verified sets: never worse
        assert min(s.loss for s in game.top_sets) <= peer.loss


def test_search_removes_the_best_verified_kept_set():
    # no verification set on a plain evaluator: the best calibration loss of the target size is removed
    result = select_layers(
        "shapley", _evaluator(tiny_model("llama", num_layers=8), _random_ids()), 2, **_search_options()
    )
    record = result.evidence
    assert record.game.chosen_on == "calibration"
    at_target = [(u, m) for m, u in zip(record.masks, record.utilities) if m.count("1") == 6]
    best_mask = max(at_target)[1]
    assert result.removed_layers == [i for i, c in enumerate(best_mask) if c == "0"]


def test_without_search_the_lowest_values_go():
    options = {"config": ShapleyPruningConfig(num_layers_to_remove=2, search_rounds=0, **SHAPLEY_OPTIONS)}
    result = select_layers("shapley", _evaluator(tiny_model("llama"), _random_ids()), 2, **options)
    assert result.evidence.game.chosen_by == "lowest values"
    assert result.evidence.game.chosen_on == "surrogate"
    order = sorted(range(DEPTH), key=lambda i: (result.scores[i], i))
    assert result.removed_layers == sorted(order[:2])


def test_paper_configuration():
    result = select_layers(
        "shapley-paper", _evaluator(tiny_model("llama"), _random_ids()), 2, **_options("shapley-paper", 2, 0)
    )
    assert result.evidence.utility == "ppl_ratio" and result.evidence.estimator == "paper"
    assert result.evidence.strata == [1, 4]  # 6 - (2, 5, 8, 11, 14) clipped to [1, 5]


def test_trivial_criteria():
    evaluator = _evaluator(tiny_model("llama"), _random_ids())
    assert select_layers("reverse-order", evaluator, 2).removed_layers == [3, 4]
    picks = {tuple(select_layers("random", evaluator, 2, seed=s).removed_layers) for s in range(10)}
    assert len(picks) > 1


def _identity_except(model, keep_active: int):
    """Zero the output projections of every layer but one: those blocks become exact identities."""
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            if i != keep_active:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
    return model


def test_block_influence_and_angular_against_hand_computation():
    model = _identity_except(tiny_model("llama"), keep_active=2)
    ids = _random_ids()
    evaluator = _evaluator(model, ids)
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states  # [j] = input of layer j (j < 6)
    cos = torch.nn.functional.cosine_similarity(hidden[2].double(), hidden[3].double(), dim=-1)
    expected_bi = 1.0 - float(cos.mean())

    bi = select_layers("block-influence", evaluator, 2)
    assert bi.scores[2] == pytest.approx(expected_bi, rel=1e-5)
    for i in (0, 1, 3, 4, 5):
        assert bi.scores[i] == pytest.approx(0.0, abs=1e-6)
    assert 2 not in bi.removed_layers

    last = torch.stack([hidden[b][:, -1, :] for b in range(5)], dim=1)  # boundaries 0..4 (before the final norm)
    for n in (1, 2):
        computed = angular_distances(last, n)
        for start in range(5 - n):
            c = torch.nn.functional.cosine_similarity(last[:, start].double(), last[:, start + n].double(), dim=-1)
            hand = float((torch.arccos(c.clamp(-1, 1)) / math.pi).mean())
            assert computed[start] == pytest.approx(hand, abs=1e-6)
    angular = select_layers("angular", evaluator, 2)
    distances = angular.details["distances"]
    start = angular.details["block_start"]
    assert angular.removed_layers == [start, start + 1] and 2 not in angular.removed_layers  # an identity block
    assert distances[start] == min(distances) and distances[start] < 1e-3  # arccos near 1 amplifies rounding
    assert distances[1] > 0.01 and distances[2] > 0.01


def test_sleb_removes_an_exact_identity_layer_first():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[3].self_attn.o_proj.weight.zero_()
        model.model.layers[3].mlp.down_proj.weight.zero_()
        prompts = _random_ids(seed=3, n=4, length=4)
        # calibration text the full model predicts best: its own greedy continuation
        ids = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=12, do_sample=False)
    result = select_layers("sleb", _evaluator(model, ids), 2)
    assert result.details["order"][0] == 3
    full = _evaluator(model, ids)(list(range(DEPTH)))
    assert result.details["trajectory"][0]["calibration_ppl"] == pytest.approx(full.perplexity, rel=1e-6)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method"):
        select_layers("magic", _evaluator(tiny_model("llama"), _random_ids()), 2)
    with pytest.raises(ValueError, match="ShapleyPruningConfig.method"):
        ShapleyPruningConfig(num_layers_to_remove=2, method="magic")
