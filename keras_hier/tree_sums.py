"""Sums over the nodes of a class tree in `keras.ops` (the tree-sum planner).

The factorised losses (SimLoss, HXE, soft labels), node marginals and the
decoders all need, for a [B, C] tensor, its sums over the classes under
every node of a `Hierarchy`. This module plans those sums once per
hierarchy (`TreePlan`, built on `Hierarchy.level_offsets`,
`Hierarchy.parents` and `Hierarchy.node_ids`) and runs them:

- `node_sums(values, h)`: [B, C] -> [B, num_node_ids], every node of every level;
- `path_sums(values, labels, h)`: [B, C] -> [B, depth], the nodes on each
  sample's label path only (what the losses need);
- `node_logsumexp(logits, h)`: `node_sums` in log space;
- `branching_sums` / `node_sums_transposed`: the class-major layout [C, ...].

Work is O(B * (C + M)) with M < C the nodes that have two or more
children, whatever the depth; no [C, C] matrix is ever built.
"""

import types
import weakref

import keras
import numpy as np
from keras import ops

__all__ = ["TreePlan", "tree_plan", "branching_sums", "node_sums_transposed", "node_sums", "path_sums",
           "scaled_path_sums", "softmax_path_sums", "fused_path_sums", "softmax_logsumexp", "softmax_log_target",
           "node_logsumexp"]


