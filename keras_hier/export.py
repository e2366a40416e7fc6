"""Versioned SavedModels for TF-Serving with hierarchy-consistent predictions.

`export_saved_model` writes `export_base/<version>/` the way TF-Serving's
file-system source expects: `saved_model.pb`, `variables/` and `assets/`
(`hierarchy.json`, `model_card.json`), plus a `README.md` listing the
signatures. The SavedModel is built with Keras' `keras.export.ExportArchive`
(which tracks the TensorFlow variables behind the Keras ones), so TensorFlow's
C++ loader (`LoadSavedModel`, what TF-Serving runs) restores every weight.
The graph holds TensorFlow ops only: no Keras, no keras_hier at serving time.

Signatures (both return the same dict of outputs, see `output_names`):
- `serving_default`: the model's own inputs, any shape and dtype, one named
  input per model input (an image model's single input is named `images`;
  strings, e.g. for a model holding a `TextVectorization` layer, are fine);
- `serving_bytes` (image models only: one input [batch, height, width,
  channels]): `image_bytes`, a batch of encoded JPEG/PNG/BMP/GIF strings
  (what a REST client sends as `{"b64": ...}`), decoded, resized to
  `image_size` and scaled by `pixel_scale` inside the graph.

Versions: written into a hidden staging folder inside `export_base`, made
readable (umask modes), then claimed by an atomic rename: a polling server
never sees half a version, an existing version is never overwritten, and two
processes exporting into one base at once both succeed with distinct
versions. Staging folders left by a killed export are removed by the next
export once they are older than `STALE_SECONDS`.
"""

import dataclasses
import errno
import os
import re
import shutil
import tempfile
import time

import numpy as np

from keras_hier import decoding, files
from keras_hier.export_card import BYTES_INPUT, SIGNATURE_BYTES, SIGNATURE_DEFAULT, model_card, output_names, readme
from keras_hier.outputs import resolve_from_logits
from keras_hier.serving_graph import decode_images, serving_decoder

__all__ = ["export_saved_model", "output_names", "existing_versions", "SIGNATURE_DEFAULT", "SIGNATURE_BYTES",
           "MAX_IMAGE_PIXELS", "MAX_VERSION", "STALE_SECONDS"]

IMAGES_INPUT = "images"
#: Default limit on width x height of an image sent to `serving_bytes` (checked before decoding).
MAX_IMAGE_PIXELS = 4096 * 4096
#: TF-Serving parses version folders as int64.
MAX_VERSION = 2 ** 63 - 1
#: Staging folders older than this (seconds) are left-overs of a killed export.
STALE_SECONDS = 600
_STAGING_PREFIX = ".staging-"
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
_IMAGE_DTYPES = _FLOAT_DTYPES + ("uint8",)


def existing_versions(export_base):
    """Sorted integer versions present in `export_base` (what TF-Serving sees)."""
    if not os.path.isdir(export_base):
        return []
    return sorted(int(name) for name in os.listdir(export_base)
                  if re.fullmatch(r"\d+", name) and os.path.isdir(os.path.join(export_base, name)))


# ------------------------------------------------------------------ arguments
@dataclasses.dataclass
class _Input:
    """One model input as the signature takes it."""

    name: str
    shape: tuple
    dtype: str


@dataclasses.dataclass
class _Options:
    decoder: str
    cost: str
    backoff_threshold: object
    top_k: object
    from_logits: bool
    inputs: list
    image: bool  # a single image input: `images` + the serving_bytes signature
    model_dtype: str = None
    image_size: tuple = None
    pixel_scale: float = 1.0 / 255.0
    max_image_pixels: int = MAX_IMAGE_PIXELS


