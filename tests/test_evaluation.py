"""Tests of keras_hier.evaluation: classification measures, representatives, evaluate, report."""

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_hier import Hierarchy
from keras_hier.evaluation import (class_representatives, evaluate, hierarchy_informed, hp_radius,
                                   report)


def tree():
    return Hierarchy.from_paths(["A/a1/x0", "A/a1/x1", "A/a2/x2", "A/a2/x3", "B/b1/x4", "B/b1/x5",
                                 "B/x6", "C/c1/q/x7"])


def ref_informed(y, s, h, k, kind="path", rule="devise"):
    """Per-sample loops (independent of the vectorised code)."""
    t = h.distance_matrix(kind)
    c = h.num_classes
    lca = h.lca_depth_matrix()
    depth = h.leaf_depths
    out = {key: [] for key in ("acc", "topk", "dist", "ahd", "hp", "sup")}
    for yi, si in zip(y, s):
        ranked = sorted(range(c), key=lambda j: (-si[j], j))[:k]
        pred = ranked[0]
        row = sorted(t[yi])
        radius = row[k - 1] if rule == "devise" else row[min(k + 1, c - 1)]
        out["acc"].append(pred == yi)
        out["topk"].append(yi in ranked)
        out["dist"].append(t[yi, pred])
        out["ahd"].append(np.mean([t[yi, j] for j in ranked]))
        out["hp"].append(sum(t[yi, j] <= radius for j in ranked) / k)
        # the prediction shares the true class's parent
        parent = h.paths[yi][:depth[yi] - 1]
        out["sup"].append(h.paths[pred][:len(parent)] == parent and lca[yi, pred] >= len(parent))
    acc = np.array(out["acc"])
    dist = np.array(out["dist"], dtype=float)
    sup = np.array(out["sup"])
    return {
        "accuracy": acc.mean(), "top_k_accuracy": np.mean(out["topk"]), "ahc": dist.mean(),
        "mistake_severity": dist[~acc].mean(), "ahd_at_k": np.mean(out["ahd"]),
        "hp_at_k": np.mean(out["hp"]), "superclass_accuracy": sup.mean(),
        "failed_superclass_accuracy": sup[~acc].mean(),
    }


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 8), kind=st.sampled_from(["path", "lca_height"]),
       rule=st.sampled_from(["devise", "reference"]))
def test_matches_loops_on_random_data(seed, k, kind, rule):
    h = tree()
    rng = np.random.default_rng(seed)
    n = 40
    y = rng.integers(0, 8, size=n)
    s = rng.normal(size=(n, 8)).round(1)  # rounding makes ties: tie-breaking is tested too
    s[:5, 0] = s[:5].max(1) + 1  # a few sure mistakes/hits
    got = hierarchy_informed(y, s, h, k=k, distance=kind, hp_rule=rule)
    want = ref_informed(y, s, h, k, kind, rule)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key
    ranked_top1 = np.argsort(-s, axis=1, kind="stable")[:, 0]
    for level in range(h.depth):
        a = h.ancestors(level)
        assert got["level_accuracy"][level] == pytest.approx(np.mean(a[ranked_top1] == a[y]))
    assert got["level_accuracy"][-1] == got["accuracy"]
    assert got["distance"] == kind and got["hp_rule"] == rule


def test_hand_example():
    h = Hierarchy.from_paths(["a/x", "a/y", "b/z", "b/w"])
    y = np.array([0, 0, 2, 3])
    s = np.array([[.9, .1, 0, 0],     # correct
                  [.1, .9, 0, 0],     # predicts y: sibling, t = 2
                  [.5, .1, .3, .1],   # predicts x: other top group, t = 4
                  [0, 0, .4, .6]])    # correct
    out = hierarchy_informed(y, s, h, k=2)
    assert out["accuracy"] == 0.5
    assert out["ahc"] == 1.5
    assert out["mistake_severity"] == 3.0
    assert out["level_accuracy"] == [0.75, 0.5]
    assert out["superclass_accuracy"] == 0.75
    assert out["failed_superclass_accuracy"] == 0.5
    assert out["top_k_accuracy"] == 1.0
    # top-2 distances: (0, 2), (2, 0), (4, 0), (0, 2) -> mean 1.25
    assert out["ahd_at_k"] == 1.25
    # DeViSE radius for k = 2: 2 (self + sibling); hCorrect = own group
    # hits: 2/2, 2/2, 1/2, 2/2 -> 0.875
    assert out["hp_at_k"] == 0.875
    # lca_height halves path distances on a uniform tree
    assert hierarchy_informed(y, s, h, k=2, distance="lca_height")["ahc"] == 0.75


