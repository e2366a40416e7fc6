"""Geometry of the unit sphere: the one home of normalisation, sphere distances and the tree-to-sphere map.

Two forms side by side, in the way pytorch-metric-learning's distance
objects own this: NumPy (float64, for evaluation, inference, retrieval and
MDS) and `keras.ops` (float32, for heads and losses; see the second half of
this module). Switching chordal to arccos is the `distance` argument.

- `normalize_rows(x)`: x / ||x|| with epsilon 1e-12 on the squared norm
  (a zero row stays zero);
- chordal distance d = sqrt(2 - 2 cos), angle theta = arccos(cos);
- `tree_to_chordal(t, beta)`: T = sqrt(2) t / (beta + t), a tree distance
  mapped into [0, sqrt(2)) (the MDS target and the HS@k similarity);
- `keras.ops` forms: `l2_normalize`, `unit_directions` (any magnitude,
  bounded gradient), `cosine_logits_matrix`,
  `squared_distance`, and the head logit forms `normface_logits`
  (z = s - (s/2) d^2) and `proxydr_logits` (z = -(s/2) ln(d^2 + eps)).
  On TensorFlow their chordal forms run as fused matmuls with hand-written
  gradients and small XLA clusters for the element-wise tails (same values,
  fewer passes over [B, C] and [C, D]; see `_proxydr_chordal_tf` and
  `FUSE_WITH_XLA`); JAX and PyTorch run the `keras.ops` forms.

Keras is imported on first use of the `keras.ops` half, so importing this
module does not import TensorFlow.
"""

import math

import numpy as np

EPSILON = 1e-12
#: cos is clipped to [-1 + COS_CLIP, 1 - COS_CLIP] before arccos (finite gradient).
COS_CLIP = 1e-7
DISTANCES = ("chordal", "arccos")

__all__ = ["EPSILON", "COS_CLIP", "DISTANCES", "check_distance", "normalize_rows", "sphere_distances",
           "chordal_distances", "tree_to_chordal", "float32", "l2_normalize", "unit_directions", "cosine_logits_matrix",
           "squared_distance", "normface_logits", "proxydr_logits"]


def check_distance(distance):
    """Returns `distance` if it is a sphere distance keras_hier knows, else raises ValueError."""
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    return distance


def normalize_rows(x, epsilon=EPSILON):
    """Rows of `x` scaled to unit L2 norm (float64); a zero row stays zero.

    Example:
    >>> normalize_rows([[3.0, 4.0], [0.0, 0.0]]).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    x = np.asarray(x, dtype=np.float64)
    return x / np.sqrt(np.maximum(np.sum(x * x, axis=-1, keepdims=True), epsilon))


def sphere_distances(a, b=None, distance="chordal"):
    """Distances between the normalised rows of `a` and of `b` (default `a`), float64 [Na, Nb].

    Args:
        a: [Na, D] vectors (normalised here).
        b: [Nb, D] vectors, or None for `a` itself (then the diagonal is exactly 0).
        distance: `"chordal"` (sqrt(2 - 2 cos)) or `"arccos"` (the angle).
    """
    check_distance(distance)
    x = normalize_rows(a)
    y = x if b is None else normalize_rows(b)
    cos = np.clip(x @ y.T, -1.0, 1.0)
    d = np.sqrt(np.maximum(2.0 - 2.0 * cos, 0.0)) if distance == "chordal" else np.arccos(cos)
    if b is None:
        np.fill_diagonal(d, 0.0)
    return d


def chordal_distances(representatives):
    """Chordal distance sqrt(2 - 2 cos) between normalised rows (float64 [C, C], zero diagonal)."""
    return sphere_distances(representatives, distance="chordal")


def tree_to_chordal(t, beta=1.0):
    """T = sqrt(2) t / (beta + t): tree distances mapped into [0, sqrt(2)) (float64).

    Example:
    >>> round(float(tree_to_chordal(1.0, beta=1.0)), 6)
    0.707107
    """
    t = np.asarray(t, dtype=np.float64)
    return np.sqrt(2.0) * t / (beta + t)


# --------------------------------------------------------------------------
# keras.ops half (float32; heads, losses, export). Keras is imported on first
# use, so the NumPy half above stays importable without TensorFlow.
# --------------------------------------------------------------------------
def _ops():
    from keras import ops

    return ops


def float32(x):
    """Casts to a float32 tensor (logits and losses are float32 under mixed precision)."""
    ops = _ops()
    return ops.cast(ops.convert_to_tensor(x), "float32")


def l2_normalize(x, axis=-1, epsilon=EPSILON):
    """Scales `x` to unit L2 norm along `axis` (`keras.ops`); a zero vector stays zero.

    The `keras.ops` twin of `normalize_rows`: epsilon is added to the squared
    norm, so a zero row gives zeros, not NaN.

    Args:
        x: tensor.
        axis: axis to normalise.
        epsilon: floor of the squared norm.

    Returns:
        Tensor of the same shape and dtype as `x`.

    Example:
    >>> import keras
    >>> keras.ops.convert_to_numpy(l2_normalize(keras.ops.convert_to_tensor([[3.0, 4.0], [0.0, 0.0]]))).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    ops = _ops()
    squared = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared, ops.cast(epsilon, squared.dtype)))


