"""Shapley values of decoder layers, estimated on the cheap surrogate instead of the language model.

Once a surrogate MLP maps a 0/1 layer mask to a utility, one evaluation costs microseconds, so the estimators can
afford tens of thousands of Monte Carlo samples -- but only if they are vectorised: the published implementation
calls the surrogate one row at a time inside Python loops over samples and layers, which turns a sub-second job into
minutes. Here every estimator builds its masks as batches of rows (at most ``batch_rows`` rows at once) and calls the
utility once per batch; the only Python loops run over batches.

Estimators:

* :func:`region_values` (``local`` and ``semivalue``) -- a probabilistic value (Weber 1988) of the game restricted to
  the coalitions the surrogate was trained and validated on: per player, the mean of ``f(S + i) - f(S - i)`` over
  kept sets ``S`` of the target size, either uniform (``semivalue``: the expected marginal at the target size) or
  within a few swaps of a centre, the best kept set verified on the real model (``local``: the marginals that decide
  the cut). With an ensemble surrogate the standard error adds the members' spread (the surrogate's own
  uncertainty) to the Monte Carlo error.
* :func:`permutation_shapley` -- true Shapley values by permutation sampling (Castro, Gomez and Tejada 2009), with
  antithetic (permutation, reversed permutation) pairs. Each permutation gives every player exactly one marginal
  contribution, and the marginals of one permutation sum to ``f(full) - f(empty)`` (efficiency holds exactly).
  It averages over every coalition size from 0 to L: on a surrogate trained near the target, most of those
  marginals are extrapolation (kept as an option that says so).
* :func:`measured_values` (``measured``) -- least-squares values of the game where the real model was measured: a
  linear game ``f(S) = b + sum_i w_i [i in S]`` fitted by ridge regression to the evaluated kept sets near a centre
  (the best verified set), ``w_i`` being layer ``i``'s value. Shapley and Banzhaf values are the coefficients of
  the best linear approximation of a game under their weightings (Charnes et al. 1988; Hammer and Holzman 1992);
  this one weights the evaluated coalitions near the decision. The neighbourhood's size and the ridge are chosen
  by exact leave-one-out error on the evaluated sets closest to the centre, and the standard errors are the
  regression's (residual variance times the coefficients' covariance): what the data leave unknown.
* :func:`paper_contributions` -- the published estimator: the mean of ``f(S + i) - f(S - i)`` over masks ``S`` drawn
  from a few kept-layer counts. It is not the Shapley value (it weights coalitions by the strata, not by the Shapley
  kernel) and is kept for reproducing the paper.

Both return a :class:`ShapleyEstimate` holding the values, their standard errors and the cost.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "ESTIMATORS",
    "REGION_ESTIMATORS",
    "ShapleyEstimate",
    "UtilityFn",
    "estimate_contributions",
    "measured_values",
    "paper_contributions",
    "paper_contributions_on_masks",
    "permutation_shapley",
    "region_values",
    "sample_paper_masks",
    "sample_region_masks",
]

UtilityFn = Callable[[torch.Tensor], torch.Tensor]
"""Float32 ``(N, L)`` 0/1 masks -> ``(N,)`` utilities; always called under ``torch.no_grad()``."""

ESTIMATORS = ("measured", "local", "semivalue", "permutation", "paper")
REGION_ESTIMATORS = ("local", "semivalue")

DEFAULT_BATCH_ROWS = 32768  # fits CPU caches: about 2x faster than 262144 for a 30-layer surrogate
# Permutations / masks are drawn from the generator in blocks of this many, independent of ``batch_rows``, so that
# the sampled permutations and masks (and hence the estimates) do not depend on how the work is batched.
_DRAW_BLOCK = 8192


@dataclass
class ShapleyEstimate:
    """Per-player contributions with their Monte Carlo standard errors and what they cost to compute."""

    values: np.ndarray  # (L,) float64
    stderr: np.ndarray  # (L,) float64 standard error of each value (NaN when it cannot be estimated: one sample)
    estimator: str  # "local", "semivalue", "permutation" or "paper"
    num_samples: int  # permutations (permutation) or sampled coalitions (the others)
    num_utility_calls: int  # total rows passed to utility_fn
    seconds: float
    mc_stderr: np.ndarray | None = None  # the Monte Carlo part of stderr (region estimators)
    surrogate_stderr: np.ndarray | None = None  # the ensemble-spread part of stderr (region estimators)
    coalition_sizes: tuple[int, int] | None = None  # sizes of the coalitions of other layers the marginals are at
    region: str = ""  # in words: which coalitions the values average over

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (lists instead of arrays; a non-finite standard error becomes ``None``)."""

        def as_list(array: np.ndarray) -> list[float | None]:
            return [float(v) if math.isfinite(v) else None for v in np.asarray(array, dtype=np.float64).tolist()]

        out = {
            "values": as_list(self.values),
            "stderr": as_list(self.stderr),
            "estimator": self.estimator,
            "num_samples": int(self.num_samples),
            "num_utility_calls": int(self.num_utility_calls),
            "seconds": float(self.seconds),
            "region": self.region,
            "coalition_sizes": list(self.coalition_sizes) if self.coalition_sizes is not None else None,
        }
        for name in ("mc_stderr", "surrogate_stderr"):
            if getattr(self, name) is not None:
                out[name] = as_list(getattr(self, name))
        return out


