"""keras_hier.tree_sums (node, path and log-sum-exp sums over a tree) against NumPy references."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

from keras_hier import Hierarchy
from conftest import random_tree
from keras_hier import tree_sums as kh_ops


pytestmark = pytest.mark.usefixtures("schedule")


def reference_node_sums(values, h):
    out = np.zeros((values.shape[0], h.num_node_ids))
    for node in range(h.num_node_ids):
        members = np.flatnonzero((h.node_ids == node).any(axis=1))
        out[:, node] = values[:, members].sum(axis=1)
    return out


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 4))
def test_node_sums_matches_reference_on_random_ragged_trees(seed, batch):
    h = random_tree(seed)
    values = np.random.default_rng(seed).normal(size=(batch, h.num_classes)).astype(np.float32)
    got = ops.convert_to_numpy(kh_ops.node_sums(values, h))
    np.testing.assert_allclose(got, reference_node_sums(values, h), rtol=1e-5, atol=1e-5)


def test_node_sums_uniform_tree_and_parent_dominates_child():
    h = Hierarchy.from_paths(["a/b/x", "a/b/y", "a/c/z", "d/e/w"])
    p = np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    sums = ops.convert_to_numpy(kh_ops.node_sums(p, h))
    np.testing.assert_allclose(sums, reference_node_sums(p, h), atol=1e-6)
    for c in range(4):
        chain = sums[0, h.node_ids[c]]
        assert np.all(np.diff(chain) <= 1e-7)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_path_sums_pick_each_samples_path_nodes(seed):
    h = random_tree(seed)
    values = np.random.default_rng(0).random((5, h.num_classes)).astype(np.float32)
    labels = np.array([0, 3, 5, 7, 11])
    got = ops.convert_to_numpy(kh_ops.path_sums(values, labels, h))
    ref = reference_node_sums(values, h)
    np.testing.assert_allclose(got, np.take_along_axis(ref, h.node_ids[labels], axis=1), rtol=1e-5)


def test_node_logsumexp_is_stable():
    h = random_tree(5)
    logits = np.random.default_rng(1).normal(size=(3, h.num_classes)) * 300
    got = ops.convert_to_numpy(kh_ops.node_logsumexp(logits.astype(np.float32), h))
    ref = np.full((3, h.num_node_ids), -np.inf)
    for node in range(h.num_node_ids):
        members = np.flatnonzero((h.node_ids == node).any(axis=1))
        m = logits[:, members].max(axis=1)
        ref[:, node] = m + np.log(np.exp(logits[:, members] - m[:, None]).sum(axis=1))
    finite = ref > logits.max(axis=1, keepdims=True) - 80
    np.testing.assert_allclose(got[finite], ref[finite], rtol=1e-5, atol=1e-3)
    assert np.all(np.isfinite(got[:, : h.num_nodes(0)]) | ~finite[:, : h.num_nodes(0)])


@pytest.mark.parametrize("paths", [
    # the shallowest branching nodes have no class child (direct sums shorter than M, zero-padded)
    ["a/b/x", "a/b/y", "a/c/z", "a/c/w", "d/e/u", "d/e/v", "d/f/s", "d/f/t/q", "d/f/t/r"],
    # classes under the root with no branching ancestor, and a class under a chain
    ["x", "y", "a/b/z", "a/b/w", "c/d/e/v"],
])
def test_node_sums_and_gradient_when_direct_segments_are_missing(paths):
    import tensorflow as tf

    h = Hierarchy.from_paths(paths)
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, h.num_classes)).astype(np.float32)
    weights = rng.normal(size=(3, h.num_node_ids)).astype(np.float32)
    x = tf.constant(values)
    with tf.GradientTape() as tape:
        tape.watch(x)
        sums = kh_ops.node_sums(x, h)
        weighted = tf.reduce_sum(sums * weights)
    np.testing.assert_allclose(sums.numpy(), reference_node_sums(values, h), rtol=1e-5, atol=1e-5)
    traced = tf.function(lambda v: kh_ops.node_sums(v, h), input_signature=[tf.TensorSpec([None, h.num_classes])])
    np.testing.assert_allclose(traced(x).numpy(), sums.numpy(), rtol=1e-6, atol=1e-6)
    membership = reference_node_sums(np.eye(h.num_classes), h)  # [C, nodes]: 1 where the class is under the node
    np.testing.assert_allclose(tape.gradient(weighted, x).numpy(), weights @ membership.T, rtol=1e-5, atol=1e-5)
    labels = np.arange(h.num_classes) % h.num_classes
    path, total = kh_ops.path_sums(values[:1].repeat(h.num_classes, 0), labels, h, with_total=True)
    ref = reference_node_sums(values[:1], h)[0]
    np.testing.assert_allclose(ops.convert_to_numpy(path), ref[h.node_ids], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ops.convert_to_numpy(total), np.full(h.num_classes, values[0].sum()), rtol=1e-5,
                               atol=1e-5)


def test_tree_plan_is_cached_per_hierarchy():
    h = random_tree(2)
    assert kh_ops.tree_plan(h) is kh_ops.tree_plan(h)
    plan = kh_ops.tree_plan(h)
    assert kh_ops.tree_plan(plan) is plan




@pytest.mark.parametrize("seed", [0, 1])
def test_empty_batches_give_empty_sums(seed):
    h = random_tree(seed)
    empty = np.zeros((0, h.num_classes), dtype=np.float32)
    assert ops.convert_to_numpy(kh_ops.node_sums(empty, h)).shape == (0, h.num_node_ids)
    assert ops.convert_to_numpy(kh_ops.path_sums(empty, np.zeros((0,), np.int32), h)).shape == (0, h.depth)
    assert ops.convert_to_numpy(kh_ops.node_logsumexp(empty, h)).shape == (0, h.num_node_ids)


def test_plan_tables_follow_the_hierarchy_tables():
    h = random_tree(7, num_classes=30)
    plan = kh_ops.tree_plan(h)
    np.testing.assert_array_equal(plan.offsets, h.level_offsets)
    # every node's sum is a branching node's or one class's, and the classes under it agree
    for level in range(h.depth):
        for node in range(h.num_nodes(level)):
            node_id = h.level_offsets[level] + node
            members = np.flatnonzero(h.ancestors(level) == node)
            if plan.node_branch[node_id] < 0:
                assert members.tolist() == [plan.node_class[node_id]]
            else:
                assert len(members) >= 2 or h.num_classes == 1


FUSED_TREES = [
    ["a/b/x", "a/b/y", "a/c/z", "a/c/w", "d/e/u", "d/e/v", "d/f/s", "d/f/t/q", "d/f/t/r"],
    ["x", "y", "a/b/z", "a/b/w", "c/d/e/v"],  # classes with no branching ancestor, a chain
    ["p/q/r/s", "p/q/r/t", "p/u"],  # one top node: every class under a chain from the top
]


def reference_path_sums(values, labels, h, scale):
    """(path, scaled total, total) of values * scale, from the node ids alone (float64)."""
    scaled = values * scale
    nodes = reference_node_sums(scaled, h)
    path = np.stack([nodes[b, h.node_ids[y]] for b, y in enumerate(labels)])
    return path, scaled.sum(axis=1), values.sum(axis=1)


def reference_softmax_path_sums(logits, labels, h, scale):
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    path, scaled_total, _ = reference_path_sums(p, labels, h, scale)
    return path, scaled_total, np.log(p[np.arange(len(labels)), labels])


def numeric_gradient(function, x, weights, step=1e-6):
    """d/dx of sum_k <weights_k, function(x)_k>, central differences in float64."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += step
        minus[index] -= step
        grad[index] = sum(np.sum(w * (a - b)) for w, a, b in zip(weights, function(plus), function(minus))) / (2 * step)
    return grad


