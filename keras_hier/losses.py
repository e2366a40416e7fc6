"""Hierarchy-aware losses for `model.compile`: SimLoss, HXE, soft labels, CORR.

Each loss is a pure function (`dense_simloss`, `tree_simloss`,
`hierarchical_cross_entropy`, `soft_label_cross_entropy`, `corr_loss`, and
`soft_target_simloss` / `soft_target_hxe` for target distributions: per
sample, float32 [B]) plus a thin serializable `keras.losses.Loss` class.
docs/conventions.md says which published definition each one follows.

Targets: integer class ids [B] or [B, 1]; or rows [B, C] of a target
distribution q (one-hot, label smoothing, mixup). A batch of exact one-hot
rows takes the integer path; other rows give every loss its expectation
under q (SimLoss: -log sum_c (q S)[c] p_c; HXE and soft labels: the
q-weighted mean of their per-class values). A label that is not a whole
class id in [0, C) raises eagerly and makes that sample's loss NaN inside a
compiled step (XLA drops assertions), which `keras.callbacks.TerminateOnNaN`
stops. An empty batch gives 0.

Predictions: `from_logits=None` (default) detects a softmax output as
Keras does (the `_keras_logits` mark on the tensor, TensorFlow backend) and
then uses the logits under it; anything else is taken as logits. `False`
takes probabilities (log with a floor at exact zeros), `True` logits. All
math is float32, also under a mixed-precision policy.

With a `Hierarchy`, SimLoss, HXE and soft labels never build a [C, C]
matrix: sum_j S[y, j] p_j = sum_l w_l P_l(anc_l(y)) where P_l are per-node
sums of the softmax (`keras_hier.tree_sums`, factors from
`keras_hier.factorisation`), O(B * nodes).

Numerics: sums are formed as sum_j S[y, j] exp(z_j - max z) (one `exp` per
row, no epsilon inside a log of probabilities). Since S[y, y] = 1, that sum
is at least exp(z_y - max z), and its log is taken as
max(log(sum), z_y - max z): exact whenever the sum does not underflow, and
equal to cross-entropy's value (finite, with a finite gradient) when it does.
"""

import base64
import weakref
import zlib

import keras
import numpy as np
from keras import ops

from keras_hier import tree_sums
from keras_hier.geometry import float32
from keras_hier.hierarchy import Hierarchy, check_distance_kind
from keras_hier.labels import sparse_labels
from keras_hier.outputs import tensor_is_probability, warn_probability_tensor
from keras_hier.similarity import TREE_RULES, validate_similarity
from keras_hier.factorisation import max_tree_distance, tree_factors

__all__ = ["SimLoss", "HierarchicalCrossEntropy", "SoftLabelCrossEntropy", "CORRLoss", "dense_simloss",
           "tree_simloss", "hierarchical_cross_entropy", "soft_label_cross_entropy", "corr_loss",
           "soft_target_simloss", "soft_target_hxe", "tree_similarity_targets", "hxe_level_weights",
           "HXE_WEIGHTINGS", "sparse_labels"]

#: HierarchicalCrossEntropy weightings: "depth" = the published code, "height" = the printed formula.
HXE_WEIGHTINGS = ("depth", "height")

_TINY = 1e-30
_CUSTOM_TARGET_WIDTH = 10_000  # classes from which the target logit's gradient is added in place (`_with_target`)
_LOG_ZERO = -1e30  # log 0 for entries S = 0: exp(z + _LOG_ZERO - max) is exactly 0 in float32


# ------------------------------------------------------------------ helpers
def _target_logit(z, labels):
    """z[b, labels[b]] (a flat gather: cheaper than take_along_axis, also backwards)."""
    num_classes = ops.shape(z)[-1]
    flat = ops.arange(ops.shape(z)[0], dtype="int32") * ops.cast(num_classes, "int32") + ops.cast(labels, "int32")
    return ops.take(ops.reshape(z, (-1,)), flat)


def _with_target(z, labels):
    """(z, z[b, labels[b]]), the target's gradient added without a pass over zeros.

    A gather's gradient is a dense [B, C] scatter into zeros, then one more
    addition over [B, C] (60-100 ms of a ~450 ms factorised loss step at
    C = 100 000). On TensorFlow a custom gradient instead adds the B target
    gradients into the upstream gradient of `z` (`tensor_scatter_nd_add`: at
    most one copy); other backends use the plain gather.
    """
    width = z.shape[-1]
    if keras.backend.backend() != "tensorflow" or (width is not None and width < _CUSTOM_TARGET_WIDTH):
        return z, _target_logit(z, labels)  # small C: the scatter is cheap, a custom gradient costs tracing time
    import tensorflow as tf

    index = ops.stack([ops.arange(ops.shape(z)[0], dtype="int32"), ops.cast(labels, "int32")], axis=1)
    flat = index[:, 0] * ops.cast(ops.shape(z)[-1], "int32") + index[:, 1]

    @ops.custom_gradient
    def pick(x):
        def grad(upstream_x, upstream_target):
            if upstream_x is None:
                upstream_x = ops.zeros_like(x)
            if upstream_target is None:
                return upstream_x
            return tf.tensor_scatter_nd_add(upstream_x, index, upstream_target)

        # identity: the output lives in the current graph (also inside a `cond` branch)
        return (tf.identity(x), ops.take(ops.reshape(x, (-1,)), flat)), grad

    return pick(z)


