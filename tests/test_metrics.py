"""Streaming metrics equal the NumPy measures of keras_hier.evaluation."""

import keras
import numpy as np
import pytest

from keras_hier import Hierarchy
from keras_hier.evaluation import hierarchy_informed
from keras_hier.metrics import (AverageHierarchicalDistanceAtK, LevelAccuracy, MistakeSeverity,
                                SuperclassAccuracy)


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
    with pytest.raises(ValueError, match="7 classes"):
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
