"""Losses against independent NumPy implementations of their formulas."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_hier import Hierarchy
from conftest import random_tree
from keras_hier.losses import CORRLoss, HierarchicalCrossEntropy, SimLoss, SoftLabelCrossEntropy
from keras_hier.similarity import ordinal_similarity, tree_factors, tree_similarity




UNIFORM = Hierarchy.from_paths(["a/b/x", "a/b/y", "a/c/z", "a/c/v", "d/e/w", "d/f/u"])


def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_simloss(y, z, s):
    return -np.log((s[y] * softmax(z)).sum(axis=1))


def np_simloss_grad(y, z, s):
    p = softmax(z)
    weighted = s[y] * p
    return p - weighted / weighted.sum(axis=1, keepdims=True)


def members(h, level, y):
    """Classes under y's ancestor at `level` (direct loop over the paths)."""
    prefix = h.paths[y][: level + 1]
    return [c for c in range(h.num_classes) if h.paths[c][: level + 1] == prefix]


def np_heights(h):
    """Height of every path prefix: longest remaining path to a leaf below it."""
    heights = {}
    for path in h.paths:
        for k in range(len(path) + 1):
            heights[path[:k]] = max(heights.get(path[:k], 0), len(path) - k)
    return heights


def np_hxe(y, z, h, alpha):
    p = softmax(z)
    heights = np_heights(h)
    out = []
    for b, label in enumerate(y):
        path = h.paths[label]
        total, parent = 0.0, 1.0
        for level in range(len(path)):
            node = sum(p[b, c] for c in members(h, level, label))
            total -= np.exp(-alpha * heights[path[: level + 1]]) * np.log(node / parent)
            parent = node
        out.append(total)
    return np.array(out)


def tf_value_and_grad(loss, y, z):
    variable = tf.constant(np.asarray(z, dtype=np.float32))
    with tf.GradientTape() as tape:
        tape.watch(variable)
        value = loss(y, variable)
    return value.numpy(), tape.gradient(value, variable).numpy()


def numeric_grad(f, z, step=1e-6):
    z = np.asarray(z, dtype=np.float64)
    grad = np.zeros_like(z)
    for index in np.ndindex(z.shape):
        up, down = z.copy(), z.copy()
        up[index] += step
        down[index] -= step
        grad[index] = (f(up) - f(down)) / (2 * step)
    return grad


def data(seed, num_classes, batch=8, spread=3.0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_classes, batch), (rng.normal(size=(batch, num_classes)) * spread).astype(np.float32)


# ------------------------------------------------------------------ SimLoss
def test_dense_simloss_value_and_gradient_match_numpy():
    s = ordinal_similarity(7, 0.6)
    y, z = data(0, 7)
    value, grad = tf_value_and_grad(SimLoss(s), y, z)
    np.testing.assert_allclose(value, np_simloss(y, z, s.astype(np.float64)).mean(), rtol=1e-5)
    np.testing.assert_allclose(grad, np_simloss_grad(y, z, s.astype(np.float64)) / len(y), atol=1e-6)


def test_simloss_with_identity_equals_sparse_categorical_crossentropy():
    y, z = data(1, 9)
    weights = np.linspace(0.1, 1.0, len(y)).astype(np.float32)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    np.testing.assert_allclose(SimLoss(np.eye(9))(y, z, weights), ce(y, z, weights), rtol=1e-6)
    np.testing.assert_allclose(SimLoss(np.eye(9), reduction=None)(y, z),
                               keras.losses.sparse_categorical_crossentropy(y, z, from_logits=True), rtol=1e-6)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), beta=st.floats(0.1, 3.0),
       rule_distance=st.sampled_from([("exp", "path"), ("exp", "lca_height"), ("linear", "lca_height")]))