def _model_inputs(model):
    """The model's inputs as `_Input`s (names made valid signature keys, unique)."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ValueError(f"{type(model).__name__} {getattr(model, 'name', '')!r} has no defined inputs; build it "
                         "on keras.Input(...) (functional, or Sequential starting with an Input) before exporting")
    specs, seen = [], set()
    for index, tensor in enumerate(inputs):
        name = re.sub(r"[^A-Za-z0-9_]", "_", str(getattr(tensor, "name", "") or f"input_{index}")) or f"input_{index}"
        if name[0].isdigit() or name in seen:
            name = f"input_{index}_{name}"
        seen.add(name)
        specs.append(_Input(name, tuple(tensor.shape), str(tensor.dtype)))
    return specs


def _is_image_input(specs):
    return len(specs) == 1 and len(specs[0].shape) == 4 and specs[0].shape[-1] is not None \
        and specs[0].dtype in _IMAGE_DTYPES


def _image_options(spec, image_size, input_dtype, pixel_scale, max_image_pixels, where):
    """Validates the image-only arguments; returns (spec renamed `images`, image_size, scale, limit)."""
    model_dtype = spec.dtype
    input_dtype = model_dtype if input_dtype is None else str(input_dtype)
    if input_dtype not in _IMAGE_DTYPES or (input_dtype != model_dtype and input_dtype != "uint8"):
        raise ValueError(f"input_dtype {input_dtype!r}: use the model's {model_dtype!r} or 'uint8' (raw pixels, "
                         "scaled by pixel_scale in the graph)")
    fixed = spec.shape[1:3]
    if image_size is None:
        if None in fixed:
            raise ValueError(f"model {where!r} takes images of any size {spec.shape}; pass "
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
    if isinstance(pixel_scale, bool) or not isinstance(pixel_scale, (int, float, np.floating)):
        raise TypeError(f"pixel_scale must be a number, got {pixel_scale!r}")
    if isinstance(max_image_pixels, bool) or not isinstance(max_image_pixels, (int, np.integer)) \
            or max_image_pixels < 1:
        raise ValueError(f"max_image_pixels must be a positive int, got {max_image_pixels!r}")
    return _Input(IMAGES_INPUT, spec.shape, input_dtype), image_size, float(pixel_scale), int(max_image_pixels)


def _check_output(model, hierarchy, options):
    """Calls the model once on zeros and checks it gives [batch, C] class scores."""
    probes = []
    for spec in options.inputs:
        shape = [1] + [d if d is not None else 8 for d in spec.shape[1:]]
        if options.image:
            shape[1:3] = options.image_size
        dtype = options.model_dtype if options.image else spec.dtype
        probes.append(np.full(shape, "", dtype=object) if dtype == "string" else
                      np.zeros(shape, "float32" if dtype == "bfloat16" else dtype))
    out = model(probes[0] if len(probes) == 1 else _pack(model, probes), training=False)
    shape = tuple(getattr(out, "shape", ()))
    if len(shape) != 2 or shape[-1] != hierarchy.num_classes:
        raise ValueError(f"model {model.name!r} outputs shape {shape} but the hierarchy has "
                         f"{hierarchy.num_classes} classes: expected [batch, {hierarchy.num_classes}] "
                         "(class scores in hierarchy.classes order)")


def _pack(model, flat):
    """Flat inputs -> the structure the model was built on (list or dict of inputs)."""
    import keras

    return keras.tree.pack_sequence_as(model.input, list(flat))


def _options(model, hierarchy, decoder, cost, backoff_threshold, top_k, from_logits, image_size, input_dtype,
             pixel_scale, max_image_pixels):
    """Validates every argument at the public boundary; returns `_Options`."""
    import keras

    if keras.backend.backend() not in ("tensorflow", "jax"):
        raise RuntimeError(
            f"export_saved_model runs under KERAS_BACKEND=tensorflow or jax (this process uses "
            f"{keras.backend.backend()!r}): save the trained model (model.save('m.keras')), then export it "
            "from a process started with KERAS_BACKEND=tensorflow; weights do not depend on the backend")
    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, got {type(model).__name__}")
    backoff_threshold, top_k = decoding.check_decoder_arguments(hierarchy, decoder, cost, backoff_threshold, top_k)
    from_logits = resolve_from_logits(from_logits, model, where="export_saved_model")
    specs = _model_inputs(model)
    options = _Options(decoder, cost, backoff_threshold, top_k, from_logits, specs, _is_image_input(specs))
    if options.image:
        options.model_dtype = specs[0].dtype
        spec, options.image_size, options.pixel_scale, options.max_image_pixels = _image_options(
            specs[0], image_size, input_dtype, pixel_scale, max_image_pixels, model.name)
        options.inputs = [spec]
    elif image_size is not None or input_dtype is not None:
        raise ValueError(f"image_size / input_dtype apply to image models (one input [batch, height, width, "
                         f"channels]); model {model.name!r} takes {[(s.name, s.shape) for s in specs]}")
    _check_output(model, hierarchy, options)
    return options


# --------------------------------------------------------------- the signatures
def _signature_functions(model, hierarchy, options):
    """{signature name: (python function, input signature)} of the export (TensorFlow ops only)."""
    import tensorflow as tf

    decode = serving_decoder(hierarchy, decoder=options.decoder, cost=options.cost,
                             backoff_threshold=options.backoff_threshold, top_k=options.top_k,
                             from_logits=options.from_logits)

    def outputs(tensors):
        checked = [_checked_input(t, spec) for t, spec in zip(tensors, options.inputs)]
        if options.image:
            checked = [_to_model_dtype(checked[0], options)]
        return decode(_scores(model, checked, hierarchy))

    specs = [tf.TensorSpec([None, *s.shape[1:]], s.dtype, name=s.name) for s in options.inputs]
    functions = {SIGNATURE_DEFAULT: (lambda *tensors: outputs(tensors), specs)}
    if options.image:
        def from_bytes(image_bytes):
            images = decode_images(image_bytes, options.image_size, options.inputs[0].shape[-1],
                                   max_image_pixels=options.max_image_pixels, pixel_scale=options.pixel_scale,
                                   dtype=options.model_dtype, input_name=BYTES_INPUT)
            return decode(_scores(model, [images], hierarchy))

        functions[SIGNATURE_BYTES] = (from_bytes, [tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
    return functions


def _scores(model, tensors, hierarchy):
    """[B, C] model scores; an empty batch gives [0, C] (Keras layers fail on 0 rows: one zero row is
    appended to an empty batch, run and dropped). The row count is padded by a concat, not chosen by a
    cond: measured 0.04 ms less per call at batch 1 in TensorFlow's C++ loader (the copy of a non-empty
    batch costs ~0.2% of a batch-256 call)."""
    import tensorflow as tf

    batch = tf.shape(tensors[0])[0]
    filler = tf.maximum(1 - batch, 0)
    tensors = [tf.concat([t, tf.zeros(tf.concat([[filler], tf.shape(t)[1:]], 0), t.dtype)], 0) for t in tensors]
    scores = model(tensors[0] if len(tensors) == 1 else _pack(model, tensors), training=False)
    return tf.ensure_shape(scores[:batch], [None, hierarchy.num_classes])


def _checked_input(tensor, spec):
    """Shape checked in the graph (signatures do not check it, nor does TF-Serving); NaN/inf refused."""
    import tensorflow as tf

    # one op (latency): the error reads "Shape of tensor <...>images<...> [2,5,6,3] is not compatible with
    # expected shape [?,6,6,3]" (the tensor is the signature's input, named after it)
    tensor = tf.ensure_shape(tensor, [None, *spec.shape[1:]], name=f"check_{spec.name}_shape")
    if tensor.dtype.is_floating:
        tensor = tf.debugging.check_numerics(tensor, f"input {spec.name!r} holds NaN or inf")
    return tensor


def _to_model_dtype(images, options):
    """uint8 pixels for a float model: cast and scaled by `pixel_scale`; else cast to the model's dtype."""
    import tensorflow as tf

    if images.dtype == tf.uint8 and options.model_dtype != "uint8":
        images = tf.cast(images, tf.float32) * options.pixel_scale
    return tf.cast(images, options.model_dtype)


