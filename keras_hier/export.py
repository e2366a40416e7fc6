"""Versioned SavedModels for TF-Serving with hierarchy-consistent predictions.

`export_saved_model` writes `export_base/<version>/` the way TF-Serving's
file-system source expects: a `saved_model.pb`, `variables/` and `assets/`
(`hierarchy.json`, `model_card.json`), plus a `README.md` listing the
signatures. The version is written into a hidden temporary directory inside
`export_base` and renamed into place, so a server polling the folder never sees
a half-written version; an existing version is never overwritten.

Signatures (both return the same dict of outputs, see `output_names`):
- `serving_default`: `images`, a batch of images as the model takes them
  (`[batch, height, width, channels]`, the model's input dtype, or uint8 when
  `input_dtype="uint8"`, scaled by `pixel_scale` in the graph);
- `serving_bytes`: `image_bytes`, a batch of encoded JPEG/PNG/BMP/GIF strings
  (what a REST client sends as `{"b64": ...}`), decoded, resized to
  `image_size` and scaled by `pixel_scale` inside the graph.

The graph holds only TensorFlow ops: a process with TensorFlow alone (no Keras,
no keras_hier) loads and runs it.
"""

import datetime
import json
import os
import re
import shutil
import tempfile

import numpy as np

from keras_hier import decoding
from keras_hier.serving_graph import serving_decoder

__all__ = ["export_saved_model", "output_names", "existing_versions", "SIGNATURE_DEFAULT", "SIGNATURE_BYTES"]

SIGNATURE_DEFAULT = "serving_default"
SIGNATURE_BYTES = "serving_bytes"
IMAGES_INPUT = "images"
BYTES_INPUT = "image_bytes"
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
_INPUT_DTYPES = _FLOAT_DTYPES + ("uint8",)


def output_names(hierarchy, top_k=5, backoff_threshold=None):
    """Names of the outputs of an exported signature, in a stable order.

    Args:
        hierarchy: the `keras_hier.Hierarchy`.
        top_k: the export's `top_k` (None: no top-k outputs).
        backoff_threshold: the export's threshold (None: no back-off outputs).

    Returns:
        List of str: `classes`, `class_ids`, `scores`, [`top_k_ids`,
        `top_k_scores`, `top_k_classes`], `level_<l>_ids`, `level_<l>_names`,
        `level_<l>_scores` for every level, [`prediction`, `prediction_level`,
        `prediction_score`].
    """
    names = ["classes", "class_ids", "scores"]
    if top_k:
        names += ["top_k_ids", "top_k_scores", "top_k_classes"]
    for level in range(hierarchy.depth):
        names += [f"level_{level}_ids", f"level_{level}_names", f"level_{level}_scores"]
    if backoff_threshold is not None:
        names += ["prediction", "prediction_level", "prediction_score"]
    return names


def existing_versions(export_base):
    """Sorted integer versions present in `export_base` (what TF-Serving sees)."""
    if not os.path.isdir(export_base):
        return []
    return sorted(int(name) for name in os.listdir(export_base)
                  if re.fullmatch(r"\d+", name) and os.path.isdir(os.path.join(export_base, name)))


def _model_input_spec(model):
    """(shape, dtype) of the model's single image input."""
    inputs = getattr(model, "inputs", None)
    if inputs is None:
        raise ValueError(f"{type(model).__name__} has no defined inputs; build it on a keras.Input "
                         "(functional or Sequential with an Input layer) before exporting")
    if len(inputs) != 1:
        raise ValueError(f"export_saved_model needs a model with one image input; "
                         f"{model.name!r} has {len(inputs)} inputs")
    shape = tuple(inputs[0].shape)
    dtype = str(inputs[0].dtype)
    if len(shape) != 4:
        raise ValueError(f"export_saved_model needs an image input [batch, height, width, channels]; "
                         f"model {model.name!r} takes shape {shape}")
    if shape[-1] is None:
        raise ValueError(f"model {model.name!r}: the channel count of its input {shape} must be known")
    return shape, dtype


def _check_version(export_base, version):
    versions = existing_versions(export_base)
    if version is None:
        return (versions[-1] + 1) if versions else 1
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
        raise ValueError(f"version must be a non-negative int (TF-Serving version directory), got {version!r}")
    version = int(version)
    target = os.path.join(export_base, str(version))
    if os.path.exists(target):
        raise FileExistsError(f"version {version} already exists at {target}; refusing to overwrite it "
                              f"(existing versions: {versions}; pass version=None for the next free one)")
    return version


def _json_ready(value, where):
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as error:
        raise TypeError(f"{where} must be JSON-serialisable: {error}") from None