def test_hp_radius_rules():
    h = tree()
    t = np.sort(h.distance_matrix(), axis=1)
    np.testing.assert_array_equal(hp_radius(h, 3), t[:, 2])
    np.testing.assert_array_equal(hp_radius(h, 3, "reference"), t[:, 4])
    assert np.all(hp_radius(h, 3, "reference") >= hp_radius(h, 3))


def test_absent_classes_reported_and_bad_input():
    h = tree()
    s = np.random.default_rng(0).normal(size=(6, 8))
    out = hierarchy_informed([0, 1, 1, 2, 2, 0], s, h, k=2)
    assert out["classes_absent"] == [3, 4, 5, 6, 7]
    with pytest.raises(ValueError, match="k must be"):
        hierarchy_informed([0] * 6, s, h, k=9)
    with pytest.raises(ValueError, match="num_classes=8"):
        hierarchy_informed([0] * 6, s[:, :7], h)
    bad = s.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        hierarchy_informed([0] * 6, bad, h)
    with pytest.raises(ValueError, match="y_true: label 8 .* outside the valid range"):
        hierarchy_informed([0, 1, 2, 3, 4, 8], s, h)
    with pytest.raises(ValueError, match="whole class id"):
        hierarchy_informed([0, 1, 2, 3, 4, 2.5], s, h)
    with pytest.raises(ValueError, match="distance"):
        hierarchy_informed([0] * 6, s, h, distance="euclid")
    one_hot = np.eye(8)[[0, 1, 1, 2, 2, 0]]
    assert hierarchy_informed(one_hot, s, h, k=2) == out


def test_no_mistakes_gives_nan_severity():
    h = tree()
    y = np.arange(8)
    with pytest.warns(RuntimeWarning, match="no mistake"):
        out = hierarchy_informed(y, np.eye(8), h, k=1)
    assert out["accuracy"] == 1.0 and np.isnan(out["mistake_severity"])
    assert "every prediction is correct" in out["notes"][0]
    assert np.isnan(out["failed_superclass_accuracy"])


def test_class_representatives_from_embeddings():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4)) * rng.uniform(0.1, 10, size=(30, 1))
    y = np.arange(30) % 4
    reps = class_representatives(x, y, num_classes=5)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for c in range(4):
        m = xn[y == c].mean(0)
        np.testing.assert_allclose(reps["proto"][c], m / np.linalg.norm(m), atol=1e-12)
    assert np.all(np.isnan(reps["proto"][4])) and reps["missing_classes"] == [4]
    bad = x.copy()
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="NaN/inf"):
        class_representatives(bad, y)


def _model(num_classes, proxy_head=False):
    import keras

    inputs = keras.Input((6,))
    emb = keras.layers.Dense(4, name="embedding")(inputs)
    if proxy_head:

        class ProxyHead(keras.layers.Layer):
            def build(self, shape):
                self.w = self.add_weight(shape=(num_classes, shape[-1]), initializer="random_normal")

            @property
            def proxies(self):
                return keras.ops.normalize(self.w, axis=-1)

            def call(self, x):
                return 10.0 * keras.ops.matmul(keras.ops.normalize(x, axis=-1), keras.ops.transpose(self.proxies))

        logits = ProxyHead(name="head")(emb)
    else:
        logits = keras.layers.Dense(num_classes, name="head")(emb)
    return keras.Model(inputs, logits)


def test_class_representatives_from_models():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6)).astype("float32")
    y = np.arange(40) % 8
    for proxy in (False, True):
        model = _model(8, proxy)
        reps = class_representatives(model, (x, y), batch_size=16)
        head = model.get_layer("head")
        w = np.asarray(head.w) if proxy else np.asarray(head.kernel).T
        np.testing.assert_allclose(reps["W"], w / np.linalg.norm(w, axis=1, keepdims=True), atol=1e-6)
        emb = np.asarray(model.get_layer("embedding")(x))
        np.testing.assert_allclose(reps["proto"], class_representatives(emb, y, 8)["proto"], atol=1e-5)
    with pytest.raises(TypeError):
        class_representatives("not a model", None)


