"""Zero-shot tasks: release-format loaders and lm-eval prompts on fixture files, the scorer against a hand
computation, accuracy of a model that always prefers choice 0, bad input, agreement with lm-eval, real SmolLM2."""

from __future__ import annotations

import bz2
import importlib.util
import json
import math
from types import SimpleNamespace

import pytest
import torch
from tiny_models import VOCAB, tiny_model, tiny_tokenizer
from torch import nn

from optimum_shapley.evaluation import (
    TASKS,
    MultipleChoiceItem,
    TaskDataError,
    get_task,
    load_task_records,
    loglikelihoods,
    score_items,
    zero_shot,
)
from optimum_shapley.evaluation.zeroshot import tokenize_request

# ------------------------------------------------------------------------------------------- release-format fixtures


def _jsonl(path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")


def _choices(texts, labels="ABCDE"):
    return [{"text": text, "label": label} for text, label in zip(texts, labels)]


def write_release_files(root) -> None:
    """Two or more items per task, in each task's release layout under ``root/zeroshot/<task>/``."""
    zs = root / "zeroshot"
    _jsonl(
        zs / "piqa" / "valid.jsonl",
        [
            {"goal": "open a jar", "sol1": "twist the lid", "sol2": "hit the jar"},
            {"goal": "dry hands", "sol1": "wet them", "sol2": "use a towel"},
        ],
    )
    (zs / "piqa" / "valid-labels.lst").write_text("0\n1\n")
    _jsonl(
        zs / "hellaswag" / "hellaswag_val.jsonl",
        [
            {
                "ind": 24,
                "activity_label": "Roof shingle removal",
                "ctx_a": "A man is sitting on a roof.",
                "ctx_b": "he",
                "ctx": "A man is sitting on a roof. he",
                "split": "val",
                "split_type": "indomain",
                "label": 3,
                "endings": ["is using wrap.", "is ripping tiles.", "is holding a cube.", "starts pulling up roofing."],
                "source_id": "activitynet~v_-JhWjGDPHMY",
            },
            {
                "ind": 92,
                "activity_label": "Home and Garden",
                "ctx_a": "[header] How to clean a sink [title] Rinse the sink.",
                "ctx_b": "",
                "ctx": "[header] How to clean a sink [title] Rinse the sink.",
                "split": "val",
                "split_type": "zeroshot",
                "label": "0",
                "endings": ["[step] Use  soap.", "Paint it.", "Sell it.", "Burn it."],
                "source_id": "wikihow~1",
            },
        ],
    )
    _jsonl(
        zs / "arc_easy" / "ARC-Easy-Test.jsonl",
        [
            {
                "id": "a",
                "question": {"stem": "What melts ice?", "choices": _choices(["heat", "cold", "dark", "wind"])},
                "answerKey": "A",
            },
            {
                "id": "b",
                "question": {"stem": "Which is a gas?", "choices": _choices(["rock", "steam", "wood"], "1234")},
                "answerKey": "2",
            },
            {
                "id": "c",
                "question": {"stem": "Pick five.", "choices": _choices(["one", "two", "three", "four", "five"])},
                "answerKey": "E",
            },
        ],
    )
    _jsonl(
        zs / "arc_challenge" / "ARC-Challenge-Test.jsonl",
        [
            {
                "id": "d",
                "question": {"stem": "Why rain?", "choices": _choices(["clouds", "rocks", "sand"])},
                "answerKey": "A",
            }
        ],
    )
    _jsonl(
        zs / "boolq" / "val.jsonl",
        [
            {"question": "is the sky blue", "passage": "Sky -- The sky is blue.", "idx": 0, "label": "true"},
            {"question": "is fire cold", "passage": "Fire -- Fire is hot.", "idx": 1, "label": False},
        ],
    )
    _jsonl(
        zs / "winogrande" / "dev.jsonl",
        [
            {
                "qID": "q1",
                "sentence": "The cup fell off the table because _ was wobbly.",
                "option1": "the cup",
                "option2": "the table",
                "answer": "2",
            },
            {
                "qID": "q2",
                "sentence": "Ann gave Kim a gift because _ was kind.",
                "option1": "Ann",
                "option2": "Kim",
                "answer": "1",
            },
        ],
    )
    _jsonl(
        zs / "openbookqa" / "test.jsonl",
        [
            {
                "id": "7-1",
                "question": {
                    "stem": "The sun is responsible for",
                    "choices": _choices(["tricks", "night", "plants growing", "snow"]),
                },
                "answerKey": "C",
            },
            {
                "id": "7-2",
                "question": {"stem": "Metal is", "choices": _choices(["soft", "conductive", "alive", "a gas"])},
                "answerKey": " B",
            },
        ],
    )


@pytest.fixture
def data_dir(tmp_path):
    write_release_files(tmp_path)
    return tmp_path


# ---------------------------------------------------------------------------------------------- loaders and prompts


def _item(task, data_dir, index=0) -> MultipleChoiceItem:
    records, _ = load_task_records(task, data_dir)
    return get_task(task).item(records[index])


def test_every_task_reads_its_release_format_with_the_harness_prompt(data_dir):
    piqa = _item("piqa", data_dir, 1)
    assert piqa.contexts == ["Question: dry hands\nAnswer:"] * 2
    assert piqa.continuations == [" wet them", " use a towel"] and piqa.gold == 1

    hellaswag = _item("hellaswag", data_dir)
    assert hellaswag.contexts[0] == "Roof shingle removal: A man is sitting on a roof. He"  # ctx_b capitalised
    assert hellaswag.continuations[3] == " starts pulling up roofing." and hellaswag.gold == 3
    wikihow = _item("hellaswag", data_dir, 1)  # bracket tags and " [title]" cleaned as the harness does
    assert wikihow.contexts[0] == "Home and Garden: How to clean a sink. Rinse the sink."
    assert wikihow.choices[0] == " Use soap." and wikihow.gold == 0  # the harness strips before removing tags

    arc = [_item("arc_easy", data_dir, i) for i in range(3)]
    assert arc[0].contexts[0] == "Question: What melts ice?\nAnswer:" and arc[0].gold == 0
    assert (len(arc[1].choices), arc[1].gold) == (3, 1)  # digit answer key mapped through the labels
    assert (len(arc[2].choices), arc[2].gold) == (5, 4)
    assert _item("arc_challenge", data_dir).choices == ["clouds", "rocks", "sand"]

    boolq = _item("boolq", data_dir)
    assert boolq.contexts[0] == "Sky -- The sky is blue.\nQuestion: is the sky blue?\nAnswer:"
    assert boolq.continuations == [" no", " yes"] and boolq.gold == 1
    assert _item("boolq", data_dir, 1).gold == 0  # JSON boolean false

    wino = _item("winogrande", data_dir)  # partial scoring: the option goes in the context
    assert wino.contexts == [
        "The cup fell off the table because the cup",
        "The cup fell off the table because the table",
    ]
    assert wino.continuations == [" was wobbly."] * 2 and wino.gold == 1

    obqa = _item("openbookqa", data_dir)
    assert obqa.contexts[0] == "The sun is responsible for" and obqa.gold == 2
    assert _item("openbookqa", data_dir, 1).gold == 1  # answerKey " B" is stripped as the harness does


def test_other_layouts_hellaswag_text_boolq_original_and_nested_folders(tmp_path):
    # HellaSwag's 6-lines-per-item text (also bz2): context, label, 4 endings
    text = "Roof shingle removal: A man is sitting on a roof. he\n3\ne0.\ne1.\ne2.\ne3.\n" * 2
    folder = tmp_path / "hellaswag"  # data_dir/<task>/ works as well as data_dir/zeroshot/<task>/
    folder.mkdir()
    with bz2.open(folder / "hellaswag_val_full.txt.bz2", "wt", encoding="utf-8") as f:
        f.write(text)
    records, source = load_task_records("hellaswag", tmp_path)
    assert len(records) == 2 and source.endswith(".bz2")
    item = get_task("hellaswag").item(records[0])
    assert item.contexts[0] == "Roof shingle removal: A man is sitting on a roof. he" and item.gold == 3
    assert item.continuations == [" e0.", " e1.", " e2.", " e3."]

    # BoolQ's original layout: title + passage, boolean answer -> the SuperGLUE passage "Title -- passage"
    _jsonl(
        tmp_path / "boolq" / "dev.jsonl",
        [{"question": "is ice cold", "title": "Ice", "answer": True, "passage": "Ice is frozen water."}],
    )
    boolq = get_task("boolq").item(load_task_records("boolq", tmp_path)[0][0])
    assert boolq.contexts[0] == "Ice -- Ice is frozen water.\nQuestion: is ice cold?\nAnswer:" and boolq.gold == 1

    # an unpacked release archive: the file is found below the task folder
    _jsonl(
        tmp_path / "zeroshot" / "openbookqa" / "OpenBookQA-V1-Sep2018" / "Data" / "Main" / "test.jsonl",
        [{"id": "1", "question": {"stem": "Q", "choices": _choices(["a", "b", "c", "d"])}, "answerKey": "D"}],
    )
    assert get_task("openbookqa").item(load_task_records("openbookqa", tmp_path)[0][0]).gold == 3
    records, _ = load_task_records("piqa", _piqa_only(tmp_path / "p", 5), limit=3)
    assert len(records) == 3


def _piqa_only(root, count):
    _jsonl(root / "piqa" / "valid.jsonl", [{"goal": f"g{i}", "sol1": "a", "sol2": "b"} for i in range(count)])
    (root / "piqa" / "valid-labels.lst").write_text("".join(f"{i % 2}\n" for i in range(count)))
    return root


# ------------------------------------------------------------------------------------------------------ scoring


def test_scores_from_given_loglikelihoods():
    items = [
        MultipleChoiceItem(["c"] * 2, [" a", " bbbb"], ["a", "bbbb"], gold=0),
        MultipleChoiceItem(["c"] * 2, [" a", " bbbb"], ["a", "bbbb"], gold=1),
        MultipleChoiceItem(["c"] * 2, [" a", " bbbb"], ["a", "bbbb"], gold=1),
    ]
    scores = [[-1.0, -2.0], [-3.0, -1.0], [-2.0, -2.0]]  # the tie goes to the first choice, as np.argmax
    metrics = score_items(items, scores)
    assert metrics["acc"] == pytest.approx(2 / 3)
    assert metrics["acc_stderr"] == pytest.approx(math.sqrt(1 / 3) / math.sqrt(3))  # sample std / sqrt(n)
    # normalised by characters: [-1, -0.5], [-3, -0.25], [-2, -0.5] -> choice 1 each time
    assert metrics["acc_norm"] == pytest.approx(2 / 3) and metrics["num_items"] == 3
    assert score_items(items[:1], scores[:1])["acc_stderr"] is None


def test_loglikelihoods_equal_unbatched_hand_computation():
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    requests = [
        ("Question: what is a layer?\nAnswer:", " a block of the model"),
        ("short", " one"),
        ("The value of each layer is estimated ", "by a game"),  # trailing space moves to the continuation
        ("Question: what is a layer?\nAnswer:", " nothing"),
        ("x", " a much longer continuation with many words in it"),
    ]
    expected = []
    with torch.no_grad():
        for context, continuation in requests:
            context, continuation = context.rstrip(), context[len(context.rstrip()) :] + continuation
            whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
            start = len(tokenizer(context, add_special_tokens=False)["input_ids"])
            ids = torch.tensor([whole])
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            expected.append(sum(log_probs[i - 1, whole[i]].item() for i in range(start, len(whole))))
    got = loglikelihoods(model, tokenizer, requests, batch_size=3)
    assert got == pytest.approx(expected, abs=1e-4)


def test_bos_starts_the_request_when_the_tokenizer_prepends_it():
    from tokenizers.processors import TemplateProcessing

    tokenizer = tiny_tokenizer()
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    context, continuation = tokenize_request(tokenizer, "Question: a layer?\nAnswer: ", "yes")
    assert context[0] == tokenizer.bos_token_id and context.count(tokenizer.bos_token_id) == 1
    assert context[1:] == tokenizer("Question: a layer?\nAnswer:", add_special_tokens=False)["input_ids"]
    assert continuation and tokenizer.bos_token_id not in continuation


class UniformLM(nn.Module):
    """Every next token equally likely: a continuation of n tokens scores -n log V, so the model always prefers
    the choice with the fewest tokens."""

    def __init__(self, vocab: int = VOCAB):
        super().__init__()
        self.vocab = vocab
        self.offset = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) + self.offset)


