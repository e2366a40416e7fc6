"""Hierarchy-aware losses for `model.compile`: SimLoss, HXE, soft labels, CORR.

Each loss is a pure function (`dense_simloss`, `tree_simloss`,
`hierarchical_cross_entropy`, `soft_label_cross_entropy`, `corr_loss`: per
sample, float32 [B]) plus a thin serializable `keras.losses.Loss` class.

Targets are integer class ids [B] or [B, 1], or one-hot [B, C] (converted
with argmax). Logits are cast to float32, so the losses are float32 under a
mixed-precision policy.

With a `Hierarchy`, SimLoss, HXE and soft labels never build a [C, C]
matrix: sum_j S[y, j] p_j = sum_l w_l P_l(anc_l(y)) where P_l are per-node
sums of the softmax, computed bottom-up with segment sums
(`keras_hier.ops.node_sums`), O(B * nodes). See
`keras_hier.similarity.tree_factors` for the factorisation of S.

Numerics: sums are formed as sum_j S[y, j] exp(z_j - max z) (one `exp` per
row, no epsilon inside a log of probabilities). Since S[y, y] = 1, that sum
is at least exp(z_y - max z), and its log is taken as
max(log(sum), z_y - max z): exact whenever the sum does not underflow, and
equal to cross-entropy's value (finite, with a finite gradient) when it does.
"""

import keras
import numpy as np
from keras import ops

from keras_hier import ops as kh_ops
from keras_hier.hierarchy import Hierarchy
from keras_hier.similarity import TREE_RULES, tree_factors, validate_similarity

__all__ = ["SimLoss", "HierarchicalCrossEntropy", "SoftLabelCrossEntropy", "CORRLoss", "dense_simloss",
           "tree_simloss", "hierarchical_cross_entropy", "soft_label_cross_entropy", "corr_loss",
           "sparse_labels"]

_TINY = 1e-30
_LOG_ZERO = -1e30  # log 0 for entries S = 0: exp(z + _LOG_ZERO - max) is exactly 0 in float32


# ------------------------------------------------------------------ helpers
def sparse_labels(y_true, num_classes, name="loss"):
    """Integer class ids int32 [B] from ids [B], [B, 1] or one-hot [B, C].

    Out-of-range ids raise `ValueError` naming `name` in eager mode; inside a
    TensorFlow graph they fail an assertion with the same message.
    """
    shape = tuple(y_true.shape)
    if len(shape) == 2 and shape[-1] == num_classes and num_classes != 1:
        labels = ops.argmax(y_true, axis=-1)
    elif len(shape) == 2 and shape[-1] == 1:
        labels = ops.squeeze(y_true, axis=-1)
    elif len(shape) == 1:
        labels = y_true
    else:
        raise ValueError(f"{name}: targets must be class ids [B] or [B, 1] or one-hot [B, {num_classes}], "
                         f"got shape {shape}")
    labels = ops.cast(labels, "int32")
    return _check_label_range(labels, num_classes, name)


def _check_label_range(labels, num_classes, name):
    message = f"{name}: a label is outside the valid range [0, {num_classes})"
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.executing_eagerly():
            _raise_if_out_of_range(labels, num_classes, name)
            return labels
        ok = tf.reduce_all((labels >= 0) & (labels < num_classes))
        with tf.control_dependencies([tf.debugging.Assert(ok, [message, "labels:", labels], summarize=8)]):
            return tf.identity(labels)
    try:
        values = np.asarray(ops.convert_to_numpy(labels))
    except Exception:  # a traced value (e.g. a JAX tracer): nothing to check here
        return labels
    _raise_if_out_of_range(values, num_classes, name)
    return labels


def _raise_if_out_of_range(labels, num_classes, name):
    values = np.asarray(ops.convert_to_numpy(labels))
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
        raise ValueError(f"{name}: label {int(bad[0])} is outside the valid range [0, {num_classes})")


