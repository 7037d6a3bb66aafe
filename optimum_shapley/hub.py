"""Outputs of a run: the saved folder (model, card, plots, results, surrogate), and pushing it to the Hub.

``model.push_to_hub()`` would overwrite our README with a generic card, so the folder is written here and uploaded
with ``HfApi.create_repo`` + ``HfApi.upload_folder``; the surrogate goes to a repository of its own.
"""

from __future__ import annotations

import os
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .card_metadata import card_datasets, eval_results, is_hub_id
from .result import RESULTS_NAME, PruningResult

__all__ = [
    "PLOTS_DIR",
    "build_model_card",
    "checkpoint_name",
    "plot_contributions",
    "plot_surrogate_fit",
    "push_run_folder",
    "write_run_folder",
]

PLOTS_DIR = "plots"
CONTRIBUTIONS_PLOT = "layer_contributions.png"
SURROGATE_PLOT = "surrogate_fit.png"

CITATION = """@inproceedings{pruning_cooperative_game_2026,
  title     = {Pruning as a Cooperative Game: Surrogate-Assisted Layer Contribution Estimation for LLMs},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2026}
}"""


def _figure(figsize: tuple[float, float]):
    """A figure drawn off-screen with matplotlib's object API: pyplot and ``matplotlib.use`` would switch the
    process-wide backend (and keep every figure alive in pyplot's registry) under a notebook or GUI user."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure


def plot_contributions(result: PruningResult, path: str) -> str | None:
    """Bar chart of every layer's score (contribution) with its standard error; removed layers in red. Nothing to
    draw for methods that only produce a selection."""
    if not result.values:
        return None
    layers = list(range(result.num_layers))
    removed = set(result.removed_layers)
    colors = ["#d62728" if i in removed else "#1f77b4" for i in layers]
    fig = _figure((max(6.0, 0.28 * result.num_layers + 2), 3.6))
    ax = fig.subplots()
    ax.bar(layers, result.values, yerr=result.stderr or None, color=colors, capsize=2, ecolor="#444444")
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel(f"contribution ({result.utility})" if result.utility else f"{result.method} score")
    ax.set_title(f"{result.method}: {result.num_removed} of {result.num_layers} layers removed (red)")
    ax.set_xticks(layers)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_surrogate_fit(result: PruningResult, path: str) -> str | None:
    """Measured vs predicted utility on the held-out masks (nothing to draw when the surrogate was reused)."""
    fit = result.surrogate_fit or {}
    measured, predicted = fit.get("validation_measured") or [], fit.get("validation_predicted") or []
    if not measured:
        return None
    fig = _figure((4.2, 4.0))
    ax = fig.subplots()
    ax.scatter(measured, predicted, s=14, alpha=0.8)
    low, high = min(measured + predicted), max(measured + predicted)
    ax.plot([low, high], [low, high], color="gray", linewidth=0.8, linestyle="--")
    ax.set_xlabel(f"measured {result.utility}")
    ax.set_ylabel(f"surrogate {result.utility}")
    ax.set_title(
        f"held-out masks (n={len(measured)})\nR$^2$={fit.get('validation_r2', float('nan')):.3f}, "
        f"Spearman={fit.get('validation_spearman', float('nan')):.3f}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def _path_name(path: str) -> str:
    """A local path's last component (``.gguf`` files without the extension): the folder or file name, never the
    machine path above it."""
    name = os.path.basename(os.path.abspath(os.path.expanduser(path))) if path else ""
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name


def checkpoint_name(name_or_path: str, gguf_name: str = "") -> str:
    """The name a model card gives a checkpoint, never a machine path: ``name_or_path`` itself when it is a Hub id
    (``owner/name``, not an existing local path; the packaged aliases record theirs), else the GGUF file's
    ``general.name`` (``gguf_name``: ``load_causal_lm`` stores it as ``model.gguf_name``), else the folder name or
    file stem."""
    name_or_path = os.fspath(name_or_path or "")
    if is_hub_id(name_or_path):
        return name_or_path
    return gguf_name or _path_name(name_or_path)


def _source_name(source: str) -> str:
    """A data source for the card: a Hub name as given, a local file or folder by its name only."""
    source = str(source or "")
    looks_local = os.path.isabs(os.path.expanduser(source)) or os.path.exists(source)
    return os.path.basename(os.path.normpath(os.path.expanduser(source))) if looks_local else source


def _how_chosen(result: PruningResult, surrogate_repo_id: str | None) -> str:
    calibration = (
        f"{result.calibration.get('num_samples')} x {result.calibration.get('seq_length')} tokens of "
        f"`{_source_name(result.calibration.get('source'))}`"
    )
    if not result.played_game:  # a peer criterion
        from .criteria import get_criterion

        description = get_criterion(result.method).description
        return (
            f"Layers were chosen by the `{result.method}` criterion ({description}) on {calibration}, using "
            f"{result.selection_evaluations} real-model evaluations in {result.selection_seconds:.1f} s; the "
            f"{result.num_removed} least important layers were removed."
        )
    fit = result.surrogate_fit or {}
    if fit:
        fit_text = (
            f"The surrogate was trained on {fit['num_train']} evaluated masks and validated on {fit['num_validation']} "
            f"held-out masks: R^2 = {fit['validation_r2']:.3f}, Spearman rank correlation = "
            f"{fit['validation_spearman']:.3f} (training R^2 = {fit['train_r2']:.3f})."
        )
    else:
        fit_text = "A previously trained surrogate was reused; its validation is reported in its own repository."
    surrogate_text = (
        f"The surrogate is published separately as [`{surrogate_repo_id}`](https://huggingface.co/{surrogate_repo_id})."
        if surrogate_repo_id
        else "The surrogate is saved in the `surrogate/` folder of the run."
    )
    from .game_report import game_paragraphs

    passes = result.selection_evaluations - len(result.masks)  # one-pass statistics, KL reference rebuilds
    all_counted = (
        f"; {result.selection_evaluations} model evaluations in all, counting {passes} forward "
        f"pass{'es' if passes > 1 else ''} that evaluated no mask (block statistics, KL reference) like one each"
        if passes > 0 and result.masks
        else ""
    )
    opening = (
        "Each layer is a player in a cooperative game whose utility is the model's quality on calibration text "
        f"(`{result.utility}`). {len(result.masks) or 'No'} layer masks were evaluated on the real model "
        f"(calibration: {calibration}; random design masks from kept-layer counts {result.strata}{all_counted}). "
        f"{fit_text}"
    )
    if not result.game:  # a result written before the game was recorded
        return f"{opening} {surrogate_text}"
    return "\n\n".join([opening, *game_paragraphs(result), surrogate_text])


def _budget_note(result: PruningResult) -> str:
    """What a parameter-fraction budget asked for and what the pruned model holds (empty for a layer count)."""
    budget = result.parameter_budget
    if not budget:
        return ""
    return (
        f" The budget was a parameter fraction (`target_params={budget['target_fraction']}`): keep at most "
        f"{budget['target_fraction']:.1%} of the {budget['dense_parameters']:,} parameters. {result.num_removed} "
        f"layers is the fewest whose removal meets it whichever layers are chosen; the pruned model keeps "
        f"{budget['pruned_parameters']:,} ({budget['fraction']:.1%})."
    )


def _weights_note(recovery: dict[str, Any], healing: dict[str, Any] | None = None) -> str:
    """What happened to the kept layers' weights, stated plainly (the card must not claim "unchanged" after LoRA)."""
    from .healing import folded_runs

    if healing and not folded_runs(healing):
        healing = None  # fitted, checked and not folded: the kept weights are the original ones (see *Healing*)
    if healing:
        method = healing.get("method")
        healed = f"The kept layers' weights were changed by training-free `{method}` healing (see *Healing*)"
        if not recovery:
            return healed + "; the model has not been fine-tuned after pruning."
        if recovery.get("merged"):
            return healed + ", then fine-tuned with LoRA and the adapter merged (see *Recovery*)."
        return healed + "; a LoRA adapter trained after that is kept in `adapter/` (see *Recovery*)."
    if not recovery:
        return (
            "No weights were changed: the kept layers are the original ones, and the model has not been fine-tuned\n"
            "after pruning."
        )
    if recovery.get("merged"):
        return (
            "After pruning, the model was fine-tuned with LoRA and the adapter was merged into the weights: the\n"
            "weights here are the recovered model (see *Recovery*)."
        )
    return (
        "The weights here are the kept layers unchanged; a LoRA adapter trained after pruning is kept in `adapter/`\n"
        "and must be loaded on top of them with PEFT (see *Recovery*)."
    )


