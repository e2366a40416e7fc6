"""Backend-agnostic numeric building blocks in `keras.ops`.

Everything here works on the TensorFlow, JAX and PyTorch backends. Losses,
heads, decoders and export call these functions instead of re-deriving them.

- `l2_normalize`: unit rows with an epsilon (zero vectors stay finite).
- `node_sums`: per-node sums over the class axis for every level of a
  `Hierarchy`, summed bottom-up (leaves -> parents -> ...), O(B * nodes).
- `node_logsumexp`: the same in log space, stable (one `exp` per call).
- `cosine_logits_matrix`, `normface_logits`, `proxydr_logits`: the logit forms
  of the heads, shared by `keras_hier.layers`, evaluation and export.
"""

import weakref

import keras
import numpy as np
from keras import ops

EPSILON = 1e-12
#: cos is clipped to [-1 + COS_CLIP, 1 - COS_CLIP] before arccos (finite gradient).
COS_CLIP = 1e-7
DISTANCES = ("chordal", "arccos")


def l2_normalize(x, axis=-1, epsilon=EPSILON):
    """Scales `x` to unit L2 norm along `axis`; a zero vector stays zero.

    Args:
        x: tensor.
        axis: axis to normalise.
        epsilon: added to the squared norm so zero vectors give no NaN.

    Returns:
        Tensor of the same shape and dtype as `x`.
    """
    squared = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared, ops.cast(epsilon, squared.dtype)))


# ---------------------------------------------------------------- tree sums
class TreePlan:
    """NumPy index tables for summing over the nodes of a `Hierarchy`.

    Built once per hierarchy (cached by `tree_plan`). Levels are nested
    partitions of the classes, so level l's sums are segment sums of level
    l + 1's sums: the whole pyramid costs O(B * num_node_ids), not
    O(B * C * depth).

    Attributes:
        num_classes, depth, level_sizes, offsets (first node id of each level),
        leaf_order (int32 [C]: class at each node of the deepest level),
        parents (list: parents[l] = int32 [level_sizes[l]] node ids at level
        l - 1; parents[0] is None), node_ids (int32 [C, depth]),
        level_mask (bool [C, depth]).
    """

    def __init__(self, hierarchy):
        depth = int(hierarchy.depth)
        ancestors = [np.asarray(hierarchy.ancestors(level), dtype=np.int32) for level in range(depth)]
        self.num_classes = int(hierarchy.num_classes)
        self.depth = depth
        self.level_sizes = tuple(int(hierarchy.num_nodes(level)) for level in range(depth))
        self.offsets = np.concatenate([[0], np.cumsum(self.level_sizes)[:-1]]).astype(np.int32)
        self.num_node_ids = int(sum(self.level_sizes))
        leaf = ancestors[-1]
        if self.level_sizes[-1] != self.num_classes:
            raise ValueError("the deepest level of the hierarchy must hold every class once")
        self.leaf_order = np.empty(self.num_classes, dtype=np.int32)
        self.leaf_order[leaf] = np.arange(self.num_classes, dtype=np.int32)
        self.parents = [None]
        for level in range(1, depth):
            parent = np.zeros(self.level_sizes[level], dtype=np.int32)
            parent[ancestors[level]] = ancestors[level - 1]
            if not np.array_equal(parent[ancestors[level]], ancestors[level - 1]):
                raise ValueError(f"level {level} of the hierarchy does not refine level {level - 1}")
            self.parents.append(parent)
        self.node_ids = np.asarray(hierarchy.node_ids, dtype=np.int32)
        self.level_mask = np.asarray(hierarchy.level_mask, dtype=bool)


_PLANS = {}


def tree_plan(hierarchy):
    """The cached `TreePlan` of `hierarchy` (a `TreePlan` is returned as is)."""
    if isinstance(hierarchy, TreePlan):
        return hierarchy
    entry = _PLANS.get(id(hierarchy))
    if entry is not None and entry[0]() is hierarchy:
        return entry[1]
    plan = TreePlan(hierarchy)
    try:
        reference = weakref.ref(hierarchy, lambda _, key=id(hierarchy): _PLANS.pop(key, None))
    except TypeError:  # not weak-referenceable: no cache
        return plan
    _PLANS[id(hierarchy)] = (reference, plan)
    return plan


def node_sums_transposed(values_t, hierarchy):
    """`node_sums` on the transposed layout: [C, ...] -> [num_node_ids, ...].

    Args:
        values_t: tensor whose first axis is the class axis (C).
        hierarchy: a `Hierarchy` or its `TreePlan`.

    Returns:
        Tensor [num_node_ids, ...]; row `node_ids[c, l]` is the sum over the
        classes under class c's ancestor at level l.
    """
    plan = tree_plan(hierarchy)
    level = ops.take(values_t, plan.leaf_order, axis=0)
    levels = [level]
    for depth_index in range(plan.depth - 1, 0, -1):
        level = ops.segment_sum(level, plan.parents[depth_index], num_segments=plan.level_sizes[depth_index - 1])
        levels.append(level)
    levels.reverse()
    return levels[0] if len(levels) == 1 else ops.concatenate(levels, axis=0)


