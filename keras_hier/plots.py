"""Figures for hierarchical evaluation (matplotlib; `pip install keras_hier[plot]`).

- `plot_dendrograms`: the true tree and the average-linkage (UPGMA) tree of
  the learned representatives side by side, leaves coloured by top-level group;
- `plot_distance_matrices`: representative distances vs tree distances;
- `plot_hs_curves`: HS@k curves with the random and ideal references.

With more than `MAX_PLOT_CLASSES` classes the class figures are drawn at a
coarser level (`level=`, default the deepest level with at most that many
nodes): a node's representative is the normalised mean of its classes'
representatives, and the tree is the hierarchy cut at that level
(`collapse_to_level`). Titles say which distance they show.

Every function returns the matplotlib `Figure` and, given `path`, saves a PNG
atomically (`keras_hier.files`). No pyplot global state is used, so the
functions are safe in scripts without a display.
"""

import os

import numpy as np
from scipy.cluster.hierarchy import dendrogram, linkage
from scipy.spatial.distance import squareform

from keras_hier.files import atomic_replace
from keras_hier.geometry import chordal_distances, normalize_rows

_LABEL_LIMIT = 150  # above this many classes, leaves are shown as a colour strip
#: Class figures with more classes are drawn at a coarser level of the tree.
MAX_PLOT_CLASSES = 1000
_SEP = "\x1f"  # joins node names internally (a name may contain "/")
_TREE_DISTANCES = {"path": "path: edges between leaves", "lca_height": "lca_height: height of the common ancestor"}


