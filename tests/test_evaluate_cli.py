"""`optimum-shapley evaluate` and `prune --eval-*`: the table, the JSON, the card, and bad input (one line, exit 2,
nothing written)."""

from __future__ import annotations

import json
import os

import pytest
from test_zeroshot import write_release_files
from tiny_models import tiny_model, tiny_tokenizer

from optimum_shapley.cli import main

TEXT = " = Layer pruning = \n Whole decoder layers are removed and the rest is kept . \n" * 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture
def data(tmp_path):
    write_release_files(tmp_path / "data")
    (tmp_path / "data" / "wikitext-2-raw").mkdir()
    (tmp_path / "data" / "wikitext-2-raw" / "wiki.test.raw").write_text(TEXT)
    return tmp_path / "data"


def test_evaluate_prints_a_table_and_writes_json(model_dir, data, tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = ["evaluate", model_dir, "--ppl", "wikitext2", "--tasks", "piqa,arc_easy", "--data-dir", str(data)]
    args += ["--seq-length", "16", "--max-windows", "3", "--output-json", str(out), "--backend", "native"]
    assert main([*args, "--no-progress"]) == 0
    screen = capsys.readouterr().out
    assert "wikitext2 perplexity (3 x 16 tokens)" in screen and "arc_easy acc_norm (n=3)" in screen
    record = json.loads(out.read_text())
    measured = record["results"][os.path.basename(model_dir)]
    assert measured["perplexity"]["wikitext2"]["num_windows"] == 3
    assert measured["zero_shot"]["piqa"]["num_items"] == 2 and measured["zero_shot"]["arc_easy"]["backend"] == "native"
    assert record["protocol"]["seq_length"] == 16 and record["protocol"]["tasks"] == ["piqa", "arc_easy"]
    assert record["protocol"]["task_sources"]["piqa"].endswith("valid-labels.lst")


@pytest.mark.parametrize(
    "options, message",
    [
        (["--tasks", "piqa,nope"], "unknown zero-shot task 'nope'"),
        (["--tasks", "winogrande", "--data-dir", "{empty}"], "no winogrande data under"),
        (["--tasks", "piqa", "--data-dir", "{data}", "--limit", "0"], "--limit must be at least 1, got 0"),
        (["--tasks", "piqa", "--data-dir", "{broken}"], "invalid JSON on line 2 of {broken}"),
        (["--ppl", "wikitext3"], "unknown perplexity text 'wikitext3'"),
        ([], "nothing to evaluate: pass --ppl and/or --tasks"),
    ],
)
def test_evaluate_bad_input_one_line_exit_2_nothing_written(model_dir, data, tmp_path, capsys, options, message):
    (tmp_path / "empty").mkdir()
    broken = tmp_path / "broken"
    write_release_files(broken)
    piqa = broken / "zeroshot" / "piqa" / "valid.jsonl"
    piqa.write_text(piqa.read_text().splitlines()[0] + '\n{"goal": \n')
    places = {"empty": str(tmp_path / "empty"), "data": str(data), "broken": str(broken)}
    options = [option.format(**places) for option in options]
    out = tmp_path / "eval.json"
    assert main(["evaluate", model_dir, *options, "--output-json", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("optimum-shapley: error: ")
    assert message.format(broken=piqa) in err
    assert not out.exists()


def test_prune_evaluates_dense_and_pruned_into_results_and_card(model_dir, data, tmp_path, capsys):
    out = tmp_path / "pruned"
    args = ["prune", model_dir, "--remove", "2", "--output", str(out), "--method", "reverse-order", "--no-progress"]
    args += ["--num_samples", "4", "--seq_length", "16"]
    args += ["--eval-ppl", "wikitext2", "--eval-tasks", "piqa", "--eval-data-dir", str(data), "--eval-seq-length", "16"]
    args += ["--eval-backend", "native"]
    assert main(args) == 0
    assert "dense" in capsys.readouterr().out
    evaluation = json.loads((out / "shapley_results.json").read_text())["evaluation"]
    assert list(evaluation["results"]) == ["dense", "pruned"]
    dense, pruned = (evaluation["results"][k]["perplexity"]["wikitext2"] for k in ("dense", "pruned"))
    assert dense["num_windows"] == pruned["num_windows"] > 0 and dense["perplexity"] != pruned["perplexity"]
    assert evaluation["protocol"]["ppl"] == ["wikitext2"] and evaluation["protocol"]["backend"] == "native"
    card = (out / "README.md").read_text()
    assert "## Evaluation (held-out)" in card and "| metric | dense | pruned |" in card
    assert "piqa acc (n=2)" in card and "non-overlapping 16-token windows" in card


def test_prune_eval_options_need_something_to_evaluate(model_dir, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(["prune", model_dir, "--remove", "2", "--output", str(out), "--eval-limit", "5"]) == 2
    assert "--eval-limit needs --eval-ppl or --eval-tasks" in capsys.readouterr().err
    assert main(["prune", model_dir, "--remove", "2", "--output", str(out), "--eval-tasks", "piqa"]) == 2
    assert "cannot load piqa (baber/piqa" in capsys.readouterr().err  # no data dir: the Hub, offline in tests
    assert not out.exists() and not os.path.exists(str(out) + ".partial")
