"""``heal_removed_layers(check=...)`` and ``heal_check``: a run's patch is folded only where it lowers a held-out loss.

Why it exists: on Gemma-3-270M a diagonal fit that lowers each run's squared error raised WikiText-2 perplexity from
581.60 to 2176.69 (docs/benchmarks.md). These tests drive the rule with checks whose answers are known, and with a
real KL on tiny models, and read the card, summary and config record of each outcome.
"""

from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_inputs, tiny_model, tiny_tokenizer
from transformers import AutoModelForCausalLM, TrainingArguments

from optimum_shapley import ShapleyLayerPruner, ShapleyPruningConfig, drop_layers
from optimum_shapley.config import DEFAULT_HEAL_RIDGE_CHOICES
from optimum_shapley.healing import HealingError, describe_healing, heal_removed_layers, healing_summary
from optimum_shapley.surgery import LayerMask

REMOVED = [1, 2, 4]  # two runs: 1-2 folded into layers.0.mlp.down_proj, 4 into layers.3.mlp.down_proj
TARGETS = ("model.layers.0.mlp.down_proj.weight", "model.layers.3.mlp.down_proj.weight")


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _state(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _table_check(model, table: dict[tuple[bool, bool], float]):
    """A check whose loss depends only on which run's target weights differ from the dense ones (known answers)."""
    original = {name: model.get_parameter(name).detach().clone() for name in TARGETS}
    calls = []

    def check() -> float:
        state = tuple(not torch.equal(model.get_parameter(name), original[name]) for name in TARGETS)
        calls.append(state)
        return table[state]

    return check, calls


@pytest.mark.parametrize(
    "table, folded, healed",
    [
        # both help alone and together: both folded
        ({(0, 0): 1.0, (1, 0): 0.6, (0, 1): 0.7, (1, 1): 0.5}, [True, True], 0.5),
        # only the second run helps: the first stays unhealed
        ({(0, 0): 1.0, (1, 0): 1.3, (0, 1): 0.7, (1, 1): 0.9}, [False, True], 0.7),
        # both help alone, together worse than the better one: only the better one
        ({(0, 0): 1.0, (1, 0): 0.6, (0, 1): 0.7, (1, 1): 0.8}, [True, False], 0.6),
        # none helps: nothing folded, the weights stay the dense ones
        ({(0, 0): 1.0, (1, 0): 1.3, (0, 1): float("nan"), (1, 1): 0.9}, [False, False], 1.0),
    ],
)
def test_check_folds_the_runs_that_lower_the_loss(table, folded, healed):
    table = {tuple(bool(v) for v in key): value for key, value in table.items()}
    model = tiny_model("llama")
    reference = copy.deepcopy(model)
    check, calls = _table_check(model, table)
    report = heal_removed_layers(model, REMOVED, [tiny_inputs()], ridge=0.01, check=check, check_description="X")
    assert [run["folded"] for run in report.runs] == folded
    assert report.check["unhealed_loss"] == 1.0 and report.check["healed_loss"] == healed
    assert (
        report.check["evaluations"] == len(calls) == 1 + 2 + (1 if all(table[s] < 1 for s in [(1, 0), (0, 1)]) else 0)
    )
    assert [run["check_loss"] for run in report.runs][0] == table[(True, False)]
    assert calls[0] == (False, False)  # the unhealed loss first, from the untouched weights

    # the weights are exactly the unchecked patch's, for the folded runs only
    full = copy.deepcopy(reference)
    heal_removed_layers(full, REMOVED, [tiny_inputs()], ridge=0.01)
    for name, kept in zip(TARGETS, folded):
        expected = full if kept else reference
        assert torch.equal(model.get_parameter(name), expected.get_parameter(name)), name
    others = {n: t for n, t in _state(reference).items() if n not in TARGETS}
    assert all(torch.equal(model.state_dict()[n], t) for n, t in others.items())

    text = describe_healing(report.to_dict())
    summary = healing_summary(report.to_dict())
    assert f"{sum(folded)} of 2 runs folded (checked)" in summary
    if not any(folded):
        assert "but not folded: no run's patch lowered X (1.0000 unhealed" in text
        assert "The kept weights are the original ones." in text and "folded into existing weights" not in text
    else:
        assert "folded into existing weights" in text and f"{sum(folded)} of 2 folded" in text
        assert ("not folded: layers 1-2" in text) == (not folded[0])
        assert ("not folded: layer 4" in text) == (not folded[1])
    json.dumps(report.to_dict())  # NaN became inf: still a number the report can carry


def _held_out_kl(dense, model):
    """A real check: the KL of ``model`` (REMOVED skipped) to ``dense`` on held-out tokens, as the pruner's."""
    held_out = tiny_inputs(seed=11)
    with torch.no_grad():
        reference = F.log_softmax(dense(**held_out).logits, -1)
    kept = [i for i in range(len(dense.model.layers)) if i not in REMOVED]

    def kl() -> float:
        with torch.no_grad(), LayerMask(model, kept):
            logp = F.log_softmax(model(**held_out).logits, -1)
        return float(F.kl_div(logp, reference, log_target=True, reduction="batchmean"))

    return kl


def test_check_with_a_real_kl_keeps_its_promise():
    """With a real held-out KL, the folded patch's loss is what the report says, and never above unhealed."""
    dense = tiny_model("llama")
    model = copy.deepcopy(dense)
    kl = _held_out_kl(dense, model)

    report = heal_removed_layers(model, REMOVED, [tiny_inputs(seed=3)], ridge=0.01, relative=True, check=kl)
    assert report.check["healed_loss"] <= report.check["unhealed_loss"]
    assert kl() == pytest.approx(report.check["healed_loss"], rel=1e-6)
    assert all(run["check_loss"] < report.check["unhealed_loss"] for run in report.runs if run["folded"])
    assert [run["folded"] for run in report.runs] == [  # two runs: the greedy rule, recomputed
        run["check_loss"] < report.check["unhealed_loss"] for run in report.runs
    ] or report.check["evaluations"] == 4


def test_a_check_that_fails_leaves_the_weights():
    model = tiny_model("llama")
    before = _state(model)
    calls = []

    def broken() -> float:
        calls.append(1)
        if len(calls) == 2:  # while the first run's patch is in place
            raise RuntimeError("out of memory")
        return 1.0

    with pytest.raises(RuntimeError, match="out of memory"):
        heal_removed_layers(model, REMOVED, [tiny_inputs()], check=broken)
    assert all(torch.equal(model.state_dict()[n], t) for n, t in before.items())
    with pytest.raises(HealingError, match="check must be a callable"):
        heal_removed_layers(model, REMOVED, [tiny_inputs()], check=0.5)


def _pruner(tmp_path, model, **overrides):
    settings = dict(method="reverse-order", num_layers_to_remove=2, num_samples=4, seq_length=16, seed=3)
    return ShapleyLayerPruner(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", disable_tqdm=True),
        pruning_config=ShapleyPruningConfig(**{**settings, "heal": "linear", **overrides}),
        processing_class=tiny_tokenizer(),
    )


@pytest.mark.parametrize("outcome", ["folded", "not folded"])
def test_pruner_checks_on_its_scorer_and_the_card_says_what_happened(tmp_path, monkeypatch, outcome):
    """The default checks every run on the run's own scorer (its objective on the calibration set for a
    non-verifying method); the weights, config record, card and summary follow the outcome, forced here by the check's answer."""
    import optimum_shapley.healing as healing_module

    real = healing_module.heal_removed_layers
    seen = {}

    def spy(model, removed, batches, **options):
        check = options["check"]
        seen["unhealed"] = check()
        patched = seen["unhealed"] + (1.0 if outcome == "not folded" else -1.0)
        answers = itertools.chain([seen["unhealed"]], itertools.repeat(patched))
        options["check"] = lambda: next(answers)  # the unhealed loss, then the run's patch (each ridge): hurts or helps
        return real(model, removed, batches, **options)

    monkeypatch.setattr(healing_module, "heal_removed_layers", spy)
    dense = tiny_model("llama")
    pruner = _pruner(tmp_path, copy.deepcopy(dense), heal_num_samples=0)
    result = pruner.prune()
    healing = result.healing
    assert pruner.objective == "nll"  # reverse-order scores NLL; the default shapley run checks its KL
    assert healing["check"]["description"] == "the mean NLL on the 4 calibration blocks"
    assert healing["check"]["tokens"] == healing["check"]["evaluations"] * 4 * 16
    inputs = tiny_inputs(seed=5)
    unhealed = _logits(drop_layers(copy.deepcopy(dense), [3, 4]), inputs)
    out = pruner.save_pretrained(tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(_logits(reloaded, inputs), _logits(pruner.model, inputs), rtol=0, atol=1e-6)
    record = reloaded.config.layer_pruning["healing"]
    if outcome == "not folded":
        assert healing["runs"][0]["folded"] is False and record["runs"][0]["folded"] is False
        torch.testing.assert_close(_logits(pruner.model, inputs), unhealed, rtol=0, atol=0)
        assert "No weights were changed" in card and "changed by training-free" not in card
        assert "but not folded" in card and "healing-linear" not in card
        assert "0 of 1 run folded (checked)" in healing_summary(healing)
        return
    assert healing["check"]["unhealed_loss"] == seen["unhealed"] and healing["runs"][0]["folded"] is True
    assert record["runs"][0]["folded"] is True and record["check"]["healed_loss"] == seen["unhealed"] - 1.0
    assert "changed by training-free `linear` healing" in card and "1 of 1 folded" in card
    assert "1 of 1 run folded (checked)" in healing_summary(healing) and "healing-linear" in card
    assert not torch.allclose(_logits(pruner.model, inputs), unhealed)


def test_ridge_choices_pick_each_runs_ridge_by_the_check():
    """Each run takes the ridge whose patch alone scores best; its weights are that ridge's patch, as healing the
    run alone with it on the dense model gives; the card and summary name the ridges."""
    dense = tiny_model("llama")
    model = copy.deepcopy(dense)
    kl = _held_out_kl(dense, model)

    grid = (0.0, 0.01, 1.0, 100.0)
    calibration = [tiny_inputs(seed=3)]
    report = heal_removed_layers(model, REMOVED, calibration, ridge=0.5, relative=True, check=kl, ridge_choices=grid)
    assert report.ridge_choices == list(grid) and report.check["evaluations"] >= 1 + 2 * len(grid)
    for run, layers, target in zip(report.runs, ([1, 2], [4]), TARGETS):
        assert len(run["ridge_losses"]) == len(grid)
        assert run["ridge"] == grid[min(range(len(grid)), key=lambda j: (run["ridge_losses"][j], j))]
        assert run["check_loss"] == min(run["ridge_losses"])
        alone = copy.deepcopy(dense)
        heal_removed_layers(alone, layers, calibration, ridge=run["ridge"], relative=True)
        expected = alone if run["folded"] else dense
        torch.testing.assert_close(model.get_parameter(target), expected.get_parameter(target), rtol=0, atol=0)
    text, summary = describe_healing(report.to_dict()), healing_summary(report.to_dict())
    assert "chosen per run by the check among 0, 0.01, 1, 100" in text
    folded = [run for run in report.runs if run["folded"]]
    for run in folded:
        assert f"(ridge {run['ridge']:g})" in text
    if folded:
        assert "ridge per run " + "/".join(f"{run['ridge']:g}" for run in folded) in summary


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ridge_choices": (0.1, 1.0)}, "needs method='linear' and a check"),
        ({"ridge_choices": (0.1,), "method": "scale", "check": lambda: 1.0}, "needs method='linear'"),
        ({"ridge_choices": (0.1, -1.0), "check": lambda: 1.0}, "finite numbers >= 0"),
        ({"ridge_choices": (float("inf"),), "check": lambda: 1.0}, "finite numbers >= 0"),
    ],
)
def test_bad_ridge_choices_are_refused_before_any_work(kwargs, match):
    model = tiny_model("llama")
    before = _state(model)
    with pytest.raises(HealingError, match=match):
        heal_removed_layers(model, REMOVED, [tiny_inputs()], **kwargs)
    assert all(torch.equal(model.state_dict()[n], t) for n, t in before.items())


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({}, list(DEFAULT_HEAL_RIDGE_CHOICES)),  # the default: each run's ridge chosen by the check
        ({"heal_ridge_choices": [10, 0.1, 0.1]}, [0.1, 10.0]),  # sorted, each once
        ({"heal_ridge_choices": []}, []),  # none: heal_ridge for every run, still checked
        ({"heal_check": False}, []),  # nothing to choose by: heal_ridge for every run
        ({"forced": True}, list(DEFAULT_HEAL_RIDGE_CHOICES)),  # the check's answers forced: ridge 0.1 helps most
    ],
)
def test_pruner_chooses_each_runs_ridge_among_the_configs_choices(tmp_path, monkeypatch, overrides, expected):
    """The pruner passes its ridge choices only where the check can choose; the report, the config record and the
    card say which ridge healed each run, and the weights are that ridge's patch (or the fixed heal_ridge's)."""
    overrides = dict(overrides)
    forced = overrides.pop("forced", False)
    if forced:  # on this random model no patch lowers the NLL: say which one does
        import optimum_shapley.healing as healing_module

        real = healing_module.heal_removed_layers

        def spy(model, removed, batches, **options):
            unhealed = options["check"]()
            losses = [unhealed - d for d in (1.0, 2.0, 3.0, 2.5, 0.5)]  # per ridge, then the folded set's
            answers = itertools.chain([unhealed], losses, itertools.repeat(unhealed - 3.0))
            options["check"] = lambda: next(answers)
            return real(model, removed, batches, **options)

        monkeypatch.setattr(healing_module, "heal_removed_layers", spy)
    dense = tiny_model("llama")
    pruner = _pruner(tmp_path, copy.deepcopy(dense), heal_num_samples=0, heal_ridge=0.5, **overrides)
    healing = pruner.prune().healing
    assert healing["ridge_choices"] == expected
    record = pruner.model.config.layer_pruning["healing"]
    run = healing["runs"][0]
    if expected:
        assert healing["ridge"] is None and record["ridge"] is None  # no single ridge was used
        assert run["ridge"] in expected and len(run["ridge_losses"]) == len(expected)
        assert record["ridge_choices"] == expected and record["runs"][0]["ridge"] == run["ridge"]
        ridge = run["ridge"]
        if forced:
            assert run["folded"] is True and ridge == 0.1
    else:
        assert healing["ridge"] == 0.5 and "ridge_choices" not in record and run.get("ridge", 0.5) == 0.5
        ridge = 0.5
    by_hand = copy.deepcopy(dense)
    if run.get("folded", True):
        batches = [{"input_ids": pruner.calibration_dataset.input_ids}]
        heal_removed_layers(by_hand, [3, 4], batches, ridge=ridge, relative=True, fit="projection")
    drop_layers(by_hand, [3, 4])
    inputs = tiny_inputs(seed=5)
    torch.testing.assert_close(_logits(pruner.model, inputs), _logits(by_hand, inputs), rtol=1e-5, atol=1e-6)
    pruner.save_pretrained(tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    if expected and run.get("folded", True):
        assert "chosen per run by the check among " + ", ".join(f"{r:g}" for r in expected) in card
        assert f"(ridge {ridge:g})" in card
    if not expected:
        assert "chosen per run" not in card
        assert "with ridge 0.5 x the mean eigenvalue" in card or not run.get("folded", True)
