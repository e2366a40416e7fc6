"""The deployment kit (keras_hier/serving_kit, wrapped by export/): REST JSON, smoke test, client, serve.sh.

No TF-Serving binary can be installed here, so a tiny HTTP server in this file
answers `:predict` and `/metadata` the way TF-Serving does, by running the REST
JSON through `rest.parse_request` / `format_response` on the export loaded by
TensorFlow's C++ loader (`smoke_test.CModel`).
"""

import base64
import contextlib
import http.server
import shutil
import sys
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
from keras_hier.serving_kit import MODELS_CONFIG, SERVE_SH, client, rest, smoke_test

ROOT = pathlib.Path(__file__).resolve().parent.parent
KIT = ROOT / "export"


PACKAGE = pathlib.Path(smoke_test.__file__).resolve().parent

HIERARCHY = Hierarchy.from_paths(["clothing/upper/shirt", "clothing/upper/coat", "clothing/lower/trouser",
                                  "footwear/sandal", "footwear/boot", "bag"])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Flatten()(inputs)
    outputs = keras.layers.Dense(6, kernel_initializer=keras.initializers.RandomNormal(stddev=2.0))(x)
    base = tmp_path_factory.mktemp("kit") / "fashion"
    model = keras.Model(inputs, outputs)
    export.export_saved_model(model, HIERARCHY, base, backoff_threshold=0.5, top_k=3)
    local = smoke_test.CModel(str(base))
    yield base, local, model
    local.close()


# ------------------------------------------------------------- JSON mapping
def test_parse_request_row_and_columnar_forms():
    specs = {"images": "float32"}
    pixels = np.arange(8, dtype=np.float32).reshape(2, 2, 2, 1)
    for form in ("instances", "inputs"):
        sig, inputs = rest.parse_request(rest.make_request(pixels, "images", form), specs)
        assert sig == "serving_default"
        np.testing.assert_array_equal(inputs["images"], pixels)
        assert inputs["images"].dtype == np.float32
    # unnamed forms: a list of values / a bare tensor for a single-input signature
    _, rows = rest.parse_request({"instances": pixels.tolist()}, specs)
    _, cols = rest.parse_request(json.dumps({"inputs": pixels.tolist()}), specs)
    np.testing.assert_array_equal(rows["images"], pixels)
    np.testing.assert_array_equal(cols["images"], pixels)


def test_parse_request_b64_strings():
    specs = {"image_bytes": "string"}
    blobs = [b"\x89PNG\x00\xff", b"second"]
    request = rest.make_request(blobs, "image_bytes", "instances", "serving_bytes")
    assert request["instances"][0]["image_bytes"] == {"b64": base64.b64encode(blobs[0]).decode()}
    sig, inputs = rest.parse_request(request, specs)
    assert sig == "serving_bytes" and list(inputs["image_bytes"]) == blobs
    # bare {"b64": ...} objects are values, not named inputs
    _, inputs = rest.parse_request({"instances": [{"b64": base64.b64encode(b"x").decode()}]}, specs)
    assert list(inputs["image_bytes"]) == [b"x"]
    _, inputs = rest.parse_request({"inputs": {"image_bytes": ["plain text"]}}, specs)
    assert list(inputs["image_bytes"]) == [b"plain text"]


def test_parse_request_rejects_malformed_bodies():
    specs = {"images": "float32"}
    with pytest.raises(ValueError, match="exactly one of"):
        rest.parse_request({"instances": [[1.0]], "inputs": [[1.0]]}, specs)
    with pytest.raises(ValueError, match=r"name the inputs \['images'\]"):
        rest.parse_request({"instances": [{"pixels": [1.0]}]}, specs)
    with pytest.raises(ValueError, match="cannot convert"):
        rest.parse_request({"inputs": [["a"]]}, specs)
    with pytest.raises(ValueError, match="b64"):
        rest.parse_request({"inputs": [{"hex": "00"}]}, {"image_bytes": "string"})


