"""What an export says about itself: output names, `model_card.json` and the version's README.md."""

import datetime
import re

from keras_hier import decoding

__all__ = ["SIGNATURE_DEFAULT", "SIGNATURE_BYTES", "output_names", "model_card", "readme"]

SIGNATURE_DEFAULT = "serving_default"
SIGNATURE_BYTES = "serving_bytes"
BYTES_INPUT = "image_bytes"


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

    Example:

    >>> from keras_hier import Hierarchy
    >>> output_names(Hierarchy.from_paths(["a/x", "b/y"]), top_k=None)
    ['classes', 'class_ids', 'scores', 'level_0_ids', 'level_0_names', 'level_0_scores', 'level_1_ids', \
'level_1_names', 'level_1_scores']
    """
    names = ["classes", "class_ids", "scores"]
    if top_k:
        names += ["top_k_ids", "top_k_scores", "top_k_classes"]
    for level in range(hierarchy.depth):
        names += [f"level_{level}_ids", f"level_{level}_names", f"level_{level}_scores"]
    if backoff_threshold is not None:
        names += ["prediction", "prediction_level", "prediction_score"]
    return names


def model_card(model_name, hierarchy, *, version, decoder, cost, backoff_threshold, top_k, from_logits, signatures,
               pixel_scale, extra):
    """The export's `assets/model_card.json` (a JSON-able dict; `extra` is merged last).

    Example:

    >>> from keras_hier import Hierarchy
    >>> card = model_card("m", Hierarchy.from_paths(["a/x", "b/y"]), version=1, decoder="argmax", cost="path",
    ...                   backoff_threshold=None, top_k=None, from_logits=True, signatures={}, pixel_scale=None,
    ...                   extra={})
    >>> card["classes"], card["outputs"][:3]
    (['x', 'y'], ['classes', 'class_ids', 'scores'])
    """
    import keras_hier

    levels = [{"level": level, "num_nodes": hierarchy.num_nodes(level), "names": hierarchy.level_names(level)}
              for level in range(hierarchy.depth)]
    card = {
        "format": "keras_hier.model_card/1",
        "model_name": model_name,
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
        "signatures": signatures,
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


def _output_doc(name, hierarchy):
    match = re.fullmatch(r"level_(\d+)_(ids|names|scores)", name)
    if not match:
        return _OUTPUT_DOCS[name]
    level, kind = int(match.group(1)), match.group(2)
    what = {"ids": "int32 [B]: node id", "names": "string [B]: node name",
            "scores": "float32 [B]: probability (sum over the classes below)"}[kind]
    return f"{what} of the predicted class's ancestor at level {level} ({hierarchy.num_nodes(level)} nodes)"


def readme(hierarchy, card):
    """The README.md of an exported version: its signatures and outputs, in words."""
    extras = (f" (cost `{card['cost']}`)" if card["cost"] else "") + (
        f", back-off threshold {card['backoff_threshold']}" if card["backoff_threshold"] is not None else "")
    lines = [f"# {card['model_name']}, version {card['version']}", "",
             f"Exported by keras_hier {card['keras_hier_version']} on {card['created']}. "
             f"{hierarchy.num_classes} classes, {hierarchy.depth} levels; decoder `{card['decoder']}`{extras}; "
             f"model outputs {'logits' if card['from_logits'] else 'probabilities'}.", "", "## Signatures", ""]
    for signature, spec in card["signatures"].items():
        inputs = ", ".join(f"`{name}` {s['dtype']} {s['shape']}" for name, s in spec["inputs"].items())
        lines.append(f"- `{signature}`: {inputs}")
        if signature == SIGNATURE_BYTES:
            bytes_spec = spec["inputs"][BYTES_INPUT]
            lines[-1] += (f": encoded JPEG/PNG/BMP/GIF (REST: `{{\"b64\": ...}}`), at most "
                          f"{bytes_spec['max_image_pixels']} pixels, resized to {bytes_spec['image_size']} "
                          f"and scaled by {card['pixel_scale']:.6g}")
    lines += ["", "## Outputs (every signature)", ""]
    lines += [f"- `{name}`: {_output_doc(name, hierarchy)}" for name in card["outputs"]]
    lines += ["", "Node names per level and the class list are in `assets/model_card.json`; the hierarchy "
              "(`keras_hier.Hierarchy.from_dict`) in `assets/hierarchy.json`.", ""]
    return "\n".join(lines)
