"""Streaming hierarchy-informed metrics for `model.compile(metrics=...)`.

Each metric accumulates a weighted sum and a weighted count over batches, so
`fit` and TensorBoard show it every epoch; on the same data (unit weights) it
equals the NumPy measure of `keras_hier.evaluation.hierarchy_informed`:

- `MistakeSeverity`: mean tree distance of the top-1 prediction over the
  misclassified samples (NaN while there is no mistake);
- `AverageHierarchicalDistanceAtK`: mean over samples of the mean tree distance
  of the top-k predictions (k = 1: the average hierarchical cost, AHC);
- `LevelAccuracy`: accuracy after mapping prediction and label to their
  ancestors at one level;
- `SuperclassAccuracy`: prediction under the true class's parent node;
  `failed_only=True` gives the failed-superclass accuracy (over mistakes).

Predictions are ranked by `keras.ops.top_k`, which breaks ties by the smaller
class id, like the NumPy versions. The hierarchy enters the graph as small
constant tables (a [C, C] distance table, the [C] ancestor ids).
"""

import keras
import numpy as np
from keras import ops

from keras_hier.hierarchy import Hierarchy


def _as_hierarchy(hierarchy):
    if isinstance(hierarchy, Hierarchy):
        return hierarchy
    if isinstance(hierarchy, dict) and "paths" in hierarchy:
        return Hierarchy([p.split("/") for p in hierarchy["paths"]], classes=hierarchy.get("classes"))
    raise TypeError(f"hierarchy must be a keras_hier.Hierarchy (or its config dict), "
                    f"got {type(hierarchy).__name__}")


def _hierarchy_config(hierarchy):
    return {"paths": ["/".join(p) for p in hierarchy.paths], "classes": list(hierarchy.classes)}