def _healing_section(result: PruningResult) -> str:
    """The card's account of training-free healing: what was fitted on which text and folded where."""
    if not result.healing:
        return ""
    from .healing import describe_healing

    source = f"`{_source_name(result.calibration.get('source'))}`"
    seq_length = result.calibration.get("seq_length")
    if result.healing.get("calibration_set", True):  # runs saved before heal_num_samples healed on it
        calibration = (
            f"{result.calibration.get('num_samples')} x {seq_length} tokens of {source}, the text that chose the layers"
        )
    else:
        calibration = (
            f"{result.healing.get('num_samples')} x {seq_length} tokens of {source}: healing's own sample "
            "(heal_num_samples) of the text that chose the layers"
        )
    return f"""## Healing

{describe_healing(result.healing, calibration)}

"""


def _recovery_section(recovery: dict[str, Any]) -> str:
    """The card's account of LoRA recovery: data, steps, tokens, LoRA settings, losses, merged or adapter."""
    if not recovery:
        return ""
    from .recovery import ADAPTER_DIR

    lora = recovery.get("lora", {})
    targets = lora.get("target_modules")
    targets = ", ".join(f"`{t}`" for t in targets) if isinstance(targets, list) else f"`{targets}`"
    if recovery.get("merged"):
        how = (
            "The adapter was merged into the weights (`merge_and_unload`), so the model loads with plain "
            "`transformers` as shown above and needs no PEFT."
        )
    else:
        how = f"""The adapter was kept: `model.safetensors` holds the pruned model before recovery and
`{ADAPTER_DIR}/` the LoRA adapter. Load both with PEFT:

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM

base = AutoModelForCausalLM.from_pretrained("<this repository>")
model = PeftModel.from_pretrained(base, "<this repository>", subfolder="{ADAPTER_DIR}")
model = model.merge_and_unload()   # optional: fold the adapter into the weights
```"""
    previous = recovery.get("previous")
    earlier = (
        f" An earlier recovery ({previous.get('steps')} steps on `{previous.get('dataset')}`) had already been merged."
        if isinstance(previous, dict)
        else ""
    )
    return f"""## Recovery (LoRA fine-tuning after pruning)

After pruning, a LoRA adapter was trained with PEFT and the `transformers` Trainer for {recovery["steps"]} steps
({recovery["tokens"]:,} tokens: batch {recovery["batch_size"]} of {recovery["seq_length"]}-token blocks drawn from
`{_source_name(recovery["dataset"])}`, learning rate {recovery["learning_rate"]:g}, {recovery["seconds"]:.0f} s): r = {lora.get("r")},
alpha = {lora.get("lora_alpha")}, dropout = {lora.get("lora_dropout")}, on {targets}
({recovery["trainable_parameters"]:,} trainable parameters). The training loss went from
{recovery["train_loss_first"]:.3f} to {recovery["train_loss_last"]:.3f} (mean over the first and the last
{recovery["logging_steps"]} steps).{earlier} {how}

"""