def node_sums(values, hierarchy):
    """Sums `values` over the leaves under every node of every level.

    Args:
        values: [B, C] tensor (e.g. probabilities).
        hierarchy: a `keras_hier.Hierarchy` with C classes (or its `TreePlan`).

    Returns:
        [B, hierarchy.num_node_ids] tensor; column `hierarchy.node_ids[c, l]`
        holds the sum of `values` over the classes under class c's ancestor at
        level l. Summed bottom-up, O(B * num_node_ids); no [C, C] matrix.

    Example:

    >>> from keras_hier import Hierarchy
    >>> h = Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> keras.ops.convert_to_numpy(node_sums(np.array([[1., 2., 4.]]), h)).tolist()
    [[3.0, 4.0, 1.0, 2.0, 4.0]]
    """
    return ops.transpose(node_sums_transposed(ops.transpose(values), hierarchy))


def gather_path_sums(sums_t, node_index):
    """Picks, for every sample b, the rows `node_index[b, :]` of column b.

    Args:
        sums_t: [N, B] tensor (output of `node_sums_transposed`).
        node_index: int [B, K] node ids per sample.

    Returns:
        [B, K] tensor `sums_t[node_index[b, k], b]`.
    """
    batch = ops.shape(sums_t)[1]
    columns = ops.expand_dims(ops.arange(batch, dtype="int32"), 1)
    flat_index = ops.cast(node_index, "int32") * ops.cast(batch, "int32") + columns
    return ops.take(ops.reshape(sums_t, (-1,)), flat_index)


def node_logsumexp(logits, hierarchy):
    """Stable log-sum-exp of `logits` over the classes under every node.

    Uses one shift per row (the row maximum) and one `exp`; a node whose
    classes all lie more than ~87 below the row maximum gets -inf.

    Args:
        logits: [B, C] float tensor.
        hierarchy: a `Hierarchy` or its `TreePlan`.

    Returns:
        [B, num_node_ids] float tensor: log sum_{c under node} exp(logits_c).
    """
    shift = ops.stop_gradient(ops.max(logits, axis=-1, keepdims=True))
    sums = node_sums(ops.exp(logits - shift), hierarchy)
    return ops.log(sums) + shift


# --------------------------------------------------------------- logit forms
def check_distance(distance):
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    return distance


def cosine_logits_matrix(embeddings, proxies):
    """cos between every embedding and every proxy, float32 [B, C].

    Both inputs are L2-normalised here (with epsilon), so zero rows give 0.
    """
    x = l2_normalize(float32(embeddings))
    w = l2_normalize(float32(proxies))
    return ops.matmul(x, ops.transpose(w))


def squared_distance(cosine, distance="chordal"):
    """Squared distance on the unit sphere from cos: d^2 = 2 - 2 cos (chordal)
    or theta^2 with theta = arccos(clip(cos)) (arccos)."""
    if check_distance(distance) == "chordal":
        return ops.maximum(2.0 - 2.0 * cosine, 0.0)
    theta = ops.arccos(ops.clip(cosine, -1.0 + COS_CLIP, 1.0 - COS_CLIP))
    return ops.square(theta)


def normface_logits(embeddings, proxies, scale, distance="chordal"):
    """NormFace logits z_c = s - (s/2) d_c^2, float32 [B, C].

    With the chordal distance (d^2 = 2 - 2 cos) this is s * cos_c; with
    `"arccos"` it is s * (1 - theta_c^2 / 2).

    Args:
        embeddings: [B, D] (any float dtype; computed in float32).
        proxies: [C, D] class proxies (normalised here).
        scale: s, a float or scalar tensor.
        distance: `"chordal"` or `"arccos"`.

    Returns:
        float32 [B, C].
    """
    cosine = cosine_logits_matrix(embeddings, proxies)
    s = float32(scale)
    if check_distance(distance) == "chordal":
        return s * cosine
    return s - 0.5 * s * squared_distance(cosine, distance)


def proxydr_logits(embeddings, proxies, scale, distance="chordal", epsilon=EPSILON):
    """ProxyDR logits z_c = -(s/2) ln(d_c^2 + eps), i.e. p(c|x) ~ d_c^(-s).

    Args:
        embeddings: [B, D] (computed in float32).
        proxies: [C, D] class proxies (normalised here).
        scale: s, a float or scalar tensor.
        distance: `"chordal"` (d^2 = 2 - 2 cos) or `"arccos"` (d = theta).
        epsilon: added to d^2; caps a logit at -(s/2) ln(eps) (138 for s = 10).

    Returns:
        float32 [B, C].
    """
    d2 = squared_distance(cosine_logits_matrix(embeddings, proxies), distance)
    return -0.5 * float32(scale) * ops.log(d2 + epsilon)


def float32(x):
    """Casts to float32 (logits and losses are float32 under mixed precision)."""
    return ops.cast(ops.convert_to_tensor(x), "float32")


__all__ = ["l2_normalize", "node_sums", "node_sums_transposed", "node_logsumexp", "gather_path_sums",
           "tree_plan", "TreePlan", "cosine_logits_matrix", "squared_distance", "normface_logits",
           "proxydr_logits", "float32", "EPSILON", "DISTANCES", "keras"]
