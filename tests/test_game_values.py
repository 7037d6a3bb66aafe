"""Shapley estimators on games whose answer is known in closed form or by brute-force enumeration."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

from optimum_shapley.game_values import (
    ShapleyEstimate,
    estimate_contributions,
    measured_values,
    paper_contributions,
    paper_contributions_on_masks,
    permutation_shapley,
    sample_paper_masks,
)

# --------------------------------------------------------------------------------------------------- games


def additive_game(weights: np.ndarray):
    w = torch.as_tensor(weights, dtype=torch.float64)
    return lambda x: x.double() @ w


def pairwise_game(weights: np.ndarray, interactions: np.ndarray):
    """f(S) = sum_i w_i x_i + sum_{i<j} a_ij x_i x_j, with ``interactions`` symmetric and zero on the diagonal."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    a = torch.as_tensor(interactions, dtype=torch.float64)

    def f(x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        return x @ w + 0.5 * ((x @ a) * x).sum(dim=1)

    return f


def random_pairwise(num_players: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=num_players)
    a = np.triu(rng.normal(size=(num_players, num_players)), k=1)
    return w, a + a.T


def sqrt_game(num_players: int = 6, seed: int = 3):
    """A concave, non-additive game: f(S) = sqrt(0.5 + sum_{i in S} v_i) with positive v."""
    v = torch.as_tensor(np.random.default_rng(seed).uniform(0.2, 2.0, size=num_players), dtype=torch.float64)
    return lambda x: torch.sqrt(0.5 + x.double() @ v)


def max_game(num_players: int = 6, seed: int = 4):
    """A max-type game: f(S) = max_{i in S} v_i (0 for the empty coalition)."""
    v = torch.as_tensor(np.random.default_rng(seed).uniform(0.0, 1.0, size=num_players), dtype=torch.float64)
    return lambda x: (x.double() * v).max(dim=1).values


def brute_force_shapley(f, num_players: int) -> np.ndarray:
    """Exact Shapley values: sum over coalitions S not holding i of |S|!(n-|S|-1)!/n! (f(S + i) - f(S))."""
    masks = torch.tensor(list(itertools.product([0.0, 1.0], repeat=num_players)), dtype=torch.float32)
    utility = {tuple(int(b) for b in m.tolist()): float(u) for m, u in zip(masks, f(masks))}
    n = num_players
    phi = np.zeros(n)
    for key, value in utility.items():
        size = sum(key)
        for i in range(n):
            if key[i]:
                continue
            with_i = key[:i] + (1,) + key[i + 1 :]
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            phi[i] += weight * (utility[with_i] - value)
    return phi


def full_minus_empty(f, num_players: int) -> float:
    ends = torch.stack([torch.zeros(num_players), torch.ones(num_players)])
    u = f(ends)
    return float(u[1] - u[0])


# --------------------------------------------------------------------------------------------------- additive


def test_additive_game_both_estimators_recover_weights():
    w = np.random.default_rng(0).normal(size=12)
    f = additive_game(w)

    perm = permutation_shapley(f, 12, 200, seed=1)
    np.testing.assert_allclose(perm.values, w, atol=1e-5)
    assert np.all(perm.stderr < 1e-9)

    paper = paper_contributions(f, 12, [3, 6, 11], 500, seed=1)
    np.testing.assert_allclose(paper.values, w, atol=1e-5)
    assert np.all(paper.stderr < 1e-9)


# --------------------------------------------------------------------------------------------------- pairwise


def test_pairwise_game_permutation_matches_closed_form():
    num_players, num_permutations = 10, 4000
    w, a = random_pairwise(num_players, seed=0)
    exact = w + 0.5 * a.sum(axis=1)  # each j precedes i in half the orders
    f = pairwise_game(w, a)

    est = permutation_shapley(f, num_players, num_permutations, seed=0, antithetic=False)
    error = np.abs(est.values - exact)
    assert np.all(error <= 4 * est.stderr + 1e-6), (error, est.stderr)
    # A marginal of i is w_i + sum of a_ij over the j before i: it lies in an interval of width R_i = sum_j |a_ij|,
    # so its standard deviation is at most R_i / 2 (Popoviciu) and four standard errors are 2 R_i / sqrt(n).
    bound = 2 * np.abs(a).sum(axis=1) / math.sqrt(num_permutations)
    assert np.all(error <= bound), (error, bound)
    # For this seed max_i R_i = 12.03, so no estimate may be off by more than 2 * 12.03 / sqrt(4000) = 0.38.
    assert bound.max() < 0.39 and error.max() < 0.39
    assert np.all(est.stderr > 0)


def test_pairwise_game_antithetic_pairs_are_exact():
    """For pairwise games a permutation and its reverse average to the exact Shapley value: zero variance."""
    w, a = random_pairwise(10, seed=1)
    est = permutation_shapley(pairwise_game(w, a), 10, 6, seed=0)
    np.testing.assert_allclose(est.values, w + 0.5 * a.sum(axis=1), atol=1e-9)
    assert np.all(est.stderr < 1e-9)


def test_paper_estimator_on_pairwise_game_with_one_layer_removed():
    """kept_counts=[L-1]: the paper estimator's expectation is w_i + (L-1)/L * sum_{j != i} a_ij.

    Each sampled mask misses exactly one player, uniformly. The contribution of i is w_i plus a_ij for every other j
    in the mask, and j is in the mask unless j is the missing one: probability (L-1)/L (the contributions are taken
    for every player of every mask, not only for players the mask keeps; conditioning on i being kept would give
    (L-2)/(L-1) instead). The test checks the formula against the exact enumeration of the L masks too.
    """
    num_players = 10
    w, a = random_pairwise(num_players, seed=2)
    f = pairwise_game(w, a)
    expected = w + a.sum(axis=1) * (num_players - 1) / num_players

    all_masks = ~torch.eye(num_players, dtype=torch.bool)  # the L masks with one player missing
    enumerated = paper_contributions_on_masks(f, all_masks)
    np.testing.assert_allclose(enumerated.values, expected, atol=1e-9)

    est = paper_contributions(f, num_players, [num_players - 1], 20000, seed=0)
    error = np.abs(est.values - expected)
    assert np.all(error <= 4 * est.stderr + 1e-9), (error, est.stderr)
    assert est.num_samples == 20000


# --------------------------------------------------------------------------------------------------- nonlinear


@pytest.mark.parametrize("game", [sqrt_game, max_game], ids=["sqrt", "max"])
@pytest.mark.parametrize("antithetic", [True, False], ids=["antithetic", "plain"])
def test_permutation_estimator_converges_to_brute_force(game, antithetic):
    f = game()
    exact = brute_force_shapley(f, 6)
    np.testing.assert_allclose(exact.sum(), full_minus_empty(f, 6), atol=1e-9)  # the enumeration is right

    est = permutation_shapley(f, 6, 20000, seed=5, antithetic=antithetic)
    error = np.abs(est.values - exact)
    assert np.all(error <= 4 * est.stderr + 1e-9), (error, est.stderr)
    assert error.max() < 0.01


@pytest.mark.parametrize("antithetic", [True, False], ids=["antithetic", "plain"])
def test_efficiency_holds_for_every_estimate(antithetic):
    f = sqrt_game(num_players=9, seed=7)
    for num_permutations in (1, 2, 7, 300):
        est = permutation_shapley(f, 9, num_permutations, seed=num_permutations, antithetic=antithetic)
        assert est.values.sum() == pytest.approx(full_minus_empty(f, 9), abs=1e-9)


# --------------------------------------------------------------------------------------------------- bookkeeping


def test_same_seed_same_values_different_seed_different_values():
    w, a = random_pairwise(8, seed=3)
    f = pairwise_game(w, a)
    g = sqrt_game(num_players=8, seed=8)
    for estimate in (
        lambda seed: permutation_shapley(g, 8, 300, seed=seed),
        lambda seed: permutation_shapley(f, 8, 301, seed=seed, antithetic=False),
        lambda seed: paper_contributions(f, 8, [4, 6], 300, seed=seed),
    ):
        first, again, other = estimate(0), estimate(0), estimate(1)
        np.testing.assert_array_equal(first.values, again.values)
        np.testing.assert_array_equal(first.stderr, again.stderr)
        assert not np.array_equal(first.values, other.values)


def test_batching_changes_neither_results_nor_row_budget():
    f = sqrt_game(num_players=7, seed=9)
    seen = []

    def recording(x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.float32 and not torch.is_grad_enabled()
        seen.append(x.shape[0])
        return f(x)

    reference = permutation_shapley(f, 7, 101, seed=2)
    assert reference.num_samples == 102  # rounded up to even for antithetic pairs
    assert reference.num_utility_calls == 102 * 8
    chunked = permutation_shapley(recording, 7, 101, seed=2, batch_rows=5)
    assert max(seen) <= 5 and sum(seen) == chunked.num_utility_calls == reference.num_utility_calls
    np.testing.assert_allclose(chunked.values, reference.values, atol=1e-12)
    np.testing.assert_allclose(chunked.stderr, reference.stderr, atol=1e-12)

    seen.clear()
    reference = paper_contributions(f, 7, [2, 5], 50, seed=3)
    assert reference.num_utility_calls == 50 * 8  # f(S) and f(S with i flipped) for each i
    chunked = paper_contributions(recording, 7, [2, 5], 50, seed=3, batch_rows=3)
    assert max(seen) <= 3 and sum(seen) == reference.num_utility_calls
    np.testing.assert_allclose(chunked.values, reference.values, atol=1e-12)


def test_paper_masks_follow_the_kept_counts():
    masks = sample_paper_masks(12, [3, 9], 4000, seed=0)
    assert masks.shape == (4000, 12) and masks.dtype == torch.bool
    counts = masks.sum(dim=1)
    assert set(counts.tolist()) == {3, 9}
    assert abs((counts == 3).float().mean().item() - 0.5) < 0.05
    # uniform subsets: every player equally often kept within a count
    per_player = masks[counts == 3].float().mean(dim=0)
    assert torch.all((per_player - 0.25).abs() < 0.05)


def test_paper_estimator_matches_a_row_by_row_loop():
    f = sqrt_game(num_players=6, seed=10)
    masks = sample_paper_masks(6, [2, 4], 40, seed=1)
    loop = np.zeros((40, 6))
    for s, mask in enumerate(masks.float()):
        for i in range(6):
            on, off = mask.clone(), mask.clone()
            on[i], off[i] = 1.0, 0.0
            loop[s, i] = float(f(on.unsqueeze(0))[0] - f(off.unsqueeze(0))[0])
    est = paper_contributions_on_masks(f, masks)
    np.testing.assert_allclose(est.values, loop.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(est.stderr, loop.std(axis=0, ddof=1) / math.sqrt(40), atol=1e-12)


def test_estimate_contributions_dispatches_and_serialises():
    w = np.random.default_rng(11).normal(size=5)
    f = additive_game(w)
    perm = estimate_contributions(f, 5, num_samples=10)
    paper = estimate_contributions(f, 5, estimator="paper", num_samples=10, kept_counts=[2, 3])
    assert isinstance(perm, ShapleyEstimate) and perm.estimator == "permutation"
    assert paper.estimator == "paper" and paper.num_samples == 10
    for est in (perm, paper):
        np.testing.assert_allclose(est.values, w, atol=1e-9)
        assert est.values.dtype == np.float64 and est.stderr.dtype == np.float64
        data = json.loads(json.dumps(est.to_dict()))
        assert data["values"] == pytest.approx(list(est.values))
        assert data["num_utility_calls"] == est.num_utility_calls and data["seconds"] >= 0
    # one plain permutation has no spread to estimate: the standard error is unknown, serialised as null
    single = permutation_shapley(f, 5, 1, antithetic=False)
    assert np.all(np.isnan(single.stderr)) and json.loads(json.dumps(single.to_dict()))["stderr"] == [None] * 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"estimator": "kernel"}, r"unknown estimator 'kernel'.*'permutation', 'paper'"),
        ({"estimator": "paper"}, r"'paper' estimator needs kept_counts"),
        ({"estimator": "paper", "kept_counts": []}, r"kept_counts must be a non-empty"),
        ({"estimator": "paper", "kept_counts": [2, 9]}, r"kept_counts \[9\] are outside \[0, 4\]"),
        ({"num_samples": 0}, r"num_samples must be a positive integer, got 0"),
        ({"estimator": "paper", "kept_counts": [2], "num_samples": -3}, r"num_samples must be a positive integer"),
    ],
)
def test_bad_input_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        estimate_contributions(additive_game(np.ones(4)), 4, **kwargs)