def _shifted(z):
    """z minus its row maximum (no gradient through the shift); `initial` keeps an empty batch legal."""
    shift = ops.stop_gradient(ops.max(z, axis=-1, keepdims=True, initial=-np.inf))
    return z - shift


def _safe_log(sum_value, log_floor):
    """log(sum_value), exact unless it underflowed; then log_floor (<= the true value)."""
    log_sum = ops.where(sum_value >= _TINY, ops.log(ops.maximum(sum_value, _TINY)), _LOG_ZERO)
    return ops.maximum(log_sum, log_floor)


def _tree_softmax(logits, labels, hierarchy, column_scale=None):
    """The softmax's sums on each label's path, up to one factor per sample.

    Returns (path [B, depth], root [B], log_total [B], log_target [B]) with
    path / root the sums of u * column_scale under the path's nodes / all
    classes, log_total = log sum_c u_c and log_target = log u_y, for u
    proportional to softmax(logits): on TensorFlow's large trees u = p
    (`tree_sums.softmax_path_sums`, fused), else u = exp(z - max z).
    """
    z = float32(logits)
    if tree_sums.fused_path_sums(hierarchy) and z.shape[0] != 0:
        path, root, log_target = tree_sums.softmax_path_sums(z, labels, hierarchy, column_scale)
        return path, root, ops.zeros_like(log_target), log_target
    shifted, target = _with_target(_shifted(z), labels)
    path, root, total = tree_sums.scaled_path_sums(ops.exp(shifted), labels, hierarchy, column_scale,
                                                   ops.exp(target))
    return path, root, ops.log(total), target


def _logsumexp(z, labels):
    """logsumexp over the last axis; on TensorFlow one softmax forward (z_y - log p_y) and one
    multiplication backward."""
    if keras.backend.backend() != "tensorflow" or z.shape[0] == 0:
        return ops.logsumexp(z, axis=-1)
    import tensorflow as tf

    labels = tf.cast(labels, tf.int32)

    @tf.custom_gradient
    def logsumexp(x):
        p, log_target = tree_sums.softmax_log_target(x, labels)
        return tf.gather(x, labels, batch_dims=1) - log_target, lambda upstream: upstream[:, None] * p

    return logsumexp(z)


def _log_weights(r):
    """log r with log 0 = _LOG_ZERO (r >= 0, no gradient needed)."""
    return ops.where(r > 0, ops.log(ops.maximum(r, _TINY)), _LOG_ZERO)


# ------------------------------------------------------------ functional core
def dense_simloss(labels, logits, similarity):
    """SimLoss with a dense S: -log sum_c S[y, c] softmax(z)_c.

    Only the B rows S[y] are gathered (S stays one tensor, not a traced
    constant); no log of S is formed, so S = 0 entries need no epsilon.

    Args:
        labels: int [B] class ids.
        logits: float [B, C].
        similarity: float32 [C, C] S (tensor or array).

    Returns:
        float32 [B].
    """
    rows = ops.take(similarity, labels, axis=0)
    shifted, target = _with_target(_shifted(float32(logits)), labels)
    e = ops.exp(shifted)
    return ops.log(ops.sum(e, axis=-1)) - _safe_log(ops.sum(rows * e, axis=-1), target)


def soft_target_simloss(targets_similarity, logits):
    """SimLoss for a target distribution q: -log sum_c r_c softmax(z)_c with r = q S.

    Args:
        targets_similarity: float32 [B, C], r = q S (`q @ S`, or
            `tree_similarity_targets` for a tree).
        logits: float [B, C].

    Returns:
        float32 [B] = logsumexp(z) - logsumexp(z + log r) (exact, stable).
    """
    z = float32(logits)
    return ops.logsumexp(z, axis=-1) - ops.logsumexp(z + _log_weights(targets_similarity), axis=-1)


