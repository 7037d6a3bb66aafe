"""What the Hub reads from a pruned model's card: ``datasets`` and a ``model-index`` of the held-out results.

Only measurements that ran go in, each for the model the repository holds (the recovered one after recovery, else
the pruned one); perplexity on a named corpus (WikiText-2, PTB, C4) and zero-shot accuracy, with their datasets'
Hub ids. A perplexity on the user's own text file has no Hub dataset: it stays in the card's table only.
"""

from __future__ import annotations

import os
from typing import Any

from huggingface_hub import EvalResult

__all__ = ["card_datasets", "eval_results", "final_measurement", "is_hub_id"]


def is_hub_id(name: str) -> bool:
    """``owner/name`` that is a valid Hub repository id and not an existing local path."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not name or name.count("/") != 1 or name.startswith((".", "~")) or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


PERPLEXITY_NAMES = {"wikitext2": "WikiText-2 (raw)", "ptb": "Penn Treebank", "c4": "C4 (en, validation)"}


def final_measurement(evaluation: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(label, measurement) of the model the repository holds: ``recovered`` if it ran, else ``pruned``."""
    results = (evaluation or {}).get("results") or {}
    for label in ("recovered", "pruned"):
        if label in results:
            return label, results[label]
    return None


def eval_results(evaluation: dict[str, Any]) -> list[EvalResult]:
    """One ``EvalResult`` per held-out number of the final model (perplexity and task metrics)."""
    from .evaluation.perplexity import PERPLEXITY_SOURCES
    from .evaluation.tasks import TASKS

    final = final_measurement(evaluation)
    if final is None:
        return []
    _, measurement = final
    out: list[EvalResult] = []
    for name, report in (measurement.get("perplexity") or {}).items():
        corpus = PERPLEXITY_SOURCES.get(name)
        if corpus is None:  # the user's own file: no dataset the Hub knows
            continue
        dataset_id, config, split, _ = corpus.hub
        out.append(
            EvalResult(
                task_type="text-generation",
                task_name="Language modelling",
                dataset_type=dataset_id,
                dataset_name=PERPLEXITY_NAMES.get(name, name),
                dataset_config=config,
                dataset_split=split,
                metric_type="perplexity",
                metric_value=round(float(report["perplexity"]), 4),
                metric_name=f"perplexity ({report['num_windows']} x {report['seq_length']} tokens)",
            )
        )
    for task, scores in (measurement.get("zero_shot") or {}).items():
        spec = TASKS.get(task)
        if spec is None:
            continue
        dataset_id, config, split = spec.hub
        for metric in scores.get("harness_metrics") or spec.harness_metrics:
            if scores.get(metric) is None:
                continue
            out.append(
                EvalResult(
                    task_type="multiple-choice",
                    task_name="Zero-shot multiple choice",
                    dataset_type=dataset_id,
                    dataset_name=task,
                    dataset_config=config,
                    dataset_split=split,
                    metric_type=metric,
                    metric_value=round(float(scores[metric]), 4),
                    metric_name=f"{metric} (zero-shot, n={scores.get('num_items')})",
                )
            )
    return out


def card_datasets(calibration_hub_id: str | None, evaluation: dict[str, Any]) -> list[str] | None:
    """Hub dataset ids the run read: the calibration set when it came from the Hub, and every evaluation dataset."""
    ids = ([calibration_hub_id] if calibration_hub_id else []) + [r.dataset_type for r in eval_results(evaluation)]
    return list(dict.fromkeys(ids)) or None
