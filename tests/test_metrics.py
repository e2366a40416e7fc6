"""Streaming metrics equal the NumPy measures of keras_hier.evaluation, on any tree, at O(C x depth)."""

import keras
import numpy as np
import pytest
from conftest import random_tree
from roundtrip import make_hard_tree, run_serialization_tests

from keras_hier import Hierarchy
from keras_hier.evaluation import hierarchy_informed
from keras_hier.metrics import (AverageHierarchicalDistanceAtK, LevelAccuracy, MistakeSeverity,
                                SuperclassAccuracy, TreeTables)


def tree():
    return Hierarchy.from_paths(["A/a1/x0", "A/a1/x1", "A/a2/x2", "A/a2/x3", "B/b1/x4", "B/b1/x5",
                                 "B/x6", "C/c1/q/x7"])


def data(seed=0, n=97):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 8, size=n)
    s = rng.normal(size=(n, 8)).round(1).astype("float32")  # ties included
    s[::3] = np.eye(8, dtype="float32")[y[::3]] * 3  # some correct rows
    return y, s


def stream(metric, y, s, batch=16, weights=None):
    metric.reset_state()
    for i in range(0, len(y), batch):
        w = None if weights is None else weights[i:i + batch]
        metric.update_state(y[i:i + batch], s[i:i + batch], sample_weight=w)
    return float(metric.result())


@pytest.mark.parametrize("kind", ["path", "lca_height"])
def test_equal_numpy_versions(kind):
    h = tree()
    y, s = data()
    for k in (1, 3, 5):
        ref = hierarchy_informed(y, s, h, k=k, distance=kind)
        assert stream(AverageHierarchicalDistanceAtK(h, k=k, distance=kind), y, s) == \
            pytest.approx(ref["ahd_at_k"], rel=1e-6)
    ref = hierarchy_informed(y, s, h, k=1, distance=kind)
    assert stream(MistakeSeverity(h, distance=kind), y, s) == pytest.approx(ref["mistake_severity"], rel=1e-6)
    assert stream(AverageHierarchicalDistanceAtK(h, k=1, distance=kind), y, s) == pytest.approx(ref["ahc"], rel=1e-6)
    for level in range(h.depth):
        assert stream(LevelAccuracy(h, level), y, s) == pytest.approx(ref["level_accuracy"][level], rel=1e-6)
    assert stream(SuperclassAccuracy(h), y, s) == pytest.approx(ref["superclass_accuracy"], rel=1e-6)
    assert stream(SuperclassAccuracy(h, failed_only=True), y, s) == \
        pytest.approx(ref["failed_superclass_accuracy"], rel=1e-6)


def test_sample_weights_and_one_hot():
    h = tree()
    y, s = data(1)
    w = np.random.default_rng(3).uniform(0, 2, size=len(y)).astype("float32")
    t = h.distance_matrix()
    pred = np.argsort(-s, axis=1, kind="stable")[:, 0]
    wrong = pred != y
    want = np.sum(w * wrong * t[y, pred]) / np.sum(w * wrong)
    assert stream(MistakeSeverity(h), y, s, weights=w) == pytest.approx(want, rel=1e-5)
    one_hot = np.eye(8, dtype="float32")[y]
    assert stream(LevelAccuracy(h, 0), one_hot, s) == stream(LevelAccuracy(h, 0), y, s)


def test_config_round_trip_and_validation():
    h = tree()
    y, s = data(2)
    for metric in (MistakeSeverity(h, distance="lca_height"), AverageHierarchicalDistanceAtK(h, k=2),
                   LevelAccuracy(h, level=1), SuperclassAccuracy(h, failed_only=True)):
        config = metric.get_config()
        clone = type(metric).from_config(config)
        assert clone.get_config() == config
        assert stream(clone, y, s) == pytest.approx(stream(metric, y, s))
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
        assert type(restored) is type(metric)
    with pytest.raises(ValueError, match="k must be"):
        AverageHierarchicalDistanceAtK(h, k=9)
    with pytest.raises(ValueError, match="distance"):
        MistakeSeverity(h, distance="euclid")
    with pytest.raises(TypeError, match="Hierarchy"):
        LevelAccuracy([["a", "b"]])
    with pytest.raises(ValueError, match=r"MistakeSeverity: y_pred must be scores \[B, 8\].*\(4, 7\)"):
        MistakeSeverity(h).update_state(y[:4], s[:4, :7])


