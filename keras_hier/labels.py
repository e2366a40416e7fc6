"""Class labels: the one place keras_hier turns user labels into class ids.

Accepted everywhere: integer ids `[N]` or `[N, 1]`, floats holding whole
numbers, and one-hot rows `[N, C]`. Refused, with a message naming the
source and the first bad value: fractional or NaN labels, ids outside
`[0, C)`, one-hot rows that are not exactly one 1 (an all-zero row is not
class 0).

`class_ids` is the NumPy form used where data enters (loading, evaluation,
decoding); the `keras.ops` form for losses and metrics lives beside it
(`sparse_labels`).
"""

import numpy as np

__all__ = ["class_ids"]


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
            raise ValueError(f"{source}: label {y[bad[0]]!r} at index {int(bad[0])} is not a whole class id")
    y = y.astype(np.int64)
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        raise ValueError(f"{source}: label {int(y[bad[0]])} at index {int(bad[0])} is outside the valid "
                         f"range [0, {num_classes})")
    return y
