"""Smoke test for a served keras_hier model: consistent answers, and better than chance.

Sends predict requests through TF-Serving's REST API (or, with `--local`,
through TensorFlow's C++ SavedModel loader, the one TF-Serving runs, with
no server) and checks every answer against the hierarchy stored next to the
model (`<version>/assets/hierarchy.json`, `assets/model_card.json`):
level names follow the predicted class's path, node scores never grow going
down the chain, back-off answers reach the threshold and are the deepest
that do. With `--examples`, it also sends real examples with known labels
and fails when the accuracy is not clearly above chance (a model that
answers one wrong class consistently fails here).

    keras-hier-smoke-test --url http://localhost:8501/v1/models/fashion --export-dir /models/fashion \\
        --examples photos/            # photos/<class name>/*.png
    keras-hier-smoke-test --local /models/fashion --examples texts.jsonl   # {"inputs": {...}, "label": "..."}

Needs the Python standard library and NumPy (plus TensorFlow for `--local`).
"""

import argparse
import json
import math
import os
import re
import struct
import sys
import urllib.request
import zlib

import numpy as np

from keras_hier.serving_kit.rest import (COLUMNAR, ROW, ServerError, columns_of, error_text, format_response,
                                         make_request, parse_request, post_json)

__all__ = ["SmokeTestError", "version_dir", "load_assets", "check_response", "check_accuracy", "png_bytes",
           "random_examples", "load_examples", "CModel", "LocalModel", "run", "main"]


class SmokeTestError(AssertionError):
    """An answer that is inconsistent with the hierarchy, or no better than chance (lists every problem)."""


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
    """(hierarchy dict, model card dict) of an exported version (or the latest under a base)."""
    directory = version_dir(path)
    with open(os.path.join(directory, "assets", "hierarchy.json"), encoding="utf-8") as f:
        hierarchy = json.load(f)
    with open(os.path.join(directory, "assets", "model_card.json"), encoding="utf-8") as f:
        card = json.load(f)
    return hierarchy, card


# ------------------------------------------------------------- consistency
def _check_chain(columns, i, c, path, card, tolerance):
    """Problems of example i's level ids / names / scores; returns (problems, real chain scores)."""
    problems, scores = [], []
    for level in range(len(card["levels"])):
        expected = path[level] if level < len(path) else path[-1]
        name, node = columns[f"level_{level}_names"][i], int(columns[f"level_{level}_ids"][i])
        table = card["levels"][level]["names"]
        if name != expected:
            problems.append(f"example {i}: level {level} name {name!r}, but class {c} has {expected!r} there "
                            f"(path {'/'.join(path)})")
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
    return problems, real


def _check_top_k(columns, i, c, classes, card, tolerance):
    top = [int(v) for v in columns["top_k_ids"][i]]
    top_scores = [float(v) for v in columns["top_k_scores"][i]]
    problems = []
    if top[0] != c or len(set(top)) != len(top):
        problems.append(f"example {i}: top-k ids {top} do not start with class {c} or repeat")
    if card.get("decoder") == "argmax" and any(b > a + tolerance for a, b in zip(top_scores, top_scores[1:])):
        problems.append(f"example {i}: argmax top-k scores are not sorted: {top_scores}")
    if [classes[t] for t in top] != list(columns["top_k_classes"][i]):
        problems.append(f"example {i}: top_k_classes do not name top_k_ids")
    return problems


def _check_backoff(columns, i, path, real, card, tolerance):
    threshold = card["backoff_threshold"]
    level = int(columns["prediction_level"][i])
    prediction, score = columns["prediction"][i], float(columns["prediction_score"][i])
    if not -1 <= level < len(path):
        return [f"example {i}: prediction level {level} outside -1..{len(path) - 1}"]
    if level == -1:
        if prediction != card.get("root_name", "<root>") or real[0] >= threshold:
            return [f"example {i}: backed off to the root ({prediction!r}) although level 0 scores "
                    f"{real[0]} >= {threshold}"]
        return []
    problems = []
    if prediction != columns[f"level_{level}_names"][i] or abs(score - real[level]) > tolerance:
        problems.append(f"example {i}: prediction {prediction!r} is not the level-{level} node")
    if score < threshold:
        problems.append(f"example {i}: prediction {prediction!r} scores {score} < threshold {threshold}")
    if level + 1 < len(path) and real[level + 1] >= threshold:
        problems.append(f"example {i}: level {level + 1} also reaches the threshold; not the deepest")
    return problems


