"""Dealing mask evaluations over the processes of an ``accelerate launch``: the evaluator's distribution strategy.

Every process runs the same criterion code in lockstep and asks for the same masks. The uncached ones are dealt out
round-robin, one per process per round, and every round's results are gathered to all processes, so all of them
hold identical evaluations (and make identical choices) while only the main process appends to the cache file,
flushed after every round: a killed run loses at most one round. ``MaskEvaluator`` takes a dealer (or builds one
from an ``accelerator``); without one, every mask runs in this process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from .cache import MaskEvaluation, MaskEvaluationCache

__all__ = ["ProcessDealer"]


class ProcessDealer:
    """Deals uncached masks over ``accelerator``'s processes and gathers the results to all of them."""

    def __init__(self, accelerator: Any):
        self.accelerator = accelerator

    def share_cache(self, cache: MaskEvaluationCache) -> None:
        """Give every process the main process's cache, so all agree on what is cached (no shared disk needed)."""
        from accelerate.utils import broadcast_object_list

        main = self.accelerator.is_main_process
        if not main:
            cache.persist = False  # one writer: the main process
        payload = [cache.evaluations() if main else None]
        broadcast_object_list(payload, from_process=0)
        if not main:
            cache.remember(payload[0])

    def check_same_requests(self, keys: list[str]) -> None:
        """Refuse to go on when the processes asked for different masks: their selections diverged."""
        from accelerate.utils import gather_object

        digests = gather_object([hashlib.sha256("|".join(keys).encode()).hexdigest()])
        if len(set(digests)) > 1:
            raise RuntimeError(
                "the processes asked for different layer masks: their selections diverged (a model, data or "
                "library difference between them); run every process with the same model, data and versions"
            )

    def run_shares(
        self,
        todo: list[list[int]],
        run: Callable[[list[int]], MaskEvaluation],
        on_round: Callable[[list[MaskEvaluation]], None],
        progress: Any = None,
    ) -> int:
        """Run this process's share of ``todo`` (kept sets, in the same order on every process); ``on_round`` gets
        each round's gathered evaluations. Returns how many ran here."""
        from accelerate.utils import gather_object

        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        ran_here = 0
        for start in range(0, len(todo), world):
            mine = []
            if start + rank < len(todo):
                mine.append(run(todo[start + rank]))
                ran_here += 1
            gathered = gather_object(mine)
            on_round(gathered)
            if progress is not None:
                progress.update(len(gathered))
        return ran_here
