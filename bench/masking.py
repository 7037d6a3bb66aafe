"""How fast is evaluating a layer mask? LayerMask vs a physically pruned copy vs zeroing weights (published method).

    python bench/masking.py [--model smollm2-135m] [--batch 10] [--seq-length 128] [--repeats 7]

For each keep count, one seeded random keep set is timed three ways, interleaved so that machine noise hits all
three alike; the table reports medians and the ratios the surgery issue targets:
(a) LayerMask / (b) pruned copy <= 1.05 and (c) zero-and-restore / (a) LayerMask >= 1.25.
Writes bench/results/masking.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from optimum_shapley import LayerMask, drop_layers, load_causal_lm  # noqa: E402
from optimum_shapley.architectures import find_decoder_layers  # noqa: E402


def forward(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits


def time_layer_mask(model, input_ids, keep):
    start = time.perf_counter()
    with LayerMask(model, keep):
        forward(model, input_ids)
    return time.perf_counter() - start


def time_pruned_copy(pruned, input_ids):
    start = time.perf_counter()
    forward(pruned, input_ids)
    return time.perf_counter() - start


def time_zero_and_restore(model, input_ids, removed):
    """The published implementation: clone the removed layers' weights, zero them, run the full model, restore."""
    blocks = getattr(*find_decoder_layers(model))
    start = time.perf_counter()
    with torch.no_grad():
        saved = {}
        for i in removed:
            for name, param in blocks[i].named_parameters():
                saved[(i, name)] = param.detach().clone()
                param.zero_()
        forward(model, input_ids)
        for i in removed:
            for name, param in blocks[i].named_parameters():
                param.copy_(saved[(i, name)])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--keep", default="27,24,21,18", help="comma-separated kept-layer counts")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "masking.json"))
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model, _ = load_causal_lm(args.model)
    model.eval()
    depth = len(getattr(*find_decoder_layers(model)))
    vocab = model.config.get_text_config(decoder=True).vocab_size
    input_ids = torch.randint(0, vocab, (args.batch, args.seq_length))
    rng = random.Random(args.seed)

    forward(model, input_ids)  # warm-up
    rows = []
    for kept_count in (int(k) for k in args.keep.split(",")):
        keep = sorted(rng.sample(range(depth), kept_count))
        removed = [i for i in range(depth) if i not in keep]
        pruned = drop_layers(copy.deepcopy(model), removed)
        with LayerMask(model, keep):
            torch.testing.assert_close(forward(model, input_ids), forward(pruned, input_ids), rtol=1e-5, atol=1e-4)
        times = {"layer_mask": [], "pruned_copy": [], "zero_weights": []}
        for _ in range(args.repeats):
            times["layer_mask"].append(time_layer_mask(model, input_ids, keep))
            times["pruned_copy"].append(time_pruned_copy(pruned, input_ids))
            times["zero_weights"].append(time_zero_and_restore(model, input_ids, removed))
        medians = {k: statistics.median(v) for k, v in times.items()}
        rows.append(
            {
                "kept": kept_count,
                "keep": keep,
                **{f"{k}_s": v for k, v in medians.items()},
                "mask_over_pruned": medians["layer_mask"] / medians["pruned_copy"],
                "zero_over_mask": medians["zero_weights"] / medians["layer_mask"],
                "samples_s": times,
            }
        )
        del pruned

    header = (
        f"{'kept':>4} | {'(a) LayerMask s':>15} | {'(b) pruned s':>12} | {'(c) zero s':>10} | {'a/b':>5} | {'c/a':>5}"
    )
    print(f"{args.model}: {depth} layers, batch {args.batch} x {args.seq_length} tokens, median of {args.repeats}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['kept']:>4} | {r['layer_mask_s']:>15.3f} | {r['pruned_copy_s']:>12.3f} | {r['zero_weights_s']:>10.3f}"
            f" | {r['mask_over_pruned']:>5.2f} | {r['zero_over_mask']:>5.2f}"
        )
    ok = all(r["mask_over_pruned"] <= 1.05 and r["zero_over_mask"] >= 1.25 for r in rows)
    print(f"targets (a/b <= 1.05 and c/a >= 1.25 at every keep count): {'met' if ok else 'NOT met'}")

    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        meta = {"model": args.model, "depth": depth, "batch": args.batch, "seq_length": args.seq_length}
        meta.update(repeats=args.repeats, torch=torch.__version__, threads=torch.get_num_threads())
        meta.update(machine=platform.machine(), cpus=os.cpu_count(), targets_met=ok)
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
