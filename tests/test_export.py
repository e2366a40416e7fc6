"""export_saved_model: every model kind loads and answers three ways, as a deployment runs it.

(a) TensorFlow's C++ loader (what TF-Serving runs; one child process for all exports),
(b) `saved_model_cli run` (the real command once, then its session loader for every export in one process),
(c) `tf.saved_model.load` in a process that cannot import keras or keras_hier (one process for all).
Each answer must give `model.predict`'s class ids (through `keras_hier.decoding.decode`).
"""

import errno
import json
import os
import stat
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_hier import decoding, export, files
from keras_hier.hierarchy import Hierarchy
from keras_hier.models import build_classifier
from keras_hier.serving_kit import rest, smoke_test
from keras_hier.serving_kit.c_loader import CLoader, CLoaderError

from serving_loaders import as_text, cli_batch, isolated_batch, saved_model_cli_run

HIERARCHY = Hierarchy.from_paths(["a/b/x", "a/b/y", "a/z", "q", "r/s/t/u", "r/s/v"])
RAGGED = Hierarchy(
    [("a", "b", "x"), ("a", "b", "y"), ("a", "b"), ("a", "z"), ("q",), ("r", "s", "t", "u"), ("r", "s", "v"),
     ("r", "s/x", "ü")], ["x", "y", "b", "z", "q", "u", "v", "ü"])
SIZE = (8, 8, 1)


def wide_hierarchy(num_classes=10_000, branching=10):
    paths = [(f"g{c // branching ** 2 % branching}", f"f{c // branching}", f"c{c}") for c in range(num_classes)]
    return Hierarchy.from_paths(["/".join(p) for p in paths])


def images(count, seed=0, shape=SIZE):
    return np.random.default_rng(seed).uniform(0, 1, size=(count, *shape)).astype(np.float32)


def conv_backbone(shape=SIZE):
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def dense_model(num_classes=6, activation=None, shape=SIZE):
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation=activation,
                                 kernel_initializer=keras.initializers.RandomNormal(stddev=8.0),
                                 bias_initializer=keras.initializers.RandomNormal(stddev=2.0))(x)
    return keras.Model(inputs, outputs, name="tiny")


def head_model(hierarchy, head, **kwargs):
    model = build_classifier(conv_backbone(), head, hierarchy=hierarchy, embedding_dim=6, **kwargs)
    model(np.zeros((1, *SIZE), np.float32))
    for variable in model.weights:  # not the initial values: the export must carry the trained state
        variable.assign(variable + np.random.default_rng(len(variable.path)).normal(
            0, 0.3, variable.shape).astype(variable.dtype))
    return model


def text_model():
    vectorize = keras.layers.TextVectorization(max_tokens=40, output_sequence_length=6)
    vectorize.adapt(["a small domesticated feline", "a large dog", "a red rose flower", "a shirt and a coat"])
    text = keras.Input((), dtype="string", name="text")
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(40, 8)(vectorize(text)))
    return keras.Model(text, keras.layers.Dense(6, kernel_initializer=keras.initializers.RandomNormal(stddev=4.0))(x))


def tabular_model():
    age, size = keras.Input((3,), name="age"), keras.Input((2,), name="size")
    x = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([age, size]))
    return keras.Model({"age": age, "size": size}, keras.layers.Dense(6)(x))


TEXTS = np.array([b"a small domesticated feline", b"a large dog", b"red rose", b"coat", b""], dtype=object)


