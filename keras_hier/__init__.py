"""keras_hier: hierarchy-aware classification for Keras.

Class hierarchies with tree distances (`Hierarchy`), losses and heads that plug
into `model.compile` (`SimLoss`, `NormFaceHead`, `ProxyDRHead`, `CORRLoss`, ...),
evaluation of what a model learned about the hierarchy, and export to
TF-Serving SavedModels with hierarchy-consistent predictions.

Names are imported lazily, so `keras_hier.Hierarchy` does not import
TensorFlow.
"""

import importlib

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
    "mds_proxies": "similarity",
    "tree_factors": "similarity",
    "TreeFactors": "similarity",
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
    "report": "evaluation",
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
}

_SUBMODULES = (
    "hierarchy", "hierarchy_io", "hierarchies", "wordnet", "similarity", "ops", "losses", "layers",
    "models", "metrics", "evaluation", "inference", "retrieval_metrics", "plots", "decoding", "serving_graph", "export", "data", "backbones",
)

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)


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