def tree_simloss(labels, logits, hierarchy, factors):
    """SimLoss with S factorised over the tree (see `keras_hier.factorisation`).

    Args:
        labels: int [B] class ids.
        logits: float [B, C].
        hierarchy: a `Hierarchy` (or its `keras_hier.tree_sums.TreePlan`).
        factors: `TreeFactors` of S.

    Returns:
        float32 [B], equal to `dense_simloss` with S = factors.dense(hierarchy),
        in O(B * nodes) time and memory.
    """
    path, root, log_total, log_target = _tree_softmax(logits, labels, hierarchy, factors.column_scale)
    weights = ops.take(factors.weights, labels, axis=0)  # [B, depth + 1]
    numerator = weights[:, 0] * root + ops.sum(weights[:, 1:] * path, axis=-1)
    return log_total - _safe_log(numerator, log_target)


def tree_similarity_targets(targets, hierarchy, factors):
    """r = q S for target rows q [B, C] and a factorised S, O(B * C * depth), no [C, C].

    (q S)[c] = column_scale[c] * (sum_y q_y w[y, 0]
               + sum_l sum_{y under anc_l(c)} q_y w[y, l + 1]).

    Args:
        targets: float [B, C] rows q.
        hierarchy: a `keras_hier.Hierarchy`.
        factors: `TreeFactors` of S.

    Returns:
        float32 [B, C].
    """
    q_t = ops.transpose(float32(targets))  # [C, B]
    weights = factors.weights
    out = ops.sum(q_t * ops.convert_to_tensor(weights[:, :1]), axis=0, keepdims=True)  # [1, B]: the root term
    for level in range(hierarchy.depth):
        ids = np.asarray(hierarchy.ancestors(level), dtype=np.int32)
        column = ops.convert_to_tensor(weights[:, level + 1:level + 2])
        node = ops.segment_sum(q_t * column, ids, num_segments=hierarchy.num_nodes(level))
        out = out + ops.take(node, ids, axis=0)
    return ops.transpose(out * ops.convert_to_tensor(factors.column_scale[:, None]))


def hierarchical_cross_entropy(labels, logits, hierarchy, level_weights):
    """HXE: -sum_l lambda_l log p(anc_l(y) | anc_{l-1}(y)), node probabilities
    summed from the leaf softmax (Bertinetto et al., "Making Better Mistakes").

    Args:
        labels: int [B].
        logits: float [B, C].
        hierarchy: a `Hierarchy` (or its `TreePlan`).
        level_weights: float32 [C, depth]: lambda of class y's ancestor at
            each level (0 below a shallow leaf); see `hxe_level_weights`.

    Returns:
        float32 [B].
    """
    path, _, log_total, log_target = _tree_softmax(logits, labels, hierarchy)
    log_path = _safe_log(path, ops.expand_dims(log_target, -1))  # [B, depth]
    log_all = ops.concatenate([ops.expand_dims(log_total, -1), log_path], axis=-1)
    conditional = log_all[:, 1:] - log_all[:, :-1]
    return -ops.sum(ops.take(level_weights, labels, axis=0) * conditional, axis=-1)


def _level_logsumexp(z_t, ids, num_nodes):
    """log sum exp of z_t [C, B] over the classes of every node (ids [C]): [num_nodes, B], stable."""
    shift = ops.stop_gradient(ops.segment_max(z_t, ids, num_segments=num_nodes))
    sums = ops.segment_sum(ops.exp(z_t - ops.take(shift, ids, axis=0)), ids, num_segments=num_nodes)
    return ops.log(sums) + shift


def soft_target_hxe(targets, logits, hierarchy, level_weights):
    """HXE for a target distribution q: sum_y q_y HXE(y) = -sum_nodes Q(n) lambda(n) log p(n | parent(n)).

    Q(n) is the target mass under node n; every node's log-probability is a
    per-node stable log-sum-exp, O(B * C * depth).

    Args:
        targets: float [B, C] rows q.
        logits: float [B, C].
        hierarchy: a `keras_hier.Hierarchy`.
        level_weights: float32 [C, depth] (`hxe_level_weights`).

    Returns:
        float32 [B].
    """
    z_t = ops.transpose(float32(logits))  # [C, B]
    q_t = ops.transpose(float32(targets))
    parent_log = ops.expand_dims(ops.logsumexp(z_t, axis=0), 0)  # the root [1, B]
    loss = 0.0
    for level in range(hierarchy.depth):
        ids = np.asarray(hierarchy.ancestors(level), dtype=np.int32)
        size = hierarchy.num_nodes(level)
        node_log = _level_logsumexp(z_t, ids, size)  # [n, B]
        parents = np.asarray(hierarchy.parents(level), dtype=np.int32)
        above = parent_log if level == 0 else ops.take(parent_log, parents, axis=0)
        node_weight = np.zeros(size, dtype=np.float32)
        node_weight[ids] = level_weights[:, level]  # lambda of the node (0 for a repeated shallow leaf)
        mass = ops.segment_sum(q_t, ids, num_segments=size) * ops.convert_to_tensor(node_weight[:, None])
        loss = loss - ops.sum(ops.where(mass > 0, mass * (node_log - above), 0.0), axis=0)
        parent_log = node_log
    return loss


