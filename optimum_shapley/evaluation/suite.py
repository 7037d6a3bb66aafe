"""One evaluation protocol run on one or several models (dense, pruned, recovered): what the ``evaluate`` command
prints, what ``prune --eval-*`` records in ``PruningResult.evaluation`` and the model card shows.

``EvaluationSuite.prepare()`` reads every text and task record first, so an unknown task, a missing file or a
malformed line fails before a model is loaded; ``run(model, tokenizer)`` then measures one model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .perplexity import PERPLEXITY_SOURCES, PerplexityText, load_perplexity_text, perplexity_report
from .tasks import TASKS, get_task, load_task_records
from .zeroshot import BACKENDS, resolve_backend, score_tasks

__all__ = ["EvaluationConfig", "EvaluationSuite", "evaluation_markdown", "evaluation_rows", "parse_names"]


def parse_names(value: str | Sequence[str] | None) -> list[str]:
    """``"wikitext2,ptb"`` or ``["wikitext2", "ptb"]`` -> ``["wikitext2", "ptb"]`` (blanks and repeats dropped)."""
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else [p for item in value for p in str(item).split(",")]
    names: list[str] = []
    for part in (p.strip() for p in parts):
        if part and part not in names:
            names.append(part)
    return names


@dataclass
class EvaluationConfig:
    """What to measure: perplexity corpora (names of ``PERPLEXITY_SOURCES`` or text files) and zero-shot tasks."""

    ppl: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    data_dir: str | None = None
    limit: int | None = None  # first N items of each task
    seq_length: int = 128
    max_windows: int | None = None  # first N perplexity windows
    batch_size: int = 8
    backend: str = "auto"

    def __post_init__(self) -> None:
        self.ppl, self.tasks = parse_names(self.ppl), parse_names(self.tasks)
        if not self.ppl and not self.tasks:
            raise ValueError("nothing to evaluate: give perplexity texts and/or zero-shot tasks")
        for name, value, minimum in (
            ("limit", self.limit, 1),
            ("max_windows", self.max_windows, 1),
            ("seq_length", self.seq_length, 2),
            ("batch_size", self.batch_size, 1),
        ):
            if value is not None and value < minimum:
                raise ValueError(f"{name} must be at least {minimum}, got {value}")
        for task in self.tasks:
            if task not in TASKS:
                raise ValueError(f"unknown zero-shot task {task!r}; choose from {', '.join(TASKS)}")
        for name in self.ppl:
            if name.lower() not in PERPLEXITY_SOURCES and not os.path.isfile(os.path.expanduser(name)):
                raise ValueError(
                    f"unknown perplexity text {name!r}: not one of {', '.join(PERPLEXITY_SOURCES)} nor an existing file"
                )
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose from {', '.join(BACKENDS)}")
        if self.data_dir is not None and not os.path.isdir(self.data_dir):
            raise FileNotFoundError(f"data dir {self.data_dir} is not a folder")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EvaluationSuite:
    """Reads the data of an ``EvaluationConfig`` once and measures any number of models on it."""

    def __init__(self, config: EvaluationConfig):
        self.config = config
        self.texts: dict[str, PerplexityText] = {}
        self.records: dict[str, tuple[list[dict[str, Any]], str]] = {}

    def prepare(self) -> EvaluationSuite:
        """Read every text and task record now (fails on missing or malformed data before any model is loaded)."""
        config = self.config
        for name in config.ppl:
            self.texts[name] = load_perplexity_text(name, config.data_dir)
        for task in config.tasks:
            self.records[task] = load_task_records(get_task(task), config.data_dir, config.limit)
        return self

    def protocol(self) -> dict[str, Any]:
        """How the numbers were measured, for the JSON record and the model card."""
        config = self.config
        return {
            **config.to_dict(),
            "backend": resolve_backend(config.backend) if config.tasks else None,
            "perplexity_sources": {name: text.source for name, text in self.texts.items()},
            "task_sources": {task: source for task, (_, source) in self.records.items()},
        }

    def run(self, model: nn.Module, tokenizer: Any, *, show_progress: bool = False) -> dict[str, Any]:
        """``{"perplexity": {name: PerplexityReport dict}, "zero_shot": {task: metrics}, "seconds": s}``."""
        if not self.texts and not self.records:
            self.prepare()
        config = self.config
        start = time.perf_counter()
        perplexities = {
            name: perplexity_report(
                model,
                tokenizer,
                text,
                config.seq_length,
                max_windows=config.max_windows,
                batch_size=config.batch_size,
                show_progress=show_progress,
            ).to_dict()
            for name, text in self.texts.items()
        }
        tasks = score_tasks(
            model,
            tokenizer,
            self.records,
            batch_size=config.batch_size,
            backend=config.backend,
            show_progress=show_progress,
        )
        return {"perplexity": perplexities, "zero_shot": tasks, "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------------------------------------- tables


def _number(value: Any, stderr: Any = None, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    text = format(value, spec)
    return f"{text} ± {format(stderr, spec)}" if stderr is not None else text


def evaluation_rows(results: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) comparing measurements side by side: one column per model (``results`` = label ->
    ``EvaluationSuite.run`` output), one row per perplexity and per task metric (acc, acc_norm, ± standard error)."""
    labels = list(results)
    header = ["metric", *labels]
    rows: list[list[str]] = []
    ppl_names = [name for label in labels for name in results[label].get("perplexity", {})]
    for name in dict.fromkeys(ppl_names):
        cells = []
        for label in labels:
            report = results[label].get("perplexity", {}).get(name)
            cells.append(_number(report["perplexity"], spec=".2f") if report else "-")
        first = next(results[label]["perplexity"][name] for label in labels if name in results[label]["perplexity"])
        rows.append([f"{name} perplexity ({first['num_windows']} x {first['seq_length']} tokens)", *cells])
    task_names = [task for label in labels for task in results[label].get("zero_shot", {})]
    for task in dict.fromkeys(task_names):
        reported = next(
            results[label]["zero_shot"][task].get("harness_metrics")
            for label in labels
            if task in results[label]["zero_shot"]
        )
        for metric in reported or ("acc", "acc_norm"):  # what lm-eval reports for the task (boolq: acc only)
            cells = []
            for label in labels:
                scores = results[label].get("zero_shot", {}).get(task)
                cells.append(_number(scores.get(metric), scores.get(f"{metric}_stderr")) if scores else "-")
            if all(cell == "-" for cell in cells):
                continue
            first = next(results[label]["zero_shot"][task] for label in labels if task in results[label]["zero_shot"])
            rows.append([f"{task} {metric} (n={first['num_items']})", *cells])
    return header, rows