def test_in_fit():
    h = tree()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype("float32")
    y = rng.integers(0, 8, size=64)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[MistakeSeverity(h), AverageHierarchicalDistanceAtK(h, k=3), LevelAccuracy(h, 0),
                           SuperclassAccuracy(h)])
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert {"mistake_severity", "ahd_at_3", "level_0_accuracy", "superclass_accuracy"} <= set(history.history)
    logs = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    ref = hierarchy_informed(y, model.predict(x, verbose=0), h, k=3)
    assert logs["ahd_at_3"] == pytest.approx(ref["ahd_at_k"], rel=1e-5)
    assert logs["level_0_accuracy"] == pytest.approx(ref["level_accuracy"][0], rel=1e-5)


def all_metrics(h, kind="path", k=3):
    return [MistakeSeverity(h, distance=kind), AverageHierarchicalDistanceAtK(h, k=k, distance=kind),
            LevelAccuracy(h, 0), LevelAccuracy(h, -1, name="leaf_level"), SuperclassAccuracy(h),
            SuperclassAccuracy(h, failed_only=True)]


def reference(h, y, s, kind, k=3):
    ref = hierarchy_informed(y, s, h, k=k, distance=kind)
    return [ref["mistake_severity"], ref["ahd_at_k"], ref["level_accuracy"][0], ref["accuracy"],
            ref["superclass_accuracy"], ref["failed_superclass_accuracy"]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_ragged_and_hard_trees_match_numpy(seed):
    h = make_hard_tree() if seed == 0 else random_tree(seed, num_classes=11, max_depth=5)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, h.num_classes, size=60)
    s = rng.normal(size=(60, h.num_classes)).round(1).astype("float32")
    for kind in ("path", "lca_height"):
        got = [stream(m, y, s) for m in all_metrics(h, kind)]
        np.testing.assert_allclose(got, reference(h, y, s, kind), rtol=1e-6, err_msg=kind)


def test_pair_distance_from_tables_equals_hierarchy_distance():
    h = make_hard_tree()
    a, b = np.meshgrid(np.arange(h.num_classes), np.arange(h.num_classes), indexing="ij")
    tables = TreeTables(h)
    for kind in ("path", "lca_height"):
        got = keras.ops.convert_to_numpy(tables.distance(a, b, kind))
        np.testing.assert_array_equal(got, h.distance_matrix(kind), err_msg=kind)
    assert h.distance(7, 8) == 4  # 'a/b' is one top-level node, not a/b/...


def test_no_class_by_class_table(monkeypatch):
    """Streaming metrics hold O(C x depth): no C x C matrix is built, at C = 20 000."""
    def refuse(*args, **kwargs):
        raise AssertionError("a C x C matrix was built")

    for name in ("distance_matrix", "lca_depth_matrix", "similarity_matrix"):
        monkeypatch.setattr(Hierarchy, name, refuse)
    h = Hierarchy.from_paths([f"g{c % 7}/s{c % 101}/c{c}" for c in range(20_000)])
    rng = np.random.default_rng(0)
    y = rng.integers(0, h.num_classes, size=32)
    s = rng.normal(size=(32, h.num_classes)).astype("float32")
    for metric in all_metrics(h, "lca_height", k=5):
        metric.update_state(y, s)
        assert np.isfinite(float(metric.result()))
        sizes = [int(np.prod(keras.ops.shape(t))) for t in vars(metric.tables).values() if hasattr(t, "shape")]
        assert max(sizes) <= h.num_classes * (h.depth + 1)


