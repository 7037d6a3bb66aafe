"""What does the default run cost? Runs the demo command (SmolLM2-135M, remove 6 of 30, default settings) in a fresh
folder and reports wall time, model evaluations and where the time went.

    python bench/demo_cost.py [--model smollm2-135m] [--remove 6]

Writes bench/results/demo_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--remove", type=int, default=6)
    parser.add_argument("--output", default=os.path.join(ROOT, "bench", "results", "demo_cost.json"))
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "run")
        command = [sys.executable, "-m", "optimum_shapley.cli", "prune", args.model, "--remove", str(args.remove)]
        command += ["--output", out, "--no-progress"]
        start = time.perf_counter()
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        with open(os.path.join(out, "shapley_results.json"), encoding="utf-8") as f:
            result = json.load(f)

    timings = result["timings"]
    rows = [
        ("wall time, whole command (s)", f"{wall:.1f}"),
        ("  of which pruning (s)", f"{timings['total']:.1f}"),
        ("  mask evaluation (s)", f"{timings.get('mask_evaluation', 0.0):.1f}"),
        ("  surrogate training (s)", f"{timings.get('surrogate', 0.0):.2f}"),
        ("  Shapley estimation (s)", f"{timings.get('shapley', 0.0):.2f}"),
        ("  loading, saving, other (s)", f"{wall - timings['total']:.1f}"),
        ("model evaluations", str(result["num_model_evaluations"])),
        ("seconds per evaluation", f"{timings.get('mask_evaluation', 0.0) / max(1, len(result['masks'])):.2f}"),
        ("surrogate held-out R^2", f"{result['surrogate_fit']['validation_r2']:.3f}"),
        ("removed layers", ", ".join(map(str, result["removed_layers"]))),
        (
            "calibration perplexity",
            f"{result['calibration_ppl_before']:.2f} -> {result['calibration_ppl_after']:.2f}",
        ),
    ]
    print(f"default run: {args.model}, remove {args.remove}, {os.cpu_count()} CPUs")
    for label, value in rows:
        print(f"{label:<32} {value}")
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        meta = {"model": args.model, "remove": args.remove, "cpus": os.cpu_count(), "machine": platform.machine()}
        json.dump({"meta": meta, "wall_s": wall, "result_timings": timings, "rows": dict(rows)}, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
