"""Utilities from losses, the crash-safe mask cache, fingerprints, and token-weighted NLL."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

from optimum_shapley.evaluation import (
    MaskEvaluation,
    MaskEvaluationCache,
    evaluate_batches,
    model_fingerprint,
    run_fingerprint,
    utilities_from_nll,
)


def test_utilities():
    nll = [2.0, 2.5, float("inf"), 3.0, float("nan")]
    log_ratio = utilities_from_nll(nll, 2.0, "log_ppl_ratio")
    assert log_ratio.tolist() == [0.0, -0.5, -1.0, -1.0, -1.0]  # non-finite -> worst finite, same position
    ratio = utilities_from_nll(nll, 2.0, "ppl_ratio")
    assert ratio[:2] == pytest.approx([1.0, math.exp(-0.5)]) and ratio[2] == 0.0 and ratio[4] == 0.0
    with pytest.raises(ValueError, match="full model"):
        utilities_from_nll(nll, float("nan"), "ppl_ratio")


def test_cache_round_trip_and_fingerprint_isolation(tmp_path):
    cache = MaskEvaluationCache(tmp_path, "fp-a")
    cache.add(MaskEvaluation("1111", 10.0, 5, 0.1))
    cache.add(MaskEvaluation("1011", float("inf"), 5, 0.1))
    again = MaskEvaluationCache(tmp_path, "fp-a")
    assert len(again) == 2 and again.get("1111").mean_nll == 2.0
    assert math.isinf(again.get("1011").nll_sum) and again.get("1011").perplexity == float("inf")
    assert len(MaskEvaluationCache(tmp_path, "fp-b")) == 0  # another model or data: nothing reused
    for line in (tmp_path / "mask_evaluations.jsonl").read_text().splitlines():
        json.loads(line)  # strict JSON, no Infinity literals


def test_cache_tolerates_a_truncated_last_record(tmp_path):
    cache = MaskEvaluationCache(tmp_path, "fp")
    cache.add(MaskEvaluation("1111", 10.0, 5))
    with open(tmp_path / "mask_evaluations.jsonl", "a") as f:
        f.write('{"fingerprint": "fp", "mask": "10')
    reopened = MaskEvaluationCache(tmp_path, "fp")
    assert len(reopened) == 1 and reopened.skipped_lines == 1
    reopened.add(MaskEvaluation("1011", 12.0, 5))  # starts on a fresh line
    final = MaskEvaluationCache(tmp_path, "fp")
    assert sorted(["1111", "1011"]) == sorted(k for k in ("1111", "1011") if k in final)


def test_fingerprints_tell_models_apart():
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    assert model_fingerprint(a) == model_fingerprint(tiny_model("llama", seed=0))
    assert model_fingerprint(a) != model_fingerprint(b)
    assert run_fingerprint("m", "d") != run_fingerprint("m", "e")


def test_token_weighted_nll_ignores_padding_and_batching():
    model = tiny_model("llama")
    ids = torch.randint(3, 90, (5, 12), generator=torch.Generator().manual_seed(0))
    full = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    total, tokens = evaluate_batches(model, [full])
    split = [{k: v[:2] for k, v in full.items()}, {k: v[2:] for k, v in full.items()}]
    total_split, tokens_split = evaluate_batches(model, split)
    assert tokens == tokens_split == 5 * 11
    assert total_split == pytest.approx(total, rel=1e-6)  # a short last batch is not over-weighted
    with torch.no_grad():
        assert total / tokens == pytest.approx(model(input_ids=ids, labels=ids).loss.item(), rel=1e-5)
    padded = dict(full)
    padded["attention_mask"] = full["attention_mask"].clone()
    padded["attention_mask"][:, -3:] = 0
    padded_total, padded_tokens = evaluate_batches(model, [padded])
    assert padded_tokens == 5 * 8
    with torch.no_grad():  # by hand: right padding does not change the first 9 positions of a causal model
        log_probs = torch.log_softmax(model(input_ids=ids[:, :9]).logits[:, :-1].double(), dim=-1)
    by_hand = -log_probs.gather(-1, ids[:, 1:9, None]).sum().item()
    assert padded_total == pytest.approx(by_hand, rel=1e-5)
    assert np.isfinite(total)
