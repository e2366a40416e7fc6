"""Hierarchy-consistent predictions: node marginals, decoders, back-off.

All math is in `keras.ops`, so a decoder traces into a `tf.function` (that is
how `keras_hier.export` puts it into a SavedModel) and runs on any backend.

- Node marginals: the probability of a node is the sum of the probabilities of
  the classes (leaves) under it. They are summed bottom-up, level by level,
  with segment sums (no [C, C] matrix), so a parent's marginal is never below
  its child's, even after float rounding.
- `argmax`: the most probable class and its ancestor chain.
- `expected_cost` (CRM, Karthik et al. 2021): the class j minimising
  sum_i cost(i, j) p_i for a tree cost, factorised per level (see
  `expected_cost`).
- Back-off: the deepest node on the chosen chain whose marginal reaches a
  threshold (root when none does), with its level.
"""

import functools

import numpy as np
from keras import ops

from keras_hier.hierarchy import Hierarchy

__all__ = ["DECODERS", "COSTS", "ROOT_NAME", "node_marginals", "level_marginals", "expected_cost", "decode",
           "check_hierarchy"]

DECODERS = ("argmax", "expected_cost")
COSTS = ("path", "lca_height")
#: Name reported for the implicit root when back-off reaches it (level -1).
ROOT_NAME = "<root>"


def check_hierarchy(hierarchy, where="hierarchy"):
    """Raises `TypeError` unless `hierarchy` is a `keras_hier.Hierarchy`."""
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError(f"{where} must be a keras_hier.Hierarchy, got {type(hierarchy).__name__}")
    return hierarchy


@functools.lru_cache(maxsize=16)
def _tables(hierarchy):
    """NumPy tables the decoders need (cached per hierarchy; it is immutable)."""
    depth, num_classes = hierarchy.depth, hierarchy.num_classes
    ancestors = [np.asarray(hierarchy.ancestors(level), dtype=np.int32) for level in range(depth)]
    sizes = [int(hierarchy.num_nodes(level)) for level in range(depth)]
    # parents[l][n] = node id at level l - 1 of node n at level l (l >= 1).
    parents = [None]
    for level in range(1, depth):
        parent = np.zeros(sizes[level], dtype=np.int32)
        parent[ancestors[level]] = ancestors[level - 1]
        parents.append(parent)
    # The class level is a permutation of the class ids: class c sits at node leaf_order^-1[c].
    leaf_nodes = ancestors[-1]
    leaf_order = np.empty(num_classes, dtype=np.int32)
    leaf_order[leaf_nodes] = np.arange(num_classes, dtype=np.int32)
    leaf_depths = np.asarray(hierarchy.leaf_depths, dtype=np.int32)
    mask = np.asarray(hierarchy.level_mask, dtype=bool)
    # Node heights (longest downward path to a leaf) for the lca_height cost.
    heights = []
    for level in range(depth):
        deepest = np.zeros(sizes[level], dtype=np.int32)
        np.maximum.at(deepest, ancestors[level], leaf_depths)
        heights.append(deepest - (level + 1))
    return {"ancestors": ancestors, "sizes": sizes, "parents": parents, "leaf_order": leaf_order,
            "leaf_is_identity": bool(np.array_equal(leaf_nodes, np.arange(num_classes))),
            "leaf_depths": leaf_depths, "mask": mask, "heights": heights, "root_height": int(depth)}


