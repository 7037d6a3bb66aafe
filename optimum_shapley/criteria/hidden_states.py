"""One forward pass over the calibration set that records what every decoder block does to its input.

Hooks on the blocks see each block's true input and output (``output_hidden_states`` would give the final-normed
state instead of the last block's output on most models). Per block we accumulate the mean token cosine similarity
between input and output (ShortGPT's block influence) and keep each sequence's last-token state at every block
boundary (the angular distance of Gromov et al.).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..architectures import find_decoder_layers
from ..evaluation import MaskEvaluator
from ..modes import eval_mode

__all__ = ["BlockStatistics", "collect_block_statistics"]


@dataclass
class BlockStatistics:
    mean_cosine: list[float]  # per block: mean over tokens of cos(block input, block output)
    last_token_states: torch.Tensor  # (num_sequences, num_layers + 1, hidden): boundary b = input of block b


def _hidden(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def collect_block_statistics(evaluator: MaskEvaluator) -> BlockStatistics:
    model = evaluator.model
    blocks = getattr(*find_decoder_layers(model))
    num_layers = len(blocks)
    cosine_sums = [0.0] * num_layers
    token_counts = [0] * num_layers
    boundaries: list[list[torch.Tensor]] = [[] for _ in range(num_layers + 1)]
    current = {}

    def pre_hook(index):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs.get("hidden_states")
            current[index] = hidden.detach()
            if index == 0:
                boundaries[0].append(hidden.detach()[:, -1, :].float().cpu())

        return hook

    def post_hook(index):
        def hook(module, args, kwargs, output):
            inputs = current.pop(index).float()
            outputs = _hidden(output).detach().float()
            cosine = torch.nn.functional.cosine_similarity(inputs, outputs, dim=-1)  # (batch, tokens)
            cosine_sums[index] += float(cosine.sum(dtype=torch.float64))
            token_counts[index] += cosine.numel()
            boundaries[index + 1].append(outputs[:, -1, :].cpu())

        return hook

    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(pre_hook(i), with_kwargs=True))
        handles.append(block.register_forward_hook(post_hook(i), with_kwargs=True))
    try:
        with eval_mode(model), torch.no_grad():
            for batch in evaluator.prepared_batches():
                model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return BlockStatistics(
        mean_cosine=[s / max(1, n) for s, n in zip(cosine_sums, token_counts)],
        last_token_states=torch.stack([torch.cat(states) for states in boundaries], dim=1),
    )
