"""Proxy heads: `NormFaceHead` and `ProxyDRHead` (float32 logits [B, C]).

Both take an embedding [B, D] and compare it with C class proxies on the unit
sphere (`keras_hier.ops.normface_logits` / `proxydr_logits` hold the
formulas):

- NormFace: z_c = s cos_c (chordal) = s - (s/2) d_c^2;
- ProxyDR: z_c = -(s/2) ln(d_c^2 + eps), i.e. p(c|x) ~ d_c^(-s).

Options (combinable as in the ProxyDR paper):

- `proxy_mode="learned"` (default): proxies are trained by backprop;
  `"ema"`: no gradient; after each training step every class seen in the
  batch moves its proxy to normalise(a * mean + (1 - a) * proxy), with
  a = `ema_momentum` (0.01) and mean = the renormalised mean of its
  normalised embeddings; the first visit sets the proxy to that mean;
  `"fixed"`: `proxies` (a [C, D] array, e.g. from `keras_hier.mds_proxies`)
  never change.
- `dynamic_scale=True`: log s is a separate variable the loss treats as a
  constant; after each step one Adam step (`scale_learning_rate`, 1e-4 as in
  the reference code) on R(s)^2 moves s toward the root of the AdaCos-like
  residual R of METHODS.md (see `scale_residual`), with B(s) recomputed from
  the batch, starting from `initial_dynamic_scale`.

EMA and dynamic scale need labels and an after-step update: call
`head.update_from_batch(embeddings, labels)` after each optimiser step, or
train with `keras_hier.models.Classifier` / `build_classifier`, whose
`train_step` does it for you (see `keras_hier.models`).
"""

import math

import keras
import numpy as np
from keras import ops

from keras_hier import geometry as kh_ops
from keras_hier.labels import sparse_labels

__all__ = ["NormFaceHead", "ProxyDRHead", "ProxyHead", "initial_dynamic_scale", "scale_residual", "PROXY_MODES",
           "capture_embeddings", "encode_array", "decode_array"]

PROXY_MODES = ("learned", "ema", "fixed")
HEAD_KINDS = ("normface", "proxydr")
_EXP_CAP = 80.0  # exp arguments are capped here in the scale update (float32-safe)


# ----------------------------------------------------------- dynamic scale
def _unit_logit(kind, cosine, distance, xp):
    """u with logit = s * u (NormFace) or s * u (ProxyDR, u = -ln d)."""
    if kind == "normface":
        if distance == "chordal":
            return cosine
        theta = xp.arccos(xp.clip(cosine, -1.0 + kh_ops.COS_CLIP, 1.0 - kh_ops.COS_CLIP))
        return 1.0 - 0.5 * theta * theta
    if distance == "chordal":
        d2 = xp.maximum(2.0 - 2.0 * cosine, 0.0)
    else:
        d2 = xp.square(xp.arccos(xp.clip(cosine, -1.0 + kh_ops.COS_CLIP, 1.0 - kh_ops.COS_CLIP)))
    return -0.5 * xp.log(d2 + kh_ops.EPSILON)


