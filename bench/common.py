"""What the quality and efficiency benches share: one protocol for every method and every budget.

Calibration: ``num_samples`` x 128 tokens of ``calibration/c4_demo.json`` (seed 0), the same blocks for every method.
Evaluation: WikiText-2 raw test, ``"\\n\\n".join`` of the lines, non-overlapping 128-token windows (BOS first where
the tokenizer adds one), token-weighted, on a fixed prefix of ``eval_windows`` windows.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import default_data_collator  # noqa: E402

from optimum_shapley import LayerMask, load_causal_lm  # noqa: E402
from optimum_shapley.data import CalibrationDataset, build_calibration_dataset  # noqa: E402
from optimum_shapley.evaluation import (  # noqa: E402
    MaskEvaluationCache,
    MaskEvaluator,
    model_fingerprint,
    read_raw_lines,
    run_fingerprint,
    text_windows,
    window_nll_sums,
)
from optimum_shapley.surgery import num_decoder_layers  # noqa: E402

DEFAULT_DATA_DIR = os.path.join(ROOT, "..", "shared", "data")
CALIBRATION_BLOCKS = {"smollm2-135m": 10, "gemma3-270m": 10}
"""128-token calibration blocks per model: the paper's 10 for both. Gemma-3 ran with 5 for a while (its 262k-token
vocabulary head makes an evaluation cost 5.2 s here against SmolLM2's 1.7 s), and 5 blocks were too few to tell
apart the two best remove-4 sets: 145.41 vs 145.46 calibration perplexity, while 10 blocks give 149.25 vs 133.95
and WikiText-2 agrees with the second (231.21 vs 206.39)."""


@dataclass
class BenchModel:
    """A loaded model with its calibration blocks, evaluation windows and the cache fingerprint of the pair."""

    alias: str
    model: torch.nn.Module
    tokenizer: object
    depth: int
    calibration: CalibrationDataset
    windows: torch.Tensor
    total_windows: int
    fingerprint: str
    batch_size: int = 8
    info: dict = field(default_factory=dict)
    _ppl: dict = field(default_factory=dict, repr=False)
    _window_nll: dict = field(default_factory=dict, repr=False)

    def evaluator(self, cache_dir: str) -> MaskEvaluator:
        """A mask evaluator on the calibration blocks whose results persist in ``cache_dir``."""

        def batches():
            return DataLoader(self.calibration, batch_size=self.batch_size, collate_fn=default_data_collator)

        cache = MaskEvaluationCache(cache_dir, self.fingerprint)
        return MaskEvaluator(self.model, batches, cache=cache, show_progress=False)

    def wikitext_ppl(self, removed: list[int] | None = None) -> float:
        """WikiText-2 perplexity of the model without ``removed`` layers (the dense model when None).

        Remembered per removed set: methods that agree on a cell (SLEB and angular distance often do) share one
        evaluation, which is the same forward pass on the same windows.
        """
        key = tuple(sorted(removed or ()))
        if key not in self._ppl:
            kept = [i for i in range(self.depth) if i not in key]
            with LayerMask(self.model, kept) if key else nullcontext():
                nll, tokens = window_nll_sums(self.model, self.windows, self.batch_size)
            self._window_nll[key] = nll
            self._ppl[key] = math.exp(float(nll.sum()) / int(tokens.sum()))
        return self._ppl[key]

    def window_nll(self, removed: list[int] | None = None) -> list[float]:
        """Summed NLL of each evaluation window without ``removed`` layers: the paired comparison's data."""
        self.wikitext_ppl(removed)
        return self._window_nll[tuple(sorted(removed or ()))].tolist()


def report_markdown(output_dir: str, name: str, table: str, note: str) -> None:
    """Print a bench's table and note, and write them to ``output_dir/name.md``."""
    print("\n" + table + "\n\n" + note)
    with open(os.path.join(output_dir, f"{name}.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n\n" + note + "\n")


def data_paths(data_dir: str) -> tuple[str, str]:
    """(WikiText-2 raw test, C4 calibration sample); exits with a clear message when the data is absent."""
    wikitext = os.path.join(data_dir, "wikitext-2-raw", "wiki.test.raw")
    c4 = os.path.join(data_dir, "calibration", "c4_demo.json")
    for path in (wikitext, c4):
        if not os.path.exists(path):
            sys.exit(f"missing {path}: pass --data-dir pointing at the shared evaluation data")
    return wikitext, c4


WINDOW_CHOICES = ("first", "spread")
"""Which evaluation windows: the first ``eval_windows`` of the test set, or ``eval_windows`` evenly spaced over all of
it. WikiText-2's test set is 60 articles of some 40 windows each, so the first 64 windows cover about two: a
set's ratio to another moved from 1.039 on them to 0.991 on the first 192 (Gemma-3-270M remove 4; per 32-window chunk
0.936 to 1.067), and no resampling of those 64 windows can show it. Spread windows sample every article."""


def select_windows(windows: torch.Tensor, count: int, choice: str = "first") -> torch.Tensor:
    """``count`` of ``windows``: the first ones, or evenly spaced from the first to the last (``choice='spread'``)."""
    if choice not in WINDOW_CHOICES:
        raise ValueError(f"window choice {choice!r}: one of {WINDOW_CHOICES}")
    if choice == "first" or count >= len(windows):
        return windows[:count]
    index = np.linspace(0, len(windows) - 1, count).round().astype(np.int64)
    return windows[torch.from_numpy(index)]


def load_bench_model(
    alias: str, data_dir: str, num_samples: int, eval_windows: int, batch_size: int = 8, window_choice: str = "first"
) -> BenchModel:
    wikitext, c4 = data_paths(data_dir)
    start = time.perf_counter()
    model, tokenizer = load_causal_lm(alias)
    model.eval()
    calibration = build_calibration_dataset(tokenizer, c4, num_samples=num_samples, seq_length=128, seed=0)
    windows = text_windows(tokenizer, read_raw_lines(wikitext), 128)
    fingerprint = run_fingerprint(model_fingerprint(model), calibration.fingerprint())
    return BenchModel(
        alias=alias,
        model=model,
        tokenizer=tokenizer,
        depth=num_decoder_layers(model),
        calibration=calibration,
        windows=select_windows(windows, eval_windows, window_choice),
        total_windows=len(windows),
        fingerprint=fingerprint,
        batch_size=batch_size,
        info={"load_seconds": time.perf_counter() - start},
    )
