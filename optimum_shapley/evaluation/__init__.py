"""Measuring a model: the calibration loss of layer masks (the method's cost, cached) and held-out perplexity.

``masks`` holds what the search needs (mask evaluations, utilities, the resumable cache); ``perplexity`` the standard
held-out protocol users compare with papers; ``tasks`` + ``zeroshot`` lm-evaluation-harness's zero-shot accuracy.
"""

from .evaluator import (
    CACHE_FILE_NAME,
    MEASURE,
    MaskEvaluation,
    MaskEvaluationCache,
    MaskEvaluator,
    evaluate_batches,
    model_fingerprint,
    run_fingerprint,
    token_nll,
    utilities_from_nll,
)
from .perplexity import (
    PERPLEXITY_SOURCES,
    PerplexityReport,
    load_perplexity_text,
    perplexity,
    perplexity_of_windows,
    perplexity_report,
    perplexity_windows,
    read_raw_lines,
    text_windows,
    window_nll_sums,
)
from .tasks import TASKS, MultipleChoiceItem, TaskDataError, ZeroShotTask, get_task, load_task_records, register_task
from .zeroshot import loglikelihoods, score_items, zero_shot

__all__ = [
    "CACHE_FILE_NAME",
    "MEASURE",
    "PERPLEXITY_SOURCES",
    "TASKS",
    "MaskEvaluation",
    "MaskEvaluationCache",
    "MaskEvaluator",
    "MultipleChoiceItem",
    "PerplexityReport",
    "TaskDataError",
    "ZeroShotTask",
    "evaluate_batches",
    "get_task",
    "load_perplexity_text",
    "load_task_records",
    "loglikelihoods",
    "model_fingerprint",
    "perplexity",
    "perplexity_of_windows",
    "perplexity_report",
    "perplexity_windows",
    "read_raw_lines",
    "register_task",
    "run_fingerprint",
    "score_items",
    "text_windows",
    "window_nll_sums",
    "token_nll",
    "utilities_from_nll",
    "zero_shot",
]