def test_evaluate_and_report(tmp_path):
    h = tree()
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = np.arange(64) % 7  # class 7 absent: reported, not a crash
    model = _model(8)
    results = evaluate(model, (x, y), h, ks=(1, 5), n_permutations=20, batch_size=32)
    scores = np.asarray(model.predict(x, verbose=0))
    want = hierarchy_informed(y, scores, h, k=5)
    for key in ("accuracy", "ahc", "ahd_at_k", "hp_at_k", "superclass_accuracy"):
        assert results["classification"][key] == pytest.approx(want[key])
    assert results["classification"]["classes_absent"] == [7]
    assert results["meta"]["classes_without_proto"] == [7]
    assert set(results["inference"]) == {"W", "proto"}
    assert results["inference"]["proto"]["excluded_classes"] == [7]
    assert results["retrieval"]["recall_at_k"].keys() == {1, 5}
    md = report(results, tmp_path / "out")
    text = open(md).read()
    assert "Hierarchical inference of W" in text and "spearman_pairwise" in text
    loaded = json.loads((tmp_path / "out" / "results.json").read_text())
    assert loaded["classification"]["accuracy"] == results["classification"]["accuracy"]
    for name in ("tree_W.png", "distances_W.png", "hs_curve.png"):
        assert os.path.getsize(tmp_path / "out" / name) > 1000
        assert f"({name})" in text
    assert not [f for f in os.listdir(tmp_path / "out") if f.startswith(".")]  # no temp files left


@pytest.mark.parametrize("head", ["proxydr", "normface", "softmax"])
def test_build_classifier_models(head):
    import keras

    from keras_hier import build_classifier

    inputs = keras.Input((6,))
    backbone = keras.Model(inputs, keras.layers.Dense(8, activation="relu")(inputs))
    model = build_classifier(backbone, head=head, num_classes=8, embedding_dim=4)
    x = np.random.default_rng(3).normal(size=(32, 6)).astype("float32")
    y = np.arange(32) % 8
    reps = class_representatives(model, (x, y))
    layer = model.get_layer("head")
    w = np.asarray(layer.proxies) if head != "softmax" else np.asarray(layer.kernel).T
    np.testing.assert_allclose(reps["W"], w / np.linalg.norm(w, axis=1, keepdims=True), atol=1e-5)
    results = evaluate(model, (x, y), tree(), ks=(1, 3), n_permutations=10)
    logits = np.asarray(model.predict(x, verbose=0))
    assert results["classification"]["ahd_at_k"] == pytest.approx(hierarchy_informed(y, logits, tree())["ahd_at_k"])


def test_tf_data_input_matches_arrays():
    import tensorflow as tf

    h = tree()
    rng = np.random.default_rng(5)
    x = rng.normal(size=(48, 6)).astype("float32")
    y = np.arange(48) % 8
    model = _model(8)
    a = evaluate(model, (x, y), h, ks=(1, 3), n_permutations=5, batch_size=20)
    b = evaluate(model, tf.data.Dataset.from_tensor_slices((x, np.eye(8)[y])).batch(16), h, ks=(1, 3),
                 n_permutations=5)
    assert a["classification"] == b["classification"]
    assert a["retrieval"]["map_at_r"] == pytest.approx(b["retrieval"]["map_at_r"])
    assert a["inference"]["proto"]["spearman_pairwise"] == pytest.approx(b["inference"]["proto"]["spearman_pairwise"])


# ------------------------------------------------- every kind of Keras model
def _data(n=48, seed=7):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype("float32"), np.arange(n) % 8


