"""Hierarchy-consistent predictions: node marginals, decoders, back-off, written once.

The decoders are written once, as small functions over a handful of array
primitives (`ops`): `NUMPY_OPS` here (evaluation, `decode`) and
`keras_hier.serving_graph.TENSORFLOW_OPS` (the exported SavedModel, whose
graph holds TensorFlow ops only). Everything that depends on the tree alone
is computed once, in NumPy, by `DecoderTables` (at export time for a
SavedModel, cached per hierarchy for evaluation).

- Node marginals: the probability of a node is the sum of the probabilities of
  the classes (leaves) under it, summed bottom-up, level by level (0/1
  membership matmuls for small trees, segment sums otherwise; never a [C, C]
  matrix), so a parent's marginal is never below its child's, even after
  float rounding.
- `argmax`: the most probable class and its ancestor chain.
- `expected_cost` (CRM, Karthik et al. 2021): the class j minimising
  sum_i cost(i, j) p_i for a tree cost, factorised per level (see
  `expected_cost`).
- Back-off: the deepest node on the chosen chain whose marginal reaches a
  threshold (root when none does), with its level.

`from_logits` follows `keras_hier.outputs`: True means scores are logits
(softmax applied here), False means probabilities, None (the default)
means "find out": a tensor carrying Keras' softmax mark is taken as
probabilities, anything else as logits.
"""

import functools

import numpy as np

from keras_hier.hierarchy import DISTANCE_KINDS, Hierarchy, check_distance_kind
from keras_hier.outputs import tensor_is_probability

__all__ = ["DECODERS", "COSTS", "ROOT_NAME", "DecoderTables", "NUMPY_OPS", "decoder_tables", "node_marginals",
           "level_marginals", "expected_cost", "decode", "decode_probabilities", "check_hierarchy",
           "check_decoder_arguments", "marginals", "negated_cost", "node_cost", "chain_scores", "backoff", "rank"]

DECODERS = ("argmax", "expected_cost")
COSTS = DISTANCE_KINDS
#: Name reported for the implicit root when back-off reaches it (level -1).
ROOT_NAME = "<root>"
#: Membership-matrix entries up to which node sums are dense matmuls (batch-major layout).
DENSE_LIMIT = 1 << 18


def check_hierarchy(hierarchy, where="hierarchy"):
    """Raises `TypeError` unless `hierarchy` is a `keras_hier.Hierarchy`."""
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError(f"{where} must be a keras_hier.Hierarchy, got {type(hierarchy).__name__}")
    return hierarchy


