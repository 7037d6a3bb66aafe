"""perplexity(): named corpora from release files, local text/json/jsonl files, the protocol, and bad input."""

from __future__ import annotations

import gzip
import json
import math

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

from optimum_shapley.evaluation import (
    load_perplexity_text,
    perplexity,
    perplexity_report,
    perplexity_windows,
    read_raw_lines,
)

LINES = [
    " = Layer pruning = \n",
    " \n",
    " Whole decoder layers are removed from the model and the rest is kept as it was . \n",
    " The value of each layer is estimated by a cooperative game on calibration text . \n",
] * 6


def _hand_perplexity(model, tokenizer, text: str, window: int, max_windows: int | None = None) -> tuple[float, int]:
    """The protocol written out: tokenize the joined text, cut non-overlapping windows, average every next-token
    NLL over all windows, exponentiate."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    count = len(ids) // window
    if max_windows is not None:
        count = min(count, max_windows)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, count * window, window):
            chunk = torch.tensor([ids[start : start + window]])
            log_probs = torch.log_softmax(model(input_ids=chunk).logits[0, :-1].double(), dim=-1)
            total -= log_probs.gather(-1, chunk[0, 1:, None]).sum().item()
            tokens += window - 1
    return math.exp(total / tokens), count


def test_perplexity_of_a_raw_file_equals_a_hand_computation(tmp_path):
    path = tmp_path / "text.raw"
    path.write_text("".join(LINES))
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    expected, count = _hand_perplexity(model, tokenizer, "\n\n".join(LINES), 16)
    assert count >= 4
    assert perplexity(model, tokenizer, str(path), seq_length=16, batch_size=3) == pytest.approx(expected, rel=1e-5)

    report = perplexity_report(model, tokenizer, str(path), seq_length=16, max_windows=2)
    expected_two, _ = _hand_perplexity(model, tokenizer, "\n\n".join(LINES), 16, max_windows=2)
    assert report.perplexity == pytest.approx(expected_two, rel=1e-5)
    assert (report.num_windows, report.num_tokens, report.seq_length) == (2, 2 * 15, 16)
    assert report.source == str(path) and report.mean_nll == pytest.approx(math.log(expected_two), rel=1e-5)
    assert len(perplexity_windows(tokenizer, str(path), 16, max_windows=2)) == 2


def test_json_and_jsonl_documents_are_joined_like_lines(tmp_path):
    docs = ["first document about layers", "second document, on pruning", "a third one"]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    (tmp_path / "docs.json").write_text(json.dumps([{"text": d} for d in docs]))
    for name in ("docs.jsonl", "docs.json"):
        text = load_perplexity_text(str(tmp_path / name))
        assert text.texts == docs and text.separator == "\n\n"
    tokenizer = tiny_tokenizer()
    ids = tokenizer("\n\n".join(docs), add_special_tokens=False)["input_ids"]
    windows = perplexity_windows(tokenizer, str(tmp_path / "docs.jsonl"), 4)
    assert windows.reshape(-1).tolist() == ids[: windows.numel()]


def test_named_corpora_read_their_release_files(tmp_path):
    (tmp_path / "wikitext-2-raw").mkdir()
    (tmp_path / "wikitext-2-raw" / "wiki.test.raw").write_text("".join(LINES))
    wikitext = load_perplexity_text("wikitext2", tmp_path)
    assert wikitext.texts == read_raw_lines(tmp_path / "wikitext-2-raw" / "wiki.test.raw")  # each keeps "\n"
    assert wikitext.separator == "\n\n" and wikitext.max_windows is None

    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "ptb.test.txt").write_text(" no it was n't black monday \n but while the new york \n")
    assert load_perplexity_text("ptb", tmp_path).texts == ["no it was n't black monday", "but while the new york"]

    # C4 as SparseGPT/Wanda: the shard's first 1,100 documents, joined by a space, at most 256 windows
    (tmp_path / "c4").mkdir()
    with gzip.open(tmp_path / "c4" / "c4-validation.00000-of-00008.json.gz", "wt", encoding="utf-8") as f:
        for i in range(1200):
            f.write(json.dumps({"text": f"document {i} about layers", "url": "u", "timestamp": "t"}) + "\n")
    c4 = load_perplexity_text("c4", tmp_path)
    assert len(c4.texts) == 1100 and c4.texts[0] == "document 0 about layers"
    assert (c4.separator, c4.max_windows) == (" ", 256)
    windows = perplexity_windows(tiny_tokenizer(), "c4", 4, data_dir=tmp_path)
    assert len(windows) == 256
    assert len(perplexity_windows(tiny_tokenizer(), "c4", 4, data_dir=tmp_path, max_windows=10)) == 10


def test_bad_input_is_refused_with_the_file_and_line(tmp_path):
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    with pytest.raises(FileNotFoundError, match="neither a known corpus"):
        perplexity(model, tokenizer, "wikitext3")
    with pytest.raises(FileNotFoundError, match="wikitext-2-raw/wiki.test.raw"):
        perplexity(model, tokenizer, "wikitext2", data_dir=str(tmp_path))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(ValueError, match=f"line 2 of {bad}"):
        perplexity(model, tokenizer, str(bad))
    missing_field = tmp_path / "other.jsonl"
    missing_field.write_text('{"body": "no text field"}\n')
    with pytest.raises(ValueError, match="'text' not found on line 1"):
        perplexity(model, tokenizer, str(missing_field))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        perplexity(model, tokenizer, str(tmp_path / "empty.txt"))
    (tmp_path / "short.txt").write_text("two words\n")
    with pytest.raises(ValueError, match="fewer than one"):
        perplexity(model, tokenizer, str(tmp_path / "short.txt"), seq_length=64)
    with pytest.raises(ValueError, match="exceeds the model's 128 positions"):
        perplexity(model, tokenizer, str(tmp_path / "short.txt"), seq_length=256)
    with pytest.raises(ValueError, match="max_windows must be at least 1"):
        perplexity(model, tokenizer, str(tmp_path / "short.txt"), max_windows=0)
