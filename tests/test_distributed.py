"""Scale: mask evaluations split over `accelerate launch` processes, determinism, and models dispatched by
accelerate's hooks (device maps with offloaded layers)."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch
from cli_runs import FAST, REPO, accelerate_command, cached_masks, cli_env, read_bytes, results, run_cli
from cli_runs import save_tiny_model as save_model
from tiny_models import DEPTH, tiny_inputs, tiny_model
from transformers import TrainingArguments

from optimum_shapley import LayerMask, ShapleyLayerPruner, ShapleyPruningConfig, drop_layers, load_causal_lm
from optimum_shapley.evaluation import CACHE_FILE_NAME


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same prune three times: one process, one process again, two processes under `accelerate launch`."""
    root = tmp_path_factory.mktemp("scale")
    model = save_model(root / "model")
    command = ["prune", model, "--remove", "2", *FAST]
    outputs = {name: str(root / name) for name in ("one", "again", "two")}
    for name in ("one", "again"):
        run = run_cli(*command, "--output", outputs[name])
        assert run.returncode == 0, run.stderr
    launch = subprocess.run(
        accelerate_command(2, *command, "--output", outputs["two"]),
        capture_output=True,
        text=True,
        env=cli_env(ACCELERATE_USE_CPU="1"),
        timeout=600,
        cwd=REPO,
    )
    assert launch.returncode == 0, launch.stderr[-3000:]
    assert launch.stdout.count("optimum-shapley summary") == 1  # the main process reports, the other stays quiet
    return outputs


def test_two_processes_share_the_masks_and_match_one_process(runs):
    one, two = results(runs["one"]), results(runs["two"])
    assert two["removed_layers"] == one["removed_layers"]
    assert two["masks"] == one["masks"]
    assert two["utilities"] == one["utilities"] and two["mean_nll"] == one["mean_nll"]
    assert two["values"] == one["values"]
    assert two["num_model_evaluations"] == one["num_model_evaluations"]

    # each mask evaluated exactly once across the processes, and both did their share
    per_process = two["details"]["evaluations_per_process"]
    assert len(per_process) == 2 and min(per_process) > 0
    # (every process also runs the dense pass that builds the KL reference, once per calibration set: 2 sets)
    assert sum(per_process) == one["num_model_evaluations"] + (2 - 1) * 2
    masks = cached_masks(os.path.join(runs["two"], CACHE_FILE_NAME))  # written by the main process alone
    assert len(masks) == len(set(masks)) == one["num_model_evaluations"]
    assert sorted(masks) == sorted(cached_masks(os.path.join(runs["one"], CACHE_FILE_NAME)))

    # the model was written once, by the main process, and it is the same model
    assert read_bytes(runs["two"], "config.json") == read_bytes(runs["one"], "config.json")
    assert read_bytes(runs["two"], "model.safetensors") == read_bytes(runs["one"], "model.safetensors")
    assert not os.path.exists(runs["two"] + ".partial")


def test_same_command_twice_gives_the_same_model(runs):
    one, again = results(runs["one"]), results(runs["again"])
    assert again["removed_layers"] == one["removed_layers"]
    assert again["values"] == one["values"] and again["utilities"] == one["utilities"]
    assert read_bytes(runs["again"], "config.json") == read_bytes(runs["one"], "config.json")
    assert read_bytes(runs["again"], "model.safetensors") == read_bytes(runs["one"], "model.safetensors")


def test_weights_and_surrogate_are_saved_as_safetensors_only(runs):
    files = [os.path.join(folder, name) for folder, _, names in os.walk(runs["one"]) for name in names]
    assert os.path.join(runs["one"], "model.safetensors") in files
    assert os.path.join(runs["one"], "surrogate", "model.safetensors") in files
    pickled = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))]
    assert not pickled, pickled


def _offloading_device_map() -> dict[str, str]:
    """Half the layers on the CPU, half offloaded to disk: accelerate loads those through hooks at each forward."""
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    device_map.update({f"model.layers.{i}": "cpu" if i < DEPTH // 2 else "disk" for i in range(DEPTH)})
    return device_map


def test_layer_mask_works_through_accelerate_dispatch_hooks(tmp_path):
    path = save_model(tmp_path / "model")
    model, _ = load_causal_lm(path, device_map=_offloading_device_map(), offload_folder=str(tmp_path / "offload"))
    blocks = model.model.layers
    assert {model.hf_device_map[f"model.layers.{i}"] for i in range(DEPTH)} == {"cpu", "disk"}
    assert hasattr(blocks[DEPTH - 1], "_hf_hook") and blocks[DEPTH - 1].self_attn.q_proj.weight.device.type == "meta"

    inputs = tiny_inputs()
    keep = [0, 2, 3, 5]  # drops one on-CPU and one offloaded layer
    reference = drop_layers(tiny_model("llama"), [1, 4])
    with torch.no_grad():
        expected = reference(**inputs).logits
        expected_tokens = reference.generate(inputs["input_ids"][:1], max_new_tokens=6, do_sample=False)
        with LayerMask(model, keep):
            masked = model(**inputs).logits
            masked_tokens = model.generate(inputs["input_ids"][:1], max_new_tokens=6, do_sample=False)
        full = model(**inputs).logits  # restored on exit, hooks included
    torch.testing.assert_close(masked, expected, rtol=0, atol=0)
    assert torch.equal(masked_tokens, expected_tokens)
    torch.testing.assert_close(full, tiny_model("llama")(**inputs).logits, rtol=0, atol=0)
    assert model.model.layers is blocks and len(blocks) == DEPTH


def test_pruning_a_dispatched_model_matches_a_plain_one(tmp_path):
    path = save_model(tmp_path / "model")
    config = ShapleyPruningConfig(
        num_layers_to_remove=2, num_samples=4, seq_length=16, num_masks=20, mc_samples=1000, surrogate_epochs=30
    )
    chosen = {}
    for name, options in (
        ("plain", {}),
        ("dispatched", {"device_map": _offloading_device_map(), "offload_folder": str(tmp_path / "offload")}),
    ):
        model, tokenizer = load_causal_lm(path, **options)
        args = TrainingArguments(str(tmp_path / f"run-{name}"), report_to="none", disable_tqdm=True)
        pruner = ShapleyLayerPruner(model=model, args=args, pruning_config=config, processing_class=tokenizer)
        result = pruner.prune()
        pruner.save_pretrained(tmp_path / f"out-{name}")
        chosen[name] = (result.removed_layers, result.utilities)
    assert chosen["dispatched"] == chosen["plain"]
    saved, _ = load_causal_lm(str(tmp_path / "out-dispatched"))
    reference = drop_layers(tiny_model("llama"), chosen["plain"][0])
    with torch.no_grad():
        torch.testing.assert_close(saved(**tiny_inputs()).logits, reference(**tiny_inputs()).logits, rtol=0, atol=0)
