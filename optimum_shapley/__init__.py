"""optimum-shapley: remove whole decoder layers from a causal LM, ranked by surrogate-assisted Shapley values."""

from .architectures import UnsupportedArchitectureError, find_decoder_layers
from .loading import PACKAGED_MODELS, MissingModelPackageError, load_causal_lm
from .masking import LayerMask, LayerSelectionError, UnsafeLayerRemovalError, drop_layers, num_decoder_layers

__version__ = "0.1.0"

__all__ = [
    "PACKAGED_MODELS",
    "LayerMask",
    "LayerSelectionError",
    "MissingModelPackageError",
    "UnsafeLayerRemovalError",
    "UnsupportedArchitectureError",
    "__version__",
    "drop_layers",
    "find_decoder_layers",
    "load_causal_lm",
    "num_decoder_layers",
]
