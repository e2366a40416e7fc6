"""export_saved_model: versions, signatures, consistency, a TensorFlow-only reload."""

import hashlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_hier import serving_graph
from keras_hier import decoding, export
from keras_hier.hierarchy import Hierarchy

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("smoke_test", ROOT / "export" / "smoke_test.py")
smoke_test = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(smoke_test)

HIERARCHY = Hierarchy.from_paths(["a/b/x", "a/b/y", "a/z", "q", "r/s/t/u", "r/s/v"])
SIZE = (8, 8, 1)


def conv_model(num_classes=6, seed=0, shape=SIZE, dtype="float32"):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape, dtype=dtype)
    x = keras.layers.Rescaling(1.0)(inputs) if dtype == "uint8" else inputs
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    # large weights give peaked predictions, so back-off answers vary
    outputs = keras.layers.Dense(num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=8.0),
                                 bias_initializer=keras.initializers.RandomNormal(stddev=2.0))(x)
    return keras.Model(inputs, outputs, name="tiny")


def images(count, seed=0, shape=SIZE):
    return np.random.default_rng(seed).uniform(0, 1, size=(count, *shape)).astype(np.float32)


def tree_of(version_path):
    """{relative path: sha256} of a directory."""
    out = {}
    for folder, _, files in os.walk(version_path):
        for name in files:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, version_path)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("models") / "tiny"
    model = conv_model()
    path = export.export_saved_model(model, HIERARCHY, base, decoder="expected_cost", backoff_threshold=0.6,
                                     top_k=3, model_card={"metrics": {"accuracy": 0.5}, "training": {"epochs": 1}})
    return model, base, path, tf.saved_model.load(path)


def outputs_of(loaded, signature="serving_default", **inputs):
    result = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in result.items()}


# ------------------------------------------------------------------- layout
def test_layout_assets_and_model_card(exported):
    model, base, path, _ = exported
    assert path == os.path.join(base, "1")
    assert sorted(os.listdir(base)) == ["1"]  # no temporary directory left behind
    for name in ("saved_model.pb", "variables", "assets/hierarchy.json", "assets/model_card.json", "README.md"):
        assert os.path.exists(os.path.join(path, name)), name
    with open(os.path.join(path, "assets", "hierarchy.json")) as f:
        assert Hierarchy.from_dict(json.load(f)) == HIERARCHY
    with open(os.path.join(path, "assets", "model_card.json")) as f:
        card = json.load(f)
    assert card["classes"] == list(HIERARCHY.classes) and card["decoder"] == "expected_cost"
    assert card["backoff_threshold"] == 0.6 and card["metrics"] == {"accuracy": 0.5}
    assert [lv["names"] for lv in card["levels"]] == [HIERARCHY.level_names(l) for l in range(HIERARCHY.depth)]
    assert card["outputs"] == export.output_names(HIERARCHY, 3, 0.6)
    readme = open(os.path.join(path, "README.md")).read()
    for name in card["outputs"] + ["serving_bytes", "image_bytes"]:
        assert f"`{name}`" in readme


def test_signatures_and_output_dtypes(exported):
    _, _, _, loaded = exported
    assert set(loaded.signatures) == {"serving_default", "serving_bytes"}
    default = loaded.signatures["serving_default"]
    spec = default.structured_input_signature[1]["images"]
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, *SIZE]
    assert loaded.signatures["serving_bytes"].structured_input_signature[1]["image_bytes"].dtype == tf.string
    out = default.structured_outputs
    assert set(out) == set(export.output_names(HIERARCHY, 3, 0.6))
    for name, spec in out.items():
        want = tf.string if name in ("classes", "prediction", "top_k_classes") or name.endswith("_names") else (
            tf.int32 if name.endswith("_ids") or name == "prediction_level" else tf.float32)
        assert spec.dtype == want, name