class TreePlan:
    """NumPy index tables for summing over the nodes of a `Hierarchy`.

    Built once per hierarchy (cached by `tree_plan`). A node with a single
    child (a chain node, or a shallow leaf repeated on deeper levels) has the
    same sum as that child, so only the classes and the M < C branching nodes
    (two or more children) are summed. Three schedules give the same sums:

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
        self._read_tables(hierarchy)
        self._plan_stages(hierarchy)
        self._plan_direct_sums()
        self._plan_pairs()
        self._choose_schedule()

    def _read_tables(self, hierarchy):
        """The hierarchy's tables this plan needs (sizes, offsets, node ids)."""
        self.depth = int(hierarchy.depth)
        self.num_classes = int(hierarchy.num_classes)
        self.level_sizes = tuple(int(size) for size in hierarchy.level_sizes)
        self.offsets = np.asarray(hierarchy.level_offsets, dtype=np.int64)
        self.num_node_ids = int(self.offsets[-1])
        self.node_ids = np.asarray(hierarchy.node_ids, dtype=np.int32)
        self.level_mask = np.asarray(hierarchy.level_mask, dtype=bool)
        if self.level_sizes[-1] != self.num_classes:
            raise ValueError("the deepest level of the hierarchy must hold every class once")

    def _plan_stages(self, hierarchy):
        """Deepest level first: which node's sum each node has, and one stage per level
        of branching nodes (their branching children to add)."""
        deepest = np.asarray(hierarchy.ancestors(self.depth - 1), dtype=np.int64)
        self._branch = np.full(self.num_node_ids, -1, dtype=np.int64)  # branching node whose sum a node has
        self._single = np.zeros(self.num_node_ids, dtype=np.int64)  # else: the one class it sums
        self._single[self.offsets[-2] + deepest] = np.arange(self.num_classes)
        self._leaf_segment = np.full(self.num_classes, -1, dtype=np.int64)
        self.stages, self.num_branching = [], 0
        for level in range(self.depth - 2, -1, -1):
            self._plan_level(level, np.asarray(hierarchy.parents(level + 1), dtype=np.int64))
        self.node_branch = self._branch.astype(np.int32)
        self.node_class = self._single.astype(np.int32)
        self.path_branch = self.node_branch[self.node_ids]  # [C, depth]

    def _plan_level(self, level, parent):
        """Chain nodes of `level` inherit their only child's sum; branching ones get a stage."""
        size, count = self.level_sizes[level], self.num_branching
        children = np.bincount(parent, minlength=size)
        child_ids = self.offsets[level + 1] + np.arange(self.level_sizes[level + 1])
        only_child = np.zeros(size, dtype=np.int64)
        only_child[parent] = child_ids
        chain = np.flatnonzero(children == 1)
        self._branch[self.offsets[level] + chain] = self._branch[only_child[chain]]
        self._single[self.offsets[level] + chain] = self._single[only_child[chain]]
        nodes = np.flatnonzero(children >= 2)
        if not len(nodes):
            return
        index = np.full(size, -1, dtype=np.int64)
        index[nodes] = count + np.arange(len(nodes))
        into = index[parent]
        child_branch = self._branch[child_ids]
        from_class = (into >= 0) & (child_branch < 0)
        self._leaf_segment[self._single[child_ids[from_class]]] = into[from_class]
        from_branch = (into >= 0) & (child_branch >= 0)
        self.stages.append((count, count + len(nodes), self._stage_parts(child_branch[from_branch],
                                                                         into[from_branch] - count)))
        self._branch[self.offsets[level] + nodes] = index[nodes]
        self.num_branching = count + len(nodes)

    def _stage_parts(self, child_branch, segments):
        """(source stage, rows in it, target segments) for branching children, grouped by stage."""
        starts = [start for start, _, _ in self.stages]
        child_stage = np.searchsorted(starts, child_branch, side="right") - 1
        parts = []
        for source in np.unique(child_stage):
            pick = child_stage == source
            parts.append((int(source), (child_branch[pick] - starts[source]).astype(np.int32),
                          segments[pick].astype(np.int32)))
        return parts

    def _plan_direct_sums(self):
        """The first stage: every class into its nearest branching ancestor; the root's children."""
        count = self.num_branching
        has_parent = np.zeros(count, dtype=bool)
        for _, _, parts in self.stages:
            for source, rows, _ in parts:
                has_parent[self.stages[source][0] + rows] = True
        self.top_branch = np.flatnonzero(~has_parent).astype(np.int32)
        # segment `count`: classes with no branching ancestor (summed into the root only)
        self.leaf_segment = np.where(self._leaf_segment < 0, count, self._leaf_segment).astype(np.int32)
        # the same segment sum over classes in segment order (sorted segment ids are faster)
        self.class_order = np.argsort(self.leaf_segment, kind="stable").astype(np.int32)
        self.sorted_segment = self.leaf_segment[self.class_order]
        # rows of the direct sums: the last branching nodes (shallowest) often have no class child
        self.direct_rows = int(self.sorted_segment[-1]) + 1 if self.num_classes else 0
        self.root_direct = self.direct_rows == count + 1

    def _plan_pairs(self):
        """Flat schedule: the (class, branching ancestor) pairs, each once."""
        pair_class, pair_node = [], []
        for level in range(self.depth):
            b = self.path_branch[:, level]
            keep = b >= 0
            pair_class.append(np.flatnonzero(keep))
            pair_node.append(b[keep])
        # a chain node above a branching node shares its sum: count each pair once
        pairs = np.unique(np.stack([np.concatenate(pair_node), np.concatenate(pair_class)], 1), axis=0)
        self.pair_node = pairs[:, 0].astype(np.int32)
        self.pair_class = pairs[:, 1].astype(np.int32)

    def down_plan(self):
        """The branching nodes in breadth-first order, for the fused TensorFlow path sums (cached).

        Nodes are grouped by branching depth (the number of branching
        ancestors) and, within a group, ordered by their parent's row, so the
        branching children of each group form the next group, sorted by
        parent: the sums go up with one segment sum per group and the
        gradients down with one gather per group.

        Returns:
            A namespace: `rank` (int32 [M]: each branching node's row in that
            order), `group_sizes` (nodes per branching depth),
            `parent_positions` (per group after the first: each node's
            parent's row within the previous group, non-decreasing),
            `class_segment` (int32 [C]: the row of each class's nearest
            branching ancestor, M for none), `class_order` (the classes
            sorted by it), `sorted_segment` (`class_segment[class_order]`).
        """
        if getattr(self, "_down", None) is None:
            depth, parent = self._branching_depths()
            rank = np.empty(self.num_branching, dtype=np.int64)
            groups = [np.flatnonzero(depth == 0)]
            rank[groups[0]] = np.arange(len(groups[0]))
            positions, start = [], 0
            for level in range(1, int(depth.max()) + 1 if self.num_branching else 0):
                nodes = np.flatnonzero(depth == level)
                nodes = nodes[np.argsort(rank[parent[nodes]], kind="stable")]
                positions.append((rank[parent[nodes]] - start).astype(np.int32))
                start += len(groups[-1])
                rank[nodes] = start + np.arange(len(nodes))
                groups.append(nodes)
            class_segment = np.where(self.leaf_segment < self.num_branching,
                                     rank[np.minimum(self.leaf_segment, max(self.num_branching - 1, 0))],
                                     self.num_branching).astype(np.int32)
            class_order = np.argsort(class_segment, kind="stable").astype(np.int32)
            self._down = types.SimpleNamespace(
                rank=rank.astype(np.int32), group_sizes=[len(g) for g in groups], parent_positions=positions,
                class_segment=class_segment, class_order=class_order, sorted_segment=class_segment[class_order])
        return self._down

    def _branching_depths(self):
        """(number of branching ancestors, nearest branching ancestor or -1) of every branching node."""
        parent = np.full(self.num_branching, -1, dtype=np.int64)
        for start, _, parts in self.stages:
            for source, rows, segments in parts:
                parent[self.stages[source][0] + rows] = start + segments
        depth = np.zeros(self.num_branching, dtype=np.int64)
        for start, stop, _ in reversed(self.stages):  # shallow stages first: parents are done
            has = parent[start:stop] >= 0
            depth[start:stop][has] = depth[parent[start:stop][has]] + 1
        return depth, parent

    def scale_segments(self, scale):
        """Classes grouped by nearest branching ancestor and `scale` (cached), for scaled gradients.

        Args:
            scale: float32 [C].

        Returns:
            A namespace: `row` (int32 [S]: each group's `down_plan` row, M
            for none), `scale` (float32 [S]), `class_segment` (int32 [C]:
            each class's group).
        """
        cache = self.__dict__.setdefault("_scale_segments", {})
        key = scale.tobytes()
        if key not in cache:
            segment = self.down_plan().class_segment
            order = np.lexsort([scale, segment])  # by nearest branching ancestor, then scale
            starts = _run_starts([scale, segment], order)
            class_segment = np.empty(self.num_classes, dtype=np.int32)
            class_segment[order] = np.cumsum(starts) - 1
            cache[key] = types.SimpleNamespace(row=segment[order][starts].astype(np.int32),
                                               scale=scale[order][starts].astype(np.float32),
                                               class_segment=class_segment)
        return cache[key]

    def _choose_schedule(self):
        if self.num_classes * self.num_branching <= self.MATMUL_SIZE:
            self.schedule = "matmul"
            self.membership = np.zeros((self.num_classes, self.num_branching), dtype=np.float32)
            self.membership[self.pair_class, self.pair_node] = 1.0
        elif len(self.pair_class) <= self.FLAT_PAIRS:
            self.schedule = "flat"
        else:
            self.schedule = "cascade"


