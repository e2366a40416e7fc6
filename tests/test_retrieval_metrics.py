"""Tests of keras_hier.retrieval_metrics against a full-matrix NumPy reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_hier import Hierarchy
from keras_hier.retrieval_metrics import retrieval, top_k_neighbours, tree_similarity_for_hs


def tree():
    return Hierarchy.from_paths(["A/a1/x0", "A/a1/x1", "A/a2/x2", "A/a2/x3", "B/b1/x4", "B/b1/x5",
                                 "B/x6", "C/c1/q/x7"])


def ref_retrieval(x, y, h, k_hs, ks, beta=1.0):
    """Straightforward full-matrix version (the reference code's formulation)."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(y)
    t = h.distance_matrix().astype(float)
    tt = np.sqrt(2) * t / (beta + t)
    sigma = 1 - tt ** 2 / 2
    cos = x @ x.T
    np.fill_diagonal(cos, -np.inf)
    order = np.argsort(-cos, axis=1, kind="stable")[:, : n - 1]
    hs = np.zeros((n, k_hs))
    recall = {k: [] for k in ks}
    aps = []
    for q in range(n):
        got = sigma[y[q], y[order[q, :k_hs]]]
        others = np.delete(np.arange(n), q)
        best = np.sort(sigma[y[q], y[others]])[::-1][:k_hs]
        hs[q] = np.cumsum(got) / np.cumsum(best)
        r = int(np.sum(y == y[q])) - 1
        if r == 0:
            continue
        rel = y[order[q]] == y[q]
        for k in ks:
            recall[k].append(rel[:k].any())
        aps.append(sum(rel[:i + 1].sum() / (i + 1) for i in range(r) if rel[i]) / r)
    curve = hs.mean(0)
    ahs = np.sum((curve[1:] + curve[:-1]) / 2) / (k_hs - 1)
    return curve, ahs, {k: np.mean(v) for k, v in recall.items()}, np.mean(aps)


def test_hs_similarity_definition():
    h = tree()
    s = tree_similarity_for_hs(h)
    t = h.distance_matrix()
    assert s[0, 0] == 1.0
    assert s[0, 1] == pytest.approx(1 - (np.sqrt(2) * 2 / 3) ** 2 / 2)
    assert s[0, 4] == pytest.approx(1 - (np.sqrt(2) * t[0, 4] / (1 + t[0, 4])) ** 2 / 2)
    a = tree_similarity_for_hs(h, beta=2.0, form="arccos")
    assert a[0, 1] == pytest.approx(np.cos(np.pi / 2 * 2 / 4))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(12, 60), block=st.integers(1, 70))
def test_matches_full_matrix(seed, n, block):
    rng = np.random.default_rng(seed)
    h = tree()
    y = rng.integers(0, h.num_classes, size=n)
    x = rng.normal(size=(n, 5))
    k_hs = min(10, n - 1)
    got = retrieval(x, y, h, ks=(1, 3, k_hs), hs_max_k=k_hs, block_size=block)
    curve, ahs, recall, mapr = ref_retrieval(x, y, h, k_hs, (1, 3, k_hs))
    np.testing.assert_allclose(got["hs_curve"], curve, atol=1e-12)
    assert got["ahs"] == pytest.approx(ahs, abs=1e-12)
    for k in (1, 3, k_hs):
        assert got["recall_at_k"][k] == pytest.approx(recall[k], abs=1e-12)
        assert got["hs_at_k"][k] == pytest.approx(curve[k - 1], abs=1e-12)
    assert got["map_at_r"] == pytest.approx(mapr, abs=1e-12)


def test_hand_example():
    h = Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    emb = np.array([[1, 0], [1, .1], [0, 1], [.1, 1], [-1, 0], [-1, .2]], dtype=float)
    out = retrieval(emb, np.array([0, 0, 1, 1, 2, 2]), h, ks=(1, 2), hs_max_k=2)
    assert out["recall_at_k"] == {1: 1.0, 2: 1.0}
    assert out["map_at_r"] == 1.0
    assert out["hs_at_k"][1] == 1.0
    # query 2 (class y at [0, 1]) retrieves 3 (same class) then 5 (class z: t = 4,
    # sigma = 1 - (sqrt(2) * 4 / 5)^2 / 2 = 0.36) while the best second is class x
    # (t = 2, sigma = 5/9); every other query is perfect at k = 2
    assert out["hs_at_k"][2] == pytest.approx((5 + (1 + 0.36) / (1 + 5 / 9)) / 6)
    assert out["ahs"] == pytest.approx((1 + out["hs_at_k"][2]) / 2)


def test_top_k_neighbours_excludes_self_and_orders():
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    nb = top_k_neighbours(x, 3, block_size=2)
    assert nb[0].tolist() == [1, 2, 3]
    assert nb[3].tolist()[-1] in (0, 1)
    assert all(i not in nb[i] for i in range(4))


def test_absent_class_and_singletons_reported():
    h = tree()
    rng = np.random.default_rng(0)
    y = np.array([0, 0, 0, 1, 1, 2, 4, 4])  # class 2 has one sample; 3, 5, 6, 7 absent
    out = retrieval(rng.normal(size=(8, 3)), y, h, ks=(1, 2), hs_max_k=5)
    assert out["classes_absent"] == [3, 5, 6, 7]
    assert out["queries_without_positives"] == 1
    assert np.all(np.isfinite(out["hs_curve"]))


def test_bad_input():
    h = tree()
    x = np.random.default_rng(0).normal(size=(10, 3))
    y = np.arange(10) % 8
    with pytest.raises(ValueError, match="larger than"):
        retrieval(x, y, h, ks=(10,))
    bad = x.copy()
    bad[4, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        retrieval(bad, y, h, ks=(1,))
    with pytest.raises(ValueError, match="labels"):
        retrieval(x, y[:5], h)
    with pytest.raises(ValueError, match="outside the valid range"):
        retrieval(x, y + 3, h, ks=(1,))
    with pytest.raises(ValueError, match="whole class id"):
        retrieval(x, y + 0.5, h, ks=(1,))


def test_random_reference_and_ideal_match_brute_force():
    """hs_curve_random = mean over queries of k * mean(sigma of the others) / best sum."""
    from conftest import random_tree

    h = random_tree(3, num_classes=15, max_depth=5)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 15, size=40)
    out = retrieval(rng.normal(size=(40, 5)), y, h, ks=(1, 5), hs_max_k=30, distance="lca_height")
    sigma = tree_similarity_for_hs(h, distance="lca_height")
    want = []
    for q in range(40):
        others = sigma[y[q], np.delete(y, q)]
        best = np.cumsum(np.sort(others)[::-1][:30])
        want.append(np.arange(1, 31) * others.mean() / best)
    np.testing.assert_allclose(out["hs_curve_random"], np.mean(want, axis=0), rtol=1e-12)
    assert np.all(np.asarray(out["hs_curve_random"]) <= 1 + 1e-12)


def test_every_class_once_is_explained():
    h = tree()
    with pytest.warns(RuntimeWarning, match="every class appears once"):
        out = retrieval(np.random.default_rng(0).normal(size=(8, 3)), np.arange(8), h, ks=(1,), hs_max_k=5)
    assert np.isnan(out["map_at_r"]) and "every class appears once" in out["notes"][0]
    assert np.all(np.isfinite(out["hs_curve"]))
