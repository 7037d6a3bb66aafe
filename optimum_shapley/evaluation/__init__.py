"""Measuring a model: the calibration loss of layer masks (the method's cost, cached) and held-out perplexity.

``masks`` holds what the search needs (mask evaluations, utilities, the resumable cache); ``perplexity`` the standard
held-out protocol users compare with papers.
"""

from .masks import (
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
from .perplexity import perplexity_of_windows, read_raw_lines, text_windows

__all__ = [
    "CACHE_FILE_NAME",
    "MEASURE",
    "MaskEvaluation",
    "MaskEvaluationCache",
    "MaskEvaluator",
    "evaluate_batches",
    "model_fingerprint",
    "perplexity_of_windows",
    "read_raw_lines",
    "run_fingerprint",
    "text_windows",
    "token_nll",
    "utilities_from_nll",
]
