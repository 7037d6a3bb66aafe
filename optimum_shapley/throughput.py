"""What pruning buys, measured: prefill and decode speed, memory and parameters, dense against pruned.

Depth pruning helps most in KV-cached decoding (every removed layer is one less block per generated token and one
less layer of cache), so both phases are timed separately on the same random prompt: the prefill is one forward pass
over ``prompt_tokens`` tokens that fills the cache; decoding then feeds one token at a time through the cache for
``decode_tokens`` steps. Times are medians over ``repeats`` after one warm-up; memory is what the tensors hold
(weights, and the KV cache after decoding), plus the CUDA allocator's peak when the model is on a GPU.
"""

from __future__ import annotations

import inspect
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .modes import eval_mode

__all__ = ["SpeedReport", "measure_speed", "speed_comparison", "speed_summary"]


@dataclass
class SpeedReport:
    """One model's speed and size on this machine."""

    parameters: int
    weight_bytes: int
    kv_cache_bytes: int  # the cache after prefill + decode (keys and values, or a state-space model's states)
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    prompt_tokens: int
    decode_tokens: int
    batch_size: int
    repeats: int
    device: str
    dtype: str
    peak_memory_bytes: int | None = None  # CUDA max allocated during the measurement (None on CPU)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tensor_bytes(value: Any, seen: set[int] | None = None) -> int:
    """Bytes of every distinct tensor reachable in a cache object: a transformers ``Cache`` (its layers' keys and
    values, or a state-space model's conv and ssm states), or nested tuples, lists and dicts of tensors."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in value)
    if isinstance(value, dict):
        return sum(_tensor_bytes(v, seen) for v in value.values())
    if hasattr(value, "__dict__") and not isinstance(value, (nn.Module, type)):
        return sum(_tensor_bytes(v, seen) for v in vars(value).values())
    return 0


def _vocab_size(model: nn.Module) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(getattr(config, "vocab_size", 0) or model.get_output_embeddings().weight.shape[0])


@torch.no_grad()
def measure_speed(
    model: nn.Module,
    *,
    prompt_tokens: int = 128,
    decode_tokens: int = 32,
    batch_size: int = 1,
    repeats: int = 3,
    seed: int = 0,
) -> SpeedReport:
    """Prefill and KV-cached decode throughput of ``model`` on a seeded random prompt, with its size."""
    if prompt_tokens < 1 or decode_tokens < 1 or batch_size < 1 or repeats < 1:
        raise ValueError("prompt_tokens, decode_tokens, batch_size and repeats must be at least 1")
    parameter = next(model.parameters())
    device = parameter.device
    generator = torch.Generator().manual_seed(seed)
    vocab = _vocab_size(model)
    prompt = torch.randint(3, max(vocab, 4), (batch_size, prompt_tokens), generator=generator).to(device)
    steps = torch.randint(3, max(vocab, 4), (decode_tokens, batch_size, 1), generator=generator).to(device)
    cuda = device.type == "cuda"

    cache_keyword = _cache_keyword(model)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def one_run() -> tuple[float, float, Any]:
        sync()
        start = time.perf_counter()
        out = model(input_ids=prompt, use_cache=True)
        sync()
        prefill = time.perf_counter() - start
        cache = _returned_cache(out)
        start = time.perf_counter()
        for token in steps:
            cache = _returned_cache(model(input_ids=token, use_cache=True, **{cache_keyword: cache}))
        sync()
        return prefill, time.perf_counter() - start, cache

    with eval_mode(model):
        one_run()  # warm-up: allocator, kernels, caches
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        runs = [one_run() for _ in range(repeats)]
        peak = int(torch.cuda.max_memory_allocated(device)) if cuda else None
    prefill = statistics.median(r[0] for r in runs)
    decode = statistics.median(r[1] for r in runs)
    return SpeedReport(
        parameters=sum(p.numel() for p in model.parameters()),
        weight_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        kv_cache_bytes=_tensor_bytes(runs[-1][2]),
        prefill_tokens_per_s=batch_size * prompt_tokens / prefill,
        decode_tokens_per_s=batch_size * decode_tokens / decode,
        prompt_tokens=prompt_tokens,
        decode_tokens=decode_tokens,
        batch_size=batch_size,
        repeats=repeats,
        device=str(device),
        dtype=str(parameter.dtype).replace("torch.", ""),
        peak_memory_bytes=peak,
    )


def speed_comparison(dense: SpeedReport, pruned: SpeedReport) -> dict[str, Any]:
    """Both reports and the ratios pruned / dense (speed up > 1, sizes < 1), for the result and the card."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return (b / a) if a and b is not None else None

    return {
        "dense": dense.to_dict(),
        "pruned": pruned.to_dict(),
        "prefill_speedup": ratio(dense.prefill_tokens_per_s, pruned.prefill_tokens_per_s),
        "decode_speedup": ratio(dense.decode_tokens_per_s, pruned.decode_tokens_per_s),
        "parameter_ratio": ratio(dense.parameters, pruned.parameters),
        "kv_cache_ratio": ratio(dense.kv_cache_bytes, pruned.kv_cache_bytes),
        "peak_memory_ratio": ratio(dense.peak_memory_bytes, pruned.peak_memory_bytes),
    }


def _mb(value: float) -> str:
    return f"{value / 2**20:.1f} MB"


def speed_summary(speed: dict[str, Any]) -> list[tuple[str, str]]:
    """Summary rows (label, value) of a ``speed_comparison``; empty when no speed was measured."""
    if not speed:
        return []
    dense, pruned = speed["dense"], speed["pruned"]
    setup = (
        f"{dense['device']}, {dense['dtype']}, batch {dense['batch_size']}, {dense['prompt_tokens']}-token prompt, "
        f"{dense['decode_tokens']} decoded tokens, median of {dense['repeats']}"
    )
    rows = [
        (
            "prefill (dense -> pruned)",
            f"{dense['prefill_tokens_per_s']:,.0f} -> {pruned['prefill_tokens_per_s']:,.0f} tokens/s "
            f"({speed['prefill_speedup']:.2f}x)",
        ),
        (
            "decode, KV-cached",
            f"{dense['decode_tokens_per_s']:,.1f} -> {pruned['decode_tokens_per_s']:,.1f} tokens/s "
            f"({speed['decode_speedup']:.2f}x)",
        ),
        (
            "parameters",
            f"{dense['parameters'] / 1e6:,.1f}M -> {pruned['parameters'] / 1e6:,.1f}M ({speed['parameter_ratio']:.3f}x); "
            f"weights {_mb(dense['weight_bytes'])} -> {_mb(pruned['weight_bytes'])}",
        ),
        ("cache after decoding", f"{_mb(dense['kv_cache_bytes'])} -> {_mb(pruned['kv_cache_bytes'])}"),
    ]
    if dense.get("peak_memory_bytes") and pruned.get("peak_memory_bytes"):
        rows.append(("peak CUDA memory", f"{_mb(dense['peak_memory_bytes'])} -> {_mb(pruned['peak_memory_bytes'])}"))
    rows.append(("speed measured on", setup))
    return rows


def _cache_keyword(model: torch.nn.Module) -> str:
    """``cache`` on Transformers releases that renamed ``past_key_values`` (5.24 warns on the old name), else the old."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _returned_cache(output: Any) -> Any:
    """The KV cache a forward returned, under its new name (``cache``) when the output has it."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