def test_format_response_row_columnar_and_bytes_suffix():
    outputs = {"classes": np.array([b"coat", b"bag"], dtype=object), "scores": np.array([0.5, 0.25], np.float32),
               "top_k_ids": np.array([[1, 0], [5, 3]], np.int32), "raw_bytes": np.array([b"\xff", b"a"], dtype=object)}
    row = rest.format_response(outputs, "instances")
    assert row["predictions"][0] == {"classes": "coat", "scores": 0.5, "top_k_ids": [1, 0],
                                     "raw_bytes": {"b64": base64.b64encode(b"\xff").decode()}}
    col = rest.format_response(outputs, "inputs")["outputs"]
    assert col["classes"] == ["coat", "bag"] and col["top_k_ids"] == [[1, 0], [5, 3]]
    assert json.loads(json.dumps(row)) == row


def test_png_encoder_round_trips_through_tensorflow():
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(tf.io.decode_png(smoke_test.png_bytes(pixels)).numpy(), pixels)
    gray = pixels[:, :, :1]
    np.testing.assert_array_equal(tf.io.decode_png(smoke_test.png_bytes(gray)).numpy(), gray)


# ------------------------------------------------------------- smoke checks
def test_local_smoke_run_passes_all_request_forms(served):
    base, model, _ = served
    hierarchy, card = smoke_test.load_assets(str(base))
    results = smoke_test.run(model.predict, hierarchy, card, count=5)
    assert set(results) == {(s, f) for s in ("serving_bytes", "serving_default") for f in ("instances", "inputs")}
    for columns in results.values():
        assert all(name in HIERARCHY.classes for name in columns["classes"])


def test_check_response_catches_inconsistent_answers(served):
    base, model, _ = served
    hierarchy, card = smoke_test.load_assets(str(base))
    encoded = smoke_test.random_examples(card, 4)["serving_bytes"]["image_bytes"]
    good = model.predict(rest.make_request(encoded, "image_bytes", "inputs", "serving_bytes"))
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
    _, model, _ = served
    answer = model.predict({"instances": np.zeros((2, 5, 6, 3)).tolist()})
    assert re.search(r"Shape of tensor \w*images\w* \[2,5,6,3\] is not compatible with expected shape \[\?,6,6,3\]", answer["error"]), answer
    answer = model.predict({"signature_name": "nope", "instances": [1.0]})
    assert "nope" in answer["error"]


# ------------------------------------------------- over HTTP (fake TF-Serving)
@contextlib.contextmanager
def fake_tf_serving(model, name):
    """Answers TF-Serving's REST predict / metadata URLs with `model` (a smoke_test.CModel)."""

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
                signatures = {key: {"method_name": "tensorflow/serving/predict"} for key in model.signature_names()}
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
    base, model, _ = served
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
        bad = rest.post_json(url + ":predict", {"instances": [[1.0]]})
        assert "expected shape" in bad["error"]


def test_client_rejects_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        client.image_files([str(tmp_path / "nothing.png")])
    with pytest.raises(ValueError, match="no images"):
        client.image_files([str(tmp_path)])


# --------------------------------------------------------- serve.sh, config
def _serve(args, env_extra, path="/usr/bin:/bin"):
    env = {**os.environ, "DRY_RUN": "1", "REST_PORT": "9501", "PATH": path, **env_extra}
    proc = subprocess.run(["bash", str(KIT / "serve.sh"), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=30)
    return proc.returncode, proc.stdout.replace("\\", ""), proc.stderr  # %q escapes commas


def test_serve_sh_builds_the_server_command(served, tmp_path):
    base, _, _ = served
    code, command, err = _serve([base, "fashion"], {})
    assert code == 0, err
    assert "tensorflow/serving" in command and "9501:8501" in command and "8500:8500" in command
    assert f"source={base},target=/models/fashion" in command and "MODEL_NAME=fashion" in command
    code, _, err = _serve([tmp_path], {})
    assert code == 1 and "no integer version folder" in err


def test_serve_sh_honours_model_config_in_both_branches(served, tmp_path):
    base, _, _ = served
    code, command, err = _serve([base, "fashion"], {"MODEL_CONFIG": str(KIT / "models.config")})
    assert code == 0, err
    assert f"source={os.path.realpath(MODELS_CONFIG)},target=/models/models.config" in command \
        or "target=/models/models.config" in command
    assert "--model_config_file=/models/models.config" in command and f"source={base}" in command
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "tensorflow_model_server").write_text("#!/bin/sh\n")
    (fake / "tensorflow_model_server").chmod(0o755)
    code, command, err = _serve([base, "fashion"], {"MODEL_CONFIG": str(KIT / "models.config")},
                                path=f"{fake}:/usr/bin:/bin")
    assert code == 0, err
    config = command.split("--model_config_file=")[1].split()[0]
    text = open(config).read()
    assert f'base_path: "{base}"' in text and "/models/fashion" not in text  # the folder given is served
    code, _, err = _serve([base, "fashion"], {"MODEL_CONFIG": str(tmp_path / "missing.config")})
    assert code == 1 and "not a file" in err


