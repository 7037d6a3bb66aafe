"""ShapleyPruningConfig: validation naming the field, derived strata, JSON and HfArgumentParser round trips."""

from __future__ import annotations

import json

import pytest
from transformers import HfArgumentParser

from optimum_shapley import ShapleyPruningConfig
from optimum_shapley.config import CONFIG_NAME, default_strata


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "num_layers_to_remove"),
        ({"num_layers_to_remove": 2, "pruning_ratio": 0.2}, "num_layers_to_remove"),
        ({"num_layers_to_remove": 0}, "num_layers_to_remove"),
        ({"pruning_ratio": 1.0}, "pruning_ratio"),
        ({"pruning_ratio": 0.0}, "pruning_ratio"),
        ({"num_layers_to_remove": 2, "num_samples": 0}, "num_samples"),
        ({"num_layers_to_remove": 2, "seq_length": 1}, "seq_length"),
        ({"num_layers_to_remove": 2, "num_masks": 5}, "num_masks"),
        ({"num_layers_to_remove": 2, "strata": []}, "strata"),
        ({"num_layers_to_remove": 2, "strata": [0, 3]}, "strata"),
        ({"num_layers_to_remove": 2, "utility": "accuracy"}, "utility"),
        ({"num_layers_to_remove": 2, "estimator": "banzhaf"}, "estimator"),
        ({"num_layers_to_remove": 2, "mc_samples": 0}, "mc_samples"),
        ({"num_layers_to_remove": 2, "validation_fraction": 0.3}, "validation_fraction"),
        ({"num_layers_to_remove": 2, "surrogate_learning_rate": 0}, "surrogate_learning_rate"),
        ({"num_layers_to_remove": 2, "surrogate_momentum": 1.0}, "surrogate_momentum"),
        ({"num_layers_to_remove": 2, "surrogate_activation": "swish"}, "surrogate_activation"),
        ({"num_layers_to_remove": 2, "heal": "linear", "heal_relative": "yes"}, "heal_relative"),
        ({"num_layers_to_remove": 2, "heal": "linear", "heal_num_samples": 2.5}, "heal_num_samples"),
        ({"num_layers_to_remove": 2, "heal": "linear", "heal_num_samples": -1}, "heal_num_samples"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"ShapleyPruningConfig.{field}"):
        ShapleyPruningConfig(**kwargs)


def test_target_resolution():
    assert ShapleyPruningConfig(num_layers_to_remove=6).layers_to_remove(30) == 6
    assert ShapleyPruningConfig(pruning_ratio=0.25).layers_to_remove(30) == 8  # round(7.5) -> 8 (banker's: 8)
    assert ShapleyPruningConfig(pruning_ratio=0.2).layers_to_remove(18) == 4
    with pytest.raises(ValueError, match="remove between 1 and 29"):
        ShapleyPruningConfig(num_layers_to_remove=30).layers_to_remove(30)
    with pytest.raises(ValueError, match="remove between 1 and 9"):
        ShapleyPruningConfig(pruning_ratio=0.01).layers_to_remove(10)


def test_default_strata_are_centred_on_the_target():
    assert default_strata(30, 6) == [18, 21, 24, 27, 29]
    assert default_strata(18, 4) == [14 - 4, 14 - 2, 14, 16, 17]
    assert default_strata(6, 2) == [2, 3, 4, 5]
    for depth, remove in [(30, 6), (32, 8), (18, 4), (12, 1), (40, 20)]:
        strata = default_strata(depth, remove)
        assert depth - remove in strata
        assert all(1 <= k <= depth - 1 for k in strata)
    config = ShapleyPruningConfig(num_layers_to_remove=6)
    assert config.resolved_strata(30) == [18, 21, 24, 27, 29]
    assert ShapleyPruningConfig(num_layers_to_remove=6, strata=[25, 20, 25]).resolved_strata(30) == [20, 25]
    with pytest.raises(ValueError, match="outside"):
        ShapleyPruningConfig(num_layers_to_remove=2, strata=[30]).resolved_strata(30)


def test_save_and_load_round_trip(tmp_path):
    config = ShapleyPruningConfig(pruning_ratio=0.2, dataset_name="wikitext", strata=[20, 24], utility="ppl_ratio")
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["pruning_ratio"] == 0.2
    assert ShapleyPruningConfig.from_pretrained(tmp_path) == config
    assert ShapleyPruningConfig.from_pretrained(tmp_path / CONFIG_NAME) == config
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"num_layers_to_remove": 2, "colour": "red"}))
    with pytest.raises(ValueError, match="unknown fields"):
        ShapleyPruningConfig.from_pretrained(tmp_path)


def test_hf_argument_parser():
    parser = HfArgumentParser(ShapleyPruningConfig)
    (config,) = parser.parse_args_into_dataclasses(
        ["--remove", "6", "--dataset", "data.jsonl", "--strata", "20", "24", "--estimator", "paper"]
    )
    assert config == ShapleyPruningConfig(
        num_layers_to_remove=6, dataset_name="data.jsonl", strata=[20, 24], estimator="paper"
    )
    (config,) = parser.parse_dict({"pruning_ratio": 0.3})
    assert config.pruning_ratio == 0.3


def test_parameter_fraction_removes_the_fewest_layers_that_meet_it_whatever_is_chosen():
    # [total, layer sizes...]: keeping 75% of 1000 means removing 250; the smallest layers (100, 100) fall short,
    # so 3 layers, which meet it even if the criterion picks the three smallest
    sizes = [1000, 100, 300, 100, 200]
    assert ShapleyPruningConfig(target_params=0.75).layers_to_remove(4, sizes) == 3
    assert ShapleyPruningConfig(target_params=0.9).layers_to_remove(4, sizes) == 1
    assert ShapleyPruningConfig(target_params=0.8).layers_to_remove(4, sizes) == 2  # exactly 200 = 1000 - 800
    with pytest.raises(ValueError, match="needs the model's parameter counts"):
        ShapleyPruningConfig(target_params=0.75).layers_to_remove(4)
    with pytest.raises(ValueError, match="raise target_params"):  # 600 embeddings/head + one layer always stay
        ShapleyPruningConfig(target_params=0.5).layers_to_remove(4, sizes)
    # the budget and strata need the count, not the fraction
    config = ShapleyPruningConfig(target_params=0.75)
    assert config.resolved_strata(30, 6) == default_strata(30, 6)
    assert config.resolved_max_evaluations(30, 6) == ShapleyPruningConfig(
        num_layers_to_remove=6
    ).resolved_max_evaluations(30)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_params": 1.0},
        {"target_params": 0.0},
        {"target_params": True},
        {"target_params": "0.75"},
        {"target_params": 0.75, "num_layers_to_remove": 2},
        {"target_params": 0.75, "pruning_ratio": 0.2},
    ],
)
def test_bad_parameter_fraction_is_refused(kwargs):
    field = "target_params" if len(kwargs) == 1 else "num_layers_to_remove"
    with pytest.raises(ValueError, match=f"ShapleyPruningConfig.{field}"):
        ShapleyPruningConfig(**kwargs)
