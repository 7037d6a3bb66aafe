"""What LoRA recovery wins back: SmolLM2-135M dense, pruned (6 of 30 layers), and pruned + LoRA.

    python bench/recovery.py --threads 1   # the full bench (under 60 min on 2 shared CPU cores; docs/benchmarks.md)
    python bench/recovery.py --quick       # 20 training steps, 16 windows, 20 items per task

Pruning: the default method and settings, ``ShapleyLayerPruner`` with ``ShapleyPruningConfig(num_layers_to_remove=6)``
and its embedded calibration text (the stdlib's English documentation, as ``make demo``). Its mask-evaluation cache
lives in ``bench/results/recovery-cache``, so a rerun spends no time on masks already evaluated.
Recovery: ``pruner.recover`` (PEFT LoRA r=8, alpha=16, dropout 0.05 on every linear projection but the head, merged)
on ``calibration/c4_demo.json``: disjoint from the pruning calibration text by construction, and from WikiText-2.
Evaluation, identical for the three models: WikiText-2 raw test perplexity on a fixed prefix of non-overlapping
128-token windows, and zero-shot accuracy (lm-eval conventions, acc and acc_norm with standard errors) on the first
``--limit`` items of piqa, arc_easy and hellaswag.
Writes bench/results/recovery.json and bench/results/recovery.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from common import report_markdown  # noqa: E402
from transformers import TrainingArguments  # noqa: E402

from optimum_shapley import ShapleyLayerPruner, ShapleyPruningConfig, load_causal_lm  # noqa: E402
from optimum_shapley.evaluation import perplexity, zero_shot  # noqa: E402

TASKS = ["piqa", "arc_easy", "hellaswag"]
MODEL = "smollm2-135m"
REMOVE = 6


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, windows and items")
    parser.add_argument("--steps", type=int, default=None, help="LoRA training steps (default 200; quick 20)")
    parser.add_argument("--batch-size", type=int, default=4, help="training blocks of 128 tokens per step")
    parser.add_argument("--lr", type=float, default=2e-4, help="LoRA learning rate")
    parser.add_argument("--limit", type=int, default=None, help="items per zero-shot task (default 100; quick 20)")
    parser.add_argument("--eval-windows", type=int, default=None, help="WikiText-2 windows (default 128; quick 16)")
    parser.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's); on a busy CPU 1 can be faster"
    )
    args = parser.parse_args()
    args.steps = args.steps or (20 if args.quick else 200)
    args.limit = args.limit or (20 if args.quick else 100)
    args.eval_windows = args.eval_windows or (16 if args.quick else 128)
    return args


def evaluate(model, tokenizer, args) -> dict:
    """WikiText-2 perplexity and zero-shot accuracy of ``model`` as it is now, with the seconds each took."""
    start = time.perf_counter()
    ppl = perplexity(
        model, tokenizer, "wikitext2", seq_length=128, max_windows=args.eval_windows, data_dir=args.data_dir
    )
    ppl_seconds = time.perf_counter() - start
    start = time.perf_counter()
    tasks = zero_shot(model, tokenizer, TASKS, data_dir=args.data_dir, limit=args.limit)
    row = {
        "wikitext2_ppl": ppl,
        "tasks": tasks,
        "ppl_seconds": ppl_seconds,
        "zero_shot_seconds": time.perf_counter() - start,
    }
    accs = "  ".join(f"{t} {tasks[t]['acc']:.3f}/{tasks[t]['acc_norm']:.3f}" for t in TASKS)
    print(f"  ppl {ppl:.2f} ({ppl_seconds:.0f} s)  acc/acc_norm {accs} ({row['zero_shot_seconds']:.0f} s)", flush=True)
    return row


def table(rows: list[dict]) -> str:
    header = "| model | layers | WikiText-2 ppl | " + " | ".join(f"{t} acc / acc_norm" for t in TASKS)
    header += " | mean acc_norm |"
    lines = [header, "|---|---:|---:|" + "---:|" * (len(TASKS) + 1)]
    for row in rows:
        cells = []
        for task in TASKS:
            r = row["tasks"][task]
            cells.append(f"{r['acc']:.3f} / {r['acc_norm']:.3f} (± {r['acc_norm_stderr']:.3f})")
        mean = sum(row["tasks"][t]["acc_norm"] for t in TASKS) / len(TASKS)
        lines.append(
            f"| {row['name']} | {row['layers']} | {row['wikitext2_ppl']:.2f} | "
            + " | ".join(cells)
            + f" | {mean:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    c4 = os.path.join(args.data_dir, "calibration", "c4_demo.json")
    if not os.path.exists(c4):
        sys.exit(f"missing {c4}: pass --data-dir pointing at the shared evaluation data")
    os.makedirs(args.output_dir, exist_ok=True)
    cache_dir = os.path.join(args.output_dir, "recovery-cache")
    bench_start = time.perf_counter()
    timings: dict[str, float] = {}

    model, tokenizer = load_causal_lm(MODEL)
    model.eval()
    timings["load"] = time.perf_counter() - bench_start
    rows = []
    print(f"{MODEL}: dense", flush=True)
    rows.append({"name": "dense", "layers": 30, **evaluate(model, tokenizer, args)})

    print(f"pruning {REMOVE} layers (default method; cache {cache_dir}) ...", flush=True)
    start = time.perf_counter()
    pruner = ShapleyLayerPruner(
        model=model,
        args=TrainingArguments(output_dir=cache_dir, report_to="none", disable_tqdm=True),
        pruning_config=ShapleyPruningConfig(num_layers_to_remove=REMOVE),
        processing_class=tokenizer,
    )
    result = pruner.prune(evaluate_calibration=False)
    timings["prune"] = time.perf_counter() - start
    print(
        f"  removed {result.removed_layers}: {result.num_model_evaluations} mask evaluations run, "
        f"{result.num_cached_evaluations} from the cache, {timings['prune']:.0f} s",
        flush=True,
    )
    rows.append({"name": f"pruned ({result.method})", "layers": 30 - REMOVE, **evaluate(pruner.model, tokenizer, args)})

    print(f"recovering: {args.steps} LoRA steps x {args.batch_size} x 128 tokens of {c4} ...", flush=True)
    recovery = pruner.recover(
        c4, max_steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, seq_length=128, show_progress=False
    )
    timings["recover"] = recovery.seconds
    print(
        f"  {recovery.steps} steps in {recovery.seconds:.0f} s ({recovery.steps / recovery.seconds:.3f} steps/s), "
        f"train loss {recovery.train_loss_first:.3f} -> {recovery.train_loss_last:.3f}",
        flush=True,
    )
    rows.append({"name": "pruned + LoRA (merged)", "layers": 30 - REMOVE, **evaluate(pruner.model, tokenizer, args)})
    total = time.perf_counter() - bench_start

    text = table(rows)
    dense, pruned, healed = (row["wikitext2_ppl"] for row in rows)
    note = (
        f"SmolLM2-135M-Instruct (packaged GGUF, de-quantized to float32), layers {result.removed_layers} removed by "
        f"the default method (`{result.method}`, embedded calibration text; {result.selection_evaluations} mask "
        f"evaluations). Recovery: LoRA r=8, alpha=16, dropout 0.05 on all linear projections, {recovery.steps} steps x "
        f"{args.batch_size} blocks x 128 tokens = {recovery.tokens:,} tokens of c4_demo.json (disjoint from the "
        f"pruning calibration text), lr {args.lr:g} (5% warm-up, linear decay), merged; train loss "
        f"{recovery.train_loss_first:.3f} -> {recovery.train_loss_last:.3f}, {recovery.seconds / 60:.1f} min "
        f"({recovery.steps / recovery.seconds:.2f} steps/s). WikiText-2 raw test: first {args.eval_windows} "
        f"non-overlapping 128-token windows; zero-shot: first {args.limit} items per task, acc / acc_norm "
        f"(± stderr of acc_norm). Recovery took perplexity from {pruned:.2f} to {healed:.2f} (dense {dense:.2f}). "
        f"{'--quick; ' if args.quick else ''}Whole bench {total / 60:.1f} min on {os.cpu_count()} CPUs "
        f"(pruning {timings['prune'] / 60:.1f} min with {result.num_cached_evaluations} cached mask evaluations)."
    )
    report_markdown(args.output_dir, "recovery", text, note)
    with open(os.path.join(args.output_dir, "recovery.json"), "w", encoding="utf-8") as f:
        meta = {
            "model": MODEL,
            "removed_layers": result.removed_layers,
            "method": result.method,
            "mask_evaluations": {
                "needed": result.selection_evaluations,
                "run": result.num_model_evaluations,
                "cached": result.num_cached_evaluations,
            },
            "quick": args.quick,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "limit": args.limit,
            "eval_windows": args.eval_windows,
            "seconds": total,
            "timings": timings,
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(),
        }
        json.dump({"meta": meta, "rows": rows, "recovery": result.recovery}, f, indent=2)
    print(f"wrote {args.output_dir}/recovery.{{json,md}}")


if __name__ == "__main__":
    main()