def test_serve_sh_refuses_a_comma_in_the_base_path(served, tmp_path):
    base, _, _ = served
    comma = tmp_path / "a,b"
    shutil.copytree(base, comma)
    code, command, err = _serve([comma, "fashion"], {})
    assert code == 1 and "comma" in err and command == ""


def test_models_config_is_wellformed():
    text = (KIT / "models.config").read_text()
    assert text == pathlib.Path(MODELS_CONFIG).read_text()  # export/ links the packaged file
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert body.count("{") == body.count("}")
    assert re.search(r'name:\s*"\w+"', body) and re.search(r'base_path:\s*"/models/\w+"', body)
    assert 'model_platform: "tensorflow"' in body


# --------------------------------------------------- labelled examples, wrappers
def _class_folders(tmp_path, model, count=24):
    """Images written as <class>/<i>.png, labelled with the model's own answer (or a constant wrong one)."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(count, 6, 6, 3), dtype=np.uint8)
    answers = model.predict(pixels / np.float32(255), verbose=0).argmax(axis=1)
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    for i, (image, c) in enumerate(zip(pixels, answers)):
        for folder, label in ((right, HIERARCHY.classes[c]), (wrong, HIERARCHY.classes[(c + 1) % 6])):
            (folder / label).mkdir(parents=True, exist_ok=True)
            (folder / label / f"{i}.png").write_bytes(smoke_test.png_bytes(image))
    return right, wrong


def test_smoke_test_fails_on_a_wrong_but_consistent_model(served, tmp_path, capsys):
    base, local, model = served
    right, wrong = _class_folders(tmp_path, model)
    assert smoke_test.main(["--local", str(base), "--examples", str(right), "--count", "2"]) == 0
    assert "examples" in capsys.readouterr().out
    with pytest.raises(smoke_test.SmokeTestError, match="accuracy 0.000 on 24 labelled examples is not above"):
        smoke_test.main(["--local", str(base), "--examples", str(wrong), "--count", "2"])
    with pytest.raises(smoke_test.SmokeTestError, match="not above"):
        smoke_test.check_accuracy(["a"] * 10, ["a"] * 9 + ["b"], 6)  # the majority answer is chance
    assert smoke_test.check_accuracy(["a", "b"] * 10, ["a", "b"] * 10, 6)[0] == 1.0


def test_console_scripts_and_export_wrappers(served, tmp_path):
    base, _, _ = served
    for script in ("keras-hier-smoke-test", "keras-hier-client"):
        module = {"keras-hier-smoke-test": "smoke_test", "keras-hier-client": "client"}[script]
        proc = subprocess.run([sys.executable, "-m", f"keras_hier.serving_kit.{module}", "--help"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and script in proc.stdout and "(default" in proc.stdout, proc.stderr
    proc = subprocess.run([sys.executable, str(KIT / "smoke_test.py"), "--local", str(base), "--count", "2"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0 and "smoke test passed" in proc.stdout, proc.stderr[-2000:]
    assert (KIT / "serve.sh").resolve() == pathlib.Path(SERVE_SH).resolve()
    for wrapper in ("client.py", "smoke_test.py"):
        assert len((KIT / wrapper).read_text().splitlines()) < 15  # thin: the code lives in the package
