"""Held-out perplexity: non-overlapping windows of the joined text, token-weighted, equal to a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

from optimum_shapley.evaluation import perplexity_of_windows, read_raw_lines, text_windows, window_nll_sums


def test_windows_are_the_joined_text_cut_without_overlap(tmp_path):
    path = tmp_path / "raw.txt"
    path.write_text(" = Title = \n\n Some text about layers and pruning . \n More words follow here . \n")
    lines = read_raw_lines(path)
    assert lines[0].endswith("\n")
    tokenizer = tiny_tokenizer()
    ids = tokenizer("\n\n".join(lines), add_special_tokens=False)["input_ids"]
    windows = text_windows(tokenizer, lines, 4)
    assert windows.shape == (len(ids) // 4, 4)
    assert windows.reshape(-1).tolist() == ids[: windows.numel()]
    assert text_windows(tokenizer, lines, 4, max_tokens=9).shape == (2, 4)
    with pytest.raises(ValueError, match="fewer than one"):
        text_windows(tokenizer, lines, 10_000)


def test_perplexity_equals_hand_computation():
    model = tiny_model("llama")
    windows = torch.randint(3, 90, (5, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=windows).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), windows[:, 1:].reshape(-1))
    assert perplexity_of_windows(model, windows, batch_size=2) == pytest.approx(math.exp(nll.item()), rel=1e-5)


def test_window_nll_sums_are_each_windows_share_of_that_perplexity():
    """The per-window sums a paired comparison resamples: one row per window, each window's own hand-computed NLL,
    and together exactly the token-weighted perplexity."""
    model = tiny_model("llama")
    windows = torch.randint(3, 90, (5, 12), generator=torch.Generator().manual_seed(0))
    sums, counts = window_nll_sums(model, windows, batch_size=2)
    assert sums.shape == (5,) and counts.tolist() == [11] * 5
    with torch.no_grad():
        logits = model(input_ids=windows).logits[:, :-1]
        per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none")
    assert sums.tolist() == pytest.approx(per_token.sum(dim=1).tolist(), rel=1e-5)
    expected = perplexity_of_windows(model, windows, batch_size=2)
    assert math.exp(sums.sum() / counts.sum()) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        window_nll_sums(model, windows, batch_size=0)


def test_bos_starts_every_window_when_the_tokenizer_prepends_it(tmp_path):
    from tokenizers.processors import TemplateProcessing

    tokenizer = tiny_tokenizer()
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id
    lines = ["some text about layers and pruning\n", "more words follow here\n"] * 3
    ids = tokenizer("\n\n".join(lines), add_special_tokens=False)["input_ids"]
    windows = text_windows(tokenizer, lines, 5)
    assert windows.shape == (len(ids) // 4, 5)
    assert (windows[:, 0] == tokenizer.bos_token_id).all()
    assert windows[:, 1:].reshape(-1).tolist() == ids[: windows.shape[0] * 4]
