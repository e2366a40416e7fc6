"""`build_classifier` and the `Classifier` model (after-step head updates).

Conventions other modules rely on (evaluation, export):

- the embedding layer is a `Dense` named `"embedding"`:
  `model.get_layer("embedding").output` is the [B, D] embedding;
- the head layer is named `"head"`: a `NormFaceHead` / `ProxyDRHead` (its
  `.proxies` are the normalised [C, D] proxies and `.scale` the current s),
  or for `head="softmax"` a `Dense(C)` (its kernel columns are the class
  vectors);
- the model output is float32 logits [B, C] (for `head="corr"`: cosine
  logits cos(f(x), p_c) with fixed MDS proxies, so argmax = nearest proxy).

Design of the EMA / dynamic-scale updates. They need the labels and the
embeddings of the step's forward pass, and must run after the optimiser
step. A callback cannot see either, and feeding labels as a model input would
change every data pipeline. So `Classifier` (a `keras.Model`; functional
construction `Classifier(inputs, outputs)` works as for `keras.Model`)
overrides `train_step`: it opens a per-thread store, runs Keras's own
`train_step` (forward, loss, gradients, optimiser, metrics: unchanged), in
which each head that needs updates records its input embeddings, and then
calls `head.update_from_batch(embeddings, y)` for those heads. Under
`tf.distribute.MirroredStrategy` `train_step` runs once per replica (one
thread each); the heads gather the batch statistics across replicas before
assigning (the EMA all-gathers the normalised embeddings and labels, the
dynamic scale all-reduces its non-target sums and all-gathers the target
angles), so every replica writes the same values (variables use the
`only_first_replica` aggregation). Models without such heads train exactly as a `keras.Model`.
On JAX, whose `train_step` is a pure function of the variable values, the
update runs inside `compute_loss_and_updates` in a `keras.StatelessScope`
and its new values travel with the non-trainable variables (see
`Classifier.compute_loss_and_updates`). The same heads in a plain
`keras.Model` refuse to train, with a message pointing here, instead of
silently never updating.

Example (ProxyDR with EMA proxies and a dynamic scale, plain `fit`):

>>> import numpy as np, keras
>>> from keras_hier import build_classifier
>>> backbone = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu")])
>>> model = build_classifier(backbone, head="proxydr", num_classes=4, embedding_dim=6,
...                          proxy_mode="ema", dynamic_scale=True)
>>> model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
>>> x, y = np.random.rand(32, 8).astype("float32"), np.random.randint(0, 4, 32)
>>> history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
>>> tuple(model.get_layer("head").proxies.shape), bool(model.get_layer("head").scale > 0)
((4, 6), True)
"""

import keras
import numpy as np

from keras_hier.layers import NormFaceHead, ProxyDRHead, capture_embeddings

__all__ = ["Classifier", "build_classifier", "HEADS"]

HEADS = ("proxydr", "normface", "softmax", "corr")


@keras.saving.register_keras_serializable(package="keras_hier")
class Classifier(keras.Model):
    """A `keras.Model` whose `train_step` also runs the heads' after-step
    updates (EMA proxies, dynamic scale); see the module docstring.

    Build it like a functional model: `Classifier(inputs, outputs)`.
    """

    def _updating_heads(self):
        """Layers that follow the after-step protocol (`needs_update`, `update_from_batch`) and need it."""
        return [layer for layer in self._flatten_layers(include_self=False)
                if getattr(layer, "needs_update", False) and hasattr(layer, "update_from_batch")]

    def train_step(self, *args, **kwargs):
        heads = self._updating_heads()
        if not heads or keras.backend.backend() == "jax":  # JAX: see compute_loss_and_updates
            return super().train_step(*args, **kwargs)
        data = args[0]
        with capture_embeddings as store:
            logs = super().train_step(data)
        _, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        for head in heads:
            head.update_from_batch(_captured(store, head), y, logits=capture_embeddings.logits_of(store, head))
        return logs

    def compute_loss_and_updates(self, trainable_variables, non_trainable_variables, metrics_variables, x, y,
                                 sample_weight, training=False, optimizer_variables=None):
        """JAX backend: the stateless forward pass and loss, plus the heads' after-step updates.

        JAX's `train_step` is a pure function of the variable values, so the
        heads cannot assign their variables after the step. Here, inside
        the function JAX differentiates, the updates run on the forward
        pass's embeddings (gradient stopped) in a `keras.StatelessScope`,
        and their new values are returned with the other non-trainable
        variables, which the JAX trainer carries to the next step. (The
        dynamic scale so sees the proxies of the forward pass, as on
        TensorFlow up to the optimiser step on learned proxies.)
        """
        heads = self._updating_heads() if training else []
        args = (trainable_variables, non_trainable_variables, metrics_variables, x, y, sample_weight)
        if not heads:
            return super().compute_loss_and_updates(*args, training=training, optimizer_variables=optimizer_variables)
        with capture_embeddings as store:
            loss, aux = super().compute_loss_and_updates(*args, training=training,
                                                         optimizer_variables=optimizer_variables)
        unscaled_loss, y_pred, non_trainable_variables, metrics_variables = aux
        mapping = list(zip(self.trainable_variables, trainable_variables))
        mapping += list(zip(self.non_trainable_variables, non_trainable_variables))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            for head in heads:
                logits = capture_embeddings.logits_of(store, head)
                head.update_from_batch(keras.ops.stop_gradient(_captured(store, head)), y,
                                       logits=None if logits is None else keras.ops.stop_gradient(logits))
        updated = []
        for variable, value in zip(self.non_trainable_variables, non_trainable_variables):
            new = scope.get_current_value(variable)
            updated.append(value if new is None else new)
        return loss, (unscaled_loss, y_pred, updated, metrics_variables)