def soft_label_cross_entropy(labels, logits, hierarchy, factors, row_sums):
    """Cross-entropy against q_j = S[y, j] / sum_k S[y, k], factorised.

    Args:
        labels: int [B].
        logits: float [B, C].
        hierarchy: a `Hierarchy` (or its `TreePlan`).
        factors: `TreeFactors` of S.
        row_sums: float32 [C], sum_k S[y, k].

    Returns:
        float32 [B], logsumexp(z) - sum_j q_j z_j.
    """
    plan = tree_sums.tree_plan(hierarchy)
    weights = ops.take(factors.weights, labels, axis=0)
    z = float32(logits)
    path, root, _ = tree_sums.scaled_path_sums(z, labels, plan, factors.column_scale)
    expected = weights[:, 0] * root + ops.sum(weights[:, 1:] * path, axis=-1)
    return _logsumexp(z, labels) - expected / ops.take(row_sums, labels, axis=0)


def corr_loss(labels, cosine_logits, scale=1.0):
    """CORR: 1 - cos(f(x), p_y) per sample, from cosine logits s * cos.

    Args:
        labels: int [B].
        cosine_logits: float [B, C], s * cos to every (fixed) proxy.
        scale: the s of `cosine_logits`.

    Returns:
        float32 [B].
    """
    return 1.0 - _target_logit(float32(cosine_logits), labels) / float(scale)


def hxe_level_weights(hierarchy, alpha, weighting="depth"):
    """lambda of every class's ancestor at each level, float32 [C, depth] (0 below a shallow leaf).

    - `"depth"` (the published code): lambda(n) = exp(-alpha * depth(n)) /
      sum over every node m of the tree, root included, of exp(-alpha * depth(m));
      depth = edges from the root (a level-l node has depth l + 1).
    - `"height"` (the printed formula): lambda(n) = exp(-alpha * height(n)),
      not normalised; height = longest path down to a leaf (leaves: 0).

    On a ragged tree a shallow leaf has its own depth (its path length) and
    height 0; the levels below it carry no term.

    Args:
        hierarchy: a `keras_hier.Hierarchy`.
        alpha: decay (>= 0).
        weighting: `"depth"` or `"height"`.

    Returns:
        float32 [C, depth].

    Example:
    >>> from keras_hier import Hierarchy
    >>> h = Hierarchy.from_paths(["a/x", "a/y", "b"])
    >>> hxe_level_weights(h, 0.0).astype(float).round(3).tolist()  # 1 / (root + a, b + x, y)
    [[0.2, 0.2], [0.2, 0.2], [0.2, 0.0]]
    """
    if weighting not in HXE_WEIGHTINGS:
        raise ValueError(f"HierarchicalCrossEntropy: weighting must be one of {HXE_WEIGHTINGS}, got {weighting!r}")
    mask = np.asarray(hierarchy.level_mask)
    if weighting == "height":
        heights = np.asarray(hierarchy.ancestor_heights())[:, 1:].astype(np.float64)
        return np.where(mask, np.exp(-alpha * heights), 0.0).astype(np.float32)
    depths = np.arange(1, hierarchy.depth + 1, dtype=np.float64)
    real_nodes = [len(np.unique(np.asarray(hierarchy.ancestors(level))[mask[:, level]]))
                  for level in range(hierarchy.depth)]
    total = 1.0 + float(np.dot(real_nodes, np.exp(-alpha * depths)))
    weights = np.broadcast_to(np.exp(-alpha * depths) / total, mask.shape)
    return np.where(mask, weights, 0.0).astype(np.float32)


# ------------------------------------------------------- config encodings
_CONFIGS = {}  # id(hierarchy) -> (weak reference, its to_config()): a Hierarchy is immutable


def _check_hierarchy(hierarchy, name):
    if isinstance(hierarchy, dict):
        config = hierarchy
        hierarchy = Hierarchy.from_config(config)
        if "tree" in config:
            _remember_config(hierarchy, config)
        return hierarchy
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError(f"{name}: hierarchy must be a keras_hier.Hierarchy, got {type(hierarchy).__name__}")
    return hierarchy


def _remember_config(hierarchy, config):
    try:
        reference = weakref.ref(hierarchy, lambda _, key=id(hierarchy): _CONFIGS.pop(key, None))
    except TypeError:
        return
    _CONFIGS[id(hierarchy)] = (reference, config)