def check_response(response, hierarchy, card, num_examples=None, tolerance=1e-6):
    """Checks a predict response against the hierarchy; returns its columns.

    Args:
        response: the REST answer (row or columnar form).
        hierarchy, card: `load_assets` of the export.
        num_examples: how many answers are expected (None: any).
        tolerance: slack on score comparisons.

    Raises:
        SmokeTestError listing every inconsistency found.
    """
    try:
        columns = columns_of(response)
    except ServerError as error:
        raise SmokeTestError(str(error)) from None
    missing = [name for name in card["outputs"] if name not in columns] if columns else []
    if missing:
        raise SmokeTestError(f"outputs missing from the response: {missing}")
    classes, paths = hierarchy["classes"], hierarchy["paths"]
    batch = len(columns.get("class_ids", []))
    problems = [f"{batch} answers for {num_examples} examples"] if num_examples not in (None, batch) else []
    for i in range(batch):
        c = int(columns["class_ids"][i])
        if not 0 <= c < len(classes):
            problems.append(f"example {i}: class id {c} outside 0..{len(classes) - 1}")
            continue
        if columns["classes"][i] != classes[c]:
            problems.append(f"example {i}: class {columns['classes'][i]!r} is not class {c} ({classes[c]!r})")
        chain_problems, real = _check_chain(columns, i, c, paths[c], card, tolerance)
        problems += chain_problems
        if card.get("top_k"):
            problems += _check_top_k(columns, i, c, classes, card, tolerance)
        if card.get("backoff_threshold") is not None:
            problems += _check_backoff(columns, i, paths[c], real, card, tolerance)
    if problems:
        raise SmokeTestError(f"{len(problems)} inconsistencies:\n" + "\n".join(problems[:20]))
    return columns


def check_accuracy(predicted, labels, num_classes, min_accuracy=None):
    """Accuracy of `predicted` class names against `labels`; raises if it is not above chance.

    Chance is the best constant answer (the share of the most frequent label,
    at least 1 / num_classes); the accuracy must exceed it by two binomial
    standard errors (or reach `min_accuracy` when given).

    Returns:
        (accuracy, the bound it had to pass).

    Example:

    >>> check_accuracy(["cat", "dog"] * 10, ["cat", "dog"] * 10, 10)
    (1.0, 0.723607)
    """
    if len(predicted) != len(labels) or not labels:
        raise SmokeTestError(f"{len(predicted)} answers for {len(labels)} labelled examples")
    accuracy = float(np.mean([p == t for p, t in zip(predicted, labels)]))
    if min_accuracy is None:
        chance = max(1.0 / num_classes, max(labels.count(t) for t in set(labels)) / len(labels))
        min_accuracy = min(1.0, chance + 2.0 * math.sqrt(chance * (1.0 - chance) / len(labels)))
        passed = accuracy > min_accuracy or accuracy == 1.0
    else:
        passed = accuracy >= min_accuracy
    if not passed:
        wrong = sorted({(t, p) for p, t in zip(predicted, labels) if p != t})[:5]
        raise SmokeTestError(f"accuracy {accuracy:.3f} on {len(labels)} labelled examples is not above "
                             f"{min_accuracy:.3f} (chance level); e.g. (true, answered) {wrong}")
    return accuracy, round(min_accuracy, 6)


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