def _kinds():
    """kind -> (build model, hierarchy, serving_default inputs, model.predict input, export kwargs)."""
    x = images(5, seed=1)
    tab = {"age": np.random.default_rng(2).normal(size=(5, 3)).astype(np.float32),
           "size": np.random.default_rng(3).normal(size=(5, 2)).astype(np.float32)}
    image = {"images": x}
    return {
        "dense": (lambda: dense_model(), HIERARCHY, image, x, {"decoder": "expected_cost", "backoff_threshold": 0.6,
                                                               "top_k": 3}),
        "normface": (lambda: head_model(HIERARCHY, "normface"), HIERARCHY, image, x, {}),
        "proxydr": (lambda: head_model(HIERARCHY, "proxydr"), HIERARCHY, image, x, {"backoff_threshold": 0.5}),
        "proxydr_ema": (lambda: head_model(HIERARCHY, "proxydr", proxy_mode="ema"), HIERARCHY, image, x, {}),
        "proxydr_fixed": (lambda: head_model(HIERARCHY, "proxydr", proxy_mode="mds"), HIERARCHY, image, x, {}),
        "proxydr_dynamic": (lambda: head_model(HIERARCHY, "proxydr", dynamic_scale=True), HIERARCHY, image, x, {}),
        "ragged": (lambda: dense_model(RAGGED.num_classes), RAGGED, image, x,
                   {"decoder": "expected_cost", "cost": "lca_height", "backoff_threshold": 0.4}),
        "wide": (lambda: dense_model(10_000), wide_hierarchy(), image, x, {"decoder": "expected_cost", "top_k": 5,
                                                                          "backoff_threshold": 0.3}),
        "softmax": (lambda: dense_model(activation="softmax"), HIERARCHY, image, x, {"backoff_threshold": 0.5}),
        "tabular": (tabular_model, HIERARCHY, tab, tab, {"backoff_threshold": 0.5}),
        "text": (text_model, HIERARCHY, {"text": TEXTS}, tf.constant(TEXTS.astype(str)), {"top_k": 2}),
    }


KINDS = list(_kinds())


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """kind -> dict(model, hierarchy, path, inputs, reference decode)."""
    base = tmp_path_factory.mktemp("exports")
    out = {}
    for kind, (build, hierarchy, inputs, predict_input, kwargs) in _kinds().items():
        keras.utils.set_random_seed(0)
        if kind == "mixed":
            continue
        model = build()
        path = export.export_saved_model(model, hierarchy, base / kind, **kwargs)
        scores = model.predict(predict_input, verbose=0)
        options = {k: v for k, v in kwargs.items() if k in ("decoder", "cost", "backoff_threshold", "top_k")}
        reference = decoding.decode(scores, hierarchy, from_logits=kind != "softmax", **options)
        out[kind] = {"model": model, "hierarchy": hierarchy, "path": path, "inputs": inputs, "scores": scores,
                     "reference": reference, "kwargs": kwargs}
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = head_model(HIERARCHY, "proxydr")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    path = export.export_saved_model(model, HIERARCHY, base / "mixed")
    x = images(5, seed=1)
    scores = model.predict(x, verbose=0)
    out["mixed"] = {"model": model, "hierarchy": HIERARCHY, "path": path, "inputs": {"images": x}, "scores": scores,
                    "reference": decoding.decode(scores, HIERARCHY), "kwargs": {}}
    return out


@pytest.fixture(scope="module")
def loader():
    with CLoader() as c_loader:
        yield c_loader


def check_answer(answer, entry, rtol=1e-4):
    """An answer of an export equals model.predict decoded (ids exactly, scores closely)."""
    ref, hierarchy = entry["reference"], entry["hierarchy"]
    assert isinstance(answer, dict), answer
    np.testing.assert_array_equal(answer["class_ids"], ref["class_ids"])
    np.testing.assert_allclose(answer["scores"], ref["scores"], rtol=rtol, atol=1e-6)
    assert as_text(answer["classes"]) == [hierarchy.classes[c] for c in ref["class_ids"]]
    for level in range(hierarchy.depth):
        np.testing.assert_array_equal(answer[f"level_{level}_ids"], ref["level_ids"][:, level])
        np.testing.assert_allclose(answer[f"level_{level}_scores"], ref["level_scores"][:, level], rtol=rtol,
                                   atol=1e-6)
    if "top_k_ids" in ref:
        np.testing.assert_array_equal(answer["top_k_ids"], ref["top_k_ids"])
    if "prediction_level" in ref:
        np.testing.assert_array_equal(answer["prediction_level"], ref["prediction_level"])


# -------------------------------------------------------- three loaders, every kind
@pytest.mark.parametrize("kind", KINDS + ["mixed"])
def test_cpp_loader_answers_like_model_predict(exports, loader, kind):
    entry = exports[kind]
    check_answer(loader.run(entry["path"], "serving_default", entry["inputs"]), entry,
                 rtol=2e-3 if kind == "mixed" else 1e-4)


