"""What pruning buys (issue #17): prefill and KV-cached decode speed, parameters and KV cache, dense vs pruned,
measured for every claimed architecture and reported in the result, the summary and the card."""

from __future__ import annotations

import warnings

import pytest
from tiny_models import ARCHITECTURES, DEPTH, tiny_model, tiny_tokenizer

from optimum_shapley import ShapleyLayerPruner, ShapleyPruningConfig, drop_layers
from optimum_shapley.pruner import pruning_arguments
from optimum_shapley.throughput import measure_speed, speed_comparison, speed_summary


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_speed_is_measured_and_the_pruned_model_is_smaller(model_type):
    model = tiny_model(model_type)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the KV cache goes by the name this Transformers wants
        dense = measure_speed(model, prompt_tokens=16, decode_tokens=4, repeats=1)
    assert dense.prefill_tokens_per_s > 0 and dense.decode_tokens_per_s > 0
    assert dense.parameters == sum(p.numel() for p in model.parameters())
    assert dense.kv_cache_bytes > 0  # the cache after 16 + 4 tokens holds every layer's keys and values
    drop_layers(model, [1, 2])
    pruned = measure_speed(model, prompt_tokens=16, decode_tokens=4, repeats=1)
    assert pruned.parameters < dense.parameters
    assert pruned.kv_cache_bytes < dense.kv_cache_bytes  # two layers fewer in the cache
    comparison = speed_comparison(dense, pruned)
    assert comparison["parameter_ratio"] == pytest.approx(pruned.parameters / dense.parameters)
    assert comparison["kv_cache_ratio"] < 1


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="at least 1"):
        measure_speed(tiny_model("llama"), decode_tokens=0)


def test_the_run_reports_what_pruning_bought(tmp_path):
    pruner = ShapleyLayerPruner(
        model=tiny_model("llama"),
        args=pruning_arguments(str(tmp_path / "run"), disable_tqdm=True),
        pruning_config=ShapleyPruningConfig(num_layers_to_remove=2, method="angular", num_samples=4, seq_length=16),
        processing_class=tiny_tokenizer(),
    )
    result = pruner.prune()
    speed = result.speed
    assert speed["dense"]["parameters"] > speed["pruned"]["parameters"]
    assert speed["pruned"]["parameters"] == sum(p.numel() for p in pruner.model.parameters())
    rows = dict(result.summary_rows())
    assert "prefill (dense -> pruned)" in rows and "decode, KV-cached" in rows and "parameters" in rows
    assert f"{speed['decode_speedup']:.2f}x" in rows["decode, KV-cached"]
    assert "peak CUDA memory" not in rows  # measured on CPU: no allocator peak is claimed
    out = pruner.save_pretrained(tmp_path / "out")
    with open(f"{out}/README.md", encoding="utf-8") as f:
        card = f.read()
    assert "decode, KV-cached" in card and f"{speed['decode_speedup']:.2f}x" in card


def test_speed_can_be_turned_off_and_a_failure_is_reported_not_fatal(tmp_path, monkeypatch):
    def run(**overrides):
        pruner = ShapleyLayerPruner(
            model=tiny_model("llama"),
            args=pruning_arguments(str(tmp_path / "run"), disable_tqdm=True),
            pruning_config=ShapleyPruningConfig(
                num_layers_to_remove=2, method="angular", num_samples=4, seq_length=16, **overrides
            ),
            processing_class=tiny_tokenizer(),
        )
        return pruner.prune(evaluate_calibration=False)

    off = run(measure_speed=False)
    assert off.speed == {} and not any(label.startswith("prefill") for label, _ in off.summary_rows())

    import optimum_shapley.pruner as pruner_module

    def broken(model, **kwargs):
        raise RuntimeError("this model takes no cache")

    monkeypatch.setattr(pruner_module, "measure_speed", broken)
    failed = run()
    assert failed.removed_layers and failed.num_removed == 2
    assert dict(failed.summary_rows())["speed"] == "not measured (RuntimeError: this model takes no cache)"
    assert speed_summary({}) == []
    assert len(failed.kept_layers) == DEPTH - 2
