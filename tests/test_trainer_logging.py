"""The search is visible to Trainer integrations (issue #16): every mask evaluation and every phase goes through
``Trainer.log``, custom ``TrainerCallback``s receive the events, ``state.log_history`` lands in the run folder, and
``report_to="tensorboard"`` writes a real event file that reads back."""

from __future__ import annotations

import glob
import json
import os

import pytest
from tiny_models import tiny_model, tiny_tokenizer
from transformers import TrainerCallback

from optimum_shapley import ShapleyLayerPruner, ShapleyPruningConfig
from optimum_shapley.pruner import TRAINER_STATE_NAME, pruning_arguments

FAST = dict(num_samples=4, seq_length=16, mc_samples=500, surrogate_epochs=40, surrogate_ensemble=2, seed=3)


class Recorder(TrainerCallback):
    """A user's callback: what it was told, in order."""

    def __init__(self):
        self.events: list[str] = []
        self.logs: list[tuple[int, dict]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.events.append("begin")

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.events.append("log")
        self.logs.append((state.global_step, dict(logs or {})))

    def on_train_end(self, args, state, control, **kwargs):
        self.events.append("end")


def _pruner(tmp_path, report_to="none", callbacks=None, **overrides):
    return ShapleyLayerPruner(
        model=tiny_model("llama", num_layers=8),
        args=pruning_arguments(str(tmp_path / "run"), batch_size=4, disable_tqdm=True, report_to=report_to),
        pruning_config=ShapleyPruningConfig(**{**FAST, "num_layers_to_remove": 2, **overrides}),
        processing_class=tiny_tokenizer(),
        callbacks=callbacks,
    )


def test_a_callback_sees_every_evaluation_and_phase(tmp_path):
    recorder = Recorder()
    pruner = _pruner(tmp_path, callbacks=[recorder])
    result = pruner.prune()
    assert recorder.events[0] == "begin" and recorder.events[-1] == "end"
    masks = [logs for _, logs in recorder.logs if "pruning/mask_loss" in logs]
    # one log per distinct calibration-set evaluation (the two report passes at the end are the same two masks)
    assert len(masks) == pruner.evaluator.num_requested
    steps = [step for step, _ in recorder.logs]
    assert steps == sorted(steps) and steps[-1] == pruner.evaluator.num_requested  # step = evaluations so far
    phases = {logs["pruning/phase"] for _, logs in recorder.logs if "pruning/phase" in logs}
    assert set(result.game["spent"]) <= phases and "peers" in phases
    assert any("pruning/best_verified_loss" in logs for _, logs in recorder.logs)
    assert any("pruning/surrogate_validation_r2" in logs for _, logs in recorder.logs)
    verification = [logs for _, logs in recorder.logs if "verification/mask_loss" in logs]
    assert len(verification) == result.verification_evaluations
    final = recorder.logs[-1][1]
    assert final["pruning/removed_layers"] == ", ".join(map(str, result.removed_layers))
    assert final["pruning/selection_evaluations"] == result.selection_evaluations
    assert final["pruning/value_check_spearman"] == pytest.approx(result.value_check["spearman"], nan_ok=True)
    assert pruner.state.log_history[-1]["pruning/num_removed"] == 2


def test_a_peer_criterion_logs_its_evaluations_too(tmp_path):
    recorder = Recorder()
    pruner = _pruner(tmp_path, callbacks=[recorder], method="sleb")
    pruner.prune(evaluate_calibration=False)
    masks = [logs for _, logs in recorder.logs if "pruning/mask_loss" in logs]
    assert len(masks) == pruner.result.selection_evaluations == pruner.evaluator.num_requested


def test_log_history_lands_in_the_run_folder(tmp_path):
    pruner = _pruner(tmp_path, method="ppl")
    pruner.prune()
    out = pruner.save_pretrained(tmp_path / "pruned")
    with open(os.path.join(out, TRAINER_STATE_NAME), encoding="utf-8") as f:
        history = json.load(f)["log_history"]
    assert history == json.loads(json.dumps(pruner.state.log_history))
    assert sum("pruning/mask_loss" in row for row in history) == pruner.evaluator.num_requested


def test_tensorboard_receives_the_curves(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package (test extra) reads the event file back")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pruner = _pruner(tmp_path, report_to="tensorboard", method="sleb")
    result = pruner.prune()
    files = glob.glob(str(tmp_path / "run" / "runs" / "*" / "events.out.tfevents.*"))
    assert len(files) == 1, files
    events = EventAccumulator(os.path.dirname(files[0]))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "train/pruning/mask_loss" in scalars and "train/pruning/num_removed" in scalars
    curve = events.Scalars("train/pruning/mask_loss")
    assert len(curve) == pruner.evaluator.num_requested
    assert [point.step for point in curve] == list(range(1, len(curve) + 1))
    assert events.Scalars("train/pruning/num_removed")[-1].value == result.num_removed
