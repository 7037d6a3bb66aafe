"""A budget given as a parameter fraction (--target-params), on a model whose layers differ in size (MoE layers
between dense ones): the count meets the fraction whichever layers are chosen, and the run says what it kept."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_tokenizer
from transformers import AutoConfig, AutoModelForCausalLM

from optimum_shapley.architectures import parameter_counts
from optimum_shapley.cli import main

FAST = ["--num_samples", "4", "--seq_length", "16", "--no-progress", "--method", "angular"]


def tiny_moe():
    """Qwen2-MoE with dense MLPs in layers 0, 2, 4 and mixtures of experts in 1, 3, 5: two layer sizes."""
    config = AutoConfig.for_model(
        "qwen2_moe",
        num_hidden_layers=6,
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        mlp_only_layers=[0, 2, 4],
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-moe")
    tiny_moe().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


def test_layers_differ_in_size():
    sizes = parameter_counts(tiny_moe())[1:]
    assert sizes[0] == sizes[2] == sizes[4] < sizes[1] == sizes[3] == sizes[5]


def test_cli_meets_the_fraction_and_says_so(moe_dir, tmp_path, capsys):
    counts = parameter_counts(tiny_moe())
    total, small = counts[0], min(counts[1:])
    # a fraction that two of the small layers meet exactly: 2 layers, whichever two the criterion picks
    target = 1 - 2 * small / total
    out = tmp_path / "out"
    assert main(["prune", moe_dir, "--target-params", str(target), "--output", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "shapley_results.json").read_text())
    budget = result["parameter_budget"]
    assert result["num_removed"] == 2 and len(result["removed_layers"]) == 2
    assert budget["target_fraction"] == target and budget["dense_parameters"] == total
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert budget["pruned_parameters"] == sum(p.numel() for p in reloaded.parameters())
    expected_removed = sum(counts[1 + i] for i in result["removed_layers"])
    assert budget["pruned_parameters"] == total - expected_removed
    assert budget["fraction"] == pytest.approx(budget["pruned_parameters"] / total) and budget["fraction"] <= target
    assert "parameter budget" in printed and f"keep at most {target:.1%}" in printed
    card = (out / "README.md").read_text(encoding="utf-8")
    assert f"keep at most {target:.1%} of the {total:,} parameters" in card
    assert f"the pruned model keeps {budget['pruned_parameters']:,} ({budget['fraction']:.1%})" in card
    assert json.loads((out / "shapley_pruning_config.json").read_text())["target_params"] == target


def test_a_larger_cut_needs_more_of_the_small_layers(moe_dir, tmp_path):
    counts = parameter_counts(tiny_moe())
    total, small = counts[0], min(counts[1:])
    # just over two small layers' worth: a third layer is needed, even though one large layer would do
    target = 1 - (2 * small + 1) / total
    out = tmp_path / "out"
    assert main(["prune", moe_dir, "--target-params", str(target), "--output", str(out), *FAST]) == 0
    result = json.loads((out / "shapley_results.json").read_text())
    assert result["num_removed"] == 3 and result["parameter_budget"]["fraction"] <= target


def test_a_layer_count_run_has_no_parameter_budget(moe_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prune", moe_dir, "--remove", "2", "--output", str(out), *FAST]) == 0
    assert "parameter budget" not in capsys.readouterr().out
    assert json.loads((out / "shapley_results.json").read_text())["parameter_budget"] == {}
    assert "target_params" not in (out / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target-params", "0.2"], "raise target_params"),  # embeddings and head alone exceed 20%
        (["--target-params", "1.5"], "target_params: must be strictly between 0 and 1"),
        (["--target-params", "0.8", "--remove", "2"], "set exactly one of"),
    ],
)
def test_unreachable_or_bad_fraction_fails_before_anything_is_written(moe_dir, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["prune", moe_dir, "--output", str(out), *args, *FAST]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()
