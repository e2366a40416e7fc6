"""Tests for keras_hier.backbones."""

import numpy as np
import pytest

import keras
from keras_hier import backbones


def _conv(k, cin, cout, bias):
    return k * k * cin * cout + (cout if bias else 0)


def _bn(c):  # gamma, beta, moving mean, moving variance
    return 4 * c


def test_small_cnn_shape_and_parameter_count():
    model = backbones.small_cnn((32, 32, 3))
    assert model.output_shape == (None, 256)
    expected = 0
    cin = 3
    for f in (32, 64, 128, 256):
        expected += _conv(3, cin, f, True) + _bn(f)
        cin = f
    assert model.count_params() == expected
    # with the 128-d embedding and a 100-class head: the ~436k of ENVIRONMENT.md
    assert abs(expected + 256 * 128 + 128 + 128 * 100 - 436_000) < 1_000
    out = model(np.random.rand(2, 32, 32, 3).astype("float32"), training=False)
    assert out.shape == (2, 256) and np.all(np.isfinite(out))


def test_small_cnn_on_tiny_grayscale_inputs():
    model = backbones.small_cnn((8, 8, 1), filters=(4, 8, 8, 16))
    assert model.output_shape == (None, 16)
    assert model(np.zeros((1, 8, 8, 1), "float32")).shape == (1, 16)


def _resnet18_params(width=64, blocks=(2, 2, 2, 2), cin=3):
    total = _conv(3, cin, width, False) + _bn(width)
    c = width
    for stage, n in enumerate(blocks):
        f = width * 2 ** stage
        for b in range(n):
            total += _conv(3, c, f, False) + _bn(f) + _conv(3, f, f, False) + _bn(f)
            if c != f:
                total += _conv(1, c, f, False) + _bn(f)
            c = f
    return total


def test_resnet18_matches_the_reference_architecture():
    model = backbones.resnet18((32, 32, 3))
    assert model.output_shape == (None, 512)
    assert model.count_params() == _resnet18_params()
    # trainable weights = the well-known CIFAR ResNet-18 count minus its 10-class fc
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 11_173_962 - 5_130
    small = backbones.resnet18((16, 16, 1), width=8, blocks=(1, 1, 1, 1))
    assert small.count_params() == _resnet18_params(8, (1, 1, 1, 1), 1)
    assert small(np.zeros((3, 16, 16, 1), "float32")).shape == (3, 64)
    big = backbones.resnet18((64, 64, 3), width=8, blocks=(1, 1, 1, 1))
    assert big.get_layer("stem_conv").kernel.shape[0] == 7  # imagenet stem from 64 px


def test_resnet50_loads_local_weights_and_reinitialises_first_conv(tmp_path):
    source = backbones.resnet50((32, 32, 3))
    assert source.output_shape == (None, 2048)
    path = str(tmp_path / "r50.weights.h5")
    source.save_weights(path)
    loaded = backbones.resnet50((32, 32, 3), weights=path)
    for name in ("conv2_block1_1_conv", "conv5_block3_3_conv", "conv1_bn"):
        for a, b in zip(source.get_layer(name).get_weights(), loaded.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert not np.allclose(source.get_layer("conv1_conv").get_weights()[0],
                           loaded.get_layer("conv1_conv").get_weights()[0])
    kept = backbones.resnet50((32, 32, 3), weights=path, reinit_first_conv=False)
    np.testing.assert_array_equal(source.get_layer("conv1_conv").get_weights()[0],
                                  kept.get_layer("conv1_conv").get_weights()[0])
    gray = backbones.resnet50((32, 32, 1), weights=path)
    assert gray.get_layer("conv1_conv").get_weights()[0].shape[2] == 1
    np.testing.assert_array_equal(source.get_layer("conv4_block2_2_conv").get_weights()[0],
                                  gray.get_layer("conv4_block2_2_conv").get_weights()[0])


def test_resnet50_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="no downloads"):
        backbones.resnet50((32, 32, 3), weights="imagenet")
    with pytest.raises(ValueError, match="does not exist"):
        backbones.resnet50((32, 32, 3), weights=str(tmp_path / "missing.h5"))


def test_get_backbone():
    model = backbones.get_backbone("small_cnn", (28, 28, 1), filters=(4, 4, 8, 8))
    assert model.output_shape == (None, 8)
    assert backbones.get_backbone(model, (28, 28, 1)) is model
    with pytest.raises(ValueError, match="vgg"):
        backbones.get_backbone("vgg", (28, 28, 1))
    with pytest.raises(ValueError, match="input_shape"):
        backbones.small_cnn((28, 28))
    assert isinstance(backbones.resnet18((32, 32, 3), blocks=(1,)), keras.Model)
