"""Tests of keras_hier.inference against independent NumPy/SciPy references."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from keras_hier import Hierarchy, hierarchies
from keras_hier.inference import (chordal_distances, fisher_mean, hierarchical_inference,
                                  level_retrieval, robinson_foulds, spearman_ceilings,
                                  spearman_measures)


def small_tree():
    return Hierarchy.from_paths(["A/a1/x0", "A/a1/x1", "A/a1/x2", "A/a2/x3", "A/a2/x4", "B/b1/x5",
                                 "B/b1/x6", "B/b2/x7", "B/b2/x8", "B/b2/x9", "C/c1/x10", "C/c1/x11"])


def ragged_tree():
    return Hierarchy.from_paths(["A/a1/x0", "A/a1/x1", "A/x2", "B/b1/q/x3", "B/b1/q/x4", "B/x5",
                                 "B/b1/x6", "C/x7", "C/x8"])


def tree_embedding(h, noise, seed, dim=32):
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(h.num_node_ids, dim))
    x = (vecs[h.node_ids] * h.level_mask[..., None]).sum(1)
    return x + noise * rng.normal(size=(h.num_classes, dim))


# ---------------------------------------------------------------- references
def ref_spearman(d, t):
    c = len(t)
    cw = [spearmanr(d[:, i], t[:, i])[0] for i in range(c)]
    off = [spearmanr(np.delete(d[:, i], i), np.delete(t[:, i], i))[0] for i in range(c)]
    iu = np.triu_indices(c, 1)
    fisher = lambda r: np.tanh(np.nanmean(np.arctanh(np.asarray(r))))  # noqa: E731
    return fisher(cw), fisher(off), spearmanr(d[iu], t[iu])[0]


def ref_upgma_cophenetic(d):
    """Naive UPGMA: returns the cophenetic matrix."""
    n = len(d)
    clusters = {i: [i] for i in range(n)}
    dist = {(i, j): d[i, j] for i in range(n) for j in range(i + 1, n)}
    coph = np.zeros((n, n))
    nxt = n
    while len(clusters) > 1:
        (a, b), h = min(dist.items(), key=lambda kv: kv[1])
        for i in clusters[a]:
            for j in clusters[b]:
                coph[i, j] = coph[j, i] = h
        merged = clusters.pop(a) + clusters.pop(b)
        dist = {k: v for k, v in dist.items() if a not in k and b not in k}
        for other, members in clusters.items():
            dist[(other, nxt)] = np.mean([d[i, j] for i in merged for j in members])
        clusters[nxt] = merged
        nxt += 1
    return coph


def ref_level_retrieval(d, groups, only=None):
    c = len(groups)
    p1, rp, mapr = [], [], []
    for i in (range(c) if only is None else only):
        r = int(np.sum(groups == groups[i])) - 1
        if r == 0:
            continue
        others = [j for j in sorted(range(c), key=lambda j: (d[i, j], j)) if j != i]
        rel = [groups[j] == groups[i] for j in others]
        p1.append(rel[0])
        rp.append(sum(rel[:r]) / r)
        mapr.append(sum(sum(rel[:m + 1]) / (m + 1) for m in range(r) if rel[m]) / r)
    return np.mean(p1), np.mean(rp), np.mean(mapr)


# --------------------------------------------------------------------- tests
def test_spearman_matches_scipy_on_random_data():
    h = small_tree()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(h.num_classes, 8))
    d = chordal_distances(x)
    t = h.distance_matrix().astype(float)
    got = spearman_measures(d, t)
    want = ref_spearman(d, t)
    assert got["spearman_classwise"] == pytest.approx(want[0], abs=1e-12)
    assert got["spearman_classwise_offdiag"] == pytest.approx(want[1], abs=1e-12)
    assert got["spearman_pairwise"] == pytest.approx(want[2], abs=1e-12)


def test_chordal_distance_definition():
    x = np.array([[3.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    d = chordal_distances(x)
    np.testing.assert_allclose(d, [[0, np.sqrt(2), 2], [np.sqrt(2), 0, np.sqrt(2)], [2, np.sqrt(2), 0]],
                               atol=1e-12)


def test_fisher_mean_hand_example():
    assert fisher_mean([0.5, 0.5]) == pytest.approx(0.5)
    assert fisher_mean([0.2, np.nan, 0.6]) == pytest.approx(np.tanh((np.arctanh(0.2) + np.arctanh(0.6)) / 2))
    assert np.isnan(fisher_mean([np.nan]))


def test_cifar100_known_values():
    h = hierarchies.cifar100()
    t = h.distance_matrix().astype(float)
    ceiling = spearman_ceilings(t)
    assert round(ceiling["spearman_classwise"], 3) == 0.858
    assert round(ceiling["spearman_pairwise"], 3) == 0.862
    # distances keeping the tree's order without ties reach exactly the ceiling
    rng = np.random.default_rng(0)
    jitter = rng.uniform(0, 0.5, size=t.shape)
    d = t + np.triu(jitter, 1) + np.triu(jitter, 1).T
    got = spearman_measures(d, t)
    for key, value in ceiling.items():
        assert got[key] == pytest.approx(value, abs=1e-12)
    # exact ties matching the tree's: Spearman 1
    exact = spearman_measures(np.sqrt(t), t)
    for value in exact.values():
        assert value == pytest.approx(1.0, abs=1e-9)
    # random unit vectors: about 0.02-0.04 classwise with the diagonal, ~0 otherwise
    cw, off, pw = [], [], []
    for seed in range(5):
        r = hierarchical_inference(np.random.default_rng(seed).normal(size=(100, 128)), h,
                                   n_permutations=0)
        cw.append(r["spearman_classwise"])
        off.append(r["spearman_classwise_offdiag"])
        pw.append(r["spearman_pairwise"])
    assert 0.0 < np.mean(cw) < 0.06
    assert abs(np.mean(off)) < 0.03 and abs(np.mean(pw)) < 0.03
    assert np.mean(cw) > np.mean(off)


def test_ceiling_is_max_over_tie_breaks():
    h = ragged_tree()
    t = h.distance_matrix().astype(float)
    ceiling = spearman_ceilings(t)
    rng = np.random.default_rng(3)
    for _ in range(20):  # any order-preserving tie-free distances give the ceiling
        j = rng.uniform(0, 0.9, size=t.shape)
        d = t + np.triu(j, 1) + np.triu(j, 1).T
        got = spearman_measures(d, t)
        for key in ceiling:
            assert got[key] == pytest.approx(ceiling[key], abs=1e-12)
    for _ in range(20):  # random distances never exceed it
        d = chordal_distances(rng.normal(size=(h.num_classes, 4)))
        got = spearman_measures(d, t)
        for key in ceiling:
            assert got[key] <= ceiling[key] + 1e-12


def test_permutation_null_matches_loop():
    h = small_tree()
    x = tree_embedding(h, 1.0, seed=2)
    out = hierarchical_inference(x, h, n_permutations=30, seed=7)
    d = chordal_distances(x)
    t = h.distance_matrix().astype(float)
    observed = ref_spearman(d, t)
    rng = np.random.default_rng(7)
    null = np.array([ref_spearman(d, t[np.ix_(p, p)]) for p in (rng.permutation(12) for _ in range(30))])
    names = ["spearman_classwise", "spearman_classwise_offdiag", "spearman_pairwise"]
    for i, name in enumerate(names):
        assert out[name] == pytest.approx(observed[i], abs=1e-12)
        assert out["null"][name]["mean"] == pytest.approx(np.nanmean(null[:, i]), abs=1e-12)
        assert out["null"][name]["std"] == pytest.approx(np.nanstd(null[:, i]), abs=1e-12)
        p = (1 + np.sum(null[:, i] >= observed[i] - 1e-12)) / 31
        assert out["null"][name]["p_value"] == pytest.approx(p)
    # a representation that follows the tree beats the null
    assert out["null"]["spearman_pairwise"]["p_value"] < 0.1


def test_cophenetic_against_naive_upgma():
    h = small_tree()
    x = tree_embedding(h, 2.0, seed=5)
    out = hierarchical_inference(x, h, n_permutations=0)
    coph = ref_upgma_cophenetic(chordal_distances(x))
    iu = np.triu_indices(h.num_classes, 1)
    want = np.corrcoef(coph[iu], h.distance_matrix()[iu])[0, 1]
    assert out["cophenetic_correlation"] == pytest.approx(want, abs=1e-10)


def test_robinson_foulds_hand_example():
    # leaves 0..3; dendrogram ((0,1),(2,3)); true tree: {0,1,2} and {3}
    z = np.array([[0, 1, 1.0, 2], [2, 3, 1.0, 2], [4, 5, 2.0, 4]], dtype=float)
    rf, rf_max = robinson_foulds(z, [np.array([0, 0, 0, 1]), np.arange(4)])
    # dendrogram clusters {0,1}, {2,3}; true {0,1,2}: all three differ
    assert (rf, rf_max) == (3, 3)
    rf, rf_max = robinson_foulds(z, [np.array([0, 0, 1, 1]), np.arange(4)])
    assert (rf, rf_max) == (0, 4)


def test_perfect_tree_recovered():
    h = small_tree()
    x = tree_embedding(h, 0.01, seed=4, dim=512)
    out = hierarchical_inference(x, h, n_permutations=0)
    assert out["robinson_foulds"] == out["robinson_foulds_max"] - 2 * len(_true_clusters(h))
    for lv in out["levels"]:
        assert lv["p_at_1"] == 1.0 and lv["map_at_r"] == 1.0 and lv["r_precision"] == 1.0


def test_level_retrieval_matches_loop():
    rng = np.random.default_rng(8)
    for h in (small_tree(), ragged_tree()):
        x = rng.normal(size=(h.num_classes, 5))
        out = hierarchical_inference(x, h, n_permutations=0)
        d = chordal_distances(x)
        assert len(out["levels"]) == h.depth - 1
        for lv in out["levels"]:
            groups = np.asarray(h.ancestors(lv["level"]))
            want = ref_level_retrieval(d, groups)
            assert (lv["p_at_1"], lv["r_precision"], lv["map_at_r"]) == pytest.approx(want, abs=1e-12)


def test_level_retrieval_hand_example():
    d = np.array([[0, 1, 2, 3], [1, 0, 3, 2], [2, 3, 0, 1], [3, 2, 1, 0]], dtype=float)
    out = level_retrieval(d, np.array([0, 1, 0, 1]))
    # every query's nearest is of the other group; its partner is 2nd -> AP = (1/2)/1
    assert out["p_at_1"] == 0.0 and out["r_precision"] == 0.0 and out["map_at_r"] == 0.0
    out = level_retrieval(d, np.array([0, 0, 1, 1]))
    assert out == {"p_at_1": 1.0, "r_precision": 1.0, "map_at_r": 1.0, "num_queries": 4}


def test_absent_class_rows_are_excluded():
    h = small_tree()
    x = tree_embedding(h, 0.5, seed=1)
    x_missing = x.copy()
    x_missing[3] = np.nan
    out = hierarchical_inference(x_missing, h, n_permutations=0)
    assert out["excluded_classes"] == [3] and out["num_classes"] == 11
    keep = np.array([i for i in range(12) if i != 3])
    d = chordal_distances(x[keep])
    t = h.distance_matrix()[np.ix_(keep, keep)].astype(float)
    assert out["spearman_pairwise"] == pytest.approx(ref_spearman(d, t)[2], abs=1e-12)


def test_bad_input():
    h = small_tree()
    with pytest.raises(ValueError, match="num_classes=12"):
        hierarchical_inference(np.zeros((11, 4)), h)
    x = np.random.default_rng(0).normal(size=(12, 4))
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        hierarchical_inference(x, h)
    with pytest.raises(ValueError, match="distance"):
        hierarchical_inference(np.ones((12, 4)), h, distance="euclid")


def test_lca_height_distance_option():
    h = ragged_tree()
    x = np.random.default_rng(2).normal(size=(h.num_classes, 6))
    out = hierarchical_inference(x, h, distance="lca_height", n_permutations=0)
    want = ref_spearman(chordal_distances(x), h.distance_matrix("lca_height").astype(float))
    assert out["distance"] == "lca_height"
    assert out["spearman_pairwise"] == pytest.approx(want[2], abs=1e-12)


def _true_clusters(h):
    clusters = set()
    for level in range(h.depth):
        a = np.asarray(h.ancestors(level))
        for g in np.unique(a):
            m = frozenset(np.flatnonzero(a == g).tolist())
            if 1 < len(m) < h.num_classes:
                clusters.add(m)
    return clusters


# ------------------------------------------------------- large-C estimator
def _big_tree(c=900, seed=0):
    rng = np.random.default_rng(seed)
    paths = [f"a{i % 5}/b{i % 37}/c{rng.integers(0, 150)}/x{i}" if i % 4 else f"a{i % 5}/x{i}" for i in range(c)]
    return Hierarchy.from_paths(paths)


def test_exact_ceilings_from_histograms_match_matrix_ceilings():
    from keras_hier.inference_sampled import exact_ceilings

    for h in (small_tree(), ragged_tree(), _big_tree(300)):
        keep = np.arange(h.num_classes)
        for kind in ("path", "lca_height"):
            want = spearman_ceilings(h.distance_matrix(kind))
            got = exact_ceilings(h, keep, kind)
            np.testing.assert_allclose(got, [want[k] for k in ("spearman_classwise", "spearman_classwise_offdiag",
                                                               "spearman_pairwise")], atol=1e-9)


def test_sampled_estimate_brackets_the_exact_value():
    h = _big_tree()
    x = tree_embedding(h, noise=3.0, seed=4)
    exact = hierarchical_inference(x, h, n_permutations=10, method="exact")
    est = hierarchical_inference(x, h, n_permutations=10, method="sampled", seed=1,
                                 sample_options={"num_anchors": 150, "num_columns": 600, "num_pairs": 60_000})
    assert exact["method"] == "exact" and est["method"] == "sampled"
    for key in ("spearman_classwise", "spearman_classwise_offdiag", "spearman_pairwise"):
        low, high = est["confidence_interval"][key]
        width = high - low
        assert 0 < width < 0.1, key
        # the exact value lies within the interval widened by half its width (a 95% interval misses 1 in 20)
        assert low - width / 2 <= exact[key] <= high + width / 2, (key, exact[key], low, high)
        assert est["ceiling"][key] == pytest.approx(exact["ceiling"][key], abs=1e-9)
        assert abs(est["null"][key]["mean"]) < 0.05 and est["null"][key]["p_value"] < 0.2
    assert est["tree_subset_size"] == 900 and est["cophenetic_correlation"] == pytest.approx(
        exact["cophenetic_correlation"])
    assert est["levels"][0]["p_at_1"] == pytest.approx(exact["levels"][0]["p_at_1"], abs=0.1)


def test_auto_switches_to_sampling(monkeypatch):
    from keras_hier import inference

    h = _big_tree(200)
    x = tree_embedding(h, noise=1.0, seed=0)
    monkeypatch.setattr(inference, "EXACT_MAX_CLASSES", 100)
    out = inference.hierarchical_inference(x, h, n_permutations=5,
                                           sample_options={"num_anchors": 50, "num_columns": 100, "num_pairs": 4000})
    assert out["method"] == "sampled" and out["num_anchors"] == 50


def test_level_retrieval_for_query_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4))
    d = chordal_distances(x)
    groups = rng.integers(0, 4, size=30)
    queries = np.array([3, 7, 11, 29])
    got = level_retrieval(d[queries], groups, queries=queries)
    p1, rp, mapr = ref_level_retrieval(d, groups, only=queries)
    assert got["p_at_1"] == pytest.approx(p1) and got["map_at_r"] == pytest.approx(mapr)


def test_identical_representatives_and_flat_tree_explain_nan():
    h = small_tree()
    with pytest.warns(RuntimeWarning, match="identical"):
        out = hierarchical_inference(np.ones((h.num_classes, 3)), h, n_permutations=5)
    assert np.isnan(out["spearman_pairwise"]) and "identical" in out["notes"][0]
    flat = Hierarchy.from_paths([f"x{i}" for i in range(6)])
    with pytest.warns(RuntimeWarning, match="flat"):
        out = hierarchical_inference(np.random.default_rng(0).normal(size=(6, 3)), flat, n_permutations=5)
    assert np.isnan(out["spearman_pairwise"]) and any("flat" in n for n in out["notes"])
