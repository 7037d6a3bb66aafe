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
    revisions: list = []  # (repo, revision, token, commit message) of every upload_folder

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        RecordingApi.calls.append(("create_repo", repo_id, private, exist_ok))

        class Url:
            pass

        url = Url()
        url.repo_id = repo_id
        return url

    def create_branch(self, repo_id, branch, exist_ok=False, **kwargs):
        RecordingApi.calls.append(("create_branch", repo_id, branch, self.token))

    def upload_folder(self, repo_id, folder_path, commit_message=None, ignore_patterns=None, **kwargs):
        RecordingApi.revisions.append((repo_id, kwargs.get("revision"), self.token, commit_message))
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

    RecordingApi.revisions = []
    RecordingApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    repos = pruner.push_to_hub(repo_id="me/tiny-pruned", private=True)
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
            "trainer_state.json",
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
        pruner.push_to_hub(repo_id="me/x")


# ------------------------------------------------------------------------------------------ card names and plots


def _result(base_model: str, **overrides):
    from optimum_shapley.result import PruningResult

    fields = dict(
        base_model=base_model,
        method="shapley",
        num_layers=6,
        num_removed=2,
        removed_layers=[3, 4],
        kept_layers=[0, 1, 2, 5],
        values=[0.5, 0.4, 0.3, 0.01, 0.02, 0.6],
        stderr=[0.01] * 6,
        estimator="permutation",
        utility="log_ppl_ratio",
        strata=[3, 4, 5],
        surrogate_fit={
            "num_train": 16,
            "num_validation": 4,
            "validation_r2": 0.9,
            "validation_spearman": 0.8,
            "train_r2": 0.95,
            "validation_measured": [0.1, 0.2, 0.3, 0.4],
            "validation_predicted": [0.12, 0.18, 0.33, 0.39],
        },
        calibration={"num_samples": 4, "seq_length": 16, "source": base_model},
    )
    fields.update(overrides)
    return PruningResult(**fields)


def _write_run(folder, result, model=None, surrogate=None):
    from optimum_shapley import ShapleySurrogate
    from optimum_shapley.hub import write_run_folder

    write_run_folder(
        str(folder),
        model=model if model is not None else tiny_model("llama"),
        tokenizer=None,
        pruning_config=ShapleyPruningConfig(num_layers_to_remove=2),
        result=result,
        surrogate=surrogate if surrogate is not None else ShapleySurrogate(num_layers=6),
        surrogate_dir="surrogate",
    )
    card = (folder / "README.md").read_text(encoding="utf-8")
    return card, (folder / "surrogate" / "README.md").read_text(encoding="utf-8")


def test_gguf_run_card_uses_the_gguf_name_not_the_folder(tmp_path):
    """A .gguf loaded from a local folder: name_or_path is that folder; the card says the file's general.name."""
    folder = tmp_path / "models" / "my-gguf-folder"
    folder.mkdir(parents=True)
    model = tiny_model("llama")
    model.name_or_path = str(folder)  # what from_pretrained(folder, gguf_file=...) records
    model.gguf_name = "Tiny Llama 6L Instruct"  # what load_causal_lm records from the GGUF metadata
    result = _result(str(folder), calibration={"num_samples": 4, "seq_length": 16, "source": str(tmp_path / "c.txt")})
    card, surrogate_card = _write_run(tmp_path / "out", result, model)

    assert "# Layer-pruned Tiny Llama 6L Instruct\n" in card
    assert "This model is `Tiny Llama 6L Instruct` with" in card
    assert "| base model | Tiny Llama 6L Instruct |" in card
    assert "`c.txt`" in card  # the calibration file by its name only
    assert "# Shapley surrogate for Tiny Llama 6L Instruct" in surrogate_card
    for text in (card, surrogate_card):
        assert str(tmp_path) not in text and "my-gguf-folder" not in text
    assert "base_model:" not in card.split("---")[1]  # no Hub link for a local checkpoint

    # recorded with the results: a card rebuilt from them (as `recover` does) names the model the same way
    from optimum_shapley.hub import build_model_card
    from optimum_shapley.result import PruningResult

    saved = PruningResult.from_json_file(str(tmp_path / "out" / "shapley_results.json"))
    assert saved.base_model_name == "Tiny Llama 6L Instruct"
    assert "# Layer-pruned Tiny Llama 6L Instruct\n" in str(build_model_card(saved))


def test_local_folder_run_card_uses_the_folder_name(tmp_path):
    folder = tmp_path / "deep" / "checkpoints" / "tiny-llama-6l"
    tiny_model("llama").save_pretrained(folder)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.name_or_path == str(folder)
    card, surrogate_card = _write_run(tmp_path / "out", _result(model.name_or_path), model)
    assert "# Layer-pruned tiny-llama-6l\n" in card and "| base model | tiny-llama-6l |" in card
    assert "# Shapley surrogate for tiny-llama-6l" in surrogate_card
    assert str(tmp_path) not in card and str(tmp_path) not in surrogate_card