def test_exported_equals_model_predict_plus_decoder(exported):
    model, _, _, loaded = exported
    x = images(16, seed=1)
    served = outputs_of(loaded, images=x)
    logits = model.predict(x, verbose=0)
    ref = {k: np.asarray(v) for k, v in
           decoding.decode(logits, HIERARCHY, "expected_cost", backoff_threshold=0.6, top_k=3).items()}
    np.testing.assert_array_equal(served["class_ids"], ref["class_ids"])
    np.testing.assert_allclose(served["scores"], ref["scores"], rtol=1e-5)
    np.testing.assert_array_equal(served["top_k_ids"], ref["top_k_ids"])
    np.testing.assert_array_equal(served["classes"].astype(str), np.array(HIERARCHY.classes)[ref["class_ids"]])
    for level in range(HIERARCHY.depth):
        np.testing.assert_array_equal(served[f"level_{level}_ids"], ref["level_ids"][:, level])
        names = np.array(HIERARCHY.level_names(level))[ref["level_ids"][:, level]]
        np.testing.assert_array_equal(served[f"level_{level}_names"].astype(str), names)
        np.testing.assert_allclose(served[f"level_{level}_scores"], ref["level_scores"][:, level], rtol=1e-5)
    np.testing.assert_array_equal(served["prediction_level"], ref["prediction_level"])
    assert len(set(served["prediction_level"].tolist())) > 1, "fixture should exercise several back-off levels"


