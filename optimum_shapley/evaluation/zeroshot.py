"""Zero-shot multiple-choice accuracy, scored as lm-evaluation-harness scores it.

Each choice is a (context, continuation) request; its score is the summed log-likelihood of the continuation's
tokens given the context. ``acc`` takes the highest score, ``acc_norm`` the highest score divided by the choice's
length in characters (lm-eval's ``completion_len``); standard errors are the sample standard deviation over items
divided by sqrt(n), lm-eval's ``mean_stderr``. Tokenization follows lm-eval's ``HFLM``: trailing spaces of the
context move to the continuation, the pair is encoded whole and split where the context's tokens end, BOS first when
the tokenizer prepends it, and the input is left-truncated to the model's length.

One forward pass per request: requests are sorted by length (longest first, little padding), right-padded, and only
the logits of continuation positions go through the LM head (``logits_to_keep``), which matters for large
vocabularies. ``backend="lm-eval"`` runs the harness itself on the same records (see ``lm_eval_backend``).
"""

from __future__ import annotations

import inspect
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import prepended_bos_id
from ..modes import eval_mode
from .tasks import MultipleChoiceItem, get_task, load_task_records

__all__ = [
    "BACKENDS",
    "loglikelihoods",
    "mean_stderr",
    "resolve_backend",
    "score_items",
    "score_tasks",
    "tokenize_request",
    "zero_shot",
]

BACKENDS = ("auto", "native", "lm-eval")
DEFAULT_MAX_LENGTH = 2048  # lm-eval's when the config states no limit


def tokenize_request(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval's ``HFLM._encode_pair`` makes them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    bos = prepended_bos_id(tokenizer)
    prefix = [bos] if bos is not None else []
    whole = prefix + list(tokenizer(context + continuation, add_special_tokens=False)["input_ids"])
    context_ids = prefix + list(tokenizer(context, add_special_tokens=False)["input_ids"])
    return context_ids, whole[len(context_ids) :]


def _max_length(model: nn.Module) -> int:
    from ..architectures import context_length

    return context_length(model) or DEFAULT_MAX_LENGTH


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def loglikelihoods(
    model: nn.Module,
    tokenizer: Any,
    requests: Sequence[tuple[str, str]],
    *,
    batch_size: int = 8,
    show_progress: bool = False,
    desc: str = "Scoring",
) -> list[float]:
    """Summed log-likelihood of each ``continuation`` given its ``context``, in the order of ``requests``."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    max_length = _max_length(model)
    encoded = []
    for context, continuation in requests:
        context_ids, continuation_ids = tokenize_request(tokenizer, context, continuation)
        tokens = (context_ids + continuation_ids)[-(max_length + 1) :]
        encoded.append((tokens[:-1], continuation_ids[-len(tokens) + 1 :] if continuation_ids else []))
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    device = next(model.parameters()).device
    keep_logits = _accepts(model, "logits_to_keep")
    results = [0.0] * len(encoded)
    progress = tqdm(total=len(order), desc=desc, unit="request", disable=not show_progress)
    with eval_mode(model), torch.no_grad(), progress as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = len(encoded[batch[0]][0])
            input_ids = torch.zeros(len(batch), width, dtype=torch.long)
            attention_mask = torch.zeros(len(batch), width, dtype=torch.long)
            for row, index in enumerate(batch):
                inputs = encoded[index][0]
                input_ids[row, : len(inputs)] = torch.tensor(inputs, dtype=torch.long)
                attention_mask[row, : len(inputs)] = 1
            # logits needed from the first continuation position of any row to the end of the longest row
            first = min(len(encoded[i][0]) - len(encoded[i][1]) for i in batch)
            kwargs = {"logits_to_keep": width - first} if keep_logits else {}
            logits = model(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False, **kwargs
            ).logits
            offset = width - logits.size(1)  # position of logits[:, 0] in the sequence
            log_probs = F.log_softmax(logits.float(), dim=-1)
            for row, index in enumerate(batch):
                inputs, targets = encoded[index]
                if not targets:
                    continue
                begin = len(inputs) - len(targets) - offset
                picked = log_probs[row, begin : begin + len(targets)]
                target = torch.tensor(targets, dtype=torch.long, device=picked.device)
                results[index] = float(picked.gather(-1, target[:, None]).sum(dtype=torch.float64))
            bar.update(len(batch))
    return results


def mean_stderr(values: Sequence[float]) -> float | None:
    """Sample standard deviation / sqrt(n), lm-eval's ``mean_stderr`` (None for fewer than 2 values)."""
    if len(values) < 2:
        return None
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=1) / math.sqrt(len(values)))


