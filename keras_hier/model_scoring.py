"""Running a Keras model for evaluation: heads, embeddings and per-batch top-k.

- `find_head(model)` / `head_proxies(model)`: the class representatives "W";
- `embedding_model(model)`: a model returning (scores, embeddings), for
  functional and Sequential models (subclassed ones: pass your own, see why
  in the message);
- `iterate_batches(dataset)`: (x, y) NumPy batches from a tf.data dataset,
  any iterable of pairs or an (x, y) tuple, on every backend;
- `Scorer`: one compiled step per batch returning only top-k class ids,
  embeddings and the ids chosen by the decoders, so `evaluate` never holds
  the N x C scores.
"""

import keras
import numpy as np
from keras import ops

from keras_hier.geometry import normalize_rows

__all__ = ["find_head", "head_proxies", "embedding_model", "iterate_batches", "Scorer"]


def _layers(model):
    return list(getattr(model, "layers", []) or [])


def find_head(model):
    """The layer holding the class representatives, or None.

    In order: the layer named "head" (`build_classifier`), the last layer with
    `proxies` (a keras_hier head anywhere in the top level), the last `Dense`
    layer (a softmax classifier's class vectors are its kernel columns).
    """
    try:
        return model.get_layer("head")
    except (ValueError, AttributeError):
        pass
    layers = _layers(model)
    for layer in reversed(layers):
        if hasattr(layer, "proxies"):
            return layer
    for layer in reversed(layers):
        if isinstance(layer, keras.layers.Dense):
            return layer
    return None


def head_proxies(model):
    """Normalised class representatives of a model's head ([C, D] float64), or None.

    keras_hier heads expose `.proxies`; a Dense head contributes its kernel
    columns (the weight vector of every class).
    """
    head = find_head(model)
    if head is None:
        return None
    if hasattr(head, "proxies"):
        return normalize_rows(keras.ops.convert_to_numpy(head.proxies))
    kernel = getattr(head, "kernel", None)
    if kernel is None:
        return None
    return normalize_rows(keras.ops.convert_to_numpy(kernel).T)


def embedding_model(model):
    """(model returning [scores, embeddings], None) or (None, reason).

    The embedding is the output of the layer named "embedding", else the
    input of the head (see `find_head`). Works for functional models and for
    Sequential models (built by `fit` or with an `Input`). A subclassed model
    has no graph to read an intermediate tensor from: pass
    `embedding_model=` (a model or function mapping inputs to embeddings) to
    `evaluate` instead.
    """
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        return None, (f"{type(model).__name__} is a subclassed model (no functional graph), so its embedding "
                      "layer cannot be read; pass embedding_model=<a model mapping inputs to embeddings>")
    try:
        tensor = model.get_layer("embedding").output
        where = "layer 'embedding'"
    except (ValueError, AttributeError):
        head = find_head(model)
        if head is None:
            return None, "the model has no layer named 'embedding' and no head layer whose input is the embedding"
        tensor, where = head.input, f"input of head layer {head.name!r}"
    if isinstance(tensor, (list, tuple)):
        return None, f"the {where} is not a single tensor"
    return keras.Model(inputs, [outputs[0], tensor]), None


def _to_numpy(value):
    return keras.tree.map_structure(lambda v: np.asarray(v) if hasattr(v, "__array__") else v, value)


def iterate_batches(dataset, batch_size=256):
    """Yields (x, y) NumPy batches.

    Accepts an (x, y) tuple of arrays (cut into `batch_size` rows), a
    `tf.data.Dataset` (read with `as_numpy_iterator`, so it works under JAX
    and PyTorch too) or any iterable of (x, y[, sample_weight]) pairs.
    """
    if isinstance(dataset, tuple) and len(dataset) == 2 and hasattr(dataset[0], "shape"):
        x, y = dataset
        if len(x) != len(y):
            raise ValueError(f"dataset: {len(x)} inputs but {len(y)} labels")
        for start in range(0, len(x), batch_size):
            yield x[start:start + batch_size], np.asarray(y[start:start + batch_size])
        return
    batches = dataset.as_numpy_iterator() if hasattr(dataset, "as_numpy_iterator") else dataset
    for batch in batches:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError("dataset must yield (inputs, labels) pairs")
        yield _to_numpy(batch[0]), np.asarray(batch[1])


def _top_k(scores, k):
    if keras.backend.backend() == "tensorflow":
        from keras_hier.serving_graph import TOPK_MIN_CLASSES, blocked_top_k

        if scores.shape[-1] is not None and scores.shape[-1] >= TOPK_MIN_CLASSES:
            return blocked_top_k(scores, k, 64)[1]  # same ids and tie order as top_k, faster on wide rows
    return ops.top_k(scores, k)[1]


def decoder_class_ids(probabilities, hierarchy, decoder, cost, array_ops=None):
    """Class ids [B] chosen by a `keras_hier.decoding` decoder (`array_ops`: NumPy by default)."""
    from keras_hier import decoding

    array_ops = decoding.NUMPY_OPS if array_ops is None else array_ops
    tables = decoding.decoder_tables(hierarchy)
    levels = decoding.marginals(probabilities, tables, array_ops)
    return decoding.rank(probabilities, levels, tables, decoder, cost, None, array_ops)[0]


class Scorer(keras.Model):
    """Per-batch outputs for evaluation, computed inside one compiled predict step.

    Returns {"top_ids": int32 [B, k] (ties: smaller id first), "num_scores":
    [B] (C), "embedding": [B, D] when available}, and per extra decoder its
    int32 [B] class ids (TensorFlow: decoded in the graph) or, on other
    backends, "probabilities" [B, C] for `decoder_class_ids` on the host (one
    batch at a time).
    """

    def __init__(self, base, k, hierarchy=None, decoders=(), probabilities=False, cost="path",
                 embedder=None, **kwargs):
        super().__init__(**kwargs)
        self.base, self.k, self.hierarchy = base, int(k), hierarchy
        self.decoders, self.probabilities, self.cost, self.embedder = tuple(decoders), probabilities, cost, embedder

    def call(self, x):
        out = self.base(x, training=False)
        scores, emb = (out[0], out[1]) if isinstance(out, (list, tuple)) else (out, None)
        if self.embedder is not None:
            emb = self.embedder(x, training=False) if isinstance(self.embedder, keras.Model) else self.embedder(x)
        scores = ops.cast(scores, "float32")
        width = scores.shape[-1]
        if self.hierarchy is not None and width is not None and width != self.hierarchy.num_classes:
            raise ValueError(f"the model outputs {width} scores per sample but the hierarchy has "
                             f"{self.hierarchy.num_classes} classes")
        result = {"top_ids": ops.cast(_top_k(scores, self.k), "int32")}
        result["num_scores"] = ops.zeros_like(result["top_ids"][:, 0]) + scores.shape[-1]
        if emb is not None:
            result["embedding"] = ops.cast(emb, "float32")
        if self.decoders:
            probs = scores if self.probabilities else ops.softmax(scores, axis=-1)
            if keras.backend.backend() != "tensorflow":
                result["probabilities"] = probs
                return result
            from keras_hier.serving_graph import TENSORFLOW_OPS

            for decoder in self.decoders:
                ids = decoder_class_ids(probs, self.hierarchy, decoder, self.cost, TENSORFLOW_OPS)
                result[decoder] = ops.cast(ids, "int32")
        return result
