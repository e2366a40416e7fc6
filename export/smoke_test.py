#!/usr/bin/env python
"""Smoke test for a keras_hier model served by TF-Serving (REST API).

Sends a predict request (random PNG images through `serving_bytes`, and random
pixel arrays through `serving_default`, in both the row `{"instances": ...}`
and the columnar `{"inputs": ...}` forms) and checks that every answer is
consistent with the hierarchy stored next to the model
(`<version>/assets/hierarchy.json`, `<version>/assets/model_card.json`):
level names follow the predicted class's path, node scores never grow going
down the chain, back-off answers reach the threshold.

Usage:
    python smoke_test.py --url http://localhost:8501/v1/models/fashion --export-dir /models/fashion
    python smoke_test.py --local /models/fashion/1     # no server: TensorFlow maps the REST JSON itself

Needs only the Python standard library and NumPy (plus TensorFlow for
`--local`). The functions `parse_request` and `format_response` reproduce how
TF-Serving's REST layer maps JSON to a signature's inputs and its outputs back
to JSON; keras_hier's tests run requests through them.
"""

import argparse
import base64
import json
import os
import re
import struct
import sys
import urllib.request
import zlib

import numpy as np

ROW, COLUMNAR = "instances", "inputs"


class SmokeTestError(AssertionError):
    """An answer that is inconsistent with the hierarchy (lists every problem)."""


# ----------------------------------------------------------------- assets
def version_dir(path):
    """The latest integer version under a base path, or `path` itself if it is one."""
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    versions = [int(n) for n in os.listdir(path) if re.fullmatch(r"\d+", n)] if os.path.isdir(path) else []
    if not versions:
        raise FileNotFoundError(f"{path}: neither a SavedModel nor a base path with integer versions")
    return os.path.join(path, str(max(versions)))


def load_assets(path):
    """(hierarchy dict, model card dict) of an exported version (or latest under a base)."""
    directory = version_dir(path)
    with open(os.path.join(directory, "assets", "hierarchy.json"), encoding="utf-8") as f:
        hierarchy = json.load(f)
    with open(os.path.join(directory, "assets", "model_card.json"), encoding="utf-8") as f:
        card = json.load(f)
    return hierarchy, card


# ------------------------------------------------------ request / response
def b64(data):
    """The REST encoding of binary data: `{"b64": <base64 text>}`."""
    return {"b64": base64.b64encode(bytes(data)).decode("ascii")}


def make_request(values, input_name, form=ROW, signature_name=None):
    """A predict request body for one named input.

    Args:
        values: a list of encoded images (bytes; sent as `{"b64": ...}`) or an
            array of images [B, H, W, C].
        input_name: the signature's input name (`images` / `image_bytes`).
        form: `"instances"` (row format, one object per image) or `"inputs"`
            (columnar format).
        signature_name: optional signature (default: `serving_default`).
    """
    if isinstance(values, (list, tuple)) and values and isinstance(values[0], (bytes, bytearray)):
        column = [b64(v) for v in values]
    else:
        column = np.asarray(values).tolist()
    request = {"signature_name": signature_name} if signature_name else {}
    if form == ROW:
        request[ROW] = [{input_name: item} for item in column]
    elif form == COLUMNAR:
        request[COLUMNAR] = {input_name: column}
    else:
        raise ValueError(f"form must be {ROW!r} or {COLUMNAR!r}, got {form!r}")
    return request