def test_a_model_that_always_prefers_choice_zero_scores_the_fraction_of_gold_zero(tmp_path):
    golds = [0, 1, 0, 2, 0, 3, 1]
    words = ["heat", "a block of the model", "rocks and more rocks", "the wind from the sea"]
    records = [
        {"id": str(i), "question": {"stem": f"Question {i}?", "choices": _choices(words)}, "answerKey": "ABCD"[g]}
        for i, g in enumerate(golds)
    ]
    _jsonl(tmp_path / "zeroshot" / "arc_easy" / "ARC-Easy-Test.jsonl", records)
    tokenizer = tiny_tokenizer()
    counts = [len(tokenize_request(tokenizer, "Question 0?\nAnswer:", " " + w)[1]) for w in words]
    assert counts[0] < min(counts[1:])  # choice 0 has the fewest tokens: the uniform model prefers it
    result = zero_shot(UniformLM(), tokenizer, ["arc_easy"], data_dir=tmp_path, backend="native")["arc_easy"]
    assert result["acc"] == pytest.approx(golds.count(0) / len(golds))
    # acc_norm divides -n log V by the characters: the choice with most characters per token wins
    favourite = max(range(4), key=lambda i: -counts[i] / len(words[i]))
    assert result["acc_norm"] == pytest.approx(golds.count(favourite) / len(golds))
    assert result["num_items"] == 7 and result["backend"] == "native"
    assert result["source"].endswith("ARC-Easy-Test.jsonl")
    limited = zero_shot(UniformLM(), tokenizer, "arc_easy", data_dir=tmp_path, limit=3, backend="native")
    assert limited["arc_easy"]["num_items"] == 3 and limited["arc_easy"]["acc"] == pytest.approx(2 / 3)


