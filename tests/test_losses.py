"""Losses against independent NumPy implementations of their published definitions.

References are written from the path tuples alone (node = path prefix), not
from keras_hier's tables: HXE as the "Making Better Mistakes" code computes it
(depth weights normalised over every node, root included) and as the paper
prints it (height weights), soft labels with the code's max-distance
normalisation, SimLoss for class ids and for target distributions.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import random_tree
from keras_hier import Hierarchy, hierarchies
from keras_hier.losses import (CORRLoss, HierarchicalCrossEntropy, SimLoss, SoftLabelCrossEntropy,
                               hxe_level_weights)
from keras_hier.similarity import ordinal_similarity, tree_similarity
from roundtrip import make_hard_tree, run_serialization_tests

UNIFORM = Hierarchy.from_paths(["a/b/x", "a/b/y", "a/c/z", "a/c/v", "d/e/w", "d/f/u"])
CIFAR100 = hierarchies.cifar100()


# ------------------------------------------------------------ references
def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def under(h, prefix):
    """bool [C]: the classes whose path starts with `prefix`."""
    return np.array([path[: len(prefix)] == prefix for path in h.paths])


def all_nodes(h):
    """Every node of the tree as a path prefix, the root () included."""
    return {path[:k] for path in h.paths for k in range(len(path) + 1)}


def heights(h):
    out = {}
    for path in h.paths:
        for k in range(len(path) + 1):
            out[path[:k]] = max(out.get(path[:k], 0), len(path) - k)
    return out


def hxe_weights(h, alpha, weighting):
    """lambda(node) as the published code (depth, normalised) or the printed formula (height)."""
    nodes = all_nodes(h)
    if weighting == "height":
        height = heights(h)
        return {n: np.exp(-alpha * height[n]) for n in nodes}
    total = sum(np.exp(-alpha * len(n)) for n in nodes)
    return {n: np.exp(-alpha * len(n)) / total for n in nodes}


def np_hxe(y, z, h, alpha, weighting="depth"):
    """HXE values [B] and their gradient [B, C]: -sum_n lambda(n) log(P(n) / P(parent n))."""
    p = softmax(z)
    lam = hxe_weights(h, alpha, weighting)
    values, grads = np.zeros(len(y)), np.zeros_like(p)
    for b, label in enumerate(y):
        path = h.paths[label]
        for k in range(1, len(path) + 1):
            node, parent = under(h, path[:k]), under(h, path[: k - 1])
            pn, pp = p[b, node].sum(), p[b, parent].sum()
            values[b] -= lam[path[:k]] * np.log(pn / pp)
            grads[b] += lam[path[:k]] * (p[b] * parent / pp - p[b] * node / pn)
    return values, grads


def lca_heights(h):
    """[C, C] height of the lowest common ancestor (0 on the diagonal), from the paths."""
    height = heights(h)
    c = h.num_classes
    out = np.zeros((c, c))
    for a in range(c):
        for b in range(c):
            if a != b:
                pa, pb = h.paths[a], h.paths[b]
                k = 0
                while k < min(len(pa), len(pb)) and pa[k] == pb[k]:
                    k += 1
                out[a, b] = height[pa[:k]]
    return out


def soft_targets(h, beta, normalize=True):
    d = lca_heights(h)
    q = np.exp(-beta * d / (d.max() if normalize else 1.0))
    return q / q.sum(axis=1, keepdims=True)


def np_simloss(y, z, s):
    return -np.log((s[y] * softmax(z)).sum(axis=1))


def np_simloss_grad(y, z, s):
    p = softmax(z)
    weighted = s[y] * p
    return p - weighted / weighted.sum(axis=1, keepdims=True)


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


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), beta=st.floats(0.1, 3.0),
       rule_distance=st.sampled_from([("exp", "path"), ("exp", "lca_height"), ("linear", "lca_height")]))
def test_factorised_simloss_equals_dense_on_random_ragged_trees(seed, beta, rule_distance, schedule):
    rule, distance = rule_distance
    h = random_tree(seed)
    y, z = data(seed, h.num_classes)
    s = tree_similarity(h, rule, beta, distance)
    factorised = SimLoss.from_hierarchy(h, beta=beta, rule=rule, distance=distance, reduction=None)
    value, grad = tf_value_and_grad(factorised, y, z)
    np.testing.assert_allclose(value, SimLoss(s, reduction=None)(y, z).numpy(), atol=1e-5, rtol=1e-5)
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


# ---------------------------------------------------------------- HXE
@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_hxe_default_is_the_published_code_on_cifar100(alpha):
    y, z = data(20, 100, batch=12)
    value, grad = tf_value_and_grad(HierarchicalCrossEntropy(CIFAR100, alpha, reduction=None), y, z)
    ref, ref_grad = np_hxe(y, z, CIFAR100, alpha, "depth")
    np.testing.assert_allclose(value, ref, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-6)


def test_hxe_height_weighting_is_the_printed_formula_on_cifar100():
    y, z = data(21, 100, batch=12)
    loss = HierarchicalCrossEntropy(CIFAR100, 0.5, weighting="height", reduction=None)
    value, grad = tf_value_and_grad(loss, y, z)
    ref, ref_grad = np_hxe(y, z, CIFAR100, 0.5, "height")
    np.testing.assert_allclose(value, ref, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-6)
    # the two conventions run in opposite directions: they differ clearly at alpha = 0.5
    default = HierarchicalCrossEntropy(CIFAR100, 0.5, reduction=None)(y, z).numpy()
    assert np.abs(default - value).mean() > 0.5


@pytest.mark.parametrize("weighting", ["depth", "height"])
@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.5])
def test_hxe_on_a_ragged_tree_matches_numpy_and_numeric_gradient(alpha, weighting, schedule):
    h = random_tree(8, num_classes=10)
    y, z = data(8, h.num_classes, batch=5)
    loss = HierarchicalCrossEntropy(h, alpha, weighting=weighting, reduction="sum")
    value, grad = tf_value_and_grad(loss, y, z)
    ref, ref_grad = np_hxe(y, z, h, alpha, weighting)
    np.testing.assert_allclose(value, ref.sum(), rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-5)
    np.testing.assert_allclose(grad, numeric_grad(lambda v: np_hxe(y, v, h, alpha, weighting)[0].sum(), z),
                               atol=1e-4)


def test_hxe_weights_of_a_shallow_leaf():
    h = Hierarchy.from_paths(["a/x", "a/y", "b"])  # b: a leaf at depth 1 beside depth-2 leaves
    alpha = 0.7
    z_total = 1 + 2 * np.exp(-alpha) + 2 * np.exp(-2 * alpha)  # root; a, b; a/x, a/y
    expected = np.array([[np.exp(-alpha), np.exp(-2 * alpha)], [np.exp(-alpha), np.exp(-2 * alpha)],
                         [np.exp(-alpha), 0.0]]) / z_total
    np.testing.assert_allclose(hxe_level_weights(h, alpha), expected, rtol=1e-6)
    # printed form: height(a) = 1, height(b) = height(x) = 0
    np.testing.assert_allclose(hxe_level_weights(h, alpha, "height"),
                               [[np.exp(-alpha), 1.0], [np.exp(-alpha), 1.0], [1.0, 0.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="weighting"):
        HierarchicalCrossEntropy(h, 0.1, weighting="printed")


def test_hxe_height_weighting_with_alpha_zero_is_cross_entropy():
    h = random_tree(9)
    y, z = data(9, h.num_classes)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    np.testing.assert_allclose(HierarchicalCrossEntropy(h, 0.0, weighting="height")(y, z), ce(y, z), rtol=1e-5)


# ---------------------------------------------------------- soft labels
@pytest.mark.parametrize("beta", [4.0, 10.0])
def test_soft_labels_default_is_the_published_code_on_cifar100(beta):
    y, z = data(22, 100, batch=12)
    q = soft_targets(CIFAR100, beta)[y]
    p = softmax(z)
    value, grad = tf_value_and_grad(SoftLabelCrossEntropy(CIFAR100, beta, reduction=None), y, z)
    np.testing.assert_allclose(value, -(q * np.log(p)).sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(grad, p - q, atol=1e-6)
    # the code's KLDiv(mean) is (CE - H(q)) / C: the same minimiser, a constant scale
    kl_mean = (q * (np.log(q) - np.log(p))).mean()
    np.testing.assert_allclose((value.mean() + (q * np.log(q)).sum(axis=1).mean()) / 100, kl_mean, rtol=1e-5)


@pytest.mark.parametrize("distance", ["lca_height", "path"])
@pytest.mark.parametrize("normalize", [True, False])
def test_soft_labels_on_a_ragged_tree(distance, normalize, schedule):
    h = random_tree(10)
    y, z = data(10, h.num_classes)
    beta = 1.3
    d = h.distance_matrix(distance).astype(np.float64) if distance == "path" else lca_heights(h)
    q = np.exp(-beta * d / (d.max() if normalize else 1.0))[y]
    q /= q.sum(axis=1, keepdims=True)
    p = softmax(z)
    loss = SoftLabelCrossEntropy(h, beta, distance=distance, normalize=normalize, reduction=None)
    value, grad = tf_value_and_grad(loss, y, z)
    np.testing.assert_allclose(value, -(q * np.log(p)).sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(grad, p - q, atol=1e-5)


# ------------------------------------------------------- soft targets
def test_soft_targets_give_each_loss_its_expectation(schedule):
    h = random_tree(15, num_classes=9)
    y, z = data(15, h.num_classes, batch=6)
    rng = np.random.default_rng(15)
    q = 0.8 * np.eye(h.num_classes)[y] + 0.2 * rng.dirichlet(np.ones(h.num_classes), size=len(y))
    q = q.astype(np.float32)
    p = softmax(z)
    s = tree_similarity(h, "exp", 0.8).astype(np.float64)
    expected_simloss = -np.log(((q @ s) * p).sum(axis=1))
    for loss in (SimLoss.from_hierarchy(h, beta=0.8, reduction=None), SimLoss(s, reduction=None)):
        np.testing.assert_allclose(loss(q, z), expected_simloss, rtol=1e-5)
    per_class = np.stack([np_hxe(np.full(len(y), c), z, h, 0.4)[0] for c in range(h.num_classes)], axis=1)
    np.testing.assert_allclose(HierarchicalCrossEntropy(h, 0.4, reduction=None)(q, z), (q * per_class).sum(1),
                               rtol=1e-5)
    target = q @ soft_targets(h, 2.0)
    np.testing.assert_allclose(SoftLabelCrossEntropy(h, 2.0, reduction=None)(q, z),
                               -(target * np.log(p)).sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(CORRLoss(reduction=None)(q, z / 10), 1 - (q * z / 10).sum(axis=1), rtol=1e-5)
    # gradients of the soft forms
    value, grad = tf_value_and_grad(SimLoss.from_hierarchy(h, beta=0.8, reduction="sum"), q, z)
    np.testing.assert_allclose(grad, numeric_grad(lambda v: -np.log(((q @ s) * softmax(v)).sum(1)).sum(), z),
                               atol=1e-4)
    value, grad = tf_value_and_grad(HierarchicalCrossEntropy(h, 0.4, reduction="sum"), q, z)
    ref = sum(q[:, c:c + 1] * np_hxe(np.full(len(y), c), z, h, 0.4)[1] for c in range(h.num_classes))
    np.testing.assert_allclose(grad, ref, atol=1e-5)


def test_one_hot_and_column_targets_equal_integer_targets():
    h = random_tree(4)
    y, z = data(4, h.num_classes)
    one_hot = np.eye(h.num_classes, dtype=np.float32)[y]
    for loss in (SimLoss.from_hierarchy(h), SimLoss(tree_similarity(h)), HierarchicalCrossEntropy(h, 0.3),
                 SoftLabelCrossEntropy(h, 2.0)):
        expected = float(loss(y, z))
        assert float(loss(one_hot, z)) == pytest.approx(expected, rel=1e-6)
        assert float(loss(y[:, None].astype(np.float32), z)) == pytest.approx(expected, rel=1e-6)
        with pytest.raises(ValueError, match="target row 1 is not a class distribution"):
            loss(np.concatenate([one_hot[:1], np.zeros_like(one_hot[:1])]), z[:2])


# ------------------------------------------------- logits or probabilities
def test_softmax_outputs_are_scored_through_their_logits():
    h = random_tree(7)
    y, z = data(7, h.num_classes, spread=1.0)
    marked = keras.activations.softmax(tf.constant(z))
    assert hasattr(marked, "_keras_logits")
    for make in (lambda **k: SimLoss.from_hierarchy(h, **k), lambda **k: SimLoss(tree_similarity(h), **k),
                 lambda **k: HierarchicalCrossEntropy(h, **k), lambda **k: SoftLabelCrossEntropy(h, **k)):
        expected = make(from_logits=True)(y, z)
        np.testing.assert_allclose(make()(y, marked), expected, rtol=1e-6)
        np.testing.assert_allclose(make(from_logits=False)(y, marked), expected, rtol=1e-6)
        np.testing.assert_allclose(make(from_logits=False)(y, softmax(z).astype(np.float32)), expected, rtol=1e-5)
        with pytest.warns(UserWarning, match="softmax"):
            np.testing.assert_allclose(make(from_logits=True)(y, marked), expected, rtol=1e-6)


def test_a_sequential_softmax_model_is_not_mis_scored():
    s = tree_similarity(UNIFORM, "exp", 1.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 5)).astype(np.float32)
    y = rng.integers(0, UNIFORM.num_classes, 32)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(UNIFORM.num_classes, activation="softmax")])
    model.compile(loss=SimLoss(s))
    logits = x @ model.layers[0].kernel.numpy() + model.layers[0].bias.numpy()
    expected = np_simloss(y, logits, s.astype(np.float64)).mean()
    np.testing.assert_allclose(model.evaluate(x, y, verbose=0, batch_size=32), expected, rtol=1e-5)


# ------------------------------------------------------------------- CORR
def test_corr_loss_sums_one_minus_cosine_and_checks_the_width():
    rng = np.random.default_rng(11)
    cos = rng.uniform(-1, 1, size=(6, 4)).astype(np.float32)
    y = rng.integers(0, 4, 6)
    expected = (1 - cos[np.arange(6), y]).sum()
    np.testing.assert_allclose(CORRLoss()(y, cos), expected, rtol=1e-6)
    np.testing.assert_allclose(CORRLoss(reduction="sum_over_batch_size")(y, cos), expected / 6, rtol=1e-6)
    np.testing.assert_allclose(CORRLoss(scale=10.0)(y, 10 * cos), expected, rtol=1e-5)
    value, grad = tf_value_and_grad(CORRLoss(), y, cos)
    np.testing.assert_allclose(grad, -np.eye(4)[y], atol=1e-7)
    with pytest.raises(ValueError, match="CORRLoss: predictions have 3 columns.*num_classes=4"):
        CORRLoss(num_classes=4)(y % 3, cos[:, :3])
    with pytest.raises(ValueError, match="CORRLoss: label 4"):
        CORRLoss()(np.array([4]), cos[:1])


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


def test_bad_labels_raise_eagerly_and_in_graphs():
    h = random_tree(12)
    loss = SimLoss.from_hierarchy(h)
    z = np.zeros((2, h.num_classes), dtype=np.float32)
    with pytest.raises(ValueError, match=f"SimLoss: label {h.num_classes} at index 1 is outside"):
        loss(np.array([0, h.num_classes]), z)
    with pytest.raises(ValueError, match="label -1"):
        HierarchicalCrossEntropy(h)(np.array([-1, 0]), z)
    with pytest.raises(ValueError, match="not a whole class id"):
        SoftLabelCrossEntropy(h)(np.array([0.0, 2.7], dtype=np.float32), z)
    with pytest.raises(ValueError, match="num_classes mismatch"):
        loss(np.array([0, 1]), np.zeros((2, h.num_classes + 1), dtype=np.float32))

    @tf.function
    def traced(labels):
        return loss(labels, z)

    with pytest.raises(tf.errors.InvalidArgumentError, match="SimLoss: a label is not a whole class id"):
        traced(tf.constant([0, 99]))


LOSSES = {
    "dense": lambda h: SimLoss(tree_similarity(h, "exp", 0.5)),
    "factorised": lambda h: SimLoss.from_hierarchy(h, beta=0.5, distance="lca_height"),
    "hxe": lambda h: HierarchicalCrossEntropy(h, alpha=0.3, reduction="sum"),
    "soft": lambda h: SoftLabelCrossEntropy(h, beta=4.0, distance="path"),
    "corr": lambda h: CORRLoss(scale=2.0),
}


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_bad_labels_under_xla_give_nan_and_an_empty_batch_gives_zero(kind):
    h = random_tree(16)
    loss = LOSSES[kind](h)
    y, z = data(16, h.num_classes, batch=4)
    compiled = tf.function(lambda labels, logits: loss(labels, logits), jit_compile=True)
    for labels in ([0, h.num_classes, 1, 2], [0, -1, 1, 2]):  # one compilation: same shapes and dtype
        assert np.isnan(compiled(tf.constant(labels, tf.int64), z).numpy())
    assert np.isfinite(compiled(tf.constant(y, tf.int64), z).numpy())
    if kind == "hxe":
        assert np.isnan(compiled(tf.constant([0.0, 1.5, 1.0, 2.0]), z).numpy())
    empty = np.zeros((0, h.num_classes), dtype=np.float32)
    assert float(loss(np.zeros((0,), dtype=np.int32), empty)) == 0.0
    assert float(tf.function(lambda a, b: loss(a, b))(tf.zeros((0,), tf.int32), empty)) == 0.0


def test_terminate_on_nan_stops_a_jit_compiled_fit_on_bad_labels():
    h = random_tree(17)
    rng = np.random.default_rng(17)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = rng.integers(0, h.num_classes, 64)
    y[40] = h.num_classes + 3
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(h.num_classes)])
    model.compile(optimizer="sgd", loss=HierarchicalCrossEntropy(h, 0.2), jit_compile=True)
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0, shuffle=False,
                        callbacks=[keras.callbacks.TerminateOnNaN()])
    assert len(history.history["loss"]) == 1 and np.isnan(history.history["loss"][0])


# -------------------------------------------------- serialisation, dtypes
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


def test_configs_are_compact():
    h = random_tree(14, num_classes=300, max_depth=6)
    s = tree_similarity(h, "exp", 1.0)
    dense = json.dumps(SimLoss(s).get_config())
    assert len(dense) < 4 * 300 * 300  # one base64 string (compressed here), not 90 000 JSON numbers
    noisy = np.clip(s + np.random.default_rng(0).uniform(0, 0.01, s.shape).astype(np.float32), 0, 1)
    np.fill_diagonal(noisy, 1.0)
    config = SimLoss(noisy).get_config()
    assert isinstance(config["similarity"]["data"], str) and len(json.dumps(config)) < 1.4 * 4 * 300 * 300
    np.testing.assert_array_equal(SimLoss.from_config(config).similarity, noisy)
    tree_config = SimLoss.from_hierarchy(h).get_config()
    assert isinstance(tree_config["hierarchy"]["tree"], str)


def test_dense_similarity_is_not_a_traced_constant():
    s = ordinal_similarity(1000, 0.9)
    loss = SimLoss(s)
    y, z = data(18, 1000, batch=4)
    traced = tf.function(lambda labels, logits: loss(labels, logits))
    graph = traced.get_concrete_function(tf.constant(y), tf.constant(z)).graph.as_graph_def()
    assert graph.ByteSize() < 1_000_000  # S alone is 4 MB


def test_keras_files_round_trip_in_a_fresh_process():
    h = make_hard_tree()
    y, z = data(19, h.num_classes, batch=8)
    q = (0.9 * np.eye(h.num_classes)[y] + 0.1 / h.num_classes).astype(np.float32)
    cases = [(LOSSES[kind](h), z, q if kind == "hxe" else y) for kind in sorted(LOSSES)]
    run_serialization_tests(cases)


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_half_precision_logits_give_float32_losses(kind):
    h = random_tree(14)
    loss = LOSSES[kind](h)
    y, z = data(14, h.num_classes)
    for dtype in ("float16", "bfloat16"):
        value = loss(y, tf.cast(z, dtype))
        assert value.dtype == tf.float32 and np.isfinite(value.numpy())


def test_soft_targets_bad_labels_and_empty_batches_under_jax():
    code = """
