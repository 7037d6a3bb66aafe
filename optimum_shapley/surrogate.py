"""ShapleySurrogate: a small MLP that predicts a mask's utility, trained on evaluated masks and validated.

The paper's network (L -> 2L -> 1, CELU, sigmoid output, MSE, SGD) is the default. For the unbounded log-ratio
utility the output is linear and targets are standardised (mean and scale are stored in the module, so its
predictions are in utility units). A share of the evaluated masks is always held out: R^2 and Spearman rank
correlation on those masks say whether the surrogate can be trusted, and they are reported wherever results are.

With ``ensemble_size > 1`` the surrogate is an ensemble of such networks, each trained on its own random split:
the prediction is their mean, and their spread is the surrogate's own uncertainty, which the error bars of the
values and the search's stopping rule include (Monte Carlo noise alone says nothing about how well a value is known).
Validation then uses every mask some member held out (each predicted by the members that did not see it).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import nn

from .encoding import mask_to_key

__all__ = [
    "ACTIVATIONS",
    "SURROGATE_FEATURES",
    "ShapleySurrogate",
    "SurrogateFit",
    "SurrogateMember",
    "spearman",
    "train_surrogate",
]

SURROGATE_FEATURES = ("mask", "mask+adjacent")

_ACTIVATIONS = {"celu": nn.CELU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
ACTIVATIONS = tuple(_ACTIVATIONS)
"""The surrogate's hidden activations, by name (the config validates against this)."""


SURROGATE_CARD_TEMPLATE = """---
{{ card_data }}
---

# Shapley surrogate for {{ model_title }}

A small MLP that predicts the `{{ utility }}` utility of keeping a subset of the {{ num_layers }} decoder layers of
`{{ model_title }}`. {{ metrics }}

Reuse it to prune the same model at another ratio. With the model and calibration data at hand, the pruner verifies
its best proposals on the real model (`reuse_candidates`, default 8); with `reuse_candidates=0` no mask is evaluated
and the pruned model's card says the set is unverified. {{ remembered }}

```python
from optimum_shapley import ShapleyLayerPruner, ShapleyPruningConfig, ShapleySurrogate

surrogate = ShapleySurrogate.from_pretrained("<this repository>")
pruner = ShapleyLayerPruner(model=model, pruning_config=ShapleyPruningConfig(num_layers_to_remove=8),
                            processing_class=tokenizer, surrogate=surrogate)
pruner.prune()
```
"""
"""The surrogate's model card, rendered by ``PyTorchModelHubMixin`` (``save_pretrained``/``push_to_hub``)."""