def _make_module(model, hierarchy, *, decoder, cost, backoff_threshold, top_k, from_logits, image_size,
                 model_shape, model_dtype, input_dtype, pixel_scale):
    import tensorflow as tf

    channels = model_shape[-1]
    decode = serving_decoder(hierarchy, decoder=decoder, cost=cost, backoff_threshold=backoff_threshold,
                              top_k=top_k, from_logits=from_logits)

    def to_model_input(images):
        """Casts/scales serving inputs (uint8 pixels or floats) to the model's dtype."""
        if images.dtype == tf.uint8 and model_dtype != "uint8":
            images = tf.cast(images, tf.float32) * pixel_scale
        return tf.cast(images, model_dtype)

    expected_shape = [None, *model_shape[1:]]

    def outputs(images):
        # Signatures do not check shapes when called (nor does TF-Serving): check in the graph, with a
        # message naming the input, before the model sees a wrong tensor.
        images = tf.ensure_shape(images, expected_shape, name="check_image_shape")
        logits = model(to_model_input(images), training=False)
        if logits.shape.rank != 2 or logits.shape[-1] not in (None, hierarchy.num_classes):
            raise ValueError(f"model output {logits.shape} is not [batch, {hierarchy.num_classes}]")
        return decode(tf.ensure_shape(logits, [None, hierarchy.num_classes]))

    image_spec = tf.TensorSpec([None, *model_shape[1:]], dtype=input_dtype, name=IMAGES_INPUT)

    @tf.function(input_signature=[image_spec], autograph=False)
    def serving_default(images):
        return outputs(images)

    height, width = image_size

    def decode_one(data):
        image = tf.io.decode_image(data, channels=channels, expand_animations=False, dtype=tf.uint8)
        image = tf.image.resize(image, (height, width), method="bilinear")
        return tf.ensure_shape(image, (height, width, channels))  # float32 in 0..255

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)], autograph=False)
    def serving_bytes(image_bytes):
        pixels = tf.map_fn(decode_one, image_bytes, fn_output_signature=tf.TensorSpec(
            (height, width, channels), tf.float32))
        if model_dtype == "uint8":
            images = tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)
        else:
            images = tf.cast(pixels * pixel_scale, model_dtype)
        return outputs(images)

    module = tf.Module(name="keras_hier_export")
    module.model_variables = list(model.variables)
    module.serving_default = serving_default
    module.serving_bytes = serving_bytes
    return module, {SIGNATURE_DEFAULT: serving_default, SIGNATURE_BYTES: serving_bytes}


