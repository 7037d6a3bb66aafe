"""Search the kept set directly on the surrogate, and verify the best candidates on the real model.

The k lowest one-shot contributions are not the best set of k layers to remove: contributions average over many
coalitions, while the decision is about one. Once a surrogate predicts the utility of any mask, the best kept set of
the target size can be searched for on it (greedy elimination and swap local search from several starts), and the
few most promising candidates evaluated for real. Verified masks join the surrogate's training data, the surrogate
is refitted, and the loop stops when a round finds nothing better than the best verified mask so far.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from .encoding import mask_to_key

__all__ = [
    "greedy_elimination",
    "propose_kept_sets",
    "surrogate_predictor",
    "swap_local_search",
    "swap_neighbours",
    "two_swap_neighbours",
]

Predictor = Callable[[np.ndarray], np.ndarray]  # (N, L) bool -> (N,) predicted utility


def surrogate_predictor(surrogate: torch.nn.Module) -> Predictor:
    def predict(masks: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return surrogate(torch.from_numpy(np.asarray(masks, dtype=np.float32))).double().numpy()

    return predict


def greedy_elimination(predict: Predictor, num_layers: int, kept_count: int) -> np.ndarray:
    """SLEB on the surrogate: from the full model, repeatedly drop the layer whose removal keeps utility highest."""
    mask = np.ones(num_layers, dtype=bool)
    while mask.sum() > kept_count:
        candidates = np.flatnonzero(mask)
        trial = np.repeat(mask[None], len(candidates), axis=0)
        trial[np.arange(len(candidates)), candidates] = False
        mask = trial[int(np.argmax(predict(trial)))]
    return mask


def swap_local_search(predict: Predictor, start: np.ndarray, max_steps: int = 200) -> np.ndarray:
    """Best-improvement swaps (one kept layer out, one removed layer in) until no swap improves the prediction."""
    mask = np.asarray(start, dtype=bool).copy()
    best = float(predict(mask[None])[0])
    for _ in range(max_steps):
        trial = swap_neighbours(mask)
        if len(trial) == 0:
            break
        scores = predict(trial)
        i = int(np.argmax(scores))
        if scores[i] <= best + 1e-12:
            break
        mask, best = trial[i], float(scores[i])
    return mask


def swap_neighbours(mask: np.ndarray) -> np.ndarray:
    """Every kept set one swap away from ``mask`` (one kept layer out, one removed layer in)."""
    mask = np.asarray(mask, dtype=bool)
    kept, removed = np.flatnonzero(mask), np.flatnonzero(~mask)
    if len(kept) == 0 or len(removed) == 0:
        return np.zeros((0, len(mask)), dtype=bool)
    pairs = np.array([(a, b) for a in kept for b in removed])
    trial = np.repeat(mask[None], len(pairs), axis=0)
    trial[np.arange(len(pairs)), pairs[:, 0]] = False
    trial[np.arange(len(pairs)), pairs[:, 1]] = True
    return trial


def two_swap_neighbours(predict: Predictor, mask: np.ndarray, width: int = 32) -> np.ndarray:
    """Kept sets two swaps away from ``mask``, reached through its ``width`` best single swaps (predicted).

    A pair of layers can be worth keeping only together, so the best set is often two swaps from a good one while
    every single swap looks worse. All two-swap sets number ``C(k,2) C(L-k,2)`` (millions on deep models); a beam of
    ``width`` single swaps keeps the pool at ``width k (L-k)`` rows.
    """
    mask = np.asarray(mask, dtype=bool)
    first = swap_neighbours(mask)
    if len(first) == 0:
        return first
    beam = first[np.argsort(-predict(first), kind="stable")[:width]]
    second = np.concatenate([swap_neighbours(m) for m in beam])
    far = (second != mask).sum(axis=1) == 4  # drop the way back and the single swaps
    return np.unique(second[far], axis=0)


def propose_kept_sets(
    predict: Predictor,
    num_layers: int,
    kept_count: int,
    starts: Iterable[np.ndarray],
    exclude: set[str],
    count: int,
    anchor: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Up to ``count`` distinct kept sets of size ``kept_count``, none of them in ``exclude``.

    Two sources share the slots. Exploration: local optima of the surrogate reached from greedy elimination and from
    each start, and their single-swap neighbours (the runners-up the surrogate may misjudge), best predicted first.
    Exploitation: with an ``anchor`` (the best set verified so far), half the slots go to its most promising
    neighbours one or two swaps away, so the real model also does a local search around what it has confirmed,
    where a surrogate fitted on the whole space is least precise.
    """
    pool: dict[str, np.ndarray] = {}

    def add(mask: np.ndarray) -> None:
        pool.setdefault(mask_to_key(mask), mask.copy())

    seeds = [greedy_elimination(predict, num_layers, kept_count), *(np.asarray(s, dtype=bool) for s in starts)]
    for seed in seeds:
        if seed.sum() != kept_count:
            continue
        add(seed)
        optimum = swap_local_search(predict, seed)
        add(optimum)
        for neighbour in swap_neighbours(optimum):
            add(neighbour)

    chosen: dict[str, np.ndarray] = {}

    def take(candidates: dict[str, np.ndarray], limit: int) -> None:
        keys = [k for k in candidates if k not in exclude and k not in chosen]
        if not keys or limit <= 0:
            return
        scores = predict(np.stack([candidates[k] for k in keys]))
        for i in np.argsort(-scores, kind="stable")[:limit]:
            chosen[keys[i]] = candidates[keys[i]]

    near: dict[str, np.ndarray] = {}
    if anchor is not None and np.asarray(anchor).sum() == kept_count:
        for m in (*swap_neighbours(anchor), *two_swap_neighbours(predict, anchor)):
            near.setdefault(mask_to_key(m), m)
    take(near, count // 2)
    take(pool, count - len(chosen))
    take(near, count - len(chosen))  # exploration ran dry: fill from the anchor's neighbourhood
    return list(chosen.values())
