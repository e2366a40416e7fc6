"""Figures for hierarchical evaluation (matplotlib; `pip install keras_hier[plot]`).

- `plot_dendrograms`: the true tree and the average-linkage (UPGMA) tree of
  the learned representatives side by side, leaves coloured by top-level group;
- `plot_distance_matrices`: representative distances vs tree distances;
- `plot_hs_curves`: HS@k curves.

Every function returns the matplotlib `Figure` and, given `path`, saves a PNG
atomically (temporary file + `os.replace`). No pyplot global state is used, so
the functions are safe in scripts without a display.
"""

import os
import tempfile

import numpy as np
from scipy.cluster.hierarchy import dendrogram, linkage
from scipy.spatial.distance import squareform

from keras_hier.inference import chordal_distances

_LABEL_LIMIT = 150  # above this many classes, leaves are shown as a colour strip


def _figure(width, height):
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover
        raise ImportError("keras_hier.plots needs matplotlib: pip install 'keras_hier[plot]'") from err
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def save_figure(fig, path):
    """Saves `fig` as PNG at `path` atomically; returns the path."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".fig.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _check_representatives(representatives, hierarchy):
    reps = np.asarray(representatives, dtype=np.float64)
    c = hierarchy.num_classes
    if reps.ndim != 2 or reps.shape[0] != c or not np.all(np.isfinite(reps)):
        raise ValueError(f"representatives must be a finite [num_classes={c}, D] array, got {reps.shape}")
    return reps


def _group_colours(hierarchy):
    from matplotlib import colormaps

    top = np.asarray(hierarchy.ancestors(0))
    names = hierarchy.level_names(0)
    count = len(names)
    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    palette = [cmap(i % cmap.N) for i in range(count)]
    return top, names, palette


def _tree_order(hierarchy):
    """Class ids sorted by their path in the tree (groups contiguous)."""
    ids = np.asarray(hierarchy.node_ids)
    return np.lexsort(ids.T[::-1])


def true_tree_linkage(hierarchy):
    """Linkage of the true tree: average linkage of the LCA-height distances.

    The LCA height is an ultrametric, so average linkage reproduces the tree
    exactly (a node with more than two children becomes merges at one height).
    """
    h = np.asarray(hierarchy.distance_matrix("lca_height"), dtype=np.float64)
    return linkage(squareform(h, checks=False), method="average")


def _draw_tree(ax, z, hierarchy, title, labelled, font):
    top, names, palette = _group_colours(hierarchy)
    info = dendrogram(z, ax=ax, orientation="left", no_labels=not labelled,
                      labels=list(hierarchy.classes) if labelled else None,
                      leaf_font_size=font, link_color_func=lambda _: "0.35")
    leaves = info["leaves"]
    if labelled:
        for tick, leaf in zip(ax.get_yticklabels(), leaves):
            tick.set_color(palette[top[leaf]])
    else:  # a colour strip at the leaf end
        y = 5.0 + 10.0 * np.arange(len(leaves))
        ax.scatter(np.zeros(len(leaves)), y, c=[palette[top[i]] for i in leaves], marker="s",
                   s=max(2.0, 2000.0 / len(leaves)), linewidths=0, clip_on=False, zorder=3)
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelsize=7)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def plot_dendrograms(representatives, hierarchy, path=None, name="representatives"):
    """True tree vs UPGMA tree of the representatives, side by side.

    Args:
        representatives: [C, D] class representatives (rows of NaN: skipped
            classes are not supported here; pass complete representatives).
        hierarchy: the `keras_hier.Hierarchy`.
        path: PNG file to write (optional).
        name: label of the representatives in the title.

    Returns:
        The matplotlib Figure.
    """
    reps = _check_representatives(representatives, hierarchy)
    c = hierarchy.num_classes
    labelled = c <= _LABEL_LIMIT
    height = float(np.clip(0.14 * c, 5, 18)) if labelled else 14.0
    font = float(np.clip(900.0 / max(c, 1) / 1.3, 4.5, 9)) if labelled else 0
    fig = _figure(13, height)
    axes = fig.subplots(1, 2)
    _draw_tree(axes[0], true_tree_linkage(hierarchy), hierarchy, "true tree (LCA height)", labelled, font)
    z = linkage(squareform(chordal_distances(reps), checks=False), method="average")
    _draw_tree(axes[1], z, hierarchy, f"UPGMA of {name} (chordal distance)", labelled, font)
    _add_legend(fig, hierarchy)
    if path is not None:
        save_figure(fig, path)
    return fig


def _add_legend(fig, hierarchy):
    from matplotlib.patches import Patch

    _, names, palette = _group_colours(hierarchy)
    handles = [Patch(color=palette[i], label=n) for i, n in enumerate(names)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(names), 6), fontsize=8,
               title="top-level group", title_fontsize=8, frameon=False)


def _group_ticks(ax, hierarchy, order, axis):
    top, names, _ = _group_colours(hierarchy)
    ordered = top[order]
    edges = np.flatnonzero(np.diff(ordered)) + 1
    for e in edges:
        ax.axhline(e - 0.5, color="white", lw=0.8)
        ax.axvline(e - 0.5, color="white", lw=0.8)
    starts = np.concatenate([[0], edges])
    stops = np.concatenate([edges, [len(order)]])
    centres = (starts + stops - 1) / 2.0
    labels = [names[ordered[s]] for s in starts]
    small = [(stop - s) < len(order) / 40 for s, stop in zip(starts, stops)]
    labels = ["" if tiny else lab for lab, tiny in zip(labels, small)]
    ax.set_xticks(centres, labels, rotation=45, ha="right", fontsize=7)
    if axis == 0:
        ax.set_yticks(centres, labels, fontsize=7)
    else:
        ax.set_yticks([])


def plot_distance_matrices(representatives, hierarchy, path=None, name="representatives",
                           distance="path"):
    """Heatmaps of representative distances and tree distances (tree order).

    Classes are ordered by their tree path; white lines separate top-level
    groups, which label the axes.

    Returns:
        The matplotlib Figure.
    """
    reps = _check_representatives(representatives, hierarchy)
    c = hierarchy.num_classes
    order = _tree_order(hierarchy)
    d = chordal_distances(reps)[np.ix_(order, order)]
    t = np.asarray(hierarchy.distance_matrix(distance), dtype=np.float64)[np.ix_(order, order)]
    fig = _figure(13, 6.2)
    axes = fig.subplots(1, 2)
    for i, (ax, m, title, cmap) in enumerate([
            (axes[0], d, f"{name}: chordal distance", "viridis"),
            (axes[1], t, f"tree distance ({distance})", "magma")]):
        im = ax.imshow(m, cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        _group_ticks(ax, hierarchy, order, i)
        fig.colorbar(im, ax=ax, shrink=0.8)
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_hs_curves(curves, path=None, title="HS@k"):
    """HS@k against k for one or more models.

    Args:
        curves: {label: sequence of HS@k for k = 1..K} (e.g.
            `retrieval(...)["hs_curve"]`).
        path: PNG file to write (optional).

    Returns:
        The matplotlib Figure.
    """
    if not curves:
        raise ValueError("plot_hs_curves needs at least one curve")
    fig = _figure(6.5, 4.2)
    ax = fig.subplots()
    for label, curve in curves.items():
        curve = np.asarray(curve, dtype=np.float64)
        ax.plot(np.arange(1, len(curve) + 1), curve, label=str(label), lw=1.6)
    ax.set_xlabel("k (retrieved test samples)")
    ax.set_ylabel("HS@k")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    if path is not None:
        save_figure(fig, path)
    return fig


__all__ = ["plot_dendrograms", "plot_distance_matrices", "plot_hs_curves", "save_figure",
           "true_tree_linkage"]
