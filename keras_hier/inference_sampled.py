"""Hierarchical inference at large C: Spearman estimated from sampled anchors and pairs.

The exact measures of `keras_hier.inference` need C x C matrices (and their
ranks, several times): about 2 GB at C = 5 000, 100 GB at C = 65 000. Above
`EXACT_MAX_CLASSES` they are estimated instead. The estimator (what
`hierarchical_inference(..., method="sampled")` reports):

- classwise Spearman: `num_anchors` anchor classes drawn without
  replacement; for each, Spearman between the representative distances and
  the tree distances from the anchor to `num_columns` classes drawn
  uniformly (the anchor's own entry added for the variant with the
  diagonal), averaged with Fisher's z as the exact measure. 95% confidence
  interval: tanh(mean z +- t_{A-1} sd(z) / sqrt(A) * sqrt(1 - A / C)) over
  the A anchors (between-anchor spread, which includes the column sampling).
- pairwise Spearman: Spearman over `num_pairs` class pairs (i != j) drawn
  uniformly with replacement, i.e. i.i.d. draws from the population of
  pairs. 95% interval from 20 disjoint groups of pairs: estimate +-
  t_19 sd(group values) / sqrt(20).
- ceilings: exact at any C, from per-class distance histograms
  (`keras_hier.tree_counts.tie_ceiling`), no sampling.
- permutation null: the same estimator (same anchors, columns and pairs)
  with the tree's class labels shuffled, so observed and null values are
  comparable; `p_value` = (1 + #{null >= observed}) / (1 + permutations),
  with at most `SAMPLED_MAX_PERMUTATIONS` permutations (stated in
  `null.n_permutations`).
- UPGMA cophenetic correlation and Robinson-Foulds: exact on a random
  subset of `tree_subset` classes (stated in `tree_subset_size`).
- level retrieval (P@1, R-precision, MAP@R): exact for the anchor queries
  (full distance columns; only group equality is needed), averaged.

Bias: a Spearman correlation computed on m sampled entries differs from the
full-population value by O(1/m); with the defaults the error against the
exact value is below the interval half-width (see BENCHMARKS.md "scale" and
tests/test_inference.py).
"""

import numpy as np
from scipy import stats
from scipy.cluster.hierarchy import cophenet, linkage
from scipy.spatial.distance import squareform

from keras_hier.geometry import chordal_distances, normalize_rows, sphere_distances
from keras_hier.tree_counts import distance_histogram, pair_distances, tie_ceiling

__all__ = ["EXACT_MAX_CLASSES", "SAMPLED_MAX_PERMUTATIONS", "sampled_inference", "exact_ceilings"]

#: Largest C for which `hierarchical_inference` computes the exact measures by default.
EXACT_MAX_CLASSES = 5000
#: The sampled null runs at most this many permutations (p-values resolve 1/101).
SAMPLED_MAX_PERMUTATIONS = 100
_CLIP = 1.0 - 1e-12
_GROUPS = 20


def _avg_ranks(values):
    """Row-wise average ranks of [A, m] values (any dtype)."""
    return stats.rankdata(values, axis=-1)


