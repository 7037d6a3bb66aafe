"""What a layer mask is worth: token-weighted calibration loss, its utility, and a persistent cache of both.

Evaluating a mask (a forward pass over the calibration set) is the whole cost of the method, so every result is
appended to ``mask_evaluations.jsonl`` as soon as it exists, keyed by the mask and by a fingerprint of the model,
the calibration tokens and what was measured. A second run, or a run after an interruption, reads it back and never
evaluates a cached mask again. The raw token NLL is stored, so switching between utilities reuses the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..sampling import mask_to_key

__all__ = [
    "CACHE_FILE_NAME",
    "MEASURE",
    "CorruptCacheError",
    "MaskEvaluation",
    "MaskEvaluationCache",
    "MaskEvaluator",
    "evaluate_batches",
    "model_fingerprint",
    "DenseReference",
    "OBJECTIVES",
    "measure_name",
    "run_fingerprint",
    "token_losses",
    "token_nll",
    "utilities_from_nll",
]

logger = logging.getLogger(__name__)

CACHE_FILE_NAME = "mask_evaluations.jsonl"
MEASURE = "token_nll/v1"
"""What a cached number means: the summed next-token negative log-likelihood over non-padding target tokens."""

OBJECTIVES = ("nll", "kl")
"""What the search minimises per token: the calibration NLL, or the KL divergence from the dense model's
next-token distribution (EvoPress's fitness: it compares whole distributions, not one sampled token)."""

DEFAULT_KL_TOP_K = 128
"""Dense probabilities kept per token for the KL: the top k and the remaining mass (exact KL of the coarsened
distributions, a lower bound of the full KL); 128 of SmolLM2's 49k tokens hold all but a few percent of the mass."""


def measure_name(objective: str = "nll", kl_top_k: int = DEFAULT_KL_TOP_K) -> str:
    """The cache's name for what is measured: NLL only, or NLL and top-``k`` KL to the dense model."""
    if objective == "nll":
        return MEASURE
    if objective == "kl":
        return f"token_nll+kl_top{int(kl_top_k)}/v1"
    raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")


@dataclass(frozen=True)
class MaskEvaluation:
    """One real-model evaluation of a mask: summed next-token NLL and the number of tokens it covers."""

    mask: str  # "1101...": layer 0 first, 1 = kept
    nll_sum: float  # may be inf or nan for a broken model: kept, never dropped
    num_tokens: int
    seconds: float = 0.0
    kl_sum: float | None = None  # summed KL from the dense model's next-token distribution, when measured

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.num_tokens if self.num_tokens else float("nan")

    @property
    def mean_kl(self) -> float:
        if self.kl_sum is None or not self.num_tokens:
            return float("nan")
        return self.kl_sum / self.num_tokens

    @property
    def perplexity(self) -> float:
        mean = self.mean_nll
        if not math.isfinite(mean):
            return float("inf")
        return math.exp(min(mean, 700.0))


def token_nll(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[float, int]:
    """Summed next-token NLL (float64) and target-token count of one batch; padding is excluded via attention_mask.

    The targets are shifted instead of the logits: slicing ``logits[:, :-1]`` and flattening it copies the whole
    (batch, length, vocab) tensor, which costs more than the forward pass itself on a large vocabulary (measured
    4.6 s against 0.8 s for 10 x 128 tokens and Gemma-3's 262k vocabulary)."""
    input_ids = batch["input_ids"]
    attention_mask = batch.get("attention_mask")
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    logits = outputs.logits.float()
    targets = torch.full_like(input_ids, -100)
    targets[:, :-1] = input_ids[:, 1:]
    if attention_mask is not None:
        targets[:, :-1][attention_mask[:, 1:] == 0] = -100
    losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    return float(losses.sum(dtype=torch.float64)), int((targets != -100).sum())


@dataclass
class DenseReference:
    """The dense model's next-token distribution on one calibration batch, coarsened to its top ``k`` tokens plus
    the remaining mass: what the KL objective compares every mask against (a few MB, not batch x length x vocab)."""

    indices: torch.Tensor  # (B, T, k) long: the dense model's k most likely next tokens
    log_probs: torch.Tensor  # (B, T, k) float64: their log-probabilities
    log_rest: torch.Tensor  # (B, T) float64: log of the remaining probability mass


def _log_rest(log_top: torch.Tensor) -> torch.Tensor:
    """log(1 - sum(exp(log_top))) along the last axis, accurate when the top mass is close to 1."""
    top = torch.logsumexp(log_top, dim=-1).clamp(max=-1e-12)
    return torch.log(-torch.expm1(top))


def token_losses(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    reference: DenseReference | None = None,
    *,
    kl_top_k: int | None = None,
) -> tuple[float, float | None, int, DenseReference | None]:
    """One forward pass: summed next-token NLL, summed KL from ``reference`` (None without one), target-token count,
    and, with ``kl_top_k``, this model's own coarsened distribution (the reference, when the model is the dense one).

    NLL and KL come from the same logits without a second (batch, length, vocab) copy: ``logsumexp`` once, then
    gathers; the targets are shifted instead of the logits (slicing and flattening the logits copies the whole tensor,
    4.6 s against 0.8 s for 10 x 128 tokens and Gemma-3's 262k vocabulary)."""
    input_ids = batch["input_ids"]
    attention_mask = batch.get("attention_mask")
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
    valid = torch.zeros_like(input_ids, dtype=torch.bool)
    valid[:, :-1] = True
    if attention_mask is not None:
        valid[:, :-1] &= attention_mask[:, 1:] != 0
    targets = torch.zeros_like(input_ids)
    targets[:, :-1] = input_ids[:, 1:]
    lse = torch.logsumexp(logits, dim=-1)  # (B, T)
    target_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    nll = (lse - target_logit).double()
    count = int(valid.sum())
    nll_sum = float(nll[valid].sum())
    kl_sum = None
    if reference is not None:
        log_q = (logits.gather(-1, reference.indices) - lse.unsqueeze(-1)).double()
        log_q_rest = _log_rest(log_q)
        p = reference.log_probs.exp()
        p_rest = reference.log_rest.exp()
        kl = (p * (reference.log_probs - log_q)).sum(-1) + p_rest * (reference.log_rest - log_q_rest)
        kl_sum = float(kl.clamp(min=0.0)[valid].sum())
    own = None
    if kl_top_k is not None:
        top, indices = logits.topk(min(int(kl_top_k), logits.size(-1)), dim=-1)
        log_top = (top - lse.unsqueeze(-1)).double()
        own = DenseReference(indices, log_top, _log_rest(log_top))
    return nll_sum, kl_sum, count, own


def utilities_from_nll(mean_nll: Iterable[float], full_mean_nll: float, utility: str) -> np.ndarray:
    """Utility of each mask from its mean token NLL and the full model's.

    ``log_ppl_ratio`` = ``log(ppl(full) / ppl(mask))`` = ``nll(full) - nll(mask)``; ``ppl_ratio`` = the paper's
    ``ppl(full) / ppl(mask)``; ``kl`` = minus the mean KL from the dense model (pass mean KLs, and 0 for the full
    model: the same difference as the log ratio, on another loss). A non-finite loss (a mask that breaks the model)
    gets the worst utility: 0 for the ratio, the lowest finite value seen otherwise. It stays aligned with its mask.
    """
    nll = np.asarray(list(mean_nll), dtype=np.float64)
    if not math.isfinite(full_mean_nll):
        raise ValueError(f"the full model's calibration loss is not finite ({full_mean_nll}); check the model and data")
    finite = np.isfinite(nll)
    if utility in ("log_ppl_ratio", "kl"):
        values = np.where(finite, full_mean_nll - np.where(finite, nll, 0.0), np.nan)
        worst = values[finite].min() if finite.any() else -1e3
        return np.where(finite, values, worst)
    if utility == "ppl_ratio":
        return np.where(finite, np.exp(np.clip(full_mean_nll - np.where(finite, nll, 0.0), -700, 700)), 0.0)
    raise ValueError(f"unknown utility {utility!r}")


def model_fingerprint(model: nn.Module) -> str:
    """Identify a model's weights cheaply: class, config, and a strided sample of every parameter.

    Hashing every byte of a 70B model would take minutes; a few thousand values per tensor plus shapes and the
    config tell apart any two checkpoints in practice. Offloaded (meta) tensors contribute their shape only.
    """
    digest = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None:
        config_dict = config.to_dict()
        for key in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache"):
            config_dict.pop(key, None)
        digest.update(json.dumps(config_dict, sort_keys=True, default=str).encode())
    for name, param in model.named_parameters():
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
        if param.device.type == "meta" or param.numel() == 0:
            continue
        flat = param.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        digest.update(flat[::step].float().cpu().numpy().tobytes())
    return digest.hexdigest()


def run_fingerprint(model_fp: str, calibration_fp: str, measure: str = MEASURE) -> str:
    """The cache key shared by all masks of one (model, calibration data, measurement)."""
    return hashlib.sha256(f"{model_fp}|{calibration_fp}|{measure}".encode()).hexdigest()[:32]


class CorruptCacheError(ValueError):
    """A mask-evaluation cache with an unreadable record before its last line: damage, not an interrupted write."""


def _parse_record(raw: bytes, fingerprint: str) -> MaskEvaluation | None:
    """One cache line -> its evaluation, None for a blank line or another fingerprint; ValueError if unreadable."""
    text = raw.decode("utf-8")
    if not text.strip():
        return None
    try:
        record = json.loads(text)
        if record.get("fingerprint") != fingerprint:
            return None
        nll = record["nll_sum"]
        mask = record["mask"]
        if not isinstance(mask, str) or not mask or set(mask) - {"0", "1"}:
            raise ValueError(f"bad mask {mask!r}")
        kl = record.get("kl_sum")
        return MaskEvaluation(
            mask=mask,
            nll_sum=float(nll) if nll is not None else float(record.get("nll_repr", "nan")),
            num_tokens=int(record["num_tokens"]),
            seconds=float(record.get("seconds", 0.0)),
            kl_sum=float(kl) if kl is not None else (float(record["kl_repr"]) if record.get("kl_repr") else None),
        )
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(str(error)) from error


class MaskEvaluationCache:
    """Append-only JSON-lines store of mask evaluations for one fingerprint.

    Each evaluation is one line, flushed and fsync'ed when written, so a killed run loses at most the mask it was
    evaluating. An unreadable *last* line is a record cut off by a crash: it is skipped and cut from the file before
    the next append. An unreadable line anywhere else means the file was damaged or edited: loading refuses it with
    ``CorruptCacheError`` instead of silently re-evaluating (or trusting) what is around it. Lines of other
    fingerprints are kept in the file but ignored. With ``persist=False`` (the non-main processes of a distributed
    run) evaluations are only held in memory; the main process writes the one file.
    """

    def __init__(self, directory: str | os.PathLike, fingerprint: str, *, persist: bool = True):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, CACHE_FILE_NAME)
        self.fingerprint = fingerprint
        self.persist = persist
        self._records: dict[str, MaskEvaluation] = {}
        self.skipped_lines = 0
        self._truncate_to: int | None = None  # where a cut-off last record starts, removed before the next append
        self._load()

    def _load(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as f:
            data = f.read()
        lines = data.splitlines(keepends=True)
        end = 0
        for number, raw in enumerate(lines, 1):
            start, end = end, end + len(raw)
            try:
                evaluation = _parse_record(raw, self.fingerprint)
            except ValueError as error:
                if end < len(data):
                    raise CorruptCacheError(
                        f"the mask-evaluation cache {self.path} is corrupt at line {number} of {len(lines)} "
                        f"({type(error).__name__}: {str(error).splitlines()[0][:80]}); this is not a record cut off "
                        f"by a crash (only the last line can be): delete line {number} to keep the other records, or "
                        "delete the file to evaluate every mask again"
                    ) from error
                self.skipped_lines += 1
                self._truncate_to = start
                break
            if evaluation is not None:
                self._records[evaluation.mask] = evaluation
        if self.skipped_lines:
            logger.warning("Skipped a record cut off by an interrupted write at the end of %s.", self.path)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, mask: str) -> bool:
        return mask in self._records

    def get(self, mask: str) -> MaskEvaluation | None:
        return self._records.get(mask)

    def evaluations(self) -> list[MaskEvaluation]:
        """Every evaluation held for this fingerprint, in the order first seen."""
        return list(self._records.values())

    def remember(self, evaluations: Iterable[MaskEvaluation]) -> None:
        """Hold evaluations in memory without writing them (another process owns the file)."""
        for evaluation in evaluations:
            self._records[evaluation.mask] = evaluation

    def add(self, evaluation: MaskEvaluation) -> None:
        """Append one evaluation durably (in memory only when ``persist`` is off)."""
        if not self.persist:
            self._records[evaluation.mask] = evaluation
            return
        os.makedirs(self.directory, exist_ok=True)
        if self._truncate_to is not None:
            with open(self.path, "r+b") as f:  # drop the record a crash cut off, so the file stays all records
                f.truncate(self._truncate_to)
                f.flush()
                os.fsync(f.fileno())
            self._truncate_to = None
        finite = math.isfinite(evaluation.nll_sum)
        record = {
            "fingerprint": self.fingerprint,
            "mask": evaluation.mask,
            "nll_sum": evaluation.nll_sum if finite else None,
            "nll_repr": None if finite else repr(evaluation.nll_sum),
            "num_tokens": evaluation.num_tokens,
            "seconds": round(evaluation.seconds, 4),
        }
        if evaluation.kl_sum is not None:
            kl_finite = math.isfinite(evaluation.kl_sum)
            record["kl_sum"] = evaluation.kl_sum if kl_finite else None
            record["kl_repr"] = None if kl_finite else repr(evaluation.kl_sum)
        line = json.dumps(record) + "\n"
        needs_newline = False
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"  # a whole last record that lost its newline
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(("\n" if needs_newline else "") + line)
            f.flush()
            os.fsync(f.fileno())
        self._records[evaluation.mask] = evaluation


def evaluate_batches(
    model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], prepare: Callable | None = None
) -> tuple[float, int]:
    """Token-weighted NLL over an iterable of batches (``prepare`` moves a batch to the model's device)."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            if prepare is not None:
                batch = prepare(batch)
            nll, count = token_nll(model, batch)
            total += nll
            tokens += count
    return total, tokens


def evaluate_losses(
    model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], references: list[DenseReference] | None
) -> tuple[float, float | None, int]:
    """Summed NLL, summed KL (None without ``references``, one per batch) and target tokens over ``batches``."""
    nll_total, kl_total, tokens = 0.0, 0.0, 0
    with torch.no_grad():
        for index, batch in enumerate(batches):
            nll, kl, count, _ = token_losses(model, batch, references[index] if references is not None else None)
            nll_total += nll
            kl_total += kl or 0.0
            tokens += count
    return nll_total, (kl_total if references is not None else None), tokens


def _key(kept: Iterable[int], num_layers: int) -> str:
    return mask_to_key(np.isin(np.arange(num_layers), list(kept)))


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
    set, for re-scoring the few best sets (multi-fidelity verification).
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
        share_prefixes: bool = True,
        objective: str = "nll",
        kl_top_k: int = DEFAULT_KL_TOP_K,
        verifier: MaskEvaluator | None = None,
    ):
        from ..masking import num_decoder_layers

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
        # several processes (accelerate launch): each evaluates its share, results go through the cache
        self.accelerator = accelerator if cache is not None and getattr(accelerator, "num_processes", 1) > 1 else None
        self._fresh: set[str] = set()  # evaluated by some process during this run, not yet counted
        self._in_batch = False
        if self.accelerator is not None:
            self._share_cache()

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
            was_training = self.model.training
            self.model.eval()
            references, nll_total, tokens = [], 0.0, 0
            try:
                with torch.no_grad():
                    for batch in self.prepared_batches():
                        nll, _, count, own = token_losses(self.model, batch, kl_top_k=self.kl_top_k)
                        references.append(own)
                        nll_total += nll
                        tokens += count
            finally:
                self.model.train(was_training)
            self._references = references
            full = MaskEvaluation(full_key, nll_total, tokens, time.perf_counter() - start, kl_sum=0.0)
            if self.cache is not None and full_key in self.cache:
                # the full model's numbers come from the cache (counted so), the pass only rebuilt the reference
                self.reference_passes += 1
                if full_key not in self._seen:
                    self.requests.append(full_key)
                    self._seen.add(full_key)
                    self.num_cached += 1
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
        return self._references

    def prepared_batches(self) -> Iterable[Mapping[str, torch.Tensor]]:
        for batch in self.batches():
            yield self.prepare(batch) if self.prepare is not None else batch

    def __call__(self, keep: Iterable[int] | np.ndarray) -> MaskEvaluation:
        """Evaluation of the model keeping ``keep`` (indices, or a boolean mask over all layers)."""
        from ..masking import kept_layers_from_mask

        kept = kept_layers_from_mask(keep, self.num_layers)
        self.references()  # the dense reference first: its pass is the full model's evaluation
        if self.accelerator is not None and not self._in_batch:
            self._evaluate_shares([kept])  # one process evaluates it, all get the same numbers
        key = _key(kept, self.num_layers)
        repeated = key in self._seen
        self.requests.append(key)
        self._seen.add(key)
        if self.cache is not None and key in self.cache:
            if key in self._fresh:
                self._fresh.discard(key)
                self.num_run += 1
            else:
                self.num_cached += 0 if repeated else 1
            return self.cache.get(key)
        dense = self._dense_evaluation
        if dense is not None and key == dense.mask:
            return dense  # counted when the reference pass ran
        evaluation = self.run(kept)
        self.num_run_here += 1
        if self.cache is not None:
            self.cache.add(evaluation)
        self.num_run += 1
        return evaluation

    def forward(self, kept: list[int]) -> MaskEvaluation:
        """One real evaluation (no cache): token-weighted NLL of the model with only ``kept`` layers."""
        from ..masking import LayerMask

        references = self.references()
        start = time.perf_counter()
        was_training = self.model.training
        self.model.eval()
        try:
            with LayerMask(self.model, kept):
                nll, kl, tokens = evaluate_losses(self.model, self.prepared_batches(), references)
        finally:
            self.model.train(was_training)
        return MaskEvaluation(_key(kept, self.num_layers), nll, tokens, time.perf_counter() - start, kl_sum=kl)

    def evaluate_all(self, masks: Iterable[Iterable[int] | np.ndarray], desc: str = "Evaluating layer masks"):
        """Evaluate many masks with a progress bar (ETA); cached ones are served without a forward pass."""
        from tqdm.auto import tqdm

        masks = list(masks)
        self.references()
        if self.accelerator is not None:
            from ..masking import kept_layers_from_mask

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

        from ..masking import kept_layers_from_mask
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
        self.run = run
        try:
            with tqdm(total=len(masks), desc=desc, unit="mask", disable=not self.show_progress) as progress:
                for index in trie_order(kept_sets, self.num_layers):
                    results[index] = self(kept_sets[index])
                    progress.update(1)
        finally:
            self.run = self.forward
        return results

    # ------------------------------------------------------------------------------------------------------------
    # several processes: every process runs the same criterion code in lockstep and asks for the same masks; the
    # uncached ones are dealt out round-robin, one per process per round, and every round's results are gathered to
    # all processes, so all of them hold identical evaluations (and make identical choices) while only the main
    # process appends to the cache file, flushed after every round: a killed run loses at most one round.

    def _share_cache(self) -> None:
        """Give every process the main process's cache, so all agree on what is cached (no shared disk needed)."""
        from accelerate.utils import broadcast_object_list

        main = self.accelerator.is_main_process
        if not main:
            self.cache.persist = False  # one writer: the main process
        payload = [self.cache.evaluations() if main else None]
        broadcast_object_list(payload, from_process=0)
        if not main:
            self.cache.remember(payload[0])

    def _evaluate_shares(self, kept_sets: list[list[int]], desc: str = "Evaluating layer masks") -> None:
        from accelerate.utils import gather_object
        from tqdm.auto import tqdm

        keys = [_key(kept, self.num_layers) for kept in kept_sets]
        digests = gather_object([hashlib.sha256("|".join(keys).encode()).hexdigest()])
        if len(set(digests)) > 1:
            raise RuntimeError(
                "the processes asked for different layer masks: their selections diverged (a model, data or "
                "library difference between them); run every process with the same model, data and versions"
            )
        todo, queued = [], set()
        for kept, key in zip(kept_sets, keys):
            if key not in self.cache and key not in queued:
                queued.add(key)
                todo.append(kept)
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        with tqdm(total=len(todo), desc=desc, unit="mask", disable=not self.show_progress or not todo) as progress:
            for start in range(0, len(todo), world):
                mine = []
                if start + rank < len(todo):
                    mine.append(self.run(todo[start + rank]))
                    self.num_run_here += 1
                gathered = gather_object(mine)
                for evaluation in gathered:
                    self.cache.add(evaluation)
                    self._fresh.add(evaluation.mask)
                progress.update(len(gathered))
