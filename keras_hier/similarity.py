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
        matrix = np.asarray(similarity, dtype=np.float64)
    except (TypeError, ValueError) as error:
        bad = _first_non_numeric(similarity)
        raise ValueError(f"{name} has a non-numeric entry{bad}: {error}") from None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} must be a square [C, C] matrix, got shape {matrix.shape}")
    if num_classes is not None and matrix.shape[0] != num_classes:
        raise ValueError(f"{name} is {matrix.shape[0]}x{matrix.shape[1]} but there are {num_classes} classes")
    bad = np.argwhere(~np.isfinite(matrix))
    if len(bad):
        i, j = bad[0]
        raise ValueError(f"{name}[{i}, {j}] is {matrix[i, j]}; entries must be finite")
    bad = np.argwhere((matrix < 0) | (matrix > 1))
    if len(bad):
        i, j = bad[0]
        raise ValueError(f"{name}[{i}, {j}] = {matrix[i, j]:g} is outside [0, 1]")
    diagonal = np.diag(matrix)
    off = np.flatnonzero(np.abs(diagonal - 1.0) > 1e-6)
    if len(off):
        i = off[0]
        raise ValueError(f"{name}[{i}, {i}] = {diagonal[i]:g}; the diagonal must be 1 (a class is fully similar to itself)")
    return matrix.astype(np.float32)


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
# Tree factorisation of S (used by the factorised SimLoss, soft labels, ...)
# ---------------------------------------------------------------------------
class TreeFactors:
    """S written as per-level increments on shared ancestors.

    For classes y, j and the levels l = 0 .. depth - 1 of a `Hierarchy`:

        S[y, j] = column_scale[j] * (weights[y, 0]
                  + sum_l weights[y, l + 1] * [node_ids[y, l] == node_ids[j, l]])

    `weights[y, l + 1]` is 0 on levels below a shallow leaf (`level_mask`
    False). So sum_j S[y, j] v_j needs only per-node sums of
    column_scale * v (O(C * depth)), never the [C, C] matrix.

    Attributes:
        column_scale: float32 [C] (all ones when S depends only on the LCA).
        weights: float32 [C, depth + 1]; column 0 is the root term.
    """

    def __init__(self, column_scale, weights):
        self.column_scale = np.asarray(column_scale, dtype=np.float32)
        self.weights = np.asarray(weights, dtype=np.float32)

    def dense(self, hierarchy):
        """The [C, C] matrix these factors represent (O(C^2): tests, small C)."""
        ids, mask = hierarchy.node_ids, hierarchy.level_mask
        same = (ids[:, None, :] == ids[None, :, :]) & mask[:, None, :]  # [y, j, l]
        inner = self.weights[:, :1].astype(np.float64) + np.einsum(
            "yjl,yl->yj", same.astype(np.float64), self.weights[:, 1:].astype(np.float64))
        return (inner * self.column_scale[None, :]).astype(np.float32)

    def row_sums(self, hierarchy, values=None):
        """sum_j S[y, j] * values[j] for every class y (float64 [C]), O(C * depth)."""
        values = np.ones(hierarchy.num_classes) if values is None else np.asarray(values, dtype=np.float64)
        scaled = self.column_scale.astype(np.float64) * values
        out = self.weights[:, 0].astype(np.float64) * scaled.sum()
        for level in range(hierarchy.depth):
            ids = hierarchy.ancestors(level)
            node_total = np.bincount(ids, weights=scaled, minlength=hierarchy.num_nodes(level))
            out = out + self.weights[:, level + 1] * node_total[ids]
        return out


def _min_lca_depth(hierarchy):
    """Depth of the shallowest node with two or more children (0 = root)."""
    previous = 1
    for level, size in enumerate(hierarchy.level_sizes):
        if size > previous:
            return level
        previous = size
    return None  # a single class


