"""Tiny random causal LMs, one per architecture family we claim, built from configs (no download)."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

VOCAB = 96
DEPTH = 6

_ATTN = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8)

TINY_CONFIGS: dict[str, dict] = {
    "llama": dict(_ATTN),
    "mistral": dict(_ATTN, sliding_window=4),
    # layers >= max_window_layers use sliding attention: a mixed layer_types list
    "qwen2": dict(_ATTN, use_sliding_window=True, sliding_window=4, max_window_layers=3),
    "qwen3": dict(_ATTN, use_sliding_window=True, sliding_window=4, max_window_layers=2),
    "gemma2": dict(_ATTN, sliding_window=4),
    "gemma3_text": dict(_ATTN, sliding_window=4, sliding_window_pattern=3),
    "phi3": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
    "gpt2": dict(n_embd=32, n_head=4, n_positions=128),
    "opt": dict(hidden_size=32, ffn_dim=64, num_attention_heads=4, word_embed_proj_dim=32),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4),
    "falcon": dict(hidden_size=32, num_attention_heads=4),
    "mamba": dict(hidden_size=32, state_size=4, intermediate_size=64, conv_kernel=2),
}

ARCHITECTURES = list(TINY_CONFIGS)


def tiny_config(model_type: str, num_layers: int = DEPTH, **overrides):
    kwargs = dict(TINY_CONFIGS.get(model_type, {}))
    kwargs.update(overrides)
    config = AutoConfig.for_model(
        model_type,
        num_hidden_layers=num_layers,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **kwargs,
    )
    if model_type == "gpt2":
        config.n_layer = num_layers
    return config


def tiny_model(model_type: str, num_layers: int = DEPTH, seed: int = 0, **overrides):
    """A float32 random model in eval mode; same seed, same weights."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, num_layers, **overrides))
    model.eval()
    return model


def tiny_inputs(batch: int = 2, length: int = 10, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def tiny_tokenizer():
    """A real fast tokenizer (BPE trained in memory on Python's bundled docs) whose ids fit ``VOCAB``."""
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], limit_alphabet=60, show_progress=False
    )
    backend.train_from_iterator([topics[k] for k in sorted(topics)][:40], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    assert len(tokenizer) <= VOCAB
    return tokenizer
