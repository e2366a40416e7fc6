"""The package surface: lazy imports and that every exported name resolves."""

import subprocess
import sys

import keras_hier


def test_hierarchy_and_offline_measures_do_not_import_tensorflow():
    code = ("import sys, keras_hier; keras_hier.Hierarchy; keras_hier.hierarchies.cifar100(); "
            "keras_hier.hierarchy_informed; keras_hier.retrieval; keras_hier.hierarchical_inference; "
            "keras_hier.tree_similarity; print('tensorflow' in sys.modules or 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_export_resolves():
    for name, module in keras_hier._EXPORTS.items():
        value = getattr(keras_hier, name)
        assert getattr(value, "__module__", "").startswith("keras_hier"), name
    for module in keras_hier._SUBMODULES:
        assert getattr(keras_hier, module).__name__ == f"keras_hier.{module}"
    assert "Hierarchy" in dir(keras_hier)


def test_unknown_attribute_is_a_clear_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        keras_hier.nope
