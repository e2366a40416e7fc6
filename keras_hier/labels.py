"""Class labels: the one place keras_hier turns user labels into class ids.

Accepted everywhere: integer ids `[N]` or `[N, 1]`, floats holding whole
numbers, and one-hot rows `[N, C]`. Refused, with a message naming the
source and the first bad value: fractional or NaN labels, ids outside
`[0, C)`, one-hot rows that are not exactly one 1 (an all-zero row is not
class 0).

`class_ids` is the NumPy form used where data enters (loading, evaluation,
decoding); `sparse_labels` is the `keras.ops` form for losses, heads and
metrics. Inside a compiled step a bad label cannot raise (XLA drops
assertions, JAX traces), so `sparse_labels` also returns a validity mask and
the losses turn a bad sample's loss into NaN, which
`keras.callbacks.TerminateOnNaN` stops: a bad label never trains silently.
"""

import numpy as np

__all__ = ["class_ids", "sparse_labels"]


def _from_one_hot(y, source):
    row_sums = y.sum(axis=1)
    is_binary = np.all((y == 0) | (y == 1), axis=1)
    bad = np.flatnonzero(~is_binary | (row_sums != 1))
    if bad.size:
        raise ValueError(f"{source}: one-hot row {int(bad[0])} is not a single 1 among zeros "
                         f"(sum {row_sums[bad[0]]!r}); pass integer class ids or valid one-hot rows")
    return np.argmax(y, axis=1)


def class_ids(labels, num_classes, source="labels", num_samples=None):
    """Integer class ids int64 `[N]` from ids, `[N, 1]` or one-hot `[N, C]`.

    Args:
        labels: array-like of labels.
        num_classes: C; ids must lie in `[0, C)`.
        source: what the labels are (a file name, an argument name), for messages.
        num_samples: when given, the number of labels required.

    Returns:
        int64 NumPy array `[N]`.

    Raises:
        ValueError / TypeError naming `source`.

    Example:
    >>> class_ids([[0, 1, 0], [1, 0, 0]], 3).tolist()
    [1, 0]
    >>> class_ids([2.0, 0.0], 3).tolist()
    [2, 0]
    """
    y = np.asarray(labels)
    if y.dtype == object or y.dtype.kind in "USb":
        raise TypeError(f"{source}: labels must be numeric class ids, got dtype {y.dtype}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and y.shape[1] == num_classes and num_classes > 1:
        y = _from_one_hot(y, source)
    if y.ndim != 1:
        raise ValueError(f"{source}: labels must be class ids [N], [N, 1] or one-hot [N, {num_classes}], "
                         f"got shape {np.shape(labels)}")
    if num_samples is not None and y.shape[0] != num_samples:
        raise ValueError(f"{source}: {y.shape[0]} labels for {num_samples} samples")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating):
            raise TypeError(f"{source}: labels must be integer class ids, got dtype {y.dtype}")
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if bad.size:
            raise ValueError(f"{source}: label {y[bad[0]].item()!r} at index {int(bad[0])} is not a whole class id")
    y = y.astype(np.int64)
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        raise ValueError(f"{source}: label {int(y[bad[0]])} at index {int(bad[0])} is outside the valid "
                         f"range [0, {num_classes})")
    return y


def sparse_labels(y_true, num_classes, name="labels", with_valid=False):
    """Integer class ids int32 `[B]` (`keras.ops`) from ids `[B]`, `[B, 1]` or one-hot `[B, C]`.

    A label is valid when it is a whole number in `[0, C)` (a one-hot row:
    exactly one 1 among zeros). Bad labels are refused as early as the
    backend allows:

    - eagerly (TensorFlow eager, PyTorch, concrete JAX arrays): `ValueError`
      from `class_ids`, naming `name`, the value and its index;
    - in a TensorFlow graph: an assertion with the same meaning;
    - always, also under XLA (`jit_compile=True`) and `jax.jit`, where
      assertions are dropped: with `with_valid=True` the caller gets a bool
      mask `[B]` (the losses make those samples' losses NaN). Bad labels are
      replaced by 0 in the returned ids, so gathers stay in bounds.

    Args:
        y_true: tensor of labels.
        num_classes: C.
        name: who reads the labels (a loss or layer name), for messages.
        with_valid: also return the validity mask.

    Returns:
        int32 tensor `[B]`, or `(ids, valid)` with `with_valid`.

    Example:
    >>> import keras
    >>> keras.ops.convert_to_numpy(sparse_labels(keras.ops.convert_to_tensor([[2.0], [0.0]]), 3)).tolist()
    [2, 0]
    """
    import keras
    from keras import ops

    y_true = ops.convert_to_tensor(y_true)
    shape = tuple(y_true.shape)
    if len(shape) == 2 and shape[-1] == num_classes and num_classes != 1:
        values = ops.cast(y_true, "float32")
        is_binary = ops.all((values == 0.0) | (values == 1.0), axis=-1)
        valid = is_binary & (ops.sum(values, axis=-1) == 1.0)
        ids = ops.argmax(values, axis=-1)
    elif len(shape) in (1, 2) and (len(shape) == 1 or shape[-1] == 1):
        y = ops.reshape(y_true, (-1,)) if len(shape) == 2 else y_true
        if "float" in str(y.dtype):
            y = ops.cast(y, "float32")
            valid = (y >= 0) & (y < float(num_classes)) & (ops.floor(y) == y)
        else:
            valid = (y >= 0) & (y < num_classes)
        ids = y
    else:
        raise ValueError(f"{name}: targets must be class ids [B] or [B, 1] or one-hot [B, {num_classes}], "
                         f"got shape {shape}")
    ids = ops.where(valid, ops.cast(ids, "int32"), 0)  # a NaN cast to int is arbitrary: replaced here
    if keras.backend.backend() == "tensorflow":
        ids = _tf_refuse(y_true, valid, ids, num_classes, name)
    else:
        _eager_refuse(y_true, num_classes, name)
    return (ids, valid) if with_valid else ids


def _eager_refuse(y_true, num_classes, name):
    """Raises `class_ids`' error for concrete labels; a traced value is left to the NaN mask."""
    from keras import ops

    try:
        values = np.asarray(ops.convert_to_numpy(y_true))
    except Exception:  # a tracer (jax.jit): checked through the validity mask
        return
    class_ids(values, num_classes, source=name)


def _tf_refuse(y_true, valid, ids, num_classes, name):
    import tensorflow as tf

    if tf.executing_eagerly():
        class_ids(y_true.numpy(), num_classes, source=name)
        return ids
    message = f"{name}: a label is not a whole class id in the valid range [0, {num_classes})"
    # the raw op: `tf.debugging.Assert` wraps it in a `cond`, 0.25 s of every first trace
    check = tf.raw_ops.Assert(condition=tf.reduce_all(valid), data=[tf.constant(message), tf.constant("labels:"),
                                                                      y_true], summarize=8)
    with tf.control_dependencies([check]):
        return tf.identity(ids)