def _captured(store, head):
    embeddings = store.get(id(head))
    if embeddings is None:
        raise RuntimeError(f"head {head.name!r} was not called with training=True in this train_step")
    return embeddings


def _infer_num_classes(num_classes, hierarchy, proxies, where):
    candidates = {}
    if num_classes is not None:
        candidates["num_classes"] = int(num_classes)
    if hierarchy is not None:
        candidates["hierarchy"] = hierarchy.num_classes
    if proxies is not None:
        candidates["proxies"] = int(np.shape(proxies)[0])
    if not candidates:
        raise ValueError(f"build_classifier({where!r}): give num_classes (or a hierarchy / proxies)")
    if len(set(candidates.values())) > 1:
        raise ValueError(f"build_classifier({where!r}): num_classes mismatch: "
                         + ", ".join(f"{k} gives {v}" for k, v in candidates.items()))
    return next(iter(candidates.values()))


def build_classifier(backbone, head="proxydr", num_classes=None, embedding_dim=128, **head_kwargs):
    """A ready classifier: backbone -> (global pooling) -> Dense "embedding" -> head "head".

    Args:
        backbone: a `keras.Model` (one input) producing features [B, F] or
            feature maps [B, H, W, F] (then global average pooling is added).
        head: `"proxydr"`, `"normface"`, `"softmax"` (Dense logits), `"corr"`
            (fixed MDS proxies, cosine logits; train with `CORRLoss`), or a
            `keras.layers.Layer` taking the embedding (renamed "head").
        num_classes: C; may be omitted when a `hierarchy` or `proxies`
            keyword (or a head Layer with `num_classes`) gives it.
        embedding_dim: D of the "embedding" Dense layer.
        **head_kwargs: head arguments (`scale`, `distance`, `proxy_mode`,
            `proxies`, `dynamic_scale`, ...). `hierarchy=` supplies C and,
            with `proxy_mode="mds"` or `head="corr"`, the MDS proxies
            (`mds_proxies(hierarchy, embedding_dim, beta=mds_beta,
            steps=mds_steps, seed=mds_seed)`; `proxy_mode="mds"` means fixed
            MDS proxies).

    Returns:
        A `keras_hier.models.Classifier` with float32 logits [B, C].

    Example:

    >>> import keras
    >>> from keras_hier import Hierarchy, build_classifier
    >>> h = Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> backbone = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8)])
    >>> model = build_classifier(backbone, "normface", hierarchy=h, embedding_dim=4)
    >>> model.output_shape, model.get_layer("head").num_classes
    ((None, 3), 3)
    """
    if not isinstance(backbone, keras.Model):
        raise TypeError(f"build_classifier: backbone must be a keras.Model, got {type(backbone).__name__}")
    if len(backbone.inputs) != 1:
        raise ValueError(f"build_classifier: the backbone must have one input, it has {len(backbone.inputs)}")
    hierarchy = head_kwargs.pop("hierarchy", None)
    mds = {k: head_kwargs.pop(f"mds_{k}") for k in ("beta", "steps", "seed") if f"mds_{k}" in head_kwargs}
    where = head if isinstance(head, str) else type(head).__name__
    if isinstance(head, keras.layers.Layer):
        num_classes = _infer_num_classes(num_classes if num_classes is not None else getattr(head, "num_classes", None),
                                         hierarchy, None, where)
        head_layer = head
        if head_layer.name != "head":
            if head_layer.built:
                raise ValueError(f"build_classifier: the head layer must be named 'head' (got {head_layer.name!r})")
            head_layer.name = "head"
    elif head in HEADS:
        if head == "corr" or head_kwargs.get("proxy_mode") == "mds":
            if head_kwargs.get("proxies") is None:
                if hierarchy is None:
                    raise ValueError(f"build_classifier({where!r}): MDS proxies need hierarchy= (or proxies=)")
                from keras_hier.similarity import mds_proxies

                head_kwargs["proxies"] = mds_proxies(hierarchy, embedding_dim, **mds)[0]
            head_kwargs["proxy_mode"] = "fixed"
        num_classes = _infer_num_classes(num_classes, hierarchy, head_kwargs.get("proxies"), where)
        if head == "softmax":
            if head_kwargs:
                raise ValueError(f"build_classifier('softmax') takes no head arguments, got {sorted(head_kwargs)}")
            head_layer = keras.layers.Dense(num_classes, name="head", dtype="float32")
        elif head == "corr":
            head_kwargs.setdefault("scale", 1.0)
            head_layer = NormFaceHead(num_classes, name="head", **head_kwargs)
        else:
            head_class = ProxyDRHead if head == "proxydr" else NormFaceHead
            head_layer = head_class(num_classes, name="head", **head_kwargs)
    else:
        raise ValueError(f"build_classifier: head must be one of {HEADS} or a keras Layer, got {head!r}")

    inputs = keras.Input(shape=backbone.inputs[0].shape[1:], dtype=backbone.inputs[0].dtype)
    features = backbone(inputs)
    if len(features.shape) == 4:
        features = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    elif len(features.shape) != 2:
        raise ValueError(f"build_classifier: backbone output must be [B, F] or [B, H, W, F], got {features.shape}")
    embedding = keras.layers.Dense(int(embedding_dim), name="embedding")(features)
    logits = head_layer(embedding)
    return Classifier(inputs=inputs, outputs=logits, name=f"{where}_classifier")