def _run_starts(keys, order):
    """bool [C]: where a run of equal `keys` (arrays [C]) starts in `order`."""
    starts = np.zeros(len(order), dtype=bool)
    starts[:1] = True
    for values in keys:
        ordered = values[order]
        starts[1:] |= ordered[1:] != ordered[:-1]
    return starts


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

    Args:
        values_t: tensor whose first axis is the class axis.
        hierarchy: a `Hierarchy` or its `TreePlan`.
        with_total: also return the total over all classes [...], taken
            from the tree (no extra pass over the classes).

    Returns:
        [M, ...] tensor, or (sums, total) with `with_total`.
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
    sums, pieces = _cascade(values_t, plan)
    if not with_total:
        return sums
    total = ops.sum(ops.take(sums, plan.top_branch, axis=0), axis=0)
    return sums, (pieces[-1][0] + total) if plan.root_direct else total


def _cascade(values_t, plan):
    """The cascade schedule: (sums [M, ...], the split direct sums)."""
    return _cascade_from_direct(_direct_sums(values_t, plan), plan)


def _cascade_from_direct(direct, plan):
    """The cascade from the direct sums [direct_rows, ...]: (sums [M, ...], the split direct sums)."""
    # one split (not a slice per stage: a slice's gradient pads to the full size)
    bounds = [stop for _, stop, _ in plan.stages if stop < plan.direct_rows]
    pieces = ops.split(direct, bounds, axis=0) if bounds else [direct]  # last: the root's segment, if any
    tables = []
    for index, (start, stop, parts) in enumerate(plan.stages):
        total = None
        if start < plan.direct_rows:  # the stage's direct sums (zero-padded if partial)
            total = pieces[index]
            if plan.direct_rows < stop:
                total = ops.pad(total, [[0, stop - plan.direct_rows]] + [[0, 0]] * (len(direct.shape) - 1))
        for source, rows, segments in parts:
            part = ops.segment_sum(ops.take(tables[source], rows, axis=0), segments, num_segments=stop - start)
            total = part if total is None else total + part
        tables.append(total)
    return (tables[0] if len(tables) == 1 else ops.concatenate(tables, axis=0)), pieces


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

    >>> import numpy as np
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
    if values.shape[0] == 0:  # a static empty batch (flat gathers of empty tensors differ between backends)
        out = ops.zeros((0, plan.depth), dtype=values.dtype)
        return (out, ops.zeros((0,), dtype=values.dtype)) if with_total else out
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
    if fused_path_sums(plan):
        out, _, total = _cascade_path_sums(values, labels, label_values, plan)
        return (out, total) if with_total else out
    sums, total = branching_sums(ops.transpose(values), plan, with_total=True)
    if sums is None:
        out = ops.where(hit, ops.zeros_like(own), own) + ops.zeros_like(ops.cast(node, own.dtype))
    else:
        flat = node * ops.cast(batch, "int32") + ops.expand_dims(ops.arange(batch, dtype="int32"), 1)
        picked = _pick(ops.reshape(sums, (-1,)), ops.where(hit, flat, 0))
        out = ops.where(hit, picked, own)
    return (out, total) if with_total else out