def _evaluation_section(evaluation: dict[str, Any]) -> str:
    """The card's held-out evaluation: dense vs pruned (vs recovered) side by side, with the protocol."""
    from .evaluation.suite import evaluation_markdown

    table = evaluation_markdown(evaluation) if evaluation else ""
    if not table:
        return ""
    return f"""## Evaluation (held-out)

{table}

"""


def _before_changes(result: PruningResult) -> str:
    changes = [name for name, done in (("healing", result.healing), ("recovery", result.recovery)) if done]
    return f" (before {' and '.join(changes)})" if changes else ""


def build_model_card(
    result: PruningResult,
    *,
    plots: dict[str, str] | None = None,
    surrogate_repo_id: str | None = None,
) -> ModelCard:
    """The pruned model's card: what was removed, how it was chosen, what it measured, and its limits. The base
    model is named by ``result.base_model_name``, else :func:`checkpoint_name` of ``result.base_model``: a run on
    a local folder or ``.gguf`` file writes no machine path."""
    from .healing import folded_runs

    kept = result.num_layers - result.num_removed
    name = result.base_model_name or checkpoint_name(result.base_model)
    calibration_source = str((result.config or {}).get("dataset_name") or "")  # a Hub id, a file, or None
    results = eval_results(result.evaluation)
    data = ModelCardData(
        base_model=result.base_model if is_hub_id(result.base_model) else None,
        model_name=(f"{name.split('/')[-1]}-pruned" if name else "pruned-model") if results else None,
        datasets=card_datasets(calibration_source if is_hub_id(calibration_source) else None, result.evaluation),
        eval_results=results or None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["optimum-shapley", "layer-pruning", "pruning", f"method-{result.method}"]
        + (["lora-recovery"] if result.recovery else [])
        + ([f"healing-{result.healing.get('method')}"] if folded_runs(result.healing) else []),
    )
    summary = "\n".join(
        f"| {label} | {name if label == 'base model' else value} |" for label, value in result.summary_rows()
    )
    scores = ""
    if result.values:
        stderr = result.stderr or [float("nan")] * len(result.values)
        removed = set(result.removed_layers)
        rows = "\n".join(
            f"| {i} | {v:+.4f} | {s:.4f} | {'removed' if i in removed else 'kept'} |"
            for i, (v, s) in enumerate(zip(result.values, stderr))
        )
        title = "Layer contributions" if result.played_game else "Layer scores"
        scores = (
            f"## {title}\n\n| layer | {title.split()[1][:-1]} | std. error | status |\n|---:|---:|---:|---|\n{rows}\n"
        )
    figures = "".join(f"\n![{title}]({rel})\n" for title, rel in (plots or {}).items())
    ppl_note = ""
    if result.calibration_ppl_before is not None:
        ppl_note = (
            f"Calibration perplexity went from {result.calibration_ppl_before:.2f} to "
            f"{result.calibration_ppl_after:.2f}{_before_changes(result)}. It is measured "
            "on the calibration text that chose the layers, "
            "so it is not a held-out evaluation"
            + (
                ": see *Evaluation (held-out)* below."
                if result.evaluation
                else ": measure perplexity and zero-shot accuracy on your own held-out data before relying on this "
                "model (`optimum-shapley evaluate`)."
            )
        )
    source_note = f" The base weights were {result.weights_source}." if result.weights_source else ""
    weights_note = _weights_note(result.recovery, result.healing)
    content = f"""---
{data.to_yaml()}
---

# Layer-pruned {name or "model"}

This model is `{name or "the base model"}` with **{result.num_removed} of its {result.num_layers}
decoder layers removed** ({kept} remain), chosen by optimum-shapley with the `{result.method}`
method. It loads with plain `transformers`:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("<this repository>")
tokenizer = AutoTokenizer.from_pretrained("<this repository>")
```

`config.json` records the original depth and the removed layers under `layer_pruning`. {weights_note}{source_note}

## Summary

| | |
|---|---|
{summary}

Removed layers (original indices): **{", ".join(map(str, result.removed_layers))}**.{_budget_note(result)}

## How the layers were chosen

{_how_chosen(result, surrogate_repo_id)}

{ppl_note}

{_evaluation_section(result.evaluation)}{_healing_section(result)}{_recovery_section(result.recovery)}{scores}{figures}
## Citation

```bibtex
{CITATION}
```
"""
    return ModelCard(content)


