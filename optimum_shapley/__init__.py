"""optimum-shapley: remove whole decoder layers from a causal LM, ranked by surrogate-assisted Shapley values."""

from .architectures import UnsupportedArchitectureError, find_decoder_layers
from .config import ShapleyPruningConfig
from .criteria import METHODS, CriterionResult, select_layers
from .data import (
    EMBEDDED_SOURCE,
    CalibrationDataError,
    CalibrationDataset,
    build_calibration_dataset,
    load_texts,
    tokenize_blocks,
)
from .evaluation import MaskEvaluator
from .healing import HealingError, HealingNotExactError, HealingReport, heal_removed_layers
from .loading import PACKAGED_MODELS, MissingModelPackageError, load_causal_lm
from .masking import LayerMask, LayerSelectionError, UnsafeLayerRemovalError, drop_layers, num_decoder_layers
from .pruner import ShapleyLayerPruner
from .result import PruningResult
from .sampling import sample_masks
from .shapley import ShapleyEstimate, estimate_contributions, paper_contributions, permutation_shapley
from .surrogate import ShapleySurrogate, SurrogateFit, train_surrogate

__version__ = "0.1.0"

__all__ = [
    "EMBEDDED_SOURCE",
    "METHODS",
    "PACKAGED_MODELS",
    "CalibrationDataError",
    "CalibrationDataset",
    "CriterionResult",
    "HealingError",
    "HealingNotExactError",
    "HealingReport",
    "LayerMask",
    "LayerSelectionError",
    "MaskEvaluator",
    "MissingModelPackageError",
    "PruningResult",
    "ShapleyEstimate",
    "ShapleyLayerPruner",
    "ShapleyPruningConfig",
    "ShapleySurrogate",
    "SurrogateFit",
    "UnsafeLayerRemovalError",
    "UnsupportedArchitectureError",
    "__version__",
    "build_calibration_dataset",
    "drop_layers",
    "estimate_contributions",
    "find_decoder_layers",
    "heal_removed_layers",
    "load_causal_lm",
    "load_texts",
    "num_decoder_layers",
    "paper_contributions",
    "permutation_shapley",
    "sample_masks",
    "select_layers",
    "tokenize_blocks",
    "train_surrogate",
]
