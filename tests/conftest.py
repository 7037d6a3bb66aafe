"""Shared test set-up: offline Hub, quiet logs, deterministic tiny models."""

import os

# Must be set before huggingface_hub / transformers are imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(scope="session")
def shared_data_dir() -> str:
    """The read-only evaluation data beside the checkout; tests that need it skip where it is absent."""
    path = os.path.abspath(SHARED_DATA)
    if not os.path.isdir(path):
        pytest.skip(f"shared evaluation data not found at {path} (it sits beside the checkout, not in the repo)")
    return path


def _packaged(alias: str):
    from optimum_shapley.loading import PACKAGED_MODELS

    packaged = PACKAGED_MODELS[alias]
    import importlib.util

    if importlib.util.find_spec(packaged.package) is None:
        pytest.skip(f"{alias} needs `{packaged.pip_command}` (make test installs it)")
    from optimum_shapley import load_causal_lm

    model, tokenizer = load_causal_lm(alias)
    return model.eval(), tokenizer


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (30 layers), loaded once per session. Deep-copy before mutating."""
    return _packaged("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3():
    """The real Gemma-3-270M (18 layers, sliding/full layer_types), loaded once per session."""
    return _packaged("gemma3-270m")
