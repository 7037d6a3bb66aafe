"""Calibration data: turn a text source into the ``num_samples x seq_length`` token blocks every layer mask is scored on.

Each candidate layer mask is evaluated by the model's loss on these blocks, so they must be cheap to build, identical
for identical inputs (the scores of different masks are only comparable on the same data) and identifiable (a cache of
scores is keyed by :meth:`CalibrationDataset.fingerprint`). The default source is English text that ships inside
CPython's standard library, so a first run needs neither a network nor a download.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

__all__ = [
    "EMBEDDED_SOURCE",
    "SUPPORTED_SUFFIXES",
    "CalibrationDataError",
    "CalibrationDataset",
    "build_calibration_dataset",
    "load_texts",
    "tokenize_blocks",
]

# General English web text shipped in the package (100 C4 documents, ODC-BY 1.0: calibration_data/README.md holds the
# attribution): always present, no network, no download.
EMBEDDED_SOURCE = "embedded"
EMBEDDED_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calibration_data", "c4_en_sample.jsonl")
EMBEDDED_DESCRIPTION = "embedded (100 C4 English documents, ODC-BY 1.0)"

# Local file formats that load_texts reads; anything else is refused with this list in the message.
SUPPORTED_SUFFIXES = (".txt", ".json", ".jsonl", ".parquet")

# Documents are joined with this separator in the token stream, so a block that spans two documents sees a boundary.
DOCUMENT_SEPARATOR = "\n\n"

# "owner/name": the shape of a Hub dataset id, which would otherwise look like a relative path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# A blank line (possibly holding spaces or tabs) ends a paragraph in a .txt file.
_BLANK_LINES = re.compile(r"\r?\n(?:[ \t]*\r?\n)+")
# Keys of a JSON object that conventionally hold the records, tried when the object holds several lists.
_RECORD_KEYS = ("data", "rows", "records", "examples", "documents", "texts")
# Documents a streamed Hub dataset holds in its shuffle buffer (datasets' IterableDataset.shuffle): the blocks are
# drawn from about this many documents past the first ones of the (shard-shuffled) stream.
DEFAULT_SHUFFLE_BUFFER_SIZE = 10_000


class CalibrationDataError(ValueError):
    """The calibration source cannot be turned into token blocks; the message says why in one line."""


# --------------------------------------------------------------------------------------------------------- loading


def load_texts(
    source: str | os.PathLike[str] | None = None,
    *,
    dataset_config_name: str | None = None,
    split: str = "train",
    text_column: str = "text",
    streaming: bool = False,
    seed: int = 0,
    shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER_SIZE,
) -> list[str] | Iterator[str]:
    """Return the non-empty documents of ``source``, in a deterministic order.

    ``source`` is ``None``/``"embedded"`` (the packaged C4 sample), a local ``.txt``/``.json``/``.jsonl``/``.parquet`` file, or a
    Hugging Face Hub dataset id. ``dataset_config_name`` and ``split`` only apply to Hub datasets; ``text_column``
    applies to every source with records (``.json``, ``.jsonl``, ``.parquet``, Hub).

    ``streaming=True`` reads a Hub dataset without downloading its split: ``load_dataset(..., streaming=True)``,
    shuffled with ``seed`` in a buffer of ``shuffle_buffer_size`` documents, comes back as a lazy iterator that reads
    only as far as it is consumed (:func:`tokenize_blocks` stops at twice the tokens its blocks need). Local files and
    the embedded text are on disk already and come back as a list, as without streaming.
    """
    if source is None:
        source = EMBEDDED_SOURCE
    source = os.fspath(source)
    if not isinstance(source, str):
        raise CalibrationDataError(f"calibration source must be a str or path, not {type(source).__name__}")
    if not source.strip():
        raise CalibrationDataError("calibration source is an empty string")

    if source == EMBEDDED_SOURCE:
        texts = _load_embedded()
    else:
        path = os.path.expanduser(source)
        if os.path.exists(path):
            texts = _load_local(path, text_column)
        elif _looks_like_path(source):
            raise CalibrationDataError(f"calibration file not found: {source}")
        elif streaming:
            _check_int("seed", seed, minimum=None)
            _check_int("shuffle_buffer_size", shuffle_buffer_size, minimum=1)
            stream = _stream_hub(source, dataset_config_name, split, text_column, seed, shuffle_buffer_size)
            first = next(stream, None)  # fills the shuffle buffer: an empty or unreadable stream fails here
            if first is None:
                raise CalibrationDataError(f"calibration text is empty: {source}")
            return itertools.chain([first], stream)
        else:
            texts = _load_hub(source, dataset_config_name, split, text_column)

    texts = [text for text in texts if text.strip()]
    if not texts:
        raise CalibrationDataError(f"calibration text is empty: {source}")
    return texts


def _load_embedded() -> list[str]:
    return _load_local(EMBEDDED_FILE, "text")


def _looks_like_path(source: str) -> bool:
    """True for strings meant as file paths; ``owner/name`` is taken as a Hub id, not a relative path."""
    if source.startswith((".", "~")) or os.path.isabs(source):
        return True
    if source.lower().endswith(SUPPORTED_SUFFIXES):
        return True
    if "\\" in source or (os.altsep is not None and os.altsep in source):
        return True
    return os.sep in source and not _HUB_ID.match(source)


def _load_local(path: str, text_column: str) -> list[str]:
    if os.path.isdir(path):
        raise CalibrationDataError(
            f"calibration source {path} is a directory; give a file ending in {', '.join(SUPPORTED_SUFFIXES)}"
        )
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise CalibrationDataError(
            f"unsupported calibration file {path}: the suffix must be one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if suffix == ".parquet":
        return _load_parquet(path, text_column)

    try:
        with open(path, encoding="utf-8") as handle:
            content = handle.read()
    except UnicodeDecodeError as exc:
        raise CalibrationDataError(f"calibration file {path} is not UTF-8 text: {exc.reason}") from exc
    except OSError as exc:
        raise CalibrationDataError(f"cannot read calibration file {path}: {exc.strerror or exc}") from exc

    if suffix == ".txt":
        # Paragraphs keep their inner newlines and indentation; only the blank lines between them go.
        return [paragraph.strip("\r\n") for paragraph in _BLANK_LINES.split(content)]
    if suffix == ".jsonl":
        return _parse_jsonl(content, path, text_column)
    return _parse_json(content, path, text_column)


def _parse_json(content: str, path: str, text_column: str) -> list[str]:
    """A list of strings, a list of objects with ``text_column``, or an object holding such a list.

    An object is read as (1) column-oriented when ``text_column`` holds a list (``{"text": [...]}``), else (2) the
    records under its only list-valued key, else (3) those under the first of ``data``/``rows``/``records``/...
    """
    if not content.strip():
        raise CalibrationDataError(f"calibration text is empty: {path}")
    try:
        data = json.loads(content)
    except json.JSONDecodeError as exc:
        raise CalibrationDataError(
            f"invalid JSON in {path}: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc

    where = path
    if isinstance(data, dict):
        if isinstance(data.get(text_column), list):
            return _as_texts(data[text_column], f"{path} [{text_column!r}]")
        list_keys = [key for key, value in data.items() if isinstance(value, list)]
        if len(list_keys) == 1:
            key = list_keys[0]
        else:
            key = next((k for k in _RECORD_KEYS if k in list_keys), None)
        if key is None:
            raise CalibrationDataError(
                f"calibration file {path} holds an object with keys {sorted(data)}: expected a list of strings, a "
                f"list of objects with {text_column!r}, or an object holding one such list (e.g. under 'data')"
            )
        data, where = data[key], f"{path} [{key!r}]"
    if not isinstance(data, list):
        raise CalibrationDataError(
            f"calibration file {path} holds a JSON {type(data).__name__}: expected a list of strings or of objects "
            f"with {text_column!r}"
        )
    texts = []
    for index, item in enumerate(data):
        if isinstance(item, dict):
            if text_column not in item:
                raise CalibrationDataError(
                    f"column {text_column!r} not found in item {index} of {where}; its keys are {sorted(item)}"
                )
            texts.append(_as_text(item[text_column], f"item {index} of {where}"))
        else:
            texts.append(_as_text(item, f"item {index} of {where}"))
    return texts


def _parse_jsonl(content: str, path: str, text_column: str) -> list[str]:
    """One JSON object with ``text_column`` (or one JSON string) per line; blank lines are skipped."""
    texts = []
    for lineno, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CalibrationDataError(f"invalid JSON on line {lineno} of {path}: {exc.msg}") from exc
        if isinstance(item, dict):
            if text_column not in item:
                raise CalibrationDataError(
                    f"column {text_column!r} not found on line {lineno} of {path}; its keys are {sorted(item)}"
                )
            item = item[text_column]
        texts.append(_as_text(item, f"line {lineno} of {path}"))
    return texts


def _load_parquet(path: str, text_column: str) -> list[str]:
    import datasets

    try:
        dataset = datasets.load_dataset("parquet", data_files=path, split="train")
    except Exception as exc:
        raise CalibrationDataError(f"cannot read parquet file {path}: {_first_line(exc)}") from exc
    return _column(dataset, text_column, path)


def _open_hub(source: str, config: str | None, split: str, **kwargs: Any) -> Any:
    import datasets

    try:
        return datasets.load_dataset(source, config, split=split, **kwargs)
    except Exception as exc:
        hint = "; no local file of that name exists either" if "/" in source else ""
        raise CalibrationDataError(
            f"cannot load calibration dataset {source!r} (config={config!r}, split={split!r}) from the Hugging Face "
            f"Hub: {_first_line(exc)}{hint}"
        ) from exc


def _load_hub(source: str, config: str | None, split: str, text_column: str) -> list[str]:
    return _column(_open_hub(source, config, split), text_column, f"dataset {source!r}")


def _stream_hub(
    source: str, config: str | None, split: str, text_column: str, seed: int, buffer_size: int
) -> Iterator[str]:
    """The non-empty documents of a streamed Hub dataset in seeded buffer-shuffled order, read lazily."""
    dataset = _open_hub(source, config, split, streaming=True).shuffle(seed=seed, buffer_size=buffer_size)
    where = f"dataset {source!r} (streamed)"
    names = dataset.column_names  # None when the stream does not declare its features: checked on each record
    if names is not None and text_column not in names:
        raise CalibrationDataError(f"column {text_column!r} not found in {where}; its columns are {list(names)}")

    def documents() -> Iterator[str]:
        records = iter(dataset)
        for index in itertools.count():
            try:
                record = next(records)
            except StopIteration:
                return
            except Exception as exc:
                raise CalibrationDataError(f"reading {where} failed at record {index}: {_first_line(exc)}") from exc
            if text_column not in record:
                raise CalibrationDataError(
                    f"column {text_column!r} not found in record {index} of {where}; its keys are {sorted(record)}"
                )
            text = _as_text(record[text_column], f"record {index} of column {text_column!r} of {where}")
            if text.strip():
                yield text

    return documents()


def _column(dataset: Any, text_column: str, where: str) -> list[str]:
    names = list(dataset.column_names)
    if text_column not in names:
        raise CalibrationDataError(f"column {text_column!r} not found in {where}; its columns are {names}")
    return _as_texts(list(dataset[text_column]), f"column {text_column!r} of {where}")


def _as_texts(values: list[Any], where: str) -> list[str]:
    return [_as_text(value, f"item {index} of {where}") for index, value in enumerate(values)]


def _as_text(value: Any, where: str) -> str:
    """A document must be a string; ``None`` (a missing value) counts as an empty document and is dropped later."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CalibrationDataError(f"{where} is a {type(value).__name__}, expected a string")
    return value


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