def _logits(y_pred, num_classes, from_logits, name):
    width = y_pred.shape[-1]
    if width is not None and width != num_classes:
        raise ValueError(f"{name}: predictions have {width} classes but the loss was built for {num_classes} "
                         "(num_classes mismatch between the model head and the similarity / hierarchy)")
    z = kh_ops.float32(y_pred)
    if not from_logits:  # probabilities: log with a floor only at exact zeros
        z = ops.log(ops.maximum(z, _TINY))
    return z


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
    if keras.backend.backend() != "tensorflow":
        return z, _target_logit(z, labels)
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

        return (x, ops.take(ops.reshape(x, (-1,)), flat)), grad

    return pick(z)


def _check_hierarchy(hierarchy, name):
    if isinstance(hierarchy, dict):
        return Hierarchy.from_dict(hierarchy)
    if not isinstance(hierarchy, Hierarchy):
        raise TypeError(f"{name}: hierarchy must be a keras_hier.Hierarchy, got {type(hierarchy).__name__}")
    return hierarchy


def _shifted(z):
    shift = ops.stop_gradient(ops.max(z, axis=-1, keepdims=True))
    return z - shift


def _path_sums(values, labels, plan, label_values=None, with_total=False):
    """sum of `values` [B, C] under each node on every label's path: [B, depth]."""
    return kh_ops.path_sums(values, labels, plan, label_values, with_total)


def _safe_log(sum_value, log_floor):
    """log(sum_value), exact unless it underflowed; then log_floor (<= the true value)."""
    log_sum = ops.where(sum_value >= _TINY, ops.log(ops.maximum(sum_value, _TINY)), _LOG_ZERO)
    return ops.maximum(log_sum, log_floor)


# ------------------------------------------------------------ functional core
def dense_simloss(labels, logits, log_similarity):
    """SimLoss with a dense S: logsumexp_c(z_c) - logsumexp_c(z_c + log S[y, c]).

    Args:
        labels: int [B] class ids.
        logits: float [B, C].
        log_similarity: float32 [C, C] log S (a very negative number for S = 0).

    Returns:
        float32 [B], -log sum_c S[y, c] softmax(z)_c.
    """
    z = kh_ops.float32(logits)
    rows = ops.take(log_similarity, labels, axis=0)
    return ops.logsumexp(z, axis=-1) - ops.logsumexp(z + rows, axis=-1)


def tree_simloss(labels, logits, hierarchy, factors):
    """SimLoss with S factorised over the tree (see `similarity.tree_factors`).

    Args:
        labels: int [B] class ids.
        logits: float [B, C].
        hierarchy: a `Hierarchy` (or its `keras_hier.ops.TreePlan`).
        factors: `TreeFactors` of S.

    Returns:
        float32 [B], equal to `dense_simloss` with S = factors.dense(hierarchy),
        in O(B * nodes) time and memory.
    """
    plan = kh_ops.tree_plan(hierarchy)
    shifted, target = _with_target(_shifted(kh_ops.float32(logits)), labels)
    e = ops.exp(shifted)
    label_value = ops.exp(target)
    weights = ops.take(factors.weights, labels, axis=0)  # [B, depth + 1]
    if np.all(factors.column_scale == 1.0):
        path, total = _path_sums(e, labels, plan, label_value, with_total=True)
        root = total
    else:
        total = ops.sum(e, axis=-1)
        scaled = e * factors.column_scale
        scaled_label = label_value * ops.take(factors.column_scale, labels, axis=0)
        path, root = _path_sums(scaled, labels, plan, scaled_label, with_total=True)
    numerator = weights[:, 0] * root + ops.sum(weights[:, 1:] * path, axis=-1)
    return ops.log(total) - _safe_log(numerator, target)