def _archive(model, hierarchy, options):
    """A `keras.export.ExportArchive` tracking the model, with the signatures as endpoints.

    Under JAX the model is converted by the archive (jax2tf, its own `serving_scores`
    endpoint: the model's raw scores) and the signatures call that conversion.
    """
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    if keras.backend.backend() == "jax":
        specs = [tf.TensorSpec([None, *s.shape[1:]], options.model_dtype if options.image else s.dtype, name=s.name)
                 for s in options.inputs]
        converted = archive.track_and_add_endpoint(
            "serving_scores", model, [specs[0] if len(specs) == 1 else keras.tree.pack_sequence_as(model.input, specs)])
        model = _ConvertedModel(converted, model)
    for name, (fn, signature) in _signature_functions(model, hierarchy, options).items():
        function = tf.function(fn, input_signature=signature, autograph=False)
        function.get_concrete_function()
        archive.add_endpoint(name, function)
    return archive


class _ConvertedModel:
    """Calls a converted (TensorFlow) model function the way the signatures call a Keras model."""

    def __init__(self, function, model):
        self.function, self.input = function, model.input

    def __call__(self, inputs, training=False):
        return self.function(inputs)


# ------------------------------------------------------------------- versions
def _remove_stale_staging(export_base, now=None):
    now = time.time() if now is None else now
    for name in os.listdir(export_base):
        path = os.path.join(export_base, name)
        if name.startswith(_STAGING_PREFIX) and os.path.isdir(path):
            try:
                if now - os.path.getmtime(path) > STALE_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)
            except FileNotFoundError:  # removed by a concurrent export
                pass


