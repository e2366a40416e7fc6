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
    for name in keras_hier._EXPORTS:
        value = getattr(keras_hier, name)
        assert getattr(value, "__module__", "").startswith("keras_hier"), name
    for module in keras_hier._SUBMODULES:
        assert getattr(keras_hier, module).__name__ == f"keras_hier.{module}"
    assert "Hierarchy" in dir(keras_hier)


def test_unknown_attribute_is_a_clear_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        keras_hier.nope  # noqa: B018


# ------------------------------------------------------------- Keras registration
def test_every_registered_class_is_listed_for_lazy_registration():
    """`keras_hier.KERAS_SERIALIZABLE` names every class a submodule registers as 'keras_hier>...'."""
    import keras

    for module in keras_hier._SUBMODULES:
        getattr(keras_hier, module)
    registered = {name for name in keras.saving.get_custom_objects() if name.startswith("keras_hier>")}
    assert registered == {f"keras_hier>{name}" for name in keras_hier.KERAS_SERIALIZABLE}
    for name, module in keras_hier.KERAS_SERIALIZABLE.items():
        cls = keras.saving.get_registered_object(f"keras_hier>{name}")
        assert cls is getattr(keras_hier, name) and cls.__module__ == f"keras_hier.{module}"  # stand-in replaced


LOOKUP = """
import sys
{imports}
import keras
names = {names!r}
lazy = [n for n in names if 'keras_hier.' + {modules!r}[n] in sys.modules]
found = [keras.saving.get_registered_object('keras_hier>' + n) is not None for n in names]
assert all(found), [n for n, f in zip(names, found) if not f]
loaded_early = sorted(m for m in sys.modules if m.startswith('keras_hier.'))
cls = keras.saving.get_registered_object('keras_hier>MistakeSeverity')
metric = cls.from_config({{'hierarchy': keras_hier.Hierarchy.from_paths(['a/x', 'b/y']).to_config(), 'name': 'm'}})
print(loaded_early, type(metric).__module__)
"""


def test_import_keras_hier_alone_registers_names_with_keras_in_either_order():
    for imports in ("import keras_hier", "import keras\nimport keras_hier"):
        code = LOOKUP.format(imports=imports, names=sorted(keras_hier.KERAS_SERIALIZABLE),
                             modules=keras_hier.KERAS_SERIALIZABLE)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        early, module = out.stdout.strip().rsplit(" ", 1)
        assert early == "[]"  # nothing was imported to register the names
        assert module == "keras_hier.metrics"  # first use imports the defining module


def test_import_cost_stays_tiny():
    code = "import sys, time; t = time.perf_counter(); import keras_hier; print(time.perf_counter() - t, " \
           "sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'numpy', 'tensorflow', 'typing')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, modules = out.stdout.split(" ", 1)
    assert modules.strip() == "[]"
    assert float(seconds) < 0.5  # about 3 ms; generous for a loaded machine


def test_every_serializable_class_loads_in_a_fresh_process_after_import_keras_hier():
    """SimLoss / HXE / soft labels / CORR, both heads, Classifier and every metric: saved here, loaded with
    only `import keras, keras_hier`, same outputs (tests/roundtrip.py)."""
    import keras
    import numpy as np
    from roundtrip import make_hard_tree, run_serialization_tests

    h = make_hard_tree()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 6)).astype("float32")
    y = rng.integers(0, h.num_classes, 10)
    s = rng.normal(size=(10, h.num_classes)).astype("float32")
    backbone = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8)])
    model = keras_hier.build_classifier(backbone, "proxydr", hierarchy=h, embedding_dim=4)
    model.compile("adam", keras_hier.HierarchicalCrossEntropy(h, alpha=0.3),
                  metrics=[keras_hier.MistakeSeverity(h), keras_hier.AverageHierarchicalDistanceAtK(h, k=2),
                           keras_hier.LevelAccuracy(h, 0), keras_hier.SuperclassAccuracy(h)])
    cases = [(model, x, y), (keras_hier.NormFaceHead(h.num_classes, scale=4.0), x, None),
             (keras_hier.SimLoss.from_hierarchy(h), s, y), (keras_hier.SimLoss(h.similarity_matrix()), s, y),
             (keras_hier.SoftLabelCrossEntropy(h, beta=2.0), s, y), (keras_hier.CORRLoss(), s, y)]
    loaded = run_serialization_tests(cases, rtol=1e-4, atol=1e-5)
    assert {"predict", "evaluate/loss", "evaluate/mistake_severity", "evaluate/superclass_accuracy"} <= set(loaded[0])