# --------------------------------------------------------------------------------------------------- helpers


def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _utility_device(utility_fn: UtilityFn) -> torch.device:
    """The device of an ``nn.Module``'s first parameter; CPU for parameterless modules and plain callables."""
    if isinstance(utility_fn, torch.nn.Module):
        first = next(utility_fn.parameters(), None)
        if first is not None:
            return first.device
    return torch.device("cpu")


def _evaluate(utility_fn: UtilityFn, masks: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Utilities of float32 ``masks`` as a float64 CPU vector (a trailing singleton output dimension is accepted)."""
    with torch.no_grad():
        out = utility_fn(masks.to(device=device, dtype=torch.float32))
    out = torch.as_tensor(out).detach()
    n = masks.shape[0]
    if out.dim() == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if tuple(out.shape) != (n,):
        raise ValueError(f"utility_fn must return shape ({n},) for {n} masks, got {tuple(out.shape)}")
    return out.to(device="cpu", dtype=torch.float64)


def _row_chunks(total_rows: int, batch_rows: int) -> Iterator[torch.Tensor]:
    """Flat row indices ``0 .. total_rows-1`` in consecutive chunks of at most ``batch_rows``."""
    for start in range(0, total_rows, batch_rows):
        yield torch.arange(start, min(start + batch_rows, total_rows))


class _RunningStats:
    """Per-player running mean and sum of squared deviations (Chan et al. pairwise update), in float64."""

    def __init__(self, num_players: int):
        self.count = 0
        self.mean = torch.zeros(num_players, dtype=torch.float64)
        self.m2 = torch.zeros(num_players, dtype=torch.float64)

    def update(self, samples: torch.Tensor) -> None:
        """Add a ``(m, L)`` float64 batch of per-player samples."""
        m = samples.shape[0]
        if m == 0:
            return
        batch_mean = samples.mean(dim=0)
        batch_m2 = ((samples - batch_mean) ** 2).sum(dim=0)
        total = self.count + m
        delta = batch_mean - self.mean
        self.mean += delta * (m / total)
        self.m2 += batch_m2 + delta**2 * (self.count * m / total)
        self.count = total

    def values_and_stderr(self) -> tuple[np.ndarray, np.ndarray]:
        values = self.mean.numpy().astype(np.float64)
        if self.count < 2:
            return values, np.full_like(values, np.nan)
        std = torch.sqrt(torch.clamp(self.m2 / (self.count - 1), min=0.0))
        return values, (std / math.sqrt(self.count)).numpy().astype(np.float64)


def _random_permutations(generator: torch.Generator, count: int, num_players: int) -> torch.Tensor:
    """``(count, L)`` uniformly random permutations (argsort of i.i.d. uniform noise)."""
    return torch.argsort(torch.rand(count, num_players, generator=generator), dim=1)


def _inverse_permutations(perms: torch.Tensor) -> torch.Tensor:
    """``inverse[p, perms[p, t]] = t``: the position of every player in each permutation."""
    positions = torch.arange(perms.shape[1]).expand_as(perms)
    return torch.empty_like(perms).scatter_(1, perms, positions)


# --------------------------------------------------------------------------------------------------- permutation


def permutation_shapley(
    utility_fn: UtilityFn,
    num_players: int,
    num_permutations: int,
    *,
    seed: int = 0,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    antithetic: bool = True,
) -> ShapleyEstimate:
    """Shapley values by permutation sampling: the mean marginal contribution of each player over random orders.

    Every permutation is expanded into its ``L + 1`` prefix masks (empty .. full), evaluated in batches of at most
    ``batch_rows`` rows; the marginal of player ``perm[t]`` is ``f(prefix t+1) - f(prefix t)``. With ``antithetic``
    each permutation is paired with its reverse (``num_permutations`` counts both and is rounded up to even) and the
    standard error comes from the per-pair averages, which are independent. Same seed, same result.
    """
    num_players = _check_positive_int("num_players", num_players)
    num_permutations = _check_positive_int("num_permutations", num_permutations)
    batch_rows = _check_positive_int("batch_rows", batch_rows)
    start_time = time.perf_counter()

    if antithetic:
        num_permutations += num_permutations % 2
    num_base = num_permutations // 2 if antithetic else num_permutations
    generator = torch.Generator().manual_seed(int(seed))
    device = _utility_device(utility_fn)
    rows_per_perm = num_players + 1
    stats = _RunningStats(num_players)
    calls = 0

    for block_start in range(0, num_base, _DRAW_BLOCK):
        base = _random_permutations(generator, min(_DRAW_BLOCK, num_base - block_start), num_players)
        perms = torch.cat([base, base.flip(1)]) if antithetic else base
        # rank[p, i] = position of player i in permutation p; prefix t holds exactly the players of rank < t.
        rank = _inverse_permutations(perms)
        total_rows = perms.shape[0] * rows_per_perm
        utilities = torch.empty(total_rows, dtype=torch.float64)
        for rows in _row_chunks(total_rows, batch_rows):
            perm_idx, prefix_len = rows // rows_per_perm, rows % rows_per_perm
            masks = (rank[perm_idx] < prefix_len[:, None]).to(torch.float32)
            utilities[rows] = _evaluate(utility_fn, masks, device)
            calls += rows.numel()
        by_position = utilities.view(-1, rows_per_perm).diff(dim=1)  # (P, L): marginal of perms[p, t]
        marginals = torch.empty_like(by_position).scatter_(1, perms, by_position)  # (P, L): marginal of player i
        if antithetic:
            half = base.shape[0]
            marginals = 0.5 * (marginals[:half] + marginals[half:])
        stats.update(marginals)

    values, stderr = stats.values_and_stderr()
    return ShapleyEstimate(
        values=values,
        stderr=stderr,
        estimator="permutation",
        num_samples=num_permutations,
        num_utility_calls=calls,
        seconds=time.perf_counter() - start_time,
    )


# --------------------------------------------------------------------------------------------------- paper


def _check_kept_counts(kept_counts: Sequence[int] | None, num_players: int) -> list[int]:
    if kept_counts is None:
        raise ValueError("the 'paper' estimator needs kept_counts (the kept-layer counts to sample masks from)")
    counts = [int(k) for k in kept_counts]
    if not counts:
        raise ValueError("kept_counts must be a non-empty list of kept-layer counts")
    bad = [k for k in counts if not 0 <= k <= num_players]
    if bad:
        raise ValueError(f"kept_counts {bad} are outside [0, {num_players}] for {num_players} players")
    return counts


def sample_paper_masks(
    num_players: int, kept_counts: Sequence[int], num_samples: int, *, seed: int = 0
) -> torch.Tensor:
    """``(num_samples, L)`` boolean masks: a kept count drawn uniformly from ``kept_counts``, then a uniform subset.

    These are the coalitions :func:`paper_contributions` averages over; same arguments, same masks.
    """
    num_players = _check_positive_int("num_players", num_players)
    num_samples = _check_positive_int("num_samples", num_samples)
    counts = torch.tensor(_check_kept_counts(kept_counts, num_players), dtype=torch.long)
    generator = torch.Generator().manual_seed(int(seed))
    blocks = []
    for block_start in range(0, num_samples, _DRAW_BLOCK):
        n = min(_DRAW_BLOCK, num_samples - block_start)
        kept = counts[torch.randint(len(counts), (n,), generator=generator)]
        rank = _inverse_permutations(_random_permutations(generator, n, num_players))
        blocks.append(rank < kept[:, None])  # the first ``kept`` players of a uniform permutation
    return torch.cat(blocks)


def paper_contributions_on_masks(
    utility_fn: UtilityFn, masks: torch.Tensor, *, batch_rows: int = DEFAULT_BATCH_ROWS
) -> ShapleyEstimate:
    """The published estimator on given coalitions: per player, the mean of ``f(S + i) - f(S - i)`` over ``masks``.

    One of ``f(S + i)`` and ``f(S - i)`` is ``f(S)`` itself, so each mask costs ``L + 1`` utility rows (``S`` and
    ``S`` with each player flipped) rather than the ``2 L`` the published code evaluates; the contributions are the
    same numbers.
    """
    masks = torch.as_tensor(masks).detach().cpu().bool()
    if masks.dim() != 2 or masks.shape[0] < 1 or masks.shape[1] < 1:
        raise ValueError(f"masks must be a non-empty (num_samples, num_players) tensor, got shape {tuple(masks.shape)}")
    batch_rows = _check_positive_int("batch_rows", batch_rows)
    start_time = time.perf_counter()
    num_samples, num_players = masks.shape
    device = _utility_device(utility_fn)
    rows_per_mask = num_players + 1
    players = torch.arange(num_players)
    stats = _RunningStats(num_players)
    calls = 0

    for block_start in range(0, num_samples, _DRAW_BLOCK):
        block = masks[block_start : block_start + _DRAW_BLOCK]
        total_rows = block.shape[0] * rows_per_mask
        utilities = torch.empty(total_rows, dtype=torch.float64)
        for rows in _row_chunks(total_rows, batch_rows):
            mask_idx, flipped = rows // rows_per_mask, rows % rows_per_mask - 1  # flipped == -1: the mask itself
            chunk = block[mask_idx] ^ (flipped[:, None] == players)
            utilities[rows] = _evaluate(utility_fn, chunk.to(torch.float32), device)
            calls += rows.numel()
        utilities = utilities.view(-1, rows_per_mask)
        own, flipped_util = utilities[:, :1], utilities[:, 1:]
        contributions = torch.where(block, own - flipped_util, flipped_util - own)  # f(S + i) - f(S - i)
        stats.update(contributions)

    values, stderr = stats.values_and_stderr()
    return ShapleyEstimate(
        values=values,
        stderr=stderr,
        estimator="paper",
        num_samples=num_samples,
        num_utility_calls=calls,
        seconds=time.perf_counter() - start_time,
    )


def paper_contributions(
    utility_fn: UtilityFn,
    num_players: int,
    kept_counts: Sequence[int],
    num_samples: int,
    *,
    seed: int = 0,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> ShapleyEstimate:
    """The published (non-Shapley) estimator: mean of ``f(S + i) - f(S - i)`` over ``num_samples`` sampled masks.

    Each mask ``S`` keeps a count drawn uniformly from ``kept_counts`` and a uniformly random subset of that size
    (see :func:`sample_paper_masks`); ``stderr`` is the sample standard deviation over ``sqrt(num_samples)``.
    """
    start_time = time.perf_counter()
    masks = sample_paper_masks(num_players, kept_counts, num_samples, seed=seed)
    estimate = paper_contributions_on_masks(utility_fn, masks, batch_rows=batch_rows)
    estimate.seconds = time.perf_counter() - start_time
    return estimate


# --------------------------------------------------------------------------------------------------- region


def sample_region_masks(
    num_players: int,
    kept_count: int,
    num_samples: int,
    *,
    center: np.ndarray | None = None,
    radius: int = 2,
    seed: int = 0,
) -> torch.Tensor:
    """``(num_samples, L)`` kept sets of exactly ``kept_count`` players.

    Without ``center``: uniform subsets of that size. With ``center`` (a boolean kept set of that size): the centre
    after ``r`` random swaps (one kept player out, one removed player in), ``r`` uniform in ``0..radius``, so that
    the region is the neighbourhood a search around the centre has verified. Same arguments, same masks.
    """
    num_players = _check_positive_int("num_players", num_players)
    num_samples = _check_positive_int("num_samples", num_samples)
    if not 1 <= kept_count <= num_players - 1:
        raise ValueError(f"kept_count must be in [1, {num_players - 1}], got {kept_count}")
    generator = torch.Generator().manual_seed(int(seed))
    if center is None:
        rank = _inverse_permutations(_random_permutations(generator, num_samples, num_players))
        return rank < kept_count
    center_t = torch.as_tensor(np.asarray(center, dtype=bool))
    if center_t.shape != (num_players,) or int(center_t.sum()) != kept_count:
        raise ValueError(f"center must be a boolean kept set of {kept_count} of {num_players} players")
    masks = center_t.expand(num_samples, num_players).clone()
    swaps = torch.randint(0, int(radius) + 1, (num_samples,), generator=generator)
    rows = torch.arange(num_samples)
    for step in range(int(radius)):
        active = swaps > step
        # one random kept player out and one random removed player in, for the rows still swapping
        kept_noise = torch.rand(num_samples, num_players, generator=generator).masked_fill(~masks, -1.0)
        removed_noise = torch.rand(num_samples, num_players, generator=generator).masked_fill(masks, -1.0)
        out_player, in_player = kept_noise.argmax(dim=1), removed_noise.argmax(dim=1)
        masks[rows[active], out_player[active]] = False
        masks[rows[active], in_player[active]] = True
    return masks


def region_values(
    surrogate: torch.nn.Module,
    num_players: int,
    kept_count: int,
    *,
    num_samples: int = 20000,
    center: np.ndarray | None = None,
    radius: int = 2,
    seed: int = 0,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> ShapleyEstimate:
    """Each player's mean ``f(S + i) - f(S - i)`` over kept sets ``S`` of ``kept_count`` players (see
    :func:`sample_region_masks`), on the surrogate, with ensemble-aware error bars.

    For ``S`` of the target size, a kept player's marginal is taken at a coalition of ``kept_count - 1`` others and a
    removed player's at one of ``kept_count``: every queried mask has ``kept_count - 1`` to ``kept_count + 1`` kept
    layers, the sizes the search trains the surrogate on. The standard error is ``sqrt(mc^2 + spread^2)``: the Monte
    Carlo error of the mean surrogate and the standard deviation of the values over the ensemble's members (zero for
    a single network, which then claims no surrogate uncertainty).
    """
    start = time.perf_counter()
    masks = sample_region_masks(num_players, kept_count, num_samples, center=center, radius=radius, seed=seed)
    mean = paper_contributions_on_masks(surrogate, masks, batch_rows=batch_rows)
    members = surrogate.members if getattr(surrogate, "ensemble_size", 1) > 1 else []
    spread = np.zeros(num_players)
    calls = mean.num_utility_calls
    if members:
        per_member = []
        for index in range(len(members)):
            estimate = paper_contributions_on_masks(surrogate.member(index), masks, batch_rows=batch_rows)
            per_member.append(estimate.values)
            calls += estimate.num_utility_calls
        spread = np.std(np.stack(per_member), axis=0, ddof=1)
    region = (
        f"kept sets of {kept_count} layers within {radius} swaps of the best verified set"
        if center is not None
        else f"uniformly random kept sets of {kept_count} layers"
    )
    return ShapleyEstimate(
        values=mean.values,
        stderr=np.sqrt(mean.stderr**2 + spread**2),
        estimator="local" if center is not None else "semivalue",
        num_samples=num_samples,
        num_utility_calls=calls,
        seconds=time.perf_counter() - start,
        mc_stderr=mean.stderr,
        surrogate_stderr=spread,
        coalition_sizes=(kept_count - 1, kept_count),
        region=region,
    )


MEASURED_RADII = (2, 3, 4, 6, 8)
"""Hamming distances from the centre tried for the neighbourhood of :func:`measured_values` (and the whole set)."""
MEASURED_RIDGES = (1e-3, 1e-2, 1e-1, 1.0)
"""Ridge penalties tried (pseudo-observations: masks are 0/1 and values share the utility's unit)."""
MEASURED_SCORE_FLIPS = 1
"""The fit is scored on the evaluated sets this many flips from the centre: a value is a marginal one flip from the
chosen set (what the value check measures). Offline on the quality bench's evaluations (seven cells), one flip gives
values whose rank correlation with the real marginals is at least two flips' everywhere and higher in five: in-domain
SmolLM2 remove 6 0.964 against 0.744, remove 10 0.909 against 0.773, C4 Gemma-3 remove 4 0.938 against 0.880
(docs/benchmarks.md, session 16)."""


def _ridge(
    masks: np.ndarray, utilities: np.ndarray, ridge: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(coefficients, exact leave-one-out residuals, inverse penalised Gram, Gram) of ``utilities ~ b + masks @ w``."""
    rows, players = masks.shape
    design = np.hstack([np.ones((rows, 1)), masks])
    gram = design.T @ design
    penalty = ridge * np.eye(players + 1)
    penalty[0, 0] = 0.0  # the intercept is not shrunk
    inverse = np.linalg.pinv(gram + penalty)
    coefficients = inverse @ design.T @ utilities
    leverage = np.einsum("ij,jk,ik->i", design, inverse, design)
    residuals = (utilities - design @ coefficients) / np.maximum(1.0 - leverage, 1e-9)
    return coefficients, residuals, inverse, gram


def _every_player_varies(masks: np.ndarray) -> bool:
    """Whether each player is kept in some of ``masks`` and removed in others: a player that never changes has no
    measured value (ridge would report 0 with a zero standard error, a claim the data cannot make)."""
    return bool(masks.any(axis=0).all() and (~masks).any(axis=0).all())


def measured_values(
    masks: np.ndarray,
    utilities: np.ndarray,
    center: np.ndarray,
    *,
    radii: Sequence[int] = MEASURED_RADII,
    ridges: Sequence[float] = MEASURED_RIDGES,
    score_flips: int = MEASURED_SCORE_FLIPS,
) -> ShapleyEstimate | None:
    """Least-squares values of the layers from evaluated masks near ``center`` (see the module docstring).

    ``masks`` ``(N, L)`` booleans and ``utilities`` ``(N,)`` are real-model evaluations (any kept count); ``center``
    the kept set the values are about. Each neighbourhood (masks within a radius of ``radii``, or all of them) holding
    at least ``L`` masks, in which every layer is kept in some and removed in others, and each ridge is scored by the
    mean squared leave-one-out error on the masks within ``score_flips`` flips of the centre (in every neighbourhood;
    all its masks where none is that close), and the best pair is used. Returns None when no neighbourhood
    qualifies: too little was measured near the centre to fit one value per layer.
    """
    if score_flips < 0:
        raise ValueError(f"score_flips must be 0 or more, got {score_flips!r}")
    start = time.perf_counter()
    masks = np.asarray(masks, dtype=bool)
    utilities = np.asarray(utilities, dtype=np.float64)
    center = np.asarray(center, dtype=bool)
    finite = np.isfinite(utilities)
    masks, utilities = masks[finite], utilities[finite]
    rows, players = masks.shape if masks.ndim == 2 else (0, center.size)
    if rows == 0:
        return None
    distance = (masks != center).sum(axis=1)
    best = None
    for radius in sorted({*(int(r) for r in radii), players}):
        inside = distance <= radius
        if inside.sum() < players or not _every_player_varies(masks[inside]):
            continue
        near = distance[inside] <= score_flips
        for ridge in ridges:
            _, residuals, _, _ = _ridge(masks[inside].astype(np.float64), utilities[inside], float(ridge))
            score = float(np.mean(residuals[near] ** 2)) if near.any() else float(np.mean(residuals**2))
            if best is None or score < best[0] - 1e-15:
                best = (score, radius, float(ridge))
        if inside.all():
            break  # a larger radius holds the same masks
    if best is None:
        return None
    _, radius, ridge = best
    inside = distance <= radius
    data = masks[inside].astype(np.float64)
    coefficients, residuals, inverse, gram = _ridge(data, utilities[inside], ridge)
    noise = float(np.mean(residuals**2))  # leave-one-out: misfit of the linear game included, not only noise
    covariance = noise * inverse @ gram @ inverse
    stderr = np.sqrt(np.clip(np.diag(covariance)[1:], 0.0, None))
    kept = data.sum(axis=1)
    # a kept player's marginal is read at |S| - 1 others, a removed player's at |S| (none is removed from the full set)
    others = np.where(kept < players, kept, kept - 1)
    within = "all the evaluated kept sets" if inside.all() else f"the evaluated kept sets within {radius} flips"
    return ShapleyEstimate(
        values=coefficients[1:],
        stderr=stderr,
        estimator="measured",
        num_samples=int(inside.sum()),
        num_utility_calls=0,
        seconds=time.perf_counter() - start,
        coalition_sizes=(max(int(kept.min()) - 1, 0), int(others.max())),
        region=(
            f"a linear game fitted to {within} of the best verified set ({int(inside.sum())} real evaluations, "
            f"ridge {ridge:g}; both chosen by leave-one-out)"
        ),
    )


# --------------------------------------------------------------------------------------------------- dispatch


def estimate_contributions(
    utility_fn: UtilityFn,
    num_players: int,
    *,
    estimator: str = "permutation",
    num_samples: int = 80000,
    seed: int = 0,
    kept_counts: Sequence[int] | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> ShapleyEstimate:
    """Per-layer contributions with the named estimator (``"permutation"`` or ``"paper"``; the region estimators
    ``"local"`` and ``"semivalue"`` are :func:`region_values`, which needs the target and the centre).

    ``num_samples`` is the number of permutations or of sampled coalitions. ``kept_counts`` is required by
    ``"paper"`` and ignored by ``"permutation"``.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; accepted values are {', '.join(map(repr, ESTIMATORS))}")
    if estimator in REGION_ESTIMATORS:
        raise ValueError(f"the {estimator!r} estimator needs a target size: call region_values")
    num_players = _check_positive_int("num_players", num_players)
    num_samples = _check_positive_int("num_samples", num_samples)
    if estimator == "paper":
        counts = _check_kept_counts(kept_counts, num_players)
        return paper_contributions(utility_fn, num_players, counts, num_samples, seed=seed, batch_rows=batch_rows)
    return permutation_shapley(utility_fn, num_players, num_samples, seed=seed, batch_rows=batch_rows)