def test_bytes_signature_decodes_and_resizes_in_graph(exported):
    _, _, _, loaded = exported
    pixels = np.random.default_rng(2).integers(0, 256, size=(3, *SIZE), dtype=np.uint8)
    pngs = [smoke_test.png_bytes(p) for p in pixels]
    from_bytes = outputs_of(loaded, "serving_bytes", image_bytes=np.array(pngs, dtype=object))
    from_pixels = outputs_of(loaded, images=pixels.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(from_bytes["class_ids"], from_pixels["class_ids"])
    np.testing.assert_allclose(from_bytes["scores"], from_pixels["scores"], rtol=1e-5)
    # other sizes and JPEG (RGB, converted to one channel) are resized to the model's input
    big = tf.io.encode_jpeg(np.random.default_rng(3).integers(0, 256, (20, 13, 3), dtype=np.uint8)).numpy()
    out = outputs_of(loaded, "serving_bytes", image_bytes=np.array([big, pngs[0]], dtype=object))
    assert out["class_ids"].shape == (2,)
    with pytest.raises(tf.errors.InvalidArgumentError, match="image file format"):
        outputs_of(loaded, "serving_bytes", image_bytes=np.array([b"not an image"], dtype=object))


def test_wrong_shape_or_dtype_gives_a_clear_error(exported):
    _, _, _, loaded = exported
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images \[2,8,8,3\].*expected shape \[\?,8,8,1\]"):
        outputs_of(loaded, images=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images \[2,8\].*expected shape"):
        outputs_of(loaded, images=np.zeros((2, 8), np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a float tensor but is a double"):
        outputs_of(loaded, images=np.zeros((2, *SIZE), np.float64))


# ------------------------------------------------------------------ versions
def test_versions_are_never_overwritten(exported, tmp_path):
    model, base, path, _ = exported
    before = tree_of(path)
    with pytest.raises(FileExistsError, match="version 1 already exists"):
        export.export_saved_model(model, HIERARCHY, base, version=1)
    assert tree_of(path) == before
    second = export.export_saved_model(model, HIERARCHY, base, top_k=None)  # next free version
    assert os.path.basename(second) == "2" and export.existing_versions(base) == [1, 2]
    assert "top_k_ids" not in tf.saved_model.load(second).signatures["serving_default"].structured_outputs
    assert export.existing_versions(tmp_path / "none") == []
    chosen = export.export_saved_model(model, HIERARCHY, tmp_path / "m", version=7)
    assert chosen.endswith(os.path.join("m", "7"))


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    model = conv_model()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_saved_model(model, HIERARCHY, tmp_path)
    assert os.listdir(tmp_path) == []


def test_refuses_bad_arguments(tmp_path):
    model = conv_model()
    with pytest.raises(ValueError, match=r"outputs shape \(1, 5\).*6 classes"):
        export.export_saved_model(conv_model(num_classes=5), HIERARCHY, tmp_path)
    with pytest.raises(ValueError, match="decoder 'crm'"):
        export.export_saved_model(model, HIERARCHY, tmp_path, decoder="crm")
    with pytest.raises(ValueError, match="backoff_threshold"):
        export.export_saved_model(model, HIERARCHY, tmp_path, backoff_threshold=0.0)
    with pytest.raises(TypeError, match="model_card must be JSON-serialisable"):
        export.export_saved_model(model, HIERARCHY, tmp_path, model_card={"when": object()})
    with pytest.raises(ValueError, match="image_size"):
        export.export_saved_model(model, HIERARCHY, tmp_path, image_size=(9, 8))
    with pytest.raises(ValueError, match="version must be a non-negative int"):
        export.export_saved_model(model, HIERARCHY, tmp_path, version="2")
    with pytest.raises(TypeError, match="keras.Model"):
        export.export_saved_model(lambda x: x, HIERARCHY, tmp_path)
    with pytest.raises(TypeError, match="keras_hier.Hierarchy"):
        export.export_saved_model(model, HIERARCHY.to_dict(), tmp_path)
    fully_conv = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(6, 3),
                                   keras.layers.GlobalAveragePooling2D()])
    with pytest.raises(ValueError, match="pass image_size"):
        export.export_saved_model(fully_conv, HIERARCHY, tmp_path)
    assert os.listdir(tmp_path) == []


def test_uint8_inputs_and_any_size_models(tmp_path):
    model = conv_model()
    path = export.export_saved_model(model, HIERARCHY, tmp_path / "u8", input_dtype="uint8")
    pixels = np.random.default_rng(4).integers(0, 256, size=(4, *SIZE), dtype=np.uint8)
    loaded = tf.saved_model.load(path)
    assert loaded.signatures["serving_default"].structured_input_signature[1]["images"].dtype == tf.uint8
    served = outputs_of(loaded, images=pixels)
    reference = np.argmax(model.predict(pixels.astype(np.float32) / 255.0, verbose=0), axis=1)
    np.testing.assert_array_equal(served["class_ids"], reference)
    fully_conv = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(6, 3),
                                   keras.layers.GlobalAveragePooling2D()])
    path = export.export_saved_model(fully_conv, HIERARCHY, tmp_path / "fc", image_size=(12, 10))
    loaded = tf.saved_model.load(path)
    assert outputs_of(loaded, images=images(2, shape=(15, 9, 1)))["class_ids"].shape == (2,)
    big = smoke_test.png_bytes(np.zeros((30, 30, 1), np.uint8))
    assert outputs_of(loaded, "serving_bytes", image_bytes=np.array([big], dtype=object))["class_ids"].shape == (1,)


def _head():
    """A ProxyDR head when keras_hier.layers provides it, else plain Dense logits."""
    if importlib.util.find_spec("keras_hier.layers") is not None:
        from keras_hier import layers

        if hasattr(layers, "ProxyDRHead"):
            return layers.ProxyDRHead(HIERARCHY.num_classes)
    return keras.layers.Dense(HIERARCHY.num_classes)


def test_head_model_exports(tmp_path):
    inputs = keras.Input(SIZE)
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(8)(x)
    model = keras.Model(inputs, _head()(x))
    path = export.export_saved_model(model, HIERARCHY, tmp_path, decoder="expected_cost")
    x = images(5, seed=5)
    served = outputs_of(tf.saved_model.load(path), images=x)
    ref = decoding.decode(model.predict(x, verbose=0), HIERARCHY, "expected_cost")
    np.testing.assert_array_equal(served["class_ids"], np.asarray(ref["class_ids"]))
    np.testing.assert_allclose(served["scores"], np.asarray(ref["scores"]), rtol=1e-5)