def test_softmax_outputs_rank_like_logits():
    h = tree()
    y, s = data(4)
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(s * 3.0))
    for logit_metric, prob_metric in zip(all_metrics(h), all_metrics(h)):
        assert stream(prob_metric, y, probs) == pytest.approx(stream(logit_metric, y, s * 3.0), rel=1e-6)


def test_level_accuracy_marginal_and_from_logits():
    h = tree()
    y, s = data(5)
    probs = np.exp(s - s.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    ancestors = h.ancestors(0)
    node = np.zeros((len(y), h.num_nodes(0)))
    np.add.at(node.T, ancestors, probs.T)
    want = np.mean(node.argmax(1) == ancestors[y])
    assert stream(LevelAccuracy(h, 0, marginal=True), y, s) == pytest.approx(want)
    assert stream(LevelAccuracy(h, 0, marginal=True, from_logits=False), y, probs) == pytest.approx(want)
    # through fit/evaluate of a softmax model: the softmax mark selects probabilities
    x = np.random.default_rng(0).normal(size=(len(y), 5)).astype("float32")
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=[LevelAccuracy(h, 0, marginal=True)])
    logs = model.evaluate(x, y, verbose=0, return_dict=True, batch_size=len(y))
    p = model.predict(x, verbose=0)
    node = np.zeros((len(y), h.num_nodes(0)))
    np.add.at(node.T, ancestors, p.T)
    assert logs["level_0_accuracy"] == pytest.approx(np.mean(node.argmax(1) == ancestors[y]))


def test_no_mistakes_is_zero_not_nan():
    h = tree()
    y = np.arange(8)
    s = np.eye(8, dtype="float32")
    assert stream(MistakeSeverity(h), y, s) == 0.0
    assert stream(SuperclassAccuracy(h, failed_only=True), y, s) == 0.0
    assert stream(SuperclassAccuracy(h), y, s) == 1.0


def test_out_of_range_labels_name_the_metric():
    h = tree()
    s = np.eye(8, dtype="float32")[:2]
    for metric in all_metrics(h):
        with pytest.raises(ValueError, match=rf"{type(metric).__name__}: label 8 at index 1 is outside .*\[0, 8\)"):
            metric.update_state(np.array([0, 8]), s)
    import tensorflow as tf

    metric = MistakeSeverity(h)
    with pytest.raises(tf.errors.InvalidArgumentError, match="MistakeSeverity: a label is not a whole class id"):
        tf.function(metric.update_state)(tf.constant([0, -1]), tf.constant(s))
    metric = AverageHierarchicalDistanceAtK(h, k=2)  # XLA drops the assertion: NaN, not a clamped lookup
    tf.function(metric.update_state, jit_compile=True)(tf.constant([0, 9]), tf.constant(s))
    assert np.isnan(float(metric.result()))


def test_hard_tree_configs_and_fresh_process_round_trip():
    """Node names with '/', unicode, a class with children survive `.keras` saving; legacy configs load."""
    h = make_hard_tree()
    rng = np.random.default_rng(7)
    y = rng.integers(0, h.num_classes, size=40)
    s = rng.normal(size=(40, h.num_classes)).astype("float32")
    metrics = all_metrics(h, "path") + [MistakeSeverity(h, "lca_height", name="ms_height"),
                                        LevelAccuracy(h, 1, marginal=True)]
    for metric in metrics:
        clone = type(metric).from_config(metric.get_config())
        assert clone.hierarchy == h and stream(clone, y, s) == pytest.approx(stream(metric, y, s))
        assert isinstance(metric.get_config()["hierarchy"]["tree"], str)
    loaded = run_serialization_tests([(m, s, y) for m in metrics])
    assert loaded[1]["evaluate/ahd_at_3"] == pytest.approx(reference(h, y, s, "path")[1], rel=1e-5)
    legacy = {"paths": ["A/a1/x0", "A/a1/x1", "A/a2/x2", "A/a2/x3", "B/b1/x4", "B/b1/x5", "B/x6", "C/c1/q/x7"],
              "classes": ["x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7"]}
    assert MistakeSeverity.from_config({"hierarchy": legacy, "name": "m"}).hierarchy == tree()