def check_decoder_arguments(hierarchy, decoder="argmax", cost="path", backoff_threshold=None, top_k=None):
    """Validates the decoder options; returns `(backoff_threshold, top_k)` normalised.

    Raises:
        ValueError / TypeError naming the bad argument.
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
        backoff_threshold = float(backoff_threshold)
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k:
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        top_k = int(min(top_k, hierarchy.num_classes))
    return backoff_threshold, top_k


# ---------------------------------------------------------------- the tables
class _Reduction:
    """One bottom-up step: rows with parent ids `ids` summed into `num_segments` rows."""

    def __init__(self, ids, num_segments):
        self.ids = np.asarray(ids, np.int32)
        self.num_segments = int(num_segments)
        self.order = np.argsort(self.ids, kind="stable").astype(np.int32)
        self.starts = np.searchsorted(self.ids[self.order], np.arange(self.num_segments)).astype(np.int64)
        self.membership = None

    def matrix(self):
        """[rows, num_segments] 0/1 float32 membership matrix."""
        if self.membership is None:
            matrix = np.zeros((len(self.ids), self.num_segments), np.float32)
            matrix[np.arange(len(self.ids)), self.ids] = 1.0
            self.membership = matrix
        return self.membership


class DecoderTables:
    """Everything the decoders need that depends on the tree alone (NumPy, built once).

    Args:
        hierarchy: the `keras_hier.Hierarchy`.
        dense_limit: membership-matrix entries up to which marginals are
            matmuls with 0/1 matrices; above it, segment sums (both on
            [batch, nodes] arrays).

    Attributes (C classes, L = depth levels): `steps` (the reductions from
    the classes up to level 0), `chain_cols` int32 [C, L] (column of each
    chain node in the stacked marginals), `level_ids` int32 [C, L],
    `chain_nodes` int32 [C, L + 1] (1 + `node_ids`, 0 = root: index into
    `names`), `names` (root name then every node name), `class_names`,
    `leaf_depths`.

    Example:

    >>> t = DecoderTables(Hierarchy.from_paths(["a/x", "a/y", "b/z"]))
    >>> t.chain_cols.tolist(), t.dense
    ([[0, 2], [0, 3], [1, 4]], True)
    """

    def __init__(self, hierarchy, dense_limit=DENSE_LIMIT):
        check_hierarchy(hierarchy)
        self.hierarchy = hierarchy
        self.num_classes, self.depth = hierarchy.num_classes, hierarchy.depth
        sizes = [int(s) for s in hierarchy.level_sizes]
        ancestors = [np.asarray(hierarchy.ancestors(level), np.int32) for level in range(self.depth)]
        self.ancestors = ancestors
        self.steps = [] if self.depth == 1 else [_Reduction(ancestors[-2], sizes[-2])] + [
            _Reduction(hierarchy.parents(level), sizes[level - 1]) for level in range(self.depth - 2, 0, -1)]
        self.dense = sum(len(s.ids) * s.num_segments for s in self.steps) <= dense_limit
        upper = np.concatenate([[0], np.cumsum(sizes[:-1])]).astype(np.int32)  # columns of [P_0, .., P_{L-2}, p]
        classes = np.arange(self.num_classes, dtype=np.int32)
        self.chain_cols = np.stack([upper[level] + ancestors[level] for level in range(self.depth - 1)]
                                   + [upper[-1] + classes], axis=1).astype(np.int32)
        self.level_ids = np.stack(ancestors, axis=1).astype(np.int32)
        node_ids = np.asarray(hierarchy.node_ids, np.int32)
        self.chain_nodes = np.concatenate([np.zeros((self.num_classes, 1), np.int32), node_ids + 1], axis=1)
        self.names = np.array([ROOT_NAME] + [n for level in range(self.depth) for n in hierarchy.level_names(level)],
                              dtype=object)
        self.class_names = np.array(list(hierarchy.classes), dtype=object)
        self.leaf_depths = np.asarray(hierarchy.leaf_depths, np.int32)
        self.leaf_order = np.argsort(ancestors[-1]).astype(np.int32)  # class-level node n holds class leaf_order[n]

    @functools.lru_cache(maxsize=4)  # noqa: B019 (a table object lives as long as its hierarchy)
    def cost_terms(self, cost):
        """The negated, factorised expected cost of `cost` (see `expected_cost`).

        Returns:
            Dict: `bias` [1, C], `e_coef` (float), `leaf_weight` [1, C] and
            `weights` ([1, n_l], one per level above the classes), `parent_bias` [1, n_{L-2}] (the bias of
            the classes of each node of level L-2: one value per node, as its classes are either all of
            depth L or one shallower leaf), `spread` (dense: the transposed membership matrices top-down)
            or `gathers` (segment: parent ids top-down).
        """
        check_distance_kind(cost, "cost")
        h = self.hierarchy
        mask = np.asarray(h.level_mask, bool)
        real = []  # node n of level l is on the path of its classes (not a copy of a shallow leaf)
        for level in range(self.depth):
            flags = np.zeros(h.num_nodes(level), bool)
            flags[self.ancestors[level]] = mask[:, level]
            real.append(flags)
        if cost == "path":
            # t(i, j) = d_i + d_j - 2 lca_depth(i, j); sum_i p_i lca_depth(i, j) = sum_{l < d_j} P_l(anc_l(j)).
            weights = [np.where(flags, -2.0, 0.0) for flags in real]
            bias, e_coef = self.leaf_depths.astype(np.float64), 1.0
        else:
            # lca(i, j) is the deepest node of j's chain holding i; heights only decrease along the chain:
            # sum_i p_i h(lca) = h(root) + sum_{l < d_j} (h(a_l) - h(a_{l-1})) P_l(a_l).
            weights = []
            for level in range(self.depth):
                parent_height = np.full(h.num_nodes(0), self.depth) if level == 0 \
                    else np.asarray(h.node_heights(level - 1))[h.parents(level)]
                weights.append(np.where(real[level], np.asarray(h.node_heights(level)) - parent_height, 0.0))
            bias, e_coef = np.full(self.num_classes, self.depth, np.float64), 0.0
        negated = [(-w).astype(np.float32) for w in weights]
        terms = {"bias": (-bias).astype(np.float32)[None, :], "e_coef": e_coef,
                 "leaf_weight": negated[-1][self.ancestors[-1]][None, :]}
        terms["weights"] = [w[None, :] for w in negated[:-1]]
        if self.depth > 1:
            parent_bias = np.zeros(h.num_nodes(self.depth - 2), np.float32)
            parent_bias[self.ancestors[-2]] = terms["bias"][0]
            assert np.array_equal(parent_bias[self.ancestors[-2]], terms["bias"][0])
            terms["parent_bias"] = parent_bias[None, :]
        if self.dense:
            terms["spread"] = [step.matrix().T.copy() for step in self.steps[::-1]]
        else:
            terms["gathers"] = [step.ids for step in self.steps[::-1]]
        return terms


@functools.lru_cache(maxsize=16)
def decoder_tables(hierarchy):
    """`DecoderTables(hierarchy)`, cached per hierarchy (it is immutable)."""
    return DecoderTables(hierarchy)


# ------------------------------------------------------------ the primitives
class _NumpyOps:
    """The array primitives of the decoders, in NumPy (float32)."""

    @staticmethod
    def softmax(x):
        x = np.asarray(x, np.float32)
        e = np.exp(x - x.max(axis=-1, keepdims=True)) if x.size else x
        return e / e.sum(axis=-1, keepdims=True) if x.size else x

    float32 = staticmethod(lambda x: np.asarray(x, np.float32))
    matmul = staticmethod(np.matmul)
    take = staticmethod(lambda table, ids: np.asarray(table)[ids])
    take_columns = staticmethod(lambda x, ids: x[:, ids])
    take_rows = staticmethod(lambda x, ids: np.take_along_axis(x, ids, axis=1))
    take_along = take_rows  # [B, n] outputs (`take_rows` reads the scores, which a layout may store class-major)
    line = staticmethod(lambda v: v)  # a [1, n] table as the scores' layout broadcasts it
    join_nodes = staticmethod(lambda xs: np.concatenate(xs, axis=1))  # marginals of several levels, one array
    concat = staticmethod(lambda xs, axis: np.concatenate(xs, axis=axis))
    argmax = staticmethod(lambda x: np.argmax(x, axis=-1).astype(np.int32))
    minimum = staticmethod(np.minimum)

    @staticmethod
    def segment_sum(x, step):
        """Columns of `x` [B, rows] summed per parent: [B, num_segments] (segments are never empty)."""
        if x.shape[0] == 0:
            return np.zeros((0, step.num_segments), x.dtype)
        return np.add.reduceat(x[:, step.order], step.starts, axis=1)

    @staticmethod
    def top_k(x, k):
        """(values, int32 ids) of the k largest per row; ties: lower index first (as tf.math.top_k)."""
        if x.shape[-1] <= 4096 or x.shape[0] == 0:
            ids = np.argsort(-x, axis=1, kind="stable")[:, :k]
        else:
            part = np.argpartition(-x, k - 1, axis=1)[:, :k]
            order = np.lexsort((part, -np.take_along_axis(x, part, axis=1)), axis=1)
            ids = np.take_along_axis(part, order, axis=1)
        return np.take_along_axis(x, ids, axis=1), ids.astype(np.int32)

    @staticmethod
    def count_at_least(x, threshold):
        return np.sum(x >= threshold, axis=1).astype(np.int32)

    @staticmethod
    def pad_ones_left(x):
        return np.concatenate([np.ones((x.shape[0], 1), x.dtype), x], axis=1)


NUMPY_OPS = _NumpyOps()


# --------------------------------------------------------- the decoders (once)
def marginals(p, tables, ops):
    """[P_0, ..., P_{L-2}]: node marginals [B, n_l] of the levels above the classes, summed bottom-up."""
    levels = []
    current = p
    for step in tables.steps:
        current = ops.matmul(current, step.matrix()) if tables.dense else ops.segment_sum(current, step)
        levels.append(current)
    return levels[::-1]


def negated_cost(p, levels, tables, cost, ops, spread=None):
    """[B, C]: -(expected cost - e_coef * E[depth]), the ranking of the `expected_cost` decoder
    (`spread`: `node_cost` when the caller has it)."""
    terms = tables.cost_terms(cost)
    leaf_term = p * ops.line(terms["leaf_weight"])
    if tables.depth == 1:
        return leaf_term + ops.line(terms["bias"])
    spread = node_cost(levels, tables, cost, ops) if spread is None else spread
    if tables.dense:
        return ops.matmul(spread, terms["spread"][-1]) + leaf_term
    return ops.take_columns(spread, terms["gathers"][-1]) + leaf_term


def node_cost(levels, tables, cost, ops):
    """[B, n_{L-2}]: the part of `negated_cost` shared by the classes of each node of level L-2 (every
    term but the class's own marginal); the ranking of class j is this at j's parent + leaf_weight_j p_j."""
    terms = tables.cost_terms(cost)
    weights = [ops.line(w) for w in terms["weights"]]
    running = levels[0] * weights[0]
    for level in range(1, tables.depth - 1):
        running = ops.matmul(running, terms["spread"][level - 1]) if tables.dense \
            else ops.take_columns(running, terms["gathers"][level - 1])
        running = running + levels[level] * weights[level]
    return running + ops.line(terms["parent_bias"])


def chain_scores(p, levels, class_ids, scores, tables, ops):
    """[B, L]: marginals of the chosen classes' ancestors, level 0 first (the class's own score last)."""
    if not levels:
        return scores[:, None]
    above = ops.take_rows(ops.join_nodes(list(levels)), ops.take(tables.chain_cols[:, :-1], class_ids))
    return ops.concat([above, scores[:, None]], axis=1)


def backoff(level_scores, class_ids, threshold, tables, ops):
    """The deepest chain node reaching `threshold`: (level (-1 = root), node (+1, 0 = root), score).

    The chain's marginals never increase going down, so the levels reaching
    the threshold are a prefix; copies below a shallow leaf are cut at its depth.
    """
    count = ops.minimum(ops.count_at_least(level_scores, threshold), ops.take(tables.leaf_depths, class_ids))
    where = count[:, None]
    score = ops.take_along(ops.pad_ones_left(level_scores), where)[:, 0]
    node = ops.take_along(ops.take(tables.chain_nodes, class_ids), where)[:, 0]
    return count - 1, node, score


def rank(p, levels, tables, decoder, cost, top_k, ops, cost_top_k=None):
    """(class_ids, scores, top_k_ids or None, top_k_scores or None) of a decoder.

    `cost_top_k`, when given, is `cost_top_k(p, levels, k) -> ids` [B, k]: the
    `expected_cost` decoder's k best classes computed another way (the
    serving graph's wide trees)."""
    if decoder == "expected_cost" and cost_top_k is not None:
        top_ids = cost_top_k(p, levels, top_k or 1)
        if top_k is None:
            return top_ids[:, 0], ops.take_rows(p, top_ids[:, :1])[:, 0], None, None
        top_scores = ops.take_rows(p, top_ids)
        return top_ids[:, 0], top_scores[:, 0], top_ids, top_scores
    ranking = p if decoder == "argmax" else negated_cost(p, levels, tables, cost, ops)
    if top_k is None:
        class_ids = ops.argmax(ranking)
        return class_ids, ops.take_rows(p, class_ids[:, None])[:, 0], None, None
    values, top_ids = ops.top_k(ranking, top_k)
    top_scores = values if decoder == "argmax" else ops.take_rows(p, top_ids)
    return top_ids[:, 0], top_scores[:, 0], top_ids, top_scores


