"""Class similarity matrices S for SimLoss, and their validation.

SimLoss needs S in [0, 1] with S[y, y] = 1 (S = I is plain cross-entropy).
Builders:

- `tree_similarity(hierarchy, rule, beta)`: from tree distances;
- `ordinal_similarity(num_classes, r)`: S[i, j] = r^|i - j| (ages, ratings);
- `similarity_from_scores(sim, lower)`: S = max(0, (sim - l) / (1 - l)) from
  any similarity in [-1, 1] (word vectors, embeddings, human judgement), or
  from embeddings (cosine similarity of their rows);
- `validate_similarity(S)`: checks a user matrix.

This module does not import TensorFlow.
"""

import numpy as np

__all__ = [
    "tree_similarity",
    "ordinal_similarity",
    "similarity_from_scores",
    "validate_similarity",
]

TREE_RULES = ("exp", "linear")


def validate_similarity(similarity, num_classes=None, name="similarity"):
    """Checks S and returns it as a float32 array.

    Args:
        similarity: array-like [C, C] of numbers in [0, 1] with a diagonal of 1.
        num_classes: expected C, if known.
        name: how the matrix is called in error messages.

    Returns:
        float32 NumPy array [C, C].

    Raises:
        ValueError: naming the first bad entry (non-numeric, NaN, outside
            [0, 1], diagonal not 1) or the wrong shape.
    """
    try:
        matrix = np.asarray(similarity)
        if matrix.dtype != np.float32:
            matrix = matrix.astype(np.float64)
    except (TypeError, ValueError) as error:
        bad = _first_non_numeric(similarity)
        raise ValueError(f"{name} has a non-numeric entry{bad}: {error}") from None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} must be a square [C, C] matrix, got shape {matrix.shape}")
    if num_classes is not None and matrix.shape[0] != num_classes:
        raise ValueError(f"{name} is {matrix.shape[0]}x{matrix.shape[1]} but there are {num_classes} classes")
    # row blocks: the checks never hold more than a few MB of temporaries (C = 10 000: S alone is 400 MB)
    rows = max(1, (1 << 20) // max(matrix.shape[1], 1))
    for start in range(0, matrix.shape[0], rows):
        _check_block(matrix[start:start + rows], start, name)
    diagonal = np.diag(matrix)
    off = np.flatnonzero(np.abs(diagonal - 1.0) > 1e-6)
    if len(off):
        i = off[0]
        raise ValueError(f"{name}[{i}, {i}] = {diagonal[i]:g}; the diagonal must be 1 (a class is fully similar to itself)")
    return matrix.astype(np.float32, copy=False)


def _check_block(block, start, name):
    """Raises naming the first non-finite or out-of-[0, 1] entry of rows `start ...`."""
    if block.size and block.min() >= 0 and block.max() <= 1:  # NaN fails both comparisons
        return
    bad = np.argwhere(~np.isfinite(block))
    if len(bad):
        i, j = bad[0]
        raise ValueError(f"{name}[{start + i}, {j}] is {block[i, j]}; entries must be finite")
    bad = np.argwhere((block < 0) | (block > 1))
    if len(bad):
        i, j = bad[0]
        raise ValueError(f"{name}[{start + i}, {j}] = {block[i, j]:g} is outside [0, 1]")


def _first_non_numeric(similarity):
    try:
        for i, row in enumerate(similarity):
            for j, value in enumerate(row):
                try:
                    float(value)
                except (TypeError, ValueError):
                    return f" at [{i}, {j}] ({value!r})"
    except TypeError:
        pass
    return ""


def tree_similarity(hierarchy, rule="exp", beta=1.0, distance="path"):
    """S from a class hierarchy (float32 [C, C]).

    Rules (t = tree distance of kind `distance` between the two classes):

    - `"exp"`: S = exp(-beta * t);
    - `"linear"`: S = 1 - t / t_max (t_max = the largest distance, so the
      most distant pairs get 0);
    - a callable: S = rule(t) for an int array t, validated.

    Args:
        hierarchy: a `keras_hier.Hierarchy`.
        rule: `"exp"`, `"linear"` or a callable.
        beta: decay rate of `"exp"` (> 0).
        distance: `"path"` or `"lca_height"` (see `Hierarchy.distance_matrix`).

    Returns:
        float32 [C, C], symmetric, diagonal 1.

    Example:

    >>> from keras_hier import Hierarchy
    >>> h = Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> tree_similarity(h, "linear").round(2).tolist()[0]
    [1.0, 0.5, 0.0]
    """
    t = hierarchy.distance_matrix(distance).astype(np.float64)
    if callable(rule):
        matrix = np.asarray(rule(t), dtype=np.float64)
    elif rule == "exp":
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        matrix = np.exp(-beta * t)
    elif rule == "linear":
        t_max = t.max()
        matrix = 1.0 - t / t_max if t_max > 0 else np.ones_like(t)
    else:
        raise ValueError(f"unknown tree similarity rule {rule!r}; use one of {TREE_RULES} or a callable")
    return validate_similarity(matrix, hierarchy.num_classes, name=f"tree similarity ({rule})")


def ordinal_similarity(num_classes, r):
    """S[i, j] = r^|i - j| for ordered classes (ages, ratings).

    Args:
        num_classes: C.
        r: decay in [0, 1); r = 0 gives the identity (plain cross-entropy).

    Returns:
        float32 [C, C].

    Example:

    >>> ordinal_similarity(3, 0.5).tolist()[0]
    [1.0, 0.5, 0.25]
    """
    if not 0 <= r < 1:
        raise ValueError(f"r must be in [0, 1), got {r}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    index = np.arange(int(num_classes))
    with np.errstate(divide="ignore"):
        matrix = np.power(float(r), np.abs(index[:, None] - index[None, :]).astype(np.float64))
    return validate_similarity(matrix, name="ordinal similarity")


def similarity_from_scores(scores=None, lower=0.0, embeddings=None):
    """S = max(0, (sim - l) / (1 - l)) with diagonal 1, from any similarity.

    Args:
        scores: [C, C] class similarities in [-1, 1] (word-vector cosines,
            human judgements, ...). Give this or `embeddings`.
        lower: l in [0, 1): similarities at or below it become 0.
        embeddings: [C, D] class vectors; sim = cosine similarity of rows.

    Returns:
        float32 [C, C].
    """
    if not 0 <= lower < 1:
        raise ValueError(f"lower must be in [0, 1), got {lower}")
    if (scores is None) == (embeddings is None):
        raise ValueError("give exactly one of scores or embeddings")
    if embeddings is not None:
        vectors = np.asarray(embeddings, dtype=np.float64)
        if vectors.ndim != 2:
            raise ValueError(f"embeddings must be [C, D], got shape {vectors.shape}")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        zero = np.flatnonzero(norms[:, 0] == 0)
        if len(zero):
            raise ValueError(f"embedding of class {zero[0]} is the zero vector; its cosine is undefined")
        vectors = vectors / norms
        sim = vectors @ vectors.T
    else:
        try:
            sim = np.asarray(scores, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"scores has a non-numeric entry{_first_non_numeric(scores)}") from None
        if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
            raise ValueError(f"scores must be a square [C, C] matrix, got shape {sim.shape}")
        bad = np.argwhere(~np.isfinite(sim) | (sim < -1 - 1e-6) | (sim > 1 + 1e-6))
        if len(bad):
            i, j = bad[0]
            raise ValueError(f"scores[{i}, {j}] = {sim[i, j]} is outside [-1, 1]")
    matrix = np.clip((sim - lower) / (1.0 - lower), 0.0, 1.0)
    np.fill_diagonal(matrix, 1.0)
    return validate_similarity(matrix, name="similarity from scores")


# ---------------------------------------------------------------------------
# Moved: the tree factorisation (keras_hier.factorisation) and spherical MDS
# (keras_hier.mds); the old names still resolve here, imported on first use.
# ---------------------------------------------------------------------------
_MOVED = {"TreeFactors": "factorisation", "tree_factors": "factorisation", "max_tree_distance": "factorisation",
          "mds_proxies": "mds", "mds_target_distances": "mds"}


def __getattr__(name):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"keras_hier.{_MOVED[name]}"), name)
    raise AttributeError(f"module 'keras_hier.similarity' has no attribute {name!r}")


__all__ += ["TREE_RULES"]
