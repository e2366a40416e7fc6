"""The export/ deployment kit: REST JSON mapping, smoke test, client, serve.sh, models.config.

No TF-Serving binary can be installed here, so a tiny HTTP server in this file
answers `:predict` and `/metadata` the way TF-Serving does, by running the REST
JSON through `smoke_test.parse_request` / `format_response` on the loaded
SavedModel.
"""

import base64
import contextlib
import http.server
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_hier import export
from keras_hier.hierarchy import Hierarchy

ROOT = pathlib.Path(__file__).resolve().parent.parent
KIT = ROOT / "export"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, KIT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


smoke_test = _load("smoke_test")
client = _load("client")

HIERARCHY = Hierarchy.from_paths(["clothing/upper/shirt", "clothing/upper/coat", "clothing/lower/trouser",
                                  "footwear/sandal", "footwear/boot", "bag"])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Flatten()(inputs)
    outputs = keras.layers.Dense(6, kernel_initializer=keras.initializers.RandomNormal(stddev=2.0))(x)
    base = tmp_path_factory.mktemp("kit") / "fashion"
    export.export_saved_model(keras.Model(inputs, outputs), HIERARCHY, base, backoff_threshold=0.5, top_k=3)
    return base, smoke_test.LocalModel(str(base))


# ------------------------------------------------------------- JSON mapping
def test_parse_request_row_and_columnar_forms():
    specs = {"images": "float32"}
    pixels = np.arange(8, dtype=np.float32).reshape(2, 2, 2, 1)
    for form in ("instances", "inputs"):
        sig, inputs = smoke_test.parse_request(smoke_test.make_request(pixels, "images", form), specs)
        assert sig == "serving_default"
        np.testing.assert_array_equal(inputs["images"], pixels)
        assert inputs["images"].dtype == np.float32
    # unnamed forms: a list of values / a bare tensor for a single-input signature
    _, rows = smoke_test.parse_request({"instances": pixels.tolist()}, specs)
    _, cols = smoke_test.parse_request(json.dumps({"inputs": pixels.tolist()}), specs)
    np.testing.assert_array_equal(rows["images"], pixels)
    np.testing.assert_array_equal(cols["images"], pixels)


def test_parse_request_b64_strings():
    specs = {"image_bytes": "string"}
    blobs = [b"\x89PNG\x00\xff", b"second"]
    request = smoke_test.make_request(blobs, "image_bytes", "instances", "serving_bytes")
    assert request["instances"][0]["image_bytes"] == {"b64": base64.b64encode(blobs[0]).decode()}
    sig, inputs = smoke_test.parse_request(request, specs)
    assert sig == "serving_bytes" and list(inputs["image_bytes"]) == blobs
    # bare {"b64": ...} objects are values, not named inputs
    _, inputs = smoke_test.parse_request({"instances": [{"b64": base64.b64encode(b"x").decode()}]}, specs)
    assert list(inputs["image_bytes"]) == [b"x"]
    _, inputs = smoke_test.parse_request({"inputs": {"image_bytes": ["plain text"]}}, specs)
    assert list(inputs["image_bytes"]) == [b"plain text"]


def test_parse_request_rejects_malformed_bodies():
    specs = {"images": "float32"}
    with pytest.raises(ValueError, match="exactly one of"):
        smoke_test.parse_request({"instances": [[1.0]], "inputs": [[1.0]]}, specs)
    with pytest.raises(ValueError, match=r"name the inputs \['images'\]"):
        smoke_test.parse_request({"instances": [{"pixels": [1.0]}]}, specs)
    with pytest.raises(ValueError, match="cannot convert"):
        smoke_test.parse_request({"inputs": [["a"]]}, specs)
    with pytest.raises(ValueError, match="b64"):
        smoke_test.parse_request({"inputs": [{"hex": "00"}]}, {"image_bytes": "string"})


def test_format_response_row_columnar_and_bytes_suffix():
    outputs = {"classes": np.array([b"coat", b"bag"], dtype=object), "scores": np.array([0.5, 0.25], np.float32),
               "top_k_ids": np.array([[1, 0], [5, 3]], np.int32), "raw_bytes": np.array([b"\xff", b"a"], dtype=object)}
    row = smoke_test.format_response(outputs, "instances")
    assert row["predictions"][0] == {"classes": "coat", "scores": 0.5, "top_k_ids": [1, 0],
                                     "raw_bytes": {"b64": base64.b64encode(b"\xff").decode()}}
    col = smoke_test.format_response(outputs, "inputs")["outputs"]
    assert col["classes"] == ["coat", "bag"] and col["top_k_ids"] == [[1, 0], [5, 3]]
    assert json.loads(json.dumps(row)) == row


def test_png_encoder_round_trips_through_tensorflow():
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(tf.io.decode_png(smoke_test.png_bytes(pixels)).numpy(), pixels)
    gray = pixels[:, :, :1]
    np.testing.assert_array_equal(tf.io.decode_png(smoke_test.png_bytes(gray)).numpy(), gray)


# ------------------------------------------------------------- smoke checks
def test_local_smoke_run_passes_all_request_forms(served):
    base, model = served
    hierarchy, card = smoke_test.load_assets(str(base))
    results = smoke_test.run(model.predict, hierarchy, card, count=5)
    assert set(results) == {(s, f) for s in ("serving_bytes", "serving_default") for f in ("instances", "inputs")}
    for columns in results.values():
        assert all(name in HIERARCHY.classes for name in columns["classes"])


