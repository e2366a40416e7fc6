"""Feature extractors for `keras_hier.build_classifier`.

Every backbone maps its input to a pooled feature vector `[B, F]`; the
embedding `Dense` and the head are added by `build_classifier`. Image
backbones take `[B, H, W, C]` (float, pixels in [0, 1]); text backbones take
raw strings `[B]` and hold their own `TextVectorization` (so a saved model or
an export answers plain text).

- `small_cnn`: 4 conv blocks (32-64-128-256, BatchNorm, ReLU, max pooling)
  and global average pooling; 388k weights (436k with a 128-d embedding and a
  100-class head). The CPU-sized choice.
- `resnet18`: the basic-block ResNet-18 written in Keras layers (keras.applications
  has none), with a CIFAR stem (3x3 conv, no max pooling) for small inputs.
- `resnet50`: `keras.applications.ResNet50`, optionally with weights from a
  local file (never downloaded), first conv re-initialised as in the paper.
- `text_bag`: TextVectorization -> Embedding -> masked mean (an embedding
  bag, fastText-like); the CPU-sized text choice.
- `text_cnn`: TextVectorization -> Embedding -> 1-D convolutions -> global
  max pooling.
- `"keras_hub:<preset or class>"` in `get_backbone`: a KerasHub image
  backbone (see `keras_hub_backbone`).
"""

import os

import keras
import numpy as np
from keras import layers

__all__ = ["small_cnn", "resnet18", "resnet50", "text_bag", "text_cnn", "text_vectorizer",
           "keras_hub_backbone", "get_backbone", "BACKBONES", "TEXT_BACKBONES"]


def _check_shape(input_shape, name):
    shape = tuple(input_shape)
    if len(shape) != 3 or any(d is not None and int(d) < 1 for d in shape):
        raise ValueError(f"{name}: input_shape must be (height, width, channels), got {input_shape!r}")
    return shape


def small_cnn(input_shape, filters=(32, 64, 128, 256), dropout=0.0, bn_momentum=0.9, name="small_cnn"):
    """A small 4-layer CNN: (conv 3x3 -> BatchNorm -> ReLU -> max pool) x 4 -> GAP.

    The last block has no max pooling; global average pooling gives the
    feature vector of size `filters[-1]`.

    Args:
        input_shape: `(H, W, C)`.
        filters: channels of the conv layers.
        dropout: dropout rate after pooling (0: none).
        bn_momentum: BatchNorm moving-average momentum. 0.9 (not Keras'
            0.99) so that the inference statistics are usable after the few
            hundred steps of a CPU-sized run.
        name: model name.

    Returns:
        A `keras.Model` mapping images to `[B, filters[-1]]` features.

    Example:
        >>> small_cnn((32, 32, 3)).output_shape
        (None, 256)
    """
    shape = _check_shape(input_shape, "small_cnn")
    inputs = keras.Input(shape)
    x = inputs
    for i, f in enumerate(filters):
        x = layers.Conv2D(int(f), 3, padding="same", name=f"conv{i + 1}")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, name=f"bn{i + 1}")(x)
        x = layers.ReLU(name=f"relu{i + 1}")(x)
        if i < len(filters) - 1 and min(x.shape[1] or 2, x.shape[2] or 2) >= 2:
            x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, x, name=name)


def _basic_block(x, filters, stride, name):
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                      name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False,
                                 name=f"{name}_proj")(shortcut)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def resnet18(input_shape, width=64, blocks=(2, 2, 2, 2), stem="auto", name="resnet18"):
    """ResNet-18 (He et al. 2016, basic blocks) in Keras layers.

    Args:
        input_shape: `(H, W, C)`.
        width: channels of the first stage (doubled at every stage).
        blocks: basic blocks per stage (`(2, 2, 2, 2)` is ResNet-18,
            `(1, 1, 1, 1)` an 8-conv variant for CPUs).
        stem: `"imagenet"` (7x7 stride-2 conv + 3x3 max pool), `"cifar"`
            (3x3 stride-1 conv, no pooling) or `"auto"` (cifar below 64 px).
        name: model name.

    Returns:
        A `keras.Model` mapping images to `[B, 8 * width]` features.

    Example:
        >>> resnet18((32, 32, 3)).output_shape
        (None, 512)
    """
    shape = _check_shape(input_shape, "resnet18")
    if stem == "auto":
        stem = "cifar" if min(shape[0] or 224, shape[1] or 224) < 64 else "imagenet"
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"resnet18: stem must be 'auto', 'cifar' or 'imagenet', got {stem!r}")
    inputs = keras.Input(shape)
    if stem == "cifar":
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    else:
        x = layers.Conv2D(width, 7, strides=2, padding="same", use_bias=False,
                          name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    if stem == "imagenet":
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, count in enumerate(blocks):
        for b in range(count):
            stride = 2 if stage > 0 and b == 0 else 1
            x = _basic_block(x, width * 2 ** stage, stride, name=f"stage{stage + 1}_block{b + 1}")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, x, name=name)


