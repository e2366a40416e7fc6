"""Backend-agnostic numeric building blocks in `keras.ops`.

Everything here works on the TensorFlow, JAX and PyTorch backends. Losses,
heads, decoders and export call these functions instead of re-deriving them.
"""

import keras
from keras import ops

EPSILON = 1e-12


def l2_normalize(x, axis=-1, epsilon=EPSILON):
    """Scales `x` to unit L2 norm along `axis`; a zero vector stays zero.

    Args:
        x: tensor.
        axis: axis to normalise.
        epsilon: added to the squared norm so zero vectors give no NaN.

    Returns:
        Tensor of the same shape and dtype as `x`.
    """
    squared = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared, ops.cast(epsilon, squared.dtype)))


def _level_ancestors(hierarchy):
    return [hierarchy.ancestors(level) for level in range(hierarchy.depth)]


def node_sums(values, hierarchy):
    """Sums `values` over the leaves under every node of every level.

    Args:
        values: [B, C] tensor (e.g. probabilities).
        hierarchy: a `keras_hier.Hierarchy` with C classes.

    Returns:
        [B, hierarchy.num_node_ids] tensor; column `hierarchy.node_ids[c, l]`
        holds the sum of `values` over the classes under class c's ancestor at
        level l. Costs O(B * C * depth); no [C, C] matrix.
    """
    transposed = ops.transpose(values)  # [C, B]: segment ops reduce axis 0
    columns = []
    for level, ancestors in enumerate(_level_ancestors(hierarchy)):
        size = hierarchy.num_nodes(level)
        if size == hierarchy.num_classes:  # the identity partition
            columns.append(ops.take(transposed, _inverse_permutation(ancestors), axis=0))
        else:
            columns.append(ops.segment_sum(transposed, ancestors, num_segments=size))
    return ops.transpose(ops.concatenate(columns, axis=0))


def _inverse_permutation(ancestors):
    import numpy as np

    inverse = np.empty_like(ancestors)
    inverse[ancestors] = np.arange(len(ancestors), dtype=ancestors.dtype)
    return inverse


def float32(x):
    """Casts to float32 (logits and losses are float32 under mixed precision)."""
    return ops.cast(x, "float32")


__all__ = ["l2_normalize", "node_sums", "float32", "EPSILON", "keras"]