def _figure(width, height):
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover
        raise ImportError("keras_hier.plots needs matplotlib: pip install 'keras_hier[plot]'") from err
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def save_figure(fig, path):
    """Saves `fig` as PNG at `path` atomically; returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_replace(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def level_hierarchy(hierarchy, level):
    """The hierarchy cut at `level`: one class per node of that level, named by its node path."""
    from keras_hier.hierarchy import Hierarchy

    paths = hierarchy.level_paths(level, separator=_SEP)
    return Hierarchy([p.split(_SEP) for p in paths], classes=[p.replace(_SEP, "/") for p in paths])


def collapse_to_level(representatives, hierarchy, level):
    """Representatives and hierarchy of the nodes at `level` (for figures at large C).

    A node's representative is the normalised mean of its classes' normalised
    representatives (classes with a NaN row are skipped; a node without any
    gets a NaN row); the returned hierarchy is `level_hierarchy(hierarchy, level)`.

    Returns:
        (node representatives [num_nodes(level), D], Hierarchy).
    """
    reps = np.asarray(representatives, dtype=np.float64)
    anc = np.asarray(hierarchy.ancestors(level))
    ok = np.all(np.isfinite(reps), axis=1)
    sums = np.zeros((hierarchy.num_nodes(level), reps.shape[1]))
    np.add.at(sums, anc[ok], normalize_rows(reps[ok]))
    nodes = normalize_rows(sums)
    nodes[np.bincount(anc[ok], minlength=len(nodes)) == 0] = np.nan
    return nodes, level_hierarchy(hierarchy, level)


def plot_level(hierarchy, level=None, max_classes=None):
    """The level class figures use: `level`, else the class level up to
    `max_classes` (default `MAX_PLOT_CLASSES`), else the deepest level with at
    most that many nodes (None = the class level)."""
    if level is not None:
        return int(level) % hierarchy.depth
    limit = MAX_PLOT_CLASSES if max_classes is None else max_classes
    if hierarchy.num_classes <= limit:
        return None
    fitting = [lv for lv in range(hierarchy.depth) if hierarchy.num_nodes(lv) <= limit]
    return fitting[-1] if fitting else 0


def _at_level(representatives, hierarchy, level):
    """(representatives, hierarchy, what the rows are) at the chosen level."""
    level = plot_level(hierarchy, level)
    if level is None or level == hierarchy.depth - 1:
        return representatives, hierarchy, "classes"
    reps, h = collapse_to_level(representatives, hierarchy, level)
    return reps, h, f"level-{level} nodes"


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


def plot_dendrograms(representatives, hierarchy, path=None, name="representatives", level=None):
    """True tree vs UPGMA tree of the representatives, side by side.

    Args:
        representatives: [C, D] class representatives (finite; at a collapsed
            level NaN rows of absent classes are skipped).
        hierarchy: the `keras_hier.Hierarchy`.
        path: PNG file to write (optional).
        name: label of the representatives in the title.
        level: draw the nodes of this level instead of the classes (default:
            the classes up to `MAX_PLOT_CLASSES`, see `plot_level`).

    Returns:
        The matplotlib Figure.
    """
    reps, hierarchy, what = _at_level(representatives, hierarchy, level)
    reps = _check_representatives(reps, hierarchy)
    c = hierarchy.num_classes
    labelled = c <= _LABEL_LIMIT
    height = float(np.clip(0.14 * c, 5, 18)) if labelled else 14.0
    font = float(np.clip(900.0 / max(c, 1) / 1.3, 4.5, 9)) if labelled else 0
    fig = _figure(13, height)
    axes = fig.subplots(1, 2)
    _draw_tree(axes[0], true_tree_linkage(hierarchy), hierarchy,
               f"true tree of the {what} (merge height = LCA height)", labelled, font)
    z = linkage(squareform(chordal_distances(reps), checks=False), method="average")
    _draw_tree(axes[1], z, hierarchy, f"UPGMA tree of {name} ({what}; merge height = chordal distance)",
               labelled, font)
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


def _group_lines(ax, hierarchy, order):
    top = np.asarray(hierarchy.ancestors(0))[order]
    edges = np.flatnonzero(np.diff(top)) + 1
    for e in edges:
        ax.axhline(e - 0.5, color="white", lw=0.8)
        ax.axvline(e - 0.5, color="white", lw=0.8)
    return top, edges


def _axis_labels(ax, hierarchy, order, first):
    """Class names on both axes (coloured by top-level group) when they fit, else group names."""
    top, edges = _group_lines(ax, hierarchy, order)
    _, names, palette = _group_colours(hierarchy)
    n = len(order)
    if n <= _LABEL_LIMIT:
        font = float(np.clip(600.0 / n, 3.5, 8))
        labels = [hierarchy.classes[i] for i in order]
        ax.set_xticks(np.arange(n), labels, rotation=90, fontsize=font)
        ax.set_yticks(np.arange(n), labels if first else [""] * n, fontsize=font)
        for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
            for tick, group in zip(ticks, top):
                tick.set_color(palette[group])
        return
    starts = np.concatenate([[0], edges])
    stops = np.concatenate([edges, [n]])
    centres = (starts + stops - 1) / 2.0
    labels = ["" if (stop - st) < n / 40 else names[top[st]] for st, stop in zip(starts, stops)]
    ax.set_xticks(centres, labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(centres, labels if first else [""] * len(labels), fontsize=7)
    for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
        for tick, st in zip(ticks, starts):
            tick.set_color(palette[top[st]])


def plot_distance_matrices(representatives, hierarchy, path=None, name="representatives",
                           distance="path", level=None):
    """Heatmaps of representative distances and tree distances (tree order).

    Classes are ordered by their tree path and named on both axes (coloured
    by top-level group) up to 150 classes; white lines separate top-level
    groups. Each panel's title names its distance.

    Args:
        representatives: [C, D] class representatives.
        hierarchy: the `keras_hier.Hierarchy`.
        path: PNG file to write (optional).
        name: label of the representatives in the title.
        distance: tree distance kind of the right panel.
        level: draw the nodes of this level (see `plot_dendrograms`).

    Returns:
        The matplotlib Figure.
    """
    reps, hierarchy, what = _at_level(representatives, hierarchy, level)
    reps = _check_representatives(reps, hierarchy)
    c = hierarchy.num_classes
    order = _tree_order(hierarchy)
    d = chordal_distances(reps)[np.ix_(order, order)]
    t = np.asarray(hierarchy.distance_matrix(distance), dtype=np.float64)[np.ix_(order, order)]
    side = 6.5 if c <= 60 else 9.0 if c <= _LABEL_LIMIT else 6.5
    fig = _figure(2 * side + 1, side + 0.6)
    axes = fig.subplots(1, 2)
    panels = [(axes[0], d, f"{name} ({what}): chordal distance sqrt(2 - 2 cos)", "viridis", "chordal distance"),
              (axes[1], t, f"tree distance ({_TREE_DISTANCES[distance]})", "magma", f"tree distance ({distance})")]
    for i, (ax, m, title, cmap, label) in enumerate(panels):
        im = ax.imshow(m, cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        _axis_labels(ax, hierarchy, order, i == 0)
        fig.colorbar(im, ax=ax, shrink=0.8, label=label)
    _add_legend(fig, hierarchy)  # the label colours: top-level groups
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_hs_curves(curves, path=None, title="HS@k", random=None):
    """HS@k against k for one or more models, with the ideal and random references.

    Args:
        curves: {label: sequence of HS@k for k = 1..K} (e.g.
            `retrieval(...)["hs_curve"]`).
        path: PNG file to write (optional).
        title: figure title (name the tree distance in it).
        random: optional HS@k of a random ranking (`retrieval(...)["hs_curve_random"]`),
            drawn dashed; the ideal ranking (HS@k = 1) is drawn dotted.

    Returns:
        The matplotlib Figure.
    """
    if not curves:
        raise ValueError("plot_hs_curves needs at least one curve")
    fig = _figure(6.5, 4.2)
    ax = fig.subplots()
    longest = 1
    for label, curve in curves.items():
        curve = np.asarray(curve, dtype=np.float64)
        longest = max(longest, len(curve))
        ax.plot(np.arange(1, len(curve) + 1), curve, label=str(label), lw=1.6)
    ax.plot([1, longest], [1, 1], ls=":", color="0.3", lw=1.2, label="ideal ranking")
    if random is not None:
        random = np.asarray(random, dtype=np.float64)
        ax.plot(np.arange(1, len(random) + 1), random, ls="--", color="0.5", lw=1.2, label="random ranking")
    ax.set_xlabel("k (retrieved test samples)")
    ax.set_ylabel("HS@k (1 = ideal)")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    if path is not None:
        save_figure(fig, path)
    return fig


__all__ = ["plot_dendrograms", "plot_distance_matrices", "plot_hs_curves", "save_figure",
           "true_tree_linkage", "collapse_to_level", "level_hierarchy", "plot_level", "MAX_PLOT_CLASSES"]