def _check_version(version):
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or not 0 <= version <= MAX_VERSION:
        raise ValueError(f"version must be an int in [0, 2**63 - 1] (TF-Serving's int64 version folder), "
                         f"got {version!r}")
    return int(version)


def _next_version(export_base):
    versions = [v for v in existing_versions(export_base) if v <= MAX_VERSION]
    version = (versions[-1] + 1) if versions else 1
    if version > MAX_VERSION:
        raise ValueError(f"{export_base}: the next version would exceed 2**63 - 1 (TF-Serving's int64)")
    return version


def _refuse_existing(export_base, version):
    target = os.path.join(export_base, str(version))
    if os.path.exists(target):
        raise FileExistsError(f"version {version} already exists at {target}; refusing to overwrite it "
                              f"(existing versions: {existing_versions(export_base)}; pass version=None "
                              "for the next free one)")


def _claim(staging, export_base, version, write_metadata):
    """Renames `staging` to `export_base/<version>`; with `version=None`, the next free one (retried)."""
    explicit = version is not None
    for _ in range(1000):
        target_version = version if explicit else _next_version(export_base)
        write_metadata(target_version)
        target = os.path.join(export_base, str(target_version))
        if explicit:
            _refuse_existing(export_base, version)
        try:
            os.rename(staging, target)  # atomic; fails if another export claimed the folder first
            return target
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            if explicit:
                raise FileExistsError(f"version {version} appeared at {target} during the export; "
                                      "not overwritten") from None
    raise RuntimeError(f"{export_base}: could not claim a version after 1000 attempts")


