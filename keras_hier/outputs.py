"""Logits or probabilities: how keras_hier decides what a model's output is.

The convention (the same as Keras' own losses, with the same default):
`from_logits=None` (the default of every keras_hier loss, metric,
`evaluate` and `export_saved_model`) means "find out": a tensor produced by
a softmax carries Keras' `_keras_logits` mark, and a model whose last layer
is `Dense(..., activation="softmax")` or a `Softmax` layer outputs
probabilities. Anything else is taken as logits (keras_hier heads,
`Dense` without activation). Pass `from_logits=True/False` to say it
yourself; an explicit value that contradicts a softmax-marked output
raises instead of mis-scoring it silently.
"""

import warnings

__all__ = ["model_outputs_probabilities", "resolve_from_logits", "tensor_is_probability"]


def _is_softmax(fn):
    if fn is None:
        return False
    name = getattr(fn, "__name__", "") or type(fn).__name__
    return name.lower() == "softmax"


def _last_layer(model):
    layers = getattr(model, "layers", None)
    if layers:
        last = layers[-1]
        # a nested Sequential / functional model as the last layer
        if getattr(last, "layers", None):
            return _last_layer(last)
        return last
    return model


def model_outputs_probabilities(model):
    """True when the model's (single) output is a softmax probability vector.

    Looks, as Keras does, for the softmax mark: the output layer's `activation`
    is `softmax` (`Dense(C, activation="softmax")`) or the layer is a
    `keras.layers.Softmax` / `Activation("softmax")`.

    Args:
        model: a Keras model (functional, Sequential or subclassed).

    Returns:
        bool.
    """
    import keras

    layer = _last_layer(model)
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return _is_softmax(activation)


def tensor_is_probability(tensor):
    """True when `tensor` carries Keras' softmax mark (`_keras_logits`, TensorFlow backend)."""
    return hasattr(tensor, "_keras_logits")


def resolve_from_logits(from_logits, model=None, where="keras_hier"):
    """The `from_logits` to use: an explicit bool, else what the model's output says.

    Args:
        from_logits: True, False or None (detect from `model`; logits when no
            model is given).
        model: the Keras model whose output is scored, or None.
        where: the caller's name, for messages.

    Returns:
        bool.

    Raises:
        ValueError: `from_logits=True` for a model whose output is a softmax.

    Example:
    >>> resolve_from_logits(False)
    False
    >>> resolve_from_logits(None)
    True
    """
    probabilities = model is not None and model_outputs_probabilities(model)
    if from_logits is None:
        return not probabilities
    from_logits = bool(from_logits)
    if from_logits and probabilities:
        raise ValueError(f"{where}: from_logits=True, but model {getattr(model, 'name', model)!r} ends in a softmax "
                         "(its outputs are probabilities): pass from_logits=False or None")
    return from_logits


def warn_probability_tensor(y_pred, from_logits, where):
    """Warns once when a softmax-marked tensor is scored as logits."""
    if from_logits and tensor_is_probability(y_pred):
        warnings.warn(f"{where}: from_logits=True but the predictions come out of a softmax; pass "
                      "from_logits=False (or None to detect it)", stacklevel=3)