def unit_directions(x, epsilon=EPSILON):
    """Directions of the rows of `x` (`keras.ops`): exact for any finite magnitude, bounded gradient.

    The value is x / ||x|| for rows from 1e-38 to 1e38 (each row is first
    divided by its largest |x_i|, so the squared norm neither overflows nor
    underflows); a zero row gives zeros. The gradient is that of
    `l2_normalize`, (I - u u^T) / max(||x||, sqrt(eps)): an embedding that
    is exactly zero (a ReLU backbone with every unit off) or nearly so gets
    gradients at most 1 / sqrt(eps) = 1e6 times the upstream ones, where
    1 / ||x|| would reach 1e36 and overflow the optimiser's moments.

    Args:
        x: [..., D] float tensor.
        epsilon: floor of the squared norm in the gradient.

    Returns:
        Tensor like `x`, rows of unit norm (or zero).

    Example:
    >>> import keras
    >>> x = keras.ops.convert_to_tensor([[3e-30, 4e-30], [0.0, 0.0]])
    >>> keras.ops.convert_to_numpy(unit_directions(x)).astype("float64").round(6).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    if _backend() == "tensorflow":
        return _unit_directions_tf(x, epsilon)
    ops = _ops()
    constant = ops.stop_gradient
    peak = constant(ops.max(ops.abs(x), axis=-1, keepdims=True))
    rows = x / ops.where(peak > 0, peak, 1.0)  # the largest |entry| 1: norm in [1, sqrt(D)], or a zero row
    squared = ops.sum(ops.square(rows), axis=-1, keepdims=True)
    inverse = ops.rsqrt(ops.maximum(squared, epsilon))
    unit = constant(rows * inverse)
    norm = peak * squared * inverse  # ||x||
    # Zero in value; carries the Jacobian (I - u u^T) / max(||x||, sqrt(eps)) to `x`.
    step = (x - constant(x)) / constant(ops.maximum(norm, math.sqrt(epsilon)))
    return unit + step - unit * ops.sum(unit * step, axis=-1, keepdims=True)


def _unit_directions_tf(x, epsilon):
    """`unit_directions` on TensorFlow: the same value and gradient, the gradient written by hand (seven
    ops forward instead of about twenty, plus the IdentityN that carries the custom gradient)."""
    import tensorflow as tf

    @tf.custom_gradient
    def directions(x):
        peak = tf.reduce_max(tf.abs(x), axis=-1, keepdims=True)
        rows = x / tf.where(peak > 0, peak, 1.0)
        squared = tf.reduce_sum(tf.square(rows), axis=-1, keepdims=True)
        inverse = tf.math.rsqrt(tf.maximum(squared, epsilon))
        unit = rows * inverse

        def gradient(upstream):
            norm = peak * squared * inverse
            radial = tf.reduce_sum(unit * upstream, axis=-1, keepdims=True)
            return (upstream - unit * radial) / tf.maximum(norm, math.sqrt(epsilon))

        return unit, gradient

    return directions(x)


def cosine_logits_matrix(embeddings, proxies):
    """cos between every embedding and every proxy, float32 [B, C] (`keras.ops`).

    Both inputs are L2-normalised here (with epsilon), so zero rows give 0.

    Args:
        embeddings: [B, D].
        proxies: [C, D].

    Returns:
        float32 [B, C].
    """
    ops = _ops()
    x = l2_normalize(float32(embeddings))
    w = l2_normalize(float32(proxies))
    return ops.matmul(x, ops.transpose(w))


def squared_distance(cosine, distance="chordal"):
    """Squared sphere distance from cos (`keras.ops`).

    Chordal: d^2 = 2 - 2 cos (floored at 0); arccos: theta^2 with
    theta = arccos(clip(cos, -1 + COS_CLIP, 1 - COS_CLIP)) (finite gradient).

    Args:
        cosine: tensor of cosines.
        distance: `"chordal"` or `"arccos"`.

    Returns:
        Tensor of the same shape.
    """
    ops = _ops()
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
    s = float32(scale)
    if check_distance(distance) == "chordal" and _backend() == "tensorflow":
        return _normface_chordal_tf(l2_normalize(float32(embeddings)), float32(proxies), s)
    cosine = cosine_logits_matrix(embeddings, proxies)
    if distance == "chordal":
        return s * cosine
    return s - 0.5 * s * squared_distance(cosine, distance)


def proxydr_logits(embeddings, proxies, scale, distance="chordal", epsilon=EPSILON):
    """ProxyDR logits z_c = -(s/2) ln(d_c^2 + eps), i.e. p(c|x) ~ d_c^(-s), float32 [B, C].

    Args:
        embeddings: [B, D] (computed in float32).
        proxies: [C, D] class proxies (normalised here).
        scale: s, a float or scalar tensor.
        distance: `"chordal"` (d^2 = 2 - 2 cos) or `"arccos"` (d = theta).
        epsilon: added to d^2; caps a logit at -(s/2) ln(eps) (138 for s = 10).

    Returns:
        float32 [B, C].
    """
    ops = _ops()
    scale = float32(scale)
    if check_distance(distance) == "arccos":
        d2 = squared_distance(cosine_logits_matrix(embeddings, proxies), distance)
        return -0.5 * scale * ops.log(d2 + epsilon)
    form = _proxydr_chordal_tf if _backend() == "tensorflow" else _proxydr_chordal_ops
    return form(l2_normalize(float32(embeddings)), float32(proxies), scale, epsilon)


def _proxydr_chordal_ops(x, proxies, scale, epsilon):
    """Chordal `proxydr_logits` in `keras.ops` (JAX, PyTorch), x already normalised.

    d^2 + eps = max(2 - 2 cos, 0) + eps, with the factor -2 folded into the
    [B, D] side so the [B, C] matrix gets two element-wise passes.
    """
    ops = _ops()
    w = l2_normalize(proxies)
    shifted = ops.matmul(x * -2.0, ops.transpose(w)) + (2.0 + epsilon)
    return (-0.5 * scale) * ops.log(ops.maximum(shifted, epsilon))


def _backend():
    import keras

    return keras.backend.backend()


def _in_xla_context(tf):
    """True inside `tf.function(jit_compile=True)` (TensorFlow's internal test; True if it is unavailable)."""
    try:
        from tensorflow.python.ops import control_flow_util

        return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))
    except Exception:  # noqa: BLE001 - a moved private helper: take the form every device compiles
        return True


