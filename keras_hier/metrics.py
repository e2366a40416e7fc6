"""Streaming hierarchy-informed metrics for `model.compile(metrics=...)`.

Each metric accumulates a weighted sum and a weighted count over batches, so
`fit` and TensorBoard show it every epoch; on the same data (unit weights) it
equals the NumPy measure of `keras_hier.evaluation.hierarchy_informed`:

- `MistakeSeverity`: mean tree distance of the top-1 prediction over the
  misclassified samples;
- `AverageHierarchicalDistanceAtK`: mean over samples of the mean tree distance
  of the top-k predictions (k = 1: the average hierarchical cost, AHC);
- `LevelAccuracy`: accuracy after mapping prediction and label to their
  ancestors at one level (or, with `marginal=True`, of the level node with
  the largest summed probability);
- `SuperclassAccuracy`: prediction under the true class's parent node;
  `failed_only=True` gives the failed-superclass accuracy (over mistakes).

Conventions:

- Scores: logits or probabilities alike. Ranking (top-1, top-k) does not
  depend on a softmax, so `Dense(C, activation="softmax")` outputs are
  fine; only `LevelAccuracy(marginal=True)` sums probabilities and takes
  `from_logits` (None = detect the softmax mark, see `keras_hier.outputs`).
  Predictions are ranked by `keras.ops.top_k`, which breaks ties by the
  smaller class id, like the NumPy versions.
- Labels: class ids `[B]` / `[B, 1]` or one-hot `[B, C]`, parsed by
  `sparse_labels` (the `keras.ops` labels helper). An id outside `[0, C)`
  raises naming the metric (eagerly or through a graph assertion); where a
  compiler drops assertions (XLA) the metric becomes NaN, never a silently
  clamped lookup.
- An empty selection (no mistake yet for `MistakeSeverity` and
  `SuperclassAccuracy(failed_only=True)`, or zero total weight) gives 0.0,
  Keras's `divide_no_nan` convention (as `keras.metrics.Precision` with no
  positive prediction), so `fit` logs and `TerminateOnNaN` see a number; the
  offline `evaluate` reports NaN there.
- Memory: O(C x depth). The tree enters the graph as the per-class ancestor
  tables of `Hierarchy` (`node_ids`, `level_mask`, `leaf_depths`,
  `ancestor_heights`); a pair's tree distance is computed from them, never
  looked up in a C x C matrix (see `pair_lca_depth`, `pair_distance`).
- Configs hold the hierarchy as `Hierarchy.to_config()` (one compact value).
"""

import keras
import numpy as np
from keras import ops

from keras_hier.hierarchy import Hierarchy, check_distance_kind
from keras_hier.labels import sparse_labels
from keras_hier.outputs import tensor_is_probability
from keras_hier.streaming_eval import superclass_rule

__all__ = ["MistakeSeverity", "AverageHierarchicalDistanceAtK", "LevelAccuracy", "SuperclassAccuracy",
           "TreeTables", "hierarchy_from_config"]


def hierarchy_from_config(hierarchy, where="metric"):
    """A `Hierarchy` from a `Hierarchy`, its `to_config()` / `to_dict()` dict, or a legacy metric config.

    Legacy configs (keras_hier <= 0.1 metrics) stored the paths as "/"-joined
    strings; they are read as such (a node name holding "/" could not be
    saved that way).
    """
    if isinstance(hierarchy, Hierarchy):
        return hierarchy
    if isinstance(hierarchy, dict):
        paths = hierarchy.get("paths")
        if "tree" not in hierarchy and isinstance(paths, list) and paths and isinstance(paths[0], str):
            return Hierarchy([p.split("/") for p in paths], classes=hierarchy.get("classes"))
        return Hierarchy.from_config(hierarchy)
    raise TypeError(f"{where}: hierarchy must be a keras_hier.Hierarchy (or its config dict), "
                    f"got {type(hierarchy).__name__}")


