"""Geometry of the unit sphere: the one home of normalisation, sphere distances and the tree-to-sphere map.

Two forms side by side, in the way pytorch-metric-learning's distance
objects own this: NumPy (float64, for evaluation, inference, retrieval and
MDS) and `keras.ops` (float32, for heads and losses; see the second half of
this module). Switching chordal to arccos is the `distance` argument.

- `normalize_rows(x)`: x / ||x|| with epsilon 1e-12 on the squared norm
  (a zero row stays zero);
- chordal distance d = sqrt(2 - 2 cos), angle theta = arccos(cos);
- `tree_to_chordal(t, beta)`: T = sqrt(2) t / (beta + t), a tree distance
  mapped into [0, sqrt(2)) (the MDS target and the HS@k similarity).
"""

import numpy as np

EPSILON = 1e-12
#: cos is clipped to [-1 + COS_CLIP, 1 - COS_CLIP] before arccos (finite gradient).
COS_CLIP = 1e-7
DISTANCES = ("chordal", "arccos")

__all__ = ["EPSILON", "COS_CLIP", "DISTANCES", "check_distance", "normalize_rows", "sphere_distances",
           "chordal_distances", "tree_to_chordal"]


def check_distance(distance):
    """Returns `distance` if it is a sphere distance keras_hier knows, else raises ValueError."""
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    return distance


def normalize_rows(x, epsilon=EPSILON):
    """Rows of `x` scaled to unit L2 norm (float64); a zero row stays zero.

    Example:
    >>> normalize_rows([[3.0, 4.0], [0.0, 0.0]]).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    x = np.asarray(x, dtype=np.float64)
    return x / np.sqrt(np.maximum(np.sum(x * x, axis=-1, keepdims=True), epsilon))


def sphere_distances(a, b=None, distance="chordal"):
    """Distances between the normalised rows of `a` and of `b` (default `a`), float64 [Na, Nb].

    Args:
        a: [Na, D] vectors (normalised here).
        b: [Nb, D] vectors, or None for `a` itself (then the diagonal is exactly 0).
        distance: `"chordal"` (sqrt(2 - 2 cos)) or `"arccos"` (the angle).
    """
    check_distance(distance)
    x = normalize_rows(a)
    y = x if b is None else normalize_rows(b)
    cos = np.clip(x @ y.T, -1.0, 1.0)
    d = np.sqrt(np.maximum(2.0 - 2.0 * cos, 0.0)) if distance == "chordal" else np.arccos(cos)
    if b is None:
        np.fill_diagonal(d, 0.0)
    return d


def chordal_distances(representatives):
    """Chordal distance sqrt(2 - 2 cos) between normalised rows (float64 [C, C], zero diagonal)."""
    return sphere_distances(representatives, distance="chordal")


def tree_to_chordal(t, beta=1.0):
    """T = sqrt(2) t / (beta + t): tree distances mapped into [0, sqrt(2)) (float64).

    Example:
    >>> round(float(tree_to_chordal(1.0, beta=1.0)), 6)
    0.707107
    """
    t = np.asarray(t, dtype=np.float64)
    return np.sqrt(2.0) * t / (beta + t)
