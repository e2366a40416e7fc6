"""keras_hier.batchnorm: precise BatchNorm statistics against a NumPy reference and on a tiny run."""

import keras
import numpy as np
import pytest

from keras_hier import backbones, build_classifier, hierarchies
from keras_hier.batchnorm import batchnorm_layers, recompute_batchnorm_statistics

EPS = 1e-3  # Keras BatchNormalization's default epsilon


def _two_bn_model(seed=0):
    keras.utils.set_random_seed(seed)
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d1"),
                              keras.layers.BatchNormalization(name="bn1")], name="inner")
    model = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2, name="d2"),
                              keras.layers.BatchNormalization(name="bn2")])
    bn1, bn2 = inner.get_layer("bn1"), model.get_layer("bn2")
    bn1.gamma.assign([1.5, 0.5, 2.0])
    bn1.beta.assign([0.1, -0.2, 0.3])
    return model, inner, bn1, bn2


def _reference(x, inner, model, batch_size):
    """Average per-batch (biased) statistics of both BN inputs, training-mode forward in NumPy."""
    w1, b1 = (np.asarray(v, np.float64) for v in inner.get_layer("d1").weights)
    w2, b2 = (np.asarray(v, np.float64) for v in model.get_layer("d2").weights)
    gamma, beta = (np.asarray(v, np.float64) for v in (inner.get_layer("bn1").gamma, inner.get_layer("bn1").beta))
    stats = {"bn1": [[], []], "bn2": [[], []]}
    for i in range(0, len(x), batch_size):
        h1 = x[i:i + batch_size].astype(np.float64) @ w1 + b1
        m1, v1 = h1.mean(0), h1.var(0)
        h2 = ((h1 - m1) / np.sqrt(v1 + EPS) * gamma + beta) @ w2 + b2
        for name, h in (("bn1", h1), ("bn2", h2)):
            stats[name][0].append(h.mean(0))
            stats[name][1].append(h.var(0))
    return {k: (np.mean(m, 0), np.mean(v, 0)) for k, (m, v) in stats.items()}


def test_matches_numpy_reference_nested_and_array_or_dataset():
    import tensorflow as tf

    x = np.random.default_rng(1).normal(2.0, 3.0, (50, 4)).astype("float32")
    model, inner, bn1, bn2 = _two_bn_model()
    expected = _reference(x, inner, model, 16)
    kernel = np.asarray(model.get_layer("d2").kernel).copy()
    info = recompute_batchnorm_statistics(model, x, batch_size=16)
    assert info == {"layers": 2, "batches": 4}  # 16 + 16 + 16 + 2
    for name, layer in (("bn1", bn1), ("bn2", bn2)):
        np.testing.assert_allclose(layer.moving_mean, expected[name][0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance, expected[name][1], rtol=1e-4, atol=1e-5)
        assert layer.momentum == 0.99  # restored
    np.testing.assert_array_equal(model.get_layer("d2").kernel, kernel)  # nothing else changes

    # a (x, y) tf.data pipeline, limited to 2 batches, gives the same as the first 2 array batches
    model2, inner2, bn1b, _ = _two_bn_model()
    labels = np.zeros(50, "int32")
    ds = tf.data.Dataset.from_tensor_slices((x, labels)).batch(16)
    assert recompute_batchnorm_statistics(model2, ds, num_batches=2)["batches"] == 2
    np.testing.assert_allclose(bn1b.moving_mean, _reference(x[:32], inner2, model2, 16)["bn1"][0], rtol=1e-4)


def test_frozen_layers_untouched_and_bad_input():
    model, inner, bn1, bn2 = _two_bn_model()
    bn1.trainable = False
    assert batchnorm_layers(model) == [bn2]
    before = np.asarray(bn1.moving_mean).copy()
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    assert recompute_batchnorm_statistics(model, x)["layers"] == 1
    np.testing.assert_array_equal(bn1.moving_mean, before)
    old = np.asarray(bn2.moving_mean).copy()
    with pytest.raises(ValueError, match="no batch"):
        recompute_batchnorm_statistics(model, x[:0])
    np.testing.assert_array_equal(bn2.moving_mean, old)  # kept on error
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_batches"):
            recompute_batchnorm_statistics(model, x, num_batches=bad)
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert recompute_batchnorm_statistics(plain, x) == {"layers": 0, "batches": 0}


def _images(n, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    base = np.stack([(y % 5) * 50, (y // 5) * 200, (y * 37) % 255], -1)[:, None, None, :]
    return np.clip(base + rng.normal(0, 40, (n, 8, 8, 3)), 0, 255).astype("float32") / 255, y


def test_one_epoch_tiny_run_test_accuracy_close_to_train_accuracy():
    """Keras's default momentum (0.99) after 25 steps: inference is broken until precise BN."""
    keras.utils.set_random_seed(0)
    x_train, y_train = _images(400, 0)
    x_test, y_test = _images(200, 1)
    backbone = backbones.small_cnn((8, 8, 3), filters=(8, 8, 16, 16), bn_momentum=0.99)
    model = build_classifier(backbone, "proxydr", hierarchy=hierarchies.cifar10(), embedding_dim=8)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    fit_accuracy = model.fit(x_train, y_train, batch_size=16, epochs=1, verbose=0).history["accuracy"][0]
    before = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
    recompute_batchnorm_statistics(model, x_train, batch_size=16)
    after = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
    # the final weights' accuracy on training batches, normalised as in training (batch statistics)
    train_mode = np.mean([np.argmax(np.asarray(model(x_train[i:i + 16], training=True)), 1) == y_train[i:i + 16]
                          for i in range(0, 400, 16)])
    assert before < 0.3 < fit_accuracy  # the broken-looking tiny run
    assert abs(after - train_mode) < 0.1, (after, train_mode)
    assert after > fit_accuracy