def test_saved_model_cli_and_keras_free_load_answer_like_model_predict(exports, tmp_path):
    jobs = [(e["path"], "serving_default", e["inputs"]) for e in exports.values()]
    for answers in (cli_batch(jobs, tmp_path), isolated_batch(jobs, tmp_path)):
        if isinstance(answers, tuple):  # the isolated process: nothing of keras was imported
            answers, modules = answers
            assert modules == []
        for (kind, entry), answer in zip(exports.items(), answers):
            check_answer(answer, entry, rtol=2e-3 if kind == "mixed" else 1e-4)


def test_saved_model_cli_run_command_both_signatures(exports, tmp_path):
    entry = exports["dense"]
    check_answer(saved_model_cli_run(entry["path"], "serving_default", entry["inputs"], tmp_path), entry)
    pixels = (entry["inputs"]["images"][:2] * 255).round().astype(np.uint8)
    encoded = np.array([smoke_test.png_bytes(p) for p in pixels], dtype=object)
    answer = saved_model_cli_run(entry["path"], "serving_bytes", {"image_bytes": encoded}, tmp_path)
    expected = decoding.decode(entry["model"].predict(pixels / np.float32(255), verbose=0), HIERARCHY,
                               "expected_cost")
    np.testing.assert_array_equal(answer["class_ids"], expected["class_ids"])


def test_bytes_signature_through_cpp_loader(exports, loader):
    entry = exports["proxydr"]
    pixels = (images(3, seed=4) * 255).round().astype(np.uint8)
    encoded = np.array([smoke_test.png_bytes(p) for p in pixels], dtype=object)
    answer = loader.run(entry["path"], "serving_bytes", {"image_bytes": encoded})
    expected = decoding.decode(entry["model"].predict(pixels / np.float32(255), verbose=0), HIERARCHY)
    np.testing.assert_array_equal(answer["class_ids"], expected["class_ids"])
    np.testing.assert_allclose(answer["scores"], expected["scores"], rtol=1e-4)


def test_softmax_model_serves_its_own_probabilities(exports):
    entry = exports["softmax"]
    served = entry["reference"]["scores"]
    np.testing.assert_allclose(served, entry["scores"].max(axis=1), rtol=1e-5)  # not softmax(softmax)
    card = json.load(open(os.path.join(entry["path"], "assets", "model_card.json")))
    assert card["from_logits"] is False
    with pytest.raises(ValueError, match="ends in a softmax"):
        export.export_saved_model(entry["model"], HIERARCHY, os.path.dirname(entry["path"]), from_logits=True)


# ------------------------------------------------------------- text, REST bodies
def test_text_and_tabular_models_answer_rest_bodies_through_cpp_loader(exports, loader):
    text = smoke_test.CModel(exports["text"]["path"], loader)
    answer = text.predict({"instances": ["a small domesticated feline", "a large dog"]})
    assert "predictions" in answer, answer
    expected = exports["text"]["model"].predict(tf.constant(["a small domesticated feline", "a large dog"]),
                                                verbose=0).argmax(axis=1)
    assert [row["class_ids"] for row in answer["predictions"]] == expected.tolist()
    hierarchy, card = smoke_test.load_assets(text.path)
    smoke_test.check_response(answer, hierarchy, card, 2)
    tab = exports["tabular"]
    model = smoke_test.CModel(tab["path"], loader)
    body = rest.make_request({k: v[:3] for k, v in tab["inputs"].items()}, form="instances")
    assert set(body["instances"][0]) == {"age", "size"}
    answer = model.predict(body)
    assert [row["class_ids"] for row in answer["predictions"]] == tab["reference"]["class_ids"][:3].tolist()
    for entry in (text, model):
        hierarchy, card = smoke_test.load_assets(entry.path)
        assert smoke_test.run(entry.predict, hierarchy, card, count=3)


