"""Matrix-free evaluation pieces against the exact C x C computations (small C, where both run)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata

from conftest import random_tree
from keras_hier import Hierarchy
from keras_hier.streaming_eval import hp_radius, top_k_predictions
from keras_hier.tree_counts import distance_histogram, kth_smallest_distance, pair_distances, tie_ceiling


def wide_tree(c=2000, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(c):
        depth = int(rng.integers(1, 5))
        paths.append("/".join([f"n{rng.integers(0, 6)}" for _ in range(depth - 1)] + [f"c{i}"]))
    return Hierarchy.from_paths(paths)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["path", "lca_height"]))
def test_pairs_and_histograms_match_the_matrix(seed, kind):
    h = random_tree(seed, num_classes=14, max_depth=6, branching=3)
    t = np.asarray(h.distance_matrix(kind))
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 14, size=(2, 50))
    np.testing.assert_array_equal(pair_distances(h, a, b, kind), t[a, b])
    w = rng.integers(0, 5, size=14).astype(float)
    counts = distance_histogram(h, weights=w, kind=kind)
    for y in range(14):
        np.testing.assert_allclose(counts[y], np.bincount(t[y], weights=w, minlength=counts.shape[1]))
    k = int(rng.integers(1, 15))
    np.testing.assert_array_equal(kth_smallest_distance(distance_histogram(h, kind=kind), k), np.sort(t, 1)[:, k - 1])
    for rule, col in (("devise", k - 1), ("reference", min(k + 1, 13))):
        np.testing.assert_array_equal(hp_radius(h, k, rule, kind), np.sort(t, 1)[:, col])


def test_tie_ceiling_is_the_spearman_of_a_tie_break():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, size=200)
    groups = np.bincount(t)
    ordinal = rankdata(t, method="ordinal")
    want = np.corrcoef(rankdata(t), ordinal)[0, 1]
    assert tie_ceiling(groups) == pytest.approx(want, abs=1e-12)


def test_partitioned_top_k_breaks_ties_like_a_stable_sort():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 30, size=(64, 3000)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(top_k_predictions(s, 7), np.argsort(-s, axis=1, kind="stable")[:, :7])


def test_streaming_evaluate_matches_the_exact_matrix_computation(monkeypatch):
    import keras

    from keras_hier import evaluate, inference

    monkeypatch.setattr(inference, "EXACT_MAX_CLASSES", 500)  # C = 2000 runs the sampled inference

    h = wide_tree()
    c = h.num_classes
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 8)).astype("float32")
    y = rng.integers(0, c, size=300)
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(c, name="head")(keras.layers.Dense(6, name="embedding")(inputs)))
    out = evaluate(model, (x, y), h, k=5, ks=(1, 10), n_permutations=0, batch_size=64, decoders=("argmax",))
    scores = np.asarray(model.predict(x, verbose=0))
    t = np.asarray(h.distance_matrix("path"), dtype=float)  # the exact small-C reference: C x C
    top = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    radius = np.sort(t, axis=1)[:, 4]
    got = out["classification"]
    assert got["accuracy"] == pytest.approx(np.mean(top[:, 0] == y))
    assert got["ahc"] == pytest.approx(np.mean(t[y, top[:, 0]]))
    assert got["ahd_at_k"] == pytest.approx(np.mean(t[y[:, None], top]))
    assert got["hp_at_k"] == pytest.approx(np.mean(np.sum(t[y[:, None], top] <= radius[y][:, None], 1) / 5))
    lca = np.asarray(h.lca_depth_matrix())
    assert got["superclass_accuracy"] == pytest.approx(np.mean(lca[y, top[:, 0]] >= h.leaf_depths[y] - 1))
    assert out["inference"]["W"]["method"] == "sampled"
