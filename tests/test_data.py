"""Calibration data: sources, token blocks, determinism, errors. Offline and fast (tokenizers are built in memory)."""

import json
import os
import random
import socket
import time

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, default_data_collator

from optimum_shapley.data import (
    EMBEDDED_SOURCE,
    CalibrationDataError,
    CalibrationDataset,
    build_calibration_dataset,
    load_texts,
    tokenize_blocks,
)

NUM_WORDS = 5000
DOCS = ["First document.\nIt has two lines.", "  Second one, indented.", "Third: ünïcode ✓ and a tab\there."]


# ------------------------------------------------------------------------------------------------------- helpers


def word_tokenizer(bos: bool = False) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over w0..w4999: every word is one unique id, so a block's position in the stream is exact.

    ``"\\n\\n"`` (the document separator) is its own token; with ``bos=True`` a post-processor prepends ``<s>``.
    """
    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2, "\n\n": 3}
    vocab.update({f"w{i}": len(vocab) + i for i in range(NUM_WORDS)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", behavior="removed")
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def words(start: int, stop: int) -> str:
    return " ".join(f"w{i}" for i in range(start, stop))


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def find_window(stream: list[int], block: list[int]) -> int:
    """Start of ``block`` inside ``stream``; fails the test when it is not a contiguous window of it."""
    for start in range(len(stream) - len(block) + 1):
        if stream[start : start + len(block)] == block:
            return start
    raise AssertionError(f"block {block[:8]}... is not a contiguous window of the token stream")


def assert_one_line(exc_info: pytest.ExceptionInfo) -> str:
    message = str(exc_info.value)
    assert message and "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE trained in memory on stdlib text: a realistic tokenizer with no download."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(load_texts()[:10], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("calibration data tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ------------------------------------------------------------------------------------------------ embedded source


def test_embedded_source_loads_many_documents(no_network):
    texts = load_texts()
    assert len(texts) > 50
    assert all(isinstance(text, str) and text.strip() for text in texts)
    assert load_texts(EMBEDDED_SOURCE) == texts  # None and "embedded" are the same, deterministic source


def test_embedded_source_builds_blocks(no_network, bpe_tokenizer):
    dataset = build_calibration_dataset(bpe_tokenizer, num_samples=4, seq_length=32)
    assert dataset.input_ids.shape == (4, 32)
    assert dataset.input_ids.dtype == torch.long
    assert "embedded" in dataset.source
    assert int(dataset.input_ids.max()) < len(bpe_tokenizer)


# --------------------------------------------------------------------------------------------------- local files


def write_txt(path):
    path.write_text("\n" + DOCS[0] + "\n\n" + DOCS[1] + "\n  \n\t\n\n" + DOCS[2] + "\n", encoding="utf-8")


def write_json_strings(path):
    path.write_text(json.dumps(DOCS), encoding="utf-8")


def write_json_records(path):
    path.write_text(json.dumps([{"text": doc, "id": i} for i, doc in enumerate(DOCS)]), encoding="utf-8")


def write_json_wrapped(path):
    path.write_text(json.dumps({"version": 1, "data": [{"text": doc} for doc in DOCS]}), encoding="utf-8")


def write_json_columns(path):
    path.write_text(json.dumps({"text": DOCS, "id": [0, 1, 2]}), encoding="utf-8")


def write_jsonl(path):
    lines = [json.dumps({"text": doc}) for doc in DOCS]
    path.write_text("\n".join(lines[:2] + ["", json.dumps({"text": "   "}), lines[2]]) + "\n", encoding="utf-8")


def write_jsonl_strings(path):
    path.write_text("\n".join(json.dumps(doc) for doc in DOCS) + "\n", encoding="utf-8")


def write_parquet(path):
    import datasets

    datasets.Dataset.from_dict({"text": DOCS + [""], "id": [0, 1, 2, 3]}).to_parquet(str(path))


@pytest.mark.parametrize(
    "suffix, writer",
    [
        (".txt", write_txt),
        (".json", write_json_strings),
        (".json", write_json_records),
        (".json", write_json_wrapped),
        (".json", write_json_columns),
        (".jsonl", write_jsonl),
        (".jsonl", write_jsonl_strings),
        (".parquet", write_parquet),
    ],
    ids=["txt", "json-strings", "json-records", "json-wrapped", "json-columns", "jsonl", "jsonl-strings", "parquet"],
)
def test_local_formats_round_trip(tmp_path, no_network, suffix, writer):
    path = tmp_path / f"docs{suffix}"
    writer(path)
    assert load_texts(str(path)) == DOCS
    assert load_texts(path) == DOCS  # a pathlib.Path works too


def test_local_file_builds_dataset_named_by_its_path(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join(words(i * 50, i * 50 + 50) for i in range(10)), encoding="utf-8")
    dataset = build_calibration_dataset(word_tokenizer(), str(path), num_samples=3, seq_length=20)
    assert dataset.input_ids.shape == (3, 20)
    assert dataset.source == str(path)


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet"])
def test_custom_text_column(tmp_path, suffix):
    path = tmp_path / f"docs{suffix}"
    records = [{"content": doc, "text": "not this"} for doc in DOCS]
    if suffix == ".json":
        path.write_text(json.dumps(records), encoding="utf-8")
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(record) for record in records), encoding="utf-8")
    else:
        import datasets

        datasets.Dataset.from_list(records).to_parquet(str(path))
    assert load_texts(str(path), text_column="content") == DOCS


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet"])
def test_missing_text_column_names_column_and_existing_ones(tmp_path, suffix):
    path = tmp_path / f"docs{suffix}"
    records = [{"content": doc} for doc in DOCS]
    if suffix == ".json":
        path.write_text(json.dumps(records), encoding="utf-8")
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(record) for record in records), encoding="utf-8")
    else:
        import datasets

        datasets.Dataset.from_list(records).to_parquet(str(path))
    with pytest.raises(CalibrationDataError) as exc_info:
        load_texts(str(path), text_column="body")
    message = assert_one_line(exc_info)
    assert "'body'" in message and "content" in message


def test_hub_id_is_not_mistaken_for_a_relative_path(monkeypatch):
    """``owner/name`` goes to ``datasets.load_dataset`` with the config and split (faked here: no network)."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"body": DOCS})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_texts("some-org/some-corpus", dataset_config_name="en", split="validation", text_column="body") == DOCS
    assert calls == [("some-org/some-corpus", "en", "validation")]
    dataset = build_calibration_dataset(
        word_tokenizer(), "some-org/some-corpus", text_column="body", num_samples=1, seq_length=2
    )
    assert "some-org/some-corpus" in dataset.source


