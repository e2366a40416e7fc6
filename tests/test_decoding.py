"""Decoders against straightforward NumPy references built from the class paths."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_hier import decoding, ops
from keras_hier.serving_graph import TENSORFLOW_OPS
from keras_hier.hierarchy import Hierarchy


# ------------------------------------------------------------------ fixtures
@st.composite
def hierarchies(draw, max_classes=9):
    """Random ragged trees: shared prefixes, repeated bare names, classes under classes."""
    count = draw(st.integers(1, max_classes))
    paths = []
    for index in range(count):
        if paths and draw(st.integers(0, 5)) == 0:
            prefix = draw(st.sampled_from(paths))  # a class that also gets a sub-class
        else:
            prefix = tuple(draw(st.lists(st.sampled_from(["a", "b", "other"]), max_size=3)))
        paths.append(prefix + (f"c{index}",))
    return Hierarchy(paths, [p[-1] for p in paths])


def probabilities(draw_seed, batch, num_classes, peaked=False):
    rng = np.random.default_rng(draw_seed)
    alpha = 0.3 if peaked else 1.0
    return rng.dirichlet(np.full(num_classes, alpha), size=batch).astype(np.float32)


def reference_marginals(p, h):
    """[B, C, depth]: P(ancestor of class c at level l), from the paths alone."""
    paths = h.paths
    out = np.zeros((p.shape[0], h.num_classes, h.depth), dtype=np.float64)
    for c, path in enumerate(paths):
        for level in range(h.depth):
            if level < len(path):
                under = [k for k, other in enumerate(paths) if other[:level + 1] == path[:level + 1]]
            else:
                under = [c]  # a shallow leaf is its own node below its depth
            out[:, c, level] = p[:, under].sum(axis=1)
    return out


RAGGED = Hierarchy.from_paths(["a/b/x", "a/b/y", "a/z", "q", "r/s/t/u", "r/s/v", "r/other/o1", "a/other/o2"])


# ------------------------------------------------------------------ marginals
@settings(max_examples=40, deadline=None)
@given(h=hierarchies(), seed=st.integers(0, 2**16))
def test_marginals_match_path_sums_and_node_sums(h, seed):
    p = probabilities(seed, 3, h.num_classes)
    marginals = np.asarray(decoding.node_marginals(p, h))
    reference = reference_marginals(p, h)
    for level in range(h.depth):
        np.testing.assert_allclose(marginals[:, h.node_ids[:, level]], reference[:, :, level], atol=1e-6)
    np.testing.assert_allclose(marginals, np.asarray(ops.node_sums(p, h)), atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(h=hierarchies(), seed=st.integers(0, 2**16))
def test_parent_marginal_never_below_child_exactly(h, seed):
    p = probabilities(seed, 4, h.num_classes, peaked=True)
    levels = [np.asarray(m) for m in decoding.level_marginals(p, h)]
    for level in range(1, h.depth):
        parent = np.asarray(h.ancestors(level - 1))
        child = np.asarray(h.ancestors(level))
        # no tolerance: bottom-up sums keep the order even in float32
        assert np.all(levels[level - 1][:, parent] >= levels[level][:, child])
    np.testing.assert_allclose(levels[0].sum(axis=1), 1.0, atol=1e-5)


# -------------------------------------------------------------- expected cost
@settings(max_examples=40, deadline=None)
@given(h=hierarchies(), seed=st.integers(0, 2**16), cost=st.sampled_from(decoding.COSTS))
def test_expected_cost_factorisation_equals_dense(h, seed, cost):
    p = probabilities(seed, 5, h.num_classes)
    dense = p.astype(np.float64) @ np.asarray(h.distance_matrix(cost), dtype=np.float64)
    np.testing.assert_allclose(np.asarray(decoding.expected_cost(p, h, cost=cost)), dense, atol=1e-5)


def test_expected_cost_picks_the_dense_minimiser():
    h = RAGGED
    p = probabilities(3, 200, h.num_classes)
    for cost in decoding.COSTS:
        dense = p.astype(np.float64) @ h.distance_matrix(cost)
        chosen = np.asarray(decoding.decode(np.log(p), h, "expected_cost", cost=cost)["class_ids"])
        np.testing.assert_allclose(dense[np.arange(len(p)), chosen], dense.min(axis=1), atol=1e-5)
    # a case where the two decoders disagree: mass spread over a sibling pair
    h = Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    p = np.array([[0.3, 0.3, 0.4]], dtype=np.float32)
    assert int(decoding.decode(p, h, from_logits=False)["class_ids"][0]) == 2
    assert int(decoding.decode(p, h, "expected_cost", from_logits=False)["class_ids"][0]) in (0, 1)


# ---------------------------------------------------------------------- decode
@pytest.mark.filterwarnings("ignore:You are using a softmax")  # one-class trees
@settings(max_examples=40, deadline=None)
@given(h=hierarchies(), seed=st.integers(0, 2**16), decoder=st.sampled_from(decoding.DECODERS),
       threshold=st.floats(0.05, 1.0), k=st.integers(1, 4))
def test_decode_is_consistent_with_the_tree(h, seed, decoder, threshold, k):
    p = probabilities(seed, 6, h.num_classes, peaked=True)
    out = {key: np.asarray(v) for key, v in
           decoding.decode(np.log(p), h, decoder, backoff_threshold=threshold, top_k=k).items()}
    ids = out["class_ids"]
    if decoder == "argmax":
        np.testing.assert_array_equal(p[np.arange(len(p)), ids], p.max(axis=1))
    reference = reference_marginals(p, h)
    for level in range(h.depth):
        np.testing.assert_array_equal(out["level_ids"][:, level], np.asarray(h.ancestors(level))[ids])
        np.testing.assert_allclose(out["level_scores"][:, level], reference[np.arange(len(p)), ids, level],
                                   atol=1e-6)
    np.testing.assert_allclose(out["scores"], p[np.arange(len(p)), ids], rtol=1e-5)
    # top-k: ranked by the decoder, first = the decision
    np.testing.assert_array_equal(out["top_k_ids"][:, 0], ids)
    assert out["top_k_ids"].shape == (len(p), min(k, h.num_classes))
    # back-off: the deepest real level reaching the threshold, never a node under it unless root
    for i, c in enumerate(ids):
        depth_c = int(h.leaf_depths[c])
        chain = reference[i, c, :depth_c]
        reaching = [level for level in range(depth_c) if chain[level] >= threshold - 1e-6]
        level = int(out["prediction_level"][i])
        if level == -1:
            assert chain[0] < threshold + 1e-6
            assert out["prediction_node"][i] == -1 and out["prediction_score"][i] == 1.0
        else:
            assert out["prediction_score"][i] >= threshold
            assert level == max(reaching)
            assert out["prediction_node"][i] == h.node_ids[c, level]


def test_top_k_ranking_follows_the_decoder():
    h = RAGGED
    p = probabilities(7, 50, h.num_classes)
    arg = decoding.decode(p, h, from_logits=False, top_k=4)
    np.testing.assert_array_equal(np.asarray(arg["top_k_ids"]), np.argsort(-p, axis=1, kind="stable")[:, :4])
    np.testing.assert_allclose(np.asarray(arg["top_k_scores"]), -np.sort(-p, axis=1)[:, :4], rtol=1e-6)
    exp = decoding.decode(p, h, "expected_cost", from_logits=False, top_k=4)
    dense = p.astype(np.float64) @ h.distance_matrix()
    ranked = np.take_along_axis(dense, np.asarray(exp["top_k_ids"]), axis=1)
    assert np.all(np.diff(ranked, axis=1) >= -1e-5)
    np.testing.assert_allclose(ranked[:, 0], dense.min(axis=1), atol=1e-5)


def test_logits_and_probabilities_agree_and_the_tensorflow_ops_give_the_same_answers():
    h = RAGGED
    logits = np.random.default_rng(0).normal(size=(5, h.num_classes)).astype(np.float32) * 3
    eager = decoding.decode(logits, h, "expected_cost", backoff_threshold=0.5, top_k=3)
    probs = tf.nn.softmax(logits).numpy()
    from_probs = decoding.decode(probs, h, "expected_cost", from_logits=False, backoff_threshold=0.5, top_k=3)
    tables = decoding.DecoderTables(h)
    traced = tf.function(lambda p: decoding.decode_probabilities(
        p, tables, TENSORFLOW_OPS, decoder="expected_cost", backoff_threshold=0.5, top_k=3), autograph=False)(probs)
    for key in traced:
        np.testing.assert_allclose(np.asarray(eager[key]), np.asarray(from_probs[key]), atol=1e-6)
        np.testing.assert_allclose(np.asarray(eager[key]), traced[key].numpy(), atol=1e-6)


def test_softmax_marked_scores_are_taken_as_probabilities():
    import keras

    h = RAGGED
    p = probabilities(2, 4, h.num_classes)
    marked = keras.activations.softmax(tf.math.log(tf.constant(p)))
    assert hasattr(marked, "_keras_logits")
    out = decoding.decode(marked, h)  # from_logits=None: the mark says probabilities
    np.testing.assert_allclose(out["probabilities"], p, rtol=1e-5)
    np.testing.assert_allclose(decoding.decode(np.log(p), h)["probabilities"], p, rtol=1e-5)


def test_empty_batch_and_wide_top_k():
    h = RAGGED
    out = decoding.decode(np.zeros((0, h.num_classes)), h, "expected_cost", backoff_threshold=0.5, top_k=2)
    assert out["class_ids"].shape == (0,) and out["top_k_ids"].shape == (0, 2) and out["level_scores"].shape == (0, h.depth)
    x = np.random.default_rng(1).normal(size=(7, 6000)).astype(np.float32)
    values, ids = decoding.NUMPY_OPS.top_k(x, 5)  # argpartition path
    want_values, want_ids = tf.math.top_k(x, 5)
    np.testing.assert_array_equal(ids, want_ids.numpy())
    np.testing.assert_array_equal(values, want_values.numpy())


def test_uniform_tree_costs_relate():
    h = Hierarchy.from_paths(["a/x", "a/y", "b/z", "b/w"])
    p = probabilities(1, 4, 4)
    path = np.asarray(decoding.expected_cost(p, h, "path"))
    height = np.asarray(decoding.expected_cost(p, h, "lca_height"))
    np.testing.assert_allclose(path, 2 * height, atol=1e-5)


# ------------------------------------------------------------------ bad input
def test_bad_input_names_the_culprit():
    h = RAGGED
    with pytest.raises(ValueError, match=r"\[batch, 8\].*\(2, 5\)"):
        decoding.decode(np.zeros((2, 5)), h)
    with pytest.raises(ValueError, match="decoder 'crm'"):
        decoding.decode(np.zeros((2, 8)), h, decoder="crm")
    with pytest.raises(ValueError, match="cost 'hops'"):
        decoding.expected_cost(np.zeros((2, 8)), h, cost="hops")
    with pytest.raises(ValueError, match="backoff_threshold"):
        decoding.decode(np.zeros((2, 8)), h, backoff_threshold=1.5)
    with pytest.raises(ValueError, match="top_k"):
        decoding.decode(np.zeros((2, 8)), h, top_k=0)
    with pytest.raises(TypeError, match="keras_hier.Hierarchy.*dict"):
        decoding.node_marginals(np.zeros((2, 8)), {"classes": []})