def hierarchy_config(hierarchy):
    """`hierarchy.to_config()`, computed once per hierarchy object (every save of a model reuses it)."""
    entry = _CONFIGS.get(id(hierarchy))
    if entry is not None and entry[0]() is hierarchy:
        return dict(entry[1])
    config = hierarchy.to_config()
    _remember_config(hierarchy, config)
    return dict(config)


def encode_array(array):
    """A float32 array as one compact JSON-safe value: base64 of its bytes (zlib when that pays).

    Used for a dense S in `SimLoss.get_config()`: a `.keras` config holds one
    string instead of C^2 JSON numbers. `decode_array` is the inverse.
    """
    array = np.ascontiguousarray(array, dtype=np.float32)
    raw = memoryview(array).cast("B")
    sample = bytes(raw[: 1 << 20])
    packed = len(sample) > 0 and len(zlib.compress(sample, 1)) < 0.5 * len(sample)
    data = zlib.compress(raw, 1) if packed else raw
    return {"dtype": "float32", "shape": list(array.shape), "encoding": "base64+zlib" if packed else "base64",
            "data": base64.b64encode(data).decode("ascii")}


def decode_array(value, name="array"):
    """Inverse of `encode_array` (a plain nested list is accepted too)."""
    if not isinstance(value, dict):
        return np.asarray(value, dtype=np.float32)
    if value.get("dtype") != "float32" or value.get("encoding") not in ("base64", "base64+zlib"):
        raise ValueError(f"{name}: unknown array encoding {value.get('encoding')!r} / dtype {value.get('dtype')!r}")
    data = base64.b64decode(value["data"])
    if value["encoding"] == "base64+zlib":
        data = zlib.decompress(data)
    shape = tuple(int(d) for d in value["shape"])
    if len(data) != 4 * int(np.prod(shape)):
        raise ValueError(f"{name}: {len(data)} bytes do not hold a float32 array of shape {shape}")
    return np.frombuffer(data, dtype=np.float32).reshape(shape)


# ------------------------------------------------------------------- classes
def _check_distribution(q, name):
    """Validity [B] of target rows (finite, >= 0, summing to 1); raises eagerly naming the first bad row."""
    valid = ops.all(ops.isfinite(q) & (q >= 0), axis=-1) & (ops.abs(ops.sum(q, axis=-1) - 1.0) <= 1e-3)
    try:
        values = np.asarray(ops.convert_to_numpy(q))
    except Exception:  # traced: the NaN mask does the refusing
        return valid
    sums = values.sum(axis=-1)
    bad = np.flatnonzero(~np.all(np.isfinite(values) & (values >= 0), axis=-1) | (np.abs(sums - 1.0) > 1e-3))
    if bad.size:
        raise ValueError(f"{name}: target row {int(bad[0])} is not a class distribution (entries >= 0 summing "
                         f"to 1; it sums to {sums[bad[0]]:g}); pass class ids, one-hot rows or soft targets")
    return valid


def _refuse_invalid(loss, valid):
    """NaN where a sample's label is invalid (a compiled step cannot raise; TerminateOnNaN stops it)."""
    return ops.where(valid, loss, float("nan"))


def _plain_python(function):
    """Keeps TensorFlow's autograph from re-compiling `function` at every trace (0.5 s of a first call)."""
    if keras.backend.backend() != "tensorflow":
        return function
    import tensorflow as tf

    return tf.autograph.experimental.do_not_convert(function)


class _ReducedLoss(keras.losses.Loss):
    """A reduced loss of an empty batch is 0 (Keras returns the empty [0] tensor when the batch size is static)."""

    # AutoGraph calls an object that carries this marker as it is: `loss(y, z)` in a user's tf.function then
    # costs no conversion (it converts `type(loss).__call__` otherwise, even when that is `do_not_convert`ed:
    # about 50 ms of every first call)
    autograph_info__ = frozenset()

    @_plain_python
    def __call__(self, y_true, y_pred, sample_weight=None):
        value = super().__call__(y_true, y_pred, sample_weight=sample_weight)
        if self.reduction not in (None, "none") and tuple(value.shape) == (0,):
            return ops.zeros((), dtype=value.dtype)
        return value


