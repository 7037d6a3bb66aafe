"""Healing-aware selection (``heal_aware=True``): the game's best verified sets are scored as they would be healed,
each patch taken back after its score; the card and summary say which set won and what the game had chosen."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_inputs, tiny_model, tiny_tokenizer
from torch.utils.data import DataLoader
from transformers import TrainingArguments, default_data_collator

import optimum_shapley.healing as healing_module
from optimum_shapley import ShapleyLayerPruner, ShapleyPruningConfig, drop_layers
from optimum_shapley.config import DEFAULT_HEAL_RIDGE_CHOICES
from optimum_shapley.evaluation import MaskEvaluator
from optimum_shapley.game_report import game_paragraphs, game_summary_rows, heal_selection_paragraph
from optimum_shapley.healing import heal_removed_layers, temporarily_healed
from optimum_shapley.pruner import _config_blocks

FAST = dict(num_samples=4, seq_length=16, mc_samples=2000, surrogate_epochs=60, seed=3, verify_samples=8)


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize(
    ("arch", "options"),
    [
        ("llama", {"method": "linear", "ridge": 0.01, "relative": True}),
        ("gpt2", {"method": "scale"}),
        ("gemma3_text", {"method": "linear", "diagonal": True}),
    ],
)
def test_temporarily_healed_heals_inside_and_restores_every_weight(arch, options):
    dense = tiny_model(arch)
    batches = [tiny_inputs(batch=4, length=12, seed=2)]
    model = copy.deepcopy(dense)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = copy.deepcopy(dense)
    heal_removed_layers(expected, [1, 2], batches, **options)
    inputs = tiny_inputs(seed=5)
    with temporarily_healed(model, [1, 2], batches, **options) as report:
        torch.testing.assert_close(_logits(model, inputs), _logits(expected, inputs), rtol=0, atol=0)
        assert [run["removed_layers"] for run in report.runs] == [[1, 2]]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def _pruner(tmp_path, model, **overrides):
    settings = {**FAST, "num_layers_to_remove": 2, "heal": "linear", "heal_num_samples": 6, **overrides}
    return ShapleyLayerPruner(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", disable_tqdm=True),
        pruning_config=ShapleyPruningConfig(**settings),
        processing_class=tiny_tokenizer(),
    )


@pytest.fixture(scope="module", params=[False, True], ids=["unchecked", "checked"])
def heal_aware_run(tmp_path_factory, request):
    tmp_path = tmp_path_factory.mktemp("heal-aware")
    dense = tiny_model("llama")
    pruner = _pruner(tmp_path, copy.deepcopy(dense), heal_aware=True, heal_check=request.param)
    passes = []  # every statistics pass over the healing sample
    collect = healing_module._collect

    def counted(*args, **kwargs):
        passes.append(1)
        return collect(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(healing_module, "_collect", counted)
        result = pruner.prune()
    result.statistics_passes = len(passes)
    return dense, pruner, result, Path(pruner.save_pretrained(tmp_path / "out"))


def test_the_winners_patch_is_folded_as_scored_not_fitted_again(heal_aware_run):
    _, _, result, out = heal_aware_run
    # one statistics pass per candidate, none more for the final healing
    assert result.statistics_passes == len(result.heal_selection["candidates"])
    assert result.healing["from_heal_selection"] is True
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "the patch healing-aware selection fitted and scored for this set, folded as scored" in card


def _healed_by_hand(dense, candidate: dict, batches: list) -> torch.nn.Module:
    """The dense model with the candidate's folded runs healed as its check chose: each run (all of them without the
    check) fitted alone on the dense model with its own ridge (0.01 without ridge choices), its written weights
    copied in. Every run's patch is fitted on the dense stream, so healing them one at a time equals healing them
    together."""
    runs: list[list[int]] = []
    for layer in candidate["removed"]:
        if runs and runs[-1][-1] == layer - 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    folded = candidate.get("folded", [True] * len(runs))
    ridges = candidate.get("ridges", [0.01] * len(runs))
    assert len(folded) == len(runs) == len(ridges)
    healed = copy.deepcopy(dense)
    original = dense.state_dict()
    for run, keep, ridge in zip(runs, folded, ridges):
        if keep:
            alone = copy.deepcopy(dense)
            heal_removed_layers(alone, run, batches, ridge=ridge, relative=True, fit="projection")
            changed = {n: t for n, t in alone.state_dict().items() if not torch.equal(t, original[n])}
            assert changed, f"healing run {run} wrote nothing"
            healed.load_state_dict(changed, strict=False)
    return healed


def test_the_best_healed_set_is_removed_and_healed_as_it_was_scored(heal_aware_run):
    dense, pruner, result, _ = heal_aware_run
    selection = result.heal_selection
    config = pruner.pruning_config
    candidates = selection["candidates"]
    assert len(candidates) >= 2 and selection["scored_on"] == "verification" and selection["num_blocks"] == 8
    assert selection["game_choice"] in [c["removed"] for c in candidates]
    best = min(candidates, key=lambda c: c["healed_loss"])
    assert result.removed_layers == selection["chosen"] == best["removed"]
    assert selection["changed"] == (selection["chosen"] != selection["game_choice"])

    # each healed score is the verification KL of the set healed by hand on the healing sample
    heal_blocks = _config_blocks(pruner.processing_class, config, 6, config.seed)
    verification = pruner.verification_dataset
    for candidate in candidates:
        healed = _healed_by_hand(dense, candidate, [{"input_ids": heal_blocks.input_ids}])
        reference = MaskEvaluator(
            copy.deepcopy(dense),
            lambda: DataLoader(verification, batch_size=8, collate_fn=default_data_collator),
            show_progress=False,
            objective="kl",
        )
        reference.references()
        reference.model = healed
        kept = [i for i in range(6) if i not in candidate["removed"]]
        assert reference.loss(reference.forward(kept)) == pytest.approx(candidate["healed_loss"], rel=1e-5)
        if config.heal_check:  # a checked candidate is scored as the final healing heals it: never above unhealed
            assert candidate["healed_loss"] <= candidate["loss"] + 1e-6
            assert candidate["check_evaluations"] >= 1 + len(candidate["folded"])

    # the model that comes out is the chosen set healed once (with the runs its check folds): no candidate's patch
    # was left behind
    chosen = next(c for c in candidates if c["removed"] == result.removed_layers)
    if config.heal_check:
        assert [run["folded"] for run in result.healing["runs"]] == chosen["folded"]
    if config.heal_check:  # each run's ridge chosen by its check, among the config's default choices
        assert result.healing["ridge_choices"] == list(DEFAULT_HEAL_RIDGE_CHOICES) and "ridges" in chosen
        assert [run["ridge"] for run in result.healing["runs"]] == chosen["ridges"]
    expected = _healed_by_hand(dense, chosen, [{"input_ids": heal_blocks.input_ids}])
    drop_layers(expected, result.removed_layers)
    inputs = tiny_inputs(seed=5)
    torch.testing.assert_close(_logits(pruner.model, inputs), _logits(expected, inputs), rtol=1e-5, atol=1e-6)
    # its cost is in the method's: each candidate's healing pass and healed evaluation
    assert selection["unhealed_evaluations"] == 0  # the candidates were re-scored on the verification blocks
    evaluations = sum(c.get("check_evaluations", 1) for c in candidates)
    assert selection["healed_evaluations"] == evaluations
    assert selection["tokens"] == len(candidates) * 6 * 16 + evaluations * 8 * 16
    assert result.tokens_processed >= selection["tokens"] and "heal_selection" in result.timings


def test_card_and_summary_say_what_won(heal_aware_run):
    _, _, result, out = heal_aware_run
    card = (out / "README.md").read_text(encoding="utf-8")
    selection = result.heal_selection
    assert "Healing-aware selection: the game's" in card
    assert f"{len(selection['candidates'])} best verified sets were each healed" in card
    summary = dict(result.summary_rows())
    assert summary["heal-aware selection"].startswith(f"{len(selection['candidates'])} verified sets healed")


def test_wording_when_healing_changed_the_set_and_when_it_did_not(heal_aware_run):
    _, _, result, _ = heal_aware_run
    candidates = result.heal_selection["candidates"]
    game_choice, other = candidates[0]["removed"], candidates[1]["removed"]
    for chosen in (game_choice, other):
        changed = chosen != game_choice
        variant = dataclasses.replace(
            result,
            removed_layers=chosen,
            heal_selection={**result.heal_selection, "game_choice": game_choice, "chosen": chosen, "changed": changed},
        )
        text = "\n".join(game_paragraphs(variant))
        rows = dict(game_summary_rows(variant) + variant.summary_rows())
        names = ", ".join(map(str, game_choice))
        if changed:
            assert f"The game's own choice ({names}) came from" in text and "The removed set came" not in text
            assert f"instead of the game's choice {names}" in heal_selection_paragraph(variant)
            assert "game's choice chosen by" in rows and "chosen by" not in rows
            assert rows["heal-aware selection"].endswith(f"the game had chosen {names}")
            if variant.value_check:
                assert "at the game's own choice" in text
        else:
            assert "The removed set came from" in text and "the game's own choice stayed best healed" in text
            assert "chosen by" in rows and rows["heal-aware selection"].endswith("the game's choice")


def test_without_heal_aware_nothing_is_scored_healed(tmp_path):
    result = _pruner(tmp_path, tiny_model("llama")).prune(evaluate_calibration=False)
    assert result.heal_selection == {} and "heal-aware selection" not in dict(result.summary_rows())


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"heal": "none"}, "heal_aware: chooses among"),
        ({"method": "sleb"}, "heal_aware: chooses among"),
        ({"heal_aware": "yes"}, "heal_aware: must be True or False"),
    ],
)
def test_heal_aware_needs_the_game_and_a_healing(overrides, match):
    with pytest.raises(ValueError, match=f"ShapleyPruningConfig.{match}"):
        ShapleyPruningConfig(num_layers_to_remove=2, **{"heal": "linear", "heal_aware": True, **overrides})


def test_fold_healing_refuses_a_report_of_another_set_before_any_change():
    from optimum_shapley.healing import HealingError, fold_healing

    model = tiny_model("llama")
    report = heal_removed_layers(copy.deepcopy(model), [3, 4], [tiny_inputs(seed=3)], ridge=0.01)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(HealingError, match="not of"):
        fold_healing(model, [2, 3], report)
    assert all(torch.equal(model.state_dict()[n], t) for n, t in before.items())
    fold_healing(model, [3, 4], report)  # the right set: the same weights as healing it
    healed = copy.deepcopy(tiny_model("llama"))
    heal_removed_layers(healed, [3, 4], [tiny_inputs(seed=3)], ridge=0.01)
    for name, tensor in healed.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)
