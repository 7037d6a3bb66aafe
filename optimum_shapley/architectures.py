"""Where each model family keeps its decoder stack, which config fields are per layer, and how fields derived
from the layer index are rewritten.

This module is data plus one discovery function. Model surgery (``surgery.py``) reads it; adding an
architecture is usually a one-line change to a table here, not new code.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

__all__ = [
    "DECODER_LAYER_PATHS",
    "HEALING_LAYOUTS",
    "INDEX_LIST_FIELDS",
    "LAYER_INDEX_ATTRIBUTES",
    "LAYER_INDEX_RULES",
    "PER_LAYER_LIST_FIELDS",
    "BlockLayout",
    "CONTEXT_LENGTH_FIELDS",
    "BuiltFromIndex",
    "CarriedPattern",
    "EveryKth",
    "PrefixCount",
    "UnsupportedArchitectureError",
    "context_length",
    "find_decoder_layers",
    "get_decoder_config",
    "parameter_counts",
]


class UnsupportedArchitectureError(ValueError):
    """The model's decoder block list could not be located."""


# model_type -> dotted path from the *CausalLM model to its decoder ``nn.ModuleList``.
# Families not listed are found by generic discovery (see ``find_decoder_layers``).
DECODER_LAYER_PATHS: dict[str, str] = {
    **dict.fromkeys(
        [
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen2_moe",
            "qwen3",
            "qwen3_moe",
            "gemma",
            "gemma2",
            "gemma3_text",
            "phi",
            "phi3",
            "olmo",
            "olmo2",
            "granite",
            "cohere",
            "cohere2",
            "stablelm",
            "starcoder2",
            "smollm3",
            "deepseek_v2",
            "deepseek_v3",
        ],
        "model.layers",
    ),
    **dict.fromkeys(["gpt2", "gptj", "gpt_neo", "falcon", "bloom", "gpt_bigcode", "codegen"], "transformer.h"),
    "opt": "model.decoder.layers",
    "gpt_neox": "gpt_neox.layers",
    "mamba": "backbone.layers",
    "mamba2": "backbone.layers",
    # multimodal Gemma-3: the language model sits under model.language_model and edits config.text_config
    "gemma3": "model.language_model.layers",
}

# Config lists with one entry per decoder layer, in layer order: sliced with the kept layers.
PER_LAYER_LIST_FIELDS: tuple[str, ...] = (
    "layer_types",
    "mlp_layer_types",
    "no_rope_layers",
    "layers_block_type",
    "attention_layers",  # GPT-Neo
    "activation_sparsity_pattern",  # Gemma-3n
    "layer_rope_theta",
    "num_attention_heads_per_layer",
    "num_key_value_heads_per_layer",
    "indexer_types",
    "rope_scaling_layers",
    "block_types",
)

# Config lists holding layer *indices*: remapped old -> new, indices of removed layers dropped.
INDEX_LIST_FIELDS: tuple[str, ...] = (
    "mlp_only_layers",
    "moe_layers",
    "full_attn_idxs",
    "sliding_window_layers",
    "global_attn_layers",
)

# Attributes of a block's submodules that hold the block's position (KV-cache slot, mask choice).
LAYER_INDEX_ATTRIBUTES: tuple[str, ...] = ("layer_idx",)


# Integer config fields from which a family re-derives per-layer structure from the layer index at load time.
# ``surgery.py`` applies each kind generically: rewrite to an equivalent value for the new depth, or refuse.


@dataclass(frozen=True)
class PrefixCount:
    """``field = N`` means layers ``0..N-1`` differ (DeepSeek's dense MoE prefix, Qwen2's full-attention prefix):
    the kept layers below ``N`` still form a prefix, so the new value is their count. It applies when the value
    is at least ``minimum``; each ``(other field, allowed values)`` in ``requires`` must hold, else no exact
    rewrite exists (the placement depends on more than the prefix) and removal is refused with ``why``."""

    field: str
    minimum: int = 0
    requires: tuple[tuple[str, tuple[object, ...]], ...] = ()
    why: str = ""


@dataclass(frozen=True)
class EveryKth:
    """``field = k`` (> 1) marks every k-th layer (index ``i`` with ``(i + 1) % k == 0``) unless listed in
    ``exceptions``, and only when ``active_if`` is non-zero (Qwen-MoE's sparse layers): rewritten as an explicit
    ``exceptions`` list for the new depth with ``field = 1``."""

    field: str
    exceptions: str
    active_if: str


@dataclass(frozen=True)
class CarriedPattern:
    """``field = p`` (> 1) is a period of per-layer structure that the explicit list ``explicit`` overrides at load
    time (Gemma's sliding-window pattern, Llama-4's MoE interleave): safe only when that list is rewritten too."""

    field: str
    explicit: str


