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
    same sum as that child, so only the classes and the M < C branching nodes
    (two or more children) are summed. Two schedules give the same sums:

    - `"cascade"` (large trees): every class is added to its nearest
      branching ancestor by one segment sum over the class axis (on
      TensorFlow a sorted one over the classes in `class_order`),
      then, deepest first, each branching node adds its branching children
      (`stages`: `(start, stop, parts)`, parts = `(stage, rows, segments)`):
      O(B * (C + M)) work whatever the depth;
    - `"flat"` (small trees, where the number of ops dominates): one gather
      and one segment sum over the (class, branching ancestor) pairs;
    - `"matmul"` (tiny trees, C * M <= `MATMUL_SIZE`): one product with the
      [C, M] 0/1 matrix of those pairs (no transposes).

    Attributes:
        num_classes, depth, level_sizes, num_node_ids, node_ids (int32
        [C, depth]), level_mask (bool [C, depth]), num_branching (M),
        schedule, node_branch (int32 [num_node_ids]: the branching node whose
        sum a node has, or -1 when it is the sum of one class, then
        node_class holds that class), path_branch (int32 [C, depth]),
        leaf_segment (int32 [C]: nearest branching ancestor, M if none),
        class_order / sorted_segment (the classes sorted by leaf_segment),
        direct_rows (last leaf_segment + 1), root_direct (some class has no
        branching ancestor).
    """

    MATMUL_SIZE = 20_000  # C * M up to which a dense [C, M] membership matmul is used
    FLAT_PAIRS = 1500  # then the flat schedule up to this many (class, branching ancestor) pairs

    def __init__(self, hierarchy):
        depth = int(hierarchy.depth)
        ancestors = [np.asarray(hierarchy.ancestors(level), dtype=np.int64) for level in range(depth)]
        self.num_classes = num_classes = int(hierarchy.num_classes)
        self.depth = depth
        self.level_sizes = tuple(int(hierarchy.num_nodes(level)) for level in range(depth))
        offsets = np.concatenate([[0], np.cumsum(self.level_sizes)[:-1]]).astype(np.int64)
        self.num_node_ids = int(sum(self.level_sizes))
        self.node_ids = np.asarray(hierarchy.node_ids, dtype=np.int32)
        self.level_mask = np.asarray(hierarchy.level_mask, dtype=bool)
        if self.level_sizes[-1] != num_classes:
            raise ValueError("the deepest level of the hierarchy must hold every class once")
        # every node's sum: a branching node (branch >= 0) or a single class
        branch = np.full(self.num_node_ids, -1, dtype=np.int64)
        single = np.zeros(self.num_node_ids, dtype=np.int64)
        single[offsets[-1] + ancestors[-1]] = np.arange(num_classes)
        leaf_segment = np.full(num_classes, -1, dtype=np.int64)
        stages, count = [], 0
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
            branch[offsets[level] + chain] = branch[only_child[chain]]
            single[offsets[level] + chain] = single[only_child[chain]]
            nodes = np.flatnonzero(children >= 2)
            if not len(nodes):
                continue
            index = np.full(size, -1, dtype=np.int64)
            index[nodes] = count + np.arange(len(nodes))
            into = index[parent]
            from_class = (into >= 0) & (branch[child_ids] < 0)
            leaf_segment[single[child_ids[from_class]]] = into[from_class]
            from_branch = (into >= 0) & (branch[child_ids] >= 0)
            child_branch = branch[child_ids[from_branch]]
            child_stage = np.searchsorted([start for start, _, _ in stages], child_branch, side="right") - 1
            parts = []
            for source in np.unique(child_stage):
                pick = child_stage == source
                parts.append((int(source), (child_branch[pick] - stages[source][0]).astype(np.int32),
                              (into[from_branch][pick] - count).astype(np.int32)))
            stages.append((count, count + len(nodes), parts))
            branch[offsets[level] + nodes] = index[nodes]
            count += len(nodes)
        self.num_branching = count
        # the root's children: branching nodes without a branching parent (+ direct segment `count`)
        has_parent = np.zeros(count, dtype=bool)
        for _, _, parts in stages:
            for source, rows, _ in parts:
                has_parent[stages[source][0] + rows] = True
        self.top_branch = np.flatnonzero(~has_parent).astype(np.int32)
        self.leaf_segment = np.where(leaf_segment < 0, count, leaf_segment).astype(np.int32)  # count: root only
        # the same segment sum over classes in segment order (sorted segment ids are faster)
        self.class_order = np.argsort(self.leaf_segment, kind="stable").astype(np.int32)
        self.sorted_segment = self.leaf_segment[self.class_order]
        # rows of the direct sums: the last branching nodes (shallowest) often have no class child
        self.direct_rows = int(self.sorted_segment[-1]) + 1 if num_classes else 0
        self.root_direct = self.direct_rows == count + 1  # some classes have no branching ancestor
        self.stages = stages
        self.node_branch = branch.astype(np.int32)
        self.node_class = single.astype(np.int32)
        self.path_branch = self.node_branch[self.node_ids]  # [C, depth]
        # flat schedule: (class, branching ancestor) pairs
        pair_class, pair_node = [], []
        for level in range(depth):
            b = self.path_branch[:, level]
            keep = b >= 0
            pair_class.append(np.flatnonzero(keep))
            pair_node.append(b[keep])
        # a chain node above a branching node shares its sum: count each pair once
        pairs = np.unique(np.stack([np.concatenate(pair_node), np.concatenate(pair_class)], 1), axis=0)
        self.pair_node = pairs[:, 0].astype(np.int32)
        self.pair_class = pairs[:, 1].astype(np.int32)
        if num_classes * count <= self.MATMUL_SIZE:
            self.schedule = "matmul"
            self.membership = np.zeros((num_classes, count), dtype=np.float32)
            self.membership[self.pair_class, self.pair_node] = 1.0
        elif len(self.pair_class) <= self.FLAT_PAIRS:
            self.schedule = "flat"
        else:
            self.schedule = "cascade"


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


def branching_sums(values_t, hierarchy, with_total=False):
    """Sums of `values_t` [C, ...] under every branching node: [M, ...] (None if M = 0).

    With `with_total`, returns (sums, total over all classes [...]); the total
    comes from the tree (no extra pass over the classes).
    """
    plan = tree_plan(hierarchy)
    if not plan.num_branching:
        return (None, ops.sum(values_t, axis=0)) if with_total else None
    if plan.schedule == "matmul":
        sums = ops.matmul(ops.transpose(ops.cast(plan.membership, values_t.dtype)), values_t)
        return (sums, ops.sum(values_t, axis=0)) if with_total else sums
    if plan.schedule == "flat":
        sums = ops.segment_sum(ops.take(values_t, plan.pair_class, axis=0), plan.pair_node,
                               num_segments=plan.num_branching)
        return (sums, ops.sum(values_t, axis=0)) if with_total else sums
    direct = _direct_sums(values_t, plan)  # [direct_rows, ...]
    # one split (not a slice per stage: a slice's gradient pads to the full size)
    bounds = [stop for _, stop, _ in plan.stages if stop < plan.direct_rows]
    pieces = ops.split(direct, bounds, axis=0) if bounds else [direct]  # last: the root's segment, if any
    tables = []
    for index, (start, stop, parts) in enumerate(plan.stages):
        total = None
        if start < plan.direct_rows:  # the stage's direct sums (zero-padded if partial)
            total = pieces[index]
            if plan.direct_rows < stop:
                total = ops.pad(total, [[0, stop - plan.direct_rows]] + [[0, 0]] * (len(values_t.shape) - 1))
        for source, rows, segments in parts:
            part = ops.segment_sum(ops.take(tables[source], rows, axis=0), segments, num_segments=stop - start)
            total = part if total is None else total + part
        tables.append(total)
    sums = tables[0] if len(tables) == 1 else ops.concatenate(tables, axis=0)
    if not with_total:
        return sums
    total = ops.sum(ops.take(sums, plan.top_branch, axis=0), axis=0)
    return sums, (pieces[-1][0] + total) if plan.root_direct else total


def _direct_sums(values_t, plan):
    """Sums of the class rows of `values_t` [C, ...] into their nearest branching
    ancestor: [direct_rows, ...] (row M, if present: the classes with none).

    On TensorFlow the rows are put in segment order and summed with a sorted
    segment sum (about 1.5x faster than the unsorted one at C = 100 000), with
    a custom gradient: one gather, as for the unsorted sum (the gather's own
    gradient would be a scatter).
    """
    if keras.backend.backend() != "tensorflow":
        return ops.segment_sum(values_t, plan.leaf_segment, num_segments=plan.direct_rows)

    @ops.custom_gradient
    def direct(x):
        def grad(upstream):
            return ops.take(upstream, plan.leaf_segment, axis=0)

        ordered = ops.take(x, plan.class_order, axis=0)
        sums = ops.segment_sum(ordered, plan.sorted_segment, sorted=True)
        # the sorted sum's row count is dynamic (last id + 1): state it (a reshape, no copy)
        return ops.reshape(sums, [plan.direct_rows] + [-1 if d is None else d for d in x.shape[1:]]), grad

    return direct(values_t)


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
    sums = branching_sums(values_t, plan)
    stacked = values_t if sums is None else ops.concatenate([values_t, sums], axis=0)
    rows = np.where(plan.node_branch >= 0, plan.num_classes + plan.node_branch, plan.node_class)
    return ops.take(stacked, rows.astype(np.int32), axis=0)


def node_sums(values, hierarchy):
    """Sums `values` over the leaves under every node of every level.

    Args:
        values: [B, C] tensor (e.g. probabilities).
        hierarchy: a `keras_hier.Hierarchy` with C classes (or its `TreePlan`).

    Returns:
        [B, hierarchy.num_node_ids] tensor; column `hierarchy.node_ids[c, l]`
        holds the sum of `values` over the classes under class c's ancestor at
        level l. Only the branching nodes are summed, O(B * C); no [C, C]
        matrix.

    Example:

    >>> from keras_hier import Hierarchy
    >>> h = Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> keras.ops.convert_to_numpy(node_sums(np.array([[1., 2., 4.]]), h)).tolist()
    [[3.0, 4.0, 1.0, 2.0, 4.0]]
    """
    return ops.transpose(node_sums_transposed(ops.transpose(values), hierarchy))


def path_sums(values, labels, hierarchy, label_values=None, with_total=False):
    """For every sample, the sums of `values` under each node on its label's path.

    Args:
        values: [B, C] tensor.
        labels: int [B] class ids.
        hierarchy: a `Hierarchy` or its `TreePlan`.
        label_values: optional [B] tensor `values[b, labels[b]]` when the
            caller already has it (saves a gather and its gradient).
        with_total: also return the sum over all classes [B].

    Returns:
        [B, depth] tensor: column l is the sum over the classes under
        anc_l(label) (the label itself on levels below a shallow leaf).
        O(B * C) work (see `TreePlan`). With `with_total`: (sums, total).
    """
    plan = tree_plan(hierarchy)
    labels = ops.cast(labels, "int32")
    batch = ops.shape(values)[0]
    if label_values is None:
        columns = ops.arange(batch, dtype="int32") * ops.cast(plan.num_classes, "int32")
        label_values = ops.take(ops.reshape(values, (-1,)), columns + labels)
    # on a label's path, a node that is not branching has the label's own value
    node = ops.take(plan.path_branch, labels, axis=0)  # [B, depth]
    hit = node >= 0
    own = ops.expand_dims(label_values, -1)
    if plan.schedule == "matmul":  # batch-major, no transposes
        sums = ops.matmul(values, ops.cast(plan.membership, values.dtype))  # [B, M]
        flat = ops.expand_dims(ops.arange(batch, dtype="int32"), 1) * plan.num_branching + node
        out = ops.where(hit, ops.take(ops.reshape(sums, (-1,)), ops.where(hit, flat, 0)), own)
        return (out, ops.sum(values, axis=-1)) if with_total else out
    sums, total = branching_sums(ops.transpose(values), plan, with_total=True)
    if sums is None:
        out = ops.where(hit, ops.zeros_like(own), own) + ops.zeros_like(ops.cast(node, own.dtype))
    else:
        flat = node * ops.cast(batch, "int32") + ops.expand_dims(ops.arange(batch, dtype="int32"), 1)
        picked = ops.take(ops.reshape(sums, (-1,)), ops.where(hit, flat, 0))
        out = ops.where(hit, picked, own)
    return (out, total) if with_total else out


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


__all__ = ["l2_normalize", "node_sums", "node_sums_transposed", "branching_sums", "path_sums", "node_logsumexp",
           "tree_plan", "TreePlan", "cosine_logits_matrix", "squared_distance", "normface_logits",
           "proxydr_logits", "float32", "EPSILON", "DISTANCES", "keras"]
