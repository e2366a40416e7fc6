"""Tests for keras_hier.backbones."""

import os
import subprocess
import sys

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
        for _ in range(n):
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


# ------------------------------------------------------------------------------ text
TEXTS = np.array(["a small domesticated feline", "a large motor vehicle for carrying goods",
                  "a domesticated carnivorous mammal", "a heavy truck", "the fruit of the apple tree",
                  "a feline of the wild", "", "Truck, truck: TRUCK!"], dtype=object)
LABELS = np.array([0, 1, 0, 1, 2, 0, 2, 1])


def test_text_vectorizer_and_bad_arguments():
    vec = backbones.text_vectorizer(TEXTS, max_tokens=100, sequence_length=6)
    ids = np.asarray(vec(np.array(["truck feline", "zebra", ""], dtype=object)))
    vocab = vec.get_vocabulary()
    assert vocab[:2] == ["", "[UNK]"] and ids.shape == (3, 6)
    assert [vocab[i] for i in ids[0, :2]] == ["truck", "feline"] and ids[0, 2:].tolist() == [0] * 4
    assert ids[1, 0] == 1 and not ids[2].any()  # out of vocabulary; empty text
    fixed = backbones.text_vectorizer(vocabulary=["cat", "dog"], sequence_length=3)
    assert np.asarray(fixed(np.array(["dog cat bird"], dtype=object))).tolist() == [[3, 2, 1]]
    with pytest.raises(ValueError, match="exactly one"):
        backbones.text_vectorizer()
    with pytest.raises(ValueError, match="strings"):
        backbones.text_vectorizer([1, 2])
    with pytest.raises(ValueError, match="sequence_length"):
        backbones.text_vectorizer(TEXTS, sequence_length=0)


def _token_ids(model, texts):
    vec = [layer for layer in model.layers if isinstance(layer, keras.layers.TextVectorization)][0]
    return np.asarray(vec(np.asarray(texts, dtype=object)))


def test_text_bag_is_the_mean_of_the_token_vectors():
    model = backbones.text_bag(TEXTS, embedding_dim=5, max_tokens=50, sequence_length=8)
    assert model.output_shape == (None, 5) and model.inputs[0].dtype == "string"
    table = model.get_layer("token_embedding").embeddings.numpy()
    ids = _token_ids(model, TEXTS)
    expected = np.stack([table[row[row > 0]].mean(axis=0) if (row > 0).any() else np.zeros(5) for row in ids])
    out = np.asarray(model(TEXTS))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert np.all(out[6] == 0)  # the empty text: zeros, not NaN


def test_text_cnn_matches_a_numpy_convolution():
    model = backbones.text_cnn(TEXTS, embedding_dim=4, filters=3, kernel_sizes=(3,), sequence_length=7)
    assert model.output_shape == (None, 3)
    table = model.get_layer("token_embedding").embeddings.numpy()
    kernel, bias = model.get_layer("conv3").get_weights()
    x = table[_token_ids(model, TEXTS)]                      # [B, L, D]
    padded = np.pad(x, ((0, 0), (1, 1), (0, 0)))
    conv = sum(padded[:, k:k + 7] @ kernel[k] for k in range(3)) + bias
    np.testing.assert_allclose(np.asarray(model(TEXTS)), np.maximum(conv, 0).max(axis=1), rtol=1e-5, atol=1e-6)
    assert backbones.text_cnn(TEXTS, filters=2, kernel_sizes=(2, 3, 4)).output_shape == (None, 6)


