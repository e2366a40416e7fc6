"""Precise BatchNorm: recompute the BatchNorm statistics over training batches.

A BatchNormalization layer normalises with the batch's own mean and variance
while training, and with moving averages of them at inference. After a short
run (one epoch on a few thousand images) the moving averages still remember
the first steps, of a network that has changed since: the model then computes
something else at inference than in training, and its test accuracy looks
broken (0.22 where `fit` reported 0.68 on the training batches).

`recompute_batchnorm_statistics` replaces every moving mean and variance by
the equal-weight average of the per-batch statistics over `num_batches`
training batches, computed with the final weights ("precise BN": Wu and
Johnson, "Rethinking 'Batch' in BatchNorm", 2021; PyTorch's
`torch.optim.swa_utils.update_bn`). The per-batch variance is the biased one
Keras's own moving average follows. Frozen layers (`trainable=False`, which
normalise with their stored statistics even in training mode) are left as
they are.
"""

import itertools

import keras
import numpy as np

__all__ = ["batchnorm_layers", "recompute_batchnorm_statistics"]


def batchnorm_layers(model):
    """The trainable `keras.layers.BatchNormalization` layers of `model`, nested ones included.

    Args:
        model: a `keras.Model` (functional, Sequential or subclassed) or layer.

    Returns:
        A list of layers, each once, in the order Keras tracks them.

    Example:
    >>> import keras
    >>> inner = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    >>> outer = keras.Sequential([keras.Input((3,)), inner, keras.layers.BatchNormalization()])
    >>> len(batchnorm_layers(outer))
    2
    """
    found, seen, stack = [], set(), [model]
    while stack:
        layer = stack.pop(0)
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, keras.layers.BatchNormalization):
            if layer.trainable and not getattr(layer, "renorm", False):
                found.append(layer)
            continue
        children = getattr(layer, "layers", None)
        if children is None:  # a custom layer: its attributes, lists of layers included
            children = []
            for value in vars(layer).values():
                items = value if isinstance(value, (list, tuple)) else [value]
                children += [v for v in items if isinstance(v, keras.layers.Layer)]
        stack.extend(children)
    return found


def _batches(data, batch_size):
    """An iterator over input batches `x` of a dataset, an iterable of batches or an array."""
    if isinstance(data, np.ndarray):
        return (data[i:i + batch_size] for i in range(0, len(data), batch_size))
    return (keras.utils.unpack_x_y_sample_weight(b)[0] if isinstance(b, tuple) else b for b in data)


def _forward(model):
    """`model(x, training=True)`, traced once on TensorFlow (eager elsewhere).

    A keras_hier head with EMA proxies or a dynamic scale refuses a training
    forward pass nobody updates it from; here no update is wanted (only the
    BatchNorm statistics), so the pass runs inside an embedding capture that
    is thrown away.
    """
    from keras_hier.layers import capture_embeddings

    def forward(x):
        with capture_embeddings:
            return model(x, training=True)

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(forward, reduce_retracing=True)
    return forward


def recompute_batchnorm_statistics(model, data, num_batches=200, batch_size=128):
    """Sets every BatchNorm layer's moving statistics to their average over training batches.

    Each of the first `num_batches` batches of `data` goes through `model` in
    training mode (as in `fit`, dropout included, every BatchNorm normalising
    with its batch's statistics); each layer's moving mean and variance become
    the mean over batches of the batch means and (biased) batch variances.
    Nothing else in the model changes; on error the old statistics are kept.

    Args:
        model: a built `keras.Model`.
        data: training inputs: a `tf.data.Dataset` or iterable of batches
            (`x` or `(x, y[, sample_weight])`), or a NumPy array of inputs.
        num_batches: at most this many batches are used (200 is plenty for
            stable statistics; fewer if `data` is shorter).
        batch_size: batch size when `data` is a NumPy array.

    Returns:
        dict: `{"layers": number of layers updated, "batches": batches used}`.

    Raises:
        ValueError: `num_batches` is not a positive integer, or `data` gave no batch.

    Example:
    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.BatchNormalization()])
    >>> x = np.array([[0., 1.], [2., 3.], [4., 5.], [6., 7.]], "float32")
    >>> recompute_batchnorm_statistics(model, x, batch_size=2)
    {'layers': 1, 'batches': 2}
    >>> np.asarray(model.layers[0].moving_mean).tolist(), np.asarray(model.layers[0].moving_variance).tolist()
    ([3.0, 4.0], [1.0, 1.0])
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, (int, np.integer)) or num_batches < 1:
        raise ValueError(f"recompute_batchnorm_statistics: num_batches must be a positive integer, "
                         f"got {num_batches!r}")
    layers = batchnorm_layers(model)
    if not layers:
        return {"layers": 0, "batches": 0}
    saved = [(layer.momentum, np.asarray(layer.moving_mean), np.asarray(layer.moving_variance))
             for layer in layers]
    sums = [[np.zeros_like(mean, np.float64), np.zeros_like(var, np.float64)] for _, mean, var in saved]
    used = 0
    try:
        for layer in layers:
            layer.momentum = 0.0  # moving statistics := this batch's statistics
        forward = _forward(model)
        for x in itertools.islice(_batches(data, batch_size), int(num_batches)):
            forward(x)
            for total, layer in zip(sums, layers):
                total[0] += np.asarray(layer.moving_mean, np.float64)
                total[1] += np.asarray(layer.moving_variance, np.float64)
            used += 1
        if not used:
            raise ValueError("recompute_batchnorm_statistics: `data` gave no batch")
    except BaseException:
        for layer, (_, mean, var) in zip(layers, saved):
            layer.moving_mean.assign(mean)
            layer.moving_variance.assign(var)
        raise
    finally:
        for layer, (momentum, _, _) in zip(layers, saved):
            layer.momentum = momentum
    for layer, (mean, var) in zip(layers, sums):
        layer.moving_mean.assign((mean / used).astype(np.float32))
        layer.moving_variance.assign((var / used).astype(np.float32))
    return {"layers": len(layers), "batches": used}
