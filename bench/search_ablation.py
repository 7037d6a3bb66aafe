"""Does the surrogate-guided search pick better layers than the k lowest Shapley values? Same masks, same surrogate
settings, search off vs on.

    python bench/search_ablation.py [--model smollm2-135m] [--remove 6] [--num-masks 128]

Calibration: 4 x 128 tokens of ../shared/data/calibration/c4_demo.json (seed 0); evaluation: the first 32
non-overlapping 128-token windows of WikiText-2 raw test. Both runs share one evaluation cache, so the search run
pays only for its verified candidates; "evaluations" counts every mask the method needed.
Writes bench/results/search_ablation.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from torch.utils.data import DataLoader  # noqa: E402
from transformers import default_data_collator  # noqa: E402

from optimum_shapley import LayerMask, ShapleyPruningConfig, load_causal_lm  # noqa: E402
from optimum_shapley.criteria import select_layers  # noqa: E402
from optimum_shapley.data import build_calibration_dataset  # noqa: E402
from optimum_shapley.evaluation import (  # noqa: E402
    MaskEvaluationCache,
    MaskEvaluator,
    model_fingerprint,
    perplexity_of_windows,
    read_raw_lines,
    run_fingerprint,
    text_windows,
)
from optimum_shapley.surgery import num_decoder_layers  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--remove", type=int, default=6)
    parser.add_argument("--num-masks", type=int, default=128)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--output", default=os.path.join(ROOT, "bench", "results", "search_ablation.json"))
    args = parser.parse_args()

    model, tokenizer = load_causal_lm(args.model)
    model.eval()
    depth = num_decoder_layers(model)
    c4 = os.path.join(args.data_dir, "calibration", "c4_demo.json")
    calibration = build_calibration_dataset(tokenizer, c4, num_samples=args.num_samples, seq_length=128, seed=0)
    lines = read_raw_lines(os.path.join(args.data_dir, "wikitext-2-raw", "wiki.test.raw"))
    windows = text_windows(tokenizer, lines, 128)[: args.eval_windows]
    cache_dir = os.path.join(os.path.dirname(args.output), "search-ablation-cache")
    shutil.rmtree(cache_dir, ignore_errors=True)
    cache = MaskEvaluationCache(cache_dir, run_fingerprint(model_fingerprint(model), calibration.fingerprint()))

    rows = []
    for rounds in (0, 4):
        evaluator = MaskEvaluator(
            model,
            lambda: DataLoader(calibration, batch_size=8, collate_fn=default_data_collator),
            cache=cache,
            show_progress=False,
        )
        config = ShapleyPruningConfig(
            num_layers_to_remove=args.remove,
            num_masks=args.num_masks,
            num_samples=args.num_samples,
            seed=0,
            search_rounds=rounds,
        )
        start = time.perf_counter()
        choice = select_layers("shapley", evaluator, args.remove, config=config)
        kept = [i for i in range(depth) if i not in choice.removed_layers]
        with LayerMask(model, kept):
            wikitext = perplexity_of_windows(model, windows)
        fit = choice.evidence.surrogate_fit
        rows.append(
            {
                "search_rounds": rounds,
                "removed_layers": choice.removed_layers,
                "evaluations": choice.num_model_evaluations,
                "calibration_ppl": evaluator(kept).perplexity,
                "wikitext2_ppl": wikitext,
                "surrogate_validation_r2": fit.validation_r2,
                "seconds": time.perf_counter() - start,
            }
        )
    print(
        f"{args.model}, remove {args.remove} of {depth}, {args.num_masks} masks, {args.eval_windows} WikiText-2 windows"
    )
    print("| search rounds | evaluations | surrogate R^2 | calibration ppl | WikiText-2 ppl | removed layers |")
    print("|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['search_rounds']} | {r['evaluations']} | {r['surrogate_validation_r2']:.2f} | "
            f"{r['calibration_ppl']:.2f} | {r['wikitext2_ppl']:.2f} | {', '.join(map(str, r['removed_layers']))} |"
        )
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump({"args": vars(args), "rows": rows}, f, indent=2)
    shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
