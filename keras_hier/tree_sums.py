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

import weakref

import keras
import numpy as np
from keras import ops

__all__ = ["TreePlan", "tree_plan", "branching_sums", "node_sums_transposed", "node_sums", "path_sums",
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

    def _choose_schedule(self):
        if self.num_classes * self.num_branching <= self.MATMUL_SIZE:
            self.schedule = "matmul"
            self.membership = np.zeros((self.num_classes, self.num_branching), dtype=np.float32)
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
    shift = ops.stop_gradient(ops.max(logits, axis=-1, keepdims=True, initial=-np.inf))
    sums = node_sums(ops.exp(logits - shift), hierarchy)
    return ops.log(sums) + shift