# ------------------------------------------------------------------------------------------------------ tokenizing


def tokenize_blocks(
    texts: Sequence[str] | Iterable[str], tokenizer: Any, *, num_samples: int, seq_length: int, seed: int = 0
) -> torch.LongTensor:
    """Sample ``num_samples`` windows of ``seq_length`` tokens from the seeded-shuffled, concatenated documents.

    Documents are tokenized one at a time and only until the stream holds twice the tokens the blocks need, so a huge
    dataset costs no more than a small one. Windows do not overlap when the stream has room for all of them. When the
    tokenizer prepends a BOS token, every block starts with it, as the causal LM saw in training.

    A sequence (list, tuple) is shuffled here with ``seed``; any other iterable (a stream, such as
    ``load_texts(..., streaming=True)`` returns, shuffled at its source) is taken in its own order and consumed only
    as far as the blocks need.
    """
    _check_int("num_samples", num_samples, minimum=1)
    _check_int("seq_length", seq_length, minimum=2)
    _check_int("seed", seed, minimum=None)
    if isinstance(texts, (str, bytes)):
        raise CalibrationDataError("texts must be a sequence of documents, not a single string")
    rng = random.Random(seed)
    if isinstance(texts, Sequence):
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise CalibrationDataError(f"texts[{index}] is a {type(text).__name__}, expected a string")
        documents: Iterable[str] = [text for text in texts if text.strip()]
        if not documents:
            raise CalibrationDataError("no calibration text to tokenize: every document is empty")
        rng.shuffle(documents)
    else:
        documents = _checked_documents(texts)

    bos_id = prepended_bos_id(tokenizer)
    window = seq_length - (1 if bos_id is not None else 0)  # stream tokens per block
    target = max(2 * num_samples * seq_length, seq_length + 1)
    separator = _encode(tokenizer, DOCUMENT_SEPARATOR)

    stream: list[int] = []
    for document in documents:
        if stream:
            stream.extend(separator)
        stream.extend(_encode(tokenizer, document))
        if len(stream) >= target:
            break

    if not stream:  # an iterable whose documents were all empty (a sequence's are checked above)
        raise CalibrationDataError("no calibration text to tokenize: every document is empty")
    if len(stream) < window:
        bos_note = " after the BOS token" if bos_id is not None else ""
        raise CalibrationDataError(
            f"calibration text has only {len(stream)} tokens, but one block of seq_length={seq_length} needs "
            f"{window}{bos_note}; give more text or a smaller seq_length"
        )

    if len(stream) >= num_samples * window:
        # Non-overlapping: spread the slack before/between the windows at random (sorted gaps keep them apart).
        slack = len(stream) - num_samples * window
        gaps = sorted(rng.randint(0, slack) for _ in range(num_samples))
        starts = [gap + index * window for index, gap in enumerate(gaps)]
    else:
        starts = [rng.randint(0, len(stream) - window) for _ in range(num_samples)]

    tokens = torch.tensor(stream, dtype=torch.long)
    blocks = torch.stack([tokens[start : start + window] for start in starts])
    if bos_id is not None:
        blocks = torch.cat([torch.full((num_samples, 1), bos_id, dtype=torch.long), blocks], dim=1)
    return blocks


