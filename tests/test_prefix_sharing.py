"""Evaluating mask groups from remembered prefix hidden states gives the plain forward's numbers, in fewer layers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from tiny_models import ARCHITECTURES, DEPTH, VOCAB, tiny_model
from torch.utils.data import DataLoader
from transformers import default_data_collator

from optimum_shapley.data import CalibrationDataset
from optimum_shapley.evaluation import MaskEvaluationCache, MaskEvaluator
from optimum_shapley.evaluation.prefix_sharing import PrefixSharingRunner, trie_order
from optimum_shapley.sampling import sample_masks


def _evaluator(model, share: bool, cache=None) -> MaskEvaluator:
    ids = torch.randint(3, VOCAB, (5, 12), generator=torch.Generator().manual_seed(0))
    dataset = CalibrationDataset(ids)
    return MaskEvaluator(
        model,
        lambda: DataLoader(dataset, batch_size=2, collate_fn=default_data_collator),  # 3 batches, the last short
        show_progress=False,
        share_prefixes=share,
        cache=cache,
    )


# masks with long common prefixes, short ones, a single kept layer, and one whose shared prefix is all it keeps
GROUP = [
    [0, 1, 2, 3, 4],
    [0, 1, 2, 3, 5],
    [0, 1, 2, 4, 5],
    [1, 2, 3, 4, 5],
    [0, 1, 2],
    [0, 1],
    [0],
    [5],
    [0, 2, 4],
    [0, 1, 2, 3],
]


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_shared_prefixes_give_the_plain_forward_numbers(model_type):
    model = tiny_model(model_type)
    plain = _evaluator(model, share=False).evaluate_all(GROUP)
    shared = _evaluator(model, share=True).evaluate_all(GROUP)
    assert [e.mask for e in shared] == [e.mask for e in plain]  # input order kept
    for a, b in zip(plain, shared):
        assert b.num_tokens == a.num_tokens
        assert b.nll_sum == pytest.approx(a.nll_sum, rel=1e-6, abs=1e-6), (model_type, a.mask)
    # the model is left exactly as it was: every layer back, no hook left behind
    from optimum_shapley.architectures import find_decoder_layers

    parent, attribute = find_decoder_layers(model)
    blocks = getattr(parent, attribute)
    assert len(blocks) == DEPTH
    assert not any(block._forward_hooks or block._forward_pre_hooks for block in blocks)


def test_the_runner_skips_the_shared_layers():
    model = tiny_model("llama")
    ids = torch.randint(3, VOCAB, (4, 12), generator=torch.Generator().manual_seed(0))
    batches = list(DataLoader(CalibrationDataset(ids), batch_size=2, collate_fn=default_data_collator))
    runner = PrefixSharingRunner(model, batches, DEPTH)
    runner([0, 1, 2, 3, 4])
    assert runner.layer_passes == 5
    runner([0, 1, 2, 3, 5])  # shares layers 0-3: only layer 5 runs
    assert runner.layer_passes == 6
    runner([0, 1, 2, 3])  # everything it keeps is shared: its last layer runs again so the head has an input
    assert runner.layer_passes == 7
    runner([2, 3, 4])  # differs at layer 0: runs in full
    assert runner.layer_passes == 10


def test_trie_order_puts_common_prefixes_together():
    masks = sample_masks(DEPTH, [3, 4], 30, seed=0)
    kept_sets = [np.flatnonzero(m).tolist() for m in masks]
    order = trie_order(kept_sets, DEPTH)
    assert sorted(order) == list(range(len(masks)))
    keys = ["".join("1" if b else "0" for b in masks[i]) for i in order]
    assert keys == sorted(keys, reverse=True)

    # lexicographic order maximises the sum of common prefixes of neighbours over every other order of a few masks
    def common(a, b):
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))

    few = keys[:5]
    best = max(sum(common(p[i], p[i + 1]) for i in range(4)) for p in itertools.permutations(few))
    assert sum(common(few[i], few[i + 1]) for i in range(4)) == best


def test_cached_masks_are_served_and_counted_as_before(tmp_path):
    model = tiny_model("llama")
    cache = MaskEvaluationCache(tmp_path, "fp")
    first = _evaluator(model, share=True, cache=cache)
    first.evaluate_all(GROUP[:4])
    again = _evaluator(model, share=True, cache=MaskEvaluationCache(tmp_path, "fp"))
    results = again.evaluate_all(GROUP[:6])
    assert (again.num_cached, again.num_run) == (4, 2)
    plain = _evaluator(model, share=False).evaluate_all(GROUP[:6])
    assert [r.nll_sum for r in results] == pytest.approx([p.nll_sum for p in plain], rel=1e-6)


def test_a_failing_forward_leaves_the_model_whole():
    model = tiny_model("llama")
    evaluator = _evaluator(model, share=True)
    evaluator.evaluate_all(GROUP[:2])
    with pytest.raises(ValueError):
        evaluator.evaluate_all([[0, 1, 2], [0, 1, 99]])  # an index out of range: refused, nothing left masked
    from optimum_shapley.architectures import find_decoder_layers

    parent, attribute = find_decoder_layers(model)
    assert len(getattr(parent, attribute)) == DEPTH
    assert not any(b._forward_hooks or b._forward_pre_hooks for b in getattr(parent, attribute))


def test_an_interrupted_group_keeps_every_mask_it_finished(tmp_path, monkeypatch):
    model = tiny_model("llama")
    original = PrefixSharingRunner.__call__
    calls = {"n": 0}

    def flaky(self, kept):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, kept)

    monkeypatch.setattr(PrefixSharingRunner, "__call__", flaky)
    with pytest.raises(KeyboardInterrupt):
        _evaluator(model, share=True, cache=MaskEvaluationCache(tmp_path, "fp")).evaluate_all(GROUP)
    assert len(MaskEvaluationCache(tmp_path, "fp")) == 3  # written one by one, as they finished
    monkeypatch.setattr(PrefixSharingRunner, "__call__", original)
    resumed = _evaluator(model, share=True, cache=MaskEvaluationCache(tmp_path, "fp"))
    results = resumed.evaluate_all(GROUP)
    assert (resumed.num_cached, resumed.num_run) == (3, len(GROUP) - 3)
    plain = _evaluator(model, share=False).evaluate_all(GROUP)
    assert [r.nll_sum for r in results] == pytest.approx([p.nll_sum for p in plain], rel=1e-6)


def test_a_mask_that_fails_midway_is_not_used_as_a_prefix(monkeypatch):
    model = tiny_model("llama")
    ids = torch.randint(3, VOCAB, (4, 12), generator=torch.Generator().manual_seed(0))
    batches = list(DataLoader(CalibrationDataset(ids), batch_size=2, collate_fn=default_data_collator))
    runner = PrefixSharingRunner(model, batches, DEPTH)
    runner([0, 1, 2, 3, 4])
    import optimum_shapley.evaluation.prefix_sharing as module

    calls = {"n": 0}
    original = module.token_losses

    def second_batch_fails(model, batch, reference=None):
        calls["n"] += 1
        if calls["n"] == 2:  # after the first batch overwrote the remembered states
            raise RuntimeError("out of memory")
        return original(model, batch, reference)

    monkeypatch.setattr(module, "token_losses", second_batch_fails)
    with pytest.raises(RuntimeError):
        runner([0, 1, 5])
    monkeypatch.setattr(module, "token_losses", original)
    after = runner([0, 1, 2, 3, 5])
    plain = _evaluator(model, share=False)
    plain.batches = lambda: batches
    assert after.nll_sum == pytest.approx(plain.forward([0, 1, 2, 3, 5]).nll_sum, rel=1e-6)
    assert runner.layer_passes == 5 + 5  # nothing was trusted after the failure: the mask ran in full
