"""ShapleyLayerPruner end to end on a tiny random llama: results, cache resume, outputs, surrogate reuse."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import DEPTH, tiny_model, tiny_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from optimum_shapley import PruningResult, ShapleyLayerPruner, ShapleyPruningConfig, ShapleySurrogate
from optimum_shapley.data import CalibrationDataError
from optimum_shapley.evaluation import CACHE_FILE_NAME

FAST = dict(num_samples=4, seq_length=16, num_masks=24, mc_samples=2000, surrogate_epochs=60, seed=3)


def _pruner(tmp_path, model=None, surrogate=None, **overrides):
    settings = {**FAST, "num_layers_to_remove": 2, **overrides}
    return ShapleyLayerPruner(
        model=model if model is not None else tiny_model("llama"),
        args=TrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", disable_tqdm=True),
        pruning_config=ShapleyPruningConfig(**settings),
        processing_class=tiny_tokenizer(),
        surrogate=surrogate,
    )


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("prune")
    pruner = _pruner(tmp_path)
    result = pruner.prune()
    out = pruner.save_pretrained(tmp_path / "out")
    return pruner, result, tmp_path, out


def test_result_is_consistent(pruned_run):
    pruner, result, _, _ = pruned_run
    assert isinstance(result, PruningResult)
    assert result.num_layers == DEPTH and result.num_removed == 2
    assert len(result.removed_layers) == 2 and sorted(result.removed_layers + result.kept_layers) == list(range(DEPTH))
    # the removed layers are a verified kept set of the target size: the best of the best few re-scored on the
    # verification blocks (multi-fidelity), and among the best calibration sets
    game = result.game
    assert game["chosen_on"] == "verification"
    rescored = [s for s in game["top_sets"] if s["verifier_loss"] is not None]
    best = min(rescored, key=lambda s: s["verifier_loss"])
    assert result.removed_layers == best["removed"]
    assert len(result.values) == len(result.stderr) == DEPTH
    assert len(result.masks) == len(result.utilities) == len(result.mean_nll)
    assert result.masks[0] == "1" * DEPTH and result.utilities[0] == 0.0  # full model anchors log-ratio utility
    assert len(set(result.masks)) == len(result.masks)
    fit = result.surrogate_fit
    # the surrogate that gave the values saw every mask but the value check's (which must not grade itself)
    assert fit["ensemble_size"] == 5 and fit["num_validation"] >= 2
    assert fit["num_train"] <= len(result.masks) - result.value_check["new_evaluations"]
    assert {"validation_r2", "validation_spearman", "train_r2"} <= fit.keys()
    assert result.calibration_ppl_before > 1 and result.calibration_ppl_after > 1
    # the before/after calibration perplexities are the full model and the chosen kept set: both already evaluated
    # masks, so they cost nothing more and count once
    verification = len(set(pruner.evaluator.verifier.requests))  # the dense pass and the re-scored sets
    assert verification == result.verification_evaluations
    assert result.num_model_evaluations + result.num_cached_evaluations == len(result.masks) + verification
    assert "".join("0" if i in result.removed_layers else "1" for i in range(DEPTH)) in result.masks
    assert pruner.model.config.num_hidden_layers == DEPTH - 2
    assert pruner.model.config.layer_pruning["removed_layers"] == result.removed_layers


def test_saved_folder(pruned_run):
    _, result, _, out = pruned_run
    files = set(os.listdir(out))
    assert {
        "config.json",
        "model.safetensors",
        "README.md",
        "shapley_pruning_config.json",
        "shapley_results.json",
        "trainer_state.json",
    } <= files
    assert {"tokenizer.json", "plots", "surrogate"} <= files
    assert not [f for f in os.listdir(os.path.dirname(out)) if f.startswith(".shapley-staging-")]
    assert set(os.listdir(os.path.join(out, "plots"))) == {"layer_contributions.png", "surrogate_fit.png"}
    assert {"config.json", "model.safetensors", "README.md"} <= set(os.listdir(os.path.join(out, "surrogate")))
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.num_hidden_layers == DEPTH - 2
    AutoTokenizer.from_pretrained(out)
    saved = PruningResult.from_json_file(os.path.join(out, "shapley_results.json"))
    assert saved.removed_layers == result.removed_layers
    assert ShapleyPruningConfig.from_pretrained(out).num_layers_to_remove == 2


def test_model_card_content(pruned_run):
    _, result, _, out = pruned_run
    card = Path(os.path.join(out, "README.md")).read_text(encoding="utf-8")
    assert "optimum-shapley" in card and "layer-pruning" in card
    assert f"**{', '.join(map(str, result.removed_layers))}**" in card
    assert f"R^2 = {result.surrogate_fit['validation_r2']:.3f}" in card
    assert "plots/layer_contributions.png" in card and "plots/surrogate_fit.png" in card
    for layer in range(DEPTH):
        status = "removed" if layer in result.removed_layers else "kept"
        assert f"| {layer} | {result.values[layer]:+.4f} | {result.stderr[layer]:.4f} | {status} |" in card
    assert "not a held-out evaluation" in card


def test_second_run_reuses_cache(pruned_run):
    _, result, tmp_path, _ = pruned_run
    again = _pruner(tmp_path).prune()
    # no evaluation runs; two passes rebuild the dense KL reference (calibration and verification sets)
    assert again.num_model_evaluations == 0 and again.details["reference_passes"] == 2
    assert again.num_cached_evaluations == len(result.masks) + again.verification_evaluations  # each mask once
    assert again.removed_layers == result.removed_layers
    assert again.values == pytest.approx(result.values)


def test_interrupted_run_resumes_without_reevaluating(tmp_path, monkeypatch):
    pruner = _pruner(tmp_path)
    calls = {"n": 0}
    original = ShapleyLayerPruner.evaluate_mask

    def flaky(self, keep):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return original(self, keep)

    monkeypatch.setattr(ShapleyLayerPruner, "evaluate_mask", flaky)
    with pytest.raises(KeyboardInterrupt):
        pruner.prune()
    cache_path = tmp_path / "run" / CACHE_FILE_NAME
    lines = cache_path.read_text().splitlines()
    assert len(lines) == 1 + 7  # the full model (the KL reference pass) and the 7 masks before the interrupt
    with open(cache_path, "a") as f:
        f.write('{"fingerprint": "trunc')  # a record cut off by a crash
    monkeypatch.setattr(ShapleyLayerPruner, "evaluate_mask", original)
    resumed = _pruner(tmp_path).prune()
    kept_mask = "".join("1" if i in resumed.kept_layers else "0" for i in range(DEPTH))
    # every distinct mask is evaluated exactly once over the two runs: only the 8 cached ones are skipped
    # (plus the verification set's passes, which the interrupted run had not reached)
    new_masks = len(set(resumed.masks) | {kept_mask}) - 8
    assert resumed.num_model_evaluations == new_masks + resumed.verification_evaluations
    assert all(json.loads(line)["mask"] for line in cache_path.read_text().splitlines() if line.endswith("}"))


def test_surrogate_reused_at_another_ratio_without_evaluations(pruned_run, tmp_path):
    _, result, _, out = pruned_run
    surrogate = ShapleySurrogate.from_pretrained(os.path.join(out, "surrogate"), strict=True)
    pruner = _pruner(tmp_path, surrogate=surrogate, num_layers_to_remove=3, reuse_candidates=0)
    calls = []
    pruner.evaluate_mask = lambda keep: calls.append(keep)
    again = pruner.prune(evaluate_calibration=False)
    assert calls == [] and again.num_model_evaluations == 0 and again.selection_evaluations == 0
    assert again.num_removed == 3 and again.game["chosen_on"] == "surrogate"
    assert len(again.values) == DEPTH and all(np.isfinite(again.values))
    # the values are a fixed point: the 3 lowest of them are the removed layers
    assert sorted(sorted(range(DEPTH), key=lambda i: (again.values[i], i))[:3]) == again.removed_layers


def test_surrogate_for_a_different_depth_is_refused(tmp_path):
    with pytest.raises(ValueError, match="trained for a model with 8 layers; this model has 6"):
        _pruner(tmp_path, surrogate=ShapleySurrogate(num_layers=8))


def test_non_finite_losses_keep_their_mask_with_the_worst_utility(tmp_path, monkeypatch):
    pruner = _pruner(tmp_path)
    original = ShapleyLayerPruner.evaluate_mask
    broken = {}

    def sometimes_nan(self, keep):
        evaluation = original(self, keep)
        if len(broken) < 3 and evaluation.mask.count("1") < DEPTH:
            broken[evaluation.mask] = True
            return type(evaluation)(evaluation.mask, float("nan"), evaluation.num_tokens, evaluation.seconds)
        return evaluation

    monkeypatch.setattr(ShapleyLayerPruner, "evaluate_mask", sometimes_nan)
    result = pruner.prune()
    finite = [u for m, u in zip(result.masks, result.utilities) if m not in broken]
    for mask in broken:
        i = result.masks.index(mask)
        assert not np.isfinite(result.mean_nll[i])
        assert result.utilities[i] == min(finite)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"num_layers_to_remove": 6}, ValueError, "remove between 1 and 5"),
        ({"num_layers_to_remove": None, "pruning_ratio": 0.99}, ValueError, "remove between 1 and 5"),
        ({"seq_length": 4096}, ValueError, "seq_length=4096 exceeds the model's maximum of 128"),
        ({"strata": [9]}, ValueError, "strata"),
        ({"dataset_name": "missing/file.txt"}, CalibrationDataError, "not found"),
    ],
)
def test_bad_input_fails_before_anything_is_written(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message):
        _pruner(tmp_path, **overrides)
    assert not (tmp_path / "run").exists()


def test_empty_calibration_text(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    with pytest.raises(CalibrationDataError, match="empty"):
        _pruner(tmp_path, dataset_name=str(empty))


def test_prune_twice_is_refused(pruned_run):
    pruner = pruned_run[0]
    with pytest.raises(RuntimeError, match="already ran"):
        pruner.prune()


def test_layer_mask_evaluation_matches_pruned_model_loss(tmp_path):
    pruner = _pruner(tmp_path)
    evaluation = pruner.evaluate_mask([0, 2, 3, 5])
    reference = tiny_model("llama")
    from optimum_shapley import drop_layers

    drop_layers(reference, [1, 4])
    ids = pruner.calibration_dataset.input_ids
    with torch.no_grad():
        loss = reference(input_ids=ids, labels=ids).loss.item()  # mean over all target tokens
    assert evaluation.mean_nll == pytest.approx(loss, rel=1e-5)
    assert evaluation.num_tokens == ids.shape[0] * (ids.shape[1] - 1)


@pytest.mark.parametrize("method", ["block-influence", "angular", "sleb"])
def test_peer_methods_through_the_pruner(tmp_path, method):
    pruner = _pruner(tmp_path, method=method)
    result = pruner.prune()
    assert result.method == method and len(result.removed_layers) == 2
    assert result.selection_evaluations == {"block-influence": 1, "angular": 1, "sleb": DEPTH + DEPTH - 1}[method]
    assert result.selection_seconds > 0 and not result.surrogate_fit and not result.masks
    out = pruner.save_pretrained(tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert f"`{method}` criterion" in card and f"method-{method}" in card
    assert "surrogate" not in os.listdir(out)
    assert ("layer_contributions.png" in os.listdir(os.path.join(out, "plots"))) == (method == "block-influence")


def test_the_pruner_shares_prefixes_unless_told_or_overridden(tmp_path, monkeypatch):
    assert _pruner(tmp_path).mask_evaluator().share_prefixes
    assert not _pruner(tmp_path, share_prefixes=False).mask_evaluator().share_prefixes
    pruner = _pruner(tmp_path)
    pruner.evaluate_mask = lambda keep: None  # a user's own evaluation: every mask must go through it
    assert not pruner.mask_evaluator().share_prefixes

    class Custom(ShapleyLayerPruner):
        def evaluate_mask(self, keep):
            return super().evaluate_mask(keep)

    custom = Custom(
        model=tiny_model("llama"),
        args=TrainingArguments(output_dir=str(tmp_path / "c"), report_to="none", disable_tqdm=True),
        pruning_config=ShapleyPruningConfig(**{**FAST, "num_layers_to_remove": 2}),
        processing_class=tiny_tokenizer(),
    )
    assert not custom.mask_evaluator().share_prefixes