def _checked_documents(texts: Iterable[str]) -> Iterator[str]:
    """The non-empty documents of an iterable, type-checked one at a time as they are read."""
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise CalibrationDataError(f"texts[{index}] is a {type(text).__name__}, expected a string")
        if text.strip():
            yield text


def _check_int(name: str, value: Any, *, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CalibrationDataError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise CalibrationDataError(f"{name} must be >= {minimum}, got {value}")


def _encode(tokenizer: Any, text: str) -> list[int]:
    return [int(token) for token in tokenizer(text, add_special_tokens=False)["input_ids"]]


def prepended_bos_id(tokenizer: Any) -> int | None:
    """The BOS id when the tokenizer prepends it by default (as the model saw in training), else None."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return None
    ids = tokenizer("x")["input_ids"]
    return int(bos_id) if len(ids) > 0 and int(ids[0]) == int(bos_id) else None


# --------------------------------------------------------------------------------------------------------- dataset


class CalibrationDataset(torch.utils.data.Dataset):
    """Fixed token blocks as causal-LM examples (``labels`` = ``input_ids``; the model shifts them itself)."""

    def __init__(self, input_ids: torch.LongTensor, source: str = "") -> None:
        input_ids = torch.as_tensor(input_ids)
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise CalibrationDataError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
        if input_ids.dim() != 2 or input_ids.shape[0] < 1 or input_ids.shape[1] < 1:
            raise CalibrationDataError(
                f"input_ids must have shape (num_samples, seq_length), got {tuple(input_ids.shape)}"
            )
        self.input_ids = input_ids.to(torch.long).contiguous()
        self.source = source

    @property
    def num_samples(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_length(self) -> int:
        return int(self.input_ids.shape[1])

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.input_ids[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def fingerprint(self) -> str:
        """SHA-256 of the shape and the token ids: equal data -> equal key, so cached scores are reused only then."""
        digest = hashlib.sha256()
        digest.update(repr(tuple(self.input_ids.shape)).encode())
        digest.update(self.input_ids.cpu().numpy().astype("<i8").tobytes())
        return digest.hexdigest()

    def __repr__(self) -> str:
        return (
            f"CalibrationDataset(num_samples={self.num_samples}, seq_length={self.seq_length}, source={self.source!r})"
        )


def build_calibration_dataset(
    tokenizer: Any,
    source: str | os.PathLike[str] | None = None,
    *,
    dataset_config_name: str | None = None,
    split: str = "train",
    text_column: str = "text",
    num_samples: int = 10,
    seq_length: int = 128,
    seed: int = 0,
    streaming: bool = False,
    shuffle_buffer_size: int = DEFAULT_SHUFFLE_BUFFER_SIZE,
) -> CalibrationDataset:
    """Load ``source`` (see :func:`load_texts`) and sample its blocks (see :func:`tokenize_blocks`) in one call.

    ``streaming=True`` streams a Hub dataset instead of downloading its split, shuffled with ``seed`` in a buffer of
    ``shuffle_buffer_size`` documents, and reads it only until the blocks are filled (see :func:`load_texts`)."""
    # Validate the sizes before loading, so a bad argument does not wait for a download.
    _check_int("num_samples", num_samples, minimum=1)
    _check_int("seq_length", seq_length, minimum=2)
    texts = load_texts(
        source,
        dataset_config_name=dataset_config_name,
        split=split,
        text_column=text_column,
        streaming=streaming,
        seed=seed,
        shuffle_buffer_size=shuffle_buffer_size,
    )
    input_ids = tokenize_blocks(texts, tokenizer, num_samples=num_samples, seq_length=seq_length, seed=seed)
    streamed = shuffle_buffer_size if not isinstance(texts, Sequence) else None
    return CalibrationDataset(input_ids, source=_describe(source, dataset_config_name, split, text_column, streamed))


def _describe(
    source: str | os.PathLike[str] | None,
    config: str | None,
    split: str,
    text_column: str,
    shuffle_buffer_size: int | None = None,
) -> str:
    """A human-readable name for the calibration data (the fingerprint, not this, identifies it); a streamed Hub
    dataset names its shuffle buffer (its blocks differ from those of the downloaded split)."""
    if source is None or os.fspath(source) == EMBEDDED_SOURCE:
        return EMBEDDED_DESCRIPTION
    source = os.fspath(source)
    path = os.path.expanduser(source)
    if os.path.exists(path):
        return os.path.abspath(path)
    config_part = f", config={config}" if config else ""
    stream_part = f", streamed, shuffle buffer {shuffle_buffer_size}" if shuffle_buffer_size else ""
    return f"hub:{source} (split={split}{config_part}, column={text_column}{stream_part})"
