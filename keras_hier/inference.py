"""Hierarchical inference: did the class representatives learn the tree?

Compares the distances between class representatives (normalised proxies or
class means) with the tree distances of a `Hierarchy` (METHODS.md section 4):
Spearman correlations with their tie ceilings and a permutation null, the
average-linkage (UPGMA) tree of the representatives against the true tree
(cophenetic correlation, Robinson-Foulds distance), and retrieval among the
representatives at every upper level.

NumPy/SciPy only; importing this module does not import TensorFlow.
"""

import warnings

import numpy as np
from scipy.cluster.hierarchy import cophenet, linkage
from scipy.spatial.distance import squareform
from scipy.stats import rankdata

from keras_hier.geometry import chordal_distances
from keras_hier.inference_sampled import EXACT_MAX_CLASSES, exact_ceilings, sampled_inference
from keras_hier.tree_counts import check_distance_kind, distance_histogram

_CLIP = 1.0 - 1e-12


# ------------------------------------------------------------------ helpers
def fisher_mean(correlations):
    """Fisher-z average tanh(mean(arctanh(r))) of the finite correlations.

    Correlations are clipped to +-(1 - 1e-12) first so that one perfect row
    does not make the average exactly 1 (the reference code gives 1 then).
    """
    r = np.asarray(correlations, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return float("nan")
    return float(np.tanh(np.mean(np.arctanh(np.clip(r, -_CLIP, _CLIP)))))


def _standardise_rows(ranks, mask=None):
    """Centres and scales every row to unit norm (entries outside mask -> 0)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if mask is None:
        mask = np.ones_like(ranks, dtype=bool)
    count = mask.sum(axis=1, keepdims=True)
    mean = np.where(mask, ranks, 0.0).sum(axis=1, keepdims=True) / np.maximum(count, 1)
    centred = np.where(mask, ranks - mean, 0.0)
    norm = np.sqrt(np.sum(centred * centred, axis=1, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, centred / norm, np.nan)


def _counting_ranks(values):
    """Average ranks along the last axis of small non-negative integers, by counting (no sort)."""
    v = np.asarray(values).astype(np.int64)
    rows = v.reshape(-1, v.shape[-1])
    width = int(rows.max()) + 1
    index = rows + (np.arange(rows.shape[0]) * width)[:, None]
    counts = np.bincount(index.ravel(), minlength=rows.shape[0] * width).reshape(rows.shape[0], width)
    average = np.cumsum(counts, axis=1) - counts + (counts + 1) / 2.0
    return np.take_along_axis(average, rows, axis=1).reshape(v.shape)


def _sorting_ranks(values):
    """Average ranks along the last axis (same as `rankdata`), with one unstable argsort per row."""
    v = np.asarray(values, dtype=np.float64)
    rows = v.reshape(-1, v.shape[-1])
    n = rows.shape[1]
    order = np.argsort(rows, axis=1)
    ordered = np.take_along_axis(rows, order, axis=1)
    pos = np.broadcast_to(np.arange(n), rows.shape)
    starts = np.ones(rows.shape, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = np.ones(rows.shape, dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, pos, n - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty(rows.shape)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=1)
    return ranks.reshape(v.shape)


def _rank(values, axis=-1, method="average"):
    """`scipy.stats.rankdata` along the last axis, faster: tree distances (small integers) by
    counting, other values with one argsort per row."""
    v = np.asarray(values)
    if method != "average":
        return rankdata(v, axis=axis, method=method)
    if v.size and v.min() >= 0 and v.max() < 4096 and np.array_equal(v, np.round(v)):
        return _counting_ranks(v)
    return _sorting_ranks(v)


def _offdiag_ranks(m, method="average"):
    """Row ranks of m without its diagonal, placed back in a [C, C] (diag 0)."""
    c = m.shape[0]
    off = ~np.eye(c, dtype=bool)
    ranks = np.zeros((c, c))
    ranks[off] = _rank(m[off].reshape(c, c - 1), method=method).ravel()
    return ranks


def _pair_ranks(m, method="average"):
    """Ranks of the upper-triangle entries, as a symmetric [C, C] (diag 0)."""
    c = m.shape[0]
    iu = np.triu_indices(c, 1)
    ranks = np.zeros((c, c))
    ranks[iu] = _rank(m[iu], method=method)
    return ranks + ranks.T


class _SpearmanTriple:
    """Classwise (with / without diagonal) and pairwise Spearman against a fixed t.

    Ranks of t are computed once; relabelling the classes of the tree by a
    permutation p only permutes rows and columns of those rank matrices
    (row i of t[p][:, p] is row p[i] of t, reordered), so each permutation of
    the null costs a gather and a product.
    """

    def __init__(self, t):
        c = t.shape[0]
        self.off = ~np.eye(c, dtype=bool)
        self.upper = np.triu(np.ones((c, c), dtype=bool), 1)
        self.t_full = _standardise_rows(_rank(t))
        self.t_off = _standardise_rows(_offdiag_ranks(t), self.off)
        self.t_pair = self._standardise_pairs(_pair_ranks(t))

    def _standardise_pairs(self, sym_ranks):
        values = sym_ranks[self.upper]
        centred = values - values.mean()
        norm = np.sqrt(np.sum(centred * centred))
        out = np.zeros_like(sym_ranks)
        out[self.upper] = centred / norm if norm > 0 else np.nan
        return out + out.T

    def of(self, d_full, d_off, d_pair, perm=None):
        """(classwise, classwise_offdiag, pairwise) of prepared D ranks."""
        if perm is None:
            tf, to, tp = self.t_full, self.t_off, self.t_pair
        else:
            ix = np.ix_(perm, perm)
            tf, to, tp = self.t_full[ix], self.t_off[ix], self.t_pair[ix]
        classwise = fisher_mean(np.sum(d_full * tf, axis=1))
        offdiag = fisher_mean(np.sum(d_off * to, axis=1))
        pairwise = float(np.sum(d_pair * tp) / 2.0)
        return classwise, offdiag, pairwise

    def prepare(self, d, method="average"):
        return (_standardise_rows(_rank(d, method=method)),
                _standardise_rows(_offdiag_ranks(d, method), self.off),
                self._standardise_pairs(_pair_ranks(d, method)))


def spearman_measures(distances, tree_distances):
    """Classwise (Fisher-z, with and without the diagonal) and pairwise Spearman.

    Args:
        distances: [C, C] symmetric distances between representatives.
        tree_distances: [C, C] symmetric tree distances.

    Returns:
        dict with `spearman_classwise`, `spearman_classwise_offdiag`,
        `spearman_pairwise`.
    """
    s = _SpearmanTriple(np.asarray(tree_distances, dtype=np.float64))
    values = s.of(*s.prepare(np.asarray(distances, dtype=np.float64)))
    return dict(zip(_NAMES, values))


_NAMES = ("spearman_classwise", "spearman_classwise_offdiag", "spearman_pairwise")


def spearman_ceilings(tree_distances):
    """Largest Spearman values reachable by distances without ties.

    Representatives whose distances follow the tree's order but break its
    ties (every real embedding) reach at most these values; any tie-breaking
    gives the same number.
    """
    t = np.asarray(tree_distances, dtype=np.float64)
    s = _SpearmanTriple(t)
    return dict(zip(_NAMES, s.of(*s.prepare(t, method="ordinal"))))


# ------------------------------------------------------------- tree compare
def _clusters_from_linkage(z, n):
    members = [frozenset([i]) for i in range(n)]
    for a, b, *_ in z:
        members.append(members[int(a)] | members[int(b)])
    return {m for m in members[n:] if 1 < len(m) < n}


def _clusters_from_groups(groups_per_level, n):
    out = set()
    for groups in groups_per_level:
        for g in np.unique(groups):
            m = frozenset(np.flatnonzero(groups == g).tolist())
            if 1 < len(m) < n:
                out.add(m)
    return out


def robinson_foulds(linkage_matrix, groups_per_level):
    """Rooted Robinson-Foulds distance between a dendrogram and a true tree.

    Counts the clusters (leaf sets of internal nodes, singletons and the full
    set excluded) found in exactly one of the two trees.

    Args:
        linkage_matrix: SciPy linkage of n leaves.
        groups_per_level: list of [n] group ids, one per level of the true tree.

    Returns:
        (distance, maximum) with maximum = number of clusters of both trees.
    """
    n = linkage_matrix.shape[0] + 1
    a = _clusters_from_linkage(linkage_matrix, n)
    b = _clusters_from_groups(groups_per_level, n)
    return len(a ^ b), len(a) + len(b)


# ------------------------------------------------------ level retrieval
def neighbour_order(distances, queries=None):
    """[Q, C - 1]: the other representatives of each query row, nearest first (ties: smaller id)."""
    d = np.array(distances, dtype=np.float64)
    q = np.arange(d.shape[0]) if queries is None else np.asarray(queries)
    d[np.arange(q.size), q] = np.inf
    return np.argsort(d, axis=1, kind="stable")[:, :-1]


def level_retrieval(distances, groups, queries=None, order=None):
    """P@1, R-precision and MAP@R of each representative querying the others.

    Relevant = same group; R = group size - 1; queries with R = 0 are skipped.
    Ties in distance are broken by the smaller class id.

    Args:
        distances: [C, C] distances, or [Q, C] rows of the `queries`.
        groups: [C] group id of every representative.
        queries: row ids of the queries when `distances` has only their rows.
        order: optional `neighbour_order(distances, queries)`, to share one sort between levels.
    """
    q = np.arange(np.shape(distances)[0]) if queries is None else np.asarray(queries)
    order = neighbour_order(distances, queries) if order is None else order
    rel = groups[order] == groups[q][:, None]
    r = np.bincount(groups)[groups[q]] - 1
    keep = r > 0
    nan = float("nan")
    if not keep.any():
        return {"p_at_1": nan, "r_precision": nan, "map_at_r": nan, "num_queries": 0}
    rel, r = rel[keep], r[keep]
    pos = np.arange(1, rel.shape[1] + 1)
    within = pos[None, :] <= r[:, None]
    precision = np.cumsum(rel, axis=1) / pos
    return {
        "p_at_1": float(np.mean(rel[:, 0])),
        "r_precision": float(np.mean(np.sum(rel & within, axis=1) / r)),
        "map_at_r": float(np.mean(np.sum(precision * (rel & within), axis=1) / r)),
        "num_queries": int(keep.sum()),
    }


# --------------------------------------------------------------- public
def hierarchical_inference(representatives, hierarchy, distance="path", n_permutations=1000,
                           seed=0, method="auto", sample_options=None):
    """How well distances between class representatives follow the tree.

    With D = chordal distances between the normalised representatives and
    t = the tree distances:
    - `spearman_classwise`: Spearman(D[:, i], t[:, i]) over all C entries
      (diagonal included, as in the reference), Fisher-z averaged;
      `spearman_classwise_offdiag`: the same without entry i;
      `spearman_pairwise`: one Spearman over the pairs i < j;
    - `ceiling`: the same three measures for tie-free distances that follow
      the tree's order (the most any real embedding can reach);
    - `null`: permutation null (class labels of the tree shuffled, seeded):
      per measure `mean`, `std` and one-sided `p_value`
      = (1 + #{null >= observed}) / (1 + n_permutations);
    - `cophenetic_correlation`: Pearson correlation between the cophenetic
      distances of the UPGMA (average-linkage) tree of D and t;
    - `robinson_foulds` (rooted, clusters), its `robinson_foulds_max` and
      `robinson_foulds_normalized` between that tree and the true tree;
    - `levels`: for every upper level, P@1 / R-precision / MAP@R of each
      representative retrieving the others of its group by D.
    A row of NaN marks a class without a representative (e.g. absent from the
    data): it is left out of every measure and listed in `excluded_classes`.
    A measure that is undefined (identical representatives: no distance
    varies; a flat tree: every off-diagonal tree distance is the same) is
    NaN, with a warning and a `notes` entry saying why.

    Above `EXACT_MAX_CLASSES` classes (`method="auto"`) the Spearman values,
    null and level retrieval are estimated from sampled anchor classes and
    class pairs with 95% `confidence_interval`s, the ceilings stay exact and
    the UPGMA comparison runs on a class subset: see
    `keras_hier.inference_sampled` for the estimator (`method` in the result
    says which ran).

    Args:
        representatives: [C, D] array, one row per class (need not be normalised).
        hierarchy: a `keras_hier.Hierarchy` with C classes.
        distance: tree distance kind, `"path"` or `"lca_height"`.
        n_permutations: permutations of the null (0 to skip it).
        seed: seed of the permutations (and of the sampling).
        method: `"auto"` (exact up to `EXACT_MAX_CLASSES`), `"exact"` or `"sampled"`.
        sample_options: keyword arguments of `keras_hier.inference_sampled.sampled_inference`
            (`num_anchors`, `num_columns`, `num_pairs`, `tree_subset`).

    Returns:
        A plain dict (JSON-serialisable) with the entries above.

    Example:

    >>> import numpy as np, keras_hier
    >>> h = keras_hier.Hierarchy.from_paths(["a/x", "a/y", "b/z", "b/w"])
    >>> reps = np.array([[1., 0.], [.9, .1], [0., 1.], [.1, .9]])
    >>> out = hierarchical_inference(reps, h, n_permutations=10)
    >>> out["levels"][0]["p_at_1"]
    1.0
    """
    check_distance_kind(distance)
    reps, keep, missing = _checked_representatives(representatives, hierarchy)
    if method not in ("auto", "exact", "sampled"):
        raise ValueError(f"method must be 'auto', 'exact' or 'sampled', got {method!r}")
    sampled = method == "sampled" or (method == "auto" and keep.size > EXACT_MAX_CLASSES)
    result = {"distance": distance, "representative_distance": "chordal", "num_classes": int(keep.size),
              "excluded_classes": [int(i) for i in np.flatnonzero(missing)]}
    if sampled:
        result.update(sampled_inference(reps[keep], hierarchy, keep, distance, n_permutations, seed,
                                        **(sample_options or {})))
    else:
        result["method"] = "exact"
        result.update(_exact(reps[keep], hierarchy, keep, distance, n_permutations, seed))
    notes = _undefined_notes(reps[keep], hierarchy, keep, distance)
    if notes:
        result["notes"] = notes
        for note in notes:
            warnings.warn(note, RuntimeWarning, stacklevel=2)
    return result


def _checked_representatives(representatives, hierarchy):
    reps = np.asarray(representatives, dtype=np.float64)
    c = hierarchy.num_classes
    if reps.ndim != 2 or reps.shape[0] != c:
        raise ValueError(f"representatives must be [num_classes={c}, D], got shape {reps.shape}")
    missing = np.all(np.isnan(reps), axis=1)
    bad = ~missing & ~np.all(np.isfinite(reps), axis=1)
    if bad.any():
        raise ValueError(f"representatives of classes {np.flatnonzero(bad)[:5].tolist()} contain "
                         "NaN/inf (a whole NaN row marks an absent class; partial NaN is invalid)")
    keep = np.flatnonzero(~missing)
    if keep.size < 3:
        raise ValueError(f"hierarchical_inference needs at least 3 classes with representatives, "
                         f"got {keep.size}")
    return reps, keep, missing


def _undefined_notes(reps, hierarchy, keep, distance):
    """Why some measures are NaN: no variation in the representatives or in the tree."""
    notes = []
    spread = np.ptp(reps, axis=0).max() if reps.size else 0.0
    if spread <= 1e-12 * max(1.0, np.abs(reps).max()):
        notes.append("all representatives are identical: their distances do not vary, so every Spearman "
                     "correlation and the cophenetic correlation are undefined (NaN)")
    weights = np.zeros(hierarchy.num_classes)
    weights[keep] = 1
    others = distance_histogram(hierarchy, keep, weights, kind=distance)
    others[:, 0] -= 1  # the class itself
    if np.count_nonzero(others.sum(axis=0)) <= 1:
        notes.append("the tree is flat (every class directly under the root): all off-diagonal tree distances "
                     f"({distance}) are equal, so the Spearman values without the diagonal, the pairwise one, "
                     "the cophenetic correlation and level retrieval are undefined (NaN)")
    return notes


def _exact(reps, hierarchy, keep, distance, n_permutations, seed):
    """The exact measures (C x C matrices); the reference for the sampled estimator."""
    t = np.asarray(hierarchy.distance_matrix(distance), dtype=np.float64)[np.ix_(keep, keep)]
    d = chordal_distances(reps)
    triple = _SpearmanTriple(t)
    prepared = triple.prepare(d)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = triple.of(*prepared)
        result = dict(zip(_NAMES, observed))
    result["ceiling"] = dict(zip(_NAMES, exact_ceilings(hierarchy, keep, distance)))  # from tie counts, no sort
    if n_permutations:
        rng = np.random.default_rng(seed)
        null = np.array([triple.of(*prepared, perm=rng.permutation(keep.size))
                         for _ in range(int(n_permutations))])
        result["null"] = _null_summary(null, observed, n_permutations, seed)
    result.update(_tree_comparison(d, t, hierarchy, keep))
    groups = [np.asarray(hierarchy.ancestors(level))[keep] for level in range(hierarchy.depth)]
    levels = []
    order = neighbour_order(d)
    for level in range(hierarchy.depth - 1):
        _, dense = np.unique(groups[level], return_inverse=True)
        entry = {"level": level, "num_nodes": int(hierarchy.num_nodes(level))}
        entry.update(level_retrieval(d, dense, order=order))
        levels.append(entry)
    result["levels"] = levels
    return result


def _null_summary(null, observed, n_permutations, seed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns of an undefined measure
        out = {name: {"mean": float(np.nanmean(null[:, i])), "std": float(np.nanstd(null[:, i])),
                      "p_value": float((1 + np.sum(null[:, i] >= observed[i])) / (1 + len(null)))}
               for i, name in enumerate(_NAMES)}
    out.update(n_permutations=int(n_permutations), seed=seed)
    return out


def _tree_comparison(d, t, hierarchy, keep):
    z = linkage(squareform(d, checks=False), method="average")
    with np.errstate(invalid="ignore", divide="ignore"):
        coph = float(np.corrcoef(cophenet(z), squareform(t, checks=False))[0, 1])
    groups = [np.asarray(hierarchy.ancestors(level))[keep] for level in range(hierarchy.depth)]
    rf, rf_max = robinson_foulds(z, groups)
    return {"cophenetic_correlation": coph, "robinson_foulds": rf, "robinson_foulds_max": rf_max,
            "robinson_foulds_normalized": rf / rf_max if rf_max else 0.0}


__all__ = ["hierarchical_inference", "spearman_measures", "spearman_ceilings", "fisher_mean",
           "chordal_distances", "robinson_foulds", "level_retrieval", "neighbour_order", "EXACT_MAX_CLASSES"]