def resnet50(input_shape, weights=None, reinit_first_conv=True, name="resnet50"):
    """ResNet-50 from `keras.applications`, without its top, average pooled.

    Args:
        input_shape: `(H, W, C)` (at least 32x32).
        weights: None (random init) or the path of a local weights file, e.g.
            Keras' `resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`.
            Nothing is ever downloaded: `"imagenet"` is accepted only when
            that file is already in the Keras cache (`~/.keras/models`).
        reinit_first_conv: re-initialise the first conv after loading weights
            (the paper's recipe; also needed when C != 3).
        name: model name.

    Returns:
        A `keras.Model` mapping images to `[B, 2048]` features.

    Example:
        >>> resnet50((32, 32, 3)).output_shape
        (None, 2048)
    """
    shape = _check_shape(input_shape, "resnet50")
    if weights == "imagenet":
        cached = os.path.join(os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras")),
                              "models", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
        if not os.path.exists(cached):
            raise ValueError(f"resnet50: weights='imagenet' needs {cached} (no downloads); "
                             "pass the path of a local weights file or weights=None")
        weights = cached
    if weights is not None and not os.path.exists(str(weights)):
        raise ValueError(f"resnet50: weights file {weights!r} does not exist")
    channels = shape[-1]
    base_shape = shape[:-1] + (3,) if weights is not None and channels != 3 else shape
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=base_shape,
                                       pooling="avg")
    if weights is not None:
        base.load_weights(str(weights))
    if base_shape != shape:  # rebuild with the right number of input channels
        fresh = keras.applications.ResNet50(include_top=False, weights=None, input_shape=shape,
                                            pooling="avg")
        for src, dst in zip(base.layers, fresh.layers):
            if dst.name != "conv1_conv" and src.get_weights():
                dst.set_weights(src.get_weights())
        base = fresh
    elif weights is not None and reinit_first_conv:
        conv = base.get_layer("conv1_conv")
        kernel, bias = conv.get_weights()
        init = keras.initializers.GlorotUniform()
        conv.set_weights([keras.ops.convert_to_numpy(init(kernel.shape)), bias * 0])
    return keras.Model(base.inputs, base.outputs, name=name)