def _cost_weights(hierarchy, cost):
    """Weights of the factorised expected cost, one per node of every level.

    E_j = bias[j] + e_coef * sum_i p_i d_i + sum_{l} weights[l][anc_l(j)] * P_l(anc_l(j)),
    where copies of shallow leaves (levels below their depth) weigh 0. A weight
    depends only on the node (and its parent), so the sum over levels is a
    cumulative sum down the tree on node arrays, gathered to the classes once.
    """
    t = _tables(hierarchy)
    depth = hierarchy.depth
    real = []  # real[l][n]: node n of level l is on the path of its classes (not a copy)
    for level in range(depth):
        flags = np.zeros(t["sizes"][level], dtype=bool)
        flags[t["ancestors"][level]] = t["mask"][:, level]
        real.append(flags)
    if cost == "path":
        # t(i, j) = d_i + d_j - 2 lca_depth(i, j) and
        # sum_i p_i lca_depth(i, j) = sum_{l < d_j} P_l(anc_l(j)).
        weights = [np.where(flags, -2.0, 0.0).astype(np.float32) for flags in real]
        return t["leaf_depths"].astype(np.float32), 1.0, weights
    if cost == "lca_height":
        # lca(i, j) is the deepest node of j's chain that holds i; along the chain
        # root = a_{-1}, a_0, ..., a_{d_j - 1} = j the height only decreases, so
        # sum_i p_i h(lca) = h(root) + sum_{l < d_j} (h(a_l) - h(a_{l-1})) P_l(a_l).
        weights = []
        for level in range(depth):
            parent_height = (np.full(t["sizes"][0], t["root_height"]) if level == 0
                             else t["heights"][level - 1][t["parents"][level]])
            weights.append(np.where(real[level], t["heights"][level] - parent_height, 0).astype(np.float32))
        bias = np.full(hierarchy.num_classes, t["root_height"], dtype=np.float32)
        return bias, 0.0, weights
    raise ValueError(f"unknown cost {cost!r}; use one of {COSTS}")


def _check_scores(scores, hierarchy, where):
    shape = tuple(scores.shape)
    if len(shape) != 2 or (shape[-1] is not None and shape[-1] != hierarchy.num_classes):
        raise ValueError(f"{where}: expected scores of shape [batch, {hierarchy.num_classes}] "
                         f"(one column per class of the hierarchy), got shape {shape}")


def level_marginals(probabilities, hierarchy):
    """Probability of every node, one tensor per level (summed bottom-up).

    Level `depth - 1` is the class level (node order of
    `hierarchy.ancestors(-1)`); level l is the segment sum of level l + 1 over
    the parent links. Because each parent adds up its children's values (all
    non-negative), a parent's marginal is never below a child's, even in
    float32.

    Args:
        probabilities: [B, C] class probabilities.
        hierarchy: `keras_hier.Hierarchy` with C classes.

    Returns:
        List of `depth` float32 tensors, [B, num_nodes(l)] each.

    Example:

    >>> h = Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> [np.asarray(m, "float64").round(3).tolist() for m in level_marginals(np.array([[0.2, 0.3, 0.5]]), h)]
    [[[0.5, 0.5]], [[0.2, 0.3, 0.5]]]
    """
    check_hierarchy(hierarchy)
    probabilities = ops.cast(ops.convert_to_tensor(probabilities), "float32")
    _check_scores(probabilities, hierarchy, "level_marginals")
    t = _tables(hierarchy)
    leaf_level = probabilities if t["leaf_is_identity"] else ops.take(probabilities, t["leaf_order"], axis=1)
    current = ops.transpose(leaf_level)  # [nodes, B]: segment sums reduce axis 0
    levels = [current]
    for level in range(hierarchy.depth - 1, 0, -1):
        current = ops.segment_sum(current, t["parents"][level], num_segments=t["sizes"][level - 1])
        levels.append(current)
    return [ops.transpose(m) for m in reversed(levels)]


def node_marginals(probabilities, hierarchy):
    """Probability of every node of every level, indexed by `hierarchy.node_ids`.

    Same values (up to float rounding) as `keras_hier.ops.node_sums`, but summed
    bottom-up so that parent >= child holds exactly.

    Args:
        probabilities: [B, C] class probabilities (e.g. `softmax(logits)`).
        hierarchy: `keras_hier.Hierarchy` with C classes.

    Returns:
        float32 [B, hierarchy.num_node_ids]; column `hierarchy.node_ids[c, l]`
        is the probability of class c's ancestor at level l.

    Example:

    >>> h = Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> np.asarray(node_marginals(np.array([[0.2, 0.3, 0.5]]), h), "float64").round(3).tolist()
    [[0.5, 0.5, 0.2, 0.3, 0.5]]
    """
    return ops.concatenate(level_marginals(probabilities, hierarchy), axis=1)


