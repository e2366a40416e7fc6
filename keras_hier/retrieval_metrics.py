"""Hierarchy-informed retrieval on embeddings, computed blockwise.

HS@k (hierarchical similarity at k, Barz & Denzler; "hierarchical precision"
in their paper), AHS@250, Recall@k and MAP@R ("A Metric Learning Reality
Check") over a set of test embeddings: every embedding queries all the others
by cosine similarity. Rows of the N x N similarity matrix are computed a block
at a time and only the top-K neighbours of each row are kept, so memory is
O(block * N + N * K) instead of the O(N^2) of the full-matrix formulation
(N = 50 000 needs 20 GB for the full float64 matrix, plus its argsort).

NumPy only; importing this module does not import TensorFlow.
"""

import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from keras_hier.geometry import normalize_rows, tree_to_chordal
from keras_hier.labels import class_ids
from keras_hier.tree_counts import check_distance_kind, distance_histogram, pair_distances

DEFAULT_KS = (1, 5, 10, 50, 100, 250)
HS_FORMS = ("chordal", "arccos")


def hs_similarity(t, beta=1.0, form="chordal"):
    """Class similarity of HS@k from tree distances t (elementwise, float64).

    `"chordal"`: sigma = 1 - T(t)^2 / 2 with T(t) = sqrt(2) t / (beta + t)
    (`keras_hier.geometry.tree_to_chordal`): the cosine two unit vectors at
    chordal distance T would have. `"arccos"`: sigma = cos(pi/2 * t / (beta + t)).
    Both are 1 at t = 0 and decrease towards 0 with t.

    Example:

    >>> round(float(hs_similarity(2.0)), 6)
    0.555556
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    t = np.asarray(t, dtype=np.float64)
    if form == "chordal":
        return 1.0 - tree_to_chordal(t, beta) ** 2 / 2.0
    if form == "arccos":
        return np.cos(np.pi / 2.0 * t / (beta + t))
    raise ValueError(f"form must be one of {HS_FORMS}, got {form!r}")


def tree_similarity_for_hs(hierarchy, beta=1.0, distance="path", form="chordal"):
    """The C x C matrix of `hs_similarity` (small C only; `retrieval` never builds it).

    Args:
        hierarchy: a `keras_hier.Hierarchy`.
        beta: the constant of T (the reference code's default is 1).
        distance: tree distance kind, `"path"` or `"lca_height"`.
        form: `"chordal"` (the paper's runs) or `"arccos"`.

    Returns:
        float64 [C, C] matrix with ones on the diagonal.
    """
    return hs_similarity(hierarchy.distance_matrix(distance), beta, form)


_trapezoid = getattr(np, "trapezoid", None) or np.trapz


def _neighbour_block(x, k, start, stop):
    """[stop - start, k] nearest other rows of rows start..stop of x (ties: smaller index)."""
    n = x.shape[0]
    sim = x[start:stop] @ x.T  # [b, N]
    rows = np.arange(stop - start)
    sim[rows, rows + start] = -np.inf  # never retrieve the query itself
    np.negative(sim, out=sim)
    if k < n - 1:
        part = np.argpartition(sim, k - 1, axis=1)[:, :k]
    else:
        part = np.argsort(sim, axis=1)[:, :k]
    part.sort(axis=1)  # ascending index, so the stable sort below breaks ties by index
    vals = np.take_along_axis(sim, part, axis=1)
    del sim
    order = np.argsort(vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _neighbour_blocks(x, k, block_size, workers=None):
    """Yields (start, stop, [b, k] neighbour indices) for row blocks of x, in order.

    Blocks are computed by `workers` threads (default: the number of CPU
    cores, at most 4; NumPy's partition and BLAS release the GIL), each
    holding one [block_size, N] similarity block.
    """
    n = x.shape[0]
    spans = [(start, min(start + block_size, n)) for start in range(0, n, block_size)]
    workers = min(os.cpu_count() or 1, 4) if workers is None else workers
    if workers <= 1 or len(spans) == 1:
        for start, stop in spans:
            yield start, stop, _neighbour_block(x, k, start, stop)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending = []
        for start, stop in spans:
            pending.append((start, stop, pool.submit(_neighbour_block, x, k, start, stop)))
            if len(pending) > workers:  # bounded: at most workers + 1 blocks in flight
                first = pending.pop(0)
                yield first[0], first[1], first[2].result()
        for start, stop, future in pending:
            yield start, stop, future.result()


def top_k_neighbours(embeddings, k, block_size=256, dtype=np.float64):
    """Indices of the k most cosine-similar other rows of every row.

    Ties are broken by the smaller index. A row never lists itself. Only
    `block_size` rows of the similarity matrix exist at any time.

    Args:
        embeddings: [N, D] array (normalised here).
        k: neighbours per row, at most N - 1.
        block_size: rows of the similarity matrix held at once.
        dtype: float type of the similarity computation.

    Returns:
        int64 [N, k] neighbour indices, most similar first.

    Example:

    >>> import numpy as np
    >>> top_k_neighbours(np.array([[1., 0.], [1., .1], [0., 1.]]), 1).ravel().tolist()
    [1, 0, 1]
    """
    x = normalize_rows(embeddings).astype(dtype)
    n = x.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in 1..N-1 = {n - 1}, got {k}")
    out = np.empty((n, k), dtype=np.int64)
    for start, stop, block in _neighbour_blocks(x, k, block_size):
        out[start:stop] = block
    return out


class _IdealHS:
    """Best possible and random-ranking HS sums per query class, from sample-count histograms.

    A query of class y sees counts[c] samples of every class c (counts[y] - 1
    of its own). The best ranking lists them by increasing tree distance, so
    the best sum over k items only needs how many samples lie at each
    distance from y (`distance_histogram` with sample counts as weights):
    no C x C matrix.
    """

    def __init__(self, hierarchy, labels, k, beta, distance, form):
        counts = np.bincount(labels, minlength=hierarchy.num_classes)
        self.present = np.flatnonzero(counts)
        hist = distance_histogram(hierarchy, self.present, weights=counts, kind=distance)
        hist[:, 0] -= 1  # the query itself is not retrieved
        sigma = hs_similarity(np.arange(hist.shape[1]), beta, form)
        self.row = np.full(hierarchy.num_classes, -1)
        self.row[self.present] = np.arange(self.present.size)
        self.cum_count = np.cumsum(hist, axis=1)
        self.cum_gain = np.cumsum(hist * sigma, axis=1)
        self.sigma = sigma
        self.mean_sigma = self.cum_gain[:, -1] / max(labels.size - 1, 1)
        self.positions = np.arange(1, k + 1, dtype=np.float64)

    def cumsum(self, y):
        """Best possible sum of sigma over the first 1..k items, [len(y), k]."""
        r = self.row[y]
        cum_count = self.cum_count[r]
        bins = (cum_count[:, None, :] < self.positions[None, :, None] - 1e-9).sum(axis=2)  # bin of the p-th item
        pad = np.zeros((r.size, 1))
        count_before = np.take_along_axis(np.hstack([pad, cum_count]), bins, axis=1)
        gain_before = np.take_along_axis(np.hstack([pad, self.cum_gain[r]]), bins, axis=1)
        return gain_before + (self.positions[None, :] - count_before) * self.sigma[np.minimum(bins, self.sigma.size - 1)]

    def random(self, y):
        """Expected sum of sigma over the first 1..k items of a random ranking, [len(y), k]."""
        return self.mean_sigma[self.row[y]][:, None] * self.positions[None, :]


def _check_inputs(embeddings, labels, hierarchy, ks):
    """Validated (x, y, ks) or a ValueError/TypeError naming the argument."""
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {x.shape}")
    if np.ndim(labels) != 1 or np.shape(labels)[0] != x.shape[0]:
        raise ValueError(f"labels must be [N] with N = {x.shape[0]} (embeddings), got shape {np.shape(labels)}")
    y = class_ids(labels, hierarchy.num_classes, source="retrieval labels", num_samples=x.shape[0])
    if not np.all(np.isfinite(x)):
        bad = np.flatnonzero(~np.all(np.isfinite(x), axis=1))
        raise ValueError(f"embeddings contain NaN/inf in {bad.size} rows (first: row {bad[0]})")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"retrieval needs at least 2 embeddings, got {n}")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if ks[-1] > n - 1:
        raise ValueError(f"k = {ks[-1]} is larger than the N - 1 = {n - 1} other embeddings")
    return x, y, ks


class _RetrievalSums:
    """Running sums over query blocks: HS@k (and its random reference), Recall@k hits, MAP@R."""

    def __init__(self, hs_k, ks, k_all):
        self.hs_sum, self.random_sum, self.hs_count = np.zeros(hs_k), np.zeros(hs_k), np.zeros(hs_k)
        self.ks, self.hits, self.ap_sum = ks, np.zeros(len(ks)), 0.0
        self.positions = np.arange(1, k_all + 1)

    def add_hs(self, gained, ideal, random):
        with np.errstate(invalid="ignore", divide="ignore"):
            hs, rnd = gained / ideal, random / ideal
        valid = np.isfinite(hs)
        self.hs_sum += np.where(valid, hs, 0.0).sum(axis=0)
        self.random_sum += np.where(valid, rnd, 0.0).sum(axis=0)
        self.hs_count += valid.sum(axis=0)

    def add_ranks(self, same, r):
        """same: [q, K] relevance of the ranked results of queries with r > 0 positives."""
        for i, k in enumerate(self.ks):
            self.hits[i] += np.sum(np.any(same[:, :k], axis=1))
        precision = np.cumsum(same, axis=1) / self.positions
        within = self.positions[None, :] <= r[:, None]
        self.ap_sum += float(np.sum(np.sum(precision * (same & within), axis=1) / r))


def retrieval(embeddings, labels, hierarchy, ks=DEFAULT_KS, hs_max_k=250, beta=1.0,
              distance="path", form="chordal", block_size=512, dtype=np.float64):
    """Retrieval measures of test embeddings, hierarchy-informed and standard.

    Every embedding queries the other N - 1 by cosine similarity.
    - HS@k: sum of sigma(y_q, y_r) over the first k results, divided by the
      best possible sum for that query (sigma from `hs_similarity`);
      averaged over queries. `hs_curve[k - 1]` = HS@k for k = 1..hs_max_k;
      `hs_curve_random` = the expected HS@k of a random ranking (the ideal
      ranking is 1 everywhere).
    - AHS@hs_max_k: normalised area under the HS@k curve (trapezoid rule
      over k = 1..hs_max_k, x-axis scaled to [0, 1]), as in the reference.
    - Recall@k: fraction of queries with at least one same-class result among
      the first k.
    - MAP@R: R = number of other samples of the query's class; mean over
      i <= R of precision@i at the relevant positions, divided by R.
    Queries whose class has no other sample (R = 0) are left out of Recall@k
    and MAP@R and counted in `queries_without_positives`; when every query
    is such, those measures are NaN and `notes` says why.
    Memory: O(block_size * N + N * K); tree distances of the retrieved
    (query, result) label pairs only, no C x C matrix.

    Args:
        embeddings: [N, D] float array (any scale; normalised here).
        labels: [N] integer class ids.
        hierarchy: a `keras_hier.Hierarchy`.
        ks: the k values reported for HS@k and Recall@k.
        hs_max_k: length of the HS@k curve (AHS@hs_max_k); capped at N - 1.
        beta: constant of the distance transform T.
        distance: tree distance kind, `"path"` or `"lca_height"`.
        form: `"chordal"` or `"arccos"` (see `hs_similarity`).
        block_size: query rows processed at once (memory ~ 8 * block * N bytes).
        dtype: float type of the similarity computation.

    Returns:
        A dict: `hs_at_k` ({k: value}), `hs_curve`, `hs_curve_random`, `ahs` and
        `ahs_k` (`ahs_250` too when hs_max_k = 250), `recall_at_k` ({k: value}),
        `map_at_r`, `queries_without_positives`, `classes_absent`,
        `num_queries`, `distance`.

    Example:

    >>> import numpy as np, keras_hier
    >>> h = keras_hier.Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> emb = np.array([[1, 0], [1, .1], [0, 1], [.1, 1], [-1, 0], [-1, .1]])
    >>> r = retrieval(emb, np.array([0, 0, 1, 1, 2, 2]), h, ks=(1,), hs_max_k=3)
    >>> r["recall_at_k"][1]
    1.0
    """
    check_distance_kind(distance)
    hs_similarity(0.0, beta, form)  # checks beta and form
    x, y, ks = _check_inputs(embeddings, labels, hierarchy, ks)
    n = x.shape[0]
    hs_k = min(int(hs_max_k), n - 1)
    counts = np.bincount(y, minlength=hierarchy.num_classes)
    r = counts[y] - 1  # relevant items per query
    k_all = int(min(n - 1, max(hs_k, ks[-1], r.max())))
    ideal = _IdealHS(hierarchy, y, hs_k, beta, distance, form)
    sums = _RetrievalSums(hs_k, ks, k_all)
    for start, stop, block in _neighbour_blocks(normalize_rows(x).astype(dtype), k_all, block_size):
        yq, retrieved = y[start:stop], y[block]  # [b], [b, K]
        sigma = hs_similarity(pair_distances(hierarchy, yq[:, None], retrieved[:, :hs_k], distance), beta, form)
        sums.add_hs(np.cumsum(sigma, axis=1), ideal.cumsum(yq), ideal.random(yq))
        keep = r[start:stop] > 0
        sums.add_ranks(retrieved[keep] == yq[keep, None], r[start:stop][keep])
    return _retrieval_result(sums, r, counts, hs_k, distance)


def _retrieval_result(sums, r, counts, hs_k, distance):
    with np.errstate(invalid="ignore", divide="ignore"):
        hs_curve = sums.hs_sum / sums.hs_count
        random_curve = sums.random_sum / sums.hs_count
    ahs = float(_trapezoid(hs_curve, dx=1.0 / (hs_k - 1))) if hs_k > 1 else float(hs_curve[0])
    num_pos = int(np.sum(r > 0))
    nan = float("nan")
    result = {
        "distance": distance,
        "num_queries": int(r.size),
        "hs_at_k": {k: float(hs_curve[k - 1]) for k in sums.ks if k <= hs_k},
        "hs_curve": [float(v) for v in hs_curve],
        "hs_curve_random": [float(v) for v in random_curve],
        "ahs_k": hs_k,
        "ahs": ahs,
        "recall_at_k": {k: (float(sums.hits[i] / num_pos) if num_pos else nan) for i, k in enumerate(sums.ks)},
        "map_at_r": sums.ap_sum / num_pos if num_pos else nan,
        "queries_without_positives": int(r.size - num_pos),
        "classes_absent": [int(c) for c in np.flatnonzero(counts == 0)],
    }
    if not num_pos:
        note = ("Recall@k and MAP@R are undefined (NaN): every class appears once, so no query has another "
                "sample of its class to find")
        result["notes"] = [note]
        warnings.warn(note, RuntimeWarning, stacklevel=3)
    if hs_k == 250:
        result["ahs_250"] = ahs
    return result


__all__ = ["retrieval", "top_k_neighbours", "tree_similarity_for_hs", "hs_similarity", "DEFAULT_KS"]