def hierarchical_cross_entropy(labels, logits, hierarchy, level_weights):
    """HXE: -sum_l lambda_l log p(anc_l(y) | anc_{l-1}(y)), node probabilities
    summed from the leaf softmax (Bertinetto et al., "Making Better Mistakes").

    Args:
        labels: int [B].
        logits: float [B, C].
        hierarchy: a `Hierarchy` (or its `TreePlan`).
        level_weights: float32 [C, depth]: lambda of class y's ancestor at
            each level (0 below a shallow leaf).

    Returns:
        float32 [B].
    """
    plan = kh_ops.tree_plan(hierarchy)
    shifted, target = _with_target(_shifted(kh_ops.float32(logits)), labels)
    e = ops.exp(shifted)
    floor = ops.expand_dims(target, -1)
    path, total = _path_sums(e, labels, plan, ops.exp(target), with_total=True)
    log_path = _safe_log(path, floor)  # [B, depth]
    log_all = ops.concatenate([ops.log(ops.expand_dims(total, -1)), log_path], axis=-1)
    conditional = log_all[:, 1:] - log_all[:, :-1]
    return -ops.sum(ops.take(level_weights, labels, axis=0) * conditional, axis=-1)


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
    plan = kh_ops.tree_plan(hierarchy)
    z = kh_ops.float32(logits)
    scaled = z
    if not np.all(factors.column_scale == 1.0):
        scaled = z * factors.column_scale
    weights = ops.take(factors.weights, labels, axis=0)
    scaled, scaled_target = _with_target(scaled, labels)
    path, root = _path_sums(scaled, labels, plan, scaled_target, with_total=True)
    expected = weights[:, 0] * root + ops.sum(weights[:, 1:] * path, axis=-1)
    shift = ops.stop_gradient(ops.max(z, axis=-1))
    log_total = ops.log(ops.sum(ops.exp(z - ops.expand_dims(shift, -1)), axis=-1)) + shift
    return log_total - expected / ops.take(row_sums, labels, axis=0)


def corr_loss(labels, cosine_logits, scale=1.0):
    """CORR: 1 - cos(f(x), p_y) per sample, from cosine logits s * cos.

    Args:
        labels: int [B].
        cosine_logits: float [B, C], s * cos to every (fixed) proxy.
        scale: the s of `cosine_logits`.

    Returns:
        float32 [B].
    """
    return 1.0 - _target_logit(kh_ops.float32(cosine_logits), labels) / float(scale)


# ------------------------------------------------------------------- classes
class _HierLoss(keras.losses.Loss):
    def _labels_and_logits(self, y_true, y_pred):
        labels = sparse_labels(y_true, self._num_classes, type(self).__name__)
        return labels, _logits(y_pred, self._num_classes, getattr(self, "from_logits", True),
                               type(self).__name__)