def _decode_strings(value):
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise ValueError(f"a string value must be text or {{'b64': ...}}, got an object with keys {sorted(value)}")
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode_strings(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ValueError(f"expected a string or {{'b64': ...}} for a string input, got {type(value).__name__}")


def _to_array(value, dtype, name):
    if dtype == "string":
        decoded = _decode_strings(value)
        return np.array(decoded, dtype=object)
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise ValueError(f"input {name!r}: cannot convert the JSON value to {dtype}: {error}") from None


def _is_b64(item):
    return isinstance(item, dict) and set(item) == {"b64"}


def parse_request(request, input_specs):
    """Maps a REST predict body to a signature's inputs, as TF-Serving does.

    Row format: `instances` is a list with one entry per example; an entry is
    the value of the single input, or an object `{input_name: value}` (a
    `{"b64": ...}` object is a value). Columnar format: `inputs` is the
    value of the single input, or an object `{input_name: batch}`.

    Args:
        request: the JSON body (dict, or text).
        input_specs: `{input_name: dtype name}` of the signature (`"string"`
            for tf.string).

    Returns:
        `(signature_name, {input_name: numpy array})`; strings become bytes
        objects.
    """
    if isinstance(request, (str, bytes)):
        request = json.loads(request)
    if not isinstance(request, dict):
        raise ValueError("the request body must be a JSON object")
    signature = request.get("signature_name") or "serving_default"
    names = sorted(input_specs)
    if (ROW in request) == (COLUMNAR in request):
        raise ValueError(f"the request needs exactly one of {ROW!r} (row format) or {COLUMNAR!r} (columnar format)")
    if ROW in request:
        rows = request[ROW]
        if not isinstance(rows, list) or not rows:
            raise ValueError(f"{ROW!r} must be a non-empty list")
        named = all(isinstance(r, dict) and not _is_b64(r) for r in rows)
        if named:
            keys = set(rows[0])
            if any(set(r) != keys for r in rows) or keys != set(names):
                raise ValueError(f"every instance must name the inputs {names}; got {sorted(keys)}")
            columns = {name: [r[name] for r in rows] for name in names}
        else:
            if len(names) != 1:
                raise ValueError(f"the signature has inputs {names}: instances must be objects naming them")
            columns = {names[0]: rows}
    else:
        value = request[COLUMNAR]
        if isinstance(value, dict) and not _is_b64(value):
            if set(value) != set(names):
                raise ValueError(f"'inputs' must name the inputs {names}; got {sorted(value)}")
            columns = value
        else:
            if len(names) != 1:
                raise ValueError(f"the signature has inputs {names}: 'inputs' must be an object naming them")
            columns = {names[0]: value}
    return signature, {name: _to_array(columns[name], input_specs[name], name) for name in names}


def _jsonable(array):
    """Nested lists of plain JSON values; bytes become UTF-8 text."""
    return json.loads(json.dumps(np.asarray(array).tolist(), default=lambda v: v.decode("utf-8")))


def format_response(outputs, form=ROW):
    """Maps a signature's output dict to the REST response body.

    Row requests get `{"predictions": [{name: value, ...}, ...]}` (one object
    per example), columnar ones `{"outputs": {name: batch, ...}}`. Strings
    are UTF-8 text (names ending in `_bytes` would be `{"b64": ...}`).
    """
    lists = {}
    for name, value in outputs.items():
        value = np.asarray(value)
        if name.endswith("_bytes"):
            value = np.array([b64(v) for v in value.reshape(-1)], dtype=object).reshape(value.shape)
            lists[name] = value.tolist()
        else:
            lists[name] = _jsonable(value)
    if form == COLUMNAR:
        return {"outputs": lists}
    batch = {len(v) for v in lists.values()}
    if len(batch) != 1:
        raise ValueError("row format needs outputs with the same batch size")
    return {"predictions": [{name: lists[name][i] for name in lists} for i in range(batch.pop())]}


def columns_of(response):
    """`{output_name: list over examples}` from a row or columnar response."""
    if "error" in response:
        raise SmokeTestError(f"the server answered an error: {response['error']}")
    if "predictions" in response:
        rows = response["predictions"]
        return {name: [row[name] for row in rows] for name in rows[0]} if rows else {}
    if "outputs" in response:
        return dict(response["outputs"])
    raise SmokeTestError(f"no 'predictions' or 'outputs' in the response (keys {sorted(response)})")


# ------------------------------------------------------------- consistency
def check_response(response, hierarchy, card, num_examples=None, tolerance=1e-6):
    """Checks a predict response against the hierarchy; returns its columns.

    Raises:
        SmokeTestError listing every inconsistency found.
    """
    columns = columns_of(response)
    classes, paths = hierarchy["classes"], hierarchy["paths"]
    depth = len(card["levels"])
    problems = []
    missing = [name for name in card["outputs"] if name not in columns]
    if missing:
        raise SmokeTestError(f"outputs missing from the response: {missing}")
    batch = len(columns["class_ids"])
    if num_examples is not None and batch != num_examples:
        problems.append(f"{batch} answers for {num_examples} examples")
    threshold = card.get("backoff_threshold")
    for i in range(batch):
        c = int(columns["class_ids"][i])
        if not 0 <= c < len(classes):
            problems.append(f"example {i}: class id {c} outside 0..{len(classes) - 1}")
            continue
        path = paths[c]
        # A class is a leaf child of an internal node with its name (see Hierarchy).
        if columns["classes"][i] != classes[c]:
            problems.append(f"example {i}: class {columns['classes'][i]!r} is not class {c} ({classes[c]!r})")
        scores = []
        for level in range(depth):
            expected = path[level] if level < len(path) else path[-1]
            name = columns[f"level_{level}_names"][i]
            node = int(columns[f"level_{level}_ids"][i])
            table = card["levels"][level]["names"]
            if name != expected:
                problems.append(f"example {i}: level {level} name {name!r}, but class {classes[c]!r} "
                                f"has {expected!r} there (path {'/'.join(path)})")
            if not 0 <= node < len(table) or table[node] != name:
                problems.append(f"example {i}: level {level} id {node} does not name {name!r}")
            scores.append(float(columns[f"level_{level}_scores"][i]))
        real = scores[:len(path)]
        if any(child > parent + tolerance for parent, child in zip(real, real[1:])):
            problems.append(f"example {i}: node scores grow going down the chain: {real}")
        if abs(float(columns["scores"][i]) - real[-1]) > tolerance:
            problems.append(f"example {i}: score {columns['scores'][i]} is not the class's level score {real[-1]}")
        if not -tolerance <= real[0] <= 1 + tolerance:
            problems.append(f"example {i}: top-level score {real[0]} is not a probability")
        if card.get("top_k"):
            top = [int(v) for v in columns["top_k_ids"][i]]
            top_scores = [float(v) for v in columns["top_k_scores"][i]]
            if top[0] != c or len(set(top)) != len(top):
                problems.append(f"example {i}: top-k ids {top} do not start with class {c} or repeat")
            if card.get("decoder") == "argmax" and any(b > a + tolerance for a, b in zip(top_scores, top_scores[1:])):
                problems.append(f"example {i}: argmax top-k scores are not sorted: {top_scores}")
            if [classes[t] for t in top] != list(columns["top_k_classes"][i]):
                problems.append(f"example {i}: top_k_classes do not name top_k_ids")
        if threshold is not None:
            level = int(columns["prediction_level"][i])
            prediction, score = columns["prediction"][i], float(columns["prediction_score"][i])
            if not -1 <= level < len(path):
                problems.append(f"example {i}: prediction level {level} outside -1..{len(path) - 1}")
            elif level == -1:
                if prediction != card.get("root_name", "<root>") or real[0] >= threshold:
                    problems.append(f"example {i}: backed off to the root ({prediction!r}) although level 0 "
                                    f"scores {real[0]} >= {threshold}")
            else:
                if prediction != columns[f"level_{level}_names"][i] or abs(score - real[level]) > tolerance:
                    problems.append(f"example {i}: prediction {prediction!r} is not the level-{level} node")
                if score < threshold:
                    problems.append(f"example {i}: prediction {prediction!r} scores {score} < threshold {threshold}")
                if level + 1 < len(path) and real[level + 1] >= threshold:
                    problems.append(f"example {i}: level {level + 1} also reaches the threshold; not the deepest")
    if problems:
        raise SmokeTestError(f"{len(problems)} inconsistencies:\n" + "\n".join(problems[:20]))
    return columns


# --------------------------------------------------------------- test data
def png_bytes(pixels):
    """Encodes a uint8 image [H, W, C] (C = 1 or 3) as PNG, standard library only."""
    pixels = np.asarray(pixels, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height, width, channels = pixels.shape
    color = {1: 0, 3: 2}[channels]
    raw = b"".join(b"\x00" + pixels[row].tobytes() for row in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def random_examples(card, count=4, seed=0):
    """(list of PNG bytes, pixel array for `serving_default`) shaped from the model card."""
    rng = np.random.default_rng(seed)
    image_size = card["signatures"]["serving_bytes"]["inputs"]["image_bytes"]["image_size"]
    spec = card["signatures"]["serving_default"]["inputs"]["images"]
    channels = spec["shape"][-1]
    height, width = [s if s is not None else d for s, d in zip(spec["shape"][1:3], image_size)]
    pixels = rng.integers(0, 256, size=(count, height, width, channels), dtype=np.uint8)
    encoded = [png_bytes(p) for p in rng.integers(0, 256, size=(count, *image_size, channels), dtype=np.uint8)]
    if spec["dtype"] != "uint8":
        pixels = (pixels * card.get("pixel_scale", 1 / 255)).astype(spec["dtype"])
    return encoded, pixels


# ------------------------------------------------------------------ running
def post_json(url, body, timeout=60):
    """POSTs JSON and returns the decoded answer (TF-Serving errors included)."""
    data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read().decode("utf-8"))
    except urllib.error.HTTPError as error:
        text = error.read().decode("utf-8", "replace")
        try:
            return json.loads(text)
        except ValueError:
            return {"error": f"HTTP {error.code}: {text[:500]}"}


class LocalModel:
    """Runs REST bodies through a SavedModel's signatures with TensorFlow (no server)."""

    def __init__(self, path):
        import tensorflow as tf

        self._tf = tf
        self.path = version_dir(path)
        self.loaded = tf.saved_model.load(self.path)

    def input_specs(self, signature):
        fn = self.loaded.signatures[signature]
        return {name: spec.dtype.name for name, spec in fn.structured_input_signature[1].items()}

    def predict(self, body):
        """The REST answer TF-Serving would give to `body` (errors as `{"error": ...}`)."""
        signature = (body.get("signature_name") if isinstance(body, dict) else None) or "serving_default"
        if signature not in self.loaded.signatures:
            return {"error": f"Serving signature name: \"{signature}\" not found in signature def"}
        try:
            _, inputs = parse_request(body, self.input_specs(signature))
            outputs = self.loaded.signatures[signature](**{k: self._tf.constant(v) for k, v in inputs.items()})
        except (ValueError, TypeError, self._tf.errors.OpError) as error:
            return {"error": _error_text(getattr(error, "message", None) or str(error))}
        form = ROW if ROW in body else COLUMNAR
        return format_response({k: v.numpy() for k, v in outputs.items()}, form)


def _error_text(text):
    """The informative lines of a TensorFlow error (no stack-trace boilerplate)."""
    noise = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "[[{{node")
    lines = [line.strip() for line in text.strip().splitlines()]
    kept = [line for line in lines if line and not line.startswith(noise)]
    return " ".join(kept) or text.strip()


def run(predict, hierarchy, card, count=4):
    """Sends the four request kinds through `predict(body) -> answer` and checks them."""
    encoded, pixels = random_examples(card, count)
    results = {}
    for signature, name, values in (("serving_bytes", "image_bytes", encoded), ("serving_default", "images", pixels)):
        for form in (ROW, COLUMNAR):
            answer = predict(make_request(values, name, form, signature))
            columns = check_response(answer, hierarchy, card, num_examples=count)
            results[(signature, form)] = columns
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="model URL, e.g. http://localhost:8501/v1/models/NAME")
    target.add_argument("--local", help="SavedModel (version dir or base path) to run without a server")
    parser.add_argument("--export-dir", help="exported version or base path holding assets/ (with --url)")
    parser.add_argument("--count", type=int, default=4, help="images per request")
    args = parser.parse_args(argv)
    if args.local:
        model = LocalModel(args.local)
        hierarchy, card = load_assets(model.path)
        predict = model.predict
    else:
        if not args.export_dir:
            parser.error("--url needs --export-dir (for assets/hierarchy.json and assets/model_card.json)")
        hierarchy, card = load_assets(args.export_dir)
        url = args.url.rstrip("/")
        with urllib.request.urlopen(url + "/metadata", timeout=30) as answer:
            metadata = json.loads(answer.read().decode("utf-8"))
        signatures = metadata.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
        for name in ("serving_default", "serving_bytes"):
            if name not in signatures:
                raise SmokeTestError(f"the server's metadata lacks the signature {name!r} ({sorted(signatures)})")

        def predict(body):
            return post_json(url + ":predict", body)
    results = run(predict, hierarchy, card, args.count)
    for (signature, form), columns in results.items():
        shown = ", ".join(f"{c}" for c in columns["classes"])
        print(f"ok  {signature:16s} {form:9s} -> {shown}")
    print(f"smoke test passed: {len(results)} requests, {args.count} images each, answers consistent "
          f"with the {len(hierarchy['classes'])}-class hierarchy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