def write_run_folder(
    folder: str,
    *,
    model: Any,
    tokenizer: Any,
    pruning_config: Any,
    result: PruningResult,
    surrogate: Any,
    surrogate_dir: str,
    surrogate_repo_id: str | None = None,
    adapter_base_model: str | None = None,
) -> dict[str, str]:
    """Write everything a run produces into ``folder`` and return the paths of the main artefacts.

    A model holding a kept LoRA adapter (``PeftModel``) is written as its base weights plus ``adapter/``, whose
    config names ``adapter_base_model`` (the final folder or Hub repository) as the base to load it on."""
    from .recovery import is_adapter_model, save_model_and_adapter

    if not result.base_model_name:  # recorded with the results, so a later `recover` card names it the same way
        result.base_model_name = checkpoint_name(result.base_model, getattr(model, "gguf_name", "") or "")
    if is_adapter_model(model):
        save_model_and_adapter(model, folder, adapter_base_model)
    else:
        model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    pruning_config.save_pretrained(folder)
    result.to_json_file(os.path.join(folder, RESULTS_NAME))

    plots_dir = os.path.join(folder, PLOTS_DIR)
    os.makedirs(plots_dir, exist_ok=True)
    plots = {}
    if plot_contributions(result, os.path.join(plots_dir, CONTRIBUTIONS_PLOT)):
        plots["Layer contributions"] = f"{PLOTS_DIR}/{CONTRIBUTIONS_PLOT}"
    if plot_surrogate_fit(result, os.path.join(plots_dir, SURROGATE_PLOT)):
        plots["Surrogate on held-out masks"] = f"{PLOTS_DIR}/{SURROGATE_PLOT}"

    card = build_model_card(result, plots=plots, surrogate_repo_id=surrogate_repo_id)
    card.save(os.path.join(folder, "README.md"))

    surrogate_path = os.path.join(folder, surrogate_dir)
    if surrogate is not None:
        surrogate.save_pretrained(surrogate_path, model_card_kwargs=surrogate_card_kwargs(result))
    return {
        "model": folder,
        "card": os.path.join(folder, "README.md"),
        "results": os.path.join(folder, RESULTS_NAME),
        "plots": ", ".join(os.path.join(folder, p) for p in plots.values()),
        "surrogate": surrogate_path,
    }


