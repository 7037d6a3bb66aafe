"""Search primitives on a known predictor: they find the optimum kept set of the target size."""

from __future__ import annotations

import numpy as np

from optimum_shapley.search import (
    greedy_elimination,
    propose_kept_sets,
    swap_local_search,
    swap_neighbours,
    two_swap_neighbours,
)

WEIGHTS = np.array([0.9, 0.1, 0.5, 0.05, 0.7, 0.3, 0.2, 0.8])
OPTIMUM = np.argsort(WEIGHTS)[3:]  # keep the 5 heaviest


def additive(masks: np.ndarray) -> np.ndarray:
    return masks.astype(float) @ WEIGHTS


def interacting(masks: np.ndarray) -> np.ndarray:
    """Layers 1 and 3 are only worth something together: greedy elimination drops one and never recovers."""
    m = masks.astype(float)
    return m @ WEIGHTS + 2.0 * m[:, 1] * m[:, 3]


def test_greedy_and_swap_find_the_additive_optimum():
    assert set(np.flatnonzero(greedy_elimination(additive, 8, 5))) == set(OPTIMUM)
    start = np.zeros(8, dtype=bool)
    start[:5] = True
    assert set(np.flatnonzero(swap_local_search(additive, start))) == set(OPTIMUM)


def test_proposals_are_distinct_of_the_target_size_best_first_and_exclude_known_sets():
    best_key = "".join("1" if i in set(OPTIMUM) else "0" for i in range(8))
    proposals = propose_kept_sets(interacting, 8, 5, [np.ones(8, dtype=bool)], exclude={best_key}, count=6)
    keys = ["".join("1" if v else "0" for v in p) for p in proposals]
    assert len(keys) == len(set(keys)) == 6 and best_key not in keys
    assert all(p.sum() == 5 for p in proposals)
    scores = interacting(np.stack(proposals))
    assert list(scores) == sorted(scores, reverse=True)
    assert proposals[0][1] and proposals[0][3]  # the interacting pair is kept in the best proposal


def test_anchor_neighbours_take_half_the_slots_and_are_one_or_two_swaps_away():
    anchor = np.zeros(8, dtype=bool)
    anchor[[0, 2, 4, 6, 7]] = True
    proposals = propose_kept_sets(additive, 8, 5, [], exclude=set(), count=6, anchor=anchor)
    assert len(proposals) == 6
    near = [p for p in proposals if (p != anchor).sum() in (2, 4)]
    assert len(near) >= 3  # half of the slots go to the anchor's neighbours
    assert all(p.sum() == 5 for p in proposals)


def test_two_swaps_reach_a_pair_that_no_single_swap_improves():
    """Layers 1 and 3 are worth keeping only together: from a set without both, every single swap is worse."""
    anchor = np.zeros(8, dtype=bool)
    anchor[[0, 2, 4, 5, 7]] = True
    assert interacting(swap_neighbours(anchor)).max() < interacting(anchor[None])[0]
    pair = np.zeros(8, dtype=bool)
    pair[[0, 1, 3, 4, 7]] = True  # 2 and 5 out, 1 and 3 in
    assert interacting(pair[None])[0] > interacting(anchor[None])[0]
    far = two_swap_neighbours(interacting, anchor, width=3)
    assert any((n == pair).all() for n in far)


def test_two_swap_neighbours_are_exactly_two_swaps_away_and_distinct():
    mask = np.array([True, True, False, True, False, True, False])
    far = two_swap_neighbours(lambda m: m.astype(float) @ np.arange(7.0), mask, width=64)
    assert all(n.sum() == 4 and (n != mask).sum() == 4 for n in far)
    assert len({n.tobytes() for n in far}) == len(far) == 6 * 3  # C(4,2) kept pairs x C(3,2) removed pairs


def test_swap_neighbours_of_a_mask():
    mask = np.array([True, True, False, True, False])
    neighbours = swap_neighbours(mask)
    assert neighbours.shape == (3 * 2, 5)
    assert all(n.sum() == 3 and (n != mask).sum() == 2 for n in neighbours)
    assert len({n.tobytes() for n in neighbours}) == 6
