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

import numpy as np

DEFAULT_KS = (1, 5, 10, 50, 100, 250)


def tree_similarity_for_hs(hierarchy, beta=1.0, distance="path", form="chordal"):
    """Class similarity used by HS@k: sigma = 1 - T(t)^2 / 2 (float64 [C, C]).

    T(t) = sqrt(2) * t / (beta + t) maps the tree distance t onto a chordal
    distance of the unit sphere (0 for the same class, towards sqrt(2) far
    away), so sigma is the cosine two unit vectors at that distance would
    have. `form="arccos"` uses the angle instead: sigma = cos(pi/2 * t / (beta + t)).

    Args:
        hierarchy: a `keras_hier.Hierarchy`.
        beta: the constant of T (the reference code's default is 1).
        distance: tree distance kind, `"path"` or `"lca_height"`.
        form: `"chordal"` (the paper's runs) or `"arccos"`.

    Returns:
        float64 [C, C] matrix with ones on the diagonal.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    t = np.asarray(hierarchy.distance_matrix(distance), dtype=np.float64)
    ratio = t / (beta + t)
    if form == "chordal":
        return 1.0 - (np.sqrt(2.0) * ratio) ** 2 / 2.0
    if form == "arccos":
        return np.cos(np.pi / 2.0 * ratio)
    raise ValueError(f"form must be 'chordal' or 'arccos', got {form!r}")


_trapezoid = getattr(np, "trapezoid", None) or np.trapz


def _normalize_rows(x):
    norms = np.sqrt(np.maximum(np.sum(x * x, axis=1, keepdims=True), 1e-12))
    return x / norms


def _neighbour_blocks(x, k, block_size):
    """Yields (start, stop, [b, k] neighbour indices) for row blocks of x."""
    n = x.shape[0]
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
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
        yield start, stop, np.take_along_axis(part, order, axis=1)


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
    x = _normalize_rows(np.asarray(embeddings, dtype=dtype))
    n = x.shape[0]
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in 1..N-1 = {n - 1}, got {k}")
    out = np.empty((n, k), dtype=np.int64)
    for start, stop, block in _neighbour_blocks(x, k, block_size):
        out[start:stop] = block
    return out


def _ideal_cumsum(sigma, counts, k):
    """Best possible sum of sigma over k retrieved items, per query class.

    Class y's query sees counts[c] items of every class c (counts[y] - 1 of its
    own); the best ranking lists them by decreasing sigma[y, c].
    """
    num_classes = sigma.shape[0]
    ideal = np.full((num_classes, k), np.nan)
    for y in range(num_classes):
        if counts[y] == 0:
            continue
        available = counts.copy()
        available[y] -= 1
        order = np.argsort(-sigma[y], kind="stable")
        values = np.repeat(sigma[y, order], available[order])[:k]
        ideal[y, : len(values)] = np.cumsum(values)
    return ideal


def retrieval(embeddings, labels, hierarchy, ks=DEFAULT_KS, hs_max_k=250, beta=1.0,
              distance="path", form="chordal", block_size=512, dtype=np.float64):
    """Retrieval measures of test embeddings, hierarchy-informed and standard.

    Every embedding queries the other N - 1 by cosine similarity.
    - HS@k: sum of sigma(y_q, y_r) over the first k results, divided by the
      best possible sum for that query (sigma from `tree_similarity_for_hs`);
      averaged over queries. `hs_curve[k - 1]` = HS@k for k = 1..hs_max_k.
    - AHS@hs_max_k: normalised area under the HS@k curve (trapezoid rule
      over k = 1..hs_max_k, x-axis scaled to [0, 1]), as in the reference.
    - Recall@k: fraction of queries with at least one same-class result among
      the first k.
    - MAP@R: R = number of other samples of the query's class; mean over
      i <= R of precision@i at the relevant positions, divided by R.
    Queries whose class has no other sample (R = 0) are left out of Recall@k
    and MAP@R and counted in `queries_without_positives`.

    Args:
        embeddings: [N, D] float array (any scale; normalised here).
        labels: [N] integer class ids.
        hierarchy: a `keras_hier.Hierarchy`.
        ks: the k values reported for HS@k and Recall@k.
        hs_max_k: length of the HS@k curve (AHS@hs_max_k); capped at N - 1.
        beta: constant of the distance transform T.
        distance: tree distance kind, `"path"` or `"lca_height"`.
        form: `"chordal"` or `"arccos"` (see `tree_similarity_for_hs`).
        block_size: query rows processed at once (memory ~ 8 * block * N bytes).
        dtype: float type of the similarity computation.

    Returns:
        A dict: `hs_at_k` ({k: value}), `hs_curve`, `ahs` and `ahs_k`
        (`ahs_250` too when hs_max_k = 250), `recall_at_k` ({k: value}),
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
    x = np.asarray(embeddings)
    y = np.asarray(labels)
    num_classes = hierarchy.num_classes
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be [N] with N = {x.shape[0]} (embeddings), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"labels must be integer class ids, got dtype {y.dtype}")
    if not np.all(np.isfinite(x)):
        bad = np.flatnonzero(~np.all(np.isfinite(x), axis=1))
        raise ValueError(f"embeddings contain NaN/inf in {bad.size} rows (first: row {bad[0]})")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1}; got values {y.min()}..{y.max()}")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"retrieval needs at least 2 embeddings, got {n}")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if ks[-1] > n - 1:
        raise ValueError(f"k = {ks[-1]} is larger than the N - 1 = {n - 1} other embeddings")
    hs_k = min(int(hs_max_k), n - 1)

    counts = np.bincount(y, minlength=num_classes)
    r = counts[y] - 1  # relevant items per query
    k_all = int(min(n - 1, max(hs_k, ks[-1], r.max())))
    sigma = tree_similarity_for_hs(hierarchy, beta=beta, distance=distance, form=form)
    ideal = _ideal_cumsum(sigma, counts, hs_k)
    xn = _normalize_rows(np.asarray(x, dtype=dtype))

    hs_sum = np.zeros(hs_k)
    hs_count = np.zeros(hs_k)
    hits = np.zeros(len(ks))
    ap_sum = 0.0
    positions = np.arange(1, k_all + 1)
    for start, stop, block in _neighbour_blocks(xn, k_all, block_size):
        yq = y[start:stop]
        retrieved = y[block]  # [b, K]
        gained = np.cumsum(sigma[yq[:, None], retrieved[:, :hs_k]], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            hs = gained / ideal[yq]
        valid = np.isfinite(hs)
        hs_sum += np.where(valid, hs, 0.0).sum(axis=0)
        hs_count += valid.sum(axis=0)
        rq = r[start:stop]
        keep = rq > 0
        same = retrieved[keep] == yq[keep, None]
        for i, k in enumerate(ks):
            hits[i] += np.sum(np.any(same[:, :k], axis=1))
        precision = np.cumsum(same, axis=1) / positions
        within = positions[None, :] <= rq[keep, None]
        ap_sum += float(np.sum(np.sum(precision * (same & within), axis=1) / rq[keep]))

    with np.errstate(invalid="ignore", divide="ignore"):
        hs_curve = hs_sum / hs_count
    if hs_k > 1:
        ahs = float(_trapezoid(hs_curve, dx=1.0 / (hs_k - 1)))
    else:
        ahs = float(hs_curve[0])
    has_pos = r > 0
    num_pos = int(has_pos.sum())
    nan = float("nan")
    recall = {k: (float(hits[i] / num_pos) if num_pos else nan) for i, k in enumerate(ks)}
    map_r = ap_sum / num_pos if num_pos else nan

    result = {
        "distance": distance,
        "num_queries": int(n),
        "hs_at_k": {k: float(hs_curve[k - 1]) for k in ks if k <= hs_k},
        "hs_curve": [float(v) for v in hs_curve],
        "ahs_k": hs_k,
        "ahs": ahs,
        "recall_at_k": recall,
        "map_at_r": map_r,
        "queries_without_positives": int(np.sum(~has_pos)),
        "classes_absent": [int(c) for c in np.flatnonzero(counts == 0)],
    }
    if hs_k == 250:
        result["ahs_250"] = ahs
    return result


__all__ = ["retrieval", "top_k_neighbours", "tree_similarity_for_hs", "DEFAULT_KS"]
