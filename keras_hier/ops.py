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

    Built once per hierarchy (cached by `tree_plan`). A node with a single
    child (a chain node, or a shallow leaf repeated on deeper levels) has the
    same sum as that child, so only the classes and the M branching nodes
    (two or more children) are summed. Every class is added to its nearest
    branching ancestor by one segment sum over the class axis (no gather);
    then, deepest first, each branching node adds the sums of its branching
    children. O(B * (C + M)) work, M < C, whatever the depth.

    Attributes:
        num_classes, depth, level_sizes, num_node_ids, node_ids (int32
        [C, depth]), level_mask (bool [C, depth]);
        num_branching: M; leaf_segment: int32 [C], the index in 0..M - 1 of
        each class's nearest branching ancestor (M: none but the root);
        stages: per branching level (deepest first) `(start, stop, parts)`:
        the stage's nodes are branching indices start..stop - 1, parts =
        [(stage, rows, segments)]: rows of an earlier stage's table added to
        the nodes `segments` of this one;
        node_table, node_row: int32 [num_node_ids]: where each node's sum is
        (table 0 = the classes, table k >= 1 = stage k - 1).
    """

    def __init__(self, hierarchy):
        depth = int(hierarchy.depth)
        ancestors = [np.asarray(hierarchy.ancestors(level), dtype=np.int64) for level in range(depth)]
        self.num_classes = int(hierarchy.num_classes)
        self.depth = depth
        self.level_sizes = tuple(int(hierarchy.num_nodes(level)) for level in range(depth))
        offsets = np.concatenate([[0], np.cumsum(self.level_sizes)[:-1]]).astype(np.int64)
        self.num_node_ids = int(sum(self.level_sizes))
        self.node_ids = np.asarray(hierarchy.node_ids, dtype=np.int32)
        self.level_mask = np.asarray(hierarchy.level_mask, dtype=bool)
        if self.level_sizes[-1] != self.num_classes:
            raise ValueError("the deepest level of the hierarchy must hold every class once")
        # representative (table, row) of every node, deepest level first
        table = np.zeros(self.num_node_ids, dtype=np.int64)
        row = np.zeros(self.num_node_ids, dtype=np.int64)
        row[offsets[-1] + ancestors[-1]] = np.arange(self.num_classes)
        leaf_parent = []  # (class rows, global branching index) pairs
        raw_stages = []
        num_branching = 0
        for level in range(depth - 2, -1, -1):
            size = self.level_sizes[level]
            parent = np.zeros(self.level_sizes[level + 1], dtype=np.int64)
            parent[ancestors[level + 1]] = ancestors[level]
            if not np.array_equal(parent[ancestors[level + 1]], ancestors[level]):
                raise ValueError(f"level {level + 1} of the hierarchy does not refine level {level}")
            children = np.bincount(parent, minlength=size)
            child_ids = offsets[level + 1] + np.arange(self.level_sizes[level + 1])
            only_child = np.zeros(size, dtype=np.int64)
            only_child[parent] = child_ids
            chain = np.flatnonzero(children == 1)
            table[offsets[level] + chain] = table[only_child[chain]]
            row[offsets[level] + chain] = row[only_child[chain]]
            branching = np.flatnonzero(children >= 2)
            if not len(branching):
                continue
            position = np.full(size, -1, dtype=np.int64)
            position[branching] = np.arange(len(branching))
            into = position[parent]
            use = into >= 0
            from_leaves = use & (table[child_ids] == 0)
            leaf_parent.append((row[child_ids[from_leaves]], num_branching + into[from_leaves]))
            parts = []
            for source in np.unique(table[child_ids[use]]):
                if source == 0:
                    continue
                pick = use & (table[child_ids] == source)
                parts.append((int(source) - 1, row[child_ids[pick]].astype(np.int32), into[pick].astype(np.int32)))
            raw_stages.append((num_branching, num_branching + len(branching), parts))
            num_branching += len(branching)
            table[offsets[level] + branching] = len(raw_stages)
            row[offsets[level] + branching] = np.arange(len(branching))
        self.num_branching = num_branching
        self.leaf_segment = np.full(self.num_classes, num_branching, dtype=np.int32)
        for rows, segments in leaf_parent:
            self.leaf_segment[rows] = segments
        self.stages = raw_stages
        self.node_table, self.node_row = table.astype(np.int32), row.astype(np.int32)
        sizes = [self.num_classes] + [stop - start for start, stop, _ in self.stages]
        table_offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.node_global_row = (table_offsets[table] + row).astype(np.int32)
        self.path_table = self.node_table[self.node_ids]  # [C, depth]
        self.path_row = self.node_row[self.node_ids]


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


def node_tables(values_t, hierarchy):
    """Sums of `values_t` [C, ...] at the classes and every branching node.

    Returns:
        list of tensors: table 0 is `values_t`, table k >= 1 [M_k, ...] holds
        the sums of the branching nodes of `plan.stages[k - 1]`.
    """
    plan = tree_plan(hierarchy)
    tables = [values_t]
    if not plan.num_branching:
        return tables
    direct = ops.segment_sum(values_t, plan.leaf_segment, num_segments=plan.num_branching + 1)
    for start, stop, parts in plan.stages:
        total = direct[start:stop]
        for source, rows, segments in parts:
            part = ops.take(tables[source + 1], rows, axis=0)
            total = total + ops.segment_sum(part, segments, num_segments=stop - start)
        tables.append(total)
    return tables


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
    tables = node_tables(values_t, plan)
    stacked = tables[0] if len(tables) == 1 else ops.concatenate(tables, axis=0)
    return ops.take(stacked, plan.node_global_row, axis=0)


def node_sums(values, hierarchy):
    """Sums `values` over the leaves under every node of every level.

    Args:
        values: [B, C] tensor (e.g. probabilities).
        hierarchy: a `keras_hier.Hierarchy` with C classes (or its `TreePlan`).

    Returns:
        [B, hierarchy.num_node_ids] tensor; column `hierarchy.node_ids[c, l]`
        holds the sum of `values` over the classes under class c's ancestor at
        level l. Summed bottom-up over the branching nodes only,
        O(B * C); no [C, C] matrix.

    Example:

    >>> from keras_hier import Hierarchy
    >>> h = Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> keras.ops.convert_to_numpy(node_sums(np.array([[1., 2., 4.]]), h)).tolist()
    [[3.0, 4.0, 1.0, 2.0, 4.0]]
    """
    return ops.transpose(node_sums_transposed(ops.transpose(values), hierarchy))


def path_sums(values, labels, hierarchy):
    """For every sample, the sums of `values` under each node on its label's path.

    Args:
        values: [B, C] tensor.
        labels: int [B] class ids.
        hierarchy: a `Hierarchy` or its `TreePlan`.

    Returns:
        [B, depth] tensor: column l is the sum over the classes under
        anc_l(label) (the label itself on levels below a shallow leaf).
        Only the classes and the branching nodes are summed (O(B * C)).
    """
    plan = tree_plan(hierarchy)
    tables = node_tables(ops.transpose(values), plan)
    batch = ops.shape(values)[0]
    columns = ops.expand_dims(ops.arange(batch, dtype="int32"), 1)
    table_of = ops.take(plan.path_table, labels, axis=0)  # [B, depth]
    flat = ops.take(plan.path_row, labels, axis=0) * ops.cast(batch, "int32") + columns
    out = None
    for source, table in enumerate(tables):
        picked = ops.take(ops.reshape(table, (-1,)), ops.where(table_of == source, flat, 0))
        picked = ops.where(table_of == source, picked, ops.zeros_like(picked))
        out = picked if out is None else out + picked
    return out


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


__all__ = ["l2_normalize", "node_sums", "node_sums_transposed", "node_tables", "path_sums", "node_logsumexp",
           "tree_plan", "TreePlan", "cosine_logits_matrix", "squared_distance", "normface_logits",
           "proxydr_logits", "float32", "EPSILON", "DISTANCES", "keras"]
