"""The game that chooses: KL utility, ensemble surrogate, region values, evidence, value check, reuse, budget."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tiny_models import DEPTH, VOCAB, tiny_inputs, tiny_model, tiny_tokenizer
from torch.utils.data import DataLoader
from transformers import TrainingArguments, default_data_collator

from optimum_shapley import ShapleyLayerPruner, ShapleyPruningConfig, ShapleySurrogate
from optimum_shapley.data import CalibrationDataset
from optimum_shapley.evaluation import MaskEvaluationCache, MaskEvaluator
from optimum_shapley.evaluation.losses import measure_name, token_losses
from optimum_shapley.game_values import region_values, sample_region_masks
from optimum_shapley.surrogate import train_surrogate

FAST = dict(num_samples=4, seq_length=16, mc_samples=2000, surrogate_epochs=60, seed=3, verify_samples=8)


def _evaluator(model, tmp_path=None, objective="kl", top_k=8, seed=0):
    ids = torch.randint(3, VOCAB, (4, 12), generator=torch.Generator().manual_seed(seed))
    dataset = CalibrationDataset(ids)
    cache = MaskEvaluationCache(tmp_path, "fp") if tmp_path is not None else None
    return MaskEvaluator(
        model,
        lambda: DataLoader(dataset, batch_size=2, collate_fn=default_data_collator),
        cache=cache,
        show_progress=False,
        objective=objective,
        kl_top_k=top_k,
    )


# ------------------------------------------------------------------------------------------------ KL utility


def test_kl_with_every_token_kept_is_the_exact_kl():
    dense, other = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    batch = tiny_inputs(batch=2, length=10)
    with torch.no_grad():
        _, _, _, reference = token_losses(dense, batch, kl_top_k=VOCAB)
        nll, kl, count, _ = token_losses(other, batch, reference)
        p = torch.log_softmax(dense(**batch).logits.double(), -1)[:, :-1]
        q = torch.log_softmax(other(**batch).logits.double(), -1)[:, :-1]
    exact = float((p.exp() * (p - q)).sum())
    assert kl == pytest.approx(exact, rel=1e-3) and count == 2 * 9  # float32 logits against float64 by hand
    # fewer tokens: the KL of the coarsened distributions, never above the full one
    with torch.no_grad():
        _, _, _, coarse = token_losses(dense, batch, kl_top_k=4)
        _, kl_coarse, _, _ = token_losses(other, batch, coarse)
    assert 0 < kl_coarse <= exact + 1e-9


def test_kl_of_the_dense_model_to_itself_is_zero_and_cached(tmp_path):
    evaluator = _evaluator(tiny_model("llama"), tmp_path)
    full = evaluator(list(range(DEPTH)))
    assert full.kl_sum == pytest.approx(0.0, abs=1e-6) and evaluator.num_run == 1
    masked = evaluator([0, 1, 2, 4, 5])
    assert masked.mean_kl > 0 and evaluator.loss(masked) == masked.mean_kl
    again = _evaluator(tiny_model("llama"), tmp_path)
    assert again.cache.get(masked.mask).kl_sum == pytest.approx(masked.kl_sum)
    assert again([0, 1, 2, 4, 5]).kl_sum == pytest.approx(masked.kl_sum)
    assert again.num_cached == 2  # the full model (read back while the reference was rebuilt) and this mask
    # the reference is rebuilt by one extra pass when the full model comes from the cache, and it is counted
    again([0, 2, 3, 4, 5])
    assert again.reference_passes == 1 and again.num_run == 1


def test_kl_prefix_sharing_gives_the_same_numbers():
    model = tiny_model("qwen2")
    masks = [[0, 1, 2, 3, 5], [0, 1, 2, 4, 5], [0, 1, 3, 4, 5], [0, 2, 3, 4, 5]]
    shared = _evaluator(model).evaluate_all(masks)
    plain = _evaluator(model)
    plain.share_prefixes = False
    alone = plain.evaluate_all(masks)
    assert [e.kl_sum for e in shared] == pytest.approx([e.kl_sum for e in alone], rel=1e-5)
    assert [e.nll_sum for e in shared] == pytest.approx([e.nll_sum for e in alone], rel=1e-6)


def test_measure_names_keep_caches_apart():
    assert measure_name("nll") == "token_nll/v1"
    assert measure_name("kl", 128) != measure_name("kl", 64) != measure_name("nll")
    with pytest.raises(ValueError, match="objective"):
        measure_name("bleu")
    with pytest.raises(ValueError, match="objective"):
        _evaluator(tiny_model("llama"), objective="bleu")


# ------------------------------------------------------------------------------------------------ values


def test_region_masks_stay_in_the_region():
    center = np.array([True] * 6 + [False] * 4)
    masks = sample_region_masks(10, 6, 500, center=center, radius=2, seed=1)
    assert (masks.sum(1) == 6).all()
    swaps = (masks != torch.from_numpy(center)).sum(1) // 2
    assert swaps.max() <= 2 and (swaps == 0).any() and (swaps == 2).any()
    assert torch.equal(masks, sample_region_masks(10, 6, 500, center=center, radius=2, seed=1))
    uniform = sample_region_masks(10, 6, 500, seed=1)
    assert (uniform.sum(1) == 6).all()
    with pytest.raises(ValueError, match="center"):
        sample_region_masks(10, 5, 10, center=center)


class _Additive(torch.nn.Module):
    def __init__(self, weights):
        super().__init__()
        self.weights = torch.tensor(weights, dtype=torch.float32)

    def forward(self, masks):
        return masks.float() @ self.weights


def test_region_values_of_an_additive_game_are_its_weights():
    weights = [0.5, -1.0, 2.0, 0.1, 0.0, 3.0]
    estimate = region_values(_Additive(weights), 6, 3, num_samples=300, center=np.array([1, 1, 1, 0, 0, 0], bool))
    assert estimate.values == pytest.approx(weights, abs=1e-5)
    assert estimate.estimator == "local" and estimate.coalition_sizes == (2, 3)
    assert "within 2 swaps" in estimate.region
    assert np.allclose(estimate.surrogate_stderr, 0.0)  # one function: no surrogate uncertainty claimed


def test_ensemble_spread_enters_the_error_bars(tmp_path):
    rng = np.random.default_rng(0)
    masks = rng.random((60, 8)) < 0.7
    masks[0] = True
    utilities = masks @ rng.normal(size=8) + 0.3 * rng.normal(size=60)
    surrogate, fit = train_surrogate(masks, utilities, utility="log_ppl_ratio", epochs=80, ensemble_size=4)
    assert fit.ensemble_size == 4 and fit.num_validation > 0.2 * 60  # out-of-bag over every member's split
    estimate = region_values(surrogate, 8, 5, num_samples=2000)
    assert (estimate.surrogate_stderr > 0).all()
    assert (estimate.stderr >= estimate.mc_stderr).all()
    with torch.no_grad():
        rows = surrogate.member_predictions(torch.ones(3, 8))
        assert rows.shape == (4, 3) and torch.allclose(surrogate(torch.ones(3, 8)), rows.mean(0))
    surrogate.save_pretrained(tmp_path / "ensemble")
    again = ShapleySurrogate.from_pretrained(tmp_path / "ensemble", strict=True)
    assert again.ensemble_size == 4
    with torch.no_grad():
        assert torch.allclose(again(torch.ones(2, 8)), surrogate(torch.ones(2, 8)))


# ------------------------------------------------------------------------------------------------ a run


def _pruner(tmp_path, model=None, surrogate=None, **overrides):
    settings = {**FAST, "num_layers_to_remove": 2, **overrides}
    return ShapleyLayerPruner(
        model=model if model is not None else tiny_model("llama", num_layers=8),
        args=TrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", disable_tqdm=True),
        pruning_config=ShapleyPruningConfig(**settings),
        processing_class=tiny_tokenizer(),
        surrogate=surrogate,
    )


@pytest.fixture(scope="module")
def game_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("game")
    pruner = _pruner(tmp_path)
    result = pruner.prune()
    return pruner, result, tmp_path


def test_the_run_records_how_it_chose(game_run):
    pruner, result, _ = game_run
    game = result.game
    assert game["objective"] == "kl" and result.utility == "kl"
    assert game["chosen_by"] in {
        "peer:angular",
        "peer:block-influence",
        "peer:leave-one-out",
        "elimination",
        "screened elimination",
        "search",
        "design",
        "lowest values",
    }
    assert game["chosen_on"] == "verification" and game["verification_blocks"] == 8
    chosen = [s for s in game["top_sets"] if s["removed"] == result.removed_layers]
    scored = [s for s in game["top_sets"] if s["verifier_loss"] is not None]
    assert chosen and chosen[0]["verifier_loss"] == min(s["verifier_loss"] for s in scored)
    assert set(game["peers"]) == {"angular", "block-influence", "leave-one-out"}
    # the values are fitted on the real evaluations near the chosen set: from the target's neighbours up to at most
    # the full model (7 other layers)
    assert game["values_estimator"] == "measured" and "real evaluations" in game["values_region"]
    low, high = game["coalition_sizes"]
    assert 0 <= low <= 8 - 2 - 1 and 8 - 2 <= high <= 7


def test_the_cost_is_counted_in_evaluations_and_tokens(game_run):
    pruner, result, _ = game_run
    spent = result.game["spent"]
    assert result.selection_evaluations == sum(spent.values()) + 1  # + the one-pass statistics of the peers
    tokens = pruner.evaluator.tokens_per_mask
    verifier_tokens = pruner.evaluator.verifier.tokens_per_mask
    assert verifier_tokens == 2 * tokens  # 8 verification blocks against 4 calibration blocks
    assert result.tokens_processed == result.selection_evaluations * tokens + result.verification_evaluations * (
        verifier_tokens
    )
    assert result.game["verification_evaluations"] == result.verification_evaluations  # the card's count is the cost's
    # the budget (in calibration-set evaluations) holds everything, the verification set's dense pass included
    assert result.tokens_processed <= result.game["budget"] * tokens
    assert result.selection_evaluations + 2 * result.verification_evaluations <= result.game["budget"]
    assert result.game["budget"] == 2 * sum(8 - t for t in range(2))


def test_the_value_check_measures_every_layer_at_the_chosen_set(game_run):
    pruner, result, _ = game_run
    check = result.value_check
    assert check["num_evaluations"] == 8 and 0 <= check["new_evaluations"] <= 8
    assert -1.0 <= check["spearman"] <= 1.0
    real = result.game["value_check"]["real_marginals"]
    # a kept layer's real marginal is loss(without it) - loss(chosen), measured through the same cache
    evaluator = pruner.evaluator
    kept = result.kept_layers
    base = evaluator.loss(evaluator(kept))
    layer = kept[0]
    without = evaluator.loss(evaluator([k for k in kept if k != layer]))
    assert real[layer] == pytest.approx(without - base)


def test_the_summary_and_card_say_what_happened(game_run, tmp_path):
    pruner, result, _ = game_run
    rows = dict(result.summary_rows())
    assert "value check" in rows and "chosen by" in rows and "evaluations by phase" in rows
    assert f"{result.tokens_processed:,} tokens" in rows["method cost"]
    out = pruner.save_pretrained(tmp_path / "out")
    with open(f"{out}/README.md", encoding="utf-8") as f:
        card = f.read()
    assert "verification blocks among the" in card and "Spearman rank correlation of" in card
    assert "the layers with the lowest contribution were removed" not in card
    with open(f"{out}/shapley_results.json", encoding="utf-8") as f:
        saved = json.load(f)
    assert saved["value_check"]["spearman"] == result.value_check["spearman"]
    assert saved["value_check"]["num_evaluations"] == 8


def test_a_budget_too_small_for_the_search_still_returns_a_verified_set(tmp_path):
    result = _pruner(tmp_path, max_evaluations=14, verify_samples=0, value_check=False).prune(
        evaluate_calibration=False
    )
    assert result.selection_evaluations <= 14 + 1
    assert result.game["chosen_on"] == "calibration"
    assert result.game["chosen_by"] != "unverified"


# ------------------------------------------------------------------------------------------------ reuse


def test_reuse_verifies_a_few_candidates_and_says_so(game_run, tmp_path):
    pruner, result, _ = game_run
    model = tiny_model("llama", num_layers=8)
    again = _pruner(tmp_path, model=model, surrogate=pruner.surrogate, num_layers_to_remove=3, value_check=False)
    reused = again.prune(evaluate_calibration=False)
    game = reused.game
    assert game["reused_surrogate"] and game["reuse_verified"] >= 1
    assert len(reused.removed_layers) == 3 and reused.selection_evaluations >= game["reuse_verified"]


def test_a_trained_surrogate_remembers_its_verified_sets_and_saves_them(game_run, tmp_path):
    pruner, result, _ = game_run
    keys = pruner.surrogate.verified_kept_sets
    chosen = "".join("0" if i in result.removed_layers else "1" for i in range(8))
    verified = {k for k in result.masks if k.count("1") == 6}
    assert keys[0] == chosen and len(keys) == min(3, len(verified)) and set(keys) <= verified
    assert all(k in result.masks for k in keys)  # every one was evaluated on the model
    pruner.surrogate.save_pretrained(tmp_path / "surrogate")
    assert json.loads((tmp_path / "surrogate" / "config.json").read_text())["verified_kept_sets"] == keys
    assert ShapleySurrogate.from_pretrained(tmp_path / "surrogate").verified_kept_sets == keys
    with pytest.raises(ValueError, match="0/1 string over 8 layers"):
        ShapleySurrogate(8, verified_kept_sets=["1101"])


def test_reuse_walks_from_the_remembered_set_to_the_new_size(game_run, tmp_path):
    """At another ratio the reuse starts from the source run's best set and removes one layer at a time: the
    sets it verifies on the way are nested in that set, and the reused surrogate is left as it came."""
    pruner, _, _ = game_run
    remembered = list(pruner.surrogate.verified_kept_sets)
    anchor = np.array([c == "1" for c in remembered[0]])
    again = _pruner(
        tmp_path,
        model=tiny_model("llama", num_layers=8),
        surrogate=pruner.surrogate,
        num_layers_to_remove=4,
        value_check=False,
    )
    reused = again.prune(evaluate_calibration=False)
    assert 4 <= reused.game["spent"]["reuse walk"] <= 6 + 5  # two steps, at most reuse_candidates (8) flips each
    between = [np.array([c == "1" for c in k]) for k in reused.masks if k.count("1") == 5]
    assert between and all((m <= anchor).all() for m in between)  # one layer fewer than the anchor, inside it
    assert pruner.surrogate.verified_kept_sets == remembered


def test_reuse_without_verification_evaluates_nothing_and_the_card_says_unverified(game_run, tmp_path):
    pruner, _, _ = game_run
    again = _pruner(
        tmp_path,
        model=tiny_model("llama", num_layers=8),
        surrogate=pruner.surrogate,
        num_layers_to_remove=3,
        reuse_candidates=0,
    )
    reused = again.prune(evaluate_calibration=False)
    assert reused.selection_evaluations == 0 and reused.tokens_processed == 0
    assert reused.game["chosen_by"] == "unverified" and reused.game["chosen_on"] == "surrogate"
    from optimum_shapley.game_report import game_paragraphs

    text = " ".join(game_paragraphs(reused))
    assert "not evaluated on the model (unverified)" in text


# ------------------------------------------------------------------------------------------------ card wording


def _result_with(game: dict, value_check: dict | None = None):
    from optimum_shapley import PruningResult

    return PruningResult(
        base_model="m",
        method="shapley",
        num_layers=8,
        num_removed=2,
        removed_layers=[3, 4],
        kept_layers=[0, 1, 2, 5, 6, 7],
        values=[0.0] * 8,
        stderr=[0.0] * 8,
        estimator="local",
        utility="kl",
        strata=[4, 5, 6],
        game=game,
        value_check=value_check or {},
    )


BASE_GAME = dict(
    objective="kl",
    values_estimator="local",
    values_region="kept sets of 6 layers within 2 swaps of the best verified set",
    coalition_sizes=[5, 6],
    top_sets=[],
    spent={"peers": 9},
    budget=30,
    stopped="done",
)


@pytest.mark.parametrize(
    "chosen_by, chosen_on, expected",
    [
        ("peer:angular", "verification", "angular distance's contiguous block"),
        ("peer:leave-one-out", "calibration", "lowest calibration loss of all verified sets"),
        ("elimination", "verification", "greedy elimination on the utility"),
        ("screened elimination", "verification", "surrogate-screened elimination"),
        ("search", "calibration", "value-guided search"),
        ("lowest values", "surrogate", "lowest values were removed, without verifying"),
        ("unverified", "surrogate", "not evaluated on the model (unverified)"),
        ("reuse", "verification", "reused surrogate's proposals, verified"),
        ("reuse walk", "verification", "walk from the reused surrogate's best verified set of another size"),
    ],
)
def test_the_card_names_the_phase_that_found_the_set(chosen_by, chosen_on, expected):
    from optimum_shapley.game_report import game_paragraphs

    game = dict(BASE_GAME, chosen_by=chosen_by, chosen_on=chosen_on, verification_blocks=40)
    text = " ".join(game_paragraphs(_result_with(game)))
    assert expected in text
    for other, phrase in [("peer:angular", "angular distance's"), ("search", "value-guided search")]:
        if other != chosen_by:
            assert phrase not in text.split("The best verified sets")[0]


@pytest.mark.parametrize("estimator", ["measured", "local"])
def test_the_card_says_where_the_values_come_from(estimator):
    """Measured values are regression coefficients on real evaluations; surrogate values are mean marginals with
    ensemble error bars: the card and the summary say the one that happened, never the other."""
    from optimum_shapley.game_report import game_paragraphs, game_summary_rows

    region = {
        "measured": "a linear game fitted to the evaluated kept sets within 6 flips of the best verified set",
        "local": BASE_GAME["values_region"],
    }[estimator]
    game = dict(BASE_GAME, values_estimator=estimator, values_region=region, chosen_by="search")
    result = _result_with(game)
    result.surrogate_fit = {"ensemble_size": 3}
    text = " ".join(game_paragraphs(result))
    rows = dict(game_summary_rows(result))
    if estimator == "measured":
        assert "measured on the real model (`measured` estimator)" in text and "leave-one-out residuals" in text
        assert "spread of 3 surrogates" not in text and "where the surrogate was trained" not in text
        assert rows["values fitted on"].startswith("a linear game fitted")
    else:
        assert "mean marginal contribution over" in text and "spread of 3 surrogates" in text
        assert "measured on the real model" not in text and "values average over" in rows


def test_the_card_says_whether_the_lowest_values_are_the_removed_set():
    from optimum_shapley.game_report import game_paragraphs

    same = dict(BASE_GAME, chosen_by="search", chosen_on="calibration", lowest_value_is_chosen=True)
    assert "lowest values are exactly the removed layers" in " ".join(game_paragraphs(_result_with(same)))
    other = dict(same, lowest_value_is_chosen=False, lowest_value_set={"removed": [1, 4], "loss": 0.25})
    text = " ".join(game_paragraphs(_result_with(other)))
    assert "(1, 4) give a calibration KL to the dense model of 0.2500; they were not removed" in text
    assert "exactly the removed" not in text
    checked = " ".join(
        game_paragraphs(_result_with(same, {"spearman": 0.9, "num_evaluations": 8, "new_evaluations": 5}))
    )
    assert "Spearman rank correlation of 0.900" in checked and "8 evaluations, 5 of them new" in checked
    assert "Value check" not in " ".join(game_paragraphs(_result_with(same)))


def test_bad_game_settings_fail_clearly():
    for name, value in [
        ("verify_samples", -1),
        ("verify_top", 0),
        ("kl_top_k", 0),
        ("max_evaluations", 0),
        ("surrogate_ensemble", 0),
        ("utility", "bleu"),
        ("estimator", "exact"),
    ]:
        with pytest.raises(ValueError, match=name):
            ShapleyPruningConfig(num_layers_to_remove=2, **{name: value})


def test_kl_utility_needs_a_kl_evaluator():
    from optimum_shapley.criteria import select_layers

    evaluator = _evaluator(tiny_model("llama"), objective="nll")
    with pytest.raises(ValueError, match="objective='kl'"):
        select_layers("shapley", evaluator, 2, config=ShapleyPruningConfig(num_layers_to_remove=2))
    assert math.isfinite(evaluator.loss(evaluator([0, 1, 2, 3])))
