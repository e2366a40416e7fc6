"""Tree distances of given class pairs and per-class distance counts, without a C x C matrix.

Evaluation at ImageNet-21k / iNaturalist scale (C = 100 000 classes) cannot
hold `Hierarchy.distance_matrix` (40 GB of int32). Everything the measures
need is one of two things, both computed from the ancestor tables in
O(depth) per pair or O(depth^2) per class:

- `pair_distances(h, a, b, kind)`: t(a_i, b_i) for arrays of class ids
  (`Hierarchy.distance` when the hierarchy has it);
- `distance_histogram(h, classes, weights, kind)`: for each given class y,
  the (weighted) number of classes at every distance v from y, i.e. the
  histogram of row y of the distance matrix. HP@k's radius, the best
  possible HS@k ranking and the Spearman tie ceilings only depend on it.

NumPy only; importing this module does not import TensorFlow.
"""

import numpy as np

__all__ = ["DISTANCE_KINDS", "check_distance_kind", "pair_distances", "distance_histogram",
           "kth_smallest_distance", "tie_ceiling"]

from keras_hier.hierarchy import DISTANCE_KINDS, check_distance_kind


def pair_distances(hierarchy, a, b, kind="path"):
    """Tree distance between classes a[i] and b[i] (int32, broadcast shape of a and b).

    `"path"`: edges between the leaves, d(a) + d(b) - 2 depth(lca);
    `"lca_height"`: height of the lowest common ancestor (0 when a == b).
    O(depth) per pair, no C x C matrix (`Hierarchy.distance`, the one home
    of tree distances).

    Example:

    >>> import keras_hier
    >>> h = keras_hier.Hierarchy.from_paths(["a/x", "a/y", "b/z/w"])
    >>> pair_distances(h, [0, 0, 2], [1, 2, 2]).tolist()
    [2, 5, 0]
    """
    a, b = np.broadcast_arrays(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))
    return np.asarray(hierarchy.distance(a, b, kind=check_distance_kind(kind)), dtype=np.int32).reshape(a.shape)


def _node_counts(hierarchy, level, weights):
    """[num_nodes(level), depth]: weight of the classes under each real node, by leaf depth."""
    depth = hierarchy.depth
    leaf = np.asarray(hierarchy.leaf_depths) - 1
    if level < 0:  # the root
        out = np.zeros((1, depth))
        np.add.at(out[0], leaf, weights)
        return out
    real = np.asarray(hierarchy.level_mask)[:, level]
    anc = np.asarray(hierarchy.ancestors(level))
    out = np.zeros((hierarchy.num_nodes(level), depth))
    np.add.at(out, (anc[real], leaf[real]), weights[real])
    return out


def distance_histogram(hierarchy, classes=None, weights=None, kind="path"):
    """Weighted count of the classes at every tree distance from each given class.

    counts[i, v] = sum of weights[j] over the classes j with t(classes[i], j) = v,
    j = classes[i] included (at v = 0). With unit weights row i is the
    histogram of row classes[i] of `distance_matrix(kind)`; with per-class
    sample counts it counts samples. O(len(classes) * depth^2), no C x C matrix.

    Args:
        hierarchy: a `keras_hier.Hierarchy`.
        classes: class ids (default: all classes).
        weights: [C] non-negative weight per class (default: 1).
        kind: `"path"` or `"lca_height"`.

    Returns:
        float64 [len(classes), max_distance + 1] (max_distance = 2 * depth for
        `"path"`, depth for `"lca_height"`).

    Example:

    >>> import keras_hier
    >>> h = keras_hier.Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> distance_histogram(h, [0]).tolist()
    [[1.0, 0.0, 1.0, 0.0, 1.0]]
    """
    check_distance_kind(kind)
    c, depth = hierarchy.num_classes, hierarchy.depth
    classes = np.arange(c) if classes is None else np.asarray(classes, dtype=np.int64).ravel()
    w = np.ones(c) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (c,):
        raise ValueError(f"weights must be [num_classes={c}], got shape {w.shape}")
    d = np.asarray(hierarchy.leaf_depths)[classes]
    heights = np.asarray(hierarchy.ancestor_heights())[classes] if kind == "lca_height" else None
    counts = np.zeros((classes.size, (2 * depth if kind == "path" else depth) + 1))
    e = np.arange(1, depth + 1)
    upper = _node_counts(hierarchy, -1, w)
    for lca in range(depth + 1):  # lca = depth of the common ancestor (0 = root)
        lower = _node_counts(hierarchy, lca, w) if lca < depth else None
        rows = np.flatnonzero(d >= lca)
        above = upper[np.zeros(rows.size, dtype=np.int64) if lca == 0
                      else np.asarray(hierarchy.ancestors(lca - 1))[classes[rows]]]
        below = np.zeros_like(above)
        deeper = d[rows] > lca
        if lower is not None and deeper.any():
            below[deeper] = lower[np.asarray(hierarchy.ancestors(lca))[classes[rows[deeper]]]]
        here = above - below  # [rows, depth]: classes whose lca with y is at this depth, by leaf depth
        if kind == "path":
            counts[rows[:, None], d[rows, None] + e[None, :] - 2 * lca] += here
        else:
            h = np.where(d[rows] == lca, 0, heights[rows, lca])
            counts[rows, h] += here.sum(axis=1)
        upper = lower
    return counts


def kth_smallest_distance(counts, k):
    """The k-th smallest distance (1-based k, per row) of distance histograms (int [n])."""
    cum = np.cumsum(counts, axis=1)
    k = np.broadcast_to(np.asarray(k, dtype=np.float64), (counts.shape[0],))
    return np.argmax(cum >= k[:, None] - 1e-9, axis=1)


def tie_ceiling(group_sizes):
    """Largest Spearman correlation a tie-free variable can have with one whose ties are `group_sizes`.

    Ordinal ranks r (any tie-break) against average ranks a: cov(r, a) = var(a),
    so the correlation is sd(a) / sd(r) = sqrt(1 - sum(n^3 - n) / (N^3 - N))
    over the tie groups n (N = sum n). Works row-wise on [..., groups] arrays.

    Example:

    >>> round(float(tie_ceiling([1, 1, 2])), 6)
    0.948683
    """
    n = np.asarray(group_sizes, dtype=np.float64)
    total = n.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(np.maximum(1.0 - (n ** 3 - n).sum(axis=-1) / (total ** 3 - total), 0.0))