# ------------------------------------------------------------------ bad requests
def test_nan_inputs_and_bad_images_are_refused_by_name(exports, loader):
    path = exports["dense"]["path"]
    x = images(3)
    x[1, 2, 3, 0] = np.nan
    with pytest.raises(CLoaderError, match=r"InvalidArgument: input 'images' holds NaN or inf"):
        loader.run(path, "serving_default", {"images": x})
    x[1, 2, 3, 0] = np.inf
    with pytest.raises(CLoaderError, match="input 'images' holds NaN or inf"):
        loader.run(path, "serving_default", {"images": x})
    tab = exports["tabular"]
    bad = {k: v.copy() for k, v in tab["inputs"].items()}
    bad["size"][0, 0] = np.nan
    with pytest.raises(CLoaderError, match="input 'size' holds NaN"):
        loader.run(tab["path"], "serving_default", bad)
    good = smoke_test.png_bytes(np.zeros((8, 8, 1), np.uint8))
    with pytest.raises(CLoaderError, match=r"InvalidArgument.*\[image_bytes\] \[2\] \[is not a JPEG, PNG"):
        loader.run(path, "serving_bytes", {"image_bytes": np.array([good, good, b"junk"], dtype=object)})
    with pytest.raises(CLoaderError, match=r"InvalidArgument.*\[image_bytes\] \[1\] \[could not be decoded \(corrupt"):
        loader.run(path, "serving_bytes", {"image_bytes": np.array([good, good[:-20], good], dtype=object)})
    huge = smoke_test.png_bytes(np.zeros((1, 1, 1), np.uint8))
    huge = huge[:16] + (12_000).to_bytes(4, "big") + (12_000).to_bytes(4, "big") + huge[24:]  # header only
    with pytest.raises(CLoaderError, match=r"\[image_bytes\] \[1\] \[has\] \[144000000\] \[pixels, above the limit"):
        loader.run(path, "serving_bytes", {"image_bytes": np.array([good, huge], dtype=object)})
    with pytest.raises(CLoaderError, match=r"Shape of tensor \w*images\w* \[2,8,8,3\] is not compatible with expected shape \[\?,8,8,1\]"):
        loader.run(path, "serving_default", {"images": np.zeros((2, 8, 8, 3), np.float32)})


@pytest.mark.parametrize("kind", ["dense", "wide", "text", "tabular"])
def test_empty_batch_gives_empty_outputs(exports, loader, kind):
    entry = exports[kind]
    empty = {k: np.asarray(v)[:0] for k, v in entry["inputs"].items()}
    answer = loader.run(entry["path"], "serving_default", empty)
    assert answer["class_ids"].shape == (0,) and answer["level_0_names"].shape == (0,)
    if kind in ("dense", "wide"):
        answer = loader.run(entry["path"], "serving_bytes", {"image_bytes": np.array([], dtype=object)})
        assert answer["class_ids"].shape == (0,) and answer["top_k_ids"].shape[0] == 0


def test_pixel_limit_is_configurable(tmp_path, loader):
    path = export.export_saved_model(dense_model(), HIERARCHY, tmp_path, max_image_pixels=100)
    ok = smoke_test.png_bytes(np.zeros((10, 10, 1), np.uint8))
    assert loader.run(path, "serving_bytes", {"image_bytes": np.array([ok], dtype=object)})["class_ids"].shape == (1,)
    big = smoke_test.png_bytes(np.zeros((10, 11, 1), np.uint8))
    with pytest.raises(CLoaderError, match=r"\[110\] \[pixels, above the limit of\] \[100\]"):
        loader.run(path, "serving_bytes", {"image_bytes": np.array([ok, big], dtype=object)})
    card = json.load(open(os.path.join(path, "assets", "model_card.json")))
    assert card["signatures"]["serving_bytes"]["inputs"]["image_bytes"]["max_image_pixels"] == 100


# ------------------------------------------------------------------- files, versions
def test_layout_modes_card_and_readme(exports):
    entry = exports["dense"]
    path = entry["path"]
    assert sorted(os.listdir(os.path.dirname(path))) == ["1"]  # no staging folder left behind
    file_mode, dir_mode = files.umask_modes()
    for folder, _dirs, names in os.walk(path):
        assert stat.S_IMODE(os.stat(folder).st_mode) == dir_mode, folder
        for name in names:
            assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == file_mode, name
    hierarchy, card = smoke_test.load_assets(path)
    assert Hierarchy.from_dict(hierarchy) == HIERARCHY and card["version"] == 1
    assert card["outputs"] == export.output_names(HIERARCHY, 3, 0.6) and card["decoder"] == "expected_cost"
    readme = open(os.path.join(path, "README.md")).read()
    for name in card["outputs"] + ["serving_bytes", "image_bytes", "images"]:
        assert f"`{name}`" in readme
    text_card = smoke_test.load_assets(exports["text"]["path"])[1]
    assert text_card["signatures"] == {"serving_default": {"inputs": {"text": {"dtype": "string",
                                                                              "shape": [None]}}}}