def expected_cost(probabilities, hierarchy, cost="path", levels=None):
    """Expected tree cost of predicting each class: E_j = sum_i cost(i, j) p_i.

    Factorised per level, O(B * C * depth), no [C, C] matrix:
    - `"path"` (edges between leaves): E_j = E[d] + d_j - 2 sum_{l < d_j}
      P_l(anc_l(j)), with d the leaf depths and P_l the level-l marginals;
    - `"lca_height"` (height of the lowest common ancestor, "Making Better
      Mistakes"): E_j = h(root) + sum_{l < d_j} (h(anc_l(j)) - h(anc_{l-1}(j)))
      P_l(anc_l(j)), since the LCA is the deepest node of j's chain holding i.

    Args:
        probabilities: [B, C] class probabilities.
        hierarchy: `keras_hier.Hierarchy`.
        cost: `"path"` or `"lca_height"` (`Hierarchy.distance_matrix` kinds).
        levels: optional output of `level_marginals` (to avoid recomputing it).

    Returns:
        float32 [B, C] expected costs.

    Example:

    >>> h = Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> np.asarray(expected_cost(np.array([[0.4, 0.2, 0.4]]), h), "float64").round(3).tolist()
    [[2.0, 2.4, 2.4]]
    """
    check_hierarchy(hierarchy)
    if cost not in COSTS:
        raise ValueError(f"unknown cost {cost!r}; use one of {COSTS}")
    probabilities = ops.cast(ops.convert_to_tensor(probabilities), "float32")
    _check_scores(probabilities, hierarchy, "expected_cost")
    if levels is None:
        levels = level_marginals(probabilities, hierarchy)
    bias, e_coef, weights = _cost_weights(hierarchy, cost)
    t = _tables(hierarchy)
    running = levels[0] * ops.convert_to_tensor(weights[0])
    for level in range(1, hierarchy.depth):
        running = ops.take(running, t["parents"][level], axis=1) + levels[level] * ops.convert_to_tensor(weights[level])
    total = _to_class_order(running, t) + ops.expand_dims(ops.convert_to_tensor(bias), 0)
    if e_coef:
        depths = ops.convert_to_tensor(t["leaf_depths"].astype(np.float32))
        total = total + e_coef * ops.sum(probabilities * depths, axis=1, keepdims=True)
    return total


def _to_class_order(leaf_level, t):
    """[B, C] class-level node values -> class-id order (the identity for the usual numbering)."""
    if t["leaf_is_identity"]:
        return leaf_level
    return ops.take(leaf_level, t["ancestors"][-1], axis=1)