import numpy as np, jax, jax.numpy as jnp
from keras_hier import Hierarchy
from keras_hier.losses import SimLoss, HierarchicalCrossEntropy, SoftLabelCrossEntropy, CORRLoss
h = Hierarchy.from_paths(["a/b/x", "a/b/y", "a/c/z", "q", "d/e/f/w"])
z = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
q = (0.9 * np.eye(5)[[0, 2, 3, 4]] + 0.02).astype("float32")
for loss in [SimLoss.from_hierarchy(h), SimLoss(h.similarity_matrix()), HierarchicalCrossEntropy(h, 0.4),
             SoftLabelCrossEntropy(h, 2.0), CORRLoss()]:
    eager, jitted = float(loss(q, z)), float(jax.jit(lambda a, b: loss(a, b))(q, z))
    assert abs(eager - jitted) < 1e-5 and np.isfinite(eager), (loss, eager, jitted)
    assert np.isnan(float(jax.jit(lambda a, b: loss(a, b))(jnp.array([0, 7, 1, 2]), z)))
    assert np.all(np.isfinite(np.asarray(jax.grad(lambda v: loss(q, v))(jnp.asarray(z)))))
    assert float(loss(np.zeros((0,), "int32"), np.zeros((0, 5), "float32"))) == 0.0
    try:
        loss(np.array([0, 9, 1, 1]), z)
        raise AssertionError("no error")
    except ValueError as error:
        assert "label 9 at index 1 is outside" in str(error)