def test_versions_are_never_overwritten_and_stay_int64(exports, tmp_path):
    model = exports["dense"]["model"]
    first = export.export_saved_model(model, HIERARCHY, tmp_path / "m", version=7, top_k=None)
    with pytest.raises(FileExistsError, match="version 7 already exists"):
        export.export_saved_model(model, HIERARCHY, tmp_path / "m", version=7)
    assert os.path.basename(export.export_saved_model(model, HIERARCHY, tmp_path / "m", top_k=None)) == "8"
    assert json.load(open(os.path.join(first, "assets", "model_card.json")))["version"] == 7
    with pytest.raises(ValueError, match=r"2\*\*63 - 1"):
        export.export_saved_model(model, HIERARCHY, tmp_path / "m", version=2 ** 63)
    top = export.export_saved_model(model, HIERARCHY, tmp_path / "m", version=2 ** 63 - 1, top_k=None)
    assert os.path.basename(top) == str(2 ** 63 - 1)
    with pytest.raises(ValueError, match="exceed"):
        export.export_saved_model(model, HIERARCHY, tmp_path / "m", top_k=None)


def test_stale_staging_is_removed_and_a_failed_export_leaves_nothing(tmp_path, monkeypatch):
    base = tmp_path / "base"
    stale, fresh = base / ".staging-1-old", base / ".staging-2-new"
    for folder in (stale, fresh):
        (folder / "variables").mkdir(parents=True)
    old = time.time() - export.STALE_SECONDS - 60
    os.utime(stale, (old, old))
    export.export_saved_model(dense_model(), HIERARCHY, base, top_k=None)
    assert sorted(os.listdir(base)) == [".staging-2-new", "1"]

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(keras.export.ExportArchive, "write_out", boom, raising=False)
    monkeypatch.setattr(type(keras.export.ExportArchive()), "write_out", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_saved_model(dense_model(), HIERARCHY, tmp_path / "fail")
    assert os.listdir(tmp_path / "fail") == []


CONCURRENT = """
import os, sys
os.environ["KERAS_BACKEND"] = "tensorflow"
import keras
from keras_hier import Hierarchy, export
h = Hierarchy.from_paths(["a/x", "a/y", "b/z"])
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
open(sys.argv[2] + ".ready", "w").close()
while not os.path.exists(sys.argv[3]):
    pass
print(export.export_saved_model(model, h, sys.argv[1], top_k=None))
"""


def test_two_processes_exporting_into_one_base_both_succeed(tmp_path):
    script = tmp_path / "export_race.py"
    script.write_text(CONCURRENT)
    go = tmp_path / "go"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "base"), str(tmp_path / f"p{i}"),
                               str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    deadline = time.time() + 120
    while not all((tmp_path / f"p{i}.ready").exists() for i in range(2)) and time.time() < deadline:
        time.sleep(0.05)
    go.touch()
    outputs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    paths = sorted(out.strip().splitlines()[-1] for out, _ in outputs)
    assert [os.path.basename(p) for p in paths] == ["1", "2"]
    for path in paths:
        card = json.load(open(os.path.join(path, "assets", "model_card.json")))
        assert str(card["version"]) == os.path.basename(path)
    assert sorted(os.listdir(tmp_path / "base")) == ["1", "2"]


def test_claim_retries_when_a_version_appears(tmp_path, monkeypatch):
    base = tmp_path / "base"
    base.mkdir()
    real_rename = os.rename
    calls = []

    def racing_rename(src, dst):  # another export takes version 1 just before us
        if not calls:
            os.makedirs(os.path.join(dst, "variables"))
        calls.append(dst)
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", racing_rename)
    path = export.export_saved_model(dense_model(), HIERARCHY, base, top_k=None)
    assert os.path.basename(path) == "2" and len(calls) == 2
    assert json.load(open(os.path.join(path, "assets", "model_card.json")))["version"] == 2
    assert errno.ENOTEMPTY  # the collision the retry handles


