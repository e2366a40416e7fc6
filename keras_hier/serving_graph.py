"""The TensorFlow graph of an exported SavedModel: the decoders as TF ops, and image-bytes decoding.

`keras_hier.decoding` writes every decoder once, over a few array
primitives; this module gives those primitives in TensorFlow
(`TENSORFLOW_OPS`) and `serving_decoder`, which builds the tree tables once
(at export time) and returns the small function that the serving signatures
call: probabilities -> the signature's outputs (names included). Serving is
latency-bound (per-op overhead dominates at batch 1), so the primitives are
the cheapest TF forms: `tf.gather(..., batch_dims=1)`, 0/1 membership
matmuls for small trees, and a blocked top-k for wide rows. Trees past the
dense limit avoid passes over [B, C]: the argmax decoder sums only the
chosen chains from blocks of the row (`ChainRuns`; no node sums at all),
the expected-cost decoder runs class-major (`_ClassMajorOps`: one transpose,
then sorted segment sums and row gathers along axis 0) and ranks only the
classes under the nodes whose bound can hold the k best (`CostTopK`). `decode_images` turns the `serving_bytes` strings into model
inputs, refusing (by batch index) images that are not JPEG/PNG/GIF/BMP, are
larger than a pixel limit (read from the header before decoding) or that
the decoder refuses.
"""

import math

import numpy as np

from keras_hier import decoding

__all__ = ["TENSORFLOW_OPS", "serving_decoder", "blocked_top_k", "block_size", "gather_block_size", "ChainRuns",
           "level_runs", "CostTopK", "TOPK_MIN_CLASSES", "MAX_CHAIN_RUNS", "decode_images", "image_header_pixels"]

#: From this many classes top-k is blocked (tf.math.top_k is slow on wide rows).
TOPK_MIN_CLASSES = 1024
#: Trees past the dense limit are decoded class-major (`_ClassMajorOps`) from this many classes.
CLASS_MAJOR_MIN_CLASSES = 0
#: From this batch size class-major segment sums / maxima gather the rows in parent order first.
SORTED_SUM_MIN_BATCH = 2
#: Most runs of consecutive class ids over the nodes of one chain for `ChainRuns` (else segment sums).
MAX_CHAIN_RUNS = 32


def block_size(width):
    """Columns per block of a wide row: a divisor of `width` within 2x of sqrt(width) when there is one
    (reshaping [B, width] into blocks is then free; otherwise the row is padded, one copy).

    Example:

    >>> block_size(100_000), block_size(10_000), block_size(10_007)
    (400, 100, 100)
    """
    target = math.sqrt(width)
    divisors = [d for d in range(2, 1025) if width % d == 0 and abs(math.log(d / target)) <= math.log(2.0)]
    if divisors:
        return min(divisors, key=lambda d: abs(math.log(d / target)))
    return int(min(1024.0, max(2.0, round(target))))


