"""TF-Serving's REST JSON, both ways: request bodies to signature inputs, outputs to answers.

`parse_request` and `format_response` reproduce how TF-Serving's REST layer
maps a predict body (`{"instances": ...}` row format or `{"inputs": ...}`
columnar format, binary strings as `{"b64": ...}`) to a signature's inputs,
and its outputs back to JSON. Standard library and NumPy only.
"""

import base64
import json
import urllib.error
import urllib.request

import numpy as np

__all__ = ["ROW", "COLUMNAR", "b64", "make_request", "parse_request", "format_response", "columns_of",
           "post_json", "error_text", "ServerError"]

ROW, COLUMNAR = "instances", "inputs"


class ServerError(AssertionError):
    """The server answered an error, or an answer without predictions."""


def b64(data):
    """The REST encoding of binary data: `{"b64": <base64 text>}`."""
    return {"b64": base64.b64encode(bytes(data)).decode("ascii")}


def _column(values):
    """JSON values of one input: bytes as `{"b64": ...}`, text as is, arrays as nested lists."""
    if isinstance(values, np.ndarray) and values.dtype == object:
        values = values.tolist()
    if isinstance(values, (list, tuple)) and values and isinstance(values[0], (bytes, bytearray, str)):
        return [b64(v) if isinstance(v, (bytes, bytearray)) else v for v in values]
    return np.asarray(values).tolist()


def make_request(values, input_name=None, form=ROW, signature_name=None):
    """A predict request body.

    Args:
        values: the batch of one input (a list of encoded images or other
            bytes, sent as `{"b64": ...}`; a list of texts; an array), or a
            dict `{input name: batch}` for several named inputs.
        input_name: the signature's input name when `values` is one batch.
        form: `"instances"` (row format, one object per example) or
            `"inputs"` (columnar format).
        signature_name: optional signature (default: `serving_default`).

    Example:

    >>> make_request(["a small feline"], "text")
    {'instances': [{'text': 'a small feline'}]}
    """
    named = values if isinstance(values, dict) else {input_name: values}
    columns = {name: _column(batch) for name, batch in named.items()}
    request = {"signature_name": signature_name} if signature_name else {}
    if form == ROW:
        count = len(next(iter(columns.values())))
        request[ROW] = [{name: column[i] for name, column in columns.items()} for i in range(count)]
    elif form == COLUMNAR:
        request[COLUMNAR] = columns
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
        raise ServerError(f"the server answered an error: {response['error']}")
    if "predictions" in response:
        rows = response["predictions"]
        return {name: [row[name] for row in rows] for name in rows[0]} if rows else {}
    if "outputs" in response:
        return dict(response["outputs"])
    raise ServerError(f"no 'predictions' or 'outputs' in the response (keys {sorted(response)})")


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


def error_text(text):
    """The informative lines of a TensorFlow error (no stack-trace boilerplate)."""
    noise = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "[[{{node")
    lines = [line.strip() for line in text.strip().splitlines()]
    kept = [line for line in lines if line and not line.startswith(noise)]
    return " ".join(kept) or text.strip()
