"""Is a set's WikiText-2 result its calibration objective's verdict, or the evaluation text's? Held-out C4 against
WikiText-2 for given removed sets.

    python bench/heldout_check.py                       # Gemma-3-270M: the remove-4 and remove-6 sets of the quality bench
    python bench/heldout_check.py --model smollm2-135m --sets "a=13,14,15,16,17,18;b=5,13,14,16,17,18"

For each set: the mean per-token KL to the dense model and the perplexity on ``--heldout`` blocks of 128 tokens of
calibration/c4_demo.json drawn with seed 7 and disjoint from the quality bench's calibration (10 blocks, seed 42)
and verification (40 blocks, seed 43) blocks (the library's ``MaskEvaluator`` with ``objective="kl"``, as the search
scores sets), and WikiText-2 perplexity on the quality bench's first 64 windows and on the first ``--windows``.
Writes bench/results/heldout_check.json and .md (rows also as they finish, in heldout_check.partial.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from common import DEFAULT_DATA_DIR, data_paths, load_bench_model, report_markdown  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import default_data_collator  # noqa: E402

from optimum_shapley import LayerMask  # noqa: E402
from optimum_shapley.data import CalibrationDataset, build_calibration_dataset  # noqa: E402
from optimum_shapley.evaluation import MaskEvaluator, perplexity_of_windows  # noqa: E402

GEMMA_SETS = (
    "rm4 shapley=7,8,9,14;rm4 evopress=8,9,14,15;rm4 shapley one-shot=7,8,9,15;rm4 sleb=4,7,8,9;"
    "rm6 shapley=7,8,9,14,15,17;rm6 evopress=6,7,8,9,14,15;rm6 sleb=4,6,7,8,9,16"
)
"""The Gemma-3 rows of the quality bench in docs/benchmarks.md (sessions 7-9)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--sets", default=GEMMA_SETS, help="'NAME=L1,L2,...;NAME=...' (default: Gemma-3's)")
    parser.add_argument("--heldout", type=int, default=120, help="held-out C4 blocks of 128 tokens")
    parser.add_argument("--windows", type=int, default=192, help="WikiText-2 windows for the second column")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args()


def heldout_blocks(tokenizer, c4: str, count: int) -> CalibrationDataset:
    """``count`` blocks (seed 7) none of which is a calibration (seed 42 x 10) or verification (seed 43 x 40) block."""
    seen = set()
    for seed, n in ((42, 10), (43, 40)):
        for row in build_calibration_dataset(tokenizer, c4, num_samples=n, seq_length=128, seed=seed).input_ids:
            seen.add(tuple(row.tolist()))
    drawn = build_calibration_dataset(tokenizer, c4, num_samples=count + 10, seq_length=128, seed=7).input_ids
    kept = [row for row in drawn if tuple(row.tolist()) not in seen][:count]
    if len(kept) < count:
        sys.exit(f"only {len(kept)} of {count + 10} drawn blocks are outside the calibration and verification sets")
    return CalibrationDataset(torch.stack(kept))


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    _, c4 = data_paths(args.data_dir)
    start = time.perf_counter()
    bench = load_bench_model(args.model, args.data_dir, 10, args.windows, batch_size=4)
    held = heldout_blocks(bench.tokenizer, c4, args.heldout)
    evaluator = MaskEvaluator(
        bench.model,
        lambda: DataLoader(held, batch_size=4, collate_fn=default_data_collator),
        show_progress=False,
        objective="kl",
    )
    evaluator.references()  # the dense model's distributions on the held-out blocks
    rows = []
    for item in args.sets.split(";"):
        name, layers = item.split("=")
        removed = [int(x) for x in layers.split(",")]
        kept = [i for i in range(bench.depth) if i not in removed]
        evaluation = evaluator(kept)
        with LayerMask(bench.model, kept):
            first64 = perplexity_of_windows(bench.model, bench.windows[:64], bench.batch_size)
        row = {
            "set": name.strip(),
            "removed_layers": removed,
            "heldout_kl": evaluation.mean_kl,
            "heldout_ppl": evaluation.perplexity,
            "wikitext2_ppl_64": first64,
            f"wikitext2_ppl_{args.windows}": bench.wikitext_ppl(removed),
        }
        rows.append(row)
        with open(os.path.join(args.output_dir, "heldout_check.partial.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    with open(os.path.join(args.output_dir, "heldout_check.json"), "w", encoding="utf-8") as f:
        json.dump({"model": args.model, "heldout_blocks": len(held), "rows": rows}, f, indent=2)
    lines = [
        f"| set | removed layers | held-out C4 KL | held-out C4 ppl | WikiText-2 ppl (64) | ({args.windows}) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['set']} | {', '.join(map(str, row['removed_layers']))} | {row['heldout_kl']:.4f} | "
            f"{row['heldout_ppl']:.2f} | {row['wikitext2_ppl_64']:.2f} | {row[f'wikitext2_ppl_{args.windows}']:.2f} |"
        )
    note = (
        f"{args.model}: {len(held)} held-out blocks x 128 tokens of c4_demo.json; WikiText-2 windows as the quality "
        f"bench's. {time.perf_counter() - start:.0f} s."
    )
    report_markdown(args.output_dir, "heldout_check", "\n".join(lines), note)


if __name__ == "__main__":
    main()