def row_blocks(x, block, fill):
    """[B, width] -> [B, ceil(width / block), block] (a view; padded with `fill` when block does not divide)."""
    import tensorflow as tf

    width = x.shape[-1]
    groups = -(-width // block)
    if groups * block != width:
        x = tf.pad(x, [[0, 0], [0, groups * block - width]], constant_values=fill)
    return tf.reshape(x, [-1, groups, block])


def blocked_top_k(x, k, block):
    """`tf.math.top_k(x, k)` (same values, ids and tie order) in two cheap stages.

    The k best entries lie in the k blocks of `block` columns with the best
    maxima (ties: lower block first, as top_k keeps lower indices first); the
    chosen blocks are gathered in index order so that ties still resolve to the
    lower index.

    Example:

    >>> import tensorflow as tf
    >>> values, ids = blocked_top_k(tf.constant([[1.0, 5.0, 3.0, 5.0, 0.0]]), 2, 2)
    >>> ids.numpy().tolist(), values.numpy().tolist()
    ([[1, 3]], [[5.0, 5.0]])
    """
    import tensorflow as tf

    if -(-x.shape[-1] // block) < k:
        return tf.math.top_k(x, k)
    return _blocks_top_k(row_blocks(x, block, float("-inf")), k)


def _blocks_top_k(blocks, k):
    """`blocked_top_k` of rows already cut into blocks [B, groups, block] (padding never beats a real entry)."""
    import tensorflow as tf

    block = blocks.shape[-1]
    _, best = tf.math.top_k(tf.reduce_max(blocks, axis=2), k)
    best = tf.sort(best, axis=1)
    candidates = tf.reshape(tf.gather(blocks, best, batch_dims=1), [-1, k * block])
    values, where = tf.math.top_k(candidates, k)
    return values, tf.gather(best, where // block, batch_dims=1) * block + where % block


class _TensorFlowOps:
    """The decoders' array primitives (see `keras_hier.decoding.NUMPY_OPS`) in TensorFlow."""

    def __init__(self, topk_min_classes=TOPK_MIN_CLASSES):
        import tensorflow as tf

        self.tf = tf
        self.topk_min_classes = topk_min_classes

    def softmax(self, x):
        return self.tf.nn.softmax(self.float32(x), axis=-1)

    def float32(self, x):
        return self.tf.cast(x, self.tf.float32)

    def matmul(self, a, b):
        return self.tf.matmul(a, b)

    def take(self, table, ids):
        return self.tf.gather(table, ids)

    def take_columns(self, x, ids):
        # row gathers copy contiguous memory: measured faster than tf.gather(x, ids, axis=1) on wide arrays
        return self.tf.transpose(self.tf.gather(self.tf.transpose(x), ids))

    def take_rows(self, x, ids):
        return self.tf.gather(x, ids, batch_dims=1)

    take_along = take_rows

    @staticmethod
    def line(v):
        return v

    def join_nodes(self, xs):
        return self.tf.concat(xs, axis=1)

    def concat(self, xs, axis):
        return self.tf.concat(xs, axis=axis)

    def argmax(self, x):
        return self.tf.argmax(x, axis=-1, output_type=self.tf.int32)

    def minimum(self, a, b):
        return self.tf.minimum(a, b)

    def segment_sum(self, x, step):
        """[B, rows] -> [B, num_segments]: TF sums segments along axis 0 only, so the sum runs on the
        transpose (measured faster than a batch-offset scatter or a sparse matmul at C = 100 000)."""
        tf = self.tf
        return tf.transpose(tf.math.unsorted_segment_sum(tf.transpose(x), step.ids, step.num_segments))

    def top_k(self, x, k):
        if x.shape[-1] is not None and x.shape[-1] >= self.topk_min_classes:
            return blocked_top_k(x, k, block_size(x.shape[-1]))
        return self.tf.math.top_k(x, k)

    def count_at_least(self, x, threshold):
        return self.tf.reduce_sum(self.tf.cast(x >= threshold, self.tf.int32), axis=1)

    def pad_ones_left(self, x):
        return self.tf.pad(x, [[0, 0], [1, 0]], constant_values=1.0)


class _ClassMajorOps(_TensorFlowOps):
    """The primitives on class-major scores and marginals [C or nodes, B] (wide trees).

    Every sum over the tree then runs along axis 0, where TensorFlow sums
    segments and gathers whole rows: one transpose of the probabilities
    replaces two per level (and the one of the [B, C] ranking) of the
    batch-major layout. Outputs ([B, ...]) stay batch-major.
    """

    def matmul(self, a, b):
        return self.tf.matmul(b, a, transpose_a=True)

    def take_columns(self, x, ids):
        return self.tf.gather(x, ids)

    def take_rows(self, x, ids):
        """x [n, B] class-major, ids [B, k] -> [B, k]: x[ids[b, j], b]."""
        tf = self.tf
        batch = tf.shape(ids)[0]
        return tf.gather(tf.reshape(x, [-1]), ids * batch + tf.range(batch)[:, None])

    def take_along(self, x, ids):
        return self.tf.gather(x, ids, batch_dims=1)

    @staticmethod
    def line(v):
        return np.transpose(v)

    def join_nodes(self, xs):
        return self.tf.concat(xs, axis=0)

    def argmax(self, x):
        return self.top_k(x, 1)[1][:, 0]  # tf.argmax over axis 0 of [C, B] was measured 5x slower

    def segment_sum(self, x, step):
        """Rows summed per parent: a sorted segment sum, the rows gathered in parent order first when
        needed (at C = 100 000, measured 3x faster than an unsorted segment sum from 4 rows on and
        even at 1: a single row takes the unsorted one)."""
        return self._segments(x, step, self.tf.math.segment_sum, self.tf.math.unsorted_segment_sum)

    def segment_max(self, x, step):
        """Rows' maximum per parent (as `segment_sum`)."""
        return self._segments(x, step, self.tf.math.segment_max, self.tf.math.unsorted_segment_max)

    def _segments(self, x, step, sorted_op, unsorted_op):
        tf = self.tf
        if np.all(step.ids[1:] >= step.ids[:-1]):
            out = sorted_op(x, step.ids)
        else:
            out = tf.cond(tf.shape(x)[1] >= SORTED_SUM_MIN_BATCH,
                          lambda: sorted_op(tf.gather(x, step.order), step.ids[step.order]),
                          lambda: unsorted_op(x, step.ids, step.num_segments))
        return tf.reshape(out, [step.num_segments, -1])  # the number of rows, known to the graph

    def top_k(self, x, k, block_target=100):
        """(values, ids) [B, k] of the k largest of every column of x [C, B]: `blocked_top_k` on the
        transposed blocks (same ids and tie order as tf.math.top_k of the rows); `block_target`: see
        `gather_block_size` (the k * block candidates of a column are gathered one by one)."""
        tf = self.tf
        width = x.shape[0]
        block = gather_block_size(width, block_target)
        groups = -(-width // block)
        if width < self.topk_min_classes or groups < k:
            return tf.math.top_k(tf.transpose(x), k)
        if groups * block != width:
            x = tf.pad(x, [[0, groups * block - width], [0, 0]], constant_values=float("-inf"))
        _, best = tf.math.top_k(tf.transpose(tf.reduce_max(tf.reshape(x, [groups, block, -1]), axis=1)), k)
        rows = tf.reshape(tf.sort(best, axis=1)[:, :, None] * block + tf.range(block), [-1, k * block])
        values, where = tf.math.top_k(self.take_rows(x, rows), k)
        return values, tf.gather(rows, where, batch_dims=1)


class ChainRuns:
    """The marginals of one ancestor chain per row, from blocks of the row (wide trees, the argmax decoder).

    Summing every node of a wide tree runs over the class axis of [B, C]
    (a transpose and a segment sum); the argmax decoder needs only the
    chosen class's chain. Each node's classes are a few runs of consecutive
    class ids (`level_runs`, built once), cut into rows of `block` columns
    of [B, C]: masked first and last blocks, whole blocks in between. When
    a chain's rows hold at most `GATHER_SHARE` of a row, they are gathered
    and summed (nothing else reads [B, C]); else the whole blocks come from
    block sums (one pass over [B, C], a float64 prefix). A node's marginal
    is the sum of its rows, and a running maximum from the class up keeps a
    parent never below its child despite rounding (as the bottom-up sums
    do exactly).

    Args:
        tables: the `keras_hier.decoding.DecoderTables`.
        block: columns per block (`gather_block_size`).

    Attributes (one int32 table per level above the classes): `block`,
    `edges` [n_l, E_l, 3] (block, first column, end column), `wholes`
    [n_l, W_l, 2] ((block, 1) or (0, 0): gathered) or `middles` [n_l, R_l, 2]
    (block ranges: from block sums), `num_runs` (the longest chain's runs).
    """

    GATHER_SHARE = 1 / 3

    def __init__(self, tables, block):
        self.block, self.depth = int(block), tables.depth
        self.level_ids = tables.level_ids[:, :-1]
        runs = [level_runs(tables.ancestors[level], self.block) for level in range(self.depth - 1)]
        self.num_runs = sum(table.shape[1] for table in runs)
        self.edges = [_nonempty(table[:, :, :6].reshape(len(table), -1, 3)) for table in runs]
        self.wholes = [_whole_blocks(table) for table in runs]
        self.middles = None
        if sum(t.shape[1] for t in self.wholes) * self.block >= self.GATHER_SHARE * tables.num_classes:
            self.wholes, self.middles = None, [table[:, :, 6:] for table in runs]
        self.edge_levels = _level_matrix([t.shape[1] for t in self.edges])
        self.whole_levels = _level_matrix([t.shape[1] for t in self.middles or self.wholes])
        self.below = np.arange(self.depth)[None, :] >= np.arange(self.depth)[:, None]  # [L, L]: l' >= l

    def __call__(self, p, class_ids, scores):
        """[B, L] marginals of `class_ids`' chains, level 0 first, the class's own probability last."""
        import tensorflow as tf

        if self.depth == 1:
            return scores[:, None]
        blocks = row_blocks(p, self.block, 0.0)
        nodes = tf.unstack(tf.gather(self.level_ids, class_ids), num=self.depth - 1, axis=1)

        def rows(tables):
            return tf.concat([tf.gather(table, ids) for table, ids in zip(tables, nodes)], axis=1)

        edges = rows(self.edges)  # [B, E, 3]: (block, first column, end column)
        column = tf.range(self.block)
        inside = (column >= edges[:, :, 1:2]) & (column < edges[:, :, 2:3])
        edge_sums = tf.reduce_sum(tf.where(inside, tf.gather(blocks, edges[:, :, 0], batch_dims=1), 0.0), axis=2)
        total = tf.matmul(tf.cast(edge_sums, tf.float64), self.edge_levels)  # [B, L-1]
        if self.middles is None:
            wholes = rows(self.wholes)  # [B, W, 2]: (block, 1) or (0, 0)
            sums = tf.reduce_sum(tf.gather(blocks, wholes[:, :, 0], batch_dims=1), axis=2)
            sums = tf.cast(sums, tf.float64) * tf.cast(wholes[:, :, 1], tf.float64)
        else:
            prefix = tf.math.cumsum(tf.cast(tf.reduce_sum(blocks, axis=2), tf.float64), axis=1)
            prefix = tf.pad(prefix, [[0, 0], [1, 0]])  # [B, groups + 1]: sum of the blocks before each
            middles = rows(self.middles)
            sums = tf.gather(prefix, middles[:, :, 1], batch_dims=1) - tf.gather(prefix, middles[:, :, 0], batch_dims=1)
        total += tf.matmul(sums, self.whole_levels)
        chain = tf.concat([tf.cast(total, tf.float32), scores[:, None]], axis=1)
        return tf.reduce_max(tf.where(self.below, chain[:, None, :], 0.0), axis=2)


class CostTopK:
    """The `expected_cost` decoder's k best classes, ranked under a few nodes only (wide trees, class-major).

    The ranking of class j is R(n) + w_j p_j, with n its node of level L-2
    (R: `keras_hier.decoding.node_cost`) and leaf weight w_j >= 0. The best
    class under n scores U(n) = R(n) + max_j w_j p_j (one segment maximum over
    [C, B]), and no class under n scores more, so the k best classes lie under
    the nodes of largest U: only the children of the first M - 1 of them are
    ranked, exactly as the whole ranking would (same float operations,
    candidates in class-id order for top-k's tie order). No [C, B] gather, sum
    or top-k.

    Ties. Nodes of equal U are taken in the order of their smallest class id
    (a node whose classes carry no mass ties with its cousins: U = R). The
    candidates hold the k best classes, ties resolved as top-k resolves them
    (lowest class id first), when the M-th node's U is below the k-th
    candidate's score, or equal to it with a smallest class id above the k-th
    candidate's id. Otherwise the whole ranking is computed (a `cond`), so the
    ids always equal those of the whole ranking on the same primitives.

    Args:
        tables: the `keras_hier.decoding.DecoderTables` (segment layout, depth >= 2).
        cost: the decoder's cost.
        ops: the class-major primitives (`_ClassMajorOps`).

    Use `CostTopK.applies(tables, cost)` first: leaf weights must be >= 0.
    """

    TIE_MARGIN = 4  # M = k + TIE_MARGIN nodes, up to MAX_CANDIDATES candidate classes
    MAX_CANDIDATES = 4096
    BLOCK_TARGET = 20  # the node top-k gathers M * block values per column

    def __init__(self, tables, cost, ops):
        self.tables, self.cost, self.ops = tables, cost, ops
        self.step = tables.steps[0]  # the classes -> their nodes of level L-2
        parents, num_classes = self.step.ids, tables.num_classes
        leaf_weight = tables.cost_terms(cost)["leaf_weight"][0]
        counts = np.bincount(parents, minlength=self.step.num_segments)
        slot = np.arange(num_classes) - np.repeat(self.step.starts, counts)
        children = np.full((self.step.num_segments, int(counts.max())), num_classes, np.int32)  # padded with C
        children[parents[self.step.order], slot] = self.step.order  # class ids ascending within a node
        self.children = children
        self.node_order = None if np.all(children[1:, 0] > children[:-1, 0]) \
            else np.argsort(children[:, 0], kind="stable").astype(np.int32)
        node_weight = leaf_weight[self.step.order[self.step.starts]]
        self.node_weight = node_weight[:, None] if np.array_equal(node_weight[parents], leaf_weight) else None
        self.leaf_weight = np.append(leaf_weight, 0.0).astype(np.float32)  # [C + 1]: padding weighs 0
        self.parents = np.append(parents, 0).astype(np.int32)

    @staticmethod
    def applies(tables, cost):
        return tables.depth > 1 and not tables.dense and bool(np.all(tables.cost_terms(cost)["leaf_weight"] >= 0))

    def num_nodes(self, k):
        """M, the nodes ranked for the k best classes (all of them when there are at most k + 1)."""
        wanted = max(k + 1, min(k + self.TIE_MARGIN, self.MAX_CANDIDATES // self.children.shape[1] + 1))
        return min(wanted, self.step.num_segments)

    def pays(self, k):
        """Whether the candidates of the k best (M - 1 nodes, padded to the widest) stay below a quarter of
        the classes (a few very wide nodes and a large k would rank more than the whole ranking)."""
        return (self.num_nodes(k) - 1) * self.children.shape[1] <= self.tables.num_classes // 4

    def __call__(self, p, levels, k):
        """[B, k] class ids, best first (p [C, B] and the node marginals class-major)."""
        tf, ops, num_classes = self.ops.tf, self.ops, self.tables.num_classes
        spread = decoding.node_cost(levels, self.tables, self.cost, ops)  # [n, B]
        best = ops.segment_max(p, self.step) * self.node_weight if self.node_weight is not None \
            else ops.segment_max(p * self.leaf_weight[:-1, None], self.step)
        upper = tf.reshape(spread + best, [self.step.num_segments, -1])
        if self.node_order is not None:  # equal U: smallest class id first
            upper = tf.gather(upper, self.node_order)
        num_nodes = self.num_nodes(k)
        upper, nodes = ops.top_k(upper, num_nodes, self.BLOCK_TARGET)  # [B, M]
        if self.node_order is not None:
            nodes = tf.gather(self.node_order, nodes)
        ranked = num_nodes - 1 if num_nodes > k else num_nodes
        candidates = tf.reshape(tf.gather(self.children, nodes[:, :ranked]), [tf.shape(nodes)[0], -1])
        scores = ops.take_rows(spread, tf.gather(self.parents, candidates)) \
            + ops.take_rows(p, tf.minimum(candidates, num_classes - 1)) * tf.gather(self.leaf_weight, candidates)
        values, ids = _top_k_lowest_id_first(tf.where(candidates < num_classes, scores, float("-inf")), candidates, k)
        if ranked == num_nodes:  # every node's classes are candidates
            return ids
        bound, kth = upper[:, num_nodes - 1], values[:, k - 1]
        next_first = tf.gather(self.children[:, 0], nodes[:, num_nodes - 1])
        complete = tf.reduce_all((bound < kth) | ((bound == kth) & (next_first > ids[:, k - 1])))
        return tf.cond(complete, lambda: ids, lambda: ops.top_k(
            decoding.negated_cost(p, levels, self.tables, self.cost, ops, spread), k)[1])


def _top_k_lowest_id_first(scores, ids, k):
    """(values, ids) [B, k] of the k best `scores` [B, n] (finite or -inf), equal scores by lowest id:
    one top-k over int64 keys (the score's order-preserving int32 bits above the negated id)."""
    import tensorflow as tf

    bits = tf.bitcast(scores + 0.0, tf.int32)  # + 0.0: -0.0 -> +0.0 (equal scores, equal keys)
    ordered = tf.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # int order == float order
    keys = tf.bitwise.left_shift(tf.cast(ordered, tf.int64), 32) - tf.cast(ids, tf.int64)
    _, where = tf.math.top_k(keys, k)
    return tf.gather(scores, where, batch_dims=1), tf.gather(ids, where, batch_dims=1)


def gather_block_size(width, target=100):
    """Columns per block when blocks are gathered (`ChainRuns`, class-major top-k): a divisor of `width`
    within 2x of min(target, sqrt(width)) when there is one (else padded).

    Example:

    >>> gather_block_size(100_000), gather_block_size(24_532), gather_block_size(200)
    (100, 100, 10)
    """
    target = min(target, max(2, round(math.sqrt(width))))
    divisors = [d for d in range(max(2, target // 2), 2 * target + 1) if width % d == 0]
    return min(divisors, key=lambda d: abs(math.log(d / target))) if divisors else target


def _level_matrix(sizes):
    """[sum(sizes), len(sizes)] float64: 1 where a row belongs to a level."""
    level = np.repeat(np.arange(len(sizes)), sizes)
    return (level[:, None] == np.arange(len(sizes))).astype(np.float64)


def _whole_blocks(runs):
    """[nodes, W, 2] (block, 1): the whole blocks of a level's runs (`level_runs`), (0, 0) after them."""
    length = runs[:, :, 7] - runs[:, :, 6]
    steps = np.arange(max(int(length.max()), 0))
    valid = (steps < length[:, :, None]).reshape(len(runs), -1)
    blocks = np.where(valid, (runs[:, :, 6:7] + steps).reshape(len(runs), -1), 0)
    order = np.argsort(~valid, axis=1, kind="stable")
    table = np.stack([np.take_along_axis(blocks, order, 1), np.take_along_axis(valid, order, 1)], axis=-1)
    return np.ascontiguousarray(table[:, :max(int(valid.sum(axis=1).max()), 1)], dtype=np.int32)


def _nonempty(rows):
    """Rows [nodes, P, 3] with the empty ones (end <= first column) moved last and dropped where no node
    needs them; empty rows become (0, 0, 0)."""
    empty = rows[:, :, 2] <= rows[:, :, 1]
    order = np.argsort(empty, axis=1, kind="stable")
    rows = np.where(empty[:, :, None], 0, rows)
    rows = np.take_along_axis(rows, order[:, :, None], axis=1)
    return np.ascontiguousarray(rows[:, :max(int((~empty).sum(axis=1).max()), 1)], dtype=np.int32)


def level_runs(ancestors, block):
    """int32 [nodes, R, 8]: every node's runs of consecutive class ids (R = the most runs of a node).

    A run [s, e) is (first block, its first and end columns, last block, its
    end column as (block, 0, end), then the blocks in between as [lo, hi));
    a run inside one block has an empty last part; unused rows are zeros
    (empty).

    Example:

    >>> level_runs(np.array([0, 0, 1, 0]), 2)[:, :, [0, 1, 2, 6, 7]].tolist()
    [[[0, 0, 2, 0, 0], [1, 1, 2, 0, 0]], [[1, 0, 1, 0, 0], [0, 0, 0, 0, 0]]]
    """
    ancestors = np.asarray(ancestors, np.int64)
    order = np.lexsort((np.arange(len(ancestors)), ancestors))  # by node, then class id
    node = ancestors[order]
    first = np.flatnonzero(np.r_[True, (node[1:] != node[:-1]) | (order[1:] != order[:-1] + 1)])
    run_node, start = node[first], order[first]
    end = np.r_[order[first[1:] - 1], order[-1]] + 1
    counts = np.bincount(run_node, minlength=int(ancestors.max()) + 1)
    slot = np.arange(len(first)) - np.repeat(np.cumsum(counts) - counts, counts)
    head, last = start // block, (end - 1) // block
    one = head == last
    zero = np.zeros_like(start)
    columns = [head, start - head * block, np.where(one, end - head * block, block),
               np.where(one, 0, last), zero, np.where(one, 0, end - last * block),
               np.where(one, 0, head + 1), np.where(one, 0, last)]
    table = np.zeros((len(counts), int(counts.max()), 8), np.int32)
    table[run_node, slot] = np.stack(columns, axis=1)
    return table


class _LazyOps:
    """`TENSORFLOW_OPS`, created on first use (importing this module does not import TensorFlow)."""

    _ops = None

    def __getattr__(self, name):
        if _LazyOps._ops is None:
            _LazyOps._ops = _TensorFlowOps()
        return getattr(_LazyOps._ops, name)


TENSORFLOW_OPS = _LazyOps()


def _flatten(out, depth):
    """The decoder's dict -> the signature's outputs (one tensor per level and kind)."""
    result = {"classes": out["classes"], "class_ids": out["class_ids"], "scores": out["scores"]}
    if "top_k_ids" in out:
        result.update(top_k_ids=out["top_k_ids"], top_k_scores=out["top_k_scores"],
                      top_k_classes=out["top_k_classes"])
    import tensorflow as tf

    columns = {kind: tf.unstack(out[f"level_{kind}"], num=depth, axis=1) for kind in ("ids", "names", "scores")}
    for level in range(depth):  # one Unpack op per kind (not one slice per level: batch-1 latency)
        for kind, values in columns.items():
            result[f"level_{level}_{kind}"] = values[level]
    if "prediction" in out:
        result.update(prediction=out["prediction"], prediction_level=out["prediction_level"],
                      prediction_score=out["prediction_score"])
    return result


def serving_decoder(hierarchy, *, decoder="argmax", cost="path", backoff_threshold=None, top_k=None,
                    from_logits=True, dense_limit=None, topk_min_classes=None, chain_runs=None,
                    class_major_min_classes=None, cost_top_k_ranker=None):
    """Builds the tables once and returns `decode(scores) -> {output name: tensor}` in TensorFlow ops.

    Same decisions and values as `keras_hier.decoding.decode` (the same
    functions, run on TensorFlow primitives); the outputs are named as in
    `keras_hier.export.output_names`.

    Args:
        hierarchy: the `keras_hier.Hierarchy`.
        decoder, cost, backoff_threshold, top_k: as `keras_hier.decoding.decode`.
        from_logits: whether the scores are logits (softmax in the graph).
        dense_limit: override of `decoding.DENSE_LIMIT` (tests force both layouts).
        topk_min_classes: override of `TOPK_MIN_CLASSES` (tests force the blocked top-k).
        chain_runs: whether the argmax decoder sums only the chosen chains (`ChainRuns`; an int: with
            blocks of that size); default: for trees past the dense limit whose chains hold at most
            `MAX_CHAIN_RUNS` runs of class ids.
        class_major_min_classes: override of `CLASS_MAJOR_MIN_CLASSES` (tests force both layouts).
        cost_top_k_ranker: whether the class-major `expected_cost` decoder ranks under the best nodes only
            (`CostTopK`, where it applies): True always, False never; default: when its candidates are few
            (`CostTopK.pays`). Tests force both.

    Example:

    >>> import numpy as np, tensorflow as tf
    >>> from keras_hier import Hierarchy
    >>> fn = serving_decoder(Hierarchy.from_paths(["a/x", "a/y", "b/z"]), top_k=2)
    >>> out = fn(tf.constant(np.log([[0.3, 0.3, 0.4]]), tf.float32))
    >>> out["classes"].numpy().tolist(), out["level_0_names"].numpy().tolist()
    ([b'z'], [b'b'])
    """
    backoff_threshold, top_k = decoding.check_decoder_arguments(hierarchy, decoder, cost, backoff_threshold, top_k)
    tables = decoding.DecoderTables(hierarchy, **({} if dense_limit is None else {"dense_limit": dense_limit}))
    if decoder == "expected_cost":
        tables.cost_terms(cost)  # built now, at export time
    ops = TENSORFLOW_OPS if topk_min_classes is None else _TensorFlowOps(topk_min_classes)
    chain = None
    if decoder == "argmax" and (not tables.dense if chain_runs is None else chain_runs):
        block = chain_runs if type(chain_runs) is int else gather_block_size(tables.num_classes)
        chain = ChainRuns(tables, block)
        if chain_runs is None and chain.num_runs > MAX_CHAIN_RUNS:
            chain = None

    class_major = not tables.dense and chain is None and tables.num_classes >= (
        CLASS_MAJOR_MIN_CLASSES if class_major_min_classes is None else class_major_min_classes)
    cost_top_k = None
    if class_major:
        ops = _ClassMajorOps(TOPK_MIN_CLASSES if topk_min_classes is None else topk_min_classes)
        if decoder == "expected_cost" and cost_top_k_ranker is not False and CostTopK.applies(tables, cost):
            cost_top_k = CostTopK(tables, cost, ops)
            if cost_top_k_ranker is None and not cost_top_k.pays(top_k or 1):
                cost_top_k = None

    def decode(scores):
        p = ops.softmax(scores) if from_logits else ops.float32(scores)
        if class_major:
            p = ops.tf.transpose(p)
        out = decoding.decode_probabilities(p, tables, ops, decoder=decoder, cost=cost, chain=chain,
                                            cost_top_k=cost_top_k, backoff_threshold=backoff_threshold,
                                            top_k=top_k, names=True)
        return _flatten(out, tables.depth)

    return decode


# ------------------------------------------------------------- image bytes
def image_header_pixels(data):
    """width * height read from a PNG / GIF / BMP / JPEG header, without decoding (int64; -1: another format)."""
    import tensorflow as tf

    padded = tf.strings.join([data, tf.constant(b"\0" * 32)])

    def unsigned(pos, size, big_endian):
        raw = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, pos, size), tf.uint8), tf.int64)
        weights = tf.constant([256 ** (size - 1 - k) if big_endian else 256 ** k for k in range(size)], tf.int64)
        return tf.reduce_sum(raw * weights)

    def signed32(pos):
        value = unsigned(pos, 4, False)
        return tf.abs(tf.where(value >= 2 ** 31, value - 2 ** 32, value))

    magic = tf.strings.substr(padded, 0, 8)
    is_png = tf.equal(magic, b"\x89PNG\r\n\x1a\n")
    is_gif = tf.equal(tf.strings.substr(padded, 0, 3), b"GIF")
    is_bmp = tf.equal(tf.strings.substr(padded, 0, 2), b"BM")
    is_jpeg = tf.equal(tf.strings.substr(padded, 0, 2), b"\xff\xd8")
    return tf.case([
        (is_png, lambda: unsigned(16, 4, True) * unsigned(20, 4, True)),
        (is_gif, lambda: unsigned(6, 2, False) * unsigned(8, 2, False)),
        (is_bmp, lambda: signed32(18) * signed32(22)),
        (is_jpeg, lambda: tf.reduce_prod(tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)))],
        default=lambda: tf.constant(-1, tf.int64), exclusive=False)


def decode_images(image_bytes, image_size, channels, *, max_image_pixels, pixel_scale=1.0 / 255.0,
                  dtype="float32", input_name="image_bytes"):
    """Encoded images [B] -> [B, height, width, channels] of `dtype`, inside the graph.

    Each image's size is read from its header first (`image_header_pixels`);
    an image that is not a JPEG/PNG/GIF/BMP or has more than
    `max_image_pixels` pixels fails the call, before decoding, with an
    InvalidArgument naming its index in the batch. In a batch of several
    images, one that the decoder refuses (corrupt or truncated data) is named
    by its index too: the batch is decoded by a `tf.data` pipeline that drops
    the images whose decoding fails, and the first missing index is reported
    (a graph cannot catch an op's error otherwise). A single image skips that
    pipeline (0.2 ms per call) and gets the decoder's own message. Images are
    decoded to `channels`, resized (bilinear) to `image_size` and, for a float
    `dtype`, multiplied by `pixel_scale`; uint8 pixels are rounded back to uint8.

    Example:

    >>> import numpy as np, tensorflow as tf
    >>> png = tf.io.encode_png(np.zeros((5, 4, 3), np.uint8))
    >>> decode_images(tf.stack([png]), (2, 2), 1, max_image_pixels=100).shape.as_list()
    [1, 2, 2, 1]
    """
    import tensorflow as tf

    def decode_one(data):
        image = tf.io.decode_image(data, channels=channels, expand_animations=False, dtype=tf.uint8)
        return tf.ensure_shape(tf.image.resize(image, image_size, method="bilinear"), (*image_size, channels))

    def header_checks(index, pixels):
        return [tf.debugging.Assert(pixels >= 0, [input_name, index, "is not a JPEG, PNG, GIF or BMP image"]),
                tf.debugging.Assert(pixels <= max_image_pixels, [input_name, index, "has", pixels,
                                                                 "pixels, above the limit of", max_image_pixels,
                                                                 "(max_image_pixels)"])]

    def one_by_one():
        def checked(args):
            index, data = args
            with tf.control_dependencies(header_checks(index, image_header_pixels(data))):
                return decode_one(data)

        return tf.map_fn(checked, (tf.range(count), image_bytes),
                         fn_output_signature=tf.TensorSpec((*image_size, channels), tf.float32))

    count = tf.shape(image_bytes)[0]
    pixels = tf.cond(count > 1, lambda: _decoded_batch(image_bytes, (*image_size, channels), decode_one, header_checks,
                                                       max_image_pixels, input_name), one_by_one)  # float32, 0..255
    if dtype == "uint8":
        return tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)
    return tf.cast(pixels * pixel_scale, dtype)


def _decoded_batch(image_bytes, shape, decode_one, header_checks, max_image_pixels, input_name):
    """`decode_one` of every image by a parallel `tf.data` map that drops the images whose decoding fails;
    the first image missing from its output is named, as are the images `header_checks` refuses."""
    import tensorflow as tf

    count = tf.shape(image_bytes)[0]
    blank = tf.zeros(shape)

    def decode(index, data):
        pixels = image_header_pixels(data)
        usable = (pixels >= 0) & (pixels <= max_image_pixels)  # the others are refused below, never decoded
        return index, pixels, tf.cond(usable, lambda: decode_one(data), lambda: blank)

    images = tf.data.Dataset.from_tensor_slices((tf.range(count), image_bytes))
    images = images.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    end = tf.data.Dataset.from_tensors((count, tf.constant(0, tf.int64), blank))  # one batch even if all fail
    ids, pixels, images = images.concatenate(end).batch(tf.cast(count, tf.int64) + 1).get_single_element()
    dropped, unknown, large = ids != tf.range(tf.shape(ids)[0]), pixels < 0, pixels > max_image_pixels
    checks = [tf.debugging.Assert(~tf.reduce_any(dropped), [input_name, _first(dropped),
                                                            "could not be decoded (corrupt or truncated data)"])]
    checks += header_checks(_first(unknown | large), tf.gather(pixels, _first(unknown | large)))
    with tf.control_dependencies(checks):
        return tf.identity(images[:count])


def _first(flags):
    """Index of the first True of a bool vector; its last index when none (the end marker's row)."""
    import tensorflow as tf

    size = tf.shape(flags)[0]
    return tf.reduce_min(tf.where(flags, tf.range(size), size - 1))
