"""The persistent record of mask evaluations: one fsync'd JSONL line per evaluation, keyed by the mask and by a
fingerprint of the model, the calibration tokens and what was measured.

Evaluating a mask is the whole cost of the method, so every result is appended as soon as it exists; a second run,
or a run after an interruption, reads it back and never evaluates a cached mask again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from .losses import MEASURE

__all__ = [
    "CACHE_FILE_NAME",
    "CorruptCacheError",
    "MaskEvaluation",
    "MaskEvaluationCache",
    "model_fingerprint",
    "run_fingerprint",
]

logger = logging.getLogger(__name__)

CACHE_FILE_NAME = "mask_evaluations.jsonl"


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