def test_bad_player_count_and_bad_utility_shape():
    with pytest.raises(ValueError, match=r"num_players must be a positive integer, got 0"):
        estimate_contributions(lambda x: x.sum(dim=1), 0)
    with pytest.raises(ValueError, match=r"num_permutations must be a positive integer"):
        permutation_shapley(lambda x: x.sum(dim=1), 3, 0)
    with pytest.raises(ValueError, match=r"utility_fn must return shape \(4,\)"):
        permutation_shapley(lambda x: x, 3, 1, antithetic=False)


# --------------------------------------------------------------------------------------------------- nn.Module


class Surrogate(torch.nn.Module):
    def __init__(self, num_layers: int):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(num_layers, 2 * num_layers), torch.nn.CELU(), torch.nn.Linear(2 * num_layers, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def test_nn_module_utility():
    torch.manual_seed(0)
    model = Surrogate(8).eval()
    perm = permutation_shapley(model, 8, 400, seed=0)
    with torch.no_grad():
        expected_total = full_minus_empty(model, 8)
    assert perm.values.sum() == pytest.approx(expected_total, abs=1e-5)
    assert np.all(np.isfinite(perm.stderr))

    paper = paper_contributions(model, 8, [4, 6], 300, seed=0)
    bare = paper_contributions(model.net, 8, [4, 6], 300, seed=0)  # (N, 1) output is accepted too
    np.testing.assert_allclose(paper.values, bare.values, atol=1e-6)
    assert not any(p.grad is not None for p in model.parameters())


def _near(center: np.ndarray, count: int, flips: int, seed: int) -> np.ndarray:
    """``count`` masks, each ``center`` with 1..``flips`` random layers flipped."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        mask = center.copy()
        mask[rng.choice(center.size, size=rng.integers(1, flips + 1), replace=False)] ^= True
        rows.append(mask)
    return np.array([center, *rows])


def test_measured_values_recover_a_linear_game_with_honest_error_bars():
    weights = np.linspace(-1.0, 2.0, 10)
    center = np.ones(10, dtype=bool)
    center[[2, 5, 7]] = False
    masks = _near(center, 80, 3, seed=0)
    noise = np.random.default_rng(1).normal(0.0, 0.01, len(masks))
    estimate = measured_values(masks, 0.5 + masks @ weights + noise, center)
    assert estimate.estimator == "measured" and estimate.num_samples >= 10 and estimate.num_utility_calls == 0
    np.testing.assert_allclose(estimate.values, weights, atol=0.02)
    assert np.all(estimate.stderr > 0) and np.all(estimate.stderr < 0.02)  # the noise, not zero, not huge
    assert "real evaluations" in estimate.region and "leave-one-out" in estimate.region
    low, high = estimate.coalition_sizes
    assert low == int(masks.sum(axis=1).min()) - 1 and high <= 9


def test_measured_values_prefer_the_neighbourhood_where_the_game_is_linear():
    """Far from the centre the game bends (a pair that only counts together): the fit keeps to the centre."""
    center = np.ones(12, dtype=bool)
    center[[0, 1, 2]] = False
    weights = np.linspace(0.1, 1.2, 12)

    def game(masks: np.ndarray) -> np.ndarray:
        far = (masks != center).sum(axis=1) > 3
        return masks @ weights + np.where(far, 5.0 * masks[:, 8] * masks[:, 9] - 5.0 * masks[:, 3], 0.0)

    masks = np.concatenate([_near(center, 60, 3, seed=2), _near(center, 200, 8, seed=3)])
    estimate = measured_values(masks, game(masks), center)
    assert "within" in estimate.region  # not "all the evaluated kept sets"
    np.testing.assert_allclose(estimate.values, weights, atol=0.05)


def test_measured_values_are_scored_where_the_value_check_measures():
    """A game additive at one flip from the centre (its marginals there are the weights) with pair interactions
    among the flipped layers beyond: scoring the fit on the sets one flip away (the default) recovers the centre's
    marginals better than scoring on two flips, over 40 draws (mean rank correlation 0.63 against 0.55; better in 22
    draws, worse in 8)."""
    from optimum_shapley.game_values import MEASURED_SCORE_FLIPS
    from optimum_shapley.surrogate import spearman

    assert MEASURED_SCORE_FLIPS == 1
    players = 12
    center = np.ones(players, dtype=bool)
    center[[0, 1, 2]] = False
    weights = np.linspace(0.1, 1.2, players)
    one_flip = np.array([center ^ (np.arange(players) == i) for i in range(players)])
    correlations = {1: [], 2: []}
    for seed in range(40):
        rng = np.random.default_rng(seed)
        interactions = np.triu(rng.normal(0.0, 0.6, (players, players)), 1)
        far = []
        for _ in range(60):
            mask = center.copy()
            mask[rng.choice(players, size=rng.integers(2, 5), replace=False)] ^= True
            far.append(mask)
        masks = np.concatenate([center[None], one_flip[rng.choice(players, 3, replace=False)], np.array(far)])
        flipped = (masks != center).astype(float)
        utilities = masks @ weights + np.einsum("ni,ij,nj->n", flipped, interactions, flipped)
        for flips in correlations:
            estimate = measured_values(masks, utilities, center, score_flips=flips)
            correlations[flips].append(spearman(estimate.values, weights))
    assert np.mean(correlations[1]) > np.mean(correlations[2]) + 0.05
    assert sum(a > b for a, b in zip(*correlations.values())) > 2 * sum(a < b for a, b in zip(*correlations.values()))
    default = measured_values(masks, utilities, center)
    np.testing.assert_array_equal(default.values, measured_values(masks, utilities, center, score_flips=1).values)


def test_measured_values_never_fit_a_layer_that_never_changed():
    """Near the centre two layers are removed in every evaluated set (as after an elimination that never added them
    back) and the game is linear there; farther out it bends. The near neighbourhood fits best but cannot value the
    two layers (ridge would say 0 +- 0, a claim the data cannot make), so the fit takes a wider one where they vary,
    with the wide error bars that costs; where they vary nowhere, there are no measured values."""
    players = 10
    center = np.ones(players, dtype=bool)
    center[[2, 3, 7]] = False
    weights = np.linspace(0.2, 2.0, players)

    def game(masks: np.ndarray) -> np.ndarray:
        far = (masks != center).sum(axis=1) > 2
        return masks @ weights + np.where(far, 3.0 * masks[:, 8] * masks[:, 9] - 3.0 * masks[:, 4], 0.0)

    near = _near(center, 40, 2, seed=4)
    near[:, [2, 3]] = False  # 2 and 3 are never added back within two flips
    near = near[(near != center).sum(axis=1) <= 2]
    wide = _near(center, 60, 6, seed=5)
    wide = wide[(wide != center).sum(axis=1) > 2]
    masks = np.concatenate([near, wide])
    estimate = measured_values(masks, game(masks), center, radii=(2, 3, 4, 6))
    assert "within 2 flips" not in estimate.region
    assert np.all(estimate.stderr[[2, 3]] > 0.1)  # valued from the wider data, and honestly uncertain
    assert measured_values(near, game(near), center, radii=(2,)) is None  # 2 and 3 never change anywhere


def test_measured_values_need_as_many_evaluations_as_layers_near_the_centre():
    center = np.ones(10, dtype=bool)
    center[:2] = False
    masks = _near(center, 5, 2, seed=0)
    assert measured_values(masks, masks.sum(axis=1).astype(float), center) is None
    assert measured_values(np.zeros((0, 10), dtype=bool), np.zeros(0), center) is None
    with pytest.raises(ValueError, match="score_flips must be 0 or more, got -1"):
        measured_values(masks, masks.sum(axis=1).astype(float), center, score_flips=-1)