class _HierarchyMetric(keras.metrics.Metric):
    """Weighted mean of a per-sample quantity, optionally over a subset of samples."""

    def __init__(self, hierarchy, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.hierarchy = _as_hierarchy(hierarchy)
        self.num_classes = self.hierarchy.num_classes
        self.total = self.add_variable(shape=(), initializer="zeros", name="total", dtype="float32")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count", dtype="float32")

    def _labels(self, y_true):
        y = ops.convert_to_tensor(y_true)
        if len(y.shape) == 2 and y.shape[-1] == self.num_classes and self.num_classes > 1:
            y = ops.argmax(y, axis=-1)
        return ops.cast(ops.reshape(y, (-1,)), "int32")

    def _top(self, y_pred, k):
        scores = ops.cast(y_pred, "float32")
        if scores.shape[-1] is not None and scores.shape[-1] != self.num_classes:
            raise ValueError(f"{type(self).__name__}: y_pred has {scores.shape[-1]} classes, "
                             f"the hierarchy {self.num_classes}")
        return ops.cast(ops.top_k(scores, k, sorted=True)[1], "int32")

    def _pair_table(self, matrix):
        return ops.convert_to_tensor(np.asarray(matrix, dtype=np.float32).reshape(-1))

    def _lookup(self, table, rows, cols):
        return ops.take(table, rows * self.num_classes + cols)

    def _accumulate(self, values, selected, sample_weight):
        values = ops.cast(values, "float32")
        weight = ops.cast(selected, "float32")
        if sample_weight is not None:
            weight = weight * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        self.total.assign_add(ops.sum(values * weight))
        self.count.assign_add(ops.sum(weight))

    def result(self):
        return ops.divide(self.total, self.count)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {"hierarchy": _hierarchy_config(self.hierarchy), "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="keras_hier")
class MistakeSeverity(_HierarchyMetric):
    """Mean tree distance between the top-1 prediction and the label, over mistakes.

    Args:
        hierarchy: a `keras_hier.Hierarchy`.
        distance: `"path"` (edges between the leaves) or `"lca_height"`.
        name, dtype: as for any Keras metric.

    Example:

    >>> import numpy as np, keras_hier
    >>> h = keras_hier.Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> m = MistakeSeverity(h)
    >>> m.update_state(np.array([0, 0]), np.array([[0., 1., 0.], [0., 0., 1.]]))
    >>> float(m.result())
    3.0
    """

    def __init__(self, hierarchy, distance="path", name="mistake_severity", dtype=None):
        super().__init__(hierarchy, name=name, dtype=dtype)
        if distance not in ("path", "lca_height"):
            raise ValueError(f"distance must be 'path' or 'lca_height', got {distance!r}")
        self.distance = distance
        self._table = self._pair_table(self.hierarchy.distance_matrix(distance))

    def update_state(self, y_true, y_pred, sample_weight=None):
        y = self._labels(y_true)
        pred = self._top(y_pred, 1)[:, 0]
        self._accumulate(self._lookup(self._table, y, pred), ops.not_equal(y, pred), sample_weight)

    def get_config(self):
        return {**super().get_config(), "distance": self.distance}


@keras.saving.register_keras_serializable(package="keras_hier")
class AverageHierarchicalDistanceAtK(_HierarchyMetric):
    """AHD@k: mean over samples of the mean tree distance of the top-k predictions.

    Args:
        hierarchy: a `keras_hier.Hierarchy`.
        k: number of predictions (1 <= k <= C); k = 1 is the AHC.
        distance: `"path"` or `"lca_height"`.
        name, dtype: as for any Keras metric.
    """

    def __init__(self, hierarchy, k=5, distance="path", name=None, dtype=None):
        super().__init__(hierarchy, name=name or f"ahd_at_{k}", dtype=dtype)
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= self.num_classes:
            raise ValueError(f"k must be an integer in 1..num_classes={self.num_classes}, got {k!r}")
        if distance not in ("path", "lca_height"):
            raise ValueError(f"distance must be 'path' or 'lca_height', got {distance!r}")
        self.k = int(k)
        self.distance = distance
        self._table = self._pair_table(self.hierarchy.distance_matrix(distance))

    def update_state(self, y_true, y_pred, sample_weight=None):
        y = self._labels(y_true)
        top = self._top(y_pred, self.k)
        dist = self._lookup(self._table, ops.expand_dims(y, 1), top)
        self._accumulate(ops.mean(dist, axis=1), ops.ones_like(y), sample_weight)

    def get_config(self):
        return {**super().get_config(), "k": self.k, "distance": self.distance}


@keras.saving.register_keras_serializable(package="keras_hier")
class LevelAccuracy(_HierarchyMetric):
    """Top-1 accuracy after mapping prediction and label to their level ancestors.

    Args:
        hierarchy: a `keras_hier.Hierarchy`.
        level: 0 = top level; negative levels count from the bottom.
        name, dtype: as for any Keras metric.
    """

    def __init__(self, hierarchy, level=0, name=None, dtype=None):
        super().__init__(hierarchy, name=name or f"level_{level}_accuracy", dtype=dtype)
        self.level = int(level)
        self._ancestors = ops.convert_to_tensor(np.asarray(self.hierarchy.ancestors(self.level), np.int32))

    def update_state(self, y_true, y_pred, sample_weight=None):
        y = self._labels(y_true)
        pred = self._top(y_pred, 1)[:, 0]
        same = ops.equal(ops.take(self._ancestors, y), ops.take(self._ancestors, pred))
        self._accumulate(same, ops.ones_like(y), sample_weight)

    def get_config(self):
        return {**super().get_config(), "level": self.level}


@keras.saving.register_keras_serializable(package="keras_hier")
class SuperclassAccuracy(_HierarchyMetric):
    """Fraction of predictions under the true class's parent node (SimLoss).

    Args:
        hierarchy: a `keras_hier.Hierarchy`.
        failed_only: True for the failed-superclass accuracy (misclassified
            samples only; NaN while there is no mistake).
        name, dtype: as for any Keras metric.
    """

    def __init__(self, hierarchy, failed_only=False, name=None, dtype=None):
        default = "failed_superclass_accuracy" if failed_only else "superclass_accuracy"
        super().__init__(hierarchy, name=name or default, dtype=dtype)
        self.failed_only = bool(failed_only)
        lca = np.asarray(self.hierarchy.lca_depth_matrix())
        depth = np.asarray(self.hierarchy.leaf_depths)
        self._table = self._pair_table(lca >= depth[:, None] - 1)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y = self._labels(y_true)
        pred = self._top(y_pred, 1)[:, 0]
        selected = ops.not_equal(y, pred) if self.failed_only else ops.ones_like(y)
        self._accumulate(self._lookup(self._table, y, pred), selected, sample_weight)

    def get_config(self):
        return {**super().get_config(), "failed_only": self.failed_only}


__all__ = ["MistakeSeverity", "AverageHierarchicalDistanceAtK", "LevelAccuracy", "SuperclassAccuracy"]