# TensorFlow fast paths of the head logits. At C = 100 000 a head's cost beyond a Dense head is its passes
# over [B, C] and [C, D] (B = D = 128: both 12.8 M floats); autograd of the keras.ops forms adds about ten
# (the normalisation's gradient, a [D, C] -> [C, D] transpose, log / maximum and their gradients). These
# forms compute the same values with hand-written gradients and `transpose_b` matmuls, and run their
# element-wise tails as small XLA clusters (`_compiled_tf`): TensorFlow's CPU kernels take one pass over
# memory per op, and its Log kernel alone costs as much as three passes. The forward pass compiles only
# while a gradient tape records (training), so inference graphs (predict, evaluate, SavedModel export) keep
# plain TensorFlow ops.

#: TensorFlow: run the heads' element-wise tails as XLA clusters (set False on a device without XLA, e.g. a
#: PluggableDevice; the values are the same either way).
FUSE_WITH_XLA = True
_COMPILED = {}


def _xla_on(tf):
    """True when the tails may compile: `FUSE_WITH_XLA` and a TensorFlow built with XLA."""
    if "built" not in _COMPILED:
        _COMPILED["built"] = bool(tf.test.is_built_with_xla())
    return FUSE_WITH_XLA and _COMPILED["built"]


def _compiled_tf(tf, function):
    """`function` as one XLA cluster (`tf.function(jit_compile=True)`, built once); `function` itself inside
    an XLA context (which fuses it anyway) or when XLA is off (`_xla_on`)."""
    if _in_xla_context(tf) or not _xla_on(tf):
        return function
    compiled = _COMPILED.get(function)
    if compiled is None:
        compiled = _COMPILED[function] = tf.function(function, jit_compile=True, autograph=False)
    return compiled