def test_factorised_simloss_equals_dense_on_random_ragged_trees(seed, beta, rule_distance, schedule):
    rule, distance = rule_distance
    h = random_tree(seed)
    y, z = data(seed, h.num_classes)
    s = tree_similarity(h, rule, beta, distance)
    factorised = SimLoss.from_hierarchy(h, beta=beta, rule=rule, distance=distance, reduction=None)
    dense = SimLoss(s, reduction=None)
    value, grad = tf_value_and_grad(factorised, y, z)
    np.testing.assert_allclose(value, dense(y, z).numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(value, np_simloss(y, z, s.astype(np.float64)), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(grad, np_simloss_grad(y, z, s.astype(np.float64)), atol=1e-5)


def test_linear_rule_factorises_on_uniform_trees_and_is_refused_on_ragged_ones():
    y, z = data(2, UNIFORM.num_classes)
    s = tree_similarity(UNIFORM, "linear")
    np.testing.assert_allclose(SimLoss.from_hierarchy(UNIFORM, rule="linear", reduction=None)(y, z),
                               np_simloss(y, z, s.astype(np.float64)), atol=1e-5)
    ragged = Hierarchy.from_paths(["a/x", "a/y", "b"])
    with pytest.raises(ValueError, match="ragged.*dense"):
        SimLoss.from_hierarchy(ragged, rule="linear")


def test_tree_factors_reconstruct_tree_similarity():
    for seed in range(5):
        h = random_tree(seed, num_classes=15)
        for rule, distance in [("exp", "path"), ("exp", "lca_height"), ("linear", "lca_height")]:
            f = tree_factors(h, rule, 0.7, distance)
            np.testing.assert_allclose(f.dense(h), tree_similarity(h, rule, 0.7, distance), atol=1e-6)
            np.testing.assert_allclose(f.row_sums(h), tree_similarity(h, rule, 0.7, distance).sum(1), rtol=1e-5)
            assert np.all(f.weights >= 0)


def test_one_hot_and_column_targets_equal_integer_targets():
    h = random_tree(4)
    y, z = data(4, h.num_classes)
    one_hot = np.eye(h.num_classes, dtype=np.float32)[y]
    for loss in (SimLoss.from_hierarchy(h), SimLoss(tree_similarity(h)), HierarchicalCrossEntropy(h, 0.3),
                 SoftLabelCrossEntropy(h, 2.0)):
        expected = float(loss(y, z))
        assert float(loss(one_hot, z)) == pytest.approx(expected, rel=1e-6)
        assert float(loss(y[:, None].astype(np.float32), z)) == pytest.approx(expected, rel=1e-6)


def test_extreme_logits_give_finite_losses_and_gradients(schedule):
    h = random_tree(6)
    z = np.zeros((2, h.num_classes), dtype=np.float32)
    z[:, 0], z[:, 1] = 3000.0, -3000.0
    y = np.array([1, 1])
    for loss in (SimLoss.from_hierarchy(h), SimLoss(tree_similarity(h)), HierarchicalCrossEntropy(h, 0.5),
                 SoftLabelCrossEntropy(h, 1.0)):
        value, grad = tf_value_and_grad(loss, y, z)
        assert np.isfinite(value) and value > 0
        assert np.all(np.isfinite(grad))


def test_from_logits_false_uses_probabilities():
    h = random_tree(7)
    y, z = data(7, h.num_classes, spread=1.0)
    p = softmax(z).astype(np.float32)
    for loss_class in (lambda **k: SimLoss.from_hierarchy(h, **k), lambda **k: HierarchicalCrossEntropy(h, **k)):
        np.testing.assert_allclose(loss_class(from_logits=False)(y, p), loss_class()(y, z), rtol=1e-5)


# ---------------------------------------------------------------- HXE
@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.5])
def test_hxe_matches_path_enumeration_and_numeric_gradient(alpha, schedule):
    h = random_tree(8, num_classes=10)
    y, z = data(8, h.num_classes, batch=5)
    loss = HierarchicalCrossEntropy(h, alpha, reduction="sum")
    value, grad = tf_value_and_grad(loss, y, z)
    np.testing.assert_allclose(value, np_hxe(y, z, h, alpha).sum(), rtol=1e-5)
    np.testing.assert_allclose(grad, numeric_grad(lambda v: np_hxe(y, v, h, alpha).sum(), z), atol=1e-4)


def test_hxe_with_alpha_zero_is_cross_entropy():
    h = random_tree(9)
    y, z = data(9, h.num_classes)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    np.testing.assert_allclose(HierarchicalCrossEntropy(h, 0.0)(y, z), ce(y, z), rtol=1e-5)


