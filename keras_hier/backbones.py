"""Feature extractors for `keras_hier.build_classifier`.

Every backbone maps images `[B, H, W, C]` (float, pixels in [0, 1]) to a
pooled feature vector `[B, F]`; the embedding `Dense` and the head are added
by `build_classifier`.

- `small_cnn`: 4 conv blocks (32-64-128-256, BatchNorm, ReLU, max pooling)
  and global average pooling; 388k weights (436k with a 128-d embedding and a
  100-class head). The CPU-sized choice.
- `resnet18`: the basic-block ResNet-18 written in Keras layers (keras.applications
  has none), with a CIFAR stem (3x3 conv, no max pooling) for small inputs.
- `resnet50`: `keras.applications.ResNet50`, optionally with weights from a
  local file (never downloaded), first conv re-initialised as in the paper.
"""

import os

import keras
from keras import layers

__all__ = ["small_cnn", "resnet18", "resnet50", "get_backbone", "BACKBONES"]


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


BACKBONES = {"small_cnn": small_cnn, "resnet18": resnet18, "resnet50": resnet50}


def get_backbone(name, input_shape, **kwargs):
    """Builds a backbone by name (`"small_cnn"`, `"resnet18"`, `"resnet50"`).

    Args:
        name: backbone name, or a `keras.Model` (returned unchanged).
        input_shape: `(H, W, C)`.
        **kwargs: passed to the builder.

    Returns:
        A `keras.Model` producing a feature vector.

    Example:
        >>> get_backbone("small_cnn", (28, 28, 1)).output_shape
        (None, 256)
    """
    if isinstance(name, keras.Model):
        return name
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](input_shape, **kwargs)