class TreeTables:
    """The per-class ancestor tables of a hierarchy as `keras.ops` constants, O(C x depth).

    Args:
        hierarchy: a `Hierarchy`.

    Example:

    >>> h = Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> tables = TreeTables(h)
    >>> [int(v) for v in tables.distance(np.array([0, 0, 2]), np.array([1, 2, 2]))]
    [2, 4, 0]
    """

    def __init__(self, hierarchy):
        self.num_classes = hierarchy.num_classes
        self.depth = hierarchy.depth
        self.node_ids = ops.convert_to_tensor(np.asarray(hierarchy.node_ids, np.int32))
        self.level_mask = ops.convert_to_tensor(np.asarray(hierarchy.level_mask, np.int32))
        self.leaf_depths = ops.convert_to_tensor(np.asarray(hierarchy.leaf_depths, np.int32))
        # [C * (depth + 1)]: height of each class's ancestor per level (root first), for "lca_height"
        heights = np.asarray(hierarchy.ancestor_heights(), np.int32)
        self.heights = ops.convert_to_tensor(heights.reshape(-1))

    def lca_depth(self, a, b):
        """Depth of the lowest common ancestor of classes a and b (root 0; a == b: the leaf depth).

        A level counts when both classes have the same node there on a's own
        path (`Hierarchy.lca_depths`); a and b broadcast, O(depth) per pair.
        """
        a, b = ops.cast(a, "int32"), ops.cast(b, "int32")
        same = ops.equal(ops.take(self.node_ids, a, axis=0), ops.take(self.node_ids, b, axis=0))
        same = ops.cast(same, "int32") * ops.take(self.level_mask, a, axis=0)
        return ops.sum(same, axis=-1)

    def distance(self, a, b, kind="path"):
        """Tree distance t(a, b) (float32), as `Hierarchy.distance(a, b, kind)`."""
        lca = self.lca_depth(a, b)
        a, b = ops.cast(a, "int32"), ops.cast(b, "int32")
        if kind == "path":
            value = ops.take(self.leaf_depths, a) + ops.take(self.leaf_depths, b) - 2 * lca
        else:
            value = ops.take(self.heights, a * (self.depth + 1) + lca)
            value = ops.where(ops.equal(a, b), 0, value)
        return ops.cast(value, "float32")

    def under_parent(self, label, pred):
        """True where `pred` lies under the parent node of `label` (the superclass rule).

        The parent of a class at depth d is its ancestor at depth d - 1 (the
        root for a top-level class), so the rule is lca_depth >= d - 1.
        """
        return superclass_rule(self.lca_depth(label, pred), ops.take(self.leaf_depths, label))


