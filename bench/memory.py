"""Peak memory of a default prune against just loading the model and running one forward, and against the published
zero-and-restore way of evaluating masks.

    python bench/memory.py [--model smollm2-135m] [--remove 6] [--num-masks 32] [--zero-masks 6]

Every measurement runs in a fresh Python process, which reports its peak resident set size (``VmHWM`` in
``/proc/self/status``, the kernel's high-water mark; ``ru_maxrss`` is reported beside it):

* ``load + one forward`` (the reference): ``load_causal_lm``, the default calibration blocks (embedded text,
  10 x 128 tokens, seed 42), then one forward pass with the evaluation loss (``token_nll``) on one batch of 8 blocks,
  the batch a mask evaluation runs.
* ``default prune``: ``optimum-shapley prune MODEL --remove 6 --output TMP --num_masks N`` through the CLI's ``main``
  (the default code path: stratified masks through ``LayerMask``, surrogate, Shapley values, the surrogate-guided
  search, calibration report, saving). Only ``--num_masks`` is lowered from 128 to keep the run short; the number
  of masks changes the time, not what is held in memory (every evaluation reuses the one model).
* ``zero-and-restore``: the published implementation's way of evaluating a mask, re-implemented: a CPU copy of the
  decoder layers' weights is taken for each mask, the removed layers' weights are zeroed in place, the full model
  runs over the calibration blocks, and the weights are restored from the copy. ``--zero-masks`` masks from the
  same strata as the prune.

Each process also resets the high-water mark right after loading (``echo 5 > /proc/self/clear_refs``), so the table
shows the peak of the work after loading on its own as well. Target: default prune / reference <= 1.5.
Writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

BATCH = 8  # the CLI's --batch-size default: blocks per forward pass of a mask evaluation
SEED = 42  # ShapleyPruningConfig.seed default, which also samples the calibration blocks


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE).group(1))


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


class Probe:
    """Peak after loading (then reset), peak of the work since."""

    def __init__(self):
        self.start = time.perf_counter()
        self.load_peak_kib = None

    def loaded(self) -> None:
        self.load_peak_kib = _status_kib("VmHWM")
        self.rss_after_load_kib = _status_kib("VmRSS")
        _reset_peak()

    def report(self, **extra) -> None:
        work_peak = _status_kib("VmHWM")
        record = {
            "peak_mib": max(self.load_peak_kib, work_peak) / 1024,
            "load_peak_mib": self.load_peak_kib / 1024,
            "rss_after_load_mib": self.rss_after_load_kib / 1024,
            "work_peak_mib": work_peak / 1024,
            "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "seconds": time.perf_counter() - self.start,
            **extra,
        }
        print("MEMORY " + json.dumps(record))


def _load(model_name: str, probe: Probe):
    import torch

    from optimum_shapley import load_causal_lm
    from optimum_shapley.data import build_calibration_dataset

    torch.manual_seed(0)
    model, tokenizer = load_causal_lm(model_name, dtype=torch.float32)
    model.eval()
    probe.loaded()
    calibration = build_calibration_dataset(tokenizer, None, num_samples=10, seq_length=128, seed=SEED)
    weights_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return model, calibration, weights_mib


def measure_reference(args) -> None:
    import torch

    from optimum_shapley.evaluation import token_nll

    probe = Probe()
    model, calibration, weights_mib = _load(args.model, probe)
    batch = {k: torch.stack([calibration[i][k] for i in range(BATCH)]) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        token_nll(model, batch)
    probe.report(weights_mib=weights_mib)


def measure_prune(args) -> None:
    import optimum_shapley.hub  # noqa: F401  (every module the run uses is imported now, not an hour later)
    import optimum_shapley.loading as loading
    import optimum_shapley.pruner  # noqa: F401
    from optimum_shapley.cli import main

    probe = Probe()
    load = loading.load_causal_lm

    def load_and_mark(*a, **k):  # the CLI imports load_causal_lm from the module at call time
        result = load(*a, **k)
        probe.loaded()
        return result

    loading.load_causal_lm = load_and_mark
    with tempfile.TemporaryDirectory() as folder:
        output = os.path.join(folder, "pruned")
        command = ["prune", args.model, "--remove", str(args.remove), "--output", output]
        command += ["--num_masks", str(args.num_masks), "--no-progress"]
        code = main(command)
        if code != 0:
            raise SystemExit(f"prune failed with exit code {code}")
        with open(os.path.join(output, "shapley_results.json"), encoding="utf-8") as f:
            evaluations = json.load(f)["num_model_evaluations"]
    probe.report(model_evaluations=evaluations, command=" ".join(["optimum-shapley", *command]))


def measure_zero_and_restore(args) -> None:
    import torch
    from torch.utils.data import DataLoader
    from transformers import default_data_collator

    from optimum_shapley.architectures import find_decoder_layers
    from optimum_shapley.config import default_strata
    from optimum_shapley.evaluation import evaluate_batches
    from optimum_shapley.sampling import sample_masks

    probe = Probe()
    model, calibration, weights_mib = _load(args.model, probe)
    blocks = getattr(*find_decoder_layers(model))
    depth = len(blocks)
    masks = sample_masks(depth, default_strata(depth, args.remove), args.zero_masks + 1, SEED)[1:]
    loader = DataLoader(calibration, batch_size=BATCH, collate_fn=default_data_collator)
    with torch.no_grad():
        for mask in masks:
            saved = {  # the published code's weight copy, taken for every mask
                (i, name): param.detach().to("cpu", copy=True)
                for i, block in enumerate(blocks)
                for name, param in block.named_parameters()
            }
            for i in (i for i, keep in enumerate(mask) if not keep):
                for param in blocks[i].parameters():
                    param.zero_()
            evaluate_batches(model, loader)
            for i, block in enumerate(blocks):
                for name, param in block.named_parameters():
                    param.copy_(saved[(i, name)])
            del saved
    probe.report(weights_mib=weights_mib, masks=len(masks))


MEASUREMENTS = {
    "reference": ("load + one forward", measure_reference),
    "prune": ("default prune (LayerMask)", measure_prune),
    "zero-and-restore": ("zero-and-restore (published)", measure_zero_and_restore),
}


def _run_fresh(name: str, args) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--measure", name, "--model", args.model]
    command += ["--remove", str(args.remove), "--num-masks", str(args.num_masks), "--zero-masks", str(args.zero_masks)]
    run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in run.stdout.splitlines() if line.startswith("MEMORY ")]
    if run.returncode != 0 or not lines:
        raise SystemExit(f"{name} failed ({run.returncode}):\n{run.stderr[-3000:]}")
    return json.loads(lines[-1][len("MEMORY ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--remove", type=int, default=6)
    parser.add_argument("--num-masks", type=int, default=32, help="masks of the prune (CLI default 128)")
    parser.add_argument("--zero-masks", type=int, default=6, help="masks evaluated by zero-and-restore")
    parser.add_argument("--measure", choices=sorted(MEASUREMENTS), help=argparse.SUPPRESS)
    parser.add_argument("--output", default=os.path.join(ROOT, "bench", "results", "memory.json"))
    args = parser.parse_args()
    if args.measure:
        MEASUREMENTS[args.measure][1](args)
        return

    rows = {}
    for name, (label, _) in MEASUREMENTS.items():
        print(f"measuring {label} in a fresh process ...", file=sys.stderr, flush=True)
        rows[name] = {"label": label, **_run_fresh(name, args)}
    reference = rows["reference"]
    for row in rows.values():
        row["ratio_to_reference"] = row["peak_mib"] / reference["peak_mib"]
        row["work_ratio_to_reference"] = row["work_peak_mib"] / reference["work_peak_mib"]

    print(
        f"{args.model}: fp32 weights {reference['weights_mib']:.0f} MiB; peak resident memory (VmHWM) per fresh process"
    )
    header = (
        f"{'run':<30} | {'peak MiB':>8} | {'load peak':>9} | {'after-load peak':>15} | {'peak / ref':>10} | "
        f"{'after-load / ref':>16} | {'s':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in rows.values():
        print(
            f"{row['label']:<30} | {row['peak_mib']:>8.0f} | {row['load_peak_mib']:>9.0f} | {row['work_peak_mib']:>15.0f}"
            f" | {row['ratio_to_reference']:>10.2f} | {row['work_ratio_to_reference']:>16.2f} | {row['seconds']:>6.0f}"
        )
    ratio = rows["prune"]["ratio_to_reference"]
    print(f"target (default prune / load + one forward <= 1.5): {ratio:.2f}, {'met' if ratio <= 1.5 else 'NOT met'}")
    print(f"prune: {rows['prune']['model_evaluations']} model evaluations ({rows['prune']['command']})")

    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    import torch

    meta = {"model": args.model, "remove": args.remove, "num_masks": args.num_masks, "zero_masks": args.zero_masks}
    meta.update(batch=BATCH, calibration="embedded, 10 x 128 tokens, seed 42", torch=torch.__version__)
    meta.update(machine=platform.machine(), cpus=os.cpu_count(), target_met=ratio <= 1.5)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
        f.write("\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
