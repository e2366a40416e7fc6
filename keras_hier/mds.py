"""Spherical MDS: fixed class proxies whose chordal distances follow the tree.

The ProxyDR paper's MDS option: target distances T = sqrt(2) t / (beta + t)
(`keras_hier.geometry.tree_to_chordal` of the tree distance t), fitted by
unit vectors with Adam. Keras is imported when `mds_proxies` runs, so
importing this module does not import TensorFlow.
"""

import numpy as np

from keras_hier.geometry import l2_normalize, normalize_rows, sphere_distances, squared_distance, tree_to_chordal

__all__ = ["mds_target_distances", "mds_proxies"]


def mds_target_distances(hierarchy, beta=1.0, distance="path"):
    """T = sqrt(2) t / (beta + t): tree distances mapped into [0, sqrt(2)) (float64 [C, C])."""
    return tree_to_chordal(hierarchy.distance_matrix(distance), beta)


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
    start = normalize_rows(rng.standard_normal((hierarchy.num_classes, int(dim))))
    vectors = keras.Variable(start.astype(np.float32), name="mds_vectors")
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    target_t = ops.convert_to_tensor(target)

    def stress(v):
        unit = l2_normalize(v)
        d2 = squared_distance(ops.matmul(unit, ops.transpose(unit)), "chordal")
        d = ops.sqrt(d2 + 1e-12) * (1.0 - ops.eye(ops.shape(v)[0]))
        return ops.sqrt(ops.sum(ops.square(target_t - d))) / norm

    step = _mds_step_function(stress, vectors, optimizer)
    for _ in range(int(steps)):
        step()
    final = normalize_rows(ops.convert_to_numpy(vectors))
    d = sphere_distances(final, distance="chordal")
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