def test_hub_id_names_the_card_and_links_the_base_model(tmp_path):
    model = tiny_model("llama")
    model.gguf_name = "Smollm2 135M 8k Lc100K Mix1 Ep2"  # a packaged alias: its Hub id is the better name
    card, _ = _write_run(tmp_path / "out", _result("HuggingFaceTB/SmolLM2-135M-Instruct"), model)
    assert "# Layer-pruned HuggingFaceTB/SmolLM2-135M-Instruct\n" in card
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "Smollm2 135M 8k" not in card


def test_checkpoint_name(tmp_path, monkeypatch):
    from optimum_shapley.hub import checkpoint_name

    assert checkpoint_name("HuggingFaceTB/SmolLM2-135M", "gguf name") == "HuggingFaceTB/SmolLM2-135M"
    assert checkpoint_name(str(tmp_path / "folder"), "SmolLM2 135M") == "SmolLM2 135M"  # GGUF general.name
    assert checkpoint_name(str(tmp_path / "folder")) == "folder"
    assert checkpoint_name(str(tmp_path / "folder") + os.sep) == "folder"
    assert checkpoint_name(str(tmp_path / "SmolLM2-135M.Q4_1.gguf")) == "SmolLM2-135M.Q4_1"  # file stem
    assert checkpoint_name("/abs/path/to/folder") == "folder"
    assert checkpoint_name("") == ""
    # owner/name that is an existing local folder is a path, not a Hub id
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "model").mkdir(parents=True)
    assert checkpoint_name("org/model") == "model"
    assert checkpoint_name("./org") == "org" and checkpoint_name(".") == tmp_path.name
    assert checkpoint_name("not a/valid id!") == "valid id!"  # not a valid repo id: its last component


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    """Plotting uses matplotlib's object API: the process-wide backend stays what the user chose, pyplot unused."""
    import subprocess
    import sys

    script = f"""
import sys, matplotlib
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_hub import _result
from optimum_shapley.hub import plot_contributions, plot_surrogate_fit
result = _result("org/model")
for plot, name in ((plot_contributions, "a.png"), (plot_surrogate_fit, "b.png")):
    path = plot(result, {str(tmp_path)!r} + "/" + name)
    assert open(path, "rb").read(8) == bytes.fromhex("89504e470d0a1a0a"), path
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""
    env = {**os.environ, "MPLBACKEND": "svg", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["svg", "False"]


# ------------------------------------------------------------------------------------------ Hub metadata (#16)


def _card_data(card: str) -> dict:
    import yaml

    return yaml.safe_load(card.split("---")[1])


def _measurement(ppl: float, piqa: float, source: str = "wikitext2") -> dict:
    return {
        "perplexity": {source: {"perplexity": ppl, "num_windows": 10, "seq_length": 128}},
        "zero_shot": {
            "piqa": {"acc": piqa, "acc_norm": piqa + 0.01, "num_items": 50, "harness_metrics": ["acc", "acc_norm"]}
        },
    }


def test_no_evaluation_means_no_model_index(tmp_path):
    card, _ = _write_run(tmp_path / "out", _result("HuggingFaceTB/SmolLM2-135M-Instruct"))
    data = _card_data(card)
    assert "model-index" not in data and "datasets" not in data  # nothing held-out ran, nothing claimed


def test_model_index_holds_the_final_models_held_out_results(tmp_path):
    evaluation = {
        "protocol": {},
        "results": {"dense": _measurement(20.0, 0.70), "pruned": _measurement(30.0, 0.65)},
    }
    result = _result("HuggingFaceTB/SmolLM2-135M-Instruct", evaluation=evaluation)
    card, _ = _write_run(tmp_path / "out", result)
    data = _card_data(card)
    index = data["model-index"][0]
    assert index["name"] == "SmolLM2-135M-Instruct-pruned"
    metrics = {(r["dataset"]["type"], m["type"]): m["value"] for r in index["results"] for m in r["metrics"]}
    assert metrics == {
        ("Salesforce/wikitext", "perplexity"): 30.0,
        ("baber/piqa", "acc"): 0.65,
        ("baber/piqa", "acc_norm"): 0.66,
    }
    assert set(data["datasets"]) == {"Salesforce/wikitext", "baber/piqa"}
    from huggingface_hub import ModelCard

    assert len(ModelCard(card).data.eval_results) == 3  # the Hub's own parser reads it back

    recovered = dict(evaluation, results={**evaluation["results"], "recovered": _measurement(25.0, 0.68)})
    card, _ = _write_run(tmp_path / "rec", _result("HuggingFaceTB/SmolLM2-135M-Instruct", evaluation=recovered))
    values = [m["value"] for r in _card_data(card)["model-index"][0]["results"] for m in r["metrics"]]
    assert 25.0 in values and 30.0 not in values  # the repository holds the recovered model


def test_a_perplexity_on_a_users_file_stays_out_of_the_model_index(tmp_path):
    evaluation = {"protocol": {}, "results": {"pruned": _measurement(30.0, 0.65, source="notes.txt")}}
    card, _ = _write_run(tmp_path / "out", _result("me/base", evaluation=evaluation))
    types = {r["dataset"]["type"] for r in _card_data(card)["model-index"][0]["results"]}
    assert types == {"baber/piqa"}


def test_a_hub_calibration_dataset_is_listed(tmp_path):
    result = _result("me/base", config={"dataset_name": "allenai/c4", "dataset_config_name": "en"})
    card, _ = _write_run(tmp_path / "out", result)
    assert _card_data(card)["datasets"] == ["allenai/c4"]


def test_the_surrogate_card_comes_from_the_mixin_with_base_model_metadata(tmp_path):
    _, surrogate_card = _write_run(tmp_path / "out", _result("HuggingFaceTB/SmolLM2-135M-Instruct"))
    data = _card_data(surrogate_card)
    assert data["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data["library_name"] == "optimum-shapley" and "shapley-surrogate" in data["tags"]
    assert "without evaluating a single mask" not in surrogate_card and "reuse_candidates" in surrogate_card
    assert "Held-out R^2 0.900" in surrogate_card
    _, local = _write_run(tmp_path / "local", _result(str(tmp_path / "some" / "folder")))
    assert "base_model" not in _card_data(local) and str(tmp_path) not in local


def test_the_surrogate_card_says_which_verified_sets_it_remembers(tmp_path):
    from optimum_shapley import ShapleySurrogate

    _, forgetful = _write_run(tmp_path / "none", _result("me/base"))
    assert "remembers no verified kept set" in forgetful and "verified_kept_sets" not in forgetful
    surrogate = ShapleySurrogate(num_layers=6)
    surrogate.remember_kept_sets(["110011", "111001"])
    surrogate.remember_kept_sets(["111011"])  # another size: the earlier ones stay, after it
    assert surrogate.verified_kept_sets == ["111011", "110011", "111001"]
    _, card = _write_run(tmp_path / "some", _result("me/base"), surrogate=surrogate)
    assert "best kept sets of 5 and 4 layers verified on the model" in card


def test_push_to_hub_keeps_the_trainers_signature_and_arguments(tmp_path, monkeypatch):
    import inspect

    import huggingface_hub
    from transformers import Trainer

    ours = list(inspect.signature(ShapleyLayerPruner.push_to_hub).parameters)
    assert ours[:5] == list(inspect.signature(Trainer.push_to_hub).parameters)[:5]  # self, commit_message, ...
    settings = dict(num_layers_to_remove=2, num_samples=4, seq_length=16, method="angular")
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        report_to="none",
        hub_model_id="me/from-args",
        hub_token="hf_args_token",
        hub_private_repo=True,
    )
    pruner = ShapleyLayerPruner(
        model=tiny_model("llama"),
        args=args,
        pruning_config=ShapleyPruningConfig(**settings),
        processing_class=tiny_tokenizer(),
    )
    pruner.prune(evaluate_calibration=False)
    RecordingApi.calls, RecordingApi.revisions = [], []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    repos = pruner.push_to_hub("Pruned 2 layers", revision="pruned-v1")
    assert repos == {"model": "me/from-args"}  # angular has no surrogate: no empty surrogate repository
    assert ("create_repo", "me/from-args", True, True) in RecordingApi.calls  # hub_private_repo
    assert ("create_branch", "me/from-args", "pruned-v1", "hf_args_token") in RecordingApi.calls
    assert RecordingApi.revisions[0] == ("me/from-args", "pruned-v1", "hf_args_token", "Pruned 2 layers")
    RecordingApi.revisions = []
    pruner.push_to_hub(token="hf_explicit", repo_id="me/explicit")
    assert RecordingApi.revisions[0][0] == "me/explicit" and RecordingApi.revisions[0][2] == "hf_explicit"
    with pytest.raises(TypeError, match="unexpected keyword arguments: privat"):
        pruner.push_to_hub(privat=True)


def test_the_card_counts_masks_and_evaluations_the_way_the_summary_does(tmp_path):
    """The summary's cost counts the one-pass statistics like an evaluation; the card says so instead of giving a
    second, smaller number without explanation, and its wall time says what it covers."""
    masks = ["111111", "110011", "111001"]
    card, _ = _write_run(tmp_path / "extra", _result("me/base", masks=masks, selection_evaluations=4))
    assert "3 layer masks were evaluated on the real model" in card
    assert "4 model evaluations in all, counting 1 forward pass that evaluated no mask" in card
    card, _ = _write_run(tmp_path / "equal", _result("me/base", masks=masks, selection_evaluations=3))
    assert "3 layer masks were evaluated" in card and "in all" not in card
    assert "(pruning; loading and saving not included)" in card
