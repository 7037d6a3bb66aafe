"""push_to_hub: exactly which files go to which repository (HfApi patched, no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tiny_models import tiny_model, tiny_tokenizer
from transformers import TrainingArguments

from optimum_shapley import ShapleyLayerPruner, ShapleyPruningConfig


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records create_repo/upload_folder and the files each would send."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        RecordingApi.calls.append(("create_repo", repo_id, private, exist_ok))

        class Url:
            pass

        url = Url()
        url.repo_id = repo_id
        return url

    def upload_folder(self, repo_id, folder_path, commit_message=None, ignore_patterns=None, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        files = []
        for root, _, names in os.walk(folder_path):
            for name in names:
                files.append(os.path.relpath(os.path.join(root, name), folder_path).replace(os.sep, "/"))
        sent = sorted(filter_repo_objects(files, ignore_patterns=ignore_patterns))
        readme = Path(os.path.join(folder_path, "README.md")).read_text(encoding="utf-8")
        RecordingApi.calls.append(("upload_folder", repo_id, sent, readme))


@pytest.fixture()
def pruner(tmp_path):
    settings = dict(num_layers_to_remove=2, num_samples=4, seq_length=16, num_masks=20, mc_samples=500)
    pruner = ShapleyLayerPruner(
        model=tiny_model("llama"),
        args=TrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", disable_tqdm=True),
        pruning_config=ShapleyPruningConfig(**settings, surrogate_epochs=20),
        processing_class=tiny_tokenizer(),
    )
    pruner.prune()
    return pruner


def test_push_sends_model_and_surrogate_to_their_own_repos(pruner, monkeypatch):
    import huggingface_hub

    RecordingApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    repos = pruner.push_to_hub("me/tiny-pruned", private=True)
    assert repos == {"model": "me/tiny-pruned", "surrogate": "me/tiny-pruned-shapley-surrogate"}

    kinds = [c[0] for c in RecordingApi.calls]
    assert kinds == ["create_repo", "upload_folder", "create_repo", "upload_folder"]
    assert RecordingApi.calls[0] == ("create_repo", "me/tiny-pruned", True, True)
    _, repo, model_files, model_card = RecordingApi.calls[1]
    assert repo == "me/tiny-pruned"
    assert model_files == sorted(
        [
            "README.md",
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "plots/layer_contributions.png",
            "plots/surrogate_fit.png",
            "shapley_pruning_config.json",
            "shapley_results.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
    )
    assert "me/tiny-pruned-shapley-surrogate" in model_card  # the card links the surrogate repo
    _, repo, surrogate_files, surrogate_card = RecordingApi.calls[3]
    assert repo == "me/tiny-pruned-shapley-surrogate"
    assert surrogate_files == ["README.md", "config.json", "model.safetensors"]
    assert "ShapleySurrogate.from_pretrained" in surrogate_card


def test_push_before_prune_is_refused(tmp_path):
    pruner = ShapleyLayerPruner(
        model=tiny_model("llama"),
        args=TrainingArguments(output_dir=str(tmp_path / "run"), report_to="none"),
        pruning_config=ShapleyPruningConfig(num_layers_to_remove=2, num_samples=2, seq_length=16),
        processing_class=tiny_tokenizer(),
    )
    with pytest.raises(RuntimeError, match="call prune"):
        pruner.push_to_hub("me/x")