print("JAX-OK")
"""
    from roundtrip import run_fresh_python

    assert "JAX-OK" in run_fresh_python(code, env={"KERAS_BACKEND": "jax"}).stdout


def test_in_place_target_gradient_of_large_class_counts(monkeypatch):
    """The custom gradient used from `_CUSTOM_TARGET_WIDTH` classes on (forced here on a small tree)."""
    from keras_hier import losses

    monkeypatch.setattr(losses, "_CUSTOM_TARGET_WIDTH", 0)
    h = random_tree(23)
    y, z = data(23, h.num_classes)
    s = tree_similarity(h, "exp", 0.7).astype(np.float64)
    for loss in (SimLoss.from_hierarchy(h, beta=0.7, reduction=None), SimLoss(s, reduction=None)):
        value, grad = tf_value_and_grad(loss, y, z)
        np.testing.assert_allclose(value, np_simloss(y, z, s), rtol=1e-5)
        np.testing.assert_allclose(grad, np_simloss_grad(y, z, s), atol=1e-5)
    value, grad = tf_value_and_grad(HierarchicalCrossEntropy(h, 0.3, reduction="sum"), y, z)
    ref, ref_grad = np_hxe(y, z, h, 0.3)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-5)
    q = soft_targets(h, 1.0)[y]
    loss = SoftLabelCrossEntropy(h, 1.0, reduction="sum")

    @tf.function
    def traced(targets, logits):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            value = loss(targets, logits)
        return tape.gradient(value, logits)

    for targets in (y, np.eye(h.num_classes, dtype=np.float32)[y]):  # ids, and one-hot rows (inside a cond)
        np.testing.assert_allclose(traced(tf.constant(targets), tf.constant(z)).numpy(), softmax(z) - q, atol=1e-5)