def export_saved_model(model, hierarchy, export_base, version=None, decoder="argmax", backoff_threshold=None,
                       top_k=5, image_size=None, model_card=None, *, cost="path", from_logits=None,
                       input_dtype=None, pixel_scale=1.0 / 255.0, max_image_pixels=MAX_IMAGE_PIXELS):
    """Writes a TF-Serving SavedModel that returns hierarchy-consistent predictions.

    Every prediction's ancestor chain comes from the hierarchy (`level_<l>_ids`
    equals `hierarchy.ancestors(l)[class_ids]`), node scores are marginals
    (sums of class probabilities, so a parent never scores below its child),
    and with back-off the answer is the deepest node of the chain whose
    marginal reaches the threshold.

    Args:
        model: a Keras model (functional or Sequential, built on
            `keras.Input`s) mapping its inputs (images, float vectors,
            strings, several named inputs) to class scores [batch, C].
        hierarchy: `keras_hier.Hierarchy` with C classes (same order as the
            model's outputs).
        export_base: the model's base path (what `--model_base_path` points
            at); created if missing.
        version: integer version folder in [0, 2**63 - 1]; default: the next
            free one (1 for an empty base). An existing version raises
            `FileExistsError`.
        decoder: `"argmax"` or `"expected_cost"` (see `keras_hier.decoding`).
        backoff_threshold: optional float in (0, 1]; adds `prediction`,
            `prediction_level` (-1 = root) and `prediction_score`.
        top_k: number of ranked classes in `top_k_*` (None: no such outputs).
        image_size: image models: (height, width) that `serving_bytes`
            resizes decoded images to; default the model's input size.
        model_card: optional JSON-able dict merged into `model_card.json`
            (e.g. `{"training": {...}, "metrics": {...}}`).
        cost: tree cost of the `expected_cost` decoder (`"path"` or `"lca_height"`).
        from_logits: whether the model outputs logits. None (default): as
            Keras' losses do, probabilities when the model ends in a softmax
            (`Dense(C, activation="softmax")`, a `Softmax` layer), else
            logits; the served scores are then the model's probabilities.
        input_dtype: image models: dtype of the `images` input; `"uint8"`
            for a float model casts and multiplies by `pixel_scale` in the graph.
        pixel_scale: factor applied to uint8 pixels before a float model
            (default 1/255: inputs in [0, 1]).
        max_image_pixels: largest width x height `serving_bytes` decodes
            (read from the image header before decoding).

    Returns:
        The path of the written version folder (str).

    Raises:
        RuntimeError: under a Keras backend other than TensorFlow (the message
            says how to export such a model).

    Example:

    ```python
    path = keras_hier.export_saved_model(model, hierarchy, "/models/plankton",
                                         decoder="expected_cost", backoff_threshold=0.6)
    # tensorflow_model_server --model_base_path=/models/plankton --model_name=plankton ...
    ```
    """
    if version is not None:
        version = _check_version(version)
    options = _options(model, hierarchy, decoder, cost, backoff_threshold, top_k, from_logits, image_size,
                       input_dtype, pixel_scale, max_image_pixels)
    card_extra = _json_ready(model_card)
    export_base = os.fspath(export_base)
    os.makedirs(export_base, exist_ok=True)
    if version is not None:
        _refuse_existing(export_base, version)
    _remove_stale_staging(export_base)
    archive = _archive(model, hierarchy, options)
    staging = tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-", dir=export_base)  # servers skip it
    try:
        archive.write_out(staging, verbose=False)
        os.makedirs(os.path.join(staging, "assets"), exist_ok=True)
        files.atomic_write_json(os.path.join(staging, "assets", "hierarchy.json"), hierarchy.to_dict(), indent=1)

        def write_metadata(target_version):
            card = _model_card(model, hierarchy, options, target_version, card_extra)
            files.atomic_write_json(os.path.join(staging, "assets", "model_card.json"), card, indent=1)
            files.atomic_write_text(os.path.join(staging, "README.md"), readme(hierarchy, card))
            files.make_readable(staging)

        return _claim(staging, export_base, version, write_metadata)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ----------------------------------------------------------------- model card
def _json_ready(value):
    import json

    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"model_card must be a dict, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as error:
        raise TypeError(f"model_card must be JSON-serialisable: {error}") from None


def _signature_card(options):
    inputs = {s.name: {"dtype": s.dtype, "shape": [None, *s.shape[1:]]} for s in options.inputs}
    signatures = {SIGNATURE_DEFAULT: {"inputs": inputs}}
    if options.image:
        signatures[SIGNATURE_BYTES] = {"inputs": {BYTES_INPUT: {
            "dtype": "string", "shape": [None], "image_size": list(options.image_size),
            "max_image_pixels": options.max_image_pixels}}}
    return signatures


def _model_card(model, hierarchy, options, version, extra):
    return model_card(model.name, hierarchy, version=version, decoder=options.decoder, cost=options.cost,
                      backoff_threshold=options.backoff_threshold, top_k=options.top_k,
                      from_logits=options.from_logits, signatures=_signature_card(options),
                      pixel_scale=options.pixel_scale if options.image else None, extra=extra)