# ------------------------------------------------------------------------------------------------- token blocks


def test_blocks_are_deterministic_and_seed_sensitive():
    tokenizer = word_tokenizer()
    texts = [words(i * 100, i * 100 + 100) for i in range(20)]
    first = tokenize_blocks(texts, tokenizer, num_samples=5, seq_length=16, seed=0)
    again = tokenize_blocks(list(texts), tokenizer, num_samples=5, seq_length=16, seed=0)
    other = tokenize_blocks(texts, tokenizer, num_samples=5, seq_length=16, seed=1)
    assert first.shape == (5, 16) and first.dtype == torch.long
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_blocks_are_non_overlapping_windows_when_the_stream_has_room():
    tokenizer = word_tokenizer()
    stream = encode(tokenizer, words(0, 1000))
    for seed in range(5):
        blocks = tokenize_blocks([words(0, 1000)], tokenizer, num_samples=8, seq_length=50, seed=seed)
        starts = sorted(find_window(stream, block.tolist()) for block in blocks)
        assert all(later >= earlier + 50 for earlier, later in zip(starts, starts[1:])), starts


def test_blocks_may_overlap_when_the_stream_is_short():
    tokenizer = word_tokenizer()
    stream = encode(tokenizer, words(0, 100))
    blocks = tokenize_blocks([words(0, 100)], tokenizer, num_samples=10, seq_length=40, seed=3)
    assert blocks.shape == (10, 40)
    for block in blocks:
        find_window(stream, block.tolist())


