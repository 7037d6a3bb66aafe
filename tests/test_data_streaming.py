"""Calibration from a streamed Hub dataset: ``load_dataset(..., streaming=True)`` + a seeded shuffle buffer, read
only as far as the blocks need. Offline: the "Hub" dataset is a local json file loaded in streaming mode by the real
``datasets.load_dataset``, with every record read from it counted."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from tiny_models import tiny_tokenizer

from optimum_shapley.data import (
    CalibrationDataError,
    build_calibration_dataset,
    load_texts,
    tokenize_blocks,
)

NUM_DOCUMENTS = 3000
BUFFER = 64


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """Serve any Hub id from a local jsonl file of NUM_DOCUMENTS numbered documents; ``hub["read"]`` lists the ids
    of the records read from it, ``hub["calls"]`` the load_dataset keywords."""
    path = tmp_path / "docs.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(NUM_DOCUMENTS):
            f.write(json.dumps({"id": i, "text": f"Document {i} is about the Python language and its reference."}))
            f.write("\n")
    state = {"read": [], "calls": [], "path": str(path)}
    real_load_dataset = datasets.load_dataset

    def load_dataset(source, config=None, *, split="train", **kwargs):
        state["calls"].append({"source": source, "config": config, "split": split, **kwargs})
        dataset = real_load_dataset("json", data_files=state["path"], split=split, **kwargs)

        def count(record):
            state["read"].append(record["id"])
            return record

        return dataset.map(count)  # lazy on an IterableDataset: runs once per record actually read

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return state


def test_streaming_builds_blocks_from_only_the_documents_needed(hub):
    tokenizer = tiny_tokenizer()
    dataset = build_calibration_dataset(
        tokenizer,
        "someone/huge-corpus",
        num_samples=4,
        seq_length=16,
        seed=7,
        streaming=True,
        shuffle_buffer_size=BUFFER,
    )
    assert hub["calls"] == [{"source": "someone/huge-corpus", "config": None, "split": "train", "streaming": True}]
    assert tuple(dataset.input_ids.shape) == (4, 16)
    assert "streamed, shuffle buffer 64" in dataset.source
    # the 2 x 4 x 16 tokens tokenize_blocks collects take a few documents (~15 tokens each), read once the shuffle
    # buffer is full (datasets 5 refills it half a buffer at a time); never the whole split
    per_document = len(tokenizer("Document 10 is about the Python language and its reference.")["input_ids"])
    needed = 2 * 4 * 16 // per_document + 2
    assert BUFFER < len(hub["read"]) <= BUFFER + max(needed, BUFFER // 2) + 2, len(hub["read"])
    assert len(hub["read"]) == len(set(hub["read"]))  # each record read once

    # the same seed gives the same blocks; another seed shuffles differently
    again = build_calibration_dataset(
        tokenizer,
        "someone/huge-corpus",
        num_samples=4,
        seq_length=16,
        seed=7,
        streaming=True,
        shuffle_buffer_size=BUFFER,
    )
    assert again.fingerprint() == dataset.fingerprint()
    other = build_calibration_dataset(
        tokenizer,
        "someone/huge-corpus",
        num_samples=4,
        seq_length=16,
        seed=8,
        streaming=True,
        shuffle_buffer_size=BUFFER,
    )
    assert other.fingerprint() != dataset.fingerprint()


def test_load_texts_streaming_is_lazy_and_shuffled(hub):
    texts = load_texts("someone/huge-corpus", streaming=True, seed=3, shuffle_buffer_size=BUFFER)
    assert not isinstance(texts, list)
    assert BUFFER <= len(hub["read"]) <= BUFFER + 2  # the buffer is filled and a document handed out: the rest waits
    first = [next(texts) for _ in range(100)]
    assert 100 + BUFFER // 2 <= len(hub["read"]) <= 100 + 2 * BUFFER  # reads follow what is taken
    numbers = [int(text.split()[1]) for text in first]
    assert numbers != sorted(numbers) and len(set(numbers)) == 100  # buffer-shuffled, not the file's order
    assert max(numbers) < len(hub["read"])


def test_streaming_without_the_text_column_names_the_columns(hub):
    with pytest.raises(CalibrationDataError, match=r"column 'content' not found .*'id', 'text'"):
        load_texts("someone/huge-corpus", streaming=True, text_column="content", shuffle_buffer_size=BUFFER)


def test_streaming_an_empty_dataset_fails_in_one_line(hub):
    with open(hub["path"], "w", encoding="utf-8") as f:
        for i in range(10):
            f.write(json.dumps({"id": i, "text": "  "}) + "\n")
    with pytest.raises(CalibrationDataError, match="calibration text is empty: someone/huge-corpus"):
        load_texts("someone/huge-corpus", streaming=True, shuffle_buffer_size=BUFFER)


def test_streaming_an_unknown_dataset_is_a_calibration_error(monkeypatch):
    def load_dataset(*args, **kwargs):
        raise FileNotFoundError("Dataset 'nobody/nothing' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(CalibrationDataError, match="cannot load calibration dataset 'nobody/nothing'"):
        load_texts("nobody/nothing", streaming=True)


def test_streaming_leaves_local_files_as_they_were(tmp_path, hub):
    path = tmp_path / "calibration.txt"
    path.write_text("\n\n".join(f"Paragraph {i} of a local calibration text file." for i in range(200)))
    tokenizer = tiny_tokenizer()
    streamed = build_calibration_dataset(tokenizer, str(path), num_samples=4, seq_length=16, streaming=True)
    plain = build_calibration_dataset(tokenizer, str(path), num_samples=4, seq_length=16)
    assert torch.equal(streamed.input_ids, plain.input_ids) and streamed.source == plain.source
    assert hub["calls"] == []  # read from disk, not through datasets
    assert isinstance(load_texts(str(path), streaming=True), list)


def test_tokenize_blocks_reads_an_iterable_only_as_far_as_needed():
    tokenizer = tiny_tokenizer()
    taken = []

    def documents():
        for i in range(10_000):
            taken.append(i)
            yield f"Document {i} is about the Python language and its reference."

    blocks = tokenize_blocks(documents(), tokenizer, num_samples=2, seq_length=16, seed=0)
    assert tuple(blocks.shape) == (2, 16)
    assert 0 < len(taken) < 20
    with pytest.raises(CalibrationDataError, match="every document is empty"):
        tokenize_blocks(iter(["", "  "]), tokenizer, num_samples=2, seq_length=16)
    with pytest.raises(CalibrationDataError, match=r"texts\[1\] is a int"):
        tokenize_blocks(iter(["a text", 5]), tokenizer, num_samples=2, seq_length=16)