# ---------------------------------------------------------- soft labels
@pytest.mark.parametrize("distance", ["lca_height", "path"])
def test_soft_labels_match_numpy(distance, schedule):
    h = random_tree(10)
    y, z = data(10, h.num_classes)
    beta = 1.3
    q = np.exp(-beta * h.distance_matrix(distance).astype(np.float64))[y]
    q /= q.sum(axis=1, keepdims=True)
    p = softmax(z)
    loss = SoftLabelCrossEntropy(h, beta, distance=distance, reduction=None)
    value, grad = tf_value_and_grad(loss, y, z)
    np.testing.assert_allclose(value, -(q * np.log(p)).sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(grad, p - q, atol=1e-5)


# ------------------------------------------------------------------- CORR
def test_corr_loss_sums_one_minus_cosine_and_offers_the_mean():
    rng = np.random.default_rng(11)
    cos = rng.uniform(-1, 1, size=(6, 4)).astype(np.float32)
    y = rng.integers(0, 4, 6)
    expected = (1 - cos[np.arange(6), y]).sum()
    np.testing.assert_allclose(CORRLoss()(y, cos), expected, rtol=1e-6)
    np.testing.assert_allclose(CORRLoss(reduction="sum_over_batch_size")(y, cos), expected / 6, rtol=1e-6)
    np.testing.assert_allclose(CORRLoss(scale=10.0)(y, 10 * cos), expected, rtol=1e-5)
    value, grad = tf_value_and_grad(CORRLoss(), y, cos)
    np.testing.assert_allclose(grad, -np.eye(4)[y], atol=1e-7)


# ------------------------------------------------------------- bad input
def test_bad_similarity_matrices_are_rejected():
    with pytest.raises(ValueError, match="square"):
        SimLoss(np.ones((3, 4)))
    bad = np.eye(3)
    bad[0, 1] = 1.5
    with pytest.raises(ValueError, match=r"\[0, 1\] = 1.5.*outside"):
        SimLoss(bad)
    with pytest.raises(ValueError, match="diagonal"):
        SimLoss(np.full((3, 3), 0.5))
    with pytest.raises(ValueError, match="exactly one"):
        SimLoss()
    with pytest.raises(TypeError, match="Hierarchy"):
        HierarchicalCrossEntropy("not a tree")


def test_label_out_of_range_and_class_count_mismatch():
    h = random_tree(12)
    loss = SimLoss.from_hierarchy(h)
    z = np.zeros((2, h.num_classes), dtype=np.float32)
    with pytest.raises(ValueError, match=f"SimLoss: label {h.num_classes} is outside"):
        loss(np.array([0, h.num_classes]), z)
    with pytest.raises(ValueError, match="label -1"):
        HierarchicalCrossEntropy(h)(np.array([-1, 0]), z)
    with pytest.raises(ValueError, match="num_classes mismatch"):
        loss(np.array([0, 1]), np.zeros((2, h.num_classes + 1), dtype=np.float32))

    @tf.function
    def traced(labels):
        return loss(labels, z)

    with pytest.raises(tf.errors.InvalidArgumentError, match="SimLoss: a label is outside"):
        traced(tf.constant([0, 99]))


# -------------------------------------------------- serialisation, dtypes
LOSSES = {
    "dense": lambda h: SimLoss(tree_similarity(h, "exp", 0.5)),
    "factorised": lambda h: SimLoss.from_hierarchy(h, beta=0.5, distance="lca_height"),
    "hxe": lambda h: HierarchicalCrossEntropy(h, alpha=0.3, reduction="sum"),
    "soft": lambda h: SoftLabelCrossEntropy(h, beta=4.0, distance="path"),
    "corr": lambda h: CORRLoss(scale=2.0),
}


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_config_round_trip_gives_the_same_loss(kind):
    h = random_tree(13)
    loss = LOSSES[kind](h)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss)
    y, z = data(13, h.num_classes)
    np.testing.assert_allclose(restored(y, z), loss(y, z), rtol=1e-6)
    config = loss.get_config()
    assert type(loss).from_config(config).get_config() == config


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_half_precision_logits_give_float32_losses(kind):
    h = random_tree(14)
    loss = LOSSES[kind](h)
    y, z = data(14, h.num_classes)
    for dtype in ("float16", "bfloat16"):
        value = loss(y, tf.cast(z, dtype))
        assert value.dtype == tf.float32 and np.isfinite(value.numpy())