class ShapleySurrogate(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="optimum-shapley",
    tags=["optimum-shapley", "layer-pruning", "shapley-surrogate"],
    model_card_template=SURROGATE_CARD_TEMPLATE,
):
    """Maps a 0/1 layer mask ``(N, num_layers)`` to predicted utilities ``(N,)``.

    Every constructor argument is saved in ``config.json`` by ``save_pretrained``/``push_to_hub``, including which
    model and utility it was trained for and the best kept sets its run verified (``verified_kept_sets``), so a
    reloaded surrogate can prune the same model at another ratio (its proposals verified on the model when one is
    at hand: ``reuse_candidates``).
    """

    def __init__(
        self,
        num_layers: int,
        hidden_multiplier: int = 2,
        activation: str = "celu",
        output: str = "sigmoid",
        target_mean: float = 0.0,
        target_scale: float = 1.0,
        utility: str = "ppl_ratio",
        base_model: str = "",
        model_fingerprint: str = "",
        strata: list[int] | None = None,
        ensemble_size: int = 1,
        features: str = "mask",
        verified_kept_sets: list[str] | None = None,
    ):
        super().__init__()
        if output not in ("sigmoid", "linear"):
            raise ValueError(f"output must be 'sigmoid' or 'linear', got {output!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.num_layers = num_layers
        self.output = output
        self.target_mean = float(target_mean)
        self.target_scale = float(target_scale)
        self.utility = utility
        self.base_model = base_model
        self.model_fingerprint = model_fingerprint
        self.strata = list(strata) if strata is not None else None
        if isinstance(ensemble_size, bool) or int(ensemble_size) < 1:
            raise ValueError(f"ensemble_size must be a positive integer, got {ensemble_size!r}")
        self.ensemble_size = int(ensemble_size)
        if features not in SURROGATE_FEATURES:
            raise ValueError(f"features must be one of {SURROGATE_FEATURES}, got {features!r}")
        self.features = features
        self.verified_kept_sets = _checked_kept_sets(verified_kept_sets, num_layers)
        hidden = hidden_multiplier * num_layers
        inputs = num_layers + (num_layers - 1 if features == "mask+adjacent" else 0)

        def member() -> nn.Sequential:
            return nn.Sequential(nn.Linear(inputs, hidden), _ACTIVATIONS[activation](), nn.Linear(hidden, 1))

        self.net = member()  # the first member keeps the single network's parameter names
        self.extra_members = nn.ModuleList(member() for _ in range(self.ensemble_size - 1))

    @property
    def members(self) -> list[nn.Module]:
        return [self.net, *self.extra_members]

    def remember_kept_sets(self, keys: list[str]) -> None:
        """Record the best kept sets verified on the model (kept-mask keys, best first) so that they travel in
        ``config.json``: a reuse at another ratio starts from them (nested sets), where the surrogate knows most.
        Sets of other sizes recorded earlier stay, after the new ones."""
        keys = _checked_kept_sets(list(dict.fromkeys(keys)), self.num_layers) or []
        sizes = {k.count("1") for k in keys}
        kept = keys + [k for k in self.verified_kept_sets or [] if k.count("1") not in sizes]
        self.verified_kept_sets = kept or None
        if self._hub_mixin_config is not None:  # what save_pretrained writes to config.json
            self._hub_mixin_config["verified_kept_sets"] = self.verified_kept_sets

    def encode(self, masks: torch.Tensor) -> torch.Tensor:
        """The network's input: the mask, and with ``mask+adjacent`` one feature per pair of neighbouring layers
        that are both removed (removing a contiguous block is not the sum of removing its layers)."""
        masks = masks.float()
        if self.features == "mask":
            return masks
        removed = 1.0 - masks
        return torch.cat([masks, removed[..., 1:] * removed[..., :-1]], dim=-1)

    def raw(self, masks: torch.Tensor, member: int = 0) -> torch.Tensor:
        """One member's output before de-standardisation (what the MSE loss sees)."""
        net = self.members[member]
        y = net(self.encode(masks).to(net[0].weight.dtype)).squeeze(-1)
        return torch.sigmoid(y) if self.output == "sigmoid" else y

    def member_predictions(self, masks: torch.Tensor) -> torch.Tensor:
        """``(ensemble_size, N)`` predicted utilities, one row per member."""
        if masks.shape[-1] != self.num_layers:
            raise ValueError(f"this surrogate takes masks over {self.num_layers} layers, got {masks.shape[-1]}")
        rows = [self.raw(masks, m) for m in range(self.ensemble_size)]
        return torch.stack(rows) * self.target_scale + self.target_mean

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The mixin's card with this surrogate's facts: ``base_model`` metadata when it was trained on a Hub
        model, the model named by its checkpoint name (``model_title``; never a machine path), its utility."""
        from .card_metadata import is_hub_id

        base = os.fspath(kwargs.pop("base_model_id", None) or self.base_model or "")
        kwargs.setdefault(
            "model_title", base if is_hub_id(base) else os.path.basename(os.path.normpath(base)) or "a causal LM"
        )
        kwargs.setdefault("metrics", "")
        kwargs.setdefault("utility", self.utility)
        kwargs.setdefault("num_layers", self.num_layers)
        sizes = sorted({k.count("1") for k in self.verified_kept_sets or []}, reverse=True)
        kwargs.setdefault(
            "remembered",
            (
                f"It remembers the best kept sets of {' and '.join(map(str, sizes))} layers verified on the model "
                "(`verified_kept_sets` in `config.json`); a verified reuse at another ratio starts from the best of "
                "them and walks to the new size one layer at a time, verifying each step's few candidates."
            )
            if sizes
            else "It remembers no verified kept set, so a reuse starts from its own proposals alone.",
        )
        card = super().generate_model_card(*args, **kwargs)
        if is_hub_id(base):
            card.data.base_model = base
        return card

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        return self.member_predictions(masks).mean(dim=0)

    def member(self, index: int) -> SurrogateMember:
        """Member ``index`` as a callable utility of its own (for values per member)."""
        return SurrogateMember(self, index)

    @classmethod
    def _load_as_pickle(cls, model, model_file, map_location, strict):
        """The Hub mixin falls back to a pickled ``pytorch_model.bin``; surrogates load from safetensors only."""
        raise ValueError(f"{model_file}: a surrogate must be a model.safetensors file; pickled checkpoints are refused")


def _checked_kept_sets(keys: list[str] | None, num_layers: int) -> list[str] | None:
    """Kept-mask keys as stored: strings of 0/1 over every layer (a wrong one is refused, not guessed)."""
    if keys is None:
        return None
    for key in keys:
        if not isinstance(key, str) or len(key) != num_layers or set(key) - {"0", "1"}:
            raise ValueError(f"verified_kept_sets holds {key!r}: each must be a 0/1 string over {num_layers} layers")
    return list(keys)


class SurrogateMember(nn.Module):
    """One member of an ensemble surrogate, as a ``masks -> utilities`` module."""

    def __init__(self, surrogate: ShapleySurrogate, index: int):
        super().__init__()
        self.surrogate = surrogate
        self.index = index

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        s = self.surrogate
        return s.raw(masks, self.index) * s.target_scale + s.target_mean


@dataclass
class SurrogateFit:
    """How well the surrogate predicts utilities of masks it was and was not trained on."""

    num_train: int
    num_validation: int
    train_r2: float
    validation_r2: float
    validation_spearman: float
    validation_rmse: float
    epochs: int
    seconds: float
    validation_masks: list[str] = field(default_factory=list)
    validation_measured: list[float] = field(default_factory=list)
    validation_predicted: list[float] = field(default_factory=list)
    ensemble_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, float]:
        """The headline numbers (no per-mask lists)."""
        keys = ("num_train", "num_validation", "train_r2", "validation_r2", "validation_spearman", "validation_rmse")
        return {k: getattr(self, k) for k in keys}


def _r2(measured: np.ndarray, predicted: np.ndarray) -> float:
    total = float(((measured - measured.mean()) ** 2).sum())
    if total == 0.0:
        return float("nan")
    return 1.0 - float(((measured - predicted) ** 2).sum()) / total


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0  # ties share their average rank
        i = j + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); nan when either side is constant."""
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def train_surrogate(
    masks: np.ndarray,
    utilities: np.ndarray,
    *,
    hidden_multiplier: int = 2,
    activation: str = "celu",
    utility: str = "ppl_ratio",
    learning_rate: float = 0.008,
    momentum: float = 0.9,
    epochs: int = 300,
    batch_size: int = 300,
    validation_fraction: float = 0.2,
    seed: int = 0,
    metadata: dict[str, Any] | None = None,
    mask_keys: list[str] | None = None,
    ensemble_size: int = 1,
    features: str = "mask",
) -> tuple[ShapleySurrogate, SurrogateFit]:
    """Train on at least ``1 - validation_fraction`` of the masks, validate on the rest (row 0, the full model,
    always trains). Returns the surrogate (trained on the training split only) and its fit report.

    With ``ensemble_size`` members, member ``m`` uses the split and initialisation of seed ``seed + m``; a mask's
    validation prediction is the mean of the members that held it out (out-of-bag), so the report covers every
    mask some member did not see."""
    masks = np.asarray(masks, dtype=bool)
    utilities = np.asarray(utilities, dtype=np.float64)
    if masks.ndim != 2 or len(masks) != len(utilities):
        raise ValueError(f"masks {masks.shape} and utilities {utilities.shape} do not line up")
    if not np.isfinite(utilities).all():
        raise ValueError("utilities must be finite (map non-finite losses to the worst utility first)")
    n, num_layers = masks.shape
    num_validation = int(math.floor(validation_fraction * n))
    if num_validation < 2 or n - num_validation < 2:
        raise ValueError(f"{n} evaluated masks are too few to train and validate a surrogate (need at least 10)")

    output = "sigmoid" if utility == "ppl_ratio" else "linear"
    splits = []
    for m in range(int(ensemble_size)):
        order = 1 + np.random.default_rng(seed + m).permutation(n - 1)
        splits.append((np.sort(np.concatenate([[0], order[num_validation:]])), np.sort(order[:num_validation])))
    train_idx = splits[0][0]
    trained = np.unique(np.concatenate([member_train for member_train, _ in splits]))
    if output == "linear":
        target_mean = float(utilities[trained].mean())
        target_scale = float(utilities[trained].std()) or 1.0
    else:
        target_mean, target_scale = 0.0, 1.0
    torch.manual_seed(seed)
    surrogate = ShapleySurrogate(
        num_layers,
        hidden_multiplier=hidden_multiplier,
        activation=activation,
        output=output,
        target_mean=target_mean,
        target_scale=target_scale,
        utility=utility,
        ensemble_size=ensemble_size,
        features=features,
        **(metadata or {}),
    )
    x = torch.from_numpy(masks.astype(np.float32))
    y = torch.from_numpy(((utilities - target_mean) / target_scale).astype(np.float32))
    start = time.perf_counter()
    surrogate.train()
    for m, (member_train, _) in enumerate(splits):
        torch.manual_seed(seed + m)
        for layer in surrogate.members[m]:
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        x_train, y_train = x[member_train], y[member_train]
        optimizer = torch.optim.SGD(surrogate.members[m].parameters(), lr=learning_rate, momentum=momentum)
        generator = torch.Generator().manual_seed(seed + m)
        for _ in range(epochs):
            permutation = torch.randperm(len(x_train), generator=generator)
            for begin in range(0, len(x_train), batch_size):
                batch = permutation[begin : begin + batch_size]
                optimizer.zero_grad()
                loss = nn.functional.mse_loss(surrogate.raw(x_train[batch], m), y_train[batch])
                loss.backward()
                optimizer.step()
    surrogate.eval()
    with torch.no_grad():
        per_member = surrogate.member_predictions(x).double().numpy()  # (M, n)
    held_out = np.zeros((len(splits), n), dtype=bool)
    for m, (_, member_validation) in enumerate(splits):
        held_out[m, member_validation] = True
    validation_idx = np.flatnonzero(held_out.any(axis=0))
    out_of_bag = (per_member * held_out).sum(axis=0) / np.maximum(held_out.sum(axis=0), 1)
    in_bag = (per_member * ~held_out).sum(axis=0) / np.maximum((~held_out).sum(axis=0), 1)
    measured_val, predicted_val = utilities[validation_idx], out_of_bag[validation_idx]
    keys = mask_keys or [mask_to_key(row) for row in masks]
    fit = SurrogateFit(
        num_train=len(train_idx),
        num_validation=len(validation_idx),
        train_r2=_r2(utilities, in_bag),
        validation_r2=_r2(measured_val, predicted_val),
        validation_spearman=spearman(measured_val, predicted_val),
        validation_rmse=float(np.sqrt(((measured_val - predicted_val) ** 2).mean())),
        epochs=epochs,
        seconds=time.perf_counter() - start,
        validation_masks=[keys[i] for i in validation_idx],
        validation_measured=measured_val.tolist(),
        validation_predicted=predicted_val.tolist(),
        ensemble_size=int(ensemble_size),
    )
    return surrogate, fit