# ----------------------------------------------------------------------------- text
def text_vectorizer(texts=None, vocabulary=None, max_tokens=20_000, sequence_length=32, ngrams=None,
                    name="vectorize"):
    """A `TextVectorization` layer (lower case, punctuation stripped, int ids, padded with 0).

    Args:
        texts: strings to learn the vocabulary from (`adapt`), e.g. the
            training texts, or a `tf.data.Dataset` of string batches (e.g.
            `train.map(lambda x, y: x)`). Give `texts` or `vocabulary`.
        vocabulary: a list of tokens (most frequent first; without the
            padding `""` and `"[UNK]"` entries), instead of `texts`.
        max_tokens: vocabulary size, padding and out-of-vocabulary included.
        sequence_length: tokens kept per text (longer texts are cut).
        ngrams: None, or an int n to add all 2..n-grams as tokens.
        name: layer name.

    Returns:
        An adapted `keras.layers.TextVectorization`: strings `[B]` -> int `[B, sequence_length]`.
    """
    if (texts is None) == (vocabulary is None):
        raise ValueError("text_vectorizer: give exactly one of texts= (to adapt) or vocabulary=")
    for arg, value in (("max_tokens", max_tokens), ("sequence_length", sequence_length)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (3 if arg == "max_tokens" else 1):
            raise ValueError(f"text_vectorizer: {arg} must be a positive int (max_tokens >= 3), got {value!r}")
    layer = layers.TextVectorization(max_tokens=int(max_tokens), output_mode="int",
                                     output_sequence_length=int(sequence_length), ngrams=ngrams,
                                     vocabulary=None if vocabulary is None else list(vocabulary), name=name)
    if texts is not None and hasattr(texts, "element_spec"):  # a tf.data.Dataset of strings
        layer.adapt(texts)
    elif texts is not None:
        texts = np.asarray(texts, dtype=object).reshape(-1)
        if texts.size == 0 or not all(isinstance(t, (str, bytes)) for t in texts):
            bad = next((t for t in texts if not isinstance(t, (str, bytes))), None)
            raise ValueError(f"text_vectorizer: texts must be a non-empty sequence of strings (got {bad!r})")
        layer.adapt(texts, batch_size=4096)
    return layer


def _vectorized_input(vectorizer, texts, vocabulary, max_tokens, sequence_length, ngrams, token_ids, where):
    """(model input, token ids [B, L], vocabulary size): strings [B] or, with `token_ids`, ids [B, L]."""
    if vectorizer is None:
        vectorizer = text_vectorizer(texts, vocabulary, max_tokens, sequence_length, ngrams)
    elif texts is not None or vocabulary is not None:
        raise ValueError(f"{where}: give a vectorizer or texts/vocabulary, not both")
    vocab = int(vectorizer.vocabulary_size())
    if token_ids:
        length = vectorizer.get_config()["output_sequence_length"]
        inputs = keras.Input(shape=(length,), dtype="int32", name="token_ids")
        return inputs, inputs, vocab
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"{where}: a model that takes strings needs the TensorFlow backend (its TextVectorization runs "
            f"in the model); on {keras.backend.backend()!r} pass token_ids=True with vectorizer="
            "text_vectorizer(texts) and map the vectorizer over the tf.data pipeline")
    inputs = keras.Input(shape=(), dtype="string", name="text")
    return inputs, vectorizer(inputs), vocab


def text_bag(texts=None, vocabulary=None, embedding_dim=64, max_tokens=20_000, sequence_length=32,
             ngrams=None, dropout=0.0, vectorizer=None, token_ids=False, name="text_bag"):
    """An embedding bag: TextVectorization -> Embedding -> mean over the text's tokens.

    The mean skips padding; an empty text gives the zero vector. fastText-like
    and fast on a CPU (a 181-class gloss model trains an epoch in seconds).

    Args:
        texts: training strings to adapt the vocabulary to (or `vocabulary`,
            or a ready `vectorizer`).
        vocabulary: a token list instead of `texts` (see `text_vectorizer`).
        embedding_dim: F, the size of the word vectors and of the output.
        max_tokens, sequence_length, ngrams: see `text_vectorizer`.
        dropout: dropout on the pooled vector (0: none).
        vectorizer: an adapted `TextVectorization` layer to use.
        token_ids: False (default): the model takes strings and holds the
            vectorizer (TensorFlow backend). True: the model takes the
            vectorizer's int ids `[B, sequence_length]` and the caller
            vectorizes, e.g. in `tf.data` (any backend: JAX, PyTorch).
        name: model name.

    Returns:
        A `keras.Model` mapping strings `[B]` (or token ids) to `[B, embedding_dim]`.

    Example:
        >>> m = text_bag(["a small domesticated feline", "a large truck"], embedding_dim=8)
        >>> m.output_shape
        (None, 8)
    """
    inputs, ids, vocab = _vectorized_input(vectorizer, texts, vocabulary, max_tokens, sequence_length, ngrams,
                                           token_ids, "text_bag")
    vectors = layers.Embedding(vocab, int(embedding_dim), name="token_embedding")(ids)
    mask = keras.ops.expand_dims(keras.ops.cast(keras.ops.not_equal(ids, 0), vectors.dtype), -1)
    total = keras.ops.sum(vectors * mask, axis=1)
    x = total / keras.ops.maximum(keras.ops.sum(mask, axis=1), 1.0)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, x, name=name)