def surrogate_card_kwargs(result: PruningResult) -> dict[str, Any]:
    """The surrogate card's arguments (``ShapleySurrogate.save_pretrained(model_card_kwargs=...)``): the base
    model by its checkpoint name, never a machine path, and the held-out fit of this run."""
    fit = result.surrogate_fit or {}
    metrics = (
        f"Held-out R^2 {fit['validation_r2']:.3f}, Spearman {fit['validation_spearman']:.3f} on "
        f"{fit['num_validation']} masks (trained on {fit['num_train']})."
        if fit
        else "Reused from an earlier run."
    )
    return {
        "model_title": result.base_model_name or checkpoint_name(result.base_model),
        "metrics": metrics,
        "base_model_id": result.base_model if is_hub_id(result.base_model) else None,
    }


def push_run_folder(
    folder: str,
    repo_id: str,
    *,
    surrogate_repo_id: str,
    surrogate_dir: str,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload layer-pruned model (optimum-shapley)",
    revision: str | None = None,
) -> dict[str, str]:
    """Upload a saved run: the model folder (without the surrogate and cache) and the surrogate when the run has
    one, each to its repo; to branch ``revision`` when given (created from the default branch when missing)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    uploaded = {}
    for kind, repo_id_, path, message, ignore in (
        (
            "model",
            repo_id,
            folder,
            commit_message,
            [f"{surrogate_dir}/*", "mask_evaluations.jsonl", ".shapley-staging-*"],
        ),
        (
            "surrogate",
            surrogate_repo_id,
            os.path.join(folder, surrogate_dir),
            "Upload Shapley surrogate (optimum-shapley)",
            None,
        ),
    ):
        if not os.path.isdir(path):
            continue  # a method without a surrogate (a peer criterion): the model repository only
        repo = api.create_repo(repo_id_, private=private, exist_ok=True).repo_id
        if revision is not None:
            api.create_branch(repo, branch=revision, exist_ok=True)
        api.upload_folder(
            repo_id=repo, folder_path=path, commit_message=message, ignore_patterns=ignore, revision=revision
        )
        uploaded[kind] = repo
    return uploaded