def test_check_response_catches_inconsistent_answers(served):
    base, model = served
    hierarchy, card = smoke_test.load_assets(str(base))
    encoded, _ = smoke_test.random_examples(card, 4)
    good = model.predict(smoke_test.make_request(encoded, "image_bytes", "inputs", "serving_bytes"))
    smoke_test.check_response(good, hierarchy, card, 4)

    def broken(edit):
        answer = json.loads(json.dumps(good))
        edit(answer["outputs"])
        return answer

    def wrong_parent(out):
        out["level_0_names"][0] = "footwear" if out["level_0_names"][0] != "footwear" else "clothing"

    def growing_scores(out):
        out["level_0_scores"][1] = out["level_1_scores"][1] / 2

    def low_backoff(out):
        out["prediction"][2], out["prediction_level"][2] = out["level_0_names"][2], 0
        out["prediction_score"][2] = out["level_0_scores"][2] = 0.1

    for edit, message in ((wrong_parent, "level 0 name"), (growing_scores, "grow"), (low_backoff, "threshold")):
        with pytest.raises(smoke_test.SmokeTestError, match=message):
            smoke_test.check_response(broken(edit), hierarchy, card, 4)
    with pytest.raises(smoke_test.SmokeTestError, match="4 answers for 5 examples"):
        smoke_test.check_response(good, hierarchy, card, 5)
    with pytest.raises(smoke_test.SmokeTestError, match="server answered an error"):
        smoke_test.check_response({"error": "boom"}, hierarchy, card)


def test_local_model_reports_bad_requests_as_errors(served):
    _, model = served
    answer = model.predict({"instances": np.zeros((2, 5, 6, 3)).tolist()})
    assert "Shape of tensor images [2,5,6,3] is not compatible with expected shape [?,6,6,3]" in answer["error"]
    answer = model.predict({"signature_name": "nope", "instances": [1.0]})
    assert "nope" in answer["error"]


# ------------------------------------------------- over HTTP (fake TF-Serving)
@contextlib.contextmanager
def fake_tf_serving(model, name):
    """Answers TF-Serving's REST predict / metadata URLs with `model` (a LocalModel)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == f"/v1/models/{name}/metadata":
                signatures = {key: {"method_name": "tensorflow/serving/predict"} for key in model.loaded.signatures}
                self._send(200, {"metadata": {"signature_def": {"signature_def": signatures}}})
            else:
                self._send(404, {"error": f"Servable not found: {self.path}"})

        def do_POST(self):
            if self.path != f"/v1/models/{name}:predict":
                return self._send(404, {"error": f"Servable not found: {self.path}"})
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            answer = model.predict(body)
            self._send(400 if "error" in answer else 200, answer)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/models/{name}"
    finally:
        server.shutdown()
        server.server_close()


def test_smoke_test_and_client_over_http(served, tmp_path, capsys):
    base, model = served
    with fake_tf_serving(model, "fashion") as url:
        assert smoke_test.main(["--url", url, "--export-dir", str(base), "--count", "3"]) == 0
        assert "smoke test passed: 4 requests" in capsys.readouterr().out
        folder = tmp_path / "photos"
        folder.mkdir()
        rng = np.random.default_rng(5)
        for i in range(3):
            (folder / f"img{i}.png").write_bytes(smoke_test.png_bytes(rng.integers(0, 256, (9, 9, 3), np.uint8)))
        (folder / "notes.txt").write_text("not an image")
        assert client.main(["--url", url, str(folder), "--batch", "2"]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 3 and all("=>" in line and " > " in line for line in lines)
        assert client.main(["--url", url, str(folder / "img0.png"), "--json"]) == 0
        record = json.loads(capsys.readouterr().out)
        path = HIERARCHY.paths[HIERARCHY.class_index(record["classes"])]
        assert record["level_0_names"] == path[0]
        bad = smoke_test.post_json(url + ":predict", {"instances": [[1.0]]})
        assert "expected shape" in bad["error"]


def test_client_rejects_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        client.image_files([str(tmp_path / "nothing.png")])
    with pytest.raises(ValueError, match="no images"):
        client.image_files([str(tmp_path)])


# --------------------------------------------------------- serve.sh, config
def test_serve_sh_builds_the_server_command(served, tmp_path):
    base, _ = served
    env = {**os.environ, "DRY_RUN": "1", "REST_PORT": "9501", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["bash", str(KIT / "serve.sh"), str(base), "fashion"], capture_output=True, text=True,
                          env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    command = proc.stdout.replace("\\", "")  # %q escapes commas
    assert "tensorflow/serving" in command and "9501:8501" in command and "8500:8500" in command
    assert f"source={base},target=/models/fashion" in command and "MODEL_NAME=fashion" in command
    proc = subprocess.run(["bash", str(KIT / "serve.sh"), str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=30)
    assert proc.returncode == 1 and "no integer version folder" in proc.stderr


def test_models_config_is_wellformed():
    text = (KIT / "models.config").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert body.count("{") == body.count("}")
    assert re.search(r'name:\s*"\w+"', body) and re.search(r'base_path:\s*"/models/\w+"', body)
    assert 'model_platform: "tensorflow"' in body