def export_saved_model(model, hierarchy, export_base, version=None, decoder="argmax", backoff_threshold=None,
                       top_k=5, image_size=None, model_card=None, *, cost="path", from_logits=True,
                       input_dtype=None, pixel_scale=1.0 / 255.0):
    """Writes a TF-Serving SavedModel that returns hierarchy-consistent predictions.

    Every prediction's ancestor chain comes from the hierarchy (`level_<l>_ids`
    equals `hierarchy.ancestors(l)[class_ids]`), node scores are marginals
    (sums of class probabilities, so a parent never scores below its child),
    and with back-off the answer is the deepest node of the chain whose
    marginal reaches the threshold.

    Args:
        model: a Keras model mapping images [batch, H, W, channels] to class
            logits (or probabilities, `from_logits=False`) [batch, C].
        hierarchy: `keras_hier.Hierarchy` with C classes (same order as the
            model's outputs).
        export_base: the model's base path (what `--model_base_path` points
            at); created if missing.
        version: integer version directory; default: the next free one
            (1 for an empty base). An existing version raises `FileExistsError`.
        decoder: `"argmax"` or `"expected_cost"` (see `keras_hier.decoding`).
        backoff_threshold: optional float in (0, 1]; adds `prediction`,
            `prediction_level` (-1 = root) and `prediction_score`.
        top_k: number of ranked classes in `top_k_*` (None: no such outputs).
        image_size: (height, width) that `serving_bytes` resizes decoded images
            to; default the model's input size (required when it is not fixed).
        model_card: optional JSON-able dict merged into `model_card.json`
            (e.g. `{"training": {...}, "metrics": {...}}`).
        cost: tree cost of the `expected_cost` decoder (`"path"` or `"lca_height"`).
        from_logits: whether the model outputs logits (softmax in the graph).
        input_dtype: dtype of the `images` input; default the model's input
            dtype. `"uint8"` for a float model casts and multiplies by
            `pixel_scale` in the graph.
        pixel_scale: factor applied to uint8 pixels (decoded bytes, uint8
            `images`) before a float model; default 1/255 (inputs in [0, 1]).

    Returns:
        The path of the written version directory (str).

    Example:

    ```python
    path = keras_hier.export_saved_model(model, hierarchy, "/models/plankton",
                                         decoder="expected_cost", backoff_threshold=0.6)
    # tensorflow_model_server --model_base_path=/models/plankton --model_name=plankton ...
    ```
    """
    import keras

    decoding.check_hierarchy(hierarchy)
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, got {type(model).__name__}")
    if decoder not in decoding.DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; use one of {decoding.DECODERS}")
    if cost not in decoding.COSTS:
        raise ValueError(f"unknown cost {cost!r}; use one of {decoding.COSTS}")
    if backoff_threshold is not None and (isinstance(backoff_threshold, bool) or not isinstance(
            backoff_threshold, (int, float, np.floating)) or not 0.0 < float(backoff_threshold) <= 1.0):
        raise ValueError(f"backoff_threshold must be a float in (0, 1], got {backoff_threshold!r}")
    if backoff_threshold is not None:
        backoff_threshold = float(backoff_threshold)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    top_k = None if top_k is None else int(min(top_k, hierarchy.num_classes))

    model_shape, model_dtype = _model_input_spec(model)
    if model_dtype not in _INPUT_DTYPES:
        raise ValueError(f"model {model.name!r} takes {model_dtype} inputs; export supports {_INPUT_DTYPES}")
    input_dtype = model_dtype if input_dtype is None else str(input_dtype)
    if input_dtype not in _INPUT_DTYPES:
        raise ValueError(f"input_dtype must be one of {_INPUT_DTYPES}, got {input_dtype!r}")
    if input_dtype != model_dtype and input_dtype != "uint8":
        raise ValueError(f"input_dtype {input_dtype!r} differs from the model's {model_dtype!r}; "
                         "only 'uint8' (raw pixels, scaled by pixel_scale) may differ")
    fixed = model_shape[1:3]
    if image_size is None:
        if None in fixed:
            raise ValueError(f"model {model.name!r} takes images of any size {model_shape}; pass "
                             "image_size=(height, width) for the serving_bytes signature")
        image_size = fixed
    try:
        image_size = tuple(int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be (height, width), got {image_size!r}") from None
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(f"image_size must be (height, width) with positive ints, got {image_size!r}")
    if any(f is not None and f != s for f, s in zip(fixed, image_size)):
        raise ValueError(f"image_size {image_size} differs from the model's input size {fixed}")
    if not isinstance(pixel_scale, (int, float, np.floating)) or isinstance(pixel_scale, bool):
        raise TypeError(f"pixel_scale must be a number, got {pixel_scale!r}")

    # The model must give one score per class of the hierarchy.
    probe_shape = (1, *image_size, model_shape[-1])
    probe = model(np.zeros(probe_shape, dtype=model_dtype if model_dtype != "bfloat16" else "float32"),
                  training=False)
    out_shape = tuple(probe.shape)
    if len(out_shape) != 2 or out_shape[-1] != hierarchy.num_classes:
        raise ValueError(f"model {model.name!r} outputs shape {out_shape} but the hierarchy has "
                         f"{hierarchy.num_classes} classes: expected [batch, {hierarchy.num_classes}] "
                         "(class scores in hierarchy.classes order)")
    card_extra = {} if model_card is None else model_card
    if not isinstance(card_extra, dict):
        raise TypeError(f"model_card must be a dict, got {type(model_card).__name__}")
    card_extra = _json_ready(card_extra, "model_card")

    export_base = os.fspath(export_base)
    os.makedirs(export_base, exist_ok=True)
    version = _check_version(export_base, version)

    import tensorflow as tf

    module, signatures = _make_module(
        model, hierarchy, decoder=decoder, cost=cost, backoff_threshold=backoff_threshold, top_k=top_k,
        from_logits=from_logits, image_size=image_size, model_shape=model_shape, model_dtype=model_dtype,
        input_dtype=input_dtype, pixel_scale=float(pixel_scale))
    card = _model_card(model, hierarchy, version=version, decoder=decoder, cost=cost, top_k=top_k,
                       backoff_threshold=backoff_threshold, from_logits=from_logits, image_size=image_size,
                       images_shape=[None, *model_shape[1:]], input_dtype=input_dtype,
                       pixel_scale=float(pixel_scale), extra=card_extra)

    staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_base)  # not an integer: servers skip it
    try:
        with tempfile.TemporaryDirectory() as source:
            for name, payload in (("hierarchy.json", hierarchy.to_dict()), ("model_card.json", card)):
                with open(os.path.join(source, name), "w", encoding="utf-8") as f:
                    json.dump(payload, f, indent=1)
            module.hierarchy_json = tf.saved_model.Asset(os.path.join(source, "hierarchy.json"))
            module.model_card_json = tf.saved_model.Asset(os.path.join(source, "model_card.json"))
            tf.saved_model.save(module, staging, signatures=signatures)
        with open(os.path.join(staging, "README.md"), "w", encoding="utf-8") as f:
            f.write(_readme(hierarchy, card))
        target = os.path.join(export_base, str(version))
        if os.path.exists(target):  # appeared while we were writing
            raise FileExistsError(f"version {version} appeared at {target} during the export; not overwritten")
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _model_card(model, hierarchy, *, version, decoder, cost, top_k, backoff_threshold, from_logits, image_size,
                images_shape, input_dtype, pixel_scale, extra):
    import keras_hier

    levels = [{"level": level, "num_nodes": hierarchy.num_nodes(level), "names": hierarchy.level_names(level)}
              for level in range(hierarchy.depth)]
    card = {
        "format": "keras_hier.model_card/1",
        "model_name": model.name,
        "version": version,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "keras_hier_version": keras_hier.__version__,
        "num_classes": hierarchy.num_classes,
        "classes": list(hierarchy.classes),
        "depth": hierarchy.depth,
        "levels": levels,
        "decoder": decoder,
        "cost": cost if decoder == "expected_cost" else None,
        "backoff_threshold": backoff_threshold,
        "root_name": decoding.ROOT_NAME,
        "top_k": top_k,
        "from_logits": bool(from_logits),
        "signatures": {
            SIGNATURE_DEFAULT: {"inputs": {IMAGES_INPUT: {"dtype": input_dtype, "shape": list(images_shape)}}},
            SIGNATURE_BYTES: {"inputs": {BYTES_INPUT: {"dtype": "string", "shape": [None],
                                                      "image_size": list(image_size)}}},
        },
        "pixel_scale": pixel_scale,
        "outputs": output_names(hierarchy, top_k, backoff_threshold),
        "training": None,
        "metrics": None,
    }
    card.update(extra)
    return card


