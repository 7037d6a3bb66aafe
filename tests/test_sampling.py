"""Stratified mask sampling: seeded, distinct, full model first, strata respected and balanced."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from optimum_shapley.sampling import key_to_mask, mask_to_key, sample_masks


def test_full_model_first_distinct_and_stratified():
    masks = sample_masks(30, [18, 21, 24, 27, 29], 201, seed=1)
    assert masks.shape == (201, 30) and masks.dtype == bool
    assert masks[0].all()
    assert len({mask_to_key(m) for m in masks}) == 201
    counts = Counter(masks[1:].sum(axis=1).tolist())
    # 29 kept has only 30 distinct masks: the other 170 are spread evenly over the other strata
    assert counts == {18: 43, 21: 43, 24: 42, 27: 42, 29: 30}
    # strata are interleaved so that an interrupted run has seen every stratum early
    assert len(set(masks[1:21].sum(axis=1).tolist())) >= 4


def test_seeded():
    a = sample_masks(30, [20, 25], 64, seed=7)
    assert np.array_equal(a, sample_masks(30, [20, 25], 64, seed=7))
    assert not np.array_equal(a, sample_masks(30, [20, 25], 64, seed=8))


def test_small_model_returns_every_mask_once():
    masks = sample_masks(6, [2, 3, 4, 5], 500, seed=0)
    assert len(masks) == 1 + sum(math.comb(6, k) for k in (2, 3, 4, 5))
    assert len({mask_to_key(m) for m in masks}) == len(masks)


def test_uniform_within_a_stratum():
    masks = sample_masks(12, [6], 401, seed=0)[1:]
    per_layer = masks.mean(axis=0)
    assert np.allclose(per_layer, 0.5, atol=0.08)


def test_keys_round_trip():
    mask = np.array([True, False, True, True])
    assert mask_to_key(mask) == "1011"
    assert np.array_equal(key_to_mask("1011"), mask)


@pytest.mark.parametrize(("strata", "message"), [([0], "strata"), ([30], "strata"), ([], "strata")])
def test_bad_strata(strata, message):
    with pytest.raises(ValueError, match=message):
        sample_masks(30, strata, 10)


def test_budgets_are_nested_so_a_larger_run_reuses_a_smaller_one():
    small = {mask_to_key(m) for m in sample_masks(30, [18, 21, 24, 27, 29], 64, seed=3)}
    large = {mask_to_key(m) for m in sample_masks(30, [18, 21, 24, 27, 29], 256, seed=3)}
    assert small < large
    tiny = {mask_to_key(m) for m in sample_masks(8, [4, 6], 20, seed=3)}  # enumerated strata too
    assert tiny < {mask_to_key(m) for m in sample_masks(8, [4, 6], 60, seed=3)}