def tree_factors(hierarchy, rule="exp", beta=1.0, distance="path"):
    """Factorises `tree_similarity(hierarchy, rule, beta, distance)` over the tree.

    - `distance="lca_height"`: S = g(height(lca)) depends only on the LCA
      node, so the weights are the increments of g along each class's path
      (any tree, `column_scale` = 1).
    - `distance="path"`, `rule="exp"`: exp(-beta t) with
      t = d_y + d_j - 2 d_lca = exp(-beta d_y) exp(-beta d_j) exp(2 beta d_lca):
      exact on ragged trees too (`column_scale[j]` = exp(-beta d_j)).
    - `distance="path"` with `"linear"` or a callable rule: t is a function of
      the LCA depth only on uniform trees; on ragged trees a `ValueError`
      points to the dense form (`SimLoss(tree_similarity(...))`).

    Args:
        hierarchy: a `keras_hier.Hierarchy`.
        rule, beta, distance: as in `tree_similarity`.

    Returns:
        A `TreeFactors`; `factors.dense(hierarchy)` equals
        `tree_similarity(hierarchy, rule, beta, distance)` (float32 rounding).

    Example:

    >>> from keras_hier import Hierarchy
    >>> h = Hierarchy.from_paths(["a/x", "a/y", "b"])
    >>> f = tree_factors(h, "exp", beta=1.0)
    >>> bool(np.allclose(f.dense(h), tree_similarity(h, "exp", 1.0)))
    True
    """
    if distance not in ("path", "lca_height"):
        raise ValueError(f"unknown distance kind {distance!r}; use 'path' or 'lca_height'")
    if not (callable(rule) or rule in TREE_RULES):
        raise ValueError(f"unknown tree similarity rule {rule!r}; use one of {TREE_RULES} or a callable")
    if rule == "exp" and not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    num_classes, depth = hierarchy.num_classes, hierarchy.depth
    mask = np.asarray(hierarchy.level_mask)
    leaf_depths = np.asarray(hierarchy.leaf_depths, dtype=np.float64)
    branch = _min_lca_depth(hierarchy)
    if distance == "path" and rule == "exp":
        # exp(2 beta d_lca) = 1 + sum_{k=1}^{d_lca} (e^{2 beta k} - e^{2 beta (k - 1)}).
        k = np.arange(1, depth + 1, dtype=np.float64)
        increments = np.exp(2 * beta * k) - np.exp(2 * beta * (k - 1))
        scale_y = np.exp(-beta * leaf_depths)
        weights = np.concatenate([np.ones((num_classes, 1)), np.broadcast_to(increments, (num_classes, depth))], 1)
        weights = weights * scale_y[:, None]
        column_scale = np.exp(-beta * leaf_depths)
        if not np.all(np.isfinite(weights)) or weights.max() > 1e30:
            raise ValueError(f"beta={beta} with depth {depth} overflows the factorised form "
                             "(exp(beta * depth) too large); use the dense SimLoss(tree_similarity(...))")
    else:
        if distance == "path":
            if not hierarchy.is_uniform:
                raise ValueError(
                    f"rule {rule!r} on path distances factorises over the tree only when all leaves have the "
                    "same depth; this hierarchy is ragged. Use rule='exp' or distance='lca_height', or the "
                    "dense form SimLoss(tree_similarity(hierarchy, rule, ...)) for small C")
            # t = 2 (depth - d_lca) for the node at depth k.
            t_nodes = 2.0 * (depth - np.arange(depth + 1, dtype=np.float64))
            t = np.broadcast_to(t_nodes, (num_classes, depth + 1))
            t_max = 0.0 if branch is None else 2.0 * (depth - branch)
        else:
            t = hierarchy.ancestor_heights().astype(np.float64)
            t_max = 0.0 if branch is None else float(depth - branch)
        if callable(rule):
            g = np.asarray(rule(t), dtype=np.float64)
        elif rule == "exp":
            g = np.exp(-beta * t)
        else:
            g = 1.0 - t / t_max if t_max > 0 else np.ones_like(t)
        weights = np.concatenate([g[:, :1], np.diff(g, axis=1)], axis=1)
        column_scale = np.ones(num_classes)
    weights[:, 1:] = np.where(mask, weights[:, 1:], 0.0)
    return TreeFactors(column_scale, weights)


