"""Hierarchy-informed classification measures as running sums over batches.

`InformedSums` holds O(C * depth) tables and a few running sums: it is
updated with each batch's labels and top-k class ids (and, optionally, the
class chosen by other decoders), never with the N x C scores. Pairwise tree
distances come from `keras_hier.tree_counts` (O(depth) per pair), the HP@k
radius from per-class distance histograms, so nothing is C x C.
`keras_hier.evaluation.hierarchy_informed` is one batch of it.

NumPy only; importing this module does not import TensorFlow.
"""

import warnings

import numpy as np

from keras_hier.tree_counts import check_distance_kind, distance_histogram, kth_smallest_distance, pair_distances

__all__ = ["HP_RULES", "InformedSums", "hp_radius", "superclass_correct", "superclass_rule", "top_k_predictions"]

HP_RULES = ("devise", "reference")
_SORT_ALL = 512  # below this many classes a full stable argsort is the cheapest top-k


def top_k_predictions(scores, k):
    """Indices of the k highest scores per row, ties broken by the smaller index.

    `keras.ops.top_k` (and `tf.math.top_k`) break ties the same way, so the
    streaming metrics and the in-graph top-k of `evaluate` agree. Cost
    O(N * C) (a partition, then a sort of k candidates), not O(N * C log C).

    Example:

    >>> top_k_predictions(np.array([[0.1, 0.5, 0.5, 0.2]]), 3).tolist()
    [[1, 2, 3]]
    """
    s = np.asarray(scores)
    n, c = s.shape
    if k >= c or c <= _SORT_ALL:
        return np.argsort(-s, axis=1, kind="stable")[:, :k]
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(s, part, axis=1).min(axis=1, keepdims=True)
    above = s > kth
    equal = s == kth
    need = k - above.sum(axis=1, keepdims=True)
    keep = above | (equal & (np.cumsum(equal, axis=1) <= need))
    candidates = np.nonzero(keep)[1].reshape(n, k)  # ascending class id within each row
    order = np.argsort(-np.take_along_axis(s, candidates, axis=1), axis=1, kind="stable")
    return np.take_along_axis(candidates, order, axis=1)


def hp_radius(hierarchy, k, rule="devise", distance="path"):
    """Per-class radius of the hCorrect set of HP@k (int [C]).

    `"devise"`: the smallest radius around the class holding at least k
    classes (itself included), i.e. the k-th smallest entry of its distance
    row. `"reference"`: the reference code's looser radius, entry k + 1
    (0-based) of the sorted row, which holds at least k + 2 classes.
    Computed from per-class distance histograms (no C x C matrix).

    Example:

    >>> import keras_hier
    >>> h = keras_hier.Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> hp_radius(h, 2).tolist()
    [2, 2, 4]
    """
    if rule not in HP_RULES:
        raise ValueError(f"hp_radius rule must be one of {HP_RULES}, got {rule!r}")
    c = hierarchy.num_classes
    position = min(k, c) if rule == "devise" else min(k + 1, c - 1) + 1
    return kth_smallest_distance(distance_histogram(hierarchy, kind=distance), position)


