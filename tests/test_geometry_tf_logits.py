"""Chordal ProxyDR and NormFace logits on TensorFlow (hand-written gradients) against a float64 NumPy
reference and the `keras.ops` forms that JAX and PyTorch run."""

import numpy as np
import pytest
import tensorflow as tf

from keras_hier import geometry as kh_ops

EPS = kh_ops.EPSILON


def reference(x, w, s, upstream, kind="proxydr"):
    """ProxyDR z = -(s/2) ln(max(2 - 2 cos, 0) + eps) or NormFace z = s cos, and the gradients of
    sum(upstream * z), float64 NumPy."""
    x, w, g = (np.asarray(a, np.float64) for a in (x, w, upstream))
    x_norm = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
    w_norm = np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-6)
    x_hat, w_hat = x / x_norm, w / w_norm
    cos = x_hat @ w_hat.T
    d2 = np.maximum(2.0 - 2.0 * cos, 0.0)
    if kind == "normface":
        z, per_cos, grad_s = s * cos, g * s, np.sum(g * cos)
    else:
        z, per_cos, grad_s = -0.5 * s * np.log(d2 + EPS), g * s / (d2 + EPS), -0.5 * np.sum(g * np.log(d2 + EPS))
    grad_x_hat, grad_w_hat = per_cos @ w_hat, per_cos.T @ x_hat
    grad_x = (grad_x_hat - x_hat * np.sum(x_hat * grad_x_hat, axis=1, keepdims=True)) / x_norm
    grad_w = (grad_w_hat - w_hat * np.sum(w_hat * grad_w_hat, axis=1, keepdims=True)) / w_norm
    return z, grad_x, grad_w, grad_s


def tf_logits_and_gradients(form, x, w, s, upstream):
    x, w, s = tf.constant(x), tf.constant(w), tf.constant(s, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([x, w, s])
        z = form(x, w, s)
        total = tf.reduce_sum(z * upstream)
    return [z.numpy()] + [g.numpy() for g in tape.gradient(total, [x, w, s])]


def proxydr(x, w, s):
    return kh_ops.proxydr_logits(x, w, s)


def normface(x, w, s):
    return kh_ops.normface_logits(x, w, s)


def keras_ops_form(x, w, s):  # the JAX / PyTorch forms, differentiated by TensorFlow's autograd
    return kh_ops._proxydr_chordal_ops(kh_ops.l2_normalize(x), w, s, EPS)


def keras_ops_normface(x, w, s):
    return s * kh_ops.cosine_logits_matrix(x, w)


FORMS = {"proxydr": (proxydr, keras_ops_form), "normface": (normface, keras_ops_normface)}


def inputs(seed, n=6, dim=5, num_classes=9):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    w = (rng.normal(size=(num_classes, dim)) * 10.0 ** rng.uniform(-2, 2, (num_classes, 1))).astype(np.float32)
    return x, w, rng.normal(size=(n, num_classes)).astype(np.float32)


def assert_close(got, expected, rtol=2e-4):
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * np.max(np.abs(expected)))


@pytest.mark.parametrize("kind", sorted(FORMS))
@pytest.mark.parametrize("seed", [0, 1])
def test_logits_and_gradients_match_numpy(kind, seed):
    x, w, upstream = inputs(seed)
    got = tf_logits_and_gradients(FORMS[kind][0], x, w, 7.0, upstream)
    for value, expected in zip(got, reference(x, w, 7.0, upstream, kind)):
        assert_close(value, expected)
    assert got[0].dtype == np.float32


@pytest.mark.parametrize("kind", sorted(FORMS))
def test_agrees_with_the_keras_ops_form_on_zero_and_tiny_rows(kind):
    x, w, upstream = inputs(2)
    x[1] = 0.0  # a zero embedding: cos 0, distance sqrt(2)
    w[3] *= 1e-8  # squared norm below the 1e-12 floor: normalised without the radial projection
    fast_form, generic_form = FORMS[kind]
    fast = tf_logits_and_gradients(fast_form, x, w, 3.0, upstream)
    generic = tf_logits_and_gradients(generic_form, x, w, 3.0, upstream)
    for value, expected in zip(fast, generic):
        assert np.all(np.isfinite(value))
        assert_close(value, expected)
    np.testing.assert_allclose(fast[0][1], 0.0 if kind == "normface" else -1.5 * np.log(2.0), rtol=1e-6)


