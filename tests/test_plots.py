"""Tests of keras_hier.plots: figures are produced, labelled and written atomically."""

import os

import numpy as np
import pytest

from keras_hier import Hierarchy
from keras_hier import plots


def ragged(n, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        parts = [f"g{rng.integers(0, 5)}"]
        for _ in range(int(rng.integers(0, 4))):
            parts.append(parts[-1] + f".{rng.integers(0, 3)}")
        paths.append("/".join(parts + [f"c{i}"]))
    return Hierarchy.from_paths(paths)


def reps(h, seed=0):
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(h.num_node_ids, 16))
    return (vecs[h.node_ids] * h.level_mask[..., None]).sum(1) + 0.3 * rng.normal(size=(h.num_classes, 16))


def test_true_tree_linkage_recovers_tree():
    from scipy.cluster.hierarchy import cophenet
    from scipy.spatial.distance import squareform

    h = ragged(40)
    coph = squareform(cophenet(plots.true_tree_linkage(h)))
    np.testing.assert_allclose(coph, h.distance_matrix("lca_height"))


@pytest.mark.parametrize("n", [30, 300])
def test_dendrograms_and_heatmaps(tmp_path, n):
    h = ragged(n)
    x = reps(h)
    fig = plots.plot_dendrograms(x, h, tmp_path / "tree.png")
    left, right = fig.axes[:2]
    labels = [t.get_text() for t in left.get_yticklabels()]
    if n <= 150:  # every class named, coloured by its top-level group
        assert sorted(labels) == sorted(h.classes)
        colours = {t.get_text(): t.get_color() for t in right.get_yticklabels()}
        top = h.ancestors(0)
        for a in range(n):
            for b in range(n):
                if top[a] == top[b]:
                    assert colours[h.classes[a]] == colours[h.classes[b]]
    else:  # too many to name: a colour strip of n leaves
        assert not any(labels)
        assert left.collections[-1].get_offsets().shape[0] == n
    assert len(fig.legends) == 1
    fig2 = plots.plot_distance_matrices(x, h, tmp_path / "dist.png", distance="lca_height")
    assert fig2.axes[0].images[0].get_array().shape == (n, n)
    assert "chordal" in fig2.axes[0].get_title() and "lca_height" in fig2.axes[1].get_title()
    ticks = [t.get_text() for t in fig2.axes[0].get_xticklabels()]
    if n <= 150:  # every class named on the heatmap, in tree order
        assert sorted(ticks) == sorted(h.classes)
    else:
        assert set(ticks) - {""} <= set(h.level_names(0))
    for name in ("tree.png", "dist.png"):
        assert os.path.getsize(tmp_path / name) > 5000
    assert sorted(os.listdir(tmp_path)) == ["dist.png", "tree.png"]


def test_hs_curves(tmp_path):
    fig = plots.plot_hs_curves({"a": np.linspace(1, .5, 20), "b": np.linspace(.9, .4, 20)}, tmp_path / "hs.png",
                               random=np.linspace(.3, .35, 20), title="HS@k (tree distance: path)")
    lines = fig.axes[0].get_lines()
    labels = [line.get_label() for line in lines]
    assert labels == ["a", "b", "ideal ranking", "random ranking"] and lines[0].get_xdata()[-1] == 20
    np.testing.assert_array_equal(lines[2].get_ydata(), [1, 1])
    assert "path" in fig.axes[0].get_title()
    assert os.path.getsize(tmp_path / "hs.png") > 1000
    with pytest.raises(ValueError):
        plots.plot_hs_curves({})


def test_bad_representatives():
    h = ragged(10)
    with pytest.raises(ValueError, match="num_classes=10"):
        plots.plot_dendrograms(np.zeros((9, 3)), h)
    x = reps(h)
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        plots.plot_distance_matrices(x, h)


def test_large_trees_collapse_to_a_level(tmp_path, monkeypatch):
    h = ragged(120, seed=4)
    x = reps(h, seed=4)
    monkeypatch.setattr(plots, "MAX_PLOT_CLASSES", 40)
    level = plots.plot_level(h)
    assert h.num_nodes(level) <= 40 and (level == h.depth - 1 or h.num_nodes(level + 1) > 40)
    node_reps, nh = plots.collapse_to_level(x, h, level)
    anc = h.ancestors(level)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for node in range(h.num_nodes(level)):
        m = xn[anc == node].mean(0)
        np.testing.assert_allclose(node_reps[node], m / np.linalg.norm(m), atol=1e-12)
    assert nh.num_classes == h.num_nodes(level) and list(nh.classes) == h.level_paths(level)
    fig = plots.plot_distance_matrices(x, h, tmp_path / "d.png")
    assert fig.axes[0].images[0].get_array().shape == (nh.num_classes,) * 2
    assert f"level-{level} nodes" in fig.axes[0].get_title()
    fig = plots.plot_dendrograms(x, h, tmp_path / "t.png", level=0)
    assert "level-0 nodes" in fig.axes[1].get_title()