# ------------------------------------------------- random hierarchies, served
@st.composite
def ragged_hierarchies(draw):
    count = draw(st.integers(2, 9))
    paths = []
    for index in range(count):
        if paths and draw(st.integers(0, 4)) == 0:
            prefix = draw(st.sampled_from(paths))
        else:
            prefix = tuple(draw(st.lists(st.sampled_from(["a", "b", "other"]), max_size=3)))
        paths.append(prefix + (f"c{index}",))
    return Hierarchy(paths, [p[-1] for p in paths])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=ragged_hierarchies(), decoder=st.sampled_from(decoding.DECODERS), threshold=st.floats(0.2, 0.95),
       seed=st.integers(0, 1000))
def test_served_answers_are_consistent_on_random_trees(tmp_path_factory, h, decoder, threshold, seed):
    model = conv_model(h.num_classes, seed=seed)
    path = export.export_saved_model(model, h, tmp_path_factory.mktemp("random"), decoder=decoder,
                                     backoff_threshold=threshold, top_k=3)
    loaded = tf.saved_model.load(path)
    served = outputs_of(loaded, images=images(12, seed=seed))
    hierarchy_dict, card = smoke_test.load_assets(path)
    smoke_test.check_response(smoke_test.format_response(served, "inputs"), hierarchy_dict, card, 12)
    for level in range(h.depth):  # level ids are the hierarchy's ancestors of class_ids
        np.testing.assert_array_equal(served[f"level_{level}_ids"],
                                      np.asarray(h.ancestors(level))[served["class_ids"]])
    for i, c in enumerate(served["class_ids"]):
        chain = [served[f"level_{level}_scores"][i] for level in range(int(h.leaf_depths[c]))]
        assert all(parent >= child for parent, child in zip(chain, chain[1:]))  # exact
        level = served["prediction_level"][i]
        assert level == -1 or served["prediction_score"][i] >= threshold


# ------------------------------------------------------ TensorFlow-only reload
ISOLATED = textwrap.dedent("""
    import importlib.machinery, importlib.util, json, os, sys
    # drop the editable install of keras_hier and any path that holds the source tree
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
    sys.path_importer_cache.clear()
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != SOURCE]
    assert importlib.util.find_spec("keras_hier") is None, "keras_hier is importable"

    class NoKeras(importlib.machinery.PathFinder):  # and no Keras either: as with TensorFlow alone
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.split(".")[0] in ("keras", "keras_hier", "tf_keras"):
                return None
            return super().find_spec(name, path, target)

    sys.meta_path[:] = [NoKeras if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
    assert importlib.util.find_spec("keras") is None, "keras is importable"
    import numpy as np
    import tensorflow as tf

    loaded = tf.saved_model.load(sys.argv[1])
    x = np.load(sys.argv[2])
    out = loaded.signatures["serving_default"](images=tf.constant(x))
    result = {k: v.numpy().tolist() for k, v in out.items()}
    result = json.loads(json.dumps(result, default=lambda b: b.decode()))
    result["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("keras", "keras_hier", "tf_keras"))
    print("RESULT" + json.dumps(result))
""")