def evaluation_text_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The comparison as aligned plain text, for the terminal."""
    header, rows = evaluation_rows(results)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
        for row in [header, *rows]
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def evaluation_markdown(evaluation: Mapping[str, Any]) -> str:
    """A markdown table of ``{"protocol": ..., "results": {label: measurement}}`` and the protocol in words."""
    results = evaluation.get("results") or {}
    if not results:
        return ""
    header, rows = evaluation_rows(results)
    table = "\n".join(
        [
            "| " + " | ".join(header) + " |",
            "|---|" + "---:|" * (len(header) - 1),
            *("| " + " | ".join(row) + " |" for row in rows),
        ]
    )
    return f"{table}\n\n{describe_protocol(evaluation.get('protocol') or {})}"


def describe_protocol(protocol: Mapping[str, Any]) -> str:
    """The measurement protocol in one paragraph (what papers state next to their tables)."""
    parts = []
    if protocol.get("ppl"):
        windows = f"the first {protocol['max_windows']} " if protocol.get("max_windows") else ""
        sources = protocol.get("perplexity_sources") or {}
        read = ", ".join(f"{name}: `{os.path.basename(str(source))}`" for name, source in sources.items())
        c4 = (
            " (C4: SparseGPT's first 1,100 documents joined by a space, at most 256 windows)" if "c4" in sources else ""
        )
        parts.append(
            f"Perplexity: documents joined with `\\n\\n`{c4}, {windows}non-overlapping {protocol.get('seq_length')}-token "
            f"windows (BOS first where the tokenizer adds one), every predicted token weighted equally ({read})."
        )
    if protocol.get("tasks"):
        limit = f"the first {protocol['limit']} items of each task" if protocol.get("limit") else "every item"
        parts.append(
            "Zero-shot accuracy with lm-evaluation-harness's prompts and scoring (summed continuation "
            "log-likelihood; acc_norm divides it by the choice's length in characters; ± is the standard error), "
            f"on {limit}; backend `{protocol.get('backend')}`."
        )
    return " ".join(parts)
