"""Held-out perplexity with the standard protocol: tokenize ``"\\n\\n".join(lines)``, cut it into non-overlapping
windows, weight every predicted token equally (the paper's WikiText-2 numbers use 128-token windows).

Models whose tokenizer prepends a BOS token (Gemma, for one) get it at the start of every window, as in training:
without it Gemma-3-270M's WikiText-2 perplexity reads about 8 times too high.

``perplexity(model, tokenizer, "wikitext2")`` names a corpus (``wikitext2``, ``ptb``, ``c4``: the Hub copies, or the
release files under ``data_dir``) or a local file (raw text, one line per line; ``.json``/``.jsonl`` with ``text``).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..architectures import context_length
from ..data import prepended_bos_id
from ..modes import eval_mode
from .losses import evaluate_batches, row_nll

__all__ = [
    "PERPLEXITY_SOURCES",
    "PerplexityReport",
    "PerplexityText",
    "load_perplexity_text",
    "perplexity",
    "perplexity_of_windows",
    "perplexity_report",
    "perplexity_windows",
    "read_raw_lines",
    "text_windows",
    "window_nll_sums",
]


def read_raw_lines(path: str | os.PathLike) -> list[str]:
    """Lines of a raw text file as ``datasets`` returns them (each keeps its newline)."""
    with open(path, encoding="utf-8") as f:
        return f.readlines()


def _stripped_lines(path: str | os.PathLike) -> list[str]:
    """Lines stripped of surrounding white space, as the Hub's ``ptb_text_only`` builder yields its ``sentence``."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f]


def _json_texts(path: str | os.PathLike, column: str = "text") -> list[str]:
    """The ``column`` of a ``.json`` file (a list, or an object holding one) or of a ``.jsonl(.gz)`` file; a malformed
    line is reported with the file and line number."""
    from ..data import _parse_json, _parse_jsonl

    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        content = f.read()
    stem = path[:-3] if path.endswith(".gz") else path
    if stem.endswith(".jsonl"):
        return _parse_jsonl(content, path, column)
    if content.lstrip().startswith("{"):  # one object, or (C4's shards, named .json) one object per line
        try:
            json.loads(content)
        except json.JSONDecodeError:
            return _parse_jsonl(content, path, column)
    return _parse_json(content, path, column)


@dataclass(frozen=True)
class PerplexityText:
    """A held-out corpus ready for windowing: its documents, how they are joined, and how much of it is used."""

    source: str  # what was read: a file path or a Hub dataset
    texts: list[str]
    separator: str = "\n\n"
    max_windows: int | None = None  # the corpus's own convention (C4: 256 windows), None = the whole text


@dataclass(frozen=True)
class _NamedCorpus:
    hub: tuple[str, str | None, str, str]  # dataset id, config, split, column
    files: tuple[str, ...]  # release file names under data_dir, tried in order
    reader: Callable[[str], list[str]]
    hub_files: dict[str, str] | None = None  # data_files for load_dataset (C4's validation shard)
    separator: str = "\n\n"
    max_documents: int | None = None
    max_windows: int | None = None


PERPLEXITY_SOURCES: dict[str, _NamedCorpus] = {
    # the lines of wiki.test.raw, each with its newline, exactly as the Hub's text column
    "wikitext2": _NamedCorpus(
        hub=("Salesforce/wikitext", "wikitext-2-raw-v1", "test", "text"),
        files=("wikitext-2-raw/wiki.test.raw", "wikitext-2-raw-v1/wiki.test.raw", "wiki.test.raw"),
        reader=read_raw_lines,
    ),
    # Mikolov's ptb.test.txt; the Hub's `sentence` is each line stripped
    "ptb": _NamedCorpus(
        hub=("ptb-text-only/ptb_text_only", "penn_treebank", "test", "sentence"),
        files=("ptb/ptb.test.txt", "ptb.test.txt"),
        reader=_stripped_lines,
    ),
    # SparseGPT/Wanda: the first 1,100 documents of allenai/c4's first English validation shard joined by a space,
    # first 256 windows
    "c4": _NamedCorpus(
        hub=("allenai/c4", None, "validation", "text"),
        hub_files={"validation": "en/c4-validation.00000-of-00008.json.gz"},
        files=(
            "c4/c4-validation.00000-of-00008.json.gz",
            "c4/c4-validation.00000-of-00008.json",
            "c4/en/c4-validation.00000-of-00008.json.gz",
            "c4/en/c4-validation.00000-of-00008.json",
        ),
        reader=_json_texts,
        separator=" ",
        max_documents=1100,
        max_windows=256,
    ),
}
"""Named held-out corpora: the Hub dataset (id, config, split, column), the release files looked for under a
``data_dir``, and the protocol each is reported with in the literature."""