def text_cnn(texts=None, vocabulary=None, embedding_dim=64, filters=128, kernel_sizes=(3, 5),
             max_tokens=20_000, sequence_length=32, dropout=0.0, vectorizer=None, token_ids=False,
             name="text_cnn"):
    """A small 1-D CNN: TextVectorization -> Embedding -> Conv1D (ReLU) per kernel size -> global max pool.

    Args:
        texts, vocabulary, vectorizer, token_ids: the vocabulary and the
            input kind (see `text_bag`).
        embedding_dim: size of the word vectors.
        filters: channels of each convolution.
        kernel_sizes: one parallel `Conv1D` per width; their pooled outputs
            are concatenated (`len(kernel_sizes) * filters` features).
        max_tokens, sequence_length: see `text_vectorizer`.
        dropout: dropout on the pooled vector (0: none).
        name: model name.

    Returns:
        A `keras.Model` mapping strings `[B]` (or token ids) to `[B, len(kernel_sizes) * filters]`.

    Example:
        >>> text_cnn(["a small domesticated feline"], filters=4, kernel_sizes=(2, 3)).output_shape
        (None, 8)
    """
    if not kernel_sizes:
        raise ValueError("text_cnn: kernel_sizes must name at least one width")
    inputs, ids, vocab = _vectorized_input(vectorizer, texts, vocabulary, max_tokens, sequence_length, None,
                                           token_ids, "text_cnn")
    vectors = layers.Embedding(vocab, int(embedding_dim), name="token_embedding")(ids)
    pooled = []
    for width in kernel_sizes:
        y = layers.Conv1D(int(filters), int(width), padding="same", activation="relu", name=f"conv{width}")(vectors)
        pooled.append(layers.GlobalMaxPooling1D(name=f"pool{width}")(y))
    x = pooled[0] if len(pooled) == 1 else layers.Concatenate(name="concat")(pooled)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, x, name=name)


# ------------------------------------------------------------------------- KerasHub
def _keras_hub():
    try:
        import keras_hub
    except ImportError:
        raise ImportError("KerasHub backbones need the keras-hub package: pip install keras-hub") from None
    return keras_hub


def keras_hub_backbone(spec, input_shape=None, config=None, weights=None, name=None):
    """A KerasHub image backbone, pooled to a feature vector; never downloads.

    Args:
        spec: a KerasHub backbone class name (`"ResNetBackbone"`,
            `"ViTBackbone"`, ...; built from `config` with random weights),
            or the folder of a KerasHub preset on local disk (written by
            `backbone.save_to_preset(folder)` or a downloaded Kaggle /
            Hugging Face preset). A preset *name* such as
            `"resnet_18_imagenet"` is tried too, but needs the network.
        input_shape: `(H, W, C)`; passed as `image_shape` to a class built
            from `config` (when `config` has none).
        config: constructor arguments of the class (see KerasHub's docs).
        weights: path of a local `.weights.h5` file to load into the
            backbone (random weights when None, except for a preset folder,
            which holds its own).
        name: model name (default `"keras_hub_<class>"`).

    Returns:
        A `keras.Model` mapping images `[B, H, W, C]` to `[B, F]`: feature
        maps are average pooled, token sequences (ViT) mean pooled. Feed
        the pixels the way the backbone expects them (KerasHub presets come
        with an `ImageConverter` for their own scaling).

    Raises:
        ValueError: unknown class, a missing weights file, a backbone that
            does not take one image input.
        ConnectionError: a preset name that cannot be fetched offline (the
            message says to pass a local folder instead).

    Example:

    ```python
    backbone = keras_hub_backbone("ResNetBackbone", (32, 32, 3), config=dict(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64],
        stackwise_num_blocks=[1], stackwise_num_strides=[1], block_type="basic_block"))
    ```
    """
    hub = _keras_hub()
    spec = str(spec)
    if weights is not None and not os.path.isfile(os.fspath(weights)):
        raise ValueError(f"keras_hub_backbone({spec!r}): weights file {weights!r} does not exist")
    cls = getattr(hub.models, spec.rsplit(".", 1)[-1], None)
    if isinstance(cls, type) and issubclass(cls, hub.models.Backbone):
        kwargs = dict(config or {})
        if input_shape is not None and "image_shape" not in kwargs:
            kwargs["image_shape"] = tuple(_check_shape(input_shape, "keras_hub_backbone"))
        try:
            backbone = cls(**kwargs)
        except TypeError as err:
            raise ValueError(f"keras_hub_backbone({spec!r}): bad config: {err}") from None
    elif config:
        raise ValueError(f"keras_hub_backbone: {spec!r} is not a KerasHub backbone class, so config= "
                         f"cannot apply; classes: {sorted(n for n in dir(hub.models) if n.endswith('Backbone'))}")
    else:
        backbone = _keras_hub_preset(hub, spec, load_weights=weights is None)
    if weights is not None:
        backbone.load_weights(os.fspath(weights))
    return _pooled(backbone, name or f"keras_hub_{type(backbone).__name__}")


