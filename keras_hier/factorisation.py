"""The tree factorisation of a class similarity S (NumPy; no TensorFlow).

If S[y, j] depends on the tree only through the lowest common ancestor of y
and j (and, for path distances, the two leaf depths), then

    S[y, j] = column_scale[j] * (weights[y, 0]
              + sum_l weights[y, l + 1] * [anc_l(y) == anc_l(j)])

so sum_j S[y, j] v_j needs per-node sums of `column_scale * v` only:
O(C * depth) instead of the O(C^2) of a dense S. The factorised SimLoss,
soft labels and the expected-cost decoder use it (METHODS.md, "Tree
factorisation").

- `tree_factors(hierarchy, rule, beta, distance)`: the factors of
  `tree_similarity(hierarchy, rule, beta, distance)`;
- `TreeFactors`: the factors, with `dense()` (tests, small C) and `row_sums()`;
- `max_tree_distance(hierarchy, kind)`: the largest distance between two
  classes, O(C * depth) (soft labels divide by it, `"linear"` uses it).
"""

import numpy as np

from keras_hier.hierarchy import check_distance_kind
from keras_hier.similarity import TREE_RULES

__all__ = ["TreeFactors", "tree_factors", "max_tree_distance"]


class TreeFactors:
    """S written as per-level increments on shared ancestors.

    For classes y, j and the levels l = 0 .. depth - 1 of a `Hierarchy`:

        S[y, j] = column_scale[j] * (weights[y, 0]
                  + sum_l weights[y, l + 1] * [node_ids[y, l] == node_ids[j, l]])

    `weights[y, l + 1]` is 0 on levels below a shallow leaf (`level_mask`
    False). So sum_j S[y, j] v_j needs only per-node sums of
    column_scale * v (O(C * depth)), never the [C, C] matrix.

    Attributes:
        column_scale: float32 [C] (all ones when S depends only on the LCA).
        weights: float32 [C, depth + 1]; column 0 is the root term.
    """

    def __init__(self, column_scale, weights):
        self.column_scale = np.asarray(column_scale, dtype=np.float32)
        self.weights = np.asarray(weights, dtype=np.float32)

    def dense(self, hierarchy):
        """The [C, C] matrix these factors represent (O(C^2): tests, small C)."""
        ids, mask = hierarchy.node_ids, hierarchy.level_mask
        same = (ids[:, None, :] == ids[None, :, :]) & mask[:, None, :]  # [y, j, l]
        inner = self.weights[:, :1].astype(np.float64) + np.einsum(
            "yjl,yl->yj", same.astype(np.float64), self.weights[:, 1:].astype(np.float64))
        return (inner * self.column_scale[None, :]).astype(np.float32)

    def row_sums(self, hierarchy, values=None):
        """sum_j S[y, j] * values[j] for every class y (float64 [C]), O(C * depth)."""
        values = np.ones(hierarchy.num_classes) if values is None else np.asarray(values, dtype=np.float64)
        scaled = self.column_scale.astype(np.float64) * values
        out = self.weights[:, 0].astype(np.float64) * scaled.sum()
        for level in range(hierarchy.depth):
            ids = hierarchy.ancestors(level)
            node_total = np.bincount(ids, weights=scaled, minlength=hierarchy.num_nodes(level))
            out = out + self.weights[:, level + 1] * node_total[ids]
        return out


def _min_lca_depth(hierarchy):
    """Depth of the shallowest node with two or more children (0 = root)."""
    previous = 1
    for level, size in enumerate(hierarchy.level_sizes):
        if size > previous:
            return level
        previous = size
    return None  # a single class