def superclass_correct(hierarchy, y_true, y_pred):
    """True where the prediction lies under the parent node of the true class.

    The one home of the superclass rule: the lowest common ancestor of label
    and prediction is at least as deep as the label's parent. On a tree
    whose leaves all have the same depth this is "same ancestor at the level
    above the classes" (SimLoss's superclass accuracy); on a ragged tree it
    uses each class's own parent (the root for a top-level class).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    depth = np.asarray(hierarchy.leaf_depths)
    return superclass_rule(hierarchy.lca_depths(y_true, y_pred), depth[y_true])


def superclass_rule(lca_depth, label_depth):
    """The superclass rule on depths: the LCA is at least as deep as the label's parent.

    Written with `>=` and `-` only, so NumPy arrays and Keras tensors alike
    (`keras_hier.metrics.SuperclassAccuracy` calls it on tensors).

    Example:
    >>> superclass_rule(np.array([2, 1]), np.array([3, 3])).tolist()
    [True, False]
    """
    return lca_depth >= label_depth - 1


class InformedSums:
    """Running sums of the hierarchy-informed classification measures.

    Args:
        hierarchy: a `keras_hier.Hierarchy`.
        k: the k of top-k accuracy, AHD@k and HP@k.
        distance: `"path"` or `"lca_height"`.
        hp_rule: `"devise"` or `"reference"` (see `hp_radius`).

    Call `update(y, top_ids, decoded=None)` per batch (y: [B] class ids,
    top_ids: [B, k] ranked class ids, decoded: {decoder name: [B] class ids})
    and `result()` at the end. Memory: O(C * depth).
    """

    def __init__(self, hierarchy, k=5, distance="path", hp_rule="devise"):
        check_distance_kind(distance)
        self.hierarchy, self.k, self.distance, self.hp_rule = hierarchy, int(k), distance, hp_rule
        self.radius = hp_radius(hierarchy, self.k, hp_rule, distance)
        self.ancestors = [np.asarray(hierarchy.ancestors(lv)) for lv in range(hierarchy.depth)]
        self.counts = np.zeros(hierarchy.num_classes, dtype=np.int64)
        self.sums = dict.fromkeys(("n", "correct", "top_k", "dist", "mistakes", "mistake_dist", "ahd", "hp",
                                   "superclass", "failed_superclass"), 0.0)
        self.level_correct = np.zeros(hierarchy.depth)
        self.decoders = {}

    def _decoder_update(self, name, y, ids):
        sums = self.decoders.setdefault(name, {"correct": 0.0, "dist": 0.0, "mistake_dist": 0.0})
        dist = pair_distances(self.hierarchy, y, ids, self.distance)
        sums["correct"] += float(np.sum(ids == y))
        sums["dist"] += float(dist.sum())
        sums["mistake_dist"] += float(dist[ids != y].sum())

    def update(self, y, top_ids, decoded=None):
        """Adds one batch: labels [B], ranked top-k ids [B, k], optional {decoder: ids [B]}."""
        y = np.asarray(y, dtype=np.int64)
        top = np.asarray(top_ids, dtype=np.int64)[:, :self.k]
        pred = top[:, 0]
        t_top = pair_distances(self.hierarchy, y[:, None], top, self.distance)
        dist = t_top[:, 0]
        correct = pred == y
        sup = superclass_correct(self.hierarchy, y, pred)
        s = self.sums
        s["n"] += y.size
        s["correct"] += float(correct.sum())
        s["top_k"] += float(np.any(top == y[:, None], axis=1).sum())
        s["dist"] += int(dist.sum())
        s["mistakes"] += float((~correct).sum())
        s["mistake_dist"] += int(dist[~correct].sum())
        s["ahd"] += int(t_top.sum())  # integer sums: the result does not depend on the batching
        s["hp"] += int(np.sum(t_top <= self.radius[y][:, None]))
        s["superclass"] += float(sup.sum())
        s["failed_superclass"] += float(sup[~correct].sum())
        self.level_correct += [np.sum(a[pred] == a[y]) for a in self.ancestors]
        self.counts += np.bincount(y, minlength=self.counts.size)
        for name, ids in (decoded or {}).items():
            self._decoder_update(name, y, np.asarray(ids, dtype=np.int64).reshape(-1))

    def result(self):
        """The measures as a plain dict (see `keras_hier.evaluation.hierarchy_informed`)."""
        s, n = self.sums, self.sums["n"]
        if n == 0:
            raise ValueError("hierarchy_informed got no samples")
        nan = float("nan")
        notes = []
        if s["mistakes"] == 0:
            notes.append("mistake_severity and failed_superclass_accuracy are undefined (NaN): "
                         "every prediction is correct, there is no mistake to measure")
            warnings.warn(notes[-1], RuntimeWarning, stacklevel=2)
        out = {
            "distance": self.distance, "k": self.k, "hp_rule": self.hp_rule, "num_samples": int(n),
            "accuracy": s["correct"] / n, "top_k_accuracy": s["top_k"] / n,
            "level_accuracy": [float(v / n) for v in self.level_correct],
            "ahc": s["dist"] / n,
            "mistake_severity": s["mistake_dist"] / s["mistakes"] if s["mistakes"] else nan,
            "ahd_at_k": s["ahd"] / (n * self.k), "hp_at_k": s["hp"] / (n * self.k),
            "superclass_accuracy": s["superclass"] / n,
            "failed_superclass_accuracy": s["failed_superclass"] / s["mistakes"] if s["mistakes"] else nan,
            "classes_absent": [int(i) for i in np.flatnonzero(self.counts == 0)],
        }
        if notes:
            out["notes"] = notes
        if self.decoders:
            out["decoders"] = {name: self._decoder_result(d, n) for name, d in self.decoders.items()}
        return out

    @staticmethod
    def _decoder_result(d, n):
        mistakes = n - d["correct"]
        return {"accuracy": d["correct"] / n, "ahc": d["dist"] / n,
                "mistake_severity": d["mistake_dist"] / mistakes if mistakes else float("nan")}