def test_end_to_end_on_a_tiny_model_runs_every_task(data_dir):
    results = zero_shot(tiny_model("llama"), tiny_tokenizer(), list(TASKS), data_dir=data_dir, backend="native")
    assert set(results) == set(TASKS)
    for task, metrics in results.items():
        assert 0.0 <= metrics["acc"] <= 1.0 and 0.0 <= metrics["acc_norm"] <= 1.0, task
        assert metrics["harness_metrics"][0] == "acc"
    assert results["winogrande"]["acc_norm"] == results["winogrande"]["acc"]  # one shared continuation


# ---------------------------------------------------------------------------------------------------- bad input


def test_bad_input_names_the_task_file_and_line(tmp_path):
    model, tokenizer = UniformLM(), tiny_tokenizer()
    with pytest.raises(ValueError, match="unknown zero-shot task 'nope'"):
        zero_shot(model, tokenizer, ["piqa", "nope"], data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no piqa data under .*expected valid.jsonl \+ valid-labels.lst"):
        zero_shot(model, tokenizer, ["piqa"], data_dir=tmp_path)
    with pytest.raises(ValueError, match="limit must be at least 1"):
        zero_shot(model, tokenizer, ["piqa"], data_dir=_piqa_only(tmp_path, 2), limit=0)
    with pytest.raises(ValueError, match="unknown backend"):
        zero_shot(model, tokenizer, ["piqa"], data_dir=tmp_path, backend="vllm")

    questions = tmp_path / "piqa" / "valid.jsonl"
    questions.write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n{"goal": "g", "sol1": "a",\n')
    with pytest.raises(TaskDataError, match=f"invalid JSON on line 2 of {questions}"):
        load_task_records("piqa", tmp_path)
    questions.write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n{"goal": "g", "sol2": "b"}\n')
    with pytest.raises(TaskDataError, match=f"line 2 of {questions}: missing field 'sol1'"):
        load_task_records("piqa", tmp_path)
    questions.write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n')
    with pytest.raises(TaskDataError, match="has 2 labels for 1 items"):
        load_task_records("piqa", tmp_path)
    (tmp_path / "piqa" / "valid-labels.lst").write_text("2\n")
    with pytest.raises(TaskDataError, match="line 1 of .*valid-labels.lst: label '2' is not 0 or 1"):
        load_task_records("piqa", tmp_path)

    arc = tmp_path / "arc_easy" / "ARC-Easy-Test.jsonl"
    _jsonl(arc, [{"id": "a", "question": {"stem": "Q", "choices": _choices(["x", "y"])}, "answerKey": "C"}])
    with pytest.raises(TaskDataError, match=f"line 1 of {arc}: ValueError"):
        load_task_records("arc_easy", tmp_path)

    (tmp_path / "hellaswag").mkdir()
    (tmp_path / "hellaswag" / "hellaswag_val_full.txt").write_text("A: ctx\n1\ne0\ne1\ne2\ne3\nB: ctx\n2\ne0\n")
    with pytest.raises(TaskDataError, match="not a multiple of 6.*line 7 is incomplete"):
        load_task_records("hellaswag", tmp_path)

    wino = tmp_path / "winogrande" / "dev.jsonl"
    _jsonl(wino, [{"qID": "q", "sentence": "no blank here", "option1": "a", "option2": "b", "answer": "1"}])
    with pytest.raises(TaskDataError, match=f"line 1 of {wino}: the sentence must hold exactly one '_'"):
        load_task_records("winogrande", tmp_path)

    boolq = tmp_path / "boolq" / "val.jsonl"
    _jsonl(boolq, [{"question": "q", "passage": "p", "idx": 0, "label": "maybe"}])
    with pytest.raises(TaskDataError, match=f"line 1 of {boolq}: label 'maybe' is not true/false"):
        load_task_records("boolq", tmp_path)


# ------------------------------------------------------------------------------------------ agreement with lm-eval


@pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None,
    reason="lm-evaluation-harness is not installed (pip install 'optimum-shapley[eval]'; `make install` does)",
)
def test_native_scorer_agrees_with_lm_eval(data_dir):
    """lm-eval 0.4's own task configs (prompts, process_docs, metrics), run on the same records with HFLM wrapping
    the in-memory model, give the same per-choice log-likelihoods and the same accuracies as our scorer."""
    from optimum_shapley.evaluation.lm_eval_backend import lm_eval_zero_shot

    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    for name in TASKS:
        task = get_task(name)
        records, _ = load_task_records(task, data_dir)
        harness = lm_eval_zero_shot(model, tokenizer, task, records, batch_size=4, return_loglikelihoods=True)
        items = [task.item(record) for record in records]
        ours = [loglikelihoods(model, tokenizer, item.requests, batch_size=3) for item in items]
        assert len(harness["loglikelihoods"]) == len(ours), name
        for theirs, mine in zip(harness["loglikelihoods"], ours):
            assert theirs == pytest.approx(mine, abs=1e-4), name
        native = score_items(items, ours)
        for metric in task.harness_metrics:
            assert harness[metric] == pytest.approx(native[metric]), (name, metric)
            assert harness[f"{metric}_stderr"] == pytest.approx(native[f"{metric}_stderr"]), (name, metric)


# ------------------------------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_smollm2_piqa_accuracy_is_plausible(smollm2, shared_data_dir):
    """SmolLM2-135M on the first 50 PIQA validation items (100 requests): well above chance (published ~0.68)."""
    model, tokenizer = smollm2
    result = zero_shot(model, tokenizer, ["piqa"], data_dir=shared_data_dir, limit=50, backend="native")["piqa"]
    assert result["num_items"] == 50
    assert result["acc"] > 0.55 and result["acc_norm"] > 0.55, result
    assert 0.03 < result["acc_stderr"] < 0.08