def test_loads_and_runs_with_tensorflow_only(exported, tmp_path):
    _, _, path, loaded = exported
    x = images(4, seed=9)
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "isolated.py"
    script.write_text(f"SOURCE = {str(ROOT)!r}\n" + ISOLATED)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([sys.executable, "-I", str(script), path, str(tmp_path / "x.npy")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
    result = json.loads(line[len("RESULT"):])
    assert result.pop("modules") == []
    here = outputs_of(loaded, images=x)
    assert result["class_ids"] == here["class_ids"].tolist()
    assert result["prediction"] == [s.decode() for s in here["prediction"]]
    np.testing.assert_allclose(result["level_0_scores"], here["level_0_scores"], rtol=1e-6)


def test_saved_model_cli_lists_signatures_and_dtypes(exported):
    _, _, path, _ = exported
    cli = pathlib.Path(sys.executable).parent / "saved_model_cli"
    proc = subprocess.run([str(cli), "show", "--dir", path, "--all"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    for signature, (name, dtype) in {"serving_default": ("images", "DT_FLOAT"),
                                     "serving_bytes": ("image_bytes", "DT_STRING")}.items():
        block = text.split(f"signature_def['{signature}']")[1].split("signature_def[")[0]
        assert f"inputs['{name}'] tensor_info:" in block
        assert f"dtype: {dtype}" in block.split("outputs")[0]
        assert "shape: (-1, 8, 8, 1)" in block or dtype == "DT_STRING"
        for output in export.output_names(HIERARCHY, 3, 0.6):
            assert f"outputs['{output}'] tensor_info:" in block
        assert "Method name is: tensorflow/serving/predict" in block


# ------------------------------------------- serving decoder, both regimes
@settings(max_examples=25, deadline=None)
@given(h=ragged_hierarchies(), decoder=st.sampled_from(decoding.DECODERS), threshold=st.floats(0.2, 0.95),
       k=st.integers(1, 4), seed=st.integers(0, 1000), regime=st.sampled_from(["dense", "segment"]))
def test_serving_decoder_equals_decode_in_both_regimes(h, decoder, threshold, k, seed, regime):
    # dense: 0/1 membership matmuls + tf.math.top_k; segment: transposed segment sums + blocked top-k
    forced = {"dense_limit": 1 << 40, "topk_min_classes": 1 << 40} if regime == "dense" else \
        {"dense_limit": 0, "topk_min_classes": 1}
    logits = (np.random.default_rng(seed).normal(size=(6, h.num_classes)) * 3).astype(np.float32)
    fn = serving_graph.serving_decoder(h, decoder=decoder, cost="path", backoff_threshold=threshold, top_k=k,
                                 from_logits=True, **forced)
    served = {key: v.numpy() for key, v in tf.function(fn, autograph=False)(tf.constant(logits)).items()}
    ref = {key: np.asarray(v) for key, v in
           decoding.decode(logits, h, decoder, backoff_threshold=threshold, top_k=k).items()}
    np.testing.assert_array_equal(served["class_ids"], ref["class_ids"])
    np.testing.assert_array_equal(served["top_k_ids"], ref["top_k_ids"])
    np.testing.assert_allclose(served["top_k_scores"], ref["top_k_scores"], rtol=1e-6)
    np.testing.assert_allclose(served["scores"], ref["scores"], rtol=1e-6)
    for level in range(h.depth):
        np.testing.assert_array_equal(served[f"level_{level}_ids"], ref["level_ids"][:, level])
        np.testing.assert_allclose(served[f"level_{level}_scores"], ref["level_scores"][:, level], rtol=1e-5,
                                   atol=1e-7)
        if level:  # exact, no tolerance
            assert np.all(served[f"level_{level - 1}_scores"] >= served[f"level_{level}_scores"])
    np.testing.assert_array_equal(served["prediction_level"], ref["prediction_level"])
    np.testing.assert_allclose(served["prediction_score"], ref["prediction_score"], rtol=1e-5)
    names = [decoding.ROOT_NAME if n < 0 else
             [name for level in range(h.depth) for name in h.level_names(level)][n] for n in ref["prediction_node"]]
    assert served["prediction"].astype(str).tolist() == names


@pytest.mark.parametrize("width,k,block", [(10, 3, 4), (64, 5, 8), (1000, 5, 64), (7, 5, 2), (9, 5, 4)])
def test_blocked_top_k_equals_top_k_with_ties(width, k, block):
    rng = np.random.default_rng(width)
    x = rng.integers(0, 4, size=(20, width)).astype(np.float32)  # many ties: lower index must come first
    values, ids = serving_graph.blocked_top_k(tf.constant(x), k, block)
    want_values, want_ids = tf.math.top_k(x, k)
    np.testing.assert_array_equal(ids.numpy(), want_ids.numpy())
    np.testing.assert_array_equal(values.numpy(), want_values.numpy())