def scaled_path_sums(values, labels, hierarchy, column_scale=None, label_values=None):
    """`path_sums` of `values * column_scale`, with the scaled and the plain totals.

    The factorised losses need, for S = column_scale * (tree part), both
    sum_c values and the path sums of values * column_scale; on TensorFlow's
    cascade schedule the backward pass applies the scale to one row per
    group of classes with the same nearest branching ancestor and scale.

    Args:
        values: [B, C] tensor.
        labels: int [B] class ids.
        hierarchy: a `Hierarchy` or its `TreePlan`.
        column_scale: optional float [C] NumPy array (None: all ones).
        label_values: optional [B] tensor `values[b, labels[b]]` (unscaled).

    Returns:
        (path [B, depth], scaled_total [B], total [B]): path sums and total
        of `values * column_scale`, and the plain total of `values`.

    Example:

    >>> import numpy as np
    >>> from keras_hier import Hierarchy
    >>> h = Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> path, scaled, total = scaled_path_sums(np.array([[1., 2., 4.]]), np.array([0]), h,
    ...                                        np.array([1., 0.5, 2.]))
    >>> keras.ops.convert_to_numpy(path).tolist(), float(scaled[0]), float(total[0])
    ([[2.0, 1.0]], 10.0, 7.0)
    """
    plan = tree_plan(hierarchy)
    scale = _scale_or_none(column_scale)
    if fused_path_sums(plan) and values.shape[0] != 0:
        return _cascade_path_sums(values, ops.cast(labels, "int32"), label_values, plan, scale)
    if scale is None:
        path, total = path_sums(values, labels, plan, label_values, with_total=True)
        return path, total, total
    if label_values is not None:
        label_values = label_values * ops.take(scale, ops.cast(labels, "int32"), axis=0)
    path, scaled_total = path_sums(values * ops.convert_to_tensor(scale), labels, plan, label_values,
                                   with_total=True)
    return path, scaled_total, ops.sum(values, axis=-1)


