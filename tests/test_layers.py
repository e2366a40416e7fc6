"""Proxy heads: logit forms, proxy modes and the dynamic scale against NumPy."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_hier.layers import NormFaceHead, ProxyDRHead, capture_embeddings, initial_dynamic_scale

HEADS = {"normface": NormFaceHead, "proxydr": ProxyDRHead}


def unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def np_logits(kind, x, w, s, distance):
    cos = np.clip(unit(x) @ unit(w).T, -1, 1)
    d2 = 2 - 2 * cos if distance == "chordal" else np.arccos(np.clip(cos, -1 + 1e-7, 1 - 1e-7)) ** 2
    return s - 0.5 * s * d2 if kind == "normface" else -0.5 * s * np.log(d2 + 1e-12)


def batch(seed, n=6, dim=5, num_classes=4):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, dim)).astype(np.float32), rng.integers(0, num_classes, n),
            rng.normal(size=(num_classes, dim)).astype(np.float32))


@pytest.mark.parametrize("kind", sorted(HEADS))
@pytest.mark.parametrize("distance", ["chordal", "arccos"])
def test_head_logits_and_gradients_match_numpy(kind, distance):
    x, y, w = batch(0)
    head = HEADS[kind](4, scale=7.0, distance=distance, proxies=w)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        logits = head(xt)
        loss = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        loss = tf.reduce_sum(loss)
    assert logits.dtype == tf.float32
    np.testing.assert_allclose(logits.numpy(), np_logits(kind, x, w, 7.0, distance), rtol=1e-4, atol=1e-4)
    grads = tape.gradient(loss, [xt, head._proxies.value])

    def np_loss(xv, wv):
        z = np_logits(kind, xv, wv, 7.0, distance)
        z = z - z.max(axis=1, keepdims=True)
        return -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))).sum()

    for which, grad in enumerate(grads):
        base = [x.astype(np.float64), w.astype(np.float64)]
        numeric = np.zeros_like(base[which])
        for index in np.ndindex(numeric.shape):
            up = [b.copy() for b in base]
            down = [b.copy() for b in base]
            up[which][index] += 1e-5
            down[which][index] -= 1e-5
            numeric[index] = (np_loss(*up) - np_loss(*down)) / 2e-5
        np.testing.assert_allclose(grad.numpy(), numeric, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_proxies_are_normalised_and_scale_is_exposed(kind):
    head = HEADS[kind](6, scale=3.0)
    head(np.ones((1, 4), np.float32))
    norms = np.linalg.norm(keras.ops.convert_to_numpy(head.proxies), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-6)
    assert float(head.scale) == pytest.approx(3.0)
    assert head.num_classes == 6
    assert [v.name for v in head.trainable_weights] == ["proxies"]


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_zero_embeddings_give_finite_logits_and_updates(kind):
    head = HEADS[kind](3, proxy_mode="ema", dynamic_scale=True)
    zeros = np.zeros((4, 5), np.float32)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(head(zeros))))
    head.update_from_batch(zeros, np.array([0, 1, 1, 2]))
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(head._proxies)))
    assert np.isfinite(float(head.scale))


def test_ema_moves_only_visited_proxies_by_the_right_amount():
    x, _, w = batch(1, n=6, num_classes=5)
    y = np.array([0, 0, 2, 3, 3, 3])
    head = ProxyDRHead(5, proxy_mode="ema", proxies=w, ema_momentum=0.25)
    head(x)
    assert not head.trainable_weights
    head.update_from_batch(x, y)  # first visit: proxy = renormalised class mean
    got = keras.ops.convert_to_numpy(head._proxies)
    for c in range(5):
        members = unit(x)[y == c]
        expected = unit(members.mean(axis=0)) if len(members) else w[c]
        np.testing.assert_allclose(got[c], expected, atol=1e-5)
    before = got.copy()
    x2 = np.random.default_rng(2).normal(size=(3, 5)).astype(np.float32)
    y2 = np.array([2, 4, 2])
    head.update_from_batch(x2, y2)
    after = keras.ops.convert_to_numpy(head._proxies)
    mean2 = unit(unit(x2)[y2 == 2].mean(axis=0))
    np.testing.assert_allclose(after[2], unit(0.25 * mean2 + 0.75 * unit(before[2])), atol=1e-5)
    np.testing.assert_allclose(after[4], unit(x2[1]), atol=1e-5)  # first visit of class 4
    for c in (0, 1, 3):
        np.testing.assert_array_equal(after[c], before[c])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(head._visited), [1, 0, 1, 1, 1])


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_fixed_proxies_never_change(kind):
    x, y, w = batch(3)
    head = HEADS[kind](4, proxy_mode="fixed", proxies=w, dynamic_scale=True)
    head(x)
    assert not head.trainable_weights
    for _ in range(3):
        head.update_from_batch(x, y)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(head._proxies), w)
    with tf.GradientTape() as tape, capture_embeddings:
        out = tf.reduce_sum(head(x, training=True))
    assert tape.gradient(out, head._proxies.value) is None


def test_initial_dynamic_scale_solves_the_residual():
    theta = np.pi / 4
    s = initial_dynamic_scale("proxydr", 100)
    d = np.sqrt(2 - 2 * np.cos(theta))
    b = 99 * np.sqrt(2.0) ** (-s)
    assert abs(b * (s + 1) * d**s + 1 - s) < 1e-6
    s = initial_dynamic_scale("normface", 100)
    r = np.exp(s * np.cos(theta)) * (np.cos(theta) + s * np.sin(theta) ** 2) + 99 * (
        np.cos(theta) - s * np.sin(theta) ** 2)
    assert abs(r) < 1e-6
    assert round(initial_dynamic_scale("proxydr", 100), 3) == 7.899  # values quoted by the paper
    assert round(initial_dynamic_scale("normface", 100), 3) == 5.794
    assert initial_dynamic_scale("proxydr", 1000) > initial_dynamic_scale("proxydr", 100)
    assert ProxyDRHead(100, dynamic_scale=True).initial_scale == pytest.approx(7.899, abs=1e-3)


def np_residual(kind, x, y, w, distance="chordal"):
    """R(s) with B(s) recomputed from the batch, written directly from METHODS.md."""
    cos = np.clip(unit(x) @ unit(w).T, -1, 1)
    theta = min(np.pi / 4, np.median(np.arccos(np.clip(cos[np.arange(len(y)), y], -1 + 1e-7, 1 - 1e-7))))
    other = np.ones_like(cos, dtype=bool)
    other[np.arange(len(y)), y] = False

    def residual(s):
        z = np_logits(kind, x, w, s, distance)
        b = np.exp(np.where(other, z, -np.inf)).sum(axis=1).mean()
        if kind == "proxydr":
            d = np.sqrt(2 - 2 * np.cos(theta))
            return b * (s + 1) * d**s + 1 - s
        c, sn2 = np.cos(theta), np.sin(theta) ** 2
        return np.exp(s * c) * (c + s * sn2) + b * (c - s * sn2)

    return residual


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_dynamic_scale_moves_toward_the_residual_root(kind):
    rng = np.random.default_rng(4)
    num_classes, dim = 50, 64
    w = rng.normal(size=(num_classes, dim)).astype(np.float32)
    y = rng.integers(0, num_classes, 64)
    x = (unit(w)[y] + 0.15 * rng.normal(size=(64, dim))).astype(np.float32)
    residual = np_residual(kind, x, y, w)
    grid = np.linspace(0.5, 30, 3000)
    values = np.array([residual(v) for v in grid])
    root = grid[np.flatnonzero(np.sign(values[:-1]) != np.sign(values[1:]))[-1]]  # the largest root
    for start in (root / 1.03, root * 1.03):  # inside the root's basin of R^2
        head = HEADS[kind](num_classes, scale=start, proxy_mode="fixed", proxies=w, dynamic_scale=True,
                           scale_learning_rate=0.005)
        head(x)
        head.update_from_batch(x, y)
        first = float(head.scale)
        # one Adam step moves log s by the learning rate, toward the root, downhill on R^2
        np.testing.assert_allclose(np.log(first / start), 0.005 * np.sign(root - start), rtol=1e-3)
        assert residual(first) ** 2 < residual(start) ** 2
        for _ in range(100):
            head.update_from_batch(x, y)
        assert float(head.scale) == pytest.approx(root, rel=0.02), start


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_config_round_trip_keeps_arguments_and_logits(kind):
    x, _, w = batch(5)
    head = HEADS[kind](4, scale=4.0, distance="arccos", proxy_mode="fixed", proxies=w, dynamic_scale=True,
                       ema_momentum=0.2, scale_learning_rate=1e-3, name="head")
    restored = keras.layers.deserialize(keras.layers.serialize(head))
    assert type(restored) is type(head) and restored.get_config() == head.get_config()
    np.testing.assert_allclose(restored(x), head(x), rtol=1e-6)


def test_bad_arguments_are_rejected_with_named_culprits():
    w = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="num_classes"):
        NormFaceHead(0)
    with pytest.raises(ValueError, match="proxy_mode"):
        NormFaceHead(3, proxy_mode="mds")
    with pytest.raises(ValueError, match="distance"):
        ProxyDRHead(3, distance="cosine")
    with pytest.raises(ValueError, match="needs the `proxies`"):
        ProxyDRHead(3, proxy_mode="fixed")
    with pytest.raises(ValueError, match=r"num_classes=4"):
        ProxyDRHead(4, proxy_mode="fixed", proxies=w)
    head = ProxyDRHead(3, proxy_mode="fixed", proxies=w)
    with pytest.raises(ValueError, match="dimension 4 but the embedding has 5"):
        head(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="ProxyDRHead: label 3 at index 1 is outside"):
        ProxyDRHead(3, proxy_mode="ema").update_from_batch(np.ones((2, 4), np.float32), np.array([0, 3]))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_heads_output_float32_under_mixed_precision(policy):
    keras.config.set_dtype_policy(policy)
    try:
        dense = keras.layers.Dense(5)
        x = dense(np.ones((2, 3), np.float32))
        assert keras.backend.standardize_dtype(x.dtype) != "float32"
        for cls in HEADS.values():
            out = cls(4)(x)
            assert keras.backend.standardize_dtype(out.dtype) == "float32"
            assert np.all(np.isfinite(keras.ops.convert_to_numpy(out)))
    finally:
        keras.config.set_dtype_policy("float32")


# ------------------------------------------------- extreme inputs, plain models, saving
@pytest.mark.parametrize("kind", sorted(HEADS))
@pytest.mark.parametrize("magnitude", [1e30, 1e-30])
def test_huge_and_tiny_embeddings_keep_their_direction(kind, magnitude):
    x, _, w = batch(5)
    head = HEADS[kind](4, scale=5.0, proxies=w)
    want = keras.ops.convert_to_numpy(head(x))
    got = keras.ops.convert_to_numpy(head(x * np.float32(magnitude)))
    assert np.all(np.isfinite(got)) and np.ptp(got, axis=1).min() > 0.1  # not all equal
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    huge = HEADS[kind](4, scale=5.0, proxies=w.astype(np.float64) * 1e30, proxy_mode="fixed")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(huge(x)), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", ["fixed", "learned", "ema"])
def test_zero_or_non_finite_proxies_are_refused(mode):
    w = np.ones((3, 4), np.float32)
    w[1] = 0.0
    with pytest.raises(ValueError, match="ProxyDRHead: proxies row 1 .*all zeros"):
        ProxyDRHead(3, proxy_mode=mode, proxies=w)
    w[1] = np.nan
    with pytest.raises(ValueError, match="NormFaceHead: proxies row 1 .*NaN or inf"):
        NormFaceHead(3, proxy_mode=mode, proxies=w)


def plain_models(head_kwargs):
    inputs = keras.Input((5,))
    functional = keras.Model(inputs, ProxyDRHead(3, **head_kwargs)(keras.layers.Dense(4)(inputs)))
    sequential = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4), NormFaceHead(3, **head_kwargs)])
    return functional, sequential


@pytest.mark.parametrize("head_kwargs", [dict(proxy_mode="ema"), dict(dynamic_scale=True)])
def test_updating_head_in_a_plain_keras_model_fails_at_first_fit(head_kwargs):
    x, y = np.random.default_rng(0).normal(size=(8, 5)).astype("float32"), np.arange(8) % 3
    for model in plain_models(head_kwargs):
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        with pytest.raises(RuntimeError, match=r"build_classifier.*keras_hier.models.Classifier"):
            model.fit(x, y, epochs=1, batch_size=4, verbose=0)
        model.predict(x, verbose=0)  # inference is fine
        model.evaluate(x, y, verbose=0)
    functional, _ = plain_models(dict(proxy_mode="learned"))  # learned / fixed heads train as usual
    functional.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    functional.fit(x, y, epochs=1, batch_size=4, verbose=0)


def test_custom_training_loop_with_capture_updates_the_head():
    x, y, _ = batch(6, n=8, num_classes=3)
    head = ProxyDRHead(3, proxy_mode="ema", dynamic_scale=True)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4), head])
    before = keras.ops.convert_to_numpy(head.scale)
    with capture_embeddings as store:
        model(x, training=True)
    head.update_from_batch(store[id(head)], y)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(head._visited), [1, 1, 1])
    assert float(head.scale) != before


def test_config_is_compact_and_heads_round_trip_in_a_fresh_process():
    from roundtrip import run_serialization_tests

    rng = np.random.default_rng(0)
    w = rng.normal(size=(20_000, 16)).astype(np.float32)
    config = ProxyDRHead(20_000, proxy_mode="fixed", proxies=w).get_config()
    assert isinstance(config["proxies"]["base64"], str)
    assert len(json.dumps(config)) < 1.4 * w.nbytes
    np.testing.assert_array_equal(ProxyDRHead.from_config(config)._init_proxies, w)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    heads = [NormFaceHead(4, scale=3.0, distance="arccos"),
             ProxyDRHead(4, proxy_mode="fixed", proxies=rng.normal(size=(4, 5)), dynamic_scale=True),
             ProxyDRHead(4, proxy_mode="ema", dynamic_scale=True, ema_momentum=0.1)]
    run_serialization_tests([(head, x, None) for head in heads])


@pytest.mark.parametrize("kind", sorted(HEADS))
@pytest.mark.parametrize("distance", ["chordal", "arccos"])
def test_scale_update_from_forward_logits_equals_recomputed(kind, distance):
    """Classifier hands the head its forward logits; the update equals the one that recomputes them."""
    x, y, w = batch(8, n=16, num_classes=4)
    heads = [HEADS[kind](4, proxies=w, dynamic_scale=True, distance=distance) for _ in range(2)]
    for head in heads:
        head(x)
    with capture_embeddings as store:
        heads[0](x, training=True)
    for _ in range(3):
        heads[0].update_from_batch(store[id(heads[0])], y, logits=capture_embeddings.logits_of(store, heads[0]))
        heads[1].update_from_batch(x, y)
        with capture_embeddings as store:
            heads[0](x, training=True)
    assert float(heads[0].scale) != heads[0].initial_scale
    assert float(heads[0].scale) == pytest.approx(float(heads[1].scale), rel=1e-6)


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_an_exactly_zero_embedding_trains_to_finite_weights(kind):
    """A ReLU backbone can switch every unit off: the embedding is then exactly 0 (a zero-bias Dense). Its
    gradient through the normalisation stays bounded, so Adam's moments stay finite."""
    from keras_hier import build_classifier

    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu")])
    model = build_classifier(backbone, kind, num_classes=4, embedding_dim=4, dynamic_scale=True)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
    x[3] = 0.0  # hidden = relu(0 + 0) = 0, embedding = 0 before the first step
    history = model.fit(x, np.arange(16) % 4, epochs=3, batch_size=8, shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    for variable in model.weights + model.optimizer.variables:
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(variable))), variable.path