# ---------------------------------------------------------------------------
# Spherical MDS proxies
# ---------------------------------------------------------------------------
def mds_target_distances(hierarchy, beta=1.0, distance="path"):
    """T = sqrt(2) t / (beta + t): tree distances mapped into [0, sqrt(2)) (float64 [C, C])."""
    t = hierarchy.distance_matrix(distance).astype(np.float64)
    return np.sqrt(2.0) * t / (beta + t)


def mds_proxies(hierarchy, dim, beta=1.0, steps=1000, learning_rate=1e-3, seed=0):
    """Fixed class proxies on the unit sphere whose chordal distances follow the tree.

    Fits unit vectors V [C, dim] minimising the normalised stress
    ||T - D(V)||_F / ||T||_F, with T = sqrt(2) t / (beta + t) (t = path
    distance) and D(V) the chordal distances, by `steps` Adam steps (rows
    re-normalised after each step), as in the ProxyDR paper's MDS option.
    Imports Keras lazily (this module stays TensorFlow-free otherwise).

    Args:
        hierarchy: a `keras_hier.Hierarchy`.
        dim: embedding dimension D.
        beta: the beta of T (> 0).
        steps: Adam steps.
        learning_rate: Adam learning rate.
        seed: seed of the random initial vectors.

    Returns:
        (proxies float32 [C, dim] with unit rows, normalised stress float).
    """
    if int(dim) < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    import keras
    from keras import ops

    target = mds_target_distances(hierarchy, beta).astype(np.float32)
    norm = float(np.linalg.norm(target)) or 1.0
    rng = np.random.default_rng(seed)
    start = rng.standard_normal((hierarchy.num_classes, int(dim)))
    start /= np.linalg.norm(start, axis=1, keepdims=True)
    vectors = keras.Variable(start.astype(np.float32), name="mds_vectors")
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    target_t = ops.convert_to_tensor(target)

    def stress(v):
        unit = v / ops.sqrt(ops.maximum(ops.sum(v * v, axis=1, keepdims=True), 1e-12))
        d2 = ops.maximum(2.0 - 2.0 * ops.matmul(unit, ops.transpose(unit)), 0.0)
        d = ops.sqrt(d2 + 1e-12) * (1.0 - ops.eye(ops.shape(v)[0]))
        return ops.sqrt(ops.sum(ops.square(target_t - d))) / norm

    step = _mds_step_function(stress, vectors, optimizer)
    for _ in range(int(steps)):
        step()
    final = ops.convert_to_numpy(vectors).astype(np.float64)
    final /= np.linalg.norm(final, axis=1, keepdims=True)
    gram = np.clip(final @ final.T, -1.0, 1.0)
    d = np.sqrt(np.maximum(2.0 - 2.0 * gram, 0.0))
    np.fill_diagonal(d, 0.0)
    value = float(np.linalg.norm(target - d) / norm)
    return final.astype(np.float32), value


def _mds_step_function(stress, vectors, optimizer):
    """One Adam step on `stress` (per backend; the only backend-specific code here)."""
    import keras
    from keras import ops

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = stress(vectors)
            optimizer.apply_gradients([(tape.gradient(loss, vectors), vectors)])
            vectors.assign(vectors / tf.norm(vectors, axis=1, keepdims=True))
        return step
    if backend == "jax":
        import jax

        grad = jax.jit(jax.grad(lambda v: stress(v)))

        def step():
            optimizer.apply_gradients([(grad(vectors.value), vectors)])
            vectors.assign(vectors / ops.sqrt(ops.sum(ops.square(vectors), axis=1, keepdims=True)))
        return step
    if backend == "torch":
        import torch

        def step():
            value = vectors.value
            value.grad = None
            loss = stress(value)
            (gradient,) = torch.autograd.grad(loss, value)
            optimizer.apply_gradients([(gradient, vectors)])
            vectors.assign(vectors / ops.sqrt(ops.sum(ops.square(vectors), axis=1, keepdims=True)))
        return step
    raise NotImplementedError(f"mds_proxies does not support the {backend!r} backend")


__all__ += ["TreeFactors", "tree_factors", "mds_target_distances", "mds_proxies"]