def score_items(items: Sequence[MultipleChoiceItem], scores: Sequence[Sequence[float]]) -> dict[str, Any]:
    """acc / acc_norm (and their standard errors) from each item's per-choice log-likelihoods.

    Ties go to the first choice (``np.argmax``), as in lm-eval."""
    if len(items) != len(scores):
        raise ValueError(f"{len(items)} items but {len(scores)} score lists")
    acc, acc_norm = [], []
    for item, lls in zip(items, scores):
        lls = np.asarray(lls, dtype=np.float64)
        if len(lls) != len(item.choices):
            raise ValueError(f"{len(item.choices)} choices but {len(lls)} scores")
        lengths = np.asarray([float(len(choice)) for choice in item.choices])
        acc.append(float(np.argmax(lls) == item.gold))
        acc_norm.append(float(np.argmax(lls / lengths) == item.gold))
    return {
        "acc": float(np.mean(acc)),
        "acc_stderr": mean_stderr(acc),
        "acc_norm": float(np.mean(acc_norm)),
        "acc_norm_stderr": mean_stderr(acc_norm),
        "num_items": len(items),
    }


def _native(model, tokenizer, task, records, *, batch_size: int, show_progress: bool) -> dict[str, Any]:
    items = [task.item(record) for record in records]
    requests = [request for item in items for request in item.requests]
    flat = loglikelihoods(
        model, tokenizer, requests, batch_size=batch_size, show_progress=show_progress, desc=task.name
    )
    scores, position = [], 0
    for item in items:
        scores.append(flat[position : position + len(item.choices)])
        position += len(item.choices)
    return score_items(items, scores)


def resolve_backend(backend: str) -> str:
    """``"auto"`` -> ``"lm-eval"`` when lm-evaluation-harness is installed, else ``"native"``."""
    from .lm_eval_backend import lm_eval_available

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "auto":
        return "lm-eval" if lm_eval_available() else "native"
    return backend


def score_tasks(
    model: nn.Module,
    tokenizer: Any,
    loaded: Mapping[str, tuple[list[dict[str, Any]], str]],
    *,
    batch_size: int = 8,
    backend: str = "auto",
    show_progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Score already loaded task records (task name -> (records, source)); see ``zero_shot``."""
    from .lm_eval_backend import lm_eval_zero_shot

    backend = resolve_backend(backend)
    results = {}
    for name, (records, source) in loaded.items():
        task = get_task(name)
        start = time.perf_counter()
        if backend == "lm-eval":
            metrics = lm_eval_zero_shot(model, tokenizer, task, records, batch_size=batch_size)
        else:
            metrics = _native(model, tokenizer, task, records, batch_size=batch_size, show_progress=show_progress)
        results[name] = {
            **metrics,
            "source": source,
            "backend": backend,
            "harness_metrics": list(task.harness_metrics),
            "seconds": time.perf_counter() - start,
        }
    return results


def zero_shot(
    model: nn.Module,
    tokenizer: Any,
    tasks: Sequence[str],
    *,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    backend: str = "auto",
    show_progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Zero-shot accuracy of ``model`` on ``tasks`` (boolq, piqa, hellaswag, winogrande, arc_easy, arc_challenge,
    openbookqa) with lm-evaluation-harness's prompts and scoring.

    Data: the release files under ``data_dir`` (``zeroshot/<task>/`` or ``<task>/``; see ``evaluation.tasks``), or
    the harness's Hub datasets when ``data_dir`` is None. ``limit`` keeps the first N items of each task.
    ``backend``: ``"native"`` (our scorer), ``"lm-eval"`` (the harness itself driving the in-memory model on the
    same records; ``pip install 'optimum-shapley[eval]'``), ``"auto"``: lm-eval when installed, else native (the two
    agree to float precision: tests/test_zeroshot.py).

    Returns ``{task: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "num_items", "source", "backend",
    "harness_metrics", "seconds"}}``; the standard errors are None for a single item.
    """
    if isinstance(tasks, str):
        tasks = [tasks]
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    specs = [get_task(name) for name in tasks]  # unknown names fail before any data is read
    loaded = {spec.name: load_task_records(spec, data_dir, limit) for spec in specs}  # bad data fails before scoring
    return score_tasks(model, tokenizer, loaded, batch_size=batch_size, backend=backend, show_progress=show_progress)
