"""Running the optimum-shapley CLI in child processes (plain, under `accelerate launch`, or patched to die) and
reading what it left on disk: shared by the scale, resume and bad-input tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from tiny_models import tiny_model, tiny_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# small budgets: every criterion step still runs (masks, surrogate, search, save), in about a second of compute
FAST = ["--num_samples", "4", "--seq_length", "16", "--num_masks", "20", "--mc_samples", "1000"]
FAST += ["--surrogate_epochs", "30", "--no-progress"]


def cli_env(**overrides: str | None) -> dict[str, str]:
    """The environment of a child run: offline, one thread (bit-identical numbers across runs and processes)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    env.update({"TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"})
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "optimum_shapley.cli", *args]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_command(*args), capture_output=True, text=True, env=env or cli_env(), timeout=timeout, cwd=REPO
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_command(num_processes: int, *args: str) -> list[str]:
    """``accelerate launch`` of the CLI on CPU processes talking over gloo.

    accelerate 1.15's ``--cpu`` flag routes to its simple launcher, which starts more than one process only through
    ``mpirun`` (an MPI install); ``--multi_gpu`` selects its torchrun launcher, and ``ACCELERATE_USE_CPU=1`` (set by
    ``cli_env`` callers) keeps every process on the CPU with the gloo backend. On GPUs the same command without
    ``ACCELERATE_USE_CPU`` uses one GPU per process."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "optimum_shapley.cli",
        *args,
    ]


def save_tiny_model(path: str, model_type: str = "llama", seed: int = 0, **overrides) -> str:
    tiny_model(model_type, seed=seed, **overrides).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


def results(folder: str) -> dict:
    with open(os.path.join(folder, "shapley_results.json"), encoding="utf-8") as f:
        return json.load(f)


def read_bytes(folder: str, name: str) -> bytes:
    with open(os.path.join(folder, name), "rb") as f:
        return f.read()


def cached_masks(path: str) -> list[str]:
    """``fingerprint:mask`` of the readable records of a cache file, in file order (a cut-off last line is skipped;
    the calibration and verification sets' records share the file under their own fingerprints)."""
    masks = []
    if not os.path.exists(path):
        return masks
    with open(path, "rb") as f:
        for raw in f:
            try:
                record = json.loads(raw)
                masks.append(f"{record['fingerprint'][:12]}:{record['mask']}")
            except (ValueError, KeyError):
                continue
    return masks


def tree(root: str) -> dict[str, tuple[int, int]]:
    """Every path under ``root``, with size and modification time for files: compare two to prove nothing was
    created, removed or written (a folder's own mtime is left out: the CLI's writability probe creates and removes
    an empty folder, which changes nothing but that)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root) + "/"] = (0, 0)
        for name in files:
            stat = os.lstat(os.path.join(folder, name))
            found[os.path.relpath(os.path.join(folder, name), root)] = (stat.st_size, stat.st_mtime_ns)
    return found