def test_blocks_are_windows_of_the_shuffled_separated_stream():
    tokenizer = word_tokenizer()
    texts = [words(i * 30, i * 30 + 30) for i in range(40)]
    blocks = tokenize_blocks(texts, tokenizer, num_samples=6, seq_length=24, seed=7)
    order = list(texts)
    random.Random(7).shuffle(order)
    separator = encode(tokenizer, "\n\n")
    stream = []
    for text in order:
        stream += (separator if stream else []) + encode(tokenizer, text)
    for block in blocks:
        find_window(stream, block.tolist())


def test_only_as_many_documents_as_needed_are_tokenized():
    tokenizer = word_tokenizer()
    calls = []

    def counting(text, **kwargs):
        calls.append(text)
        return tokenizer(text, **kwargs)

    counting.bos_token_id = None
    texts = [words(i % 400 * 10, i % 400 * 10 + 10) for i in range(10_000)]
    blocks = tokenize_blocks(texts, counting, num_samples=2, seq_length=8, seed=0)
    assert blocks.shape == (2, 8)
    assert len(calls) < 10  # the stream needs 32 tokens: a handful of 10-word documents, not 10,000


def test_bos_token_starts_every_block_when_the_tokenizer_adds_it():
    tokenizer = word_tokenizer(bos=True)
    assert tokenizer("w1")["input_ids"][0] == tokenizer.bos_token_id
    stream = encode(tokenizer, words(0, 2000))
    blocks = tokenize_blocks([words(0, 2000)], tokenizer, num_samples=6, seq_length=32, seed=0)
    assert blocks.shape == (6, 32)
    assert (blocks[:, 0] == tokenizer.bos_token_id).all()
    for block in blocks:
        find_window(stream, block[1:].tolist())


def test_no_bos_token_when_the_tokenizer_does_not_add_it():
    tokenizer = word_tokenizer(bos=False)
    assert tokenizer.bos_token_id is not None
    blocks = tokenize_blocks([words(0, 2000)], tokenizer, num_samples=6, seq_length=32, seed=0)
    assert not (blocks == tokenizer.bos_token_id).any()


# ------------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["missing.txt", "./missing", "~/definitely/missing-calibration", "sub/dir/x"])
def test_missing_file(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CalibrationDataError) as exc_info:
        load_texts(name)
    assert "calibration file not found" in assert_one_line(exc_info)