def scale_residual(kind, scale, theta, non_target, non_target_derivative=0.0, distance="chordal", xp=np):
    """The dynamic-scale residual R(s) and dR/ds.

    With theta = the batch median target angle (capped at pi/4),
    B = mean over samples of sum_{j != y} exp(z_ij) (z = the head's logits at
    scale s) and B' = dB/ds:

    - ProxyDR: R = B (s + 1) d^s + 1 - s, d = the distance at theta (chordal
      sqrt(2 - 2 cos theta) or theta): the target probability is steepest in
      d there. (The reference code raises d to -2 sqrt(s) instead of -s.)
    - NormFace chordal: R = e^{s cos}(cos + s sin^2) + B (cos - s sin^2):
      steepest in theta.
    - NormFace arccos (z = s (1 - theta^2/2)): R = e^{z}(1 + s theta^2) +
      B (1 - s theta^2).

    Args:
        kind: `"normface"` or `"proxydr"`.
        scale: s.
        theta: target angle.
        non_target: B.
        non_target_derivative: B'.
        distance: `"chordal"` or `"arccos"`.
        xp: `numpy` or `keras.ops`.

    Returns:
        (R, dR/ds).
    """
    s, b, db = scale, non_target, non_target_derivative
    um = _unit_logit(kind, xp.cos(theta), distance, xp)
    if kind == "proxydr":
        g = xp.exp(-s * um)  # d^s
        r = b * (s + 1.0) * g + 1.0 - s
        dr = db * (s + 1.0) * g + b * g - b * (s + 1.0) * um * g - 1.0
        return r, dr
    e = xp.exp(xp.minimum(s * um, _EXP_CAP))
    if distance == "chordal":
        c, sn2 = xp.cos(theta), xp.square(xp.sin(theta))
        r = e * (c + s * sn2) + b * (c - s * sn2)
        dr = e * (c * (c + s * sn2) + sn2) + db * (c - s * sn2) - b * sn2
        return r, dr
    q = theta * theta
    r = e * (1.0 + s * q) + b * (1.0 - s * q)
    dr = e * (um * (1.0 + s * q) + q) + db * (1.0 - s * q) - b * q
    return r, dr


def initial_dynamic_scale(kind, num_classes, distance="chordal"):
    """The starting s of a dynamic scale: the root of R(s) = 0 with theta = pi/4
    and every non-target class orthogonal (7.899 ProxyDR, 5.794 NormFace for
    C = 100, chordal). For NormFace, R has two roots; the larger one is used;
    with very few classes R may have none, then the s minimising |R| is used.

    Args:
        kind: `"proxydr"` or `"normface"`.
        num_classes: C (>= 2).
        distance: `"chordal"` or `"arccos"`.

    Returns:
        float.

    Example:

    >>> round(initial_dynamic_scale("proxydr", 100), 3), round(initial_dynamic_scale("normface", 100), 3)
    (7.899, 5.794)
    """
    if kind not in HEAD_KINDS:
        raise ValueError(f"kind must be one of {HEAD_KINDS}, got {kind!r}")
    kh_ops.check_distance(distance)
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2 for a dynamic scale, got {num_classes}")
    u_orth = float(_unit_logit(kind, np.float64(0.0), distance, np))

    def residual(s):
        return scale_residual(kind, s, math.pi / 4, (num_classes - 1) * np.exp(s * u_orth), 0.0, distance, np)[0]

    grid = np.linspace(1e-3, 200.0, 200_001)
    values = residual(grid)
    change = np.flatnonzero(np.sign(values[:-1]) != np.sign(values[1:]))
    if not len(change):  # no root (few classes): the s where |R| is smallest
        return float(grid[np.argmin(np.abs(values))])
    low, high = grid[change[-1]], grid[change[-1] + 1]
    for _ in range(60):
        mid = 0.5 * (low + high)
        if np.sign(residual(mid)) == np.sign(residual(low)):
            low = mid
        else:
            high = mid
    return float(0.5 * (low + high))


# ------------------------------------------------------ embedding capture
class _Capture:
    """Per-thread store the `Classifier.train_step` opens so heads can hand it
    the embeddings of the current forward pass (one thread per replica under
    `tf.distribute.MirroredStrategy`).

    A head that needs after-step updates refuses a training forward pass
    while no store is open (a plain `keras.Model.fit` would never update
    it). In your own training loop, open one around the forward pass and
    call `update_from_batch` after the optimiser step::

        with capture_embeddings as store:
            logits = model(x, training=True)   # + loss, gradients, optimiser
        head.update_from_batch(store[id(head)], y)
    """

    def __init__(self):
        import threading

        self._local = threading.local()

    def open(self):
        self._local.store = {}

    def close(self):
        store = getattr(self._local, "store", None) or {}
        self._local.store = None
        return store

    @property
    def is_open(self):
        return getattr(self._local, "store", None) is not None

    def put(self, layer, value):
        store = getattr(self._local, "store", None)
        if store is not None:
            store[id(layer)] = value

    def put_logits(self, layer, value):
        store = getattr(self._local, "store", None)
        if store is not None:
            store[(id(layer), "logits")] = value

    @staticmethod
    def logits_of(store, layer):
        """The logits `layer` recorded in `store` (None if it did not)."""
        return store.get((id(layer), "logits"))

    def __enter__(self):
        self.open()
        return self._local.store

    def __exit__(self, *exc_info):
        self._local.store = None
        return False