def decode(scores, hierarchy, decoder="argmax", *, from_logits=True, cost="path", backoff_threshold=None,
           top_k=None):
    """Hierarchy-consistent predictions from class scores.

    Args:
        scores: [B, C] logits (`from_logits=True`) or probabilities.
        hierarchy: `keras_hier.Hierarchy` with C classes.
        decoder: `"argmax"` (most probable class) or `"expected_cost"` (the
            class with the smallest expected tree cost, see `expected_cost`).
        from_logits: whether `scores` are logits (softmax applied here).
        cost: tree cost of the `expected_cost` decoder (`"path"` or
            `"lca_height"`).
        backoff_threshold: optional float in (0, 1]; adds the back-off outputs.
        top_k: optional int; adds the k best classes. They are ranked by the
            decoder: by probability for `argmax`, by increasing expected cost
            for `expected_cost`.

    Returns:
        Dict of tensors:
        - `class_ids` int32 [B]; `scores` float32 [B] (probability of that class);
        - `level_ids` int32 [B, depth]: the class's ancestor id at every level
          (`hierarchy.ancestors(l)[class_ids]`), `level_scores` float32
          [B, depth]: their marginals;
        - `probabilities` float32 [B, C];
        - with `top_k`: `top_k_ids` int32 [B, k], `top_k_scores` float32 [B, k]
          (probabilities of those classes);
        - with `backoff_threshold`: `prediction_level` int32 [B] (deepest level
          on the chain whose marginal is >= the threshold; -1 = the root),
          `prediction_node` int32 [B] (its id in `hierarchy.node_ids`
          numbering, -1 for the root) and `prediction_score` float32 [B]
          (its marginal; 1 for the root).

    Example:

    >>> h = Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> out = decode(np.log(np.array([[0.3, 0.3, 0.4]])), h, backoff_threshold=0.5)
    >>> int(out["class_ids"][0]), int(out["prediction_level"][0])
    (2, -1)
    """
    check_hierarchy(hierarchy)
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; use one of {DECODERS}")
    if cost not in COSTS:
        raise ValueError(f"unknown cost {cost!r}; use one of {COSTS}")
    if backoff_threshold is not None:
        if isinstance(backoff_threshold, bool) or not isinstance(backoff_threshold, (int, float, np.floating)) \
                or not 0.0 < float(backoff_threshold) <= 1.0:
            raise ValueError(f"backoff_threshold must be a float in (0, 1], got {backoff_threshold!r}")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        top_k = int(min(top_k, hierarchy.num_classes))
    scores = ops.cast(ops.convert_to_tensor(scores), "float32")
    _check_scores(scores, hierarchy, "decode")
    probabilities = ops.softmax(scores, axis=-1) if from_logits else scores
    levels = level_marginals(probabilities, hierarchy)
    t = _tables(hierarchy)

    if decoder == "argmax":
        ranking = probabilities
    else:
        ranking = -expected_cost(probabilities, hierarchy, cost=cost, levels=levels)
    class_ids = ops.cast(ops.argmax(ranking, axis=-1), "int32")
    out = {"class_ids": class_ids, "probabilities": probabilities,
           "scores": ops.take_along_axis(probabilities, ops.expand_dims(class_ids, 1), axis=1)[:, 0]}
    level_ids, level_scores = [], []
    for level in range(hierarchy.depth):
        ids = ops.take(ops.convert_to_tensor(t["ancestors"][level]), class_ids, axis=0)
        level_ids.append(ids)
        level_scores.append(ops.take_along_axis(levels[level], ops.expand_dims(ids, 1), axis=1)[:, 0])
    out["level_ids"] = ops.stack(level_ids, axis=1)
    out["level_scores"] = ops.stack(level_scores, axis=1)

    if top_k is not None:
        _, top_ids = ops.top_k(ranking, k=top_k)
        top_ids = ops.cast(top_ids, "int32")
        out["top_k_ids"] = top_ids
        out["top_k_scores"] = ops.take_along_axis(probabilities, top_ids, axis=1)

    if backoff_threshold is not None:
        real = ops.take(ops.convert_to_tensor(t["mask"]), class_ids, axis=0)  # [B, depth]
        reaches = ops.logical_and(real, out["level_scores"] >= float(backoff_threshold))
        level_index = ops.convert_to_tensor(np.arange(hierarchy.depth, dtype=np.int32))
        chosen = ops.max(ops.where(reaches, level_index[None, :], -1), axis=1)
        chosen = ops.cast(chosen, "int32")
        safe = ops.maximum(chosen, 0)
        offsets = ops.convert_to_tensor(np.concatenate([[0], np.cumsum(t["sizes"])[:-1]]).astype(np.int32))
        node = ops.take_along_axis(out["level_ids"], ops.expand_dims(safe, 1), axis=1)[:, 0] \
            + ops.take(offsets, safe, axis=0)
        score = ops.take_along_axis(out["level_scores"], ops.expand_dims(safe, 1), axis=1)[:, 0]
        at_root = chosen < 0
        out["prediction_level"] = chosen
        out["prediction_node"] = ops.where(at_root, -1, node)
        out["prediction_score"] = ops.where(at_root, 1.0, score)
    return out