def decode_probabilities(p, tables, ops=NUMPY_OPS, *, decoder="argmax", cost="path", backoff_threshold=None,
                         top_k=None, names=False, chain=None, cost_top_k=None):
    """The decoders on class probabilities [B, C], with `ops` (NumPy, TensorFlow, ...).

    Arguments are assumed checked (`check_decoder_arguments`). `chain`, when
    given, is `chain(p, class_ids, scores) -> level_scores` [B, L] computing the
    chosen chains' marginals another way (the serving graph's wide trees); the
    marginals of every node are then summed only for the `expected_cost` decoder.
    `cost_top_k` (see `rank`) likewise ranks the `expected_cost` decoder's classes.

    Returns:
        Dict as `decode` (without `probabilities`); with `names`, also
        `classes` [B], `level_names` [B, L], `top_k_classes` [B, k] and
        `prediction` [B] (node names; `ROOT_NAME` for the root).
    """
    levels = marginals(p, tables, ops) if chain is None or decoder == "expected_cost" else None
    class_ids, scores, top_ids, top_scores = rank(p, levels, tables, decoder, cost, top_k, ops, cost_top_k)
    level_scores = chain_scores(p, levels, class_ids, scores, tables, ops) if chain is None \
        else chain(p, class_ids, scores)
    out = {"class_ids": class_ids, "scores": scores, "level_ids": ops.take(tables.level_ids, class_ids),
           "level_scores": level_scores}
    if top_ids is not None:
        out.update(top_k_ids=top_ids, top_k_scores=top_scores)
    if backoff_threshold is not None:
        level, node, score = backoff(level_scores, class_ids, backoff_threshold, tables, ops)
        out.update(prediction_level=level, prediction_node=node - 1, prediction_score=score)
        if names:
            out["prediction"] = ops.take(tables.names, node)
    if names:
        out["classes"] = ops.take(tables.class_names, class_ids)
        out["level_names"] = ops.take(tables.names, ops.take(tables.chain_nodes[:, 1:], class_ids))
        if top_ids is not None:
            out["top_k_classes"] = ops.take(tables.class_names, top_ids)
    return out