# ------------------------------------------------------------------ arguments
def test_refuses_bad_arguments(tmp_path, monkeypatch):
    model = dense_model()
    with pytest.raises(ValueError, match=r"outputs shape \(1, 5\).*6 classes"):
        export.export_saved_model(dense_model(5), HIERARCHY, tmp_path)
    with pytest.raises(ValueError, match="decoder 'crm'"):
        export.export_saved_model(model, HIERARCHY, tmp_path, decoder="crm")
    with pytest.raises(ValueError, match="backoff_threshold"):
        export.export_saved_model(model, HIERARCHY, tmp_path, backoff_threshold=0.0)
    with pytest.raises(TypeError, match="model_card must be JSON-serialisable"):
        export.export_saved_model(model, HIERARCHY, tmp_path, model_card={"when": object()})
    with pytest.raises(ValueError, match="image_size"):
        export.export_saved_model(model, HIERARCHY, tmp_path, image_size=(9, 8))
    with pytest.raises(ValueError, match="version must be an int"):
        export.export_saved_model(model, HIERARCHY, tmp_path, version="2")
    with pytest.raises(TypeError, match="keras.Model"):
        export.export_saved_model(lambda x: x, HIERARCHY, tmp_path)
    with pytest.raises(TypeError, match="keras_hier.Hierarchy"):
        export.export_saved_model(model, HIERARCHY.to_dict(), tmp_path)
    with pytest.raises(ValueError, match="image_size / input_dtype apply to image models"):
        export.export_saved_model(tabular_model(), HIERARCHY, tmp_path, image_size=(8, 8))
    fully_conv = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(6, 3),
                                   keras.layers.GlobalAveragePooling2D()])
    with pytest.raises(ValueError, match="pass image_size"):
        export.export_saved_model(fully_conv, HIERARCHY, tmp_path)
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(RuntimeError, match="KERAS_BACKEND=tensorflow or jax.*model.save"):
        export.export_saved_model(model, HIERARCHY, tmp_path)
    assert os.listdir(tmp_path) == []


def test_uint8_inputs_and_any_size_models(tmp_path, loader):
    model = dense_model()
    path = export.export_saved_model(model, HIERARCHY, tmp_path / "u8", input_dtype="uint8")
    pixels = np.random.default_rng(4).integers(0, 256, size=(4, *SIZE), dtype=np.uint8)
    served = loader.run(path, "serving_default", {"images": pixels})
    reference = np.argmax(model.predict(pixels.astype(np.float32) / 255.0, verbose=0), axis=1)
    np.testing.assert_array_equal(served["class_ids"], reference)
    fully_conv = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(6, 3),
                                   keras.layers.GlobalAveragePooling2D()])
    path = export.export_saved_model(fully_conv, HIERARCHY, tmp_path / "fc", image_size=(12, 10))
    assert loader.run(path, "serving_default", {"images": images(2, shape=(15, 9, 1))})["class_ids"].shape == (2,)
    big = smoke_test.png_bytes(np.zeros((30, 30, 1), np.uint8))
    assert loader.run(path, "serving_bytes", {"image_bytes": np.array([big], dtype=object)})["class_ids"].shape == (1,)


JAX_EXPORT = """
import sys
import numpy as np
import keras
from keras_hier import Hierarchy, build_classifier, export
assert keras.backend.backend() == "jax"
h = Hierarchy.from_paths(["a/b/x", "a/b/y", "a/z", "q", "r/s/t/u", "r/s/v"])
inputs = keras.Input((8, 8, 1))
backbone = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs)))
model = build_classifier(backbone, "proxydr", hierarchy=h, embedding_dim=6, proxy_mode="ema")
x = np.random.default_rng(0).random((3, 8, 8, 1)).astype("float32")
np.save(sys.argv[2], np.asarray(model.predict(x, verbose=0)))
np.save(sys.argv[3], x)
print(export.export_saved_model(model, h, sys.argv[1], backoff_threshold=0.5))
"""


def test_jax_trained_model_exports_and_runs_in_the_cpp_loader(tmp_path, loader):
    script = tmp_path / "jax_export.py"
    script.write_text(JAX_EXPORT)
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "base"), str(tmp_path / "scores.npy"),
                           str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = proc.stdout.strip().splitlines()[-1]
    answer = loader.run(path, "serving_default", {"images": np.load(tmp_path / "x.npy")})
    reference = decoding.decode(np.load(tmp_path / "scores.npy"), HIERARCHY, backoff_threshold=0.5)
    np.testing.assert_array_equal(answer["class_ids"], reference["class_ids"])
    np.testing.assert_allclose(answer["scores"], reference["scores"], rtol=1e-4)
    np.testing.assert_array_equal(answer["prediction_level"], reference["prediction_level"])