def fused_path_sums(hierarchy):
    """Whether `scaled_path_sums` and `softmax_path_sums` take the fused TensorFlow path for `hierarchy`."""
    plan = tree_plan(hierarchy)
    return bool(plan.num_branching) and plan.schedule == "cascade" and keras.backend.backend() == "tensorflow"


def softmax_path_sums(logits, labels, hierarchy, column_scale=None):
    """Path sums of softmax(logits) * column_scale, fused (TensorFlow, cascade schedule only).

    Forward: one softmax, one transpose, one gather and one sorted segment
    sum over [B, C]. Backward: the softmax's Jacobian is applied on the
    tree: d loss / d logits = p * (g - <g, p>) + target terms, where g is
    constant on every group of classes with the same nearest branching
    ancestor (and scale) and <g, p> is a sum over the B * depth path values;
    so one gather, one multiplication, one in-place scatter of the label
    terms and one transpose over [B, C].

    Args:
        logits: float32 [B, C].
        labels: int32 [B] class ids.
        hierarchy: a `Hierarchy` or its `TreePlan` (`fused_path_sums` true).
        column_scale: optional float [C] NumPy array.

    Returns:
        (path [B, depth], scaled_total [B], log_target [B]): the sums of
        p * column_scale under each node on the label's path (p_y times its
        scale below a shallow leaf), their total, and log p_y computed
        without underflow.
    """
    import tensorflow as tf

    plan = tree_plan(hierarchy)
    scale = _scale_or_none(column_scale)
    labels = tf.cast(labels, tf.int32)
    batch = tf.shape(logits)[0]
    own_scale = 1.0 if scale is None else tf.gather(scale, labels)
    hit, flat = _path_index(plan, labels, batch)

    @tf.custom_gradient
    def sums(z):
        p, log_target = softmax_log_target(z, labels)
        p_t = tf.transpose(p)
        table, scaled_total = _pull_up(p_t, plan, scale)
        own = tf.exp(log_target) * own_scale
        out = tf.where(hit, tf.gather(tf.reshape(table, [-1]), flat), own[:, None])

        def grad(g_out, g_scaled, g_target):
            g_out = tf.zeros_like(out) if g_out is None else g_out
            g_scaled = tf.zeros_like(scaled_total) if g_scaled is None else g_scaled
            g_target = tf.zeros_like(log_target) if g_target is None else g_target
            g_hit = tf.where(hit, g_out, tf.zeros_like(g_out))
            g_target += tf.reduce_sum(g_out - g_hit, axis=1) * own  # through p_y on the levels below a shallow leaf
            # <g, p> (g: gradient w.r.t. p through the sums) and the target's -p: one constant per sample
            shift = tf.reduce_sum(g_hit * out, axis=1) + g_scaled * scaled_total + g_target
            g_classes = _class_gradients(g_hit, flat, g_scaled, shift, plan, scale, batch)
            # g_target at (y_b, b): one row per sample, added in place (`tensor_scatter_nd_add` copies [C, B])
            g_t = tf.raw_ops.InplaceAdd(x=g_classes * p_t, i=labels, v=tf.linalg.diag(g_target))
            return tf.transpose(g_t)

        return (out, scaled_total, log_target), grad

    return sums(logits)


def softmax_logsumexp(logits, p=None):
    """softmax(logits) and logsumexp(logits) over the last axis, in one pass over [B, C] plus a max.

    logsumexp = max z - log max p (the largest logit's probability: >= 1 / C,
    so no underflow; log p_y = z_y - logsumexp is exact where p_y is 0).

    Args:
        logits: float [B, C] tensor.
        p: softmax(logits) when the caller has it.

    Returns:
        (p [B, C], logsumexp [B]).

    Example:

    >>> p, lse = softmax_logsumexp(np.array([[0.0, 1000.0, -1000.0]], dtype=np.float32))
    >>> float(lse[0]), keras.ops.convert_to_numpy(p).round(3).tolist()
    (1000.0, [[0.0, 1.0, 0.0]])
    """
    p = ops.softmax(logits, axis=-1) if p is None else p
    return p, ops.max(logits, axis=-1) - ops.log(ops.max(p, axis=-1))