@pytest.mark.parametrize("paths", FUSED_TREES + [None])
@pytest.mark.parametrize("scaled", [False, True])
def test_scaled_and_softmax_path_sums_and_their_gradients_match_numpy(paths, scaled, schedule):
    import tensorflow as tf

    h = random_tree(11, num_classes=14) if paths is None else Hierarchy.from_paths(paths)
    rng = np.random.default_rng(1)
    batch = 4
    scale = rng.choice([0.5, 1.0, 2.0], h.num_classes) if scaled else np.ones(h.num_classes)
    labels = rng.integers(0, h.num_classes, batch)
    values = rng.normal(size=(batch, h.num_classes))
    weights = [rng.normal(size=(batch, h.depth)), rng.normal(size=batch), rng.normal(size=batch)]

    x = tf.constant(values, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        got = kh_ops.scaled_path_sums(x, tf.constant(labels, tf.int32), h, scale.astype(np.float32) if scaled else None)
        objective = sum(tf.reduce_sum(w * g) for w, g in zip(weights, got))
    ref = reference_path_sums(values, labels, h, scale)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tape.gradient(objective, x).numpy(),
                               numeric_gradient(lambda v: reference_path_sums(v, labels, h, scale), values, weights),
                               rtol=1e-4, atol=1e-4)

    assert kh_ops.fused_path_sums(h) == (schedule == "cascade")
    if schedule != "cascade":  # the softmax form is the fused TensorFlow path only
        return
    logits = values * 3
    z = tf.constant(logits, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(z)
        got = kh_ops.softmax_path_sums(z, tf.constant(labels, tf.int32), h, scale.astype(np.float32))
        objective = sum(tf.reduce_sum(w * g) for w, g in zip(weights, got))
    ref = reference_softmax_path_sums(logits, labels, h, scale)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-5)
    numeric = numeric_gradient(lambda v: reference_softmax_path_sums(v, labels, h, scale), logits, weights)
    np.testing.assert_allclose(tape.gradient(objective, z).numpy(), numeric, rtol=1e-4, atol=1e-4)


