"""The whole job on the real SmolLM2-135M with few masks: prune, save, reload with plain transformers, generate."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from optimum_shapley import ShapleyLayerPruner, ShapleyPruningConfig

pytestmark = pytest.mark.slow


def test_prune_smollm2_end_to_end(smollm2, tmp_path):
    model, tokenizer = smollm2
    config = ShapleyPruningConfig(
        num_layers_to_remove=3,
        num_samples=4,
        seq_length=64,
        num_masks=16,
        mc_samples=5000,
        max_evaluations=80,
        verify_samples=8,
    )
    pruner = ShapleyLayerPruner(
        model=copy.deepcopy(model),
        args=TrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", disable_tqdm=True),
        pruning_config=config,
        processing_class=tokenizer,
    )
    result = pruner.prune()
    assert result.num_layers == 30 and len(result.removed_layers) == 3
    kept_mask = "".join("1" if i in result.kept_layers else "0" for i in range(30))
    # each distinct mask exactly once, on the calibration blocks and (the best few) on the verification blocks
    assert result.num_model_evaluations == len(set(result.masks) | {kept_mask}) + result.verification_evaluations
    assert result.selection_evaluations + 2 * result.verification_evaluations <= 80 + 1
    assert result.game["chosen_on"] == "verification" and result.value_check["num_evaluations"] == 30
    assert result.calibration_ppl_before < result.calibration_ppl_after < 1e4
    assert result.surrogate_fit["num_validation"] >= 3
    assert result.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"

    out = pruner.save_pretrained(tmp_path / "out")
    saved = json.loads(Path(os.path.join(out, "config.json")).read_text())
    assert saved["num_hidden_layers"] == 27 and saved["layer_pruning"]["removed_layers"] == result.removed_layers
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = reloaded_tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert torch.equal(reloaded.generate(**prompt, **kwargs), pruner.model.generate(**prompt, **kwargs))
    card = Path(os.path.join(out, "README.md")).read_text(encoding="utf-8")
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in card  # honest about where the weights came from