# ------------------------------------------------------------ the public API
def _probabilities(scores, hierarchy, from_logits, where):
    probability = tensor_is_probability(scores)
    scores = np.asarray(scores, dtype=np.float32)
    shape = scores.shape
    if len(shape) != 2 or shape[-1] != hierarchy.num_classes:
        raise ValueError(f"{where}: expected scores of shape [batch, {hierarchy.num_classes}] "
                         f"(one column per class of the hierarchy), got shape {shape}")
    if from_logits is None:
        from_logits = not probability
    return NUMPY_OPS.softmax(scores) if from_logits else scores


def level_marginals(probabilities, hierarchy):
    """Probability of every node, one array per level (summed bottom-up).

    Level `depth - 1` is the class level (node order of
    `hierarchy.ancestors(-1)`); level l sums level l + 1 over the parent
    links, so a parent's marginal is never below a child's, even in float32.

    Args:
        probabilities: [B, C] class probabilities.
        hierarchy: `keras_hier.Hierarchy` with C classes.

    Returns:
        List of `depth` float32 arrays, [B, num_nodes(l)] each.

    Example:

    >>> h = Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> [np.asarray(m, "float64").round(3).tolist() for m in level_marginals(np.array([[0.2, 0.3, 0.5]]), h)]
    [[[0.5, 0.5]], [[0.2, 0.3, 0.5]]]
    """
    check_hierarchy(hierarchy)
    p = _probabilities(probabilities, hierarchy, False, "level_marginals")
    tables = decoder_tables(hierarchy)
    levels = marginals(p, tables, NUMPY_OPS)
    return [np.ascontiguousarray(m) for m in levels] + [p[:, tables.leaf_order]]