capture_embeddings = _Capture()


# -------------------------------------------------------- cross-replica ops
def _replica_context():
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def _all_sum(values):
    context = _replica_context()
    return values if context is None else [context.all_reduce("sum", v) for v in values]


def _all_gather(value):
    context = _replica_context()
    return value if context is None else context.all_gather(value, axis=0)


# ------------------------------------------------------------------- heads
_NO_UPDATE_MESSAGE = (
    "{cls} {name!r} has EMA proxies or a dynamic scale, which need the labels after every optimiser step; "
    "a plain keras.Model never gives them to the head, so training would leave the proxies / scale "
    "unchanged. Build the model with keras_hier.build_classifier(...) or as keras_hier.models.Classifier("
    "inputs, outputs) (a keras.Model whose train_step runs the update), or, in your own training loop, "
    "run the forward pass inside `with keras_hier.layers.capture_embeddings as store:` and call "
    "head.update_from_batch(store[id(head)], labels) after the step.")


def encode_array(array):
    """A float32 array as one compact JSON-safe value (base64 of its bytes) for a layer config.

    Example:
    >>> decode_array(encode_array(np.eye(2))).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    import base64

    array = np.ascontiguousarray(array, dtype="<f4")
    return {"dtype": "float32", "shape": list(array.shape), "base64": base64.b64encode(array.tobytes()).decode()}


def decode_array(value):
    """Inverse of `encode_array`; lists and arrays pass through as float32 arrays."""
    import base64

    if isinstance(value, dict) and "base64" in value:
        flat = np.frombuffer(base64.b64decode(value["base64"]), dtype="<f4")
        return flat.reshape(value["shape"]).astype(np.float32)
    return np.asarray(value, dtype=np.float32)


def _check_proxies(proxies, num_classes, name):
    """[C, D] float32 proxies with finite, non-zero rows.

    Rows are kept as given (a learned proxy's norm sets its gradient scale)
    when float32 can normalise them; rows like 1e30, whose squared norm
    overflows float32, are normalised here in float64 (no logit changes).
    """
    raw = np.asarray(proxies, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[0] != num_classes:
        raise ValueError(f"{name}: proxies must be [num_classes={num_classes}, D], got shape {raw.shape}")
    if not np.all(np.isfinite(raw)):
        row = int(np.flatnonzero(~np.all(np.isfinite(raw), axis=1))[0])
        raise ValueError(f"{name}: proxies row {row} (class {row}) contains NaN or inf")
    scaled = raw / np.maximum(np.max(np.abs(raw), axis=1, keepdims=True), np.finfo(np.float64).tiny)
    norms = np.linalg.norm(scaled, axis=1)
    if np.any(norms == 0):
        row = int(np.flatnonzero(norms == 0)[0])
        raise ValueError(f"{name}: proxies row {row} (class {row}) is all zeros; a proxy needs a direction")
    row_norms = np.linalg.norm(raw, axis=1)
    if np.all((row_norms > 1e-15) & (row_norms < 1e15)):
        return raw.astype(np.float32)
    return (scaled / norms[:, None]).astype(np.float32)


class ProxyHead(keras.layers.Layer):
    """Base class of `NormFaceHead` and `ProxyDRHead`: C proxies on the unit sphere, a scale, after-step updates.

    Subclasses set `kind` and implement `logits(embeddings, proxies, scale)`.
    The after-step protocol other code relies on (`keras_hier.models.Classifier`):
    `needs_update` (bool) and `update_from_batch(embeddings, labels)`.
    """

    kind = None

    def __init__(self, num_classes, scale=None, distance="chordal", proxy_mode="learned", proxies=None,
                 dynamic_scale=False, ema_momentum=0.01, scale_learning_rate=1e-4, **kwargs):
        kwargs.setdefault("dtype", "float32")  # logits in float32 under mixed precision
        super().__init__(**kwargs)
        name = type(self).__name__
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"{name}: num_classes must be a positive int, got {num_classes!r}")
        if proxy_mode not in PROXY_MODES:
            raise ValueError(f"{name}: proxy_mode must be one of {PROXY_MODES}, got {proxy_mode!r}")
        if distance not in kh_ops.DISTANCES:
            raise ValueError(f"{name}: distance must be one of {kh_ops.DISTANCES}, got {distance!r}")
        if proxy_mode == "fixed" and proxies is None:
            raise ValueError(f"{name}: proxy_mode='fixed' needs the `proxies` array [C, D]")
        if proxies is not None:
            proxies = _check_proxies(decode_array(proxies), num_classes, name)
        if not 0 < ema_momentum <= 1:
            raise ValueError(f"{name}: ema_momentum must be in (0, 1], got {ema_momentum}")
        self.num_classes = int(num_classes)
        self.distance = distance
        self.proxy_mode = proxy_mode
        self.dynamic_scale = bool(dynamic_scale)
        if scale is None:
            scale = initial_dynamic_scale(self.kind, num_classes, distance) if (
                self.dynamic_scale and num_classes > 1) else 10.0
        if not scale > 0:
            raise ValueError(f"{name}: scale must be > 0, got {scale}")
        self.initial_scale = float(scale)
        self._init_proxies = proxies
        self.ema_momentum = float(ema_momentum)
        self.scale_learning_rate = float(scale_learning_rate)

    @property
    def needs_update(self):
        """True when training needs `update_from_batch` after every step."""
        return self.proxy_mode == "ema" or self.dynamic_scale

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"{type(self).__name__}: the embedding dimension must be known")
        if self._init_proxies is not None and self._init_proxies.shape[1] != dim:
            raise ValueError(f"{type(self).__name__}: proxies have dimension {self._init_proxies.shape[1]} "
                             f"but the embedding has {dim}")
        initializer = (keras.initializers.Constant(self._init_proxies) if self._init_proxies is not None
                       else keras.initializers.RandomNormal(0.0, 1.0))
        shared = "only_first_replica"  # replicas assign identical (all-reduced) values
        self._proxies = self.add_weight(name="proxies", shape=(self.num_classes, dim), initializer=initializer,
                                        trainable=self.proxy_mode == "learned", autocast=False,
                                        aggregation="none" if self.proxy_mode == "learned" else shared)
        if self.proxy_mode == "ema":
            self._visited = self.add_weight(name="visited", shape=(self.num_classes,), initializer="zeros",
                                            trainable=False, autocast=False, aggregation=shared)
        if self.dynamic_scale:
            self._log_scale = self.add_weight(
                name="log_scale", shape=(), initializer=keras.initializers.Constant(math.log(self.initial_scale)),
                trainable=False, autocast=False, aggregation=shared)
            self._scale_state = self.add_weight(name="scale_adam_state", shape=(3,), initializer="zeros",
                                                trainable=False, autocast=False, aggregation=shared)

    @property
    def proxies(self):
        """The L2-normalised proxies, float32 [C, D]."""
        return kh_ops.l2_normalize(kh_ops.float32(self._proxies))

    @property
    def scale(self):
        """The current scale s (float32 scalar tensor)."""
        if self.dynamic_scale:
            return ops.exp(kh_ops.float32(self._log_scale))
        return ops.convert_to_tensor(self.initial_scale, dtype="float32")

    def logits(self, embeddings, proxies, scale):
        raise NotImplementedError

    def call(self, inputs, training=None):
        x = kh_ops.unit_directions(kh_ops.float32(inputs))
        if training:
            if self.needs_update and not capture_embeddings.is_open:
                raise RuntimeError(_NO_UPDATE_MESSAGE.format(name=self.name, cls=type(self).__name__))
            capture_embeddings.put(self, x)
        proxies = self._proxies if self.proxy_mode == "learned" else ops.stop_gradient(self._proxies)
        logits = self.logits(x, proxies, ops.stop_gradient(self.scale))
        if training and self.dynamic_scale:  # the scale update reuses them (no second [B, C] pass)
            capture_embeddings.put_logits(self, logits)
        return logits

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_classes,)

    # ------------------------------------------------------- after-step update
    def update_from_batch(self, embeddings, labels, logits=None):
        """EMA proxies and dynamic scale update from one training batch.

        Call after the optimiser step with the embeddings of that step's
        forward pass (the head input) and the labels. Works in a replica
        context of `tf.distribute`: the EMA all-gathers every replica's
        normalised embeddings and labels, the dynamic scale all-reduces its
        sums and all-gathers the target angles, so all replicas assign the
        same values. No-op for learned / fixed proxies with a fixed scale.

        Args:
            embeddings: [B, D] head inputs.
            labels: int class ids [B] / [B, 1] or one-hot [B, C].
            logits: optional [B, C] logits of that forward pass (the dynamic
                scale then needs no second pass over the C proxies);
                recomputed from the current proxies when omitted.
        """
        if not self.needs_update:
            return
        x = kh_ops.unit_directions(kh_ops.float32(embeddings))
        labels, valid = sparse_labels(labels, self.num_classes, type(self).__name__, with_valid=True)
        if self.dynamic_scale:  # uses the proxies of this step's forward pass
            self._update_scale(x, labels, logits)
        if self.proxy_mode == "ema":  # a bad label (possible only under XLA / jax.jit) moves no proxy
            self._update_ema(x, labels, ops.cast(valid, "float32"))

    def _update_ema(self, x, labels, ones):
        # Only the classes in the batch move, so the update works on the batch's rows ([B, D], with B the
        # samples of all replicas, and a [B, B] same-class matrix) and scatters them into the [C, D]
        # proxies: no pass over all C proxies beyond the scatter. A sample's row gets its class's sum and
        # count; samples of one class write the same values. An invalid label (id 0, `ones` 0) adds nothing.
        x, labels, ones = (_all_gather(v) for v in (x * ops.expand_dims(ones, -1), labels, ones))
        same = ops.cast(ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0)), "float32") * ones
        sums, counts = ops.matmul(same, x), ops.sum(same, axis=1)
        proxies = ops.stop_gradient(self._proxies.value)  # a tensor read (see `_update_scale`)
        visited_now = self._visited.value
        old = ops.take(proxies, labels, axis=0)
        visited_before = ops.take(visited_now, labels, axis=0)
        mean = kh_ops.l2_normalize(sums)
        alpha = self.ema_momentum
        moved = kh_ops.l2_normalize(alpha * mean + (1.0 - alpha) * kh_ops.l2_normalize(old))
        seen = ops.expand_dims(counts > 0, -1)
        new = ops.where(seen, ops.where(ops.expand_dims(visited_before > 0, -1), moved, mean), old)
        index = ops.expand_dims(labels, -1)
        self._proxies.assign(ops.scatter_update(proxies, index, new))
        self._visited.assign(ops.scatter_update(
            visited_now, index, ops.maximum(visited_before, ops.cast(counts > 0, "float32"))))

    def _update_scale(self, x, labels, logits=None):
        log_scale, state = self._log_scale.value, self._scale_state.value
        s = ops.exp(log_scale)
        # A tensor read: a gather from the variable itself (TensorFlow's ResourceGather) would switch it to
        # copy-on-read, and every later read of the [C, D] proxies would copy them.
        proxies = ops.stop_gradient(kh_ops.float32(self._proxies.value))
        if logits is None:
            logits = self.logits(x, proxies, s)
        z = kh_ops.float32(logits)  # = s * u, u = _unit_logit of the cosine
        # exp(z) over the non-target classes: the B target entries set to -inf by a scatter (in place where
        # the backend can) instead of a [B, C] class-id comparison and select.
        rows = ops.arange(ops.shape(z)[0], dtype="int32")
        masked = ops.scatter_update(ops.minimum(z, _EXP_CAP), ops.stack([rows, labels], axis=1),
                                    ops.full(ops.shape(rows), -np.inf, "float32"))
        e = ops.exp(masked)
        target_cosine = ops.sum(x * kh_ops.l2_normalize(ops.take(proxies, labels, axis=0)), axis=-1)
        theta = ops.arccos(ops.clip(target_cosine, -1.0 + kh_ops.COS_CLIP, 1.0 - kh_ops.COS_CLIP))
        count = ops.cast(ops.shape(x)[0], "float32")
        b_sum, db_sum, count = _all_sum([ops.sum(e), ops.sum(z * e) / s, count])
        theta = ops.minimum(math.pi / 4, ops.median(_all_gather(theta)))
        r, dr = scale_residual(self.kind, s, theta, b_sum / count, db_sum / count, self.distance, ops)
        grad = 2.0 * r * dr * s  # d(R^2) / d(log s)
        m, v, t = state[0], state[1], state[2] + 1.0
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad * grad
        step = self.scale_learning_rate * (m / (1.0 - 0.9**t)) / (ops.sqrt(v / (1.0 - 0.999**t)) + 1e-7)
        new_log_scale = log_scale - ops.where(ops.isfinite(step), step, 0.0)
        self._log_scale.assign(new_log_scale)
        self._scale_state.assign(ops.stack([m, v, t]))

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes, scale=self.initial_scale, distance=self.distance,
            proxy_mode=self.proxy_mode,
            proxies=None if self._init_proxies is None else encode_array(self._init_proxies),
            dynamic_scale=self.dynamic_scale, ema_momentum=self.ema_momentum,
            scale_learning_rate=self.scale_learning_rate)
        return config


@keras.saving.register_keras_serializable(package="keras_hier")
class NormFaceHead(ProxyHead):
    """NormFace head: logits s * cos(f(x), w_c) (chordal) over C proxies.

    Args:
        num_classes: C.
        scale: s; default 10, or `initial_dynamic_scale("normface", C)` when
            `dynamic_scale` (then it is only the start).
        distance: `"chordal"` (default; z = s cos) or `"arccos"`
            (z = s (1 - theta^2 / 2)).
        proxy_mode: `"learned"`, `"ema"` or `"fixed"` (see the module doc).
        proxies: [C, D] array; required for `"fixed"`, the initial value
            otherwise (default: normalised N(0, I) rows).
        dynamic_scale: AdaCos-like after-step update of s.
        ema_momentum: a of the EMA update (0.01).
        scale_learning_rate: Adam learning rate of the log-scale update (1e-4).
        **kwargs: `keras.layers.Layer` arguments (`dtype` defaults to float32).

    Input: [B, D] embeddings. Output: float32 logits [B, C].

    Example:

    >>> import numpy as np
    >>> head = NormFaceHead(3, scale=10.0)
    >>> logits = head(np.ones((2, 4), "float32"))
    >>> tuple(logits.shape), keras.backend.standardize_dtype(logits.dtype)
    ((2, 3), 'float32')
    """

    kind = "normface"

    def logits(self, embeddings, proxies, scale):
        return kh_ops.normface_logits(embeddings, proxies, scale, self.distance)


@keras.saving.register_keras_serializable(package="keras_hier")
class ProxyDRHead(ProxyHead):
    """ProxyDR head: logits -(s/2) ln(d_c^2 + eps), so p(c|x) ~ d_c^(-s).

    d is the chordal distance sqrt(2 - 2 cos) (default) or the angle
    (`"arccos"`); eps = 1e-12 caps a logit at about 138 s / 10. Arguments as
    `NormFaceHead`; the default dynamic start is
    `initial_dynamic_scale("proxydr", C)`.

    Example:

    >>> import numpy as np
    >>> head = ProxyDRHead(5, proxy_mode="ema")
    >>> tuple(head(np.ones((2, 8), "float32")).shape), tuple(head.proxies.shape)
    ((2, 5), (5, 8))
    """

    kind = "proxydr"

    def logits(self, embeddings, proxies, scale):
        return kh_ops.proxydr_logits(embeddings, proxies, scale, self.distance)
