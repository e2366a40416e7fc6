"""keras_hier.geometry: the NumPy and keras.ops halves agree with each other and with NumPy formulas."""

import numpy as np
import pytest
from keras import ops

from keras_hier import geometry as kh_ops


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


@pytest.mark.parametrize("distance", ["chordal", "arccos"])
def test_logit_forms_match_numpy(distance):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8)).astype(np.float32)
    w = rng.normal(size=(6, 8)).astype(np.float32)
    cos = np.clip(_unit(x.astype(np.float64)) @ _unit(w.astype(np.float64)).T, -1, 1)
    d2 = 2 - 2 * cos if distance == "chordal" else np.arccos(cos) ** 2
    nf = ops.convert_to_numpy(kh_ops.normface_logits(x, w, 10.0, distance))
    pd = ops.convert_to_numpy(kh_ops.proxydr_logits(x, w, 10.0, distance))
    np.testing.assert_allclose(nf, 10 - 5 * d2, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pd, -5 * np.log(d2 + 1e-12), rtol=1e-4, atol=1e-4)
    if distance == "chordal":
        np.testing.assert_allclose(nf, 10 * cos, atol=1e-4)
    assert nf.dtype == np.float32 and pd.dtype == np.float32


def test_zero_embeddings_and_proxies_give_finite_logits():
    x = np.zeros((2, 4), dtype=np.float32)
    w = np.zeros((3, 4), dtype=np.float32)
    w[0, 0] = 1.0
    for form in (kh_ops.normface_logits, kh_ops.proxydr_logits):
        for distance in kh_ops.DISTANCES:
            assert np.all(np.isfinite(ops.convert_to_numpy(form(x, w, 10.0, distance))))
    assert np.all(ops.convert_to_numpy(kh_ops.l2_normalize(x)) == 0)


def test_proxydr_logit_is_capped_by_epsilon_at_distance_zero():
    x = np.array([[1.0, 0.0]], dtype=np.float32)
    logits = ops.convert_to_numpy(kh_ops.proxydr_logits(x, x, 10.0))
    np.testing.assert_allclose(logits[0, 0], -5 * np.log(1e-12), rtol=1e-5)


def test_unknown_distance_is_rejected():
    with pytest.raises(ValueError, match="distance"):
        kh_ops.normface_logits(np.ones((1, 2)), np.ones((1, 2)), 1.0, "cosine")


def test_keras_half_agrees_with_the_numpy_half():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 6))
    x[2] = 0.0
    np.testing.assert_allclose(ops.convert_to_numpy(kh_ops.l2_normalize(x.astype(np.float32))),
                               kh_ops.normalize_rows(x), atol=1e-6)
    w = rng.normal(size=(4, 6))
    cos = ops.convert_to_numpy(kh_ops.cosine_logits_matrix(x, w))
    chordal = np.sqrt(ops.convert_to_numpy(kh_ops.squared_distance(cos, "chordal")))
    np.testing.assert_allclose(chordal[[0, 1, 3, 4]], kh_ops.sphere_distances(x, w)[[0, 1, 3, 4]], atol=1e-5)
    theta = np.sqrt(ops.convert_to_numpy(kh_ops.squared_distance(cos, "arccos")))
    np.testing.assert_allclose(theta[[0, 1]], kh_ops.sphere_distances(x, w, "arccos")[[0, 1]], atol=1e-4)


def test_tree_to_chordal_and_distance_names():
    t = np.array([0.0, 1.0, 2.0, 8.0])
    np.testing.assert_allclose(kh_ops.tree_to_chordal(t, 2.0), np.sqrt(2) * t / (2.0 + t))
    assert kh_ops.check_distance("arccos") == "arccos"
    with pytest.raises(ValueError, match="cosine"):
        kh_ops.check_distance("cosine")


def test_geometry_imports_without_tensorflow():
    import subprocess
    import sys

    code = ("import sys, keras_hier.geometry as g; g.normalize_rows([[1.0, 2.0]]); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("form", ["tensorflow", "keras.ops"])
@pytest.mark.parametrize("magnitude", [1e-30, 1e-9, 1.0, 1e30])
def test_unit_directions_value_and_bounded_gradient_match_numpy(magnitude, form, monkeypatch):
    import tensorflow as tf

    if form == "keras.ops":  # the JAX / PyTorch form, differentiated here by TensorFlow
        monkeypatch.setattr(kh_ops, "_backend", lambda: "keras.ops")

    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 5))
    x[2] = 0.0
    upstream = rng.normal(size=(4, 5))
    xt = tf.constant((x * magnitude).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        u = kh_ops.unit_directions(xt)
        total = tf.reduce_sum(u * upstream.astype(np.float32))
    grad = tape.gradient(total, xt).numpy()
    x64 = np.asarray(xt.numpy(), np.float64)
    norm = np.linalg.norm(x64 / magnitude, axis=1, keepdims=True) * magnitude
    want = np.divide(x64, norm, out=np.zeros_like(x64), where=norm > 0)
    np.testing.assert_allclose(u.numpy(), want, atol=1e-6)
    # d(x / ||x||) with the norm floored at sqrt(1e-12), as autograd of l2_normalize.
    projected = upstream - want * np.sum(want * upstream, axis=1, keepdims=True)
    want_grad = projected / np.maximum(norm, 1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-5 * np.abs(want_grad).max())
    assert np.all(np.abs(grad) <= 1e6 * np.abs(upstream).sum(axis=1, keepdims=True) * 1.01)