@dataclass(frozen=True)
class BuiltFromIndex:
    """A flag under which a block computes with its own index when built (GPT-2's attention scaled by
    ``1 / (layer_idx + 1)``): renumbered layers would reload differently, so only trailing layers may go."""

    field: str
    why: str


LAYER_INDEX_RULES: tuple[PrefixCount | EveryKth | CarriedPattern | BuiltFromIndex, ...] = (
    EveryKth("decoder_sparse_step", exceptions="mlp_only_layers", active_if="num_experts"),
    PrefixCount(
        "first_k_dense_replace",
        minimum=1,
        requires=(("moe_layer_freq", (None, 1)),),
        why="derives MoE placement from layer indices and has no explicit per-layer field",
    ),
    PrefixCount("max_window_layers"),
    CarriedPattern("sliding_window_pattern", explicit="layer_types"),
    CarriedPattern("_sliding_window_pattern", explicit="layer_types"),
    CarriedPattern("interleave_moe_layer_step", explicit="moe_layers"),
    BuiltFromIndex("scale_attn_by_inverse_layer_idx", why="scales attention by 1/(layer_idx+1)"),
)
"""Every index-derived field we know, in the order they are applied (an ``EveryKth`` rewrite of its exceptions
list comes before anything reads that list)."""


@dataclass(frozen=True)
class BlockLayout:
    """Where one decoder block writes into the residual stream: what training-free healing folds into.

    Paths are relative to the block, except ``position_embeddings`` and ``embedding_projection`` (from the
    *CausalLM model). Every family listed here computes ``h_out = h_in + sum(writer outputs)`` (sequential or
    parallel: the MLP term is its own summand either way) and reads the stream only through norms.
    """

    mlp_output: str  # module whose output is the MLP's summand of the residual add (hooked for statistics)
    mlp_projection: str | None  # the linear layer producing that summand; None when a norm sits in between
    residual_writers: tuple[str, ...]  # every module whose output is added to the stream as is
    mlp_post_norm: str | None = None  # a norm between the MLP projection and the residual add (Gemma-2/3)
    norm_weight_offset: float = 0.0  # the norms above multiply by (offset + weight): Gemma's RMSNorm uses 1 + w
    position_embeddings: tuple[str, ...] = ()  # tables added to the token embeddings before block 0
    embedding_projection: str | None = None  # a projection between embeddings and block 0 when it exists (OPT)
    refusals: tuple[tuple[str, object, str], ...] = ()  # (config field, value, why no exact fold exists then)


_LLAMA_LIKE = BlockLayout(
    mlp_output="mlp", mlp_projection="mlp.down_proj", residual_writers=("self_attn.o_proj", "mlp.down_proj")
)
_GEMMA_POST_NORM = BlockLayout(
    mlp_output="post_feedforward_layernorm",
    mlp_projection=None,
    residual_writers=("post_attention_layernorm", "post_feedforward_layernorm"),
    mlp_post_norm="post_feedforward_layernorm",
    norm_weight_offset=1.0,
)

# model_type -> BlockLayout, for the families whose healing folds are derived and tested (tests/test_healing.py).
HEALING_LAYOUTS: dict[str, BlockLayout] = {
    **dict.fromkeys(["llama", "mistral", "qwen2", "qwen3", "phi3"], _LLAMA_LIKE),
    **dict.fromkeys(["gemma2", "gemma3_text"], _GEMMA_POST_NORM),
    "gpt2": BlockLayout(
        mlp_output="mlp",
        mlp_projection="mlp.c_proj",
        residual_writers=("attn.c_proj", "mlp.c_proj"),
        position_embeddings=("transformer.wpe",),
    ),
    "opt": BlockLayout(
        mlp_output="fc2",
        mlp_projection="fc2",
        residual_writers=("self_attn.out_proj", "fc2"),
        position_embeddings=("model.decoder.embed_positions",),
        embedding_projection="model.decoder.project_in",
        refusals=(
            ("do_layer_norm_before", False, "post-LN blocks (OPT-350m) normalise the residual sum itself"),
            ("_remove_final_layer_norm", True, "without a final norm the stream's scale reaches the head"),
        ),
    ),
    "gpt_neox": BlockLayout(
        mlp_output="mlp", mlp_projection="mlp.dense_4h_to_h", residual_writers=("attention.dense", "mlp.dense_4h_to_h")
    ),
    "falcon": BlockLayout(
        mlp_output="mlp",
        mlp_projection="mlp.dense_4h_to_h",
        residual_writers=("self_attention.dense", "mlp.dense_4h_to_h"),
    ),
    # Mamba's block has one summand, the mixer's: it plays the MLP's part
    "mamba": BlockLayout(mlp_output="mixer", mlp_projection="mixer.out_proj", residual_writers=("mixer.out_proj",)),
}