def softmax_log_target(logits, labels):
    """softmax(logits) and log p_y for labels y (TensorFlow).

    log p_y is read from p where every p_y is a normal float (>= 1e-30);
    otherwise (a batch with an underflowed label) it is z_y -
    `softmax_logsumexp`, exact, at the cost of two more reductions over
    [B, C] for that batch only.

    Args:
        logits: float32 [B, C] tensor.
        labels: int32 [B] class ids.

    Returns:
        (p [B, C], log p_y [B]).
    """
    import tensorflow as tf

    p = tf.nn.softmax(logits)
    p_label = tf.gather(p, labels, batch_dims=1)

    def exact():
        return tf.gather(logits, labels, batch_dims=1) - softmax_logsumexp(logits, p)[1]

    return p, tf.cond(tf.reduce_all(p_label >= 1e-30), lambda: tf.math.log(p_label), exact)


def _class_gradients(g_hit, flat, g_scaled, shift, plan, scale, batch):
    """[C, B]: scale_c * (the path gradients of c's nodes + g_scaled) - shift, for every class."""
    import tensorflow as tf

    down = plan.down_plan()
    g_nodes = tf.scatter_nd(tf.reshape(flat, [-1, 1]), tf.reshape(g_hit, [-1]), [plan.num_branching * batch])
    g_nodes = tf.reshape(g_nodes, [plan.num_branching, batch])
    if scale is None:  # every class gets g_scaled - shift: add it at the top, the push-down spreads it
        common = (g_scaled - shift)[None, :]
        return tf.gather(_push_down(g_nodes, down, common), down.class_segment)
    groups = plan.scale_segments(scale)
    rows = tf.gather(_push_down(g_nodes, down, g_scaled[None, :]), groups.row)
    return tf.gather(rows * groups.scale[:, None] - shift[None, :], groups.class_segment)


def _scale_or_none(column_scale):
    if column_scale is None or np.all(np.asarray(column_scale) == 1.0):
        return None
    return np.asarray(column_scale, dtype=np.float32)


def _cascade_path_sums(values, labels, label_values, plan, scale=None):
    """`scaled_path_sums` on TensorFlow's cascade schedule, with a gradient written for it.

    The branching nodes are laid out breadth-first (`TreePlan.down_plan`).
    Forward: one transpose, one gather and one sorted segment sum over
    [B, C] (with a scale, one multiplication and the plain total's row sum),
    then one segment sum per branching depth on the branching nodes.
    Backward: one `scatter_nd` of the path gradients into the branching
    nodes, one gather per branching depth adding every node's ancestors'
    gradients, the scale applied to one row per group of classes
    (`TreePlan.scale_segments`), then one gather and one transpose over
    [B, C]. (Autograd of the per-level cascade cost a dense [M * B] scatter
    and the inverse of each of its gathers, splits and concatenations.)
    """
    import tensorflow as tf

    batch = tf.shape(values)[0]
    given = label_values is not None  # else the label values are read here, their gradient added in place
    own_scale = 1.0 if scale is None else tf.gather(scale, labels)
    hit, flat = _path_index(plan, labels, batch)

    @tf.custom_gradient
    def sums(v, *own):
        label_value = own[0] if given else tf.gather(v, labels, batch_dims=1)
        table, scaled_total = _pull_up(tf.transpose(v), plan, scale)  # [M, B] in `down_plan` order, [B]
        total = tf.identity(scaled_total) if scale is None else tf.reduce_sum(v, axis=1)
        out = tf.where(hit, tf.gather(tf.reshape(table, [-1]), flat), (label_value * own_scale)[:, None])

        def grad(g_out, g_scaled, g_total):
            g_out = tf.zeros_like(out) if g_out is None else g_out
            g_scaled = tf.zeros_like(total) if g_scaled is None else g_scaled
            g_total = tf.zeros_like(total) if g_total is None else g_total
            g_hit = tf.where(hit, g_out, tf.zeros_like(g_out))
            g_classes = _class_gradients(g_hit, flat, g_scaled, -g_total, plan, scale, batch)
            g_own = tf.reduce_sum(g_out - g_hit, axis=1) * own_scale
            if given:
                return tf.transpose(g_classes), g_own
            return tf.transpose(tf.raw_ops.InplaceAdd(x=g_classes, i=labels, v=tf.linalg.diag(g_own)))

        return (out, scaled_total, total), grad

    return sums(values, label_values) if given else sums(values)


