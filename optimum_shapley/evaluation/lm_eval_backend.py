"""lm-evaluation-harness itself scoring the in-memory model on our records (``zero_shot(..., backend="lm-eval")``).

The harness's own task config is used unchanged (prompt, choices, ``process_docs``, metrics) through a one-file
variant that ``include``s it and only swaps the data: a ``json`` dataset holding the records our loaders produced in
the harness's schema, so the local release formats (PIQA's labels file, HellaSwag's 6-line text, ...) work offline.
The model goes in as ``HFLM(pretrained=model, tokenizer=tokenizer)``; nothing is downloaded. Temporary files, the
``datasets`` cache of the json build included, live in a temporary folder removed afterwards.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from typing import Any

from torch import nn

from .tasks import ZeroShotTask

__all__ = ["lm_eval_available", "lm_eval_zero_shot"]


def lm_eval_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("lm_eval") is not None


@functools.lru_cache(maxsize=1)
def _harness_task_yamls() -> dict[str, str]:
    """Task name -> the harness's own YAML config. Indexing the harness's ~15,000 task configs takes seconds (about
    14 s on 2 busy CPU cores): done once per process, not once per task."""
    from lm_eval.tasks import TaskManager

    return {
        name: entry.yaml_path for name, entry in TaskManager().task_index.items() if getattr(entry, "yaml_path", None)
    }


def _variant_yaml(base_yaml: str, name: str, data_file: str, cache_dir: str) -> str:
    return "\n".join(
        [
            f"include: {json.dumps(str(base_yaml))}",
            f"task: {name}",
            "tag: []",
            "dataset_path: json",
            "dataset_name: null",
            "dataset_kwargs:",
            f"  data_files: {{eval: {json.dumps(data_file)}}}",
            f"  cache_dir: {json.dumps(cache_dir)}",
            "training_split: null",
            "validation_split: null",
            "test_split: eval",
            "fewshot_split: null",
            "",
        ]
    )


def lm_eval_zero_shot(
    model: nn.Module,
    tokenizer: Any,
    task: ZeroShotTask,
    records: list[dict[str, Any]],
    *,
    batch_size: int = 8,
    return_loglikelihoods: bool = False,
) -> dict[str, Any]:
    """acc / acc_norm with standard errors from lm-eval's evaluator on ``records`` (in the harness's schema).

    With ``return_loglikelihoods``, ``"loglikelihoods"`` holds each item's per-choice scores as the harness
    computed them (for comparing scorers)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise ImportError(
            f"backend 'lm-eval' needs lm-evaluation-harness: pip install 'optimum-shapley[eval]' ({error})"
        ) from error

    base_yaml = _harness_task_yamls().get(task.name)
    if base_yaml is None:
        raise ValueError(f"lm-eval {lm_eval.__version__} has no task config named {task.name!r}")
    variant = f"optimum_shapley_{task.name}"
    with tempfile.TemporaryDirectory(prefix="optimum-shapley-lm-eval-") as folder:
        data_file = os.path.join(folder, f"{task.name}.jsonl")
        with open(data_file, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps({k: v for k, v in record.items() if not k.startswith("_")}) + "\n")
        configs = os.path.join(folder, "tasks")
        os.makedirs(configs)
        with open(os.path.join(configs, f"{variant}.yaml"), "w", encoding="utf-8") as f:
            f.write(_variant_yaml(base_yaml, variant, data_file, os.path.join(folder, "cache")))
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=[variant],
            # the variant alone: it `include`s the harness's config by path, so the default index is not needed
            task_manager=TaskManager(include_path=configs, include_defaults=False),
            log_samples=return_loglikelihoods,
            bootstrap_iters=1,  # acc is a mean: its stderr is closed-form (no bootstrap is run for it)
        )
    metrics = output["results"][variant]

    def number(key: str) -> float | None:  # the harness writes "N/A" for a standard error it could not compute
        value = metrics.get(f"{key},none")
        return float(value) if isinstance(value, (int, float)) else None

    result = {
        "acc": number("acc"),
        "acc_stderr": number("acc_stderr"),
        "acc_norm": number("acc_norm"),  # absent for boolq and winogrande: the harness reports acc only
        "acc_norm_stderr": number("acc_norm_stderr"),
        "num_items": len(records),
    }
    if return_loglikelihoods:
        samples = sorted(output["samples"][variant], key=lambda sample: sample["doc_id"])
        result["loglikelihoods"] = [[float(resp[0]) for resp in sample["filtered_resps"]] for sample in samples]
    return result
