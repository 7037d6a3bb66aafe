"""Every measurement runs the model in eval mode (no dropout) and hands it back in the mode the caller had."""

from __future__ import annotations

import pytest
import torch
from tiny_models import DEPTH, VOCAB, tiny_model
from torch.utils.data import DataLoader
from transformers import default_data_collator

from optimum_shapley.criteria.hidden_states import collect_block_statistics
from optimum_shapley.data import CalibrationDataset
from optimum_shapley.evaluation import MaskEvaluator
from optimum_shapley.evaluation.perplexity import perplexity_of_windows
from optimum_shapley.modes import eval_mode
from optimum_shapley.throughput import measure_speed


def test_eval_mode_restores_the_callers_mode_even_when_the_block_raises():
    model = tiny_model("llama")
    model.train()
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        assert not model.training and not any(m.training for m in model.modules())
        raise RuntimeError("boom")
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    with eval_mode(model):
        pass
    assert not model.training  # an eval-mode caller stays in eval mode


def _modes_seen(model) -> list[bool]:
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    return seen


@pytest.mark.parametrize("objective", ["nll", "kl"])
@pytest.mark.parametrize("share_prefixes", [False, True])
def test_measurements_run_in_eval_mode_and_leave_a_training_model_training(objective, share_prefixes):
    model = tiny_model("llama")
    model.train()
    seen = _modes_seen(model)
    dataset = CalibrationDataset(torch.randint(3, VOCAB, (4, 12), generator=torch.Generator().manual_seed(0)))
    evaluator = MaskEvaluator(
        model,
        lambda: DataLoader(dataset, batch_size=2, collate_fn=default_data_collator),
        show_progress=False,
        objective=objective,
    )
    evaluator.share_prefixes = share_prefixes
    evaluator.evaluate_all([[0, 1, 2, 3, 5], [0, 1, 2, 4, 5], list(range(DEPTH))])
    collect_block_statistics(evaluator)
    perplexity_of_windows(model, torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1)))
    measure_speed(model, prompt_tokens=4, decode_tokens=2, repeats=1)
    assert seen and not any(seen)  # every forward pass ran in eval mode
    assert model.training