def _path_index(plan, labels, batch):
    """(hit [B, depth]: the path's node is a branching node, flat: its index in the [M, B] sums, else 0)."""
    import tensorflow as tf

    node = tf.gather(plan.path_branch, labels)  # [B, depth]
    hit = node >= 0
    rows = tf.gather(plan.down_plan().rank, tf.maximum(node, 0))
    return hit, tf.where(hit, rows * batch + tf.range(batch)[:, None], 0)


def _pull_up(values_t, plan, scale):
    """Sums of `values_t` [C, B] (times `scale`) under every branching node: ([M, B] in
    `down_plan` order, the total [B]); one segment sum over [C, B], then one per group."""
    import tensorflow as tf

    down = plan.down_plan()
    ordered = tf.gather(values_t, down.class_order)
    if scale is not None:
        ordered = ordered * scale[down.class_order][:, None]
    direct = tf.math.segment_sum(ordered, down.sorted_segment)
    present = int(down.sorted_segment[-1]) + 1  # rows of the sorted sum: last id + 1
    direct = tf.reshape(direct, [present, -1])
    if present < plan.num_branching:  # the last nodes have no class of their own
        direct = tf.pad(direct, [[0, plan.num_branching - present], [0, 0]])
    sizes = down.group_sizes + ([1] if present > plan.num_branching else [])  # row M: no branching ancestor
    *groups, root = tf.split(direct, sizes, axis=0) if len(sizes) > 1 else [direct]
    if present <= plan.num_branching:
        groups, root = groups + [root], tf.zeros_like(direct[:1])
    done = [groups[-1]]
    for group, parent in zip(reversed(groups[:-1]), reversed(down.parent_positions)):
        done.append(group + tf.math.unsorted_segment_sum(done[-1], parent, num_segments=group.shape[0]))
    table = done[0] if len(done) == 1 else tf.concat(done[::-1], axis=0)
    return table, tf.reduce_sum(done[-1], axis=0) + root[0]


def _push_down(gradients, down, common):
    """Adds to every branching node's row (in `down_plan` order) the rows of its branching
    ancestors and `common` [1, B]; appends row M (classes with no branching ancestor): `common`."""
    import tensorflow as tf

    groups = tf.split(gradients, down.group_sizes, axis=0) if len(down.group_sizes) > 1 else [gradients]
    done = [groups[0] + common]
    for group, parent in zip(groups[1:], down.parent_positions):
        done.append(group + tf.gather(done[-1], parent))
    return tf.concat(done + [common], axis=0)


def _pick(flat_values, index):
    """`take(flat_values, index)` for a few entries of a large flat tensor.

    On TensorFlow its gradient is one `scatter_nd` into zeros: the gather's
    own gradient (an unsorted segment sum over every entry) cost 60-80 ms
    of a ~300 ms loss step at C = 100 000.
    """
    if keras.backend.backend() != "tensorflow":
        return ops.take(flat_values, index)
    import tensorflow as tf

    @tf.custom_gradient
    def pick(x):
        def grad(upstream):
            return tf.scatter_nd(tf.reshape(index, [-1, 1]), tf.reshape(upstream, [-1]), tf.shape(x))

        return tf.gather(x, index), grad

    return pick(flat_values)


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
    shift = ops.stop_gradient(ops.max(logits, axis=-1, keepdims=True, initial=-np.inf))
    sums = node_sums(ops.exp(logits - shift), hierarchy)
    return ops.log(sums) + shift