@pytest.mark.parametrize("head, kwargs", [("softmax", {}), ("normface", {}), ("proxydr", {"proxy_mode": "ema"})])
def test_text_backbones_feed_any_head(head, kwargs):
    from keras_hier import build_classifier

    keras.utils.set_random_seed(0)
    backbone = backbones.get_backbone("text_bag" if head != "normface" else "text_cnn", texts=TEXTS,
                                      embedding_dim=8, **({"filters": 4} if head == "normface" else {}))
    model = build_classifier(backbone, head=head, num_classes=3, embedding_dim=6, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = model.get_layer("embedding").kernel.numpy().copy()
    model.fit(TEXTS, LABELS, batch_size=8, epochs=1, verbose=0)
    assert not np.allclose(before, model.get_layer("embedding").kernel.numpy())
    logits = model.predict(np.array(["a small cat"], dtype=object), verbose=0)
    assert logits.shape == (1, 3) and np.all(np.isfinite(logits))


def test_text_model_keras_file_loads_in_a_fresh_process(tmp_path):
    from keras_hier import build_classifier

    model = build_classifier(backbones.text_bag(TEXTS, embedding_dim=4), head="proxydr", num_classes=3,
                             embedding_dim=4)
    path = tmp_path / "text.keras"
    model.save(path)
    np.save(tmp_path / "expected.npy", model.predict(TEXTS, verbose=0))
    code = ("import numpy as np, keras, keras_hier, sys\n"
            f"texts = np.array({TEXTS.tolist()!r}, dtype=object)\n"
            f"m = keras.models.load_model({str(path)!r})\n"
            f"np.testing.assert_allclose(m.predict(texts, verbose=0), np.load({str(tmp_path / 'expected.npy')!r}),"
            " rtol=1e-5, atol=1e-6)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_get_backbone_names_text_and_keras_hub():
    with pytest.raises(ValueError, match="text_bag"):
        backbones.get_backbone("nope")
    with pytest.raises(ValueError, match="input_shape"):
        backbones.get_backbone("small_cnn")


# -------------------------------------------------------------------------- KerasHub
TINY_RESNET = dict(input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64],
                   stackwise_num_blocks=[1], stackwise_num_strides=[1], block_type="basic_block")


@pytest.fixture(scope="module")
def keras_hub():
    return pytest.importorskip("keras_hub")


def test_keras_hub_backbone_feeds_a_head_trains_predicts_and_exports(keras_hub, tmp_path):
    from keras_hier import Hierarchy, build_classifier, export_saved_model
    from keras_hier.serving_kit.c_loader import CLoader

    keras.utils.set_random_seed(0)
    h = Hierarchy.from_paths(["animal/cat", "animal/dog", "vehicle/truck"])
    backbone = backbones.get_backbone("keras_hub:ResNetBackbone", (32, 32, 3), config=TINY_RESNET)
    assert backbone.output_shape == (None, 64)
    model = build_classifier(backbone, head="proxydr", hierarchy=h, embedding_dim=8)
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).random((8, 32, 32, 3)).astype("float32")
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    before = [w.copy() for w in backbone.get_weights()]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert any(not np.allclose(a, b) for a, b in zip(before, backbone.get_weights()))
    logits = model.predict(x, verbose=0)
    assert logits.shape == (8, 3) and np.all(np.isfinite(logits))
    export_dir = export_saved_model(model, h, str(tmp_path / "serving"))
    with CLoader() as loader:  # TensorFlow's C++ loader, as TF-Serving runs it
        answer = loader.run(export_dir, "serving_default", {"images": x})
    np.testing.assert_array_equal(answer["class_ids"], logits.argmax(axis=1))


def test_keras_hub_local_preset_folder_and_weights_file(keras_hub, tmp_path):
    base = keras_hub.models.ResNetBackbone(image_shape=(16, 16, 3), **TINY_RESNET)
    base.save_to_preset(str(tmp_path / "preset"))
    base.save_weights(str(tmp_path / "tiny.weights.h5"))
    x = np.random.default_rng(1).random((2, 16, 16, 3)).astype("float32")
    expected = np.asarray(base(x)).mean(axis=(1, 2))
    from_folder = backbones.get_backbone(f"keras_hub:{tmp_path / 'preset'}")
    np.testing.assert_allclose(np.asarray(from_folder(x)), expected, rtol=1e-5, atol=1e-6)
    from_weights = backbones.get_backbone("keras_hub:ResNetBackbone", (16, 16, 3), config=TINY_RESNET,
                                          weights=str(tmp_path / "tiny.weights.h5"))
    np.testing.assert_allclose(np.asarray(from_weights(x)), expected, rtol=1e-5, atol=1e-6)
    vit = backbones.keras_hub_backbone("ViTBackbone", (16, 16, 3), config=dict(
        patch_size=8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16))
    assert vit.output_shape == (None, 8)  # token sequence, mean pooled


def test_keras_hub_errors_never_download(keras_hub, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="does not exist"):
        backbones.get_backbone("keras_hub:ResNetBackbone", (16, 16, 3), config=TINY_RESNET,
                               weights=str(tmp_path / "missing.weights.h5"))
    with pytest.raises(ValueError, match="bad config"):
        backbones.get_backbone("keras_hub:ResNetBackbone", (16, 16, 3), config={"no_such_argument": 1})
    with pytest.raises(ValueError, match="not a KerasHub backbone class"):
        backbones.get_backbone("keras_hub:NoSuchBackbone", (16, 16, 3), config=TINY_RESNET)

    def offline(*args, **kwargs):
        raise OSError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", offline)
    with pytest.raises(ConnectionError, match="local preset folder"):
        backbones.get_backbone("keras_hub:resnet_18_imagenet")


def test_token_id_models_train_under_jax():
    """Strings need the TensorFlow backend; token ids work on JAX (fresh process)."""
    code = (
        "import numpy as np, keras\n"
        "from keras_hier import backbones, build_classifier\n"
        "assert keras.backend.backend() == 'jax'\n"
        f"texts = np.array({TEXTS.tolist()!r}, dtype=object)\n"
        "try:\n"
        "    backbones.text_bag(texts)\n"
        "    raise SystemExit('strings accepted under jax')\n"
        "except ValueError as error:\n"
        "    assert 'token_ids=True' in str(error), error\n"
        "vec = backbones.text_vectorizer(texts, sequence_length=6)\n"
        "ids = np.asarray(vec(texts)).astype('int32')\n"
        "for build in (backbones.text_bag, backbones.text_cnn):\n"
        "    model = build_classifier(build(vectorizer=vec, token_ids=True), head='proxydr', num_classes=3,"
        " embedding_dim=4)\n"
        "    model.compile(optimizer='adam', loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))\n"
        f"    model.fit(ids, np.array({LABELS.tolist()!r}), batch_size=4, epochs=1, verbose=0)\n"
        "    assert model.predict(ids, verbose=0).shape == (8, 3)\n"
        "print('ok')\n")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and "ok" in done.stdout, done.stdout[-1000:] + done.stderr[-2000:]
