"""What pruning buys on this machine: prefill and KV-cached decode speed, parameters and cache, dense vs pruned.

    python bench/throughput.py            # SmolLM2-135M (remove 6, 10 of 30) and Gemma-3-270M (remove 4, 6 of 18)
    python bench/throughput.py --quick    # SmolLM2-135M remove 6, one repeat
    python bench/throughput.py --dtype bfloat16 --device cuda   # the same on a GPU

Each removed set is the default's in docs/benchmarks.md (``bench/healing.py``'s ``DEFAULT_REMOVED``); the number of
layers, not which ones, decides the speed. ``throughput.measure_speed`` (what every ``prune`` reports in its summary
and card): a seeded random ``--prompt-tokens`` prompt, one forward pass that fills the KV cache (prefill), then
``--decode-tokens`` single-token steps through the cache (decode), medians of ``--repeats`` after a warm-up; batch 1.
Times on a shared 2-core CPU are noisy: read the ratios. Writes bench/results/throughput.json and throughput.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from common import report_markdown  # noqa: E402
from healing import DEFAULT_REMOVED  # noqa: E402

from optimum_shapley import drop_layers, load_causal_lm  # noqa: E402
from optimum_shapley.throughput import measure_speed, speed_comparison  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="SmolLM2 remove 6 only, one repeat")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "bench", "results"))
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cells = [("smollm2-135m", 6)] if args.quick else sorted(DEFAULT_REMOVED)
    repeats = 1 if args.quick else args.repeats
    os.makedirs(args.output_dir, exist_ok=True)
    start = time.perf_counter()
    rows, loaded = [], {}
    for alias, removed in cells:
        if alias not in loaded:
            model, _ = load_causal_lm(alias, dtype=getattr(torch, args.dtype))
            loaded = {alias: model.to(args.device).eval()}
        dense_model = loaded[alias]
        options = dict(prompt_tokens=args.prompt_tokens, decode_tokens=args.decode_tokens, repeats=repeats)
        dense = measure_speed(dense_model, **options)
        pruned_model = copy.deepcopy(dense_model)
        drop_layers(pruned_model, DEFAULT_REMOVED[(alias, removed)])
        pruned = measure_speed(pruned_model, **options)
        del pruned_model
        row = {"model": alias, "removed": removed, **speed_comparison(dense, pruned)}
        rows.append(row)
        print(
            f"{alias} -{removed}: prefill {row['prefill_speedup']:.2f}x, decode {row['decode_speedup']:.2f}x, "
            f"parameters {row['parameter_ratio']:.3f}x",
            flush=True,
        )
    header = (
        "| model | removed | prefill tok/s dense | pruned | x | decode tok/s dense | pruned | x | parameters (M) dense "
        "| pruned | cache MB dense | pruned |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        d, p = row["dense"], row["pruned"]
        lines.append(
            f"| {row['model']} | {row['removed']} | {d['prefill_tokens_per_s']:,.0f} | {p['prefill_tokens_per_s']:,.0f} "
            f"| {row['prefill_speedup']:.2f} | {d['decode_tokens_per_s']:,.1f} | {p['decode_tokens_per_s']:,.1f} | "
            f"{row['decode_speedup']:.2f} | {d['parameters'] / 1e6:.1f} | {p['parameters'] / 1e6:.1f} | "
            f"{d['kv_cache_bytes'] / 2**20:.1f} | {p['kv_cache_bytes'] / 2**20:.1f} |"
        )
    note = (
        f"{args.device}, {args.dtype}, batch 1, {args.prompt_tokens}-token prompt, {args.decode_tokens} decoded "
        f"tokens, median of {repeats}; {platform.processor() or platform.machine()}, torch {torch.__version__}; "
        f"median decode speed-up {statistics.median(r['decode_speedup'] for r in rows):.2f}x; whole bench "
        f"{(time.perf_counter() - start) / 60:.1f} min."
    )
    report_markdown(args.output_dir, "throughput", "\n".join(lines), note)
    with open(os.path.join(args.output_dir, "throughput.json"), "w", encoding="utf-8") as f:
        json.dump({"rows": rows, "args": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
