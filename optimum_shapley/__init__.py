"""optimum-shapley: remove whole decoder layers from a causal LM, chosen by a cooperative game over the layers.

The public API is a few verbs and types (everything else stays importable from its module):

- ``ShapleyPruningConfig`` + ``ShapleyLayerPruner`` (a ``Trainer``): ``prune()``, ``recover()``,
  ``save_pretrained()``, ``push_to_hub()``; ``prune_layers`` runs the whole job in one call;
- ``PruningResult`` (what a run chose and measured) and ``ShapleySurrogate`` (the reusable Hub artifact);
- ``LayerMask`` (skip layers temporarily) and ``drop_layers`` (remove them for good);
- ``register_criterion`` to add a layer-selection method under a new name;
- ``load_causal_lm`` (Hub ids, folders, ``.gguf`` files, packaged models), ``perplexity`` and ``zero_shot``.
"""

from . import criteria as _criteria  # noqa: E402,F401,I001  (registers the built-in methods)
from .config import ShapleyPruningConfig
from .evaluation.perplexity import perplexity
from .evaluation.zeroshot import zero_shot
from .loading import load_causal_lm
from .surgery import LayerMask, drop_layers
from .pruner import ShapleyLayerPruner
from .registry import register_criterion
from .result import PruningResult
from .run import prune_layers
from .surrogate import ShapleySurrogate

__version__ = "0.1.0"

__all__ = [
    "LayerMask",
    "PruningResult",
    "ShapleyLayerPruner",
    "ShapleyPruningConfig",
    "ShapleySurrogate",
    "__version__",
    "drop_layers",
    "load_causal_lm",
    "perplexity",
    "prune_layers",
    "register_criterion",
    "zero_shot",
]