def _recording_tf():
    """True while a gradient tape records (training): then the forward tails compile (`_compiled_tf`)."""
    try:
        from tensorflow.python.eager import record

        return bool(record.could_possibly_record())
    except Exception:  # noqa: BLE001 - a moved private helper: the plain ops, same values
        return False


def _row_norms_tf(tf, rows):
    """||w|| of each row of [C, D] in one pass (XLA, which has no EuclideanNorm kernel, fuses two)."""
    if _in_xla_context(tf):
        return tf.sqrt(tf.reduce_sum(tf.square(rows), axis=1))
    return tf.raw_ops.EuclideanNorm(input=rows, axis=1)


def _sphere_terms_tf(tf, proxies, epsilon):
    """n = max(||w_c||, sqrt(eps)) as 1 / n, and where ||w_c||^2 reaches eps (there autograd of
    `l2_normalize` differentiates the norm; below, only the scaling)."""
    norm = _row_norms_tf(tf, proxies)
    return 1.0 / tf.maximum(norm, math.sqrt(epsilon)), norm * norm >= epsilon


def _proxy_gradient(proxies, inverse, live, grad, grad_scale, fused=True):
    """dL/dw = A - w (w . A) / n^2 with A = (dL/dw_hat) / n = grad * grad_scale (per row); below the eps
    floor (not `live`) only the scaling, as autograd of `l2_normalize`.

    `fused` (under XLA): the row dot products as an einsum on `grad` itself, so XLA reads grad and w twice
    and writes the result once (its row reduction of a product is slower, and so is TensorFlow's einsum).
    """
    import tensorflow as tf

    dots = tf.einsum("cd,cd->c", proxies, grad) if fused else tf.reduce_sum(proxies * grad, axis=1)
    radial = tf.where(live, dots * grad_scale * tf.square(inverse), 0.0)
    return grad * grad_scale[:, None] - proxies * radial[:, None]


def _proxy_gradient_tf(tf, proxies, inverse, live, grad, grad_scale=None):
    """`_proxy_gradient` (grad_scale None: 1) as one XLA cluster: two passes over [C, D] where
    TensorFlow's CPU kernels take four or five (products, row sums, radial part, difference, scaling)."""
    grad_scale = tf.ones_like(inverse) if grad_scale is None else grad_scale
    fused = _in_xla_context(tf) or _xla_on(tf)
    return _compiled_tf(tf, _proxy_gradient)(proxies, inverse, live, grad, grad_scale, fused)


