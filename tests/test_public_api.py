"""The package's public API is a few verbs and types (issue #15); the rest stays importable from its module."""

from __future__ import annotations

import importlib

import optimum_shapley

PUBLIC = {
    "ShapleyPruningConfig",
    "ShapleyLayerPruner",
    "prune_layers",
    "PruningResult",
    "ShapleySurrogate",
    "LayerMask",
    "drop_layers",
    "register_criterion",
    "load_causal_lm",
    "perplexity",
    "zero_shot",
    "__version__",
}

MOVED = {
    "optimum_shapley.data": ["CalibrationDataset", "build_calibration_dataset", "load_texts", "CalibrationDataError"],
    "optimum_shapley.architectures": ["find_decoder_layers", "UnsupportedArchitectureError"],
    "optimum_shapley.criteria": ["METHODS", "select_layers", "CriterionResult"],
    "optimum_shapley.evaluation": ["MaskEvaluator"],
    "optimum_shapley.healing": ["heal_removed_layers", "HealingNotExactError"],
    "optimum_shapley.surgery": ["num_decoder_layers", "LayerSelectionError", "UnsafeLayerRemovalError"],
    "optimum_shapley.surrogate": ["train_surrogate", "SurrogateFit"],
    "optimum_shapley.game_values": ["estimate_contributions", "ShapleyEstimate"],
    "optimum_shapley.registry": ["CRITERIA", "BUILTIN_METHODS"],
    "optimum_shapley.run": ["PruneOutcome"],
}


def test_all_is_the_short_public_api_and_every_name_resolves():
    assert set(optimum_shapley.__all__) == PUBLIC
    for name in optimum_shapley.__all__:
        assert getattr(optimum_shapley, name) is not None


def test_the_rest_is_importable_from_its_module():
    for module, names in MOVED.items():
        loaded = importlib.import_module(module)
        for name in names:
            assert hasattr(loaded, name), f"{module}.{name}"


def test_the_builtin_methods_are_registered_on_import():
    from optimum_shapley.registry import CRITERIA

    assert "shapley" in CRITERIA and "evopress" in CRITERIA and "sleb" in CRITERIA