def test_zero_distance_is_capped_and_gradients_stay_finite():
    x = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]], np.float32)
    w = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]], np.float32)  # x[0] points at w[0]
    upstream = np.arange(1.0, 7.0, dtype=np.float32).reshape(2, 3)
    z, grad_x, grad_w, grad_s = tf_logits_and_gradients(proxydr, x, w, 10.0, upstream)
    np.testing.assert_allclose(z[0, 0], -5.0 * np.log(EPS), rtol=1e-6)  # the cap, about 138
    # d^2 = 0 sits on the floor max(., 0): no gradient flows through it (here it would be radial anyway,
    # and the normalisations remove it); every other entry has its usual gradient.
    blocked = upstream.copy()
    blocked[0, 0] = 0.0
    expected = reference(x, w, 10.0, blocked)
    assert_close(grad_x, expected[1])
    assert_close(grad_w, expected[2])
    assert_close(grad_s, reference(x, w, 10.0, upstream)[3])


@pytest.mark.parametrize("kind", sorted(FORMS))
def test_xla_gives_the_same_logits_and_gradients(kind):
    x, w, upstream = inputs(3)

    def run(x, w):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            z = FORMS[kind][0](x, w, 5.0)
            total = tf.reduce_sum(z * upstream)
        return [z] + tape.gradient(total, [x, w])

    compiled = tf.function(run, jit_compile=True)(tf.constant(x), tf.constant(w))
    graph = tf.function(run)(tf.constant(x), tf.constant(w))
    for a, b in zip(compiled, graph):
        assert_close(a.numpy(), b.numpy(), rtol=1e-4)
    assert_close(graph[0].numpy(), reference(x, w, 5.0, upstream, kind)[0])


def compiled_calls(graph):
    """Names of the XLA-compiled calls (`_XlaMustCompile`) in a traced graph and its functions."""
    graph_def = graph.as_graph_def()
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    return [n.name for n in nodes if n.attr["_XlaMustCompile"].b]


def traced(kind, with_gradient):
    def run(x, w):
        with tf.GradientTape() as tape:
            tape.watch(w)
            z = FORMS[kind][0](x, w, 5.0)
        return [z, tape.gradient(z, w)] if with_gradient else [z]

    def forward(x, w):  # no tape: an inference graph
        return [FORMS[kind][0](x, w, 5.0)]

    x, w, _ = inputs(4)
    return tf.function(run if with_gradient else forward).get_concrete_function(tf.constant(x), tf.constant(w))


@pytest.mark.parametrize("kind", sorted(FORMS))
def test_training_compiles_the_tails_and_inference_graphs_stay_plain(kind):
    assert compiled_calls(traced(kind, with_gradient=False).graph) == []
    # ProxyDR: the forward tail and the proxy gradient; NormFace: the proxy gradient.
    assert len(compiled_calls(traced(kind, with_gradient=True).graph)) == (2 if kind == "proxydr" else 1)
    x, w, upstream = inputs(5)
    plain = FORMS[kind][0](tf.constant(x), tf.constant(w), 5.0).numpy()
    training = tf_logits_and_gradients(FORMS[kind][0], x, w, 5.0, upstream)
    assert_close(training[0], plain, rtol=1e-5)


@pytest.mark.parametrize("kind", sorted(FORMS))
def test_without_xla_the_same_values_and_gradients(kind, monkeypatch):
    monkeypatch.setattr(kh_ops, "FUSE_WITH_XLA", False)
    assert compiled_calls(traced(kind, with_gradient=True).graph) == []
    x, w, upstream = inputs(6)
    w[2] *= 1e-8  # below the eps floor: only the scaling
    got = tf_logits_and_gradients(FORMS[kind][0], x, w, 7.0, upstream)
    for value, expected in zip(got, tf_logits_and_gradients(FORMS[kind][1], x, w, 7.0, upstream)):
        assert_close(value, expected)
    monkeypatch.setattr(kh_ops, "FUSE_WITH_XLA", True)
    for value, expected in zip(got, tf_logits_and_gradients(FORMS[kind][0], x, w, 7.0, upstream)):
        assert_close(value, expected, rtol=1e-5)