def load_perplexity_text(text_source: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> PerplexityText:
    """Resolve ``text_source``: a name in ``PERPLEXITY_SOURCES`` (from ``data_dir`` when given, else the Hub) or a
    local file (``.json``/``.jsonl``/``.json.gz``: the ``text`` field of each record; anything else: raw text, one
    line per line, each keeping its newline as WikiText's)."""
    name = os.fspath(text_source)
    corpus = PERPLEXITY_SOURCES.get(name.lower())
    if corpus is not None:
        if data_dir is not None:
            path = _find_release_file(name.lower(), corpus, os.fspath(data_dir))
            texts, source = corpus.reader(path), path
        else:
            texts, source = _load_hub_corpus(corpus), "/".join(str(p) for p in corpus.hub[:3] if p)
        if corpus.max_documents is not None:
            texts = texts[: corpus.max_documents]
        return PerplexityText(source, texts, corpus.separator, corpus.max_windows)
    path = os.path.expanduser(name)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"perplexity text {name!r} is neither a known corpus ({', '.join(PERPLEXITY_SOURCES)}) nor an existing file"
        )
    if os.path.isdir(path):
        raise ValueError(f"perplexity text {name} is a folder: give a file, or a corpus name with data_dir={name}")
    lower = path.lower()
    texts = _json_texts(path) if lower.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")) else read_raw_lines(path)
    if not "".join(texts).strip():
        raise ValueError(f"perplexity text {path} is empty")
    return PerplexityText(path, texts)


def _find_release_file(name: str, corpus: _NamedCorpus, data_dir: str) -> str:
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data_dir {data_dir} is not a folder")
    for relative in corpus.files:
        path = os.path.join(data_dir, relative)
        if os.path.isfile(path):
            return path
    tried = ", ".join(corpus.files)
    raise FileNotFoundError(f"no {name} file under {data_dir}: looked for {tried}")


def _load_hub_corpus(corpus: _NamedCorpus) -> list[str]:
    import datasets

    path, config, split, column = corpus.hub
    try:
        dataset = datasets.load_dataset(path, config, split=split, data_files=corpus.hub_files)
    except Exception as error:  # network, auth, missing dataset: one clear line
        raise OSError(
            f"cannot load {path} ({config or 'default'}, {split}) from the Hugging Face Hub: "
            f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}; "
            "pass data_dir with the release files to work offline"
        ) from error
    return list(dataset[column])


