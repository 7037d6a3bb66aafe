"""LoRA recovery: training lowers the loss, merged models reload with plain transformers, adapters with PEFT, and
the pruner, card, push and CLI carry it through; bad input fails in one line with nothing written."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_inputs, tiny_model, tiny_tokenizer
from transformers import AutoModelForCausalLM, TrainingArguments

from optimum_shapley import ShapleyLayerPruner, ShapleyPruningConfig
from optimum_shapley.cli import main
from optimum_shapley.data import load_texts, tokenize_blocks
from optimum_shapley.evaluation import evaluate_batches
from optimum_shapley.recovery import ADAPTER_DIR, recover, save_model_and_adapter
from optimum_shapley.surgery import drop_layers

peft = pytest.importorskip("peft", reason="LoRA recovery needs peft (pip install 'optimum-shapley[recovery]')")

FAST = dict(seq_length=16, batch_size=2, show_progress=False)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture()
def text_file(tmp_path):
    """A small training text in the .txt format (paragraphs separated by blank lines), written for the test."""
    path = tmp_path / "heal.txt"
    path.write_text("\n\n".join(load_texts("embedded")[:30]), encoding="utf-8")
    return str(path)


def _mean_loss(model, blocks: torch.Tensor) -> float:
    batches = [
        {"input_ids": blocks[i : i + 8], "attention_mask": torch.ones_like(blocks[i : i + 8])}
        for i in range(0, len(blocks), 8)
    ]
    model.eval()
    nll, tokens = evaluate_batches(model, batches)
    return nll / tokens


def _logits(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


def test_recovery_reduces_training_loss(tokenizer):
    blocks = tokenize_blocks(load_texts("embedded"), tokenizer, num_samples=32, seq_length=32, seed=0)
    model = tiny_model("llama")
    before = _mean_loss(model, blocks)
    result = recover(model, tokenizer, blocks, max_steps=40, batch_size=8, learning_rate=5e-3, show_progress=False)
    after = _mean_loss(model, blocks)
    assert after < before - 0.05, (before, after)
    assert result.train_loss_last < result.train_loss_first
    assert result.model is model and result.merged
    assert not [name for name, _ in model.named_modules() if "lora" in name]  # merged and unloaded
    record = json.loads(json.dumps(result.to_dict()))  # JSON-able, without the model
    assert "model" not in record
    assert record["steps"] == 40 and record["tokens"] == 40 * 8 * 32 and record["num_blocks"] == 32
    assert record["lora"]["r"] == 8 and record["lora"]["lora_alpha"] == 16 and record["lora"]["lora_dropout"] == 0.05
    assert record["lora"]["target_modules_requested"] == "all-linear"
    # "all-linear" = every projection of the decoder, never the output head
    assert set(record["lora"]["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert record["trainable_parameters"] > 0 and record["seconds"] > 0
    assert len(record["loss_history"]) == 20 and record["logging_steps"] == 2


def test_merged_model_reloads_with_plain_transformers(tokenizer, text_file, tmp_path):
    original = tiny_model("llama")
    model = copy.deepcopy(original)
    result = recover(model, tokenizer, text_file, max_steps=6, learning_rate=5e-3, **FAST)
    assert result.dataset == os.path.abspath(text_file) and result.num_blocks == 12
    result.model.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    inputs = tiny_inputs()
    assert torch.allclose(_logits(reloaded, inputs), _logits(result.model, inputs), atol=1e-5)
    assert not torch.allclose(_logits(reloaded, inputs), _logits(original, inputs), atol=1e-4)  # it did train


def test_adapter_saves_and_loads_with_peft(tokenizer, text_file, tmp_path):
    original = tiny_model("llama")
    result = recover(
        copy.deepcopy(original), tokenizer, text_file, max_steps=6, learning_rate=5e-3, merge=False, **FAST
    )
    assert isinstance(result.model, peft.PeftModel) and not result.merged
    folder = tmp_path / "adapted"
    save_model_and_adapter(result.model, str(folder), str(folder))
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as saved:
        keys = set(saved.keys())
    assert keys <= set(original.state_dict()) and "model.layers.0.self_attn.q_proj.weight" in keys  # original names
    assert any("lora_" in name for name, _ in result.model.named_modules())  # saving left the adapter in place
    assert (folder / ADAPTER_DIR / "adapter_config.json").is_file()
    assert json.loads((folder / ADAPTER_DIR / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        folder
    )

    inputs = tiny_inputs()
    base = AutoModelForCausalLM.from_pretrained(folder)  # the base weights: the model before recovery
    assert torch.allclose(_logits(base, inputs), _logits(original, inputs), atol=1e-6)
    healed = peft.PeftModel.from_pretrained(base, str(folder), subfolder=ADAPTER_DIR)
    assert torch.allclose(_logits(healed, inputs), _logits(result.model, inputs), atol=1e-5)
    assert not torch.allclose(_logits(healed, inputs), _logits(original, inputs), atol=1e-4)


def _pruner(tmp_path, tokenizer, method="reverse-order"):
    settings = dict(num_layers_to_remove=2, num_samples=4, seq_length=16, num_masks=20, mc_samples=500)
    return ShapleyLayerPruner(
        model=tiny_model("llama"),
        args=TrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", disable_tqdm=True),
        pruning_config=ShapleyPruningConfig(**settings, surrogate_epochs=20, method=method),
        processing_class=tokenizer,
    )


def test_pruner_recover_merged(tokenizer, text_file, tmp_path):
    pruner = _pruner(tmp_path, tokenizer)
    with pytest.raises(RuntimeError, match="prune"):
        pruner.recover(text_file, max_steps=2, **FAST)
    pruner.prune()
    recovery = pruner.recover(text_file, max_steps=4, **FAST)
    with pytest.raises(RuntimeError, match="already ran"):
        pruner.recover(text_file, max_steps=2, **FAST)
    out = Path(pruner.save_pretrained(tmp_path / "out"))
    results = json.loads((out / "shapley_results.json").read_text())
    assert results["recovery"]["steps"] == 4 and results["recovery"]["merged"] is True
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "## Recovery" in card and "merged into the weights" in card and "lora-recovery" in card
    assert "has not been fine-tuned" not in card and os.path.abspath(text_file) in card
    assert ADAPTER_DIR not in os.listdir(out)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    inputs = tiny_inputs()
    assert torch.allclose(_logits(reloaded, inputs), _logits(recovery.model, inputs), atol=1e-5)


def test_pruner_recover_adapter_and_push(tokenizer, text_file, tmp_path, monkeypatch):
    import huggingface_hub
    from test_hub import RecordingApi

    pruner = _pruner(tmp_path, tokenizer, method="shapley")  # a surrogate too: push sends it to its own repo
    pruner.prune()
    pruned = copy.deepcopy(pruner.model)
    pruner.recover(text_file, max_steps=4, merge=False, **FAST)
    out = Path(pruner.save_pretrained(tmp_path / "out"))
    assert json.loads((out / ADAPTER_DIR / "adapter_config.json").read_text())["base_model_name_or_path"] == str(out)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert 'PeftModel.from_pretrained(base, "<this repository>", subfolder="adapter")' in card
    assert "has not been fine-tuned" not in card
    inputs = tiny_inputs()
    base = AutoModelForCausalLM.from_pretrained(out)  # the pruned model, before recovery
    assert torch.allclose(_logits(base, inputs), _logits(pruned, inputs), atol=1e-6)

    RecordingApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    pruner.push_to_hub(repo_id="me/tiny-healed")
    _, repo, files, _ = RecordingApi.calls[1]
    assert repo == "me/tiny-healed" and "model.safetensors" in files
    assert {f"{ADAPTER_DIR}/adapter_config.json", f"{ADAPTER_DIR}/adapter_model.safetensors"} <= set(files)


def test_cli_prune_with_recovery_then_recover_command(tokenizer, text_file, tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "out"
    args = ["prune", str(model_dir), "--remove", "2", "--method", "reverse-order", "--output", str(out)]
    args += ["--num_samples", "4", "--seq_length", "16", "--no-progress"]
    args += ["--recover-dataset", text_file, "--recover-steps", "3", "--recover-seq-length", "16"]
    args += ["--recover-batch-size", "2", "--recover-lr", "0.001"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "recovery train loss" in printed and "merged into the weights" in printed
    recovery = json.loads((out / "shapley_results.json").read_text())["recovery"]
    assert recovery["steps"] == 3 and recovery["learning_rate"] == 0.001

    again = tmp_path / "again"
    args = ["recover", str(out), "--dataset", text_file, "--steps", "2", "--output", str(again), "--keep-adapter"]
    assert main([*args, "--seq-length", "16", "--batch-size", "2", "--no-progress"]) == 0
    results = json.loads((again / "shapley_results.json").read_text())
    assert results["removed_layers"] == [3, 4] and results["recovery"]["steps"] == 2
    assert results["recovery"]["previous"]["steps"] == 3  # the earlier, merged recovery is kept on record
    assert (again / ADAPTER_DIR / "adapter_config.json").is_file() and (again / "plots").is_dir()
    assert "## Recovery" in (again / "README.md").read_text(encoding="utf-8")

    plain = tmp_path / "plain"
    args = ["recover", str(model_dir), "--dataset", text_file, "--steps", "2", "--output", str(plain)]
    assert main([*args, "--seq-length", "16", "--batch-size", "2", "--no-progress"]) == 0
    assert json.loads((plain / "recovery.json").read_text())["merged"] is True
    AutoModelForCausalLM.from_pretrained(plain)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--recover-dataset", "missing.json"], "recovery dataset file not found: missing.json"),
        (["--recover-dataset", "embedded", "--recover-steps", "0"], "--recover-steps must be at least 1, got 0"),
        (["--recover-steps", "5"], "--recover-steps needs --recover-dataset"),
        (["--recover-keep-adapter"], "--recover-keep-adapter needs --recover-dataset"),
    ],
)
def test_cli_prune_bad_recovery_input(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main(["prune", "smollm2-135m", "--remove", "2", "--output", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"optimum-shapley: error: {message}"
    assert not out.exists()


def test_cli_recover_bad_input(tokenizer, tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    out = tmp_path / "out"
    assert main(["recover", str(model_dir), "--dataset", str(tmp_path / "nope.txt"), "--output", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"recovery dataset file not found: {tmp_path / 'nope.txt'}")
    assert main(["recover", str(model_dir), "--dataset", "embedded", "--steps", "0", "--output", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "optimum-shapley: error: --steps must be at least 1, got 0"
    (model_dir / ADAPTER_DIR).mkdir(parents=True)
    (model_dir / ADAPTER_DIR / "adapter_config.json").write_text("{}")
    assert main(["recover", str(model_dir), "--dataset", "embedded", "--output", str(out)]) == 2
    assert "keeps a LoRA adapter in adapter/" in capsys.readouterr().err
    assert not out.exists()


def test_recover_bad_input(tokenizer, tmp_path):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="max_steps must be at least 1, got 0"):
        recover(model, tokenizer, "embedded", max_steps=0)
    with pytest.raises(ValueError, match="recovery dataset file not found"):
        recover(model, tokenizer, str(tmp_path / "missing.jsonl"), max_steps=2)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        recover(model, tokenizer, str(tmp_path / "empty.txt"), max_steps=2)
    assert not [name for name, _ in model.named_modules() if "lora" in name]  # nothing was attached


def test_failed_training_leaves_the_model_as_it_was(tokenizer):
    model = tiny_model("llama")
    inputs = tiny_inputs()
    before = _logits(model, inputs)
    out_of_vocabulary = torch.full((4, 8), 10_000)  # the embedding lookup fails on the first step
    with pytest.raises((IndexError, RuntimeError)):
        recover(model, tokenizer, out_of_vocabulary, max_steps=2, batch_size=2, show_progress=False)
    assert not [name for name, _ in model.named_modules() if "lora" in name]
    assert torch.equal(_logits(model, inputs), before)


def test_registered_with_optimum_cli():
    """The repository's optimum-cli registration file offers `shapley recover` with the same options."""
    path = os.path.join(os.path.dirname(__file__), "..", "optimum", "commands", "register", "register_shapley.py")
    spec = importlib.util.spec_from_file_location("register_shapley_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = [info.name for info in module.ShapleyCommand.SUBCOMMANDS]
    assert names == ["prune", "recover", "evaluate"]
    import argparse

    from optimum_shapley.cli_arguments import command_parser, resolve_model

    parser = command_parser("optimum-cli shapley recover")  # the parser_class optimum-cli's `shapley` uses
    module.ShapleyRecoverCommand.parse_args(parser)
    args = parser.parse_args(["model", "--dataset", "d.json", "--output", "o", "--steps", "7", "--keep-adapter"])
    assert (args.steps, args.keep_adapter, args.lr) == (7, True, 1e-4)
    assert resolve_model(args).model == "model"
    with pytest.raises(TypeError, match="built by"):
        module.ShapleyRecoverCommand.parse_args(argparse.ArgumentParser())


def test_gguf_model_trains_after_drop_layers(smollm2):
    """A GGUF-loaded packaged model, pruned, goes through PEFT + Trainer (its quantizer was detached on load)."""
    model, tokenizer = smollm2
    model = copy.deepcopy(model)
    drop_layers(model, [3, 5, 13, 14, 17, 25])
    result = recover(model, tokenizer, "embedded", max_steps=1, batch_size=1, seq_length=16, show_progress=False)
    assert result.steps == 1 and result.merged and model.config.num_hidden_layers == 24
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # head untouched, still tied