def _normface_chordal_tf(x, proxies, scale, epsilon=EPSILON):
    """Chordal `normface_logits` on TensorFlow: z = (s x_hat) . w_hat, the scale on the [B, D] side (no
    element-wise pass over [B, C]); x already normalised. w_hat = w / n in one pass over [C, D], with a
    hand-written gradient (`_proxy_gradient_tf`, the 1 / n folded into its fused pass)."""
    import tensorflow as tf

    @tf.custom_gradient
    def unit_rows(proxies):
        inverse, live = _sphere_terms_tf(tf, proxies, epsilon)

        def gradient(upstream):
            return _proxy_gradient_tf(tf, proxies, inverse, live, upstream, inverse)

        return proxies * inverse[:, None], gradient

    return tf.linalg.matmul(x * scale, unit_rows(proxies), transpose_b=True)


def _proxydr_from_scaled_d2(scaled_d2, inverse, scale, epsilon):
    """z = -(s/2) ln(q / n + eps) from q = n d^2 (element-wise over [B, C])."""
    import tensorflow as tf

    return tf.math.xlogy(-0.5 * scale, scaled_d2 * inverse + epsilon)


def _proxydr_chordal_tf(x, proxies, scale, epsilon):
    """Chordal `proxydr_logits` on TensorFlow (same values) with a hand-written gradient.

    The proxies are never normalised as a [C, D] array: with n = ||w_c||
    (floored at sqrt(eps), as `l2_normalize`), one fused MatMul + BiasAdd +
    Relu (Grappler's remapper) on the raw proxies gives
    q = relu(2 n - 2 x_hat . w_c) = n d^2, then z = -(s/2) ln(q / n + eps)
    element-wise over [B, C]: one XLA pass while a gradient tape records,
    three TensorFlow passes otherwise (inference graphs stay plain).
    Backward, with G = g / q (0 where the relu clipped): grad x_hat =
    s G w and A = s G^T x_hat = dz/dw_hat / n, so the proxy gradient
    A - w (w . A) / n^2 comes out of the matmul already scaled: one XLA
    cluster, two passes over [C, D] (`_proxy_gradient_tf`).

    2 n - 2 x_hat . w is exact in float32 where it is small (Sterbenz), so
    q is 0 or at least n 2^-24 and g / q equals g / (n (d^2 + eps)) to
    2e-5.

    Args:
        x: [B, D] float32, already L2-normalised (autograd differentiates
            that part as usual).
        proxies: [C, D] float32 raw proxies.
        scale: float32 scalar s (its gradient, -(1/2) sum(g ln(d^2 + eps)),
            is computed only if something asks for it).
        epsilon: eps.

    Returns:
        float32 [B, C] logits.
    """
    import tensorflow as tf

    tail = _compiled_tf(tf, _proxydr_from_scaled_d2) if _recording_tf() else _proxydr_from_scaled_d2

    @tf.custom_gradient
    def logits(x, proxies, scale):
        inverse, live = _sphere_terms_tf(tf, proxies, epsilon)
        # relu: d^2 >= 0 where rounding makes 2 - 2 cos negative (cos a hair above 1); no gradient there.
        scaled_d2 = tf.nn.relu(tf.nn.bias_add(tf.linalg.matmul(x * -2.0, proxies, transpose_b=True),
                                              2.0 / inverse))
        z = tail(scaled_d2, inverse, scale, epsilon)

        def gradient(upstream):
            per_cos = tf.math.divide_no_nan(upstream, scaled_d2)
            grad_x = tf.linalg.matmul(per_cos, proxies) * scale
            grad_w = tf.linalg.matmul(per_cos, x * scale, transpose_a=True)
            grad_scale = -0.5 * tf.reduce_sum(upstream * tf.math.log(scaled_d2 * inverse + epsilon))
            return grad_x, _proxy_gradient_tf(tf, proxies, inverse, live, grad_w), grad_scale

        return z, gradient

    return logits(x, proxies, scale)