def tree_factors(hierarchy, rule="exp", beta=1.0, distance="path"):
    """Factorises `tree_similarity(hierarchy, rule, beta, distance)` over the tree.

    - `distance="lca_height"`: S = g(height(lca)) depends only on the LCA
      node, so the weights are the increments of g along each class's path
      (any tree, `column_scale` = 1).
    - `distance="path"`, `rule="exp"`: exp(-beta t) with
      t = d_y + d_j - 2 d_lca = exp(-beta d_y) exp(-beta d_j) exp(2 beta d_lca):
      exact on ragged trees too (`column_scale[j]` = exp(-beta d_j)).
    - `distance="path"` with `"linear"` or a callable rule: t is a function of
      the LCA depth only on uniform trees; on ragged trees a `ValueError`
      points to the dense form (`SimLoss(tree_similarity(...))`).

    Args:
        hierarchy: a `keras_hier.Hierarchy`.
        rule, beta, distance: as in `tree_similarity`.

    Returns:
        A `TreeFactors`; `factors.dense(hierarchy)` equals
        `tree_similarity(hierarchy, rule, beta, distance)` (float32 rounding).

    Example:

    >>> from keras_hier import Hierarchy
    >>> from keras_hier.similarity import tree_similarity
    >>> h = Hierarchy.from_paths(["a/x", "a/y", "b"])
    >>> f = tree_factors(h, "exp", beta=1.0)
    >>> bool(np.allclose(f.dense(h), tree_similarity(h, "exp", 1.0)))
    True
    """
    check_distance_kind(distance, where="distance")
    if not (callable(rule) or rule in TREE_RULES):
        raise ValueError(f"unknown tree similarity rule {rule!r}; use one of {TREE_RULES} or a callable")
    if rule == "exp" and not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    num_classes, depth = hierarchy.num_classes, hierarchy.depth
    mask = np.asarray(hierarchy.level_mask)
    leaf_depths = np.asarray(hierarchy.leaf_depths, dtype=np.float64)
    if distance == "path" and rule == "exp":
        # exp(2 beta d_lca) = 1 + sum_{k=1}^{d_lca} (e^{2 beta k} - e^{2 beta (k - 1)}).
        k = np.arange(1, depth + 1, dtype=np.float64)
        increments = np.exp(2 * beta * k) - np.exp(2 * beta * (k - 1))
        scale_y = np.exp(-beta * leaf_depths)
        weights = np.concatenate([np.ones((num_classes, 1)), np.broadcast_to(increments, (num_classes, depth))], 1)
        weights = weights * scale_y[:, None]
        column_scale = np.exp(-beta * leaf_depths)
        if not np.all(np.isfinite(weights)) or weights.max() > 1e30:
            raise ValueError(f"beta={beta} with depth {depth} overflows the factorised form "
                             "(exp(beta * depth) too large); use the dense SimLoss(tree_similarity(...))")
    else:
        if distance == "path":
            if not hierarchy.is_uniform:
                raise ValueError(
                    f"rule {rule!r} on path distances factorises over the tree only when all leaves have the "
                    "same depth; this hierarchy is ragged. Use rule='exp' or distance='lca_height', or the "
                    "dense form SimLoss(tree_similarity(hierarchy, rule, ...)) for small C")
            # t = 2 (depth - d_lca) for the node at depth k.
            t_nodes = 2.0 * (depth - np.arange(depth + 1, dtype=np.float64))
            t = np.broadcast_to(t_nodes, (num_classes, depth + 1))
        else:
            t = hierarchy.ancestor_heights().astype(np.float64)
        t_max = float(max_tree_distance(hierarchy, distance))
        if callable(rule):
            g = np.asarray(rule(t), dtype=np.float64)
        elif rule == "exp":
            g = np.exp(-beta * t)
        else:
            g = 1.0 - t / t_max if t_max > 0 else np.ones_like(t)
        weights = np.concatenate([g[:, :1], np.diff(g, axis=1)], axis=1)
        column_scale = np.ones(num_classes)
    weights[:, 1:] = np.where(mask, weights[:, 1:], 0.0)
    if num_classes and np.all(column_scale == column_scale[0]):  # uniform tree: fold the constant in
        weights, column_scale = weights * column_scale[0], np.ones(num_classes)
    return TreeFactors(column_scale, weights)




def max_tree_distance(hierarchy, kind="path"):
    """The largest tree distance between two classes, without a [C, C] matrix.

    `"lca_height"`: the height of the shallowest node with two or more
    children. `"path"`: the longest leaf-to-leaf path, from the two deepest
    leaves under different children of every node; O(C * depth).

    Args:
        hierarchy: a `keras_hier.Hierarchy`.
        kind: `"path"` or `"lca_height"`.

    Returns:
        int, equal to `hierarchy.distance_matrix(kind).max()` (0 for one class).

    Example:

    >>> from keras_hier import Hierarchy
    >>> h = Hierarchy.from_paths(["a/b/x", "a/y", "z"])
    >>> max_tree_distance(h, "path"), max_tree_distance(h, "lca_height")
    (4, 3)
    """
    check_distance_kind(kind)
    branch = _min_lca_depth(hierarchy)
    if branch is None:
        return 0
    if kind == "lca_height":
        return int(hierarchy.depth - branch)
    leaf_depths = np.asarray(hierarchy.leaf_depths, dtype=np.int64)
    mask = np.asarray(hierarchy.level_mask)
    best = 0
    for level in range(hierarchy.depth):  # children at `level`, their parents at depth `level`
        real = mask[:, level]
        deepest = np.full(hierarchy.num_nodes(level), -1, dtype=np.int64)
        np.maximum.at(deepest, np.asarray(hierarchy.ancestors(level))[real], leaf_depths[real])
        nodes = np.flatnonzero(deepest >= 0)
        parent = np.asarray(hierarchy.parents(level), dtype=np.int64)[nodes]
        order = np.lexsort((-deepest[nodes], parent))
        parent, deepest = parent[order], deepest[nodes][order]
        # the first two children of each parent group are its two deepest subtrees
        first = np.flatnonzero(np.r_[True, parent[1:] != parent[:-1]])
        first = first[first + 1 < len(parent)]
        first = first[parent[first + 1] == parent[first]]
        if len(first):
            best = max(best, int(np.max(deepest[first] + deepest[first + 1])) - 2 * level)
    return best