def node_marginals(probabilities, hierarchy):
    """Probability of every node of every level, indexed by `hierarchy.node_ids`.

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
    return np.concatenate(level_marginals(probabilities, hierarchy), axis=1)


def expected_cost(probabilities, hierarchy, cost="path"):
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
    p = _probabilities(probabilities, hierarchy, False, "expected_cost")
    tables = decoder_tables(hierarchy)
    ranking = negated_cost(p, marginals(p, tables, NUMPY_OPS), tables, cost, NUMPY_OPS)
    e_coef = tables.cost_terms(cost)["e_coef"]
    return (-ranking + e_coef * (p @ tables.leaf_depths.astype(np.float32))[:, None]).astype(np.float32)


def decode(scores, hierarchy, decoder="argmax", *, from_logits=None, cost="path", backoff_threshold=None,
           top_k=None):
    """Hierarchy-consistent predictions from class scores (NumPy).

    The exported SavedModel runs the same functions (`decode_probabilities`)
    with TensorFlow ops.

    Args:
        scores: [B, C] logits or probabilities (array or eager tensor).
        hierarchy: `keras_hier.Hierarchy` with C classes.
        decoder: `"argmax"` (most probable class) or `"expected_cost"` (the
            class with the smallest expected tree cost, see `expected_cost`).
        from_logits: True (logits: softmax applied here), False
            (probabilities) or None (default: probabilities when `scores`
            carries Keras' softmax mark, else logits; see `keras_hier.outputs`).
        cost: tree cost of the `expected_cost` decoder (`"path"` or
            `"lca_height"`).
        backoff_threshold: optional float in (0, 1]; adds the back-off outputs.
        top_k: optional int; adds the k best classes. They are ranked by the
            decoder: by probability for `argmax`, by increasing expected cost
            for `expected_cost`.

    Returns:
        Dict of NumPy arrays:
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
    backoff_threshold, top_k = check_decoder_arguments(hierarchy, decoder, cost, backoff_threshold, top_k)
    p = _probabilities(scores, hierarchy, from_logits, "decode")
    out = decode_probabilities(p, decoder_tables(hierarchy), NUMPY_OPS, decoder=decoder, cost=cost,
                               backoff_threshold=backoff_threshold, top_k=top_k)
    out["probabilities"] = p
    return out