def _random_input(spec, count, rng):
    shape = [count] + [d if d is not None else 8 for d in spec["shape"][1:]]
    if spec["dtype"] == "string":
        words = ["a", "small", "feline", "red", "flower", "large", "dog"]
        return [" ".join(rng.choice(words, size=4)) for _ in range(count)] if len(shape) == 1 else \
            np.array([" ".join(rng.choice(words, 4)) for _ in range(int(np.prod(shape)))]).reshape(shape).tolist()
    if spec["dtype"] == "uint8":
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    if spec["dtype"] in ("int32", "int64"):
        return rng.integers(0, 2, size=shape).astype(spec["dtype"])
    return rng.uniform(0, 1, size=shape).astype("float32" if spec["dtype"] == "bfloat16" else spec["dtype"])


def random_examples(card, count=4, seed=0):
    """`{signature: {input name: batch}}` of random inputs shaped from the model card.

    Image models: PNG bytes for `serving_bytes` and pixels for `serving_default`.
    """
    rng = np.random.default_rng(seed)
    signatures = card["signatures"]
    examples = {"serving_default": {name: _random_input(spec, count, rng)
                                    for name, spec in signatures["serving_default"]["inputs"].items()}}
    if "serving_bytes" in signatures:
        spec = signatures["serving_default"]["inputs"]["images"]
        size = signatures["serving_bytes"]["inputs"]["image_bytes"]["image_size"]
        pixels = rng.integers(0, 256, size=(count, *size, spec["shape"][-1]), dtype=np.uint8)
        examples["serving_bytes"] = {"image_bytes": [png_bytes(p) for p in pixels]}
        if spec["dtype"] != "uint8":
            images = examples["serving_default"]["images"]
            examples["serving_default"]["images"] = (np.round(images * 255) * card.get("pixel_scale", 1 / 255)
                                                     ).astype(images.dtype)
    return examples


def load_examples(path):
    """Labelled examples: `(signature, {input: batch}, labels)`.

    `path` is a folder of class folders (`<class name>/<image file>`, sent
    as encoded bytes to `serving_bytes`) or a JSON-lines file whose lines are
    `{"inputs": {name: value}, "label": "<class name>"}` (`serving_default`).
    """
    if os.path.isdir(path):
        blobs, labels = [], []
        for label in sorted(os.listdir(path)):
            folder = os.path.join(path, label)
            for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
                with open(os.path.join(folder, name), "rb") as f:
                    blobs.append(f.read())
                labels.append(label)
        return "serving_bytes", {"image_bytes": blobs}, labels
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    names = sorted(rows[0]["inputs"]) if rows else []
    return "serving_default", {n: [r["inputs"][n] for r in rows] for n in names}, [r["label"] for r in rows]


# ------------------------------------------------------------ local models
class _LocalBase:
    """Answers REST bodies like TF-Serving, from a signature runner (no server)."""

    def predict(self, body):
        """The REST answer TF-Serving would give to `body` (errors as `{"error": ...}`)."""
        signature = (body.get("signature_name") if isinstance(body, dict) else None) or "serving_default"
        if signature not in self.signature_names():
            return {"error": f"Serving signature name: \"{signature}\" not found in signature def"}
        try:
            _, inputs = parse_request(body, self.input_specs(signature))
            outputs = self.run(signature, inputs)
        except Exception as error:  # what the server would answer: the error's text
            return {"error": error_text(getattr(error, "message", None) or str(error))}
        return format_response(outputs, ROW if ROW in body else COLUMNAR)


class CModel(_LocalBase):
    """An export run by TensorFlow's C++ loader (`keras_hier.serving_kit.c_loader`), as TF-Serving loads it."""

    def __init__(self, path, loader=None):
        from keras_hier.serving_kit.c_loader import CLoader

        self.path = version_dir(path)
        self._own = loader is None
        self.loader = CLoader() if loader is None else loader
        self.loader.load(self.path)

    def signature_names(self):
        return set(self.loader.signatures(self.path))

    def input_specs(self, signature):
        return {name: spec[1] for name, spec in self.loader.signatures(self.path)[signature]["inputs"].items()}

    def run(self, signature, inputs):
        return self.loader.run(self.path, signature, inputs)

    def close(self):
        if self._own:
            self.loader.close()