def text_windows(
    tokenizer, lines: Sequence[str], window: int, max_tokens: int | None = None, separator: str = "\n\n"
) -> torch.LongTensor:
    """Non-overlapping ``window``-token blocks of ``separator.join(lines)``; with ``max_tokens``, only the blocks
    within the first ``max_tokens`` text tokens (a fixed prefix, for runs that cannot afford the whole set). When the
    tokenizer prepends BOS, each block is BOS + ``window - 1`` text tokens."""
    ids = tokenizer(separator.join(lines), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    bos = prepended_bos_id(tokenizer)
    span = window - 1 if bos is not None else window
    count = ids.numel() // span
    if count == 0:
        raise ValueError(f"the text has {ids.numel()} tokens, fewer than one {window}-token window")
    blocks = ids[: count * span].reshape(count, span)
    if bos is not None:
        blocks = torch.cat([torch.full((count, 1), bos, dtype=blocks.dtype), blocks], dim=1)
    return blocks


def perplexity_windows(
    tokenizer,
    text_source: str | os.PathLike | PerplexityText,
    seq_length: int = 128,
    *,
    max_windows: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> torch.LongTensor:
    """The windows ``perplexity`` scores (``len()`` of the result is the count used): the first ``max_windows``
    of the corpus's, further capped by its own convention (C4: 256)."""
    if seq_length < 2:
        raise ValueError(f"seq_length must be at least 2, got {seq_length}")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows must be at least 1, got {max_windows}")
    text = text_source if isinstance(text_source, PerplexityText) else load_perplexity_text(text_source, data_dir)
    caps = [cap for cap in (max_windows, text.max_windows) if cap is not None]
    max_tokens = None
    if caps:  # tokenize only what the windows need: 256 windows of C4 are a tiny share of 1,100 documents
        span = seq_length - (1 if prepended_bos_id(tokenizer) is not None else 0)
        max_tokens = min(caps) * span
    return text_windows(tokenizer, text.texts, seq_length, max_tokens=max_tokens, separator=text.separator)


def _window_batches(windows: torch.Tensor, batch_size: int, device, show_progress: bool = False):
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    starts = range(0, len(windows), batch_size)
    for start in tqdm(starts, desc="Perplexity", unit="batch", disable=not show_progress):
        chunk = windows[start : start + batch_size].to(device)
        yield {"input_ids": chunk, "attention_mask": torch.ones_like(chunk)}


def _window_nll(
    model: nn.Module, windows: torch.Tensor, batch_size: int = 8, show_progress: bool = False
) -> tuple[float, int]:
    device = next(model.parameters()).device
    with eval_mode(model):
        return evaluate_batches(model, _window_batches(windows, batch_size, device, show_progress))


def window_nll_sums(model: nn.Module, windows: torch.Tensor, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Each window's summed next-token NLL (float64) and target count, as ``perplexity_of_windows`` counts them:
    the data of a paired comparison (a bootstrap over windows) between two models on the same windows."""
    device = next(model.parameters()).device
    sums, counts = [], []
    with eval_mode(model), torch.no_grad():
        for batch in _window_batches(windows, batch_size, device):
            nll, count = row_nll(model, batch)
            sums.append(nll.cpu())
            counts.append(count.cpu())
    return torch.cat(sums).numpy(), torch.cat(counts).numpy()


def _ppl(mean_nll: float) -> float:
    return math.exp(mean_nll) if math.isfinite(mean_nll) else float("inf")


def perplexity_of_windows(model: nn.Module, windows: torch.Tensor, batch_size: int = 8) -> float:
    """Token-weighted perplexity of ``model`` over ``windows`` (each window predicts its own tokens 2..n)."""
    nll, tokens = _window_nll(model, windows, batch_size)
    return _ppl(nll / tokens)


@dataclass
class PerplexityReport:
    """One perplexity measurement and the protocol behind it."""

    perplexity: float
    mean_nll: float  # nats per predicted token
    num_tokens: int  # predicted tokens (windows x (seq_length - 1))
    num_windows: int
    seq_length: int
    source: str  # the file or Hub dataset read
    separator: str
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def perplexity_report(
    model: nn.Module,
    tokenizer,
    text_source: str | os.PathLike | PerplexityText,
    seq_length: int = 128,
    *,
    max_windows: int | None = None,
    batch_size: int = 8,
    data_dir: str | os.PathLike | None = None,
    show_progress: bool = False,
) -> PerplexityReport:
    """``perplexity`` with its protocol: windows, predicted tokens, what was read, and how long it took."""
    start = time.perf_counter()
    limit = context_length(model)
    if limit is not None and seq_length > limit:
        raise ValueError(f"seq_length {seq_length} exceeds the model's {limit} positions")
    text = text_source if isinstance(text_source, PerplexityText) else load_perplexity_text(text_source, data_dir)
    windows = perplexity_windows(tokenizer, text, seq_length, max_windows=max_windows)
    nll, tokens = _window_nll(model, windows, batch_size, show_progress)
    return PerplexityReport(
        perplexity=_ppl(nll / tokens),
        mean_nll=nll / tokens,
        num_tokens=tokens,
        num_windows=len(windows),
        seq_length=seq_length,
        source=text.source,
        separator=text.separator,
        seconds=time.perf_counter() - start,
    )


def perplexity(
    model: nn.Module,
    tokenizer,
    text_source: str | os.PathLike,
    seq_length: int = 128,
    *,
    max_windows: int | None = None,
    batch_size: int = 8,
    data_dir: str | os.PathLike | None = None,
) -> float:
    """Token-weighted perplexity of ``model`` on a held-out text, the protocol papers report.

    ``text_source``: ``"wikitext2"`` (WikiText-2 raw test), ``"ptb"`` (Penn Treebank test, Mikolov's split),
    ``"c4"`` (SparseGPT/Wanda's convention: the first 1,100 documents of allenai/c4's ``en`` validation shard 0,
    joined by a space, first 256 windows), each from the Hub, or from ``data_dir`` holding the release files
    (``wikitext-2-raw/wiki.test.raw``, ``ptb/ptb.test.txt``, ``c4/c4-validation.00000-of-00008.json[.gz]``); or a
    local file: raw text (one line per line) or ``.json``/``.jsonl`` records with a ``text`` field.

    The documents are joined with ``"\\n\\n"`` (C4: a space) and cut into non-overlapping ``seq_length``-token
    windows (BOS first where the tokenizer prepends it); ``max_windows`` keeps the first ones (a fixed prefix).
    Every predicted token weighs the same. ``perplexity_report`` also returns the window count and timing.
    """
    return perplexity_report(
        model, tokenizer, text_source, seq_length, max_windows=max_windows, batch_size=batch_size, data_dir=data_dir
    ).perplexity