@keras.saving.register_keras_serializable(package="keras_hier")
class SimLoss(_HierLoss):
    """SimLoss (Kobs et al.): L = -log sum_c S[y, c] p_c, S in [0, 1], S[y, y] = 1.

    S = I gives exactly sparse categorical cross-entropy. Give either a dense
    `similarity` [C, C] (validated: square, entries in [0, 1], diagonal 1) or
    a `hierarchy`; with a hierarchy S = `tree_similarity(hierarchy, rule,
    beta, distance)` is used through its tree factorisation and never
    materialised (O(C * depth) memory: usable at C = 100 000).

    Args:
        similarity: [C, C] array-like, or None when `hierarchy` is given.
        from_logits: whether `y_pred` are logits (default) or probabilities.
        hierarchy: a `keras_hier.Hierarchy` (or its `to_dict()`).
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

    def __init__(self, similarity=None, from_logits=True, hierarchy=None, rule="exp", beta=1.0,
                 distance="path", reduction="sum_over_batch_size", name="sim_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if isinstance(similarity, (Hierarchy, dict)) and hierarchy is None:
            similarity, hierarchy = None, similarity
        if (similarity is None) == (hierarchy is None):
            raise ValueError("SimLoss: give exactly one of `similarity` (a [C, C] matrix) or `hierarchy`")
        self.from_logits = bool(from_logits)
        self.rule, self.beta, self.distance = rule, float(beta), distance
        if hierarchy is not None:
            if rule not in TREE_RULES:
                raise ValueError(f"SimLoss: rule must be one of {TREE_RULES} with a hierarchy, got {rule!r}")
            self.hierarchy = _check_hierarchy(hierarchy, "SimLoss")
            self.factors = tree_factors(self.hierarchy, rule, self.beta, distance)
            self.similarity = None
            self._num_classes = self.hierarchy.num_classes
        else:
            self.hierarchy = None
            self.similarity = validate_similarity(similarity, name="SimLoss similarity")
            with np.errstate(divide="ignore"):
                log_s = np.log(self.similarity)
            self._log_similarity = np.where(self.similarity > 0, log_s, _LOG_ZERO).astype(np.float32)
            self._num_classes = self.similarity.shape[0]

    @classmethod
    def from_hierarchy(cls, hierarchy, beta=1.0, rule="exp", distance="path", **kwargs):
        """SimLoss with S from the tree, factorised (see the class docstring)."""
        return cls(hierarchy=hierarchy, beta=beta, rule=rule, distance=distance, **kwargs)

    def call(self, y_true, y_pred):
        labels, z = self._labels_and_logits(y_true, y_pred)
        if self.hierarchy is not None:
            return tree_simloss(labels, z, self.hierarchy, self.factors)
        return dense_simloss(labels, z, self._log_similarity)

    def get_config(self):
        config = super().get_config()
        config.update(
            similarity=None if self.similarity is None else self.similarity.tolist(),
            from_logits=self.from_logits,
            hierarchy=None if self.hierarchy is None else self.hierarchy.to_dict(),
            rule=self.rule, beta=self.beta, distance=self.distance)
        return config


@keras.saving.register_keras_serializable(package="keras_hier")
class HierarchicalCrossEntropy(_HierLoss):
    """HXE ("Making Better Mistakes"): -sum_l lambda(C_l) log p(C_l | C_{l+1})
    along the label's path, lambda(C) = exp(-alpha * height(C)).

    Node probabilities are sums of the leaf softmax (factorised, no [C, C]).
    The weights are not normalised; alpha = 0 gives sum of the conditional
    log-likelihoods, which telescopes to plain cross-entropy.

    Args:
        hierarchy: a `keras_hier.Hierarchy` (or its `to_dict()`).
        alpha: decay of the level weights (>= 0); the paper uses 0.1 - 0.6.
        from_logits: whether `y_pred` are logits (default) or probabilities.
        reduction, name, dtype: as in `keras.losses.Loss`.

    Example:

    >>> import numpy as np
    >>> from keras_hier import Hierarchy
    >>> h = Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    >>> y, z = np.array([0, 2]), np.array([[2.0, 1.0, 0.0], [0.5, 0.0, 1.0]])
    >>> bool(np.isclose(float(HierarchicalCrossEntropy(h, alpha=0.0)(y, z)), float(ce(y, z)), atol=1e-5))
    True
    """

    def __init__(self, hierarchy, alpha=0.1, from_logits=True, reduction="sum_over_batch_size",
                 name="hierarchical_cross_entropy", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not alpha >= 0:
            raise ValueError(f"HierarchicalCrossEntropy: alpha must be >= 0, got {alpha}")
        self.hierarchy = _check_hierarchy(hierarchy, "HierarchicalCrossEntropy")
        self.alpha = float(alpha)
        self.from_logits = bool(from_logits)
        heights = self.hierarchy.ancestor_heights()[:, 1:].astype(np.float64)
        self.level_weights = np.where(self.hierarchy.level_mask, np.exp(-self.alpha * heights), 0.0)
        self.level_weights = self.level_weights.astype(np.float32)
        self._num_classes = self.hierarchy.num_classes

    def call(self, y_true, y_pred):
        labels, z = self._labels_and_logits(y_true, y_pred)
        return hierarchical_cross_entropy(labels, z, self.hierarchy, self.level_weights)

    def get_config(self):
        config = super().get_config()
        config.update(hierarchy=self.hierarchy.to_dict(), alpha=self.alpha, from_logits=self.from_logits)
        return config


@keras.saving.register_keras_serializable(package="keras_hier")
class SoftLabelCrossEntropy(_HierLoss):
    """Soft labels ("Making Better Mistakes"): CE against q_j ~ exp(-beta d(y, j)).

    d is the LCA height by default (as in the paper) or the path distance;
    computed through the tree factorisation (no [C, C]).

    Args:
        hierarchy: a `keras_hier.Hierarchy` (or its `to_dict()`).
        beta: sharpness (> 0); large beta tends to one-hot cross-entropy.
        distance: `"lca_height"` (default) or `"path"`.
        from_logits: whether `y_pred` are logits (default) or probabilities.
        reduction, name, dtype: as in `keras.losses.Loss`.

    Example:

    >>> import numpy as np
    >>> from keras_hier import Hierarchy
    >>> h = Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> loss = SoftLabelCrossEntropy(h, beta=2.0)
    >>> round(float(loss(np.array([0]), np.zeros((1, 3)))), 4)  # log 3 for uniform predictions
    1.0986
    """

    def __init__(self, hierarchy, beta=1.0, distance="lca_height", from_logits=True,
                 reduction="sum_over_batch_size", name="soft_label_cross_entropy", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.hierarchy = _check_hierarchy(hierarchy, "SoftLabelCrossEntropy")
        if not beta > 0:
            raise ValueError(f"SoftLabelCrossEntropy: beta must be > 0, got {beta}")
        self.beta, self.distance = float(beta), distance
        self.from_logits = bool(from_logits)
        self.factors = tree_factors(self.hierarchy, "exp", self.beta, distance)
        self.row_sums = self.factors.row_sums(self.hierarchy).astype(np.float32)
        self._num_classes = self.hierarchy.num_classes

    def call(self, y_true, y_pred):
        labels, z = self._labels_and_logits(y_true, y_pred)
        return soft_label_cross_entropy(labels, z, self.hierarchy, self.factors, self.row_sums)

    def get_config(self):
        config = super().get_config()
        config.update(hierarchy=self.hierarchy.to_dict(), beta=self.beta, distance=self.distance,
                      from_logits=self.from_logits)
        return config


@keras.saving.register_keras_serializable(package="keras_hier")
class CORRLoss(keras.losses.Loss):
    """CORR loss for fixed (MDS) proxies: sum over the batch of 1 - cos(f(x), p_y).

    `y_pred` are cosine logits s * cos to every proxy, as output by
    `build_classifier(..., head="corr")` (a `NormFaceHead` with fixed proxies,
    chordal distance and s = `scale`); prediction is the nearest proxy
    (argmax). The paper sums over the batch (`reduction="sum"`, default);
    `reduction="sum_over_batch_size"` gives the mean.

    Args:
        scale: s of the cosine logits (1.0 for the "corr" head).
        reduction: `"sum"` (default), `"sum_over_batch_size"`, ...
        name, dtype: as in `keras.losses.Loss`.

    Example:

    >>> import numpy as np
    >>> float(CORRLoss()(np.array([1, 0]), np.array([[0.2, 1.0], [0.5, 0.0]])))
    0.5
    """

    def __init__(self, scale=1.0, reduction="sum", name="corr_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not scale > 0:
            raise ValueError(f"CORRLoss: scale must be > 0, got {scale}")
        self.scale = float(scale)

    def call(self, y_true, y_pred):
        num_classes = y_pred.shape[-1]
        labels = sparse_labels(y_true, num_classes, "CORRLoss")
        return corr_loss(labels, y_pred, self.scale)

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale)
        return config
