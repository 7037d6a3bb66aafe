"""The method registry (optimum_shapley/registry.py): a leaf the config reads, duplicates refused, help derived."""

from __future__ import annotations

import subprocess
import sys

import pytest

from optimum_shapley import ShapleyPruningConfig
from optimum_shapley.criteria import METHODS, CriterionResult, LayerCriterion, get_criterion
from optimum_shapley.registry import BUILTIN_METHODS, CRITERIA, Registry, methods_help, register_criterion


def test_every_builtin_method_has_its_criterion_in_display_order():
    assert METHODS == BUILTIN_METHODS == CRITERIA.names()
    assert list(CRITERIA) == list(BUILTIN_METHODS)
    for name in METHODS:
        assert get_criterion(name).name == name


def test_the_registry_and_encoding_modules_are_leaves():
    """Loaded from their files alone (not through the package), they import nothing of optimum_shapley."""
    import optimum_shapley

    root = optimum_shapley.__path__[0]
    for leaf in ("registry", "encoding"):
        code = (
            "import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('leaf', {root + '/' + leaf + '.py'!r})\n"
            "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
            "print(sorted(m for m in sys.modules if m.startswith('optimum_shapley')))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "[]", (leaf, out)


def test_a_taken_name_is_refused_and_replace_is_explicit():
    class Impostor(LayerCriterion):
        name = "sleb"

        def _select(self, evaluator, num_remove, *, seed, **options):  # pragma: no cover - never run
            return CriterionResult(method=self.name, removed_layers=[])

    original = CRITERIA["sleb"]
    with pytest.raises(ValueError, match="already registered"):
        register_criterion(Impostor)
    assert CRITERIA["sleb"] is original
    register_criterion(original)  # the same class again is not a duplicate (module re-import)


def test_a_users_criterion_registers_and_the_config_accepts_it():
    registry_before = dict(CRITERIA._classes)

    @register_criterion
    class FirstLayers(LayerCriterion):
        name = "first-layers-test"

        def _select(self, evaluator, num_remove, *, seed, **options):
            return CriterionResult(method=self.name, removed_layers=list(range(1, num_remove + 1)))

    try:
        assert "first-layers-test" in CRITERIA.names() and "first-layers-test" in methods_help()
        assert ShapleyPruningConfig(method="first-layers-test", num_layers_to_remove=2).method == "first-layers-test"
    finally:
        CRITERIA._classes.clear()
        CRITERIA._classes.update(registry_before)
    with pytest.raises(ValueError, match="ShapleyPruningConfig.method: must be one of"):
        ShapleyPruningConfig(method="first-layers-test", num_layers_to_remove=2)


def test_unknown_names_get_the_list_of_choices():
    with pytest.raises(ValueError, match="unknown method 'nope'; choose one of"):
        get_criterion("nope")
    registry = Registry("widget", ("a",))
    with pytest.raises(KeyError, match="unknown widget 'a'"):
        registry["a"]  # built-in but not registered yet
    with pytest.raises(ValueError, match="non-empty string name"):
        registry.register(object())


def test_help_text_comes_from_the_registry():
    help_text = ShapleyPruningConfig.__dataclass_fields__["method"].metadata["help"]
    assert methods_help() in help_text and "shapley (default)" in help_text
