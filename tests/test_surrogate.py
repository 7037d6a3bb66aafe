"""ShapleySurrogate: training with a held-out split, its metrics, and save/load round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optimum_shapley import ShapleySurrogate
from optimum_shapley.surrogate import spearman, train_surrogate


def _additive_data(n=160, layers=16, seed=0):
    rng = np.random.default_rng(seed)
    masks = rng.random((n, layers)) < 0.75
    masks[0] = True
    weights = rng.random(layers)
    return masks, -((~masks).astype(float) @ weights)


def test_learns_an_additive_game_and_reports_held_out_fit():
    masks, utilities = _additive_data()
    surrogate, fit = train_surrogate(masks, utilities, utility="log_ppl_ratio", epochs=300, seed=0)
    assert fit.num_train + fit.num_validation == len(masks)
    assert fit.num_train >= 0.8 * len(masks) and fit.num_validation == 32
    assert masks[0].tolist() and "1" * 16 not in fit.validation_masks  # the full model always trains
    assert fit.validation_r2 > 0.9 and fit.validation_spearman > 0.9
    assert len(fit.validation_measured) == len(fit.validation_predicted) == fit.num_validation
    with torch.no_grad():
        predicted = surrogate(torch.from_numpy(masks.astype(np.float32))).numpy()
    assert np.corrcoef(predicted, utilities)[0, 1] > 0.95


def test_paper_sigmoid_head_for_ppl_ratio():
    masks, utilities = _additive_data()
    surrogate, _ = train_surrogate(masks, np.exp(utilities), utility="ppl_ratio", epochs=20)
    assert surrogate.output == "sigmoid" and surrogate.target_mean == 0.0 and surrogate.target_scale == 1.0
    out = surrogate(torch.ones(3, 16))
    assert ((out > 0) & (out < 1)).all()


def test_save_load_round_trip(tmp_path):
    masks, utilities = _additive_data()
    surrogate, _ = train_surrogate(
        masks, utilities, utility="log_ppl_ratio", epochs=10, metadata={"base_model": "org/model", "strata": [10, 12]}
    )
    surrogate.save_pretrained(tmp_path)
    loaded = ShapleySurrogate.from_pretrained(tmp_path, strict=True)
    x = torch.from_numpy(masks[:7].astype(np.float32))
    assert torch.equal(loaded(x), surrogate(x))
    assert loaded.base_model == "org/model" and loaded.strata == [10, 12] and loaded.utility == "log_ppl_ratio"


def test_bad_inputs():
    masks, utilities = _additive_data(n=8)
    with pytest.raises(ValueError, match="too few"):
        train_surrogate(masks, utilities)
    masks, utilities = _additive_data()
    utilities[3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        train_surrogate(masks, utilities)
    with pytest.raises(ValueError, match="takes masks over 16 layers"):
        ShapleySurrogate(16)(torch.ones(2, 15))


def test_spearman():
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)
    assert spearman(np.array([1, 2, 2, 3]), np.array([1, 2, 2, 3])) == pytest.approx(1.0)
    assert np.isnan(spearman(np.array([1, 1, 1]), np.array([1, 2, 3])))