def _keras_hub_preset(hub, spec, load_weights):
    local = os.path.isdir(os.path.expanduser(spec))
    try:
        return hub.models.Backbone.from_preset(os.path.expanduser(spec) if local else spec,
                                               load_weights=load_weights)
    except Exception as err:  # kagglehub / HF raise their own connection errors
        if local:
            raise
        raise ConnectionError(
            f"keras_hub_backbone: could not fetch the KerasHub preset {spec!r} ({type(err).__name__}). "
            "Offline, pass a local preset folder (backbone.save_to_preset(folder)) or a backbone class "
            "name with config=... and weights=<local .weights.h5>") from None


def _pooled(backbone, name):
    if len(backbone.inputs) != 1 or len(backbone.inputs[0].shape) != 4:
        raise ValueError(f"keras_hub_backbone: {type(backbone).__name__} does not take one image input "
                         f"[B, H, W, C] (inputs: {[tuple(t.shape) for t in backbone.inputs]})")
    inputs = keras.Input(backbone.inputs[0].shape[1:], dtype=backbone.inputs[0].dtype, name="images")
    x = backbone(inputs)
    if len(x.shape) == 4:
        x = layers.GlobalAveragePooling2D(name="gap")(x)
    elif len(x.shape) == 3:
        x = layers.GlobalAveragePooling1D(name="token_mean")(x)
    elif len(x.shape) != 2:
        raise ValueError(f"keras_hub_backbone: unexpected backbone output shape {x.shape}")
    return keras.Model(inputs, x, name=name)


BACKBONES = {"small_cnn": small_cnn, "resnet18": resnet18, "resnet50": resnet50}
TEXT_BACKBONES = {"text_bag": text_bag, "text_cnn": text_cnn}
KERAS_HUB_PREFIX = "keras_hub:"


def get_backbone(name, input_shape=None, **kwargs):
    """Builds a backbone by name.

    Args:
        name: `"small_cnn"`, `"resnet18"`, `"resnet50"` (images),
            `"text_bag"`, `"text_cnn"` (strings; pass `texts=` or
            `vocabulary=`), `"keras_hub:<class or preset folder>"` (see
            `keras_hub_backbone`; `weights=` a local file, `config=` the
            class arguments), or a `keras.Model` (returned unchanged).
        input_shape: `(H, W, C)` for image backbones (unused by text ones).
        **kwargs: passed to the builder.

    Returns:
        A `keras.Model` producing a feature vector.

    Example:
        >>> get_backbone("small_cnn", (28, 28, 1)).output_shape
        (None, 256)
        >>> get_backbone("text_bag", texts=["a cat", "a dog"], embedding_dim=4).output_shape
        (None, 4)
    """
    if isinstance(name, keras.Model):
        return name
    if isinstance(name, str) and name.startswith(KERAS_HUB_PREFIX):
        return keras_hub_backbone(name[len(KERAS_HUB_PREFIX):], input_shape, **kwargs)
    if name in TEXT_BACKBONES:
        return TEXT_BACKBONES[name](**kwargs)
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES) + sorted(TEXT_BACKBONES)} "
                         f"or '{KERAS_HUB_PREFIX}<class or preset folder>'")
    if input_shape is None:
        raise ValueError(f"get_backbone({name!r}): image backbones need input_shape=(H, W, C)")
    return BACKBONES[name](input_shape, **kwargs)