class _HierarchyMetric(keras.metrics.Metric):
    """Weighted mean of a per-sample quantity, optionally over a subset of samples."""

    def __init__(self, hierarchy, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.hierarchy = hierarchy_from_config(hierarchy, type(self).__name__)
        self.num_classes = self.hierarchy.num_classes
        self.tables = TreeTables(self.hierarchy)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total", dtype="float32")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count", dtype="float32")

    def _labels(self, y_true):
        """(int32 labels [B] in range, float32 mask [B]: 1 valid, NaN for a bad label)."""
        labels, valid = sparse_labels(y_true, self.num_classes, type(self).__name__, with_valid=True)
        return labels, ops.where(valid, 1.0, float("nan"))

    def _scores(self, y_pred):
        scores = ops.cast(y_pred, "float32")
        if len(scores.shape) != 2 or (scores.shape[-1] is not None and scores.shape[-1] != self.num_classes):
            raise ValueError(f"{type(self).__name__}: y_pred must be scores [B, {self.num_classes}] (the "
                             f"hierarchy's classes), got shape {tuple(scores.shape)}")
        return scores

    def _top(self, y_pred, k):
        """[B, k] class ids by decreasing score, ties broken by the smaller class id on every backend."""
        scores = self._scores(y_pred)
        if keras.backend.backend() == "torch":  # torch.topk does not order ties; a stable argsort does
            if k == 1:
                return ops.cast(ops.expand_dims(ops.argmax(scores, axis=-1), -1), "int32")
            return ops.cast(ops.argsort(-scores, axis=-1)[:, :k], "int32")
        return ops.cast(ops.top_k(scores, k, sorted=True)[1], "int32")

    def _accumulate(self, values, selected, valid, sample_weight):
        weight = ops.cast(selected, "float32")
        if sample_weight is not None:
            weight = weight * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        values = ops.cast(values, "float32") * valid
        self.total.assign_add(ops.sum(values * weight))
        self.count.assign_add(ops.sum(weight * valid))

    def result(self):
        return ops.divide_no_nan(self.total, self.count)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {"hierarchy": self.hierarchy.to_config(), "name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="keras_hier")
class MistakeSeverity(_HierarchyMetric):
    """Mean tree distance between the top-1 prediction and the label, over mistakes.

    0.0 while there is no mistake (see the module doc).

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
        self.distance = check_distance_kind(distance, "distance")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y, valid = self._labels(y_true)
        pred = self._top(y_pred, 1)[:, 0]
        self._accumulate(self.tables.distance(y, pred, self.distance), ops.not_equal(y, pred), valid,
                         sample_weight)

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

    Example:

    >>> import numpy as np, keras_hier
    >>> h = keras_hier.Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> m = AverageHierarchicalDistanceAtK(h, k=2)
    >>> m.update_state(np.array([0]), np.array([[0.5, 0.1, 0.4]]))
    >>> float(m.result())   # mean of t(x, x) = 0 and t(x, z) = 4
    2.0
    """

    def __init__(self, hierarchy, k=5, distance="path", name=None, dtype=None):
        super().__init__(hierarchy, name=name or f"ahd_at_{k}", dtype=dtype)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.num_classes:
            raise ValueError(f"AverageHierarchicalDistanceAtK: k must be an integer in 1..num_classes="
                             f"{self.num_classes}, got {k!r}")
        self.k = int(k)
        self.distance = check_distance_kind(distance, "distance")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y, valid = self._labels(y_true)
        top = self._top(y_pred, self.k)
        dist = self.tables.distance(ops.expand_dims(y, 1), top, self.distance)
        self._accumulate(ops.mean(dist, axis=1), ops.ones_like(valid), valid, sample_weight)

    def get_config(self):
        return {**super().get_config(), "k": self.k, "distance": self.distance}


@keras.saving.register_keras_serializable(package="keras_hier")
class LevelAccuracy(_HierarchyMetric):
    """Top-1 accuracy at one level of the tree.

    By default the top-1 class is mapped to its ancestor at `level` and
    compared with the label's ancestor. With `marginal=True` the level's
    prediction is instead the node with the largest summed class probability
    (softmax of the logits, or the probabilities themselves).

    Args:
        hierarchy: a `keras_hier.Hierarchy`.
        level: 0 = top level; negative levels count from the bottom.
        marginal: predict the level node by summed probability.
        from_logits: for `marginal=True`: whether y_pred are logits; None
            (default) detects a softmax-marked tensor, else takes logits.
        name, dtype: as for any Keras metric.

    Example:

    >>> import numpy as np, keras_hier
    >>> h = keras_hier.Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> probs = np.array([[0.3, 0.3, 0.4]])
    >>> top1, summed = LevelAccuracy(h, 0), LevelAccuracy(h, 0, marginal=True, from_logits=False)
    >>> top1.update_state(np.array([0]), probs); summed.update_state(np.array([0]), probs)
    >>> float(top1.result()), float(summed.result())   # z is top-1; node a holds 0.6
    (0.0, 1.0)
    """

    def __init__(self, hierarchy, level=0, marginal=False, from_logits=None, name=None, dtype=None):
        super().__init__(hierarchy, name=name or f"level_{level}_accuracy", dtype=dtype)
        self.level = int(level)
        self.marginal = bool(marginal)
        self.from_logits = None if from_logits is None else bool(from_logits)
        ancestors = np.asarray(self.hierarchy.ancestors(self.level), np.int32)
        self._num_nodes = int(self.hierarchy.num_nodes(self.level))
        self._ancestors = ops.convert_to_tensor(ancestors)

    def _level_prediction(self, y_pred):
        if not self.marginal:
            return ops.take(self._ancestors, self._top(y_pred, 1)[:, 0])
        scores = self._scores(y_pred)
        from_logits = self.from_logits if self.from_logits is not None else not tensor_is_probability(y_pred)
        probs = ops.softmax(scores, axis=-1) if from_logits else scores
        node_probs = ops.segment_sum(ops.transpose(probs), self._ancestors, num_segments=self._num_nodes)
        return ops.cast(ops.argmax(ops.transpose(node_probs), axis=-1), "int32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y, valid = self._labels(y_true)
        same = ops.equal(ops.take(self._ancestors, y), self._level_prediction(y_pred))
        self._accumulate(same, ops.ones_like(valid), valid, sample_weight)

    def get_config(self):
        return {**super().get_config(), "level": self.level, "marginal": self.marginal,
                "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="keras_hier")
class SuperclassAccuracy(_HierarchyMetric):
    """Fraction of predictions under the true class's parent node (SimLoss).

    Args:
        hierarchy: a `keras_hier.Hierarchy`.
        failed_only: True for the failed-superclass accuracy (misclassified
            samples only; 0.0 while there is no mistake, see the module doc).
        name, dtype: as for any Keras metric.

    Example:

    >>> import numpy as np, keras_hier
    >>> h = keras_hier.Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> m = SuperclassAccuracy(h, failed_only=True)
    >>> m.update_state(np.array([0, 0]), np.array([[0., 1., 0.], [0., 0., 1.]]))
    >>> float(m.result())   # y is under a, z is not
    0.5
    """

    def __init__(self, hierarchy, failed_only=False, name=None, dtype=None):
        default = "failed_superclass_accuracy" if failed_only else "superclass_accuracy"
        super().__init__(hierarchy, name=name or default, dtype=dtype)
        self.failed_only = bool(failed_only)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y, valid = self._labels(y_true)
        pred = self._top(y_pred, 1)[:, 0]
        selected = ops.not_equal(y, pred) if self.failed_only else ops.ones_like(valid)
        self._accumulate(self.tables.under_parent(y, pred), selected, valid, sample_weight)

    def get_config(self):
        return {**super().get_config(), "failed_only": self.failed_only}
