"""Training-free healing of a layer-pruned model, folded into the kept weights (the checkpoint keeps its stock
architecture and reloads with plain ``from_pretrained``).

Call :func:`heal_removed_layers` on the DENSE model, with the layers that are about to go, then ``drop_layers``. Its
statistics need the removed layers present: they compare what the pruned model would see after each removed run
with what the dense model computes there. One pass over the calibration batches accumulates them in float64 (no
activation is stored beyond the current batch).

For each maximal run ``a..b`` of removed layers, with ``p = a - 1`` the last kept block before it, let ``Y`` be the
dense hidden state entering block ``b + 1`` (the stream after block ``b``), ``m`` the MLP summand of block ``p``
(what its MLP adds to the stream) and ``h = h_out(p) - m`` the rest of block ``p``'s output. The pruned model feeds
``h + m`` to block ``b + 1``; healing makes that closer to ``Y``:

``method="linear"`` (ReplaceMe, NeurIPS 2025): ``T = argmin ||m T - (Y - h)||^2 + lam ||T - I||^2``, i.e.
    ``T = (m^T m + lam I)^-1 (m^T (Y - h) + lam I)``, with ``lam = ridge * trace(m^T m) / hidden`` (relative to the
    mean eigenvalue); ``ridge=0`` is ReplaceMe's plain least squares, or a diagonal ``T`` (one scale per channel)
    with ``diagonal=True``. The ridge shrinks toward the identity (the unhealed model), not toward zero as
    ReplaceMe's does (that removes block ``p``'s MLP as it grows): on SmolLM2-135M without layers 13-18, fitted on
    10 x 128 calibration tokens, plain least squares overfits (WikiText-2 ppl 114.9 unhealed -> 147.7), ridge 1
    toward the identity heals (104.6); with 64 x 128 tokens, 99.4 plain and 96.3 with ridge 1.
    ``relative=True`` (the config's default) weights each token's squared error by ``1 / ||Y_t||^2``: the few
    massive-activation positions of a real model (stream norms 100x the rest) otherwise decide the fit alone. On
    SmolLM2-135M without 4, 5, 12-18, 26 (WikiText-2 222.21 unhealed): plain ridge 1 on 10 x 128 tokens 223.19;
    relative, ridge 0.01, 256 x 128 tokens 175.63. Fitting the runs in order (each on the model with the earlier
    runs already cut and healed) measured worse there (199.56 against 188.24, 64 blocks, ridge 0.1) and is not
    offered. Folded exactly into the linear layer producing ``m``: for ``nn.Linear``
    (``y = z W^T + c``), ``(z W^T + c) T = z (T^T W)^T + T^T c``, so ``W <- T^T W`` and ``c <- T^T c``; for GPT-2's
    ``Conv1D`` (``y = z W + c``), ``W <- W T`` and ``c <- c T``. Where a norm follows the projection (Gemma-2/3's
    ``post_feedforward_layernorm``, ``n(m') * (1 + w)``), only a diagonal ``T = diag(t)`` is exact, folded as
    ``1 + w <- (1 + w) * t``; a full ``T`` is refused. A run starting at layer 0 has no block before it: ``m`` is the
    embedding sum (``h = 0``) and ``T`` folds into the token (and position) tables ``E <- E T``, unless the token
    table is tied to the LM head (that would change the head too) or a projection sits in between: refused.

``fit="projection"`` (linear; the config's default, ``heal_fit``): instead of a map ``T`` on the MLP's output, the
    weight ``W`` of the projection producing it is refitted on that projection's input ``z`` (the MLP's inner
    activation, ``m = z W^T + c``): ``W = argmin ||z W^T - (Y - h - c)||^2 + lam ||W - W0||^2``, the bias ``c``
    fixed, ``lam = ridge * trace(z^T z) / in``, the same per-token weights. ``T^T W0`` is one such ``W``, so on the
    same statistics the refit's error is never larger; its statistics are ``in x in`` (the MLP width, 1536 on
    SmolLM2-135M) per run instead of ``hidden x hidden``. Folded by writing ``W`` (``Conv1D``: ``W^T``). Only where
    block ``p``'s own projection writes the stream: a run at layer 0 (the embeddings) and Gemma's post-norm keep the
    map, and ``diagonal=True`` is a map by definition; each run's record says its ``fit``. A block whose MLP reads
    the projection's weight without calling it (a fused kernel) hides ``z``: refused (``fit="map"`` works there).

``method="scale"`` (Prune&Comp, AAAI 2026): one scalar per run, ``s = mean_c(sum_t |Y_tc|) / mean_c(sum_t |x_tc|)``
    ... precisely the paper's statistic: for each channel ``c`` the ratio of the mean absolute value of the dense
    stream after the run (``Y``) to that before it (``x = h_out(p)``, or the embeddings for a run at layer 0), averaged
    over channels. The paper multiplies the stream before the cut by ``s`` (embeddings and every ``o_proj`` and
    ``down_proj`` before the cut). We fold the equivalent, embedding-free form: every residual-stream write AFTER the
    run (each kept block's attention and MLP output projections, or Gemma's post-norms) is divided by ``s``. Every
    reader of the stream (each block's input norms and the final norm) is scale-invariant, so the two models differ
    only by the global factor ``prod(s)``, which the final norm removes (up to the norms' ``eps``, negligible next to
    the stream's mean square). This form never touches a tied embedding, works for runs at layer 0, and is a no-op
    for a run at the end of the stack (only the final norm follows it), which the report says.

Where no exact fold exists the call raises :class:`HealingNotExactError` (one line) before anything is changed.

``check`` (a callable returning a loss of the model as it stands, its removed layers skipped, e.g. the KL to the
dense model on held-out blocks): each run's patch is tried alone and kept only where it lowers that loss; the runs
that help are then added best first while the loss keeps falling. Why: a fit that lowers the stream's squared error
can still hurt the model. On Gemma-3-270M without 7, 8, 9, 14, 15, 17 (WikiText-2 581.60) the diagonal maps, each
lowering its run's error, gave 627.04 (7-9 alone), 525.51 (14-15 alone), 2012.60 (17 alone, the run the final norm
reads) and 2176.69 all three; Prune&Comp's scalar raised its own statistic's error on every run there (2627.47).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from .architectures import HEALING_LAYOUTS, BlockLayout, find_decoder_layers, get_decoder_config
from .modes import eval_mode
from .surgery import PRUNING_RECORD_KEY, _kept_from_remove

__all__ = [
    "HEALING_FITS",
    "HEALING_METHODS",
    "HealingError",
    "HealingNotExactError",
    "HealingReport",
    "check_healing_supported",
    "describe_healing",
    "fold_healing",
    "folded_runs",
    "heal_removed_layers",
    "healing_summary",
    "record_healing",
    "temporarily_healed",
]

HEALING_METHODS = ("linear", "scale")
HEALING_FITS = ("map", "projection")
"""``method="linear"``'s two fits: ReplaceMe's map ``T`` on the MLP output, or a refit of the projection producing it."""


class HealingError(ValueError):
    """Bad input to healing: an unknown method, an invalid option, or no calibration tokens."""


class HealingNotExactError(HealingError):
    """No exact fold of the requested healing exists for this model (family, run position or tied weights)."""


@dataclass
class HealingReport:
    """What :func:`heal_removed_layers` fitted and folded, per maximal run of removed layers.

    ``runs[i]["residual_before"]``/``["residual_after"]`` are ``||x - Y||^2 / ||Y||^2`` over the calibration tokens:
    the relative squared error of the hidden state entering the first kept block after the run, unhealed and as
    fitted (for ``scale``, in the paper's form ``s * x``). They are measured on the dense model's statistics.
    """

    method: str
    runs: list[dict[str, Any]]
    seconds: float
    calibration_tokens: int
    calibration_batches: int
    ridge: float | None = 0.0  # None where each run's ridge was chosen by the check (``ridge_choices``)
    diagonal: bool = False
    statistic: str = ""
    relative: bool = False
    # with ``check``: {"description", "unhealed_loss", "healed_loss", "evaluations"}; every run record then says
    # "folded" and "check_loss" (the loss with that run's patch alone)
    check: dict[str, Any] = field(default_factory=dict)
    ridge_choices: list[float] = field(default_factory=list)  # each run's ridge chosen by the check among these
    fit: str = "map"  # linear: "projection" refits the output projection where it can; each run says its "fit"
    # each run's fitted patch (a map or a scalar), kept so that :func:`fold_healing` can fold it again without a
    # new fit; not part of the record
    fits: list[Any] = field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "fits"}

    def describe(self) -> str:
        """What was fitted and folded, in sentences that hold for this run (used by the model card)."""
        return describe_healing(self.to_dict())


def _span(layers: Sequence[int]) -> str:
    return f"layers {layers[0]}-{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}"


def _how(healing: Mapping[str, Any]) -> str:
    if healing.get("method") == "scale":
        return (
            "one magnitude scalar s per run (Prune&Comp: the mean absolute value of the dense hidden state after "
            "the run over that before it, per channel, averaged over channels)"
        )
    runs = healing.get("runs") or []
    refitted = [run for run in runs if run.get("fit") == "projection"]
    mapped = [run for run in runs if run.get("fit") != "projection"]
    kind = "a diagonal (per-channel) linear map" if healing.get("diagonal") else "a full linear map"
    if refitted:
        refit = (
            "the weight of the MLP output projection of the kept block before the run refitted on that projection's "
            "input (its bias kept), a superset of ReplaceMe's map on its output"
        )
        kind = (
            f"per run, {refit}"
            if not mapped
            else f"for {', '.join(_span(r['removed_layers']) for r in refitted)}, {refit}; for "
            f"{', '.join(_span(r['removed_layers']) for r in mapped)}, {kind} (ReplaceMe)"
        )
    else:
        kind += " per run (ReplaceMe)"
    toward = "the unhealed weights" if refitted else "the identity"
    ridge = healing.get("ridge") or 0.0
    regulariser = f" with ridge {ridge:g} x the mean eigenvalue toward {toward}" if ridge else ""
    if healing.get("ridge_choices"):
        regulariser = (
            f" with a ridge toward {toward} (x the mean eigenvalue) chosen per run by the check among "
            + ", ".join(f"{r:g}" for r in healing["ridge_choices"])
        )
    weighting = (
        ", each token's squared error weighted by 1 / its target's squared norm" if healing.get("relative") else ""
    )
    return f"{kind}, fitted by least squares{weighting}{regulariser}"


def folded_runs(healing: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The runs whose patch is in the weights (all of them unless ``check`` left some out)."""
    return [run for run in healing.get("runs") or [] if run.get("folded", True)]


def _check_sentences(healing: Mapping[str, Any]) -> str:
    check = healing.get("check") or {}
    if not check:
        return ""
    runs = healing.get("runs") or []
    left = [run for run in runs if not run.get("folded", True)]
    text = (
        f" Each run's patch was first tried alone and kept only where it lowered {check['description']} "
        f"({check['unhealed_loss']:.4f} unhealed), the helpful ones added best first while it kept falling: "
        f"{len(runs) - len(left)} of {len(runs)} folded, {check['healed_loss']:.4f} with them"
    )
    if left:
        text += "; not folded: " + "; ".join(
            f"{_span(run['removed_layers'])} ({run['check_loss']:.4f} with its patch alone)" for run in left
        )
    return text + "."


def describe_healing(healing: Mapping[str, Any], calibration: str = "") -> str:
    """Sentences for the model card: what was fitted on which data and folded where, and the fit it reached."""
    runs = healing.get("runs") or []
    if not runs:
        return ""
    data = f"{healing.get('calibration_tokens', 0):,} tokens of the calibration text" + (
        f" ({calibration})" if calibration else ""
    )
    folded = folded_runs(healing)
    if not folded:
        return (
            f"After the layers were chosen, training-free healing was fitted ({_how(healing)}, on the dense "
            f"model's hidden states over {data}) but not folded: no run's patch lowered "
            f"{healing['check']['description']} ({healing['check']['unhealed_loss']:.4f} unhealed; with each "
            f"patch alone: {', '.join(format(run['check_loss'], '.4f') for run in runs)}). The kept weights are the "
            "original ones."
        )
    where = "; ".join(
        f"{_span(run['removed_layers'])} -> {run['target']}"
        + (f" (s = {run['scale']:.3f})" if run.get("scale") is not None else "")
        + (f" (ridge {run['ridge']:g})" if healing.get("ridge_choices") else "")
        for run in folded
    )
    before = [float(run["residual_before"]) for run in folded]
    after = [float(run["residual_after"]) for run in folded]
    text = (
        f"After the layers were chosen, and before they were removed, the kept weights were healed without "
        f"training: {_how(healing)}, computed on the dense model's hidden states over {data}, folded into "
        f"existing weights ({where}), so the architecture is unchanged. On that text the "
        + ("mean per-token relative squared error" if healing.get("relative") else "relative squared error")
        + " of the hidden state entering the first kept layer after each "
        + ("folded " if len(folded) < len(runs) else "")
        + "run (from the dense model's hidden state before the run) went from "
        f"{', '.join(f'{v:.4f}' for v in before)} (unhealed) to {', '.join(f'{v:.4f}' for v in after)}"
    )
    if healing.get("method") == "scale":
        text += " (in the paper's form s * h; it is a magnitude correction, not a least-squares fit)"
    text += "." + _check_sentences(healing)
    if healing.get("from_heal_selection"):
        text += (
            " It is the patch healing-aware selection fitted and scored for this set, folded as scored (not fitted "
            "again)."
        )
    ppl = healing.get("calibration_ppl_after")
    if ppl is not None:
        text += f" The healed model's calibration perplexity is {ppl:.2f}."
    return text


def healing_summary(healing: Mapping[str, Any]) -> str:
    """The one-line value of the ``healing`` row of the run summary."""
    runs = healing.get("runs") or []
    name = healing.get("method", "?")
    if name == "linear":
        fits = {run.get("fit", "map") for run in runs}
        if healing.get("diagonal"):
            name += " (diagonal"
        elif "projection" in fits:
            name += " (projection refit" + (" + full map" if "map" in fits else "")
        else:
            name += " (full"
        name += ", relative" if healing.get("relative") else ""
        if healing.get("ridge_choices"):  # the ridges that shaped the weights: none where nothing was folded
            ridges = "/".join(f"{run['ridge']:g}" for run in folded_runs(healing))
            name += (", ridge per run " + ridges if ridges else "") + ")"
        else:
            name += f", ridge {healing.get('ridge') or 0:g})"
    if healing.get("check"):
        count = f"{len(folded_runs(healing))} of {len(runs)} run{'s' if len(runs) != 1 else ''} folded (checked)"
    else:
        count = f"{len(runs)} run{'s' if len(runs) != 1 else ''}"
    text = f"{name}, {count}, {healing.get('seconds', 0.0):.1f} s"
    ppl = healing.get("calibration_ppl_after")
    return text + (f", calibration perplexity {ppl:.2f} healed" if ppl is not None else "")


# ----------------------------------------------------------------------------------------------------------------
# planning: which runs, what folds where, refusals before anything runs


@dataclass
class _Run:
    first: int  # a
    last: int  # b
    target: str = ""  # what the fold writes, for the report
    kind: str = "map"  # linear: "map" (T on the MLP output) or "projection" (its projection's weight refitted)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    pending: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def before(self) -> int | None:
        return self.first - 1 if self.first > 0 else None

    @property
    def layers(self) -> list[int]:
        return list(range(self.first, self.last + 1))


def _runs(removed: Sequence[int]) -> list[_Run]:
    runs: list[_Run] = []
    for index in sorted(removed):
        if runs and runs[-1].last == index - 1:
            runs[-1].last = index
        else:
            runs.append(_Run(index, index))
    return runs


def _submodule(root: nn.Module, path: str) -> nn.Module | None:
    module: Any = root
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module if isinstance(module, nn.Module) else None


def _required(root: nn.Module, path: str, model_type: str) -> nn.Module:
    module = _submodule(root, path)
    if module is None:
        raise HealingNotExactError(f"{model_type}: expected a module at {path!r} for healing, found none")
    return module


def _is_conv1d(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)


def _check_projection(module: nn.Module, path: str, model_type: str) -> None:
    if not (isinstance(module, nn.Linear) or _is_conv1d(module)):
        raise HealingNotExactError(
            f"{model_type}: {path} is a {type(module).__name__}, not nn.Linear or Conv1D; cannot fold into it exactly"
        )
    for name, param in module.named_parameters(recurse=False):
        if not param.dtype.is_floating_point:
            raise HealingNotExactError(
                f"{model_type}: {path}.{name} is stored as {param.dtype} (quantized); healing needs float weights"
            )


def _embeddings_tied(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    flags = [getattr(config, "tie_word_embeddings", None)]
    with contextlib.suppress(Exception):  # a config without a text sub-config
        flags.append(getattr(get_decoder_config(model), "tie_word_embeddings", None))
    if any(flag is True for flag in flags):
        return True  # reloading re-ties them even if they are separate tensors in memory
    head, table = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or table is None:
        return False
    return head.weight.data_ptr() == table.weight.data_ptr()


def _layout(model: nn.Module) -> tuple[str, BlockLayout]:
    model_type = getattr(get_decoder_config(model), "model_type", None) or getattr(model.config, "model_type", "?")
    layout = HEALING_LAYOUTS.get(model_type)
    if layout is None:
        raise HealingNotExactError(
            f"healing has no derived exact fold for model_type={model_type!r}; supported: "
            f"{', '.join(sorted(HEALING_LAYOUTS))}"
        )
    config = get_decoder_config(model)
    for name, value, why in layout.refusals:
        if getattr(config, name, None) == value:
            raise HealingNotExactError(f"{model_type} with {name}={value!r}: no exact healing fold ({why})")
    return model_type, layout


def _writer_kind(module: nn.Module, path: str, model_type: str) -> str:
    """``"projection"`` (nn.Linear / Conv1D: scale weight and bias) or ``"norm"`` (scale ``offset + weight``)."""
    if isinstance(module, nn.Linear) or _is_conv1d(module):
        _check_projection(module, path, model_type)
        return "projection"
    if "norm" in type(module).__name__.lower() and isinstance(getattr(module, "weight", None), torch.Tensor):
        return "norm"
    raise HealingNotExactError(f"{model_type}: residual writer {path} is a {type(module).__name__}; cannot scale it")


def _kept_after(run: _Run, kept: Sequence[int]) -> list[int]:
    return [i for i in kept if i > run.last]


def _plan(
    model: nn.Module,
    blocks: nn.ModuleList,
    kept: Sequence[int],
    runs: list[_Run],
    method: str,
    diagonal: bool,
    fit: str = "map",
) -> None:
    """Check that every run has an exact fold and name it (and, for ``fit="projection"``, which runs can refit the
    projection: a full fit into a block's own output projection); raises before any statistic or weight is
    touched."""
    model_type, layout = _layout(model)
    for run in runs:
        span = f"layers {run.first}-{run.last}" if run.last > run.first else f"layer {run.first}"
        if method == "scale":
            after = _kept_after(run, kept)
            for i in after:
                for path in layout.residual_writers:
                    _writer_kind(_required(blocks[i], path, model_type), f"layers.{i}.{path}", model_type)
            run.target = (
                f"residual writers ({', '.join(layout.residual_writers)}) of kept "
                + (f"layer {after[0]}" if len(after) == 1 else f"layers {after[0]}-{after[-1]} ({len(after)} layers)")
                + " / s"
                if after
                else "none: only the final norm follows this run, which removes any scale (no-op)"
            )
            continue
        if run.before is None:
            if _embeddings_tied(model):
                raise HealingNotExactError(
                    f"{model_type}: removed {span} starts at layer 0, so its linear map would fold into the input "
                    "embeddings, which are tied to the LM head (that would change the head too); keep layer 0 or "
                    "use method='scale'"
                )
            if layout.embedding_projection and _submodule(model, layout.embedding_projection) is not None:
                raise HealingNotExactError(
                    f"{model_type}: removed {span} starts at layer 0 and {layout.embedding_projection} projects the "
                    "embeddings before the position table is added; no exact fold; use method='scale'"
                )
            for module in _embedding_tables(model, layout):
                if not module.weight.dtype.is_floating_point:
                    raise HealingNotExactError(f"{model_type}: the embeddings are quantized; healing needs floats")
            run.target = "input embeddings" + (" and position table" if layout.position_embeddings else "")
            continue
        block = blocks[run.before]
        if layout.mlp_projection is None:
            if not diagonal:
                raise HealingNotExactError(
                    f"{model_type}: {layout.mlp_post_norm} normalises the MLP output before the residual add, so a "
                    f"full linear map for removed {span} has no exact fold; use diagonal=True (a per-channel scale "
                    "folds into that norm's weight) or method='scale'"
                )
            _required(block, layout.mlp_post_norm, model_type)
            run.target = f"layers.{run.before}.{layout.mlp_post_norm}.weight"
        else:
            module = _required(block, layout.mlp_projection, model_type)
            _check_projection(module, f"layers.{run.before}.{layout.mlp_projection}", model_type)
            run.target = f"layers.{run.before}.{layout.mlp_projection}"
            if method == "linear" and fit == "projection" and not diagonal:
                run.kind = "projection"
                run.target += ".weight (refitted)"
        _required(block, layout.mlp_output, model_type)


def check_healing_supported(model: nn.Module, method: str, diagonal: bool = False) -> None:
    """Refuse, before any expensive work, healing that no removed set could fold exactly into ``model``: an unknown
    method, a family without a derived fold, a config that breaks it, or a full map through a post-norm. (Whether a
    run starting at layer 0 can be healed depends on the chosen layers; ``heal_removed_layers`` checks that.)"""
    if method not in HEALING_METHODS:
        raise HealingError(f"unknown healing method {method!r}; choose one of {HEALING_METHODS}")
    model_type, layout = _layout(model)
    if method == "linear" and not diagonal and layout.mlp_projection is None:
        raise HealingNotExactError(
            f"{model_type}: {layout.mlp_post_norm} normalises the MLP output before the residual add, so a full "
            "linear map has no exact fold; use the diagonal variant (heal_diagonal=True) or heal='scale'"
        )


def _embedding_tables(model: nn.Module, layout: BlockLayout) -> list[nn.Module]:
    tables = [model.get_input_embeddings()]
    for path in layout.position_embeddings:
        table = _submodule(model, path)
        if table is not None:
            tables.append(table)
    return tables


# ----------------------------------------------------------------------------------------------------------------
# statistics: one pass, float64, per batch


class _Stop(Exception):
    """Raised by the last needed block's hook: nothing after it (later blocks, final norm, head) is computed."""


def _first_tensor(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _stats_device(device: torch.device) -> torch.device:
    return torch.device("cpu") if device.type == "mps" else device  # MPS has no float64


def _accumulate(run: _Run, name: str, value: torch.Tensor) -> None:
    if name in run.stats:
        run.stats[name] += value
    else:
        run.stats[name] = value.clone()


class _Collector:
    """Forward hooks that turn one batch's activations into per-run float64 sums, then forget the batch."""

    def __init__(self, model, blocks, runs, layout, method, diagonal, relative=False):
        self.model, self.blocks, self.runs, self.layout = model, blocks, runs, layout
        self.method, self.diagonal, self.relative = method, diagonal, relative
        self.mask: torch.Tensor | None = None
        self.handles: list[Any] = []
        self.last_needed = max(run.last for run in runs)

    def _flat(self, tensor: torch.Tensor) -> torch.Tensor:
        hidden = tensor.shape[-1]
        device = _stats_device(tensor.device)
        flat = tensor.detach().reshape(-1, hidden).to(device=device, dtype=torch.float64, copy=True)
        mask = self.mask.to(device)
        if mask.numel() != flat.shape[0]:
            raise HealingError(f"an activation has {flat.shape[0]} positions but the batch has {mask.numel()} tokens")
        return flat[mask]

    def install(self) -> None:
        for run in self.runs:
            if run.before is None:
                self.handles.append(
                    self.blocks[0].register_forward_pre_hook(self._input_hook(run), with_kwargs=True, prepend=True)
                )
            else:
                block = self.blocks[run.before]
                if self.method == "linear":
                    module = _submodule(block, self.layout.mlp_output)
                    self.handles.append(module.register_forward_hook(self._mlp_hook(run)))
                if run.kind == "projection":
                    module = _submodule(block, self.layout.mlp_projection)
                    self.handles.append(module.register_forward_hook(self._projection_hook(run)))
                self.handles.append(block.register_forward_hook(self._before_hook(run)))
        ends: dict[int, list[_Run]] = {}
        for run in self.runs:
            ends.setdefault(run.last, []).append(run)
        for index, runs in ends.items():
            self.handles.append(self.blocks[index].register_forward_hook(self._after_hook(runs, index)))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _input_hook(self, run: _Run):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs.get("hidden_states")
            run.pending["x"] = self._flat(hidden)
            if self.method == "linear":
                run.pending["rest"] = torch.zeros_like(run.pending["x"])
                run.pending["m"] = run.pending["x"]

        return hook

    def _mlp_hook(self, run: _Run):
        def hook(module, args, output):
            run.pending["m"] = self._flat(_first_tensor(output))  # a copy: Falcon adds to it in place afterwards

        return hook

    def _projection_hook(self, run: _Run):
        def hook(module, args, output):
            run.pending["z"] = self._flat(args[0])  # the projection's input, (tokens, its in_features)
            bias = getattr(module, "bias", None)
            if bias is not None:
                run.pending["bias"] = bias.detach().to(device=run.pending["z"].device, dtype=torch.float64)

        return hook

    def _before_hook(self, run: _Run):
        def hook(module, args, output):
            x = self._flat(_first_tensor(output))
            run.pending["x"] = x
            if self.method == "linear":
                run.pending["rest"] = x - run.pending["m"]

        return hook

    def _after_hook(self, runs: list[_Run], index: int):
        def hook(module, args, output):
            y = self._flat(_first_tensor(output))
            for run in runs:
                self._update(run, y)
            if index == self.last_needed:
                raise _Stop

        return hook

    def _update(self, run: _Run, y: torch.Tensor) -> None:
        x = run.pending.pop("x")
        _accumulate(run, "tokens", torch.tensor(float(y.shape[0]), dtype=torch.float64, device=y.device))
        if self.method == "scale":
            _accumulate(run, "yy", (y * y).sum())
            _accumulate(run, "abs_x", x.abs().sum(0))
            _accumulate(run, "abs_y", y.abs().sum(0))
            _accumulate(run, "xx", (x * x).sum())
            _accumulate(run, "xy", (x * y).sum())
            _accumulate(run, "norm_x", x.norm(dim=1).sum())
            _accumulate(run, "norm_y", y.norm(dim=1).sum())
            return
        m, rest = run.pending.pop("m"), run.pending.pop("rest")
        r = y - rest  # what the MLP summand should have been
        norms = (y * y).sum(1)
        # relative: each token's squared error over its target's squared norm, so that the few massive-activation
        # positions of a real model (norms 100x the rest) stop deciding the fit alone
        w = 1.0 / norms.clamp_min(1e-300) if self.relative else torch.ones_like(norms)
        _accumulate(run, "yy", (w * norms).sum())
        _accumulate(run, "rr", (w * (r * r).sum(1)).sum())
        mw = m * w[:, None] if self.relative else m
        if run.kind == "projection":
            if "z" not in run.pending:
                raise HealingError(
                    f"layers.{run.before}.{self.layout.mlp_projection} was not called as a module (a fused kernel "
                    "reads its weight directly), so its input cannot be seen; use fit='map'"
                )
            z = run.pending.pop("z")
            target = r - run.pending.pop("bias", 0.0)  # what z W^T should be: the bias stays as it is
            zw = z * w[:, None] if self.relative else z
            _accumulate(run, "zz", zw.T @ z)
            _accumulate(run, "zr", zw.T @ target)
            _accumulate(run, "tt", (w * (target * target).sum(1)).sum())
        elif self.diagonal:
            _accumulate(run, "mm_diag", (mw * m).sum(0))
            _accumulate(run, "mr_diag", (mw * r).sum(0))
        else:
            _accumulate(run, "mm", mw.T @ m)
            _accumulate(run, "mr", mw.T @ r)


def _batches_on_device(batches: Iterable[Mapping[str, Any]], device: torch.device):
    for batch in batches:
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise HealingError(
                "calibration batches must be mappings with 'input_ids' (and optionally 'attention_mask')"
            )
        input_ids = torch.as_tensor(batch["input_ids"])
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        mask = batch.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None else torch.as_tensor(mask).reshape(input_ids.shape)
        yield input_ids.to(device), mask.to(device)


def _collect(model, blocks, runs, layout, method, diagonal, calibration_batches, relative=False) -> tuple[int, int]:
    collector = _Collector(model, blocks, runs, layout, method, diagonal, relative)
    device = model.get_input_embeddings().weight.device
    num_batches = num_tokens = 0
    collector.install()
    try:
        with eval_mode(model), torch.no_grad():
            for input_ids, mask in _batches_on_device(calibration_batches, device):
                collector.mask = mask.reshape(-1).bool()
                with contextlib.suppress(_Stop):
                    model(input_ids=input_ids, attention_mask=mask, use_cache=False)
                for run in runs:
                    run.pending.clear()
                num_batches += 1
                num_tokens += int(mask.sum())
    finally:
        collector.remove()
    if num_tokens == 0:
        raise HealingError("the calibration batches hold no (unmasked) tokens; healing needs calibration data")
    return num_batches, num_tokens


# ----------------------------------------------------------------------------------------------------------------
# fits


def _fit_linear(run: _Run, ridge: float, diagonal: bool) -> tuple[torch.Tensor, dict[str, float]]:
    s = {k: v.detach().cpu() for k, v in run.stats.items()}
    yy, rr = float(s["yy"]), float(s["rr"])
    if diagonal:
        mm, mr = s["mm_diag"], s["mr_diag"]
        lam = ridge * float(mm.mean())
        denominator = mm + lam
        t = torch.where(denominator > 0, (mr + lam) / denominator.clamp_min(1e-300), torch.ones_like(mr))
        before = float(mm.sum() - 2 * mr.sum()) + rr
        after = float((t * t * mm).sum() - 2 * (t * mr).sum()) + rr
        transform = t
    else:
        mm, mr = s["mm"], s["mr"]
        hidden = mm.shape[0]
        lam = ridge * float(torch.trace(mm)) / hidden
        eye = torch.eye(hidden, dtype=torch.float64)
        if lam > 0:
            transform = torch.linalg.solve(mm + lam * eye, mr + lam * eye)
        else:  # rank-revealing, minimum-norm: exact where the target is reachable, defined when mm is singular
            transform = torch.linalg.lstsq(mm, mr, driver="gelsd").solution
        before = float(torch.trace(mm) - 2 * torch.trace(mr)) + rr
        after = float((transform * (mm @ transform)).sum() - 2 * (transform * mr).sum()) + rr
    denominator = yy if yy > 0 else 1.0
    return transform, {
        "residual_before": max(before, 0.0) / denominator,
        "residual_after": max(after, 0.0) / denominator,
        "ridge_lambda": lam,
    }


def _projection_weight(module: nn.Module) -> torch.Tensor:
    """The projection's weight as ``(out, in)`` in float64 on the CPU (``Conv1D`` stores it transposed)."""
    weight = module.weight.detach().to(device="cpu", dtype=torch.float64)
    return weight.T if _is_conv1d(module) else weight


def _fit_projection(run: _Run, ridge: float, weight: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The projection's new weight ``W`` (``(out, in)``): ``argmin ||z W^T - (r - c)||^2 + lam ||W - W0||^2`` over
    the projection's inputs ``z``, its bias ``c`` fixed, with ``lam = ridge * trace(z^T z) / in``; ``ridge=0`` is
    the minimum-norm change from ``W0``. ReplaceMe's ``T^T W0`` is one such ``W``: this fit can only do better on
    the same statistics (measured on SmolLM2-135M in docs/healing.md)."""
    s = {k: v.detach().cpu() for k, v in run.stats.items()}
    zz, zr, tt, yy = s["zz"], s["zr"], float(s["tt"]), float(s["yy"])
    inputs = zz.shape[0]
    lam = ridge * float(torch.trace(zz)) / inputs
    gap = zr - zz @ weight.T  # the normal equations' right-hand side for the change D = W^T - W0^T
    if lam > 0:
        change = torch.linalg.solve(zz + lam * torch.eye(inputs, dtype=torch.float64), gap)
    else:
        change = torch.linalg.lstsq(zz, gap, driver="gelsd").solution
    new = weight + change.T

    def error(w: torch.Tensor) -> float:
        return float((w @ zz * w).sum() - 2 * (w.T * zr).sum()) + tt

    denominator = yy if yy > 0 else 1.0
    return new, {
        "residual_before": max(error(weight), 0.0) / denominator,
        "residual_after": max(error(new), 0.0) / denominator,
        "ridge_lambda": lam,
    }


def _fit_scale(run: _Run) -> tuple[float, dict[str, float]]:
    s = {k: v.detach().cpu() for k, v in run.stats.items()}
    abs_x, abs_y = s["abs_x"], s["abs_y"]
    active = abs_x > 0
    scale = float((abs_y[active] / abs_x[active]).mean()) if bool(active.any()) else 1.0
    if not math.isfinite(scale) or scale <= 0:
        raise HealingError(f"layers {run.first}-{run.last}: the magnitude ratio is {scale}; cannot compensate")
    xx, xy, yy = float(s["xx"]), float(s["xy"]), float(s["yy"])
    denominator = yy if yy > 0 else 1.0
    return scale, {
        "scale": scale,
        "norm_ratio": float(s["norm_y"] / s["norm_x"]) if float(s["norm_x"]) > 0 else float("nan"),
        "residual_before": max(xx - 2 * xy + yy, 0.0) / denominator,
        "residual_after": max(scale * scale * xx - 2 * scale * xy + yy, 0.0) / denominator,
    }


# ----------------------------------------------------------------------------------------------------------------
# folds


def _set(param: torch.Tensor, value: torch.Tensor) -> None:
    with torch.no_grad():
        param.copy_(value.to(device=param.device, dtype=param.dtype))


def _fold_into_projection(module: nn.Module, transform: torch.Tensor) -> None:
    """Make ``module``'s output ``y`` become ``y T`` (full ``T``, hidden x hidden) or ``y * t`` (diagonal ``t``)."""
    weight = module.weight.detach().to(torch.float64)
    t = transform.to(device=weight.device, dtype=torch.float64)
    conv1d = _is_conv1d(module)
    if t.dim() == 1:
        new_weight = weight * (t[None, :] if conv1d else t[:, None])
    else:
        new_weight = weight @ t if conv1d else t.T @ weight  # Conv1D: y = z W + c; Linear: y = z W^T + c
    _set(module.weight, new_weight)
    if getattr(module, "bias", None) is not None:
        bias = module.bias.detach().to(torch.float64)
        _set(module.bias, bias * t if t.dim() == 1 else bias @ t)


def _fold_into_norm(module: nn.Module, t: torch.Tensor | float, offset: float) -> None:
    """Make a norm's output ``n(x) * (offset + w) + bias`` become that times ``t`` (per channel or scalar)."""
    weight = module.weight.detach().to(torch.float64)
    t = torch.as_tensor(t, dtype=torch.float64, device=weight.device)
    _set(module.weight, (offset + weight) * t - offset)
    if getattr(module, "bias", None) is not None:
        _set(module.bias, module.bias.detach().to(torch.float64) * t)


def _fold_into_tables(tables: Sequence[nn.Module], transform: torch.Tensor) -> None:
    for table in tables:
        weight = table.weight.detach().to(torch.float64)
        t = transform.to(device=weight.device, dtype=torch.float64)
        _set(table.weight, weight * t[None, :] if t.dim() == 1 else weight @ t)


def _scale_writer(module: nn.Module, factor: float, layout: BlockLayout) -> None:
    if _writer_kind(module, "", "") == "norm":
        _fold_into_norm(module, factor, layout.norm_weight_offset)
        return
    _set(module.weight, module.weight.detach().to(torch.float64) * factor)
    if getattr(module, "bias", None) is not None:
        _set(module.bias, module.bias.detach().to(torch.float64) * factor)


def _touched_parameters(model, blocks, kept, runs, layout, method) -> list[torch.Tensor]:
    modules: list[nn.Module] = []
    for run in runs:
        if method == "scale":
            for i in _kept_after(run, kept):
                modules += [_submodule(blocks[i], path) for path in layout.residual_writers]
        elif run.before is None:
            modules += _embedding_tables(model, layout)
        else:
            path = layout.mlp_projection or layout.mlp_post_norm
            modules.append(_submodule(blocks[run.before], path))
    params: dict[int, torch.Tensor] = {}
    for module in modules:
        for param in module.parameters(recurse=False):
            params[id(param)] = param
    return list(params.values())


# ----------------------------------------------------------------------------------------------------------------
# the verb


def heal_removed_layers(
    model: nn.Module,
    removed_layers: Sequence[int],
    calibration_batches: Iterable[Mapping[str, Any]],
    method: str = "linear",
    ridge: float = 0.0,
    diagonal: bool = False,
    relative: bool = False,
    check: Callable[[], float] | None = None,
    check_description: str = "the check loss",
    ridge_choices: Sequence[float] = (),
    fit: str = "map",
) -> HealingReport:
    """Fit a training-free patch for every maximal run of ``removed_layers`` and fold it into the kept weights.

    Call on the DENSE model (all layers present), then ``drop_layers(model, removed_layers)``: the statistics
    compare the pruned stream with the dense one, which only the dense model can show. ``calibration_batches`` are
    mappings with ``input_ids`` (and ``attention_mask``; masked tokens are left out), e.g. a ``DataLoader`` over a
    ``CalibrationDataset``. See the module docstring for the exact rules (``method="linear"``: ReplaceMe least
    squares, ``ridge`` toward the identity relative to the mean eigenvalue (0: none; few calibration tokens
    overfit without it), ``diagonal`` for a per-channel map; ``method="scale"``:
    Prune&Comp magnitude compensation). Only kept blocks' weights change, in place; the architecture does not.
    With ``check`` (a loss of the model as it stands, removed layers skipped; ``check_description`` names it for
    the card), only the runs whose patch lowers it are folded (module docstring); 1 + runs + (helpful runs - 1)
    calls at most. ``ridge_choices`` (linear, with ``check``): each run's ridge is the one of these whose patch
    alone gives the lowest check loss (``ridge`` is then not used); one more call per run and extra ridge.
    ``fit`` (linear): ``"map"`` is ReplaceMe's ``T`` on the MLP output; ``"projection"`` refits the weight of the
    output projection itself on its input (ridge toward its original weight), a superset of ``T^T W``, for every run
    whose kept block before it has one writing the stream (not through a post-norm, not a run at layer 0, not
    ``diagonal``); those runs get the map, and each run record says its ``fit``. Its statistics are ``in x in``
    (the MLP width) instead of ``hidden x hidden`` per run.

    Raises ``HealingError`` for bad input and ``HealingNotExactError`` where no exact fold exists, in both cases
    before any weight is changed.
    """
    start = time.perf_counter()
    if method not in HEALING_METHODS:
        raise HealingError(f"unknown healing method {method!r}; choose one of {HEALING_METHODS}")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not math.isfinite(ridge) or ridge < 0:
        raise HealingError(f"ridge must be a finite number >= 0, got {ridge!r}")
    if not isinstance(diagonal, bool):
        raise HealingError(f"diagonal must be True or False, got {diagonal!r}")
    if not isinstance(relative, bool):
        raise HealingError(f"relative must be True or False, got {relative!r}")
    if check is not None and not callable(check):
        raise HealingError(f"check must be a callable returning a loss, got {type(check).__name__}")
    ridge_choices = tuple(ridge_choices)
    if ridge_choices:
        if method != "linear" or check is None:
            raise HealingError("ridge_choices needs method='linear' and a check to choose among them")
        for value in ridge_choices:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise HealingError(f"ridge_choices must be finite numbers >= 0, got {value!r}")
    if fit not in HEALING_FITS:
        raise HealingError(f"fit must be one of {HEALING_FITS}, got {fit!r}")
    if method == "scale" and fit != "map":
        raise HealingError("fit='projection' applies to method='linear'; method='scale' fits one scalar per run")
    if method == "scale" and (diagonal or ridge or relative):
        raise HealingError(
            "ridge, diagonal and relative apply to method='linear'; method='scale' fits one scalar per run"
        )
    parent, attr = find_decoder_layers(model)
    blocks = getattr(parent, attr)
    kept = _kept_from_remove(list(removed_layers), len(blocks))  # validates range, duplicates, keeps >= 1
    removed = [i for i in range(len(blocks)) if i not in set(kept)]
    runs = _runs(removed)
    if not runs:
        return HealingReport(method, [], time.perf_counter() - start, 0, 0, float(ridge), diagonal, fit=fit)
    _, layout = _layout(model)
    _plan(model, blocks, kept, runs, method, diagonal, fit)
    num_batches, num_tokens = _collect(model, blocks, runs, layout, method, diagonal, calibration_batches, relative)

    ridges = [float(r) for r in ridge_choices] if ridge_choices else [float(ridge)]
    choices: list[list[tuple[Any, dict[str, Any]]]] = []  # per run: (fit, numbers) per candidate ridge
    for run in runs:
        if method == "scale":
            choices.append([_fit_scale(run)])
        elif run.kind == "projection":
            weight = _projection_weight(_submodule(blocks[run.before], layout.mlp_projection))
            choices.append([_fit_projection(run, r, weight) for r in ridges])
        else:
            choices.append([_fit_linear(run, r, diagonal) for r in ridges])
        if method == "linear":
            for r, (_, numbers) in zip(ridges, choices[-1]):
                numbers["ridge"] = r
        run.stats.clear()
    fits: list[Any] = [options[0][0] for options in choices]
    records: list[dict[str, Any]] = [
        {"removed_layers": run.layers, "fold_block": run.before, "target": run.target, **options[0][1]}
        | ({"fit": run.kind} if method == "linear" else {})
        for run, options in zip(runs, choices)
    ]

    touched = _touched_parameters(model, blocks, kept, runs, layout, method)
    backup = [param.detach().clone() for param in touched]

    def restore() -> None:
        for param, saved in zip(touched, backup):
            _set(param, saved)

    def fold(indices: Sequence[int]) -> None:
        for i in sorted(indices):
            _apply(model, blocks, kept, runs[i], fits[i], layout, method)

    check_record: dict[str, Any] = {}
    try:
        chosen = list(range(len(runs)))
        if check is not None:
            chosen, check_record = _checked_runs(choices, fits, fold, restore, check, records)
            check_record["description"] = check_description
        for i, record in enumerate(records):
            record["folded"] = i in chosen
        fold(chosen)
    except BaseException:
        restore()
        raise
    return HealingReport(
        method=method,
        runs=records,
        seconds=time.perf_counter() - start,
        calibration_tokens=num_tokens,
        calibration_batches=num_batches,
        ridge=None if ridge_choices else float(ridge),  # chosen per run then: each run record has its own
        diagonal=diagonal,
        statistic="mean_abs_ratio" if method == "scale" else "least_squares",
        relative=relative,  # False for scale: refused above
        check=check_record,
        ridge_choices=list(ridges) if ridge_choices else [],
        fit=fit,
        fits=fits,
    )


def fold_healing(model: nn.Module, removed_layers: Sequence[int], report: HealingReport) -> None:
    """Fold the patches ``report`` folded into the DENSE ``model`` again, from the fits it kept: after
    :func:`temporarily_healed` scored a set and put its weights back, the winning set is healed as it was scored
    without a second statistics pass or check. ``report`` must come from healing these ``removed_layers`` on this
    model with its weights as they are now."""
    parent, attr = find_decoder_layers(model)
    blocks = getattr(parent, attr)
    kept = _kept_from_remove(list(removed_layers), len(blocks))
    runs = _runs([i for i in range(len(blocks)) if i not in set(kept)])
    if [run.layers for run in runs] != [list(r["removed_layers"]) for r in report.runs] or len(report.fits) != len(
        runs
    ):
        raise HealingError(
            f"the healing report is of removed runs {[r['removed_layers'] for r in report.runs]}, not of "
            f"{[run.layers for run in runs]} (or it kept no fits)"
        )
    _, layout = _layout(model)
    _plan(model, blocks, kept, runs, report.method, report.diagonal, report.fit)
    for run, fit, record in zip(runs, report.fits, report.runs):
        if record.get("folded", True):
            _apply(model, blocks, kept, run, fit, layout, report.method)


def _checked_runs(
    choices: list[list[tuple[Any, dict[str, Any]]]],
    fits: list[Any],
    fold: Callable[[Sequence[int]], None],
    restore: Callable[[], None],
    check: Callable[[], float],
    records: list[dict[str, Any]],
) -> tuple[list[int], dict[str, Any]]:
    """Which runs' patches to fold: each tried alone against the unhealed loss (with each candidate ridge, the best
    one kept in ``fits``), then the helpful ones added best first while the loss keeps falling. Leaves the weights
    as it found them (unhealed)."""

    def loss_with(indices: Sequence[int]) -> float:
        fold(indices)
        try:
            value = float(check())
        finally:
            restore()
        return math.inf if math.isnan(value) else value  # a patch that breaks the model is just not helpful

    unhealed = loss_with([])
    evaluations = 1
    for i, options in enumerate(choices):
        losses = []
        for fit, _ in options:
            fits[i] = fit
            losses.append(loss_with([i]))
            evaluations += 1
        best_option = min(range(len(options)), key=lambda j: (losses[j], j))
        fits[i] = options[best_option][0]
        records[i].update(options[best_option][1])
        records[i]["check_loss"] = losses[best_option]
        if len(options) > 1:
            records[i]["ridge_losses"] = losses
    count = len(choices)
    helpful = sorted(
        (i for i in range(count) if records[i]["check_loss"] < unhealed), key=lambda i: records[i]["check_loss"]
    )
    chosen: list[int] = helpful[:1]
    best = records[helpful[0]]["check_loss"] if helpful else unhealed
    for i in helpful[1:]:
        loss = loss_with(chosen + [i])
        evaluations += 1
        if loss < best:
            chosen, best = chosen + [i], loss
    return sorted(chosen), {"unhealed_loss": unhealed, "healed_loss": best, "evaluations": evaluations}


@contextlib.contextmanager
def temporarily_healed(
    model: nn.Module, removed_layers: Sequence[int], calibration_batches: Iterable[Mapping[str, Any]], **options: Any
):
    """:func:`heal_removed_layers` for the length of a ``with`` block, then the weights it changed put back: for
    scoring a candidate set as it would be healed (healing-aware selection) without keeping its patch. Yields the
    report. Only the parameters the patch writes are copied, not the model."""
    parent, attr = find_decoder_layers(model)
    blocks = getattr(parent, attr)
    kept = _kept_from_remove(list(removed_layers), len(blocks))
    runs = _runs([i for i in range(len(blocks)) if i not in set(kept)])
    _, layout = _layout(model)
    touched = _touched_parameters(model, blocks, kept, runs, layout, options.get("method", "linear"))
    backup = [param.detach().clone() for param in touched]
    try:
        yield heal_removed_layers(model, removed_layers, calibration_batches, **options)
    finally:
        for param, saved in zip(touched, backup):
            _set(param, saved)


def _apply(model, blocks, kept, run: _Run, fit: Any, layout: BlockLayout, method: str) -> None:
    if method == "scale":
        for i in _kept_after(run, kept):
            for path in layout.residual_writers:
                _scale_writer(_submodule(blocks[i], path), 1.0 / fit, layout)
        return
    if run.before is None:
        _fold_into_tables(_embedding_tables(model, layout), fit)
    elif run.kind == "projection":
        module = _submodule(blocks[run.before], layout.mlp_projection)
        _set(module.weight, fit.T if _is_conv1d(module) else fit)
    elif layout.mlp_projection is None:
        _fold_into_norm(_submodule(blocks[run.before], layout.mlp_post_norm), fit, layout.norm_weight_offset)
    else:
        _fold_into_projection(_submodule(blocks[run.before], layout.mlp_projection), fit)


def record_healing(model: nn.Module, report: HealingReport) -> None:
    """Add a compact account of ``report`` to ``config.layer_pruning`` (after ``drop_layers`` wrote it), so the saved
    checkpoint says its kept weights were healed and how."""
    config = get_decoder_config(model)
    record = getattr(config, PRUNING_RECORD_KEY, None)
    if not isinstance(record, dict):
        record = {}
    record = dict(record)
    record["healing"] = {
        "method": report.method,
        "diagonal": report.diagonal,
        "ridge": report.ridge,
        "relative": report.relative,
        **({"fit": report.fit} if report.method == "linear" else {}),
        "calibration_tokens": report.calibration_tokens,
        "runs": [
            {key: run[key] for key in ("removed_layers", "target", "fit", "scale", "folded", "ridge") if key in run}
            | {"residual_before": round(run["residual_before"], 6), "residual_after": round(run["residual_after"], 6)}
            for run in report.runs
        ],
    }
    if report.check:
        record["healing"]["check"] = dict(report.check)
    if report.ridge_choices:
        record["healing"]["ridge_choices"] = list(report.ridge_choices)
    setattr(config, PRUNING_RECORD_KEY, record)