def _standardise(ranks):
    centred = ranks - ranks.mean(axis=-1, keepdims=True)
    norm = np.sqrt(np.sum(centred * centred, axis=-1, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, centred / norm, np.nan)


def _row_spearman(d_std, t):
    """Spearman per row: d_std are standardised ranks of d, t raw tree distances."""
    return np.sum(d_std * _standardise(_avg_ranks(t)), axis=-1)


def _z(r):
    return np.arctanh(np.clip(r, -_CLIP, _CLIP))


def _fisher_ci(rhos, population):
    """(Fisher mean, 95% interval) of per-anchor correlations (finite ones)."""
    z = _z(rhos[np.isfinite(rhos)])
    if z.size < 2:
        return float(np.tanh(z.mean())) if z.size else float("nan"), None
    half = stats.t.ppf(0.975, z.size - 1) * z.std(ddof=1) / np.sqrt(z.size) * np.sqrt(max(1 - z.size / population, 0))
    m = z.mean()
    return float(np.tanh(m)), [float(np.tanh(m - half)), float(np.tanh(m + half))]


def _group_ci(d_ranks_std_groups, t_groups, estimate):
    values = np.array([_row_spearman(d[None], t[None])[0] for d, t in zip(d_ranks_std_groups, t_groups)])
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return [float(estimate - half), float(estimate + half)]


class _Design:
    """The sampled anchors, columns and pairs, and the fixed representative-distance ranks."""

    def __init__(self, reps, n, rng, num_anchors, num_columns, num_pairs):
        self.anchors = rng.choice(n, size=min(num_anchors, n), replace=False)
        self.columns = rng.choice(n, size=min(num_columns, n - 1), replace=n - 1 < num_columns)
        self.columns = self.columns[None, :].repeat(self.anchors.size, 0)
        same = self.columns == self.anchors[:, None]  # never the anchor itself among the sampled columns
        self.columns[same] = (self.columns[same] + 1) % n
        a = self.anchors[:, None]
        x = normalize_rows(reps)
        d_off = np.sqrt(np.maximum(2 - 2 * np.einsum("ad,amd->am", x[self.anchors], x[self.columns]), 0))
        self.d_off = _standardise(_avg_ranks(d_off))
        self.d_full = _standardise(_avg_ranks(np.hstack([np.zeros((a.size, 1)), d_off])))
        i = rng.integers(0, n, size=num_pairs)
        j = rng.integers(0, n - 1, size=num_pairs)
        self.i, self.j = i, j + (j >= i)
        d_pair = np.sqrt(np.maximum(2 - 2 * np.sum(x[self.i] * x[self.j], axis=1), 0))
        self.d_pair = _standardise(_avg_ranks(d_pair))
        g = np.array_split(np.arange(num_pairs), _GROUPS)
        self.groups = g
        self.d_pair_groups = [_standardise(_avg_ranks(d_pair[idx])) for idx in g]

    def measures(self, hierarchy, keep, distance, perm=None, with_ci=False):
        """(classwise, offdiag, pairwise) estimates [, their intervals] under a relabelling `perm`."""
        lab = keep if perm is None else keep[perm]
        n = keep.size
        t_off = pair_distances(hierarchy, lab[self.anchors][:, None], lab[self.columns], distance)
        t_full = np.hstack([np.zeros((self.anchors.size, 1), dtype=t_off.dtype), t_off])
        t_pair = pair_distances(hierarchy, lab[self.i], lab[self.j], distance)
        cw, cw_ci = _fisher_ci(_row_spearman(self.d_full, t_full), n)
        off, off_ci = _fisher_ci(_row_spearman(self.d_off, t_off), n)
        pair = float(_row_spearman(self.d_pair[None], t_pair[None])[0])
        if not with_ci:
            return cw, off, pair
        pair_ci = _group_ci(self.d_pair_groups, [t_pair[idx] for idx in self.groups], pair)
        return (cw, off, pair), (cw_ci, off_ci, pair_ci)


def exact_ceilings(hierarchy, keep, distance):
    """Spearman ceilings (classwise, offdiag, pairwise) from distance histograms: exact, O(C depth^2)."""
    weights = np.zeros(hierarchy.num_classes)
    weights[keep] = 1
    counts = distance_histogram(hierarchy, keep, weights, kind=distance)
    full = tie_ceiling(counts)
    off_counts = counts.copy()
    off_counts[:, 0] -= 1
    off = tie_ceiling(off_counts)
    pairs = counts.sum(axis=0)
    pairs[0] -= keep.size
    pair = tie_ceiling(pairs / 2)

    def fisher(r):
        r = r[np.isfinite(r)]
        return float(np.tanh(np.mean(_z(r)))) if r.size else float("nan")

    return fisher(full), fisher(off), float(pair)


def _tree_subset(reps, hierarchy, keep, distance, rng, size):
    from keras_hier.inference import robinson_foulds

    sub = np.sort(rng.choice(keep.size, size=min(size, keep.size), replace=False))
    classes = keep[sub]
    d = chordal_distances(reps[sub])
    t = pair_distances(hierarchy, classes[:, None], classes[None, :], distance).astype(np.float64)
    z = linkage(squareform(d, checks=False), method="average")
    coph = float(np.corrcoef(cophenet(z), squareform(t, checks=False))[0, 1])
    groups = [np.asarray(hierarchy.ancestors(level))[classes] for level in range(hierarchy.depth)]
    rf, rf_max = robinson_foulds(z, groups)
    return {"cophenetic_correlation": coph, "robinson_foulds": rf, "robinson_foulds_max": rf_max,
            "robinson_foulds_normalized": rf / rf_max if rf_max else 0.0, "tree_subset_size": int(sub.size)}


def _anchor_levels(reps, hierarchy, keep, anchors):
    from keras_hier.inference import level_retrieval, neighbour_order

    d = sphere_distances(reps[anchors], reps)
    order = neighbour_order(d, anchors)
    levels = []
    for level in range(hierarchy.depth - 1):
        _, dense = np.unique(np.asarray(hierarchy.ancestors(level))[keep], return_inverse=True)
        entry = {"level": level, "num_nodes": int(hierarchy.num_nodes(level))}
        entry.update(level_retrieval(d, dense, queries=anchors, order=order))
        levels.append(entry)
    return levels


def sampled_inference(reps, hierarchy, keep, distance="path", n_permutations=100, seed=0, num_anchors=200,
                      num_columns=2000, num_pairs=200_000, tree_subset=2000):
    """The sampled estimates (see the module docstring) for representatives `reps` of classes `keep`.

    Args:
        reps: [n, D] finite representatives of the classes `keep`.
        hierarchy: the `Hierarchy`.
        keep: int [n] class ids of the rows of `reps`.
        distance: tree distance kind.
        n_permutations: permutations of the null (0 skips it).
        seed: seed of the sampling and of the permutations.
        num_anchors, num_columns, num_pairs: sample sizes of the estimator.
        tree_subset: classes of the UPGMA / Robinson-Foulds comparison.

    Returns:
        dict with the three Spearman estimates, `confidence_interval`,
        `ceiling`, `null`, the tree comparison, `levels` and the sample sizes.
    """
    rng = np.random.default_rng(seed)
    n = keep.size
    design = _Design(reps, n, rng, num_anchors, num_columns, num_pairs)
    names = ("spearman_classwise", "spearman_classwise_offdiag", "spearman_pairwise")
    observed, intervals = design.measures(hierarchy, keep, distance, with_ci=True)
    result = {"method": "sampled", "num_anchors": int(design.anchors.size),
              "num_columns": int(design.columns.shape[1]), "num_pairs": int(num_pairs)}
    result.update(zip(names, observed))
    result["confidence_interval"] = dict(zip(names, intervals))
    result["ceiling"] = dict(zip(names, exact_ceilings(hierarchy, keep, distance)))
    n_permutations = min(int(n_permutations), SAMPLED_MAX_PERMUTATIONS)
    if n_permutations:
        null = np.array([design.measures(hierarchy, keep, distance, perm=rng.permutation(n))
                         for _ in range(n_permutations)])
        result["null"] = {
            name: {"mean": float(np.nanmean(null[:, i])), "std": float(np.nanstd(null[:, i])),
                   "p_value": float((1 + np.sum(null[:, i] >= observed[i])) / (1 + len(null)))}
            for i, name in enumerate(names)}
        result["null"].update(n_permutations=int(n_permutations), seed=seed)
    result.update(_tree_subset(reps, hierarchy, keep, distance, rng, tree_subset))
    result["levels"] = _anchor_levels(reps, hierarchy, keep, design.anchors)
    return result