class LocalModel(_LocalBase):
    """An export run by `tf.saved_model.load` in this process."""

    def __init__(self, path):
        import tensorflow as tf

        self._tf = tf
        self.path = version_dir(path)
        self.loaded = tf.saved_model.load(self.path)

    def signature_names(self):
        return set(self.loaded.signatures)

    def input_specs(self, signature):
        fn = self.loaded.signatures[signature]
        return {name: spec.dtype.name for name, spec in fn.structured_input_signature[1].items()}

    def run(self, signature, inputs):
        outputs = self.loaded.signatures[signature](**{k: self._tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in outputs.items()}


# ------------------------------------------------------------------ running
def run(predict, hierarchy, card, count=4, examples=None):
    """Sends random requests (every signature, both JSON forms) and labelled examples; checks them all.

    Args:
        predict: `body -> answer` (a server URL's `post_json`, or a local model's `predict`).
        hierarchy, card: `load_assets` of the export.
        count: random examples per request.
        examples: optional `load_examples(...)` result.

    Returns:
        `{(signature, form): columns}`, plus `("examples", accuracy)` when examples are given.
    """
    results = {}
    for signature, inputs in random_examples(card, count).items():
        for form in (ROW, COLUMNAR):
            answer = predict(make_request(inputs, form=form, signature_name=signature))
            results[(signature, form)] = check_response(answer, hierarchy, card, num_examples=count)
    if examples is not None:
        signature, inputs, labels = examples
        answer = predict(make_request(inputs, form=COLUMNAR, signature_name=signature))
        columns = check_response(answer, hierarchy, card, num_examples=len(labels))
        results[("examples", "accuracy")] = check_accuracy(list(columns["classes"]), labels,
                                                           len(hierarchy["classes"]))
    return results


def _remote(url, export_dir):
    """(predict, hierarchy, card) for a TF-Serving URL; checks the metadata lists the signatures."""
    hierarchy, card = load_assets(export_dir)
    url = url.rstrip("/")
    with urllib.request.urlopen(url + "/metadata", timeout=30) as answer:
        metadata = json.loads(answer.read().decode("utf-8"))
    signatures = metadata.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
    for name in card["signatures"]:
        if name not in signatures:
            raise SmokeTestError(f"the server's metadata lacks the signature {name!r} ({sorted(signatures)})")
    return (lambda body: post_json(url + ":predict", body)), hierarchy, card


def main(argv=None):
    """Console script `keras-hier-smoke-test`."""
    parser = argparse.ArgumentParser(prog="keras-hier-smoke-test", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="TF-Serving model URL, e.g. http://localhost:8501/v1/models/NAME")
    target.add_argument("--local", help="export (version folder or base path) run by TensorFlow's C++ loader, "
                                        "no server")
    parser.add_argument("--export-dir", help="with --url: the exported version or base path holding assets/")
    parser.add_argument("--examples", help="labelled examples: a folder of <class>/<image> files, or a JSON-lines "
                                           "file of {\"inputs\": {...}, \"label\": ...}; fails at chance accuracy")
    parser.add_argument("--count", type=int, default=4, help="random examples per request")
    args = parser.parse_args(argv)
    examples = load_examples(args.examples) if args.examples else None
    if args.local:
        model = CModel(args.local)
        try:
            hierarchy, card = load_assets(model.path)
            results = run(model.predict, hierarchy, card, args.count, examples)
        finally:
            model.close()
    else:
        if not args.export_dir:
            parser.error("--url needs --export-dir (for assets/hierarchy.json and assets/model_card.json)")
        predict, hierarchy, card = _remote(args.url, args.export_dir)
        results = run(predict, hierarchy, card, args.count, examples)
    for (signature, form), value in results.items():
        shown = ", ".join(str(c) for c in value["classes"]) if isinstance(value, dict) else \
            f"{value[0]:.3f} (chance bound {value[1]:.3f})"
        print(f"ok  {signature:16s} {form:9s} -> {shown}")
    print(f"smoke test passed: {len(results)} requests, answers consistent with the "
          f"{len(hierarchy['classes'])}-class hierarchy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