CONTEXT_LENGTH_FIELDS: tuple[str, ...] = (
    "max_position_embeddings",
    "n_positions",
    "n_ctx",
    "max_sequence_length",
    "seq_length",
)
"""Config fields holding the longest input a family's model takes, in the order they are read."""


def context_length(model_or_config: nn.Module | PretrainedConfig) -> int | None:
    """The longest input the decoder takes (the first positive ``CONTEXT_LENGTH_FIELDS`` value), None when the
    config names none or the object is not a Transformers model."""
    config = getattr(model_or_config, "config", None) if isinstance(model_or_config, nn.Module) else model_or_config
    if config is None or not hasattr(config, "get_text_config"):
        return None
    config = config.get_text_config(decoder=True)
    for name in CONTEXT_LENGTH_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def get_decoder_config(model_or_config: PreTrainedModel | PretrainedConfig) -> PretrainedConfig:
    """The (sub-)config that owns ``num_hidden_layers`` of the decoder stack (``text_config`` for multimodal)."""
    config = model_or_config.config if isinstance(model_or_config, nn.Module) else model_or_config
    return config.get_text_config(decoder=True)


def _resolve(root: nn.Module, dotted: str) -> tuple[nn.Module, str] | None:
    parent = root
    *parents, attr = dotted.split(".")
    for name in parents:
        parent = getattr(parent, name, None)
        if not isinstance(parent, nn.Module):
            return None
    if isinstance(getattr(parent, attr, None), nn.ModuleList):
        return parent, attr
    return None


def _no_split_classes(model: nn.Module) -> set[str]:
    names = getattr(model, "_no_split_modules", None) or ()
    return set(names)


def find_decoder_layers(model: PreTrainedModel) -> tuple[nn.Module, str]:
    """Return ``(parent_module, attribute_name)`` such that ``getattr(parent, name)`` is the decoder block list.

    The explicit table (``DECODER_LAYER_PATHS``) wins; otherwise we look under ``model.get_decoder()`` (then the
    whole model) for the shallowest ``nn.ModuleList`` whose length is the decoder's ``num_hidden_layers`` and whose
    blocks are of a class listed in ``model._no_split_modules``.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    path = DECODER_LAYER_PATHS.get(model_type) if model_type else None
    if path is not None:
        found = _resolve(model, path)
        if found is not None:
            return found

    num_layers = None
    if config is not None:
        try:
            num_layers = getattr(get_decoder_config(model), "num_hidden_layers", None)
        except Exception:  # a config without a text sub-config
            num_layers = getattr(config, "num_hidden_layers", None)
    block_classes = _no_split_classes(model)

    roots: list[nn.Module] = []
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_decoder):
        try:
            decoder = get_decoder()
        except Exception:
            decoder = None
        if isinstance(decoder, nn.Module):
            roots.append(decoder)
    roots.append(model)

    if isinstance(num_layers, int) and num_layers > 0:
        for root in roots:
            candidates = []
            for name, module in root.named_modules():
                if not isinstance(module, nn.ModuleList) or len(module) != num_layers or not name:
                    continue
                if block_classes and type(module[0]).__name__ not in block_classes:
                    continue
                candidates.append(name)
            if candidates:
                best = min(candidates, key=lambda n: n.count("."))
                found = _resolve(root, best)
                if found is not None:
                    return found

    looked_for = f"table path {path!r}" if path else f"no table entry for model_type={model_type!r}"
    raise UnsupportedArchitectureError(
        f"Cannot find the decoder layers of {type(model).__name__}: {looked_for}; and no nn.ModuleList of "
        f"{num_layers} blocks of class {sorted(block_classes) or '(model._no_split_modules is empty)'} "
        "under model.get_decoder() or the model. Add its path to "
        "optimum_shapley.architectures.DECODER_LAYER_PATHS."
    )


def parameter_counts(model: PreTrainedModel) -> list[int]:
    """``[total, layer 0, layer 1, ...]``: the model's parameters (each shared tensor once, so tied embeddings
    count once) and each decoder layer's; what a ``target_params`` budget is measured in."""
    parent, attr = find_decoder_layers(model)
    total = sum(p.numel() for p in model.parameters())
    return [total] + [sum(p.numel() for p in layer.parameters()) for layer in getattr(parent, attr)]