class _HierLoss(_ReducedLoss):
    """Targets, predictions and bad-label handling shared by the keras_hier losses.

    Subclasses set `_num_classes` and `from_logits` and implement
    `_sparse_loss(labels, logits)` and `_soft_loss(targets, logits)`.
    """

    def _logits(self, y_pred):
        name = type(self).__name__
        width = y_pred.shape[-1]
        if width is not None and width != self._num_classes:
            raise ValueError(f"{name}: predictions have {width} classes but the loss was built for "
                             f"{self._num_classes} (num_classes mismatch between the model head and the "
                             "similarity / hierarchy)")
        if tensor_is_probability(y_pred):  # a softmax output: score the logits under it, as Keras does
            warn_probability_tensor(y_pred, self.from_logits is True, name)
            return float32(y_pred._keras_logits)
        if self.from_logits is False:
            return ops.log(ops.maximum(float32(y_pred), _TINY))
        return float32(y_pred)

    def call(self, y_true, y_pred):
        z = self._logits(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        name = type(self).__name__
        if len(y_true.shape) == 2 and y_true.shape[-1] == self._num_classes and self._num_classes > 1:
            q = float32(y_true)
            valid = _check_distribution(q, name)
            one_hot = ops.all(ops.max(q, axis=-1, initial=0.0) == 1.0)
            loss = ops.cond(one_hot, lambda: self._sparse_loss(ops.cast(ops.argmax(q, axis=-1), "int32"), z),
                            lambda: self._soft_loss(q, z))
            return _refuse_invalid(loss, valid)
        labels, valid = sparse_labels(y_true, self._num_classes, name, with_valid=True)
        return _refuse_invalid(self._sparse_loss(labels, z), valid)

    def _base_config(self):
        config = super().get_config()
        config["from_logits"] = self.from_logits
        return config


def _from_logits(value):
    return None if value is None else bool(value)


@keras.saving.register_keras_serializable(package="keras_hier")
class SimLoss(_HierLoss):
    """SimLoss (Kobs et al.): L = -log sum_c S[y, c] p_c, S in [0, 1], S[y, y] = 1.

    S = I gives exactly sparse categorical cross-entropy. Give either a dense
    `similarity` [C, C] (validated: square, entries in [0, 1], diagonal 1;
    kept as one tensor, stored in the config as one base64 string) or a
    `hierarchy`; with a hierarchy S = `tree_similarity(hierarchy, rule,
    beta, distance)` is used through its tree factorisation and never
    materialised (O(C * depth) memory: usable at C = 1 000 000).

    Soft targets q [B, C] (label smoothing, mixup) give
    L = -log sum_c (q S)[c] p_c: the probability mass the prediction puts on
    classes similar to the target mixture (one-hot q: the formula above).

    Args:
        similarity: [C, C] array-like, or None when `hierarchy` is given.
        from_logits: None (default: detect a softmax output, else logits),
            True (logits) or False (probabilities).
        hierarchy: a `keras_hier.Hierarchy` (or its `to_config()`).
        rule: `"exp"` (S = exp(-beta t)) or `"linear"` (1 - t / t_max).
        beta: decay of `"exp"`.
        distance: `"path"` (edges between the leaves) or `"lca_height"`.
        reduction, name, dtype: as in `keras.losses.Loss`.

    Example:

    >>> import numpy as np
    >>> from keras_hier import Hierarchy
    >>> h = Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> loss = SimLoss.from_hierarchy(h, beta=1.0)
    >>> dense = SimLoss(h.similarity_matrix("exp", beta=1.0))
    >>> y, z = np.array([0, 2]), np.array([[2.0, 1.0, 0.0], [0.5, 0.0, 1.0]])
    >>> bool(np.isclose(float(loss(y, z)), float(dense(y, z)), atol=1e-5))
    True
    """

    def __init__(self, similarity=None, from_logits=None, hierarchy=None, rule="exp", beta=1.0,
                 distance="path", reduction="sum_over_batch_size", name="sim_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if isinstance(similarity, Hierarchy) or (isinstance(similarity, dict) and "tree" in similarity):
            if hierarchy is None:
                similarity, hierarchy = None, similarity
        if (similarity is None) == (hierarchy is None):
            raise ValueError("SimLoss: give exactly one of `similarity` (a [C, C] matrix) or `hierarchy`")
        self.from_logits = _from_logits(from_logits)
        self.rule, self.beta, self.distance = rule, float(beta), check_distance_kind(distance, "distance")
        self.hierarchy = self.similarity = None
        if hierarchy is not None:
            if rule not in TREE_RULES:
                raise ValueError(f"SimLoss: rule must be one of {TREE_RULES} with a hierarchy, got {rule!r}")
            self.hierarchy = _check_hierarchy(hierarchy, "SimLoss")
            self.factors = tree_factors(self.hierarchy, rule, self.beta, distance)
            self._num_classes = self.hierarchy.num_classes
        else:
            matrix = validate_similarity(decode_array(similarity, "SimLoss similarity")
                                         if isinstance(similarity, dict) else similarity, name="SimLoss similarity")
            self._num_classes = matrix.shape[0]
            self.similarity = ops.convert_to_tensor(matrix)  # one tensor, captured by reference when traced
            del matrix

    @classmethod
    def from_hierarchy(cls, hierarchy, beta=1.0, rule="exp", distance="path", **kwargs):
        """SimLoss with S from the tree, factorised (see the class docstring)."""
        return cls(hierarchy=hierarchy, beta=beta, rule=rule, distance=distance, **kwargs)

    def _sparse_loss(self, labels, z):
        if self.hierarchy is not None:
            return tree_simloss(labels, z, self.hierarchy, self.factors)
        return dense_simloss(labels, z, self.similarity)

    def _soft_loss(self, q, z):
        if self.hierarchy is not None:
            return soft_target_simloss(tree_similarity_targets(q, self.hierarchy, self.factors), z)
        return soft_target_simloss(ops.matmul(q, self.similarity), z)

    def get_config(self):
        config = self._base_config()
        config.update(
            similarity=None if self.similarity is None else encode_array(ops.convert_to_numpy(self.similarity)),
            hierarchy=None if self.hierarchy is None else hierarchy_config(self.hierarchy),
            rule=self.rule, beta=self.beta, distance=self.distance)
        return config


@keras.saving.register_keras_serializable(package="keras_hier")
class HierarchicalCrossEntropy(_HierLoss):
    """HXE ("Making Better Mistakes"): -sum_C lambda(C) log p(C | parent(C)) over
    the nodes C on the label's path below the root.

    Node probabilities are sums of the leaf softmax (factorised, no [C, C]).
    `weighting` chooses lambda (`hxe_level_weights`):

    - `"depth"` (default, the authors' code that produced the published
      tables): lambda(C) = exp(-alpha * depth(C)) / Z, depth = edges from
      the root, Z = the sum of exp(-alpha * depth) over every node of the
      tree, root included. A larger alpha stresses the coarse levels. The
      weights sum to 1 over the whole tree, so the loss is about 1 / (nodes
      on a path) of cross-entropy's size (0.005 for a 1 000-class tree of
      depth 10): harmless with Adam, scale the learning rate with SGD.
    - `"height"` (the formula as printed in the paper): lambda(C) =
      exp(-alpha * height(C)), unnormalised; alpha = 0 is plain CE.

    Ragged trees: a leaf shallower than others has depth = its path length
    and height 0; no term exists below it.

    Args:
        hierarchy: a `keras_hier.Hierarchy` (or its `to_config()`).
        alpha: decay of the weights (>= 0); the paper uses 0.1 - 0.6.
        weighting: `"depth"` or `"height"`.
        from_logits: None (detect a softmax output), True or False.
        reduction, name, dtype: as in `keras.losses.Loss`.

    Example:

    >>> import numpy as np
    >>> from keras_hier import Hierarchy
    >>> h = Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    >>> y, z = np.array([0, 2]), np.array([[2.0, 1.0, 0.0], [0.5, 0.0, 1.0]])
    >>> hxe = HierarchicalCrossEntropy(h, alpha=0.0, weighting="height")
    >>> bool(np.isclose(float(hxe(y, z)), float(ce(y, z)), atol=1e-5))
    True
    """

    def __init__(self, hierarchy, alpha=0.1, weighting="depth", from_logits=None,
                 reduction="sum_over_batch_size", name="hierarchical_cross_entropy", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not alpha >= 0:
            raise ValueError(f"HierarchicalCrossEntropy: alpha must be >= 0, got {alpha}")
        self.hierarchy = _check_hierarchy(hierarchy, "HierarchicalCrossEntropy")
        self.alpha, self.weighting = float(alpha), weighting
        self.from_logits = _from_logits(from_logits)
        self.level_weights = hxe_level_weights(self.hierarchy, self.alpha, weighting)
        self._num_classes = self.hierarchy.num_classes

    def _sparse_loss(self, labels, z):
        return hierarchical_cross_entropy(labels, z, self.hierarchy, self.level_weights)

    def _soft_loss(self, q, z):
        return soft_target_hxe(q, z, self.hierarchy, self.level_weights)

    def get_config(self):
        config = self._base_config()
        config.update(hierarchy=hierarchy_config(self.hierarchy), alpha=self.alpha, weighting=self.weighting)
        return config


@keras.saving.register_keras_serializable(package="keras_hier")
class SoftLabelCrossEntropy(_HierLoss):
    """Soft labels ("Making Better Mistakes"): CE against q_j ~ exp(-beta d(y, j) / max d).

    `normalize=True` (default) divides the distance by its largest value
    over all class pairs, as the authors' code does, so the published beta
    values (4, 10, 30, ...) carry over; `normalize=False` uses
    exp(-beta d(y, j)). d is the LCA height by default (as in the paper) or
    the path distance; computed through the tree factorisation (no [C, C]).
    The authors' KLDiv(mean) value is (CE - H(q)) / C: the same minimiser.
    Soft targets t [B, C] give the t-weighted mean of the per-class losses.

    Args:
        hierarchy: a `keras_hier.Hierarchy` (or its `to_config()`).
        beta: sharpness (> 0); large beta tends to one-hot cross-entropy.
        distance: `"lca_height"` (default) or `"path"`.
        normalize: divide d by its maximum (default True).
        from_logits: None (detect a softmax output), True or False.
        reduction, name, dtype: as in `keras.losses.Loss`.

    Example:

    >>> import numpy as np, keras_hier
    >>> tree = keras_hier.Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> loss = SoftLabelCrossEntropy(tree, beta=2.0)
    >>> round(float(loss(np.array([0]), np.zeros((1, 3)))), 4)  # log 3 for uniform predictions
    1.0986
    """

    def __init__(self, hierarchy, beta=1.0, distance="lca_height", normalize=True, from_logits=None,
                 reduction="sum_over_batch_size", name="soft_label_cross_entropy", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.hierarchy = _check_hierarchy(hierarchy, "SoftLabelCrossEntropy")
        if not beta > 0:
            raise ValueError(f"SoftLabelCrossEntropy: beta must be > 0, got {beta}")
        self.beta, self.distance = float(beta), check_distance_kind(distance, "distance")
        self.normalize = bool(normalize)
        self.from_logits = _from_logits(from_logits)
        scale = max(max_tree_distance(self.hierarchy, distance), 1) if self.normalize else 1
        self.factors = tree_factors(self.hierarchy, "exp", self.beta / scale, distance)
        self.row_sums = self.factors.row_sums(self.hierarchy).astype(np.float32)
        self._num_classes = self.hierarchy.num_classes

    def _sparse_loss(self, labels, z):
        return soft_label_cross_entropy(labels, z, self.hierarchy, self.factors, self.row_sums)

    def _soft_loss(self, q, z):
        # sum_y q_y CE(target(y), p) = logsumexp(z) - sum_j ((q / row_sums) S)[j] z_j
        weights = tree_similarity_targets(q / ops.convert_to_tensor(self.row_sums), self.hierarchy, self.factors)
        return ops.logsumexp(z, axis=-1) - ops.sum(weights * z, axis=-1)

    def get_config(self):
        config = self._base_config()
        config.update(hierarchy=hierarchy_config(self.hierarchy), beta=self.beta, distance=self.distance,
                      normalize=self.normalize)
        return config


@keras.saving.register_keras_serializable(package="keras_hier")
class CORRLoss(_ReducedLoss):
    """CORR loss for fixed (MDS) proxies: sum over the batch of 1 - cos(f(x), p_y).

    `y_pred` are cosine logits s * cos to every proxy, as output by
    `build_classifier(..., head="corr")` (a `NormFaceHead` with fixed proxies,
    chordal distance and s = `scale`); prediction is the nearest proxy
    (argmax). The paper sums over the batch (`reduction="sum"`, default);
    `reduction="sum_over_batch_size"` gives the mean. Soft targets q [B, C]
    give 1 - sum_c q_c cos_c.

    Args:
        scale: s of the cosine logits (1.0 for the "corr" head).
        num_classes: when given, `y_pred` must have this many columns.
        reduction: `"sum"` (default), `"sum_over_batch_size"`, ...
        name, dtype: as in `keras.losses.Loss`.

    Example:

    >>> import numpy as np
    >>> float(CORRLoss()(np.array([1, 0]), np.array([[0.2, 1.0], [0.5, 0.0]])))
    0.5
    """

    def __init__(self, scale=1.0, num_classes=None, reduction="sum", name="corr_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not scale > 0:
            raise ValueError(f"CORRLoss: scale must be > 0, got {scale}")
        if num_classes is not None and int(num_classes) < 1:
            raise ValueError(f"CORRLoss: num_classes must be >= 1, got {num_classes}")
        self.scale = float(scale)
        self.num_classes = None if num_classes is None else int(num_classes)

    def call(self, y_true, y_pred):
        width = y_pred.shape[-1]
        if width is None or len(y_pred.shape) != 2:
            raise ValueError(f"CORRLoss: predictions must be cosine logits [B, C] with a known C, "
                             f"got shape {tuple(y_pred.shape)}")
        if self.num_classes is not None and width != self.num_classes:
            raise ValueError(f"CORRLoss: predictions have {width} columns but the loss was built for "
                             f"num_classes={self.num_classes} proxies")
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == 2 and y_true.shape[-1] == width and width > 1:
            q = float32(y_true)
            valid = _check_distribution(q, "CORRLoss")
            return _refuse_invalid(1.0 - ops.sum(q * float32(y_pred), axis=-1) / self.scale, valid)
        labels, valid = sparse_labels(y_true, width, "CORRLoss", with_valid=True)
        return _refuse_invalid(corr_loss(labels, y_pred, self.scale), valid)

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale, num_classes=self.num_classes)
        return config