_OUTPUT_DOCS = {
    "classes": "string [B]: name of the predicted class",
    "class_ids": "int32 [B]: id of the predicted class (position in `classes` of model_card.json)",
    "scores": "float32 [B]: probability of the predicted class",
    "top_k_ids": "int32 [B, k]: the k best classes (ranked by the decoder)",
    "top_k_scores": "float32 [B, k]: their probabilities",
    "top_k_classes": "string [B, k]: their names",
    "prediction": "string [B]: back-off answer, the deepest node of the predicted chain whose probability "
                  "reaches the threshold (`<root>` when none does)",
    "prediction_level": "int32 [B]: level of `prediction` (-1 = root)",
    "prediction_score": "float32 [B]: probability of `prediction` (1 for the root)",
}


def _readme(hierarchy, card):
    lines = [f"# {card['model_name']}, version {card['version']}", "",
             f"Exported by keras_hier {card['keras_hier_version']} on {card['created']}. "
             f"{hierarchy.num_classes} classes, {hierarchy.depth} levels; decoder `{card['decoder']}`"
             + (f" (cost `{card['cost']}`)" if card["cost"] else "")
             + (f", back-off threshold {card['backoff_threshold']}" if card["backoff_threshold"] is not None else "")
             + ".", "",
             "## Signatures", "",
             f"- `{SIGNATURE_DEFAULT}`: input `{IMAGES_INPUT}` "
             f"{card['signatures'][SIGNATURE_DEFAULT]['inputs'][IMAGES_INPUT]['dtype']} "
             f"{card['signatures'][SIGNATURE_DEFAULT]['inputs'][IMAGES_INPUT]['shape']}",
             f"- `{SIGNATURE_BYTES}`: input `{BYTES_INPUT}` string [B], encoded JPEG/PNG (REST: "
             f'`{{"b64": ...}}`), resized to {card["signatures"][SIGNATURE_BYTES]["inputs"][BYTES_INPUT]["image_size"]}'
             f" and scaled by {card['pixel_scale']:.6g}", "",
             "## Outputs (both signatures)", ""]
    for name in card["outputs"]:
        match = re.fullmatch(r"level_(\d+)_(ids|names|scores)", name)
        if match:
            level, kind = int(match.group(1)), match.group(2)
            what = {"ids": "int32 [B]: node id", "names": "string [B]: node name",
                    "scores": "float32 [B]: probability (sum over the classes below)"}[kind]
            doc = f"{what} of the predicted class's ancestor at level {level} ({hierarchy.num_nodes(level)} nodes)"
        else:
            doc = _OUTPUT_DOCS[name]
        lines.append(f"- `{name}`: {doc}")
    lines += ["", "Node names per level and the class list are in `assets/model_card.json`; the hierarchy "
              "(`keras_hier.Hierarchy.from_dict`) in `assets/hierarchy.json`.", ""]
    return "\n".join(lines)
