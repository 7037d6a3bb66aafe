"""The mask evaluator: what a layer mask is worth on the calibration set, through the cache, counted.

Every criterion asks this one object for real-model evaluations, so all of them share the cache and are counted the
same way. The loss kernel is ``losses.py``, the cache ``cache.py``, shared prefixes ``prefix_sharing.py``, the
distribution over processes ``distributed.py``; the names they export are re-exported here, where they used to live.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..encoding import kept_to_key, mask_to_key
from ..modes import eval_mode
from .cache import (
    CACHE_FILE_NAME,
    CorruptCacheError,
    MaskEvaluation,
    MaskEvaluationCache,
    model_fingerprint,
    run_fingerprint,
)
from .distributed import ProcessDealer
from .losses import (
    DEFAULT_KL_TOP_K,
    MEASURE,
    OBJECTIVES,
    DenseReference,
    evaluate_batches,
    evaluate_losses,
    measure_name,
    token_losses,
    token_nll,
    utilities_from_nll,
)

__all__ = [
    "CACHE_FILE_NAME",
    "DEFAULT_KL_TOP_K",
    "MEASURE",
    "OBJECTIVES",
    "CorruptCacheError",
    "DenseReference",
    "MaskEvaluation",
    "MaskEvaluationCache",
    "MaskEvaluator",
    "evaluate_batches",
    "evaluate_losses",
    "measure_name",
    "model_fingerprint",
    "run_fingerprint",
    "token_losses",
    "token_nll",
    "utilities_from_nll",
]


class MaskEvaluator:
    """Evaluates layer masks of one model on one calibration set, through the cache.

    ``batches`` is a zero-argument callable returning a fresh iterable of batches (the pruner passes the Trainer's
    eval dataloader), ``prepare`` moves a batch to the model's device. Every criterion that needs real-model
    evaluations goes through this one object, so all of them share the cache and are counted the same way:
    ``num_requested`` distinct masks asked for, of which ``num_run`` were evaluated and ``num_cached`` read back
    from an earlier run's cache (a mask asked for again in the same run counts once); ``requests`` lists every key
    asked for, in order (a criterion's cost is its distinct keys).

    ``objective="kl"`` also measures every mask's KL divergence from the dense model's next-token distribution
    (top ``kl_top_k`` tokens plus the rest), which :meth:`loss` then returns; the dense distribution is computed once,
    in the full model's own evaluation, which counts as asked for and run (or in one extra pass, counted in
    ``reference_passes``, when that evaluation comes from the cache). ``verifier``, when set, is a second evaluator of the same model on a larger calibration
    set, for re-scoring the few best sets (multi-fidelity verification). ``dealer`` (or an ``accelerator`` of
    several processes, from which a :class:`~.distributed.ProcessDealer` is built) distributes the uncached masks
    over processes; ``share_prefixes`` lets one process run a group of masks from their shared prefixes.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Callable[[], Iterable[Mapping[str, torch.Tensor]]],
        *,
        prepare: Callable | None = None,
        cache: MaskEvaluationCache | None = None,
        num_layers: int | None = None,
        show_progress: bool = True,
        run: Callable[[list[int]], MaskEvaluation] | None = None,
        accelerator: Any = None,
        dealer: ProcessDealer | None = None,
        share_prefixes: bool = True,
        objective: str = "nll",
        kl_top_k: int = DEFAULT_KL_TOP_K,
        verifier: MaskEvaluator | None = None,
    ):
        from ..surgery import num_decoder_layers

        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
        self.objective = objective
        self.kl_top_k = int(kl_top_k)
        self.verifier = verifier
        self._references: list[DenseReference] | None = None
        self._dense_evaluation: MaskEvaluation | None = None  # the reference pass, without a cache
        self.reference_passes = 0  # dense passes run only to rebuild the KL reference (full model cached)
        self._tokens_per_mask: int | None = None
        self.model = model
        self.batches = batches
        self.prepare = prepare
        self.cache = cache
        self.run = run or self.forward
        self.num_layers = num_layers if num_layers is not None else num_decoder_layers(model)
        self.show_progress = show_progress
        # groups of masks run in trie order from remembered hidden states (plain forward passes only)
        self.share_prefixes = share_prefixes and run is None
        self.num_run = 0
        self.num_cached = 0
        self.num_run_here = 0  # forward passes run by this process (num_run counts those of all processes)
        self.requests: list[str] = []
        self._seen: set[str] = set()
        # several processes (accelerate launch): a dealer gives each its share, results go through the cache
        if dealer is None and cache is not None and getattr(accelerator, "num_processes", 1) > 1:
            dealer = ProcessDealer(accelerator)
        self.dealer = dealer if cache is not None else None
        self._fresh: set[str] = set()  # evaluated by some process during this run, not yet counted
        self._in_batch = False
        # called with (evaluation, cached) for every mask served for the first time in this run
        self.listeners: list[Callable[[MaskEvaluation, bool], None]] = []
        # called with a dict of numbers (and phase names) by the criteria: the search's progress
        self.event_listeners: list[Callable[[dict[str, Any]], None]] = []
        if self.dealer is not None:
            self.dealer.share_cache(self.cache)

    def report(self, **values: Any) -> None:
        """A criterion's progress (phase, best verified loss, surrogate fit, ...) for the event listeners."""
        for listener in self.event_listeners:
            listener(dict(values))

    @property
    def num_requested(self) -> int:
        return self.num_run + self.num_cached

    def loss(self, evaluation: MaskEvaluation) -> float:
        """The objective's mean per-token loss of an evaluation (KL or NLL); inf when not finite."""
        value = evaluation.mean_kl if self.objective == "kl" else evaluation.mean_nll
        return value if math.isfinite(value) else math.inf

    @property
    def tokens_per_mask(self) -> int:
        """Input tokens one evaluation processes (padding excluded): the unit of the cost reports."""
        if self._tokens_per_mask is None:
            total = 0
            for batch in self.batches():
                mask = batch.get("attention_mask")
                total += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
            self._tokens_per_mask = total
        return self._tokens_per_mask

    def references(self) -> list[DenseReference] | None:
        """The dense model's coarsened next-token distributions, one per batch (None for the NLL objective).

        Built by evaluating the full model: the evaluation goes to the cache like any other, unless it is already
        there, in which case the pass only rebuilds the reference (``reference_passes``)."""
        if self.objective != "kl":
            return None
        if self._references is None:
            full_key = mask_to_key(np.ones(self.num_layers, dtype=bool))
            start = time.perf_counter()
            references, nll_total, tokens = [], 0.0, 0
            with eval_mode(self.model), torch.no_grad():
                for batch in self.prepared_batches():
                    nll, _, count, own = token_losses(self.model, batch, kl_top_k=self.kl_top_k)
                    references.append(own)
                    nll_total += nll
                    tokens += count
            self._references = references
            full = MaskEvaluation(full_key, nll_total, tokens, time.perf_counter() - start, kl_sum=0.0)
            if self.cache is not None and full_key in self.cache:
                # the full model's numbers come from the cache (counted so), the pass only rebuilt the reference
                self.reference_passes += 1
                if full_key not in self._seen:
                    self.requests.append(full_key)
                    self._seen.add(full_key)
                    self.num_cached += 1
                    self._notify(self.cache.get(full_key), True)
            else:
                if self.cache is None:
                    self._dense_evaluation = full  # served when the full model is asked for: no second dense pass
                elif self.cache.persist:
                    self.cache.add(full)
                else:  # every process computes the same dense pass: all hold it, the main process writes it
                    self.cache.remember([full])
                # the pass is the full model's evaluation: asked for and run, whoever asks for it later
                self.requests.append(full_key)
                self._seen.add(full_key)
                self.num_run += 1
                self.num_run_here += 1
                self._notify(full, False)
        return self._references

    def prepared_batches(self) -> Iterable[Mapping[str, torch.Tensor]]:
        for batch in self.batches():
            yield self.prepare(batch) if self.prepare is not None else batch

    def __call__(self, keep: Iterable[int] | np.ndarray) -> MaskEvaluation:
        """Evaluation of the model keeping ``keep`` (indices, or a boolean mask over all layers)."""
        from ..surgery import kept_layers_from_mask

        return self._serve(kept_layers_from_mask(keep, self.num_layers), self.run)

    def _serve(self, kept: list[int], run: Callable[[list[int]], MaskEvaluation]) -> MaskEvaluation:
        """The evaluation of ``kept``: from the cache, or from ``run`` (a plain forward, or the prefix-sharing
        runner of ``evaluate_all``), counted and cached the same way whichever ran it."""
        self.references()  # the dense reference first: its pass is the full model's evaluation
        if self.dealer is not None and not self._in_batch:
            self._evaluate_shares([kept])  # one process evaluates it, all get the same numbers
        key = kept_to_key(kept, self.num_layers)
        repeated = key in self._seen
        self.requests.append(key)
        self._seen.add(key)
        dense = self._dense_evaluation
        cached = False
        if self.cache is not None and key in self.cache:
            if key in self._fresh:
                self._fresh.discard(key)
                self.num_run += 1
            else:
                self.num_cached += 0 if repeated else 1
                cached = True
            evaluation = self.cache.get(key)
        elif dense is not None and key == dense.mask:
            return dense  # counted (and reported) when the reference pass ran
        else:
            evaluation = run(kept)
            self.num_run_here += 1
            if self.cache is not None:
                self.cache.add(evaluation)
            self.num_run += 1
        if not repeated:
            self._notify(evaluation, cached)
        return evaluation

    def _notify(self, evaluation: MaskEvaluation, cached: bool) -> None:
        """Tell the listeners (the pruner's ``Trainer.log``) about a mask evaluated for the first time this run."""
        for listener in self.listeners:
            listener(evaluation, cached)

    def forward(self, kept: list[int]) -> MaskEvaluation:
        """One real evaluation (no cache): token-weighted NLL of the model with only ``kept`` layers."""
        from ..surgery import LayerMask

        references = self.references()
        start = time.perf_counter()
        with eval_mode(self.model), LayerMask(self.model, kept):
            nll, kl, tokens = evaluate_losses(self.model, self.prepared_batches(), references)
        return MaskEvaluation(kept_to_key(kept, self.num_layers), nll, tokens, time.perf_counter() - start, kl_sum=kl)

    def evaluate_all(self, masks: Iterable[Iterable[int] | np.ndarray], desc: str = "Evaluating layer masks"):
        """Evaluate many masks with a progress bar (ETA); cached ones are served without a forward pass."""
        from tqdm.auto import tqdm

        masks = list(masks)
        self.references()
        if self.dealer is not None:
            from ..surgery import kept_layers_from_mask

            self._evaluate_shares([kept_layers_from_mask(m, self.num_layers) for m in masks], desc)
            self._in_batch = True
            try:
                return [self(mask) for mask in masks]
            finally:
                self._in_batch = False
        if self.share_prefixes and len(masks) > 1:
            return self._evaluate_sharing_prefixes(masks, desc)
        results = []
        with tqdm(total=len(masks), desc=desc, unit="mask", disable=not self.show_progress) as progress:
            for mask in masks:
                results.append(self(mask))
                progress.update(1)
        return results

    def _evaluate_sharing_prefixes(self, masks: list, desc: str) -> list[MaskEvaluation]:
        """``evaluate_all`` in trie order, each run mask starting from the hidden states of the last common kept
        layer with the previous one (``prefix_sharing.py``); same numbers as plain forwards, results in input order."""
        from tqdm.auto import tqdm

        from ..surgery import kept_layers_from_mask
        from .prefix_sharing import PrefixSharingRunner, trie_order

        kept_sets = [kept_layers_from_mask(mask, self.num_layers) for mask in masks]
        runner: PrefixSharingRunner | None = None

        def run(kept: list[int]) -> MaskEvaluation:
            nonlocal runner
            if runner is None:  # the batches are read only when some mask is not cached
                runner = PrefixSharingRunner(
                    self.model, self.prepared_batches(), self.num_layers, references=self.references()
                )
            return runner(kept)

        results: list[MaskEvaluation | None] = [None] * len(masks)
        with tqdm(total=len(masks), desc=desc, unit="mask", disable=not self.show_progress) as progress:
            for index in trie_order(kept_sets, self.num_layers):
                results[index] = self._serve(kept_sets[index], run)
                progress.update(1)
        return results

    # ------------------------------------------------------------------------------------------------------------
    # several processes: the dealer (distributed.py) hands each process its share; results go through the cache

    def _evaluate_shares(self, kept_sets: list[list[int]], desc: str = "Evaluating layer masks") -> None:
        from tqdm.auto import tqdm

        keys = [kept_to_key(kept, self.num_layers) for kept in kept_sets]
        self.dealer.check_same_requests(keys)
        todo, queued = [], set()
        for kept, key in zip(kept_sets, keys):
            if key not in self.cache and key not in queued:
                queued.add(key)
                todo.append(kept)

        def record(gathered: list[MaskEvaluation]) -> None:
            for evaluation in gathered:
                self.cache.add(evaluation)
                self._fresh.add(evaluation.mask)

        with tqdm(total=len(todo), desc=desc, unit="mask", disable=not self.show_progress or not todo) as progress:
            self.num_run_here += self.dealer.run_shares(todo, self.run, record, progress)