def test_softmax_path_sums_keep_log_target_exact_when_it_underflows(schedule):
    import tensorflow as tf

    h = Hierarchy.from_paths(FUSED_TREES[0])
    if schedule != "cascade":
        assert not kh_ops.fused_path_sums(h)
        return
    logits = np.zeros((2, h.num_classes), np.float32)
    logits[:, 0] = 200.0  # p of every other class underflows to 0 in float32
    labels = np.array([3, 0])
    path, _, log_target = kh_ops.softmax_path_sums(tf.constant(logits), tf.constant(labels, tf.int32), h)
    expected = logits[np.arange(2), labels] - (200.0 + np.log1p((h.num_classes - 1) * np.exp(-200.0)))
    np.testing.assert_allclose(log_target.numpy(), expected, rtol=1e-6)
    assert path.numpy()[0, -1] == 0.0 and np.all(np.isfinite(path.numpy()))


def test_fused_losses_train_inside_keras_fit(schedule):
    """The fused path (cascade schedule) inside `model.fit`'s traced step, with a partial last batch:
    the factorised SimLoss evaluates to the dense one on the trained model."""
    import keras

    from keras_hier import HierarchicalCrossEntropy, SimLoss

    h = random_tree(5, num_classes=30)
    assert kh_ops.fused_path_sums(h) == (schedule == "cascade")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    y = rng.integers(0, h.num_classes, 50)
    for loss in (SimLoss.from_hierarchy(h, beta=1.0), HierarchicalCrossEntropy(h)):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(h.num_classes)])
        model.compile(optimizer="adam", loss=loss)
        before = model.get_weights()[0].copy()
        history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        assert not np.allclose(before, model.get_weights()[0])
    dense = SimLoss(h.similarity_matrix("exp", beta=1.0))
    logits = model.predict(x, verbose=0)
    model.compile(loss=SimLoss.from_hierarchy(h, beta=1.0))
    np.testing.assert_allclose(model.evaluate(x, y, batch_size=16, verbose=0), float(dense(y, logits)), rtol=1e-4)