def test_trained_sequential_without_input():
    """The issue's crash: a Sequential built by fit has no `.input`; its head input is the embedding."""
    import keras

    x, y = _data()
    model = keras.Sequential([keras.layers.Dense(5, activation="relu"), keras.layers.Dense(8)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=1, verbose=0)
    out = evaluate(model, (x, y), tree(), ks=(1, 3), n_permutations=5)
    emb = np.asarray(model.layers[0](x))
    want = hierarchy_informed(y, np.asarray(model.predict(x, verbose=0)), tree())
    assert out["classification"]["ahd_at_k"] == pytest.approx(want["ahd_at_k"])
    np.testing.assert_allclose(out["representatives"]["proto"], class_representatives(emb, y, 8)["proto"],
                               atol=1e-5)
    assert "retrieval" in out and set(out["inference"]) == {"W", "proto"}


def test_subclassed_model_says_why_and_accepts_an_embedding_model():
    import keras

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.body = keras.layers.Dense(4, name="embedding")
            self.out = keras.layers.Dense(8, name="head")

        def call(self, x):
            return self.out(self.body(x))

    x, y = _data()
    model = Net()
    model(x[:2])
    out = evaluate(model, (x, y), tree(), ks=(1,), n_permutations=5)
    assert "subclassed" in out["meta"]["embedding_note"] and "retrieval" not in out
    assert set(out["inference"]) == {"W"}  # the head's kernel is still found
    out = evaluate(model, (x, y), tree(), ks=(1,), n_permutations=5, embedding_model=model.body)
    assert "retrieval" in out and "proto" in out["inference"]


def test_softmax_output_detected_for_the_expected_cost_decoder():
    import keras

    from keras_hier.decoding import decode

    x, y = _data()
    inputs = keras.Input((6,))
    probs = keras.layers.Dense(8, activation="softmax")(keras.layers.Dense(4, name="embedding")(inputs))
    model = keras.Model(inputs, probs)
    out = evaluate(model, (x, y), tree(), ks=(1,), n_permutations=0)
    p = np.asarray(model.predict(x, verbose=0))
    ids = np.asarray(decode(p, tree(), "expected_cost", from_logits=False)["class_ids"])
    t = tree().distance_matrix()
    dec = out["classification"]["decoders"]
    assert dec["expected_cost"]["accuracy"] == pytest.approx(np.mean(ids == y))
    assert dec["expected_cost"]["ahc"] == pytest.approx(np.mean(t[y, ids]))
    assert dec["argmax"]["accuracy"] == out["classification"]["accuracy"]
    with pytest.raises(ValueError, match="softmax"):
        evaluate(model, (x, y), tree(), ks=(1,), n_permutations=0, from_logits=True)


def test_wrong_width_and_bad_labels_are_named():
    x, y = _data()
    with pytest.raises(ValueError, match="outputs 8 scores .* 9 classes"):
        evaluate(_model(8), (x, y), Hierarchy.from_paths([f"a/x{i}" for i in range(9)]), n_permutations=0)
    with pytest.raises(ValueError, match="dataset labels"):
        evaluate(_model(8), (x, y + 0.5), tree(), n_permutations=0)


def test_sequential_with_a_keras_hier_head():
    import keras

    from keras_hier import ProxyDRHead

    x, y = _data()
    model = keras.Sequential([keras.layers.Dense(4), ProxyDRHead(8)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=1, verbose=0)
    out = evaluate(model, (x, y), tree(), ks=(1,), n_permutations=0)
    w = np.asarray(model.layers[-1].proxies)
    np.testing.assert_allclose(out["representatives"]["W"], w / np.linalg.norm(w, axis=1, keepdims=True), atol=1e-5)
    emb = np.asarray(model.layers[0](x))
    np.testing.assert_allclose(out["representatives"]["proto"], class_representatives(emb, y, 8)["proto"],
                               atol=1e-5)


def test_expected_cost_decoder_only_by_request_at_large_c(monkeypatch):
    from keras_hier import evaluation

    x, y = _data()
    monkeypatch.setattr(evaluation, "EXPECTED_COST_MAX_CLASSES", 4)
    out = evaluate(_model(8), (x, y), tree(), ks=(1,), n_permutations=0)
    assert "decoders" not in out["classification"]
    out = evaluate(_model(8), (x, y), tree(), ks=(1,), n_permutations=0, decoders=("argmax", "expected_cost"))
    assert set(out["classification"]["decoders"]) == {"argmax", "expected_cost"}
