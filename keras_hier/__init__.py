"""keras_hier: hierarchy-aware classification for Keras.

Class hierarchies with tree distances (`Hierarchy`), losses and heads that plug
into `model.compile` (`SimLoss`, `NormFaceHead`, `ProxyDRHead`, `CORRLoss`, ...),
evaluation of what a model learned about the hierarchy, and export to
TF-Serving SavedModels with hierarchy-consistent predictions.

Names are imported lazily, so `keras_hier.Hierarchy` does not import
TensorFlow. `import keras_hier` alone still makes every serializable class
(`SimLoss`, `ProxyDRHead`, `Classifier`, the metrics, ...) known to Keras
under its registered name (`"keras_hier>SimLoss"`), so
`import keras, keras_hier; keras.models.load_model("model.keras")` works in a
fresh process: a stand-in is put in Keras's custom-object registry, as soon
as Keras is imported (now, or later through an import hook), and imports the
defining module on first use, where the real class replaces it.
"""

import importlib
import sys

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    # the tree
    "Hierarchy": "hierarchy",
    # similarity matrices
    "tree_similarity": "similarity",
    "ordinal_similarity": "similarity",
    "similarity_from_scores": "similarity",
    "validate_similarity": "similarity",
    "mds_proxies": "mds",
    "tree_factors": "factorisation",
    "TreeFactors": "factorisation",
    # losses
    "SimLoss": "losses",
    "HierarchicalCrossEntropy": "losses",
    "SoftLabelCrossEntropy": "losses",
    "CORRLoss": "losses",
    # heads and models
    "NormFaceHead": "layers",
    "ProxyDRHead": "layers",
    "initial_dynamic_scale": "layers",
    "build_classifier": "models",
    "Classifier": "models",
    # streaming metrics
    "MistakeSeverity": "metrics",
    "AverageHierarchicalDistanceAtK": "metrics",
    "LevelAccuracy": "metrics",
    "SuperclassAccuracy": "metrics",
    # evaluation
    "hierarchical_inference": "inference",
    "class_representatives": "evaluation",
    "hierarchy_informed": "evaluation",
    "retrieval": "retrieval_metrics",
    "evaluate": "evaluation",
    "report": "reporting",
    # figures (matplotlib, the `plot` extra)
    "plot_dendrograms": "plots",
    "plot_distance_matrices": "plots",
    "plot_hs_curves": "plots",
    # decoding and export
    "node_marginals": "decoding",
    "decode": "decoding",
    "export_saved_model": "export",
    # data
    "load_dataset": "data",
    "load_arrays": "data",
    "LoadedData": "data",
    "get_backbone": "backbones",
    "recompute_batchnorm_statistics": "batchnorm",
}

_SUBMODULES = (
    "hierarchy", "hierarchy_io", "hierarchies", "wordnet", "similarity", "factorisation", "tree_sums", "mds",
    "geometry", "labels", "outputs", "files", "tree_counts", "ops", "losses", "layers", "batchnorm", "distributed",
    "glosses", "model_scoring", "streaming_eval", "inference_sampled", "reporting", "export_card",
    "models", "metrics", "evaluation", "inference", "retrieval_metrics", "plots", "decoding", "serving_graph", "export", "data", "backbones",
)

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)

#: Keras-serializable classes (registered as "keras_hier>Name") -> defining submodule.
#: tests/test_package.py checks that this lists every class the submodules register.
KERAS_SERIALIZABLE = {name: _EXPORTS[name] for name in (
    "SimLoss", "HierarchicalCrossEntropy", "SoftLabelCrossEntropy", "CORRLoss", "NormFaceHead", "ProxyDRHead",
    "Classifier", "MistakeSeverity", "AverageHierarchicalDistanceAtK", "LevelAccuracy", "SuperclassAccuracy")}
_KERAS_REGISTRY = "keras.src.saving.object_registration"


class _LazyKerasClass:
    """Stand-in for a keras_hier class in Keras's registry until its module is imported.

    Keras's deserialiser looks the registered name up and calls
    `from_config` on what it finds; this imports the module (whose decorator
    registers the real class over the stand-in) and delegates.
    """

    def __init__(self, name, module):
        self.__name__ = name
        self._module = f"keras_hier.{module}"

    def resolve(self):
        """The real class (imports its module)."""
        return getattr(importlib.import_module(self._module), self.__name__)

    def from_config(self, config, *args, **kwargs):
        return self.resolve().from_config(config, *args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    def __repr__(self):
        return f"<keras_hier lazy class {self._module}.{self.__name__}>"


def _register_with_keras(registry_module):
    objects = registry_module.GLOBAL_CUSTOM_OBJECTS
    for name, module in KERAS_SERIALIZABLE.items():
        objects.setdefault(f"keras_hier>{name}", _LazyKerasClass(name, module))


class _RegisteringLoader:
    """Runs Keras's registry module, then adds the keras_hier stand-ins to it (an importlib loader)."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _register_with_keras(module)

    def __getattr__(self, name):  # get_source, get_filename, ... for tracebacks
        return getattr(self._loader, name)


class _KerasImportHook:
    """A `sys.meta_path` finder that waits for Keras's registry module, without importing Keras itself.

    (Plain classes: `importlib.abc` would cost more start-up than all of keras_hier.)
    """

    def find_spec(self, fullname, path, target=None):
        if fullname != _KERAS_REGISTRY:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


def _install_keras_registration():
    if _KERAS_REGISTRY in sys.modules:
        _register_with_keras(sys.modules[_KERAS_REGISTRY])
    elif not any(isinstance(finder, _KerasImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _KerasImportHook())


_install_keras_registration()


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f"keras_hier.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f"keras_hier.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'keras_hier' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