def test_missing_absolute_path(tmp_path):
    with pytest.raises(CalibrationDataError, match="calibration file not found"):
        load_texts(str(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize("make", ["csv", "directory"])
def test_unsupported_local_source_names_accepted_suffixes(tmp_path, make):
    if make == "csv":
        path = tmp_path / "docs.csv"
        path.write_text("text\nhello\n", encoding="utf-8")
    else:
        path = tmp_path / "folder"
        path.mkdir()
    with pytest.raises(CalibrationDataError) as exc_info:
        load_texts(str(path))
    message = assert_one_line(exc_info)
    assert all(suffix in message for suffix in (".txt", ".json", ".jsonl", ".parquet"))


@pytest.mark.parametrize(
    "name, content",
    [
        ("empty.txt", ""),
        ("blank.txt", "  \n\n\t\n   \n"),
        ("empty.json", "[]"),
        ("blank.json", '["", "  ", {"text": "\\n"}]'),
        ("empty.jsonl", ""),
        ("blank.jsonl", '{"text": " "}\n\n"  "\n'),
    ],
)
def test_empty_or_whitespace_only_text(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CalibrationDataError) as exc_info:
        load_texts(str(path))
    assert "calibration text is empty" in assert_one_line(exc_info)


def test_invalid_json_is_reported(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"text": "a"},', encoding="utf-8")
    with pytest.raises(CalibrationDataError, match="invalid JSON"):
        load_texts(str(path))


def test_too_few_tokens_for_one_block():
    with pytest.raises(CalibrationDataError) as exc_info:
        tokenize_blocks(["w1 w2 w3"], word_tokenizer(), num_samples=1, seq_length=8)
    message = assert_one_line(exc_info)
    assert "only 3 tokens" in message and "needs 8" in message


@pytest.mark.parametrize(
    "kwargs, argument",
    [({"num_samples": 0, "seq_length": 8}, "num_samples"), ({"num_samples": 2, "seq_length": 1}, "seq_length")],
)
def test_bad_sizes(kwargs, argument):
    with pytest.raises(CalibrationDataError) as exc_info:
        tokenize_blocks([words(0, 100)], word_tokenizer(), **kwargs)
    assert argument in assert_one_line(exc_info)
    with pytest.raises(CalibrationDataError, match=argument):
        build_calibration_dataset(word_tokenizer(), "no-such-org/never-loaded", **kwargs)  # fails before loading


def test_unknown_hub_dataset_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "optimum-shapley-no-such-org/no-such-calibration-dataset"
    started = time.monotonic()
    with pytest.raises(CalibrationDataError) as exc_info:
        load_texts(name)
    assert time.monotonic() - started < 30
    message = assert_one_line(exc_info)
    assert name in message
    assert exc_info.value.__cause__ is not None


# ------------------------------------------------------------------------------------------------------ dataset


def test_calibration_dataset_items_and_batches():
    ids = torch.arange(24).reshape(4, 6)
    dataset = CalibrationDataset(ids, source="unit test")
    assert len(dataset) == 4 and dataset.source == "unit test"
    item = dataset[1]
    assert set(item) == {"input_ids", "attention_mask", "labels"}
    assert torch.equal(item["input_ids"], ids[1])
    assert torch.equal(item["labels"], ids[1])
    assert torch.equal(item["attention_mask"], torch.ones(6, dtype=torch.long))
    batches = list(torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=default_data_collator))
    assert len(batches) == 2
    assert batches[0]["input_ids"].shape == (2, 6) and batches[0]["input_ids"].dtype == torch.long
    assert torch.equal(batches[1]["labels"], ids[2:])
    assert torch.equal(batches[0]["attention_mask"], torch.ones(2, 6, dtype=torch.long))


def test_fingerprint_identifies_the_token_ids():
    ids = torch.arange(24).reshape(4, 6)
    fingerprint = CalibrationDataset(ids).fingerprint()
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0
    assert CalibrationDataset(ids.clone(), source="elsewhere").fingerprint() == fingerprint
    changed = ids.clone()
    changed[3, 5] += 1
    assert CalibrationDataset(changed).fingerprint() != fingerprint
    assert CalibrationDataset(ids.reshape(6, 4)).fingerprint() != fingerprint  # same bytes, other shape
    assert CalibrationDataset(ids.to(torch.int32)).fingerprint() == fingerprint  # stored as int64 either way


def test_calibration_dataset_rejects_bad_ids():
    with pytest.raises(CalibrationDataError, match="shape"):
        CalibrationDataset(torch.arange(6))
    with pytest.raises(CalibrationDataError, match="integer"):
        CalibrationDataset(torch.zeros(2, 3))


# --------------------------------------------------------------------------------------------------- shared data


def test_shared_c4_demo_loads_300_documents(shared_data_dir, bpe_tokenizer):
    path = os.path.join(shared_data_dir, "calibration", "c4_demo.json")
    if not os.path.isfile(path):
        pytest.skip(f"{path} not found (the shared data beside the checkout has no calibration/c4_demo.json)")
    texts = load_texts(path)
    assert len(texts) == 300
    dataset = build_calibration_dataset(bpe_tokenizer, path, num_samples=4, seq_length=64)
    assert dataset.input_ids.shape == (4, 64)


def test_the_embedded_default_is_the_packaged_c4_sample_with_its_licence():
    import os

    from optimum_shapley.data import EMBEDDED_FILE, load_texts

    texts = load_texts("embedded")
    assert len(texts) == 100 and texts == load_texts(None)
    assert sum(len(t) for t in texts) > 200_000  # enough for 50 blocks of 128 tokens from distinct places
    notice = os.path.join(os.path.dirname(EMBEDDED_FILE), "README.md")
    with open(notice, encoding="utf-8") as f:
        text = f.read()
    assert "ODC-BY" in text and "allenai/c4" in text and "Common Crawl" in text  # the attribution ships beside it
