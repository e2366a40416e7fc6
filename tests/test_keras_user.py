"""A new Keras user, from an INSTALLED WHEEL in a fresh venv outside the repository, on every backend.

The user's script (`USER_SCRIPT`) runs the README's ten-line example as
written, saves the model, loads it in a fresh process after only
`import keras, keras_hier`, trains and evaluates a plain `keras.Sequential`
model with keras_hier's loss and metrics, and checks the export. It runs
under TensorFlow, JAX and PyTorch.

The venv is built cheaply: the wheel is built from a copy of the sources
(nothing is written into the checkout), `python -m venv --without-pip`, a
`.pth` file pointing at the test interpreter's site-packages (TensorFlow,
Keras, JAX, torch, ...) but not at the editable checkout (`.pth` files in
that folder are not processed, so the editable finder stays off), then
`pip --python <venv> install --no-deps --no-index` the wheel. The script
runs from a temporary folder and asserts that `keras_hier` comes from the
venv. The three backends run concurrently (about a minute of wall time on
two idle cores).

Parts owned elsewhere (`keras_hier.evaluate`, `export_saved_model`) are
recorded, not fatal, in the script; their tests xfail with the error when
they fail on a backend, so the report names what does not work where.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ["tensorflow", "jax", "torch"]

USER_SCRIPT = textwrap.dedent('''
    import json, os, subprocess, sys, traceback
    status = {}
    readme = json.loads(open("readme.json").read())

    def part_of(line):
        if "evaluate(" in line:
            return "readme_evaluate"
        if "export_saved_model(" in line:
            return "readme_export"
        return "readme"

    namespace = {}
    for line in readme:  # the README block, one statement per line
        part = part_of(line)
        try:
            exec(line, namespace)
            status.setdefault(part, "ok")
        except Exception:
            status[part] = traceback.format_exc(limit=-3)[-1500:]
            if part == "readme":
                raise
    keras, np, keras_hier, SimLoss = (namespace[k] for k in ("keras", "np", "keras_hier", "SimLoss"))
    h, x, y, model = (namespace[k] for k in ("h", "x", "y", "model"))
    status["origin"] = keras_hier.__file__
    status["backend"] = keras.backend.backend()

    # save; load in a fresh process after only `import keras, keras_hier`
    model.save("model.keras")
    np.save("x8.npy", x[:8])
    want = np.asarray(model.predict(x[:8], verbose=0))
    load = ("import numpy as np, keras, keras_hier; m = keras.models.load_model('model.keras'); "
            "np.save('got.npy', np.asarray(m.predict(np.load('x8.npy'), verbose=0))); "
            "print(type(m).__name__, type(m.loss).__name__)")
    done = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    status["loaded"] = done.stdout.split()[-2:]
    status["load_max_diff"] = float(np.max(np.abs(np.load("got.npy") - want)))

    # a plain Sequential model with keras_hier's loss and metrics; softmax output
    seq = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(),
                            keras.layers.Dense(h.num_classes, activation="softmax")])
    seq.compile(optimizer="adam", loss=SimLoss.from_hierarchy(h), metrics=[
        "accuracy", keras_hier.MistakeSeverity(h), keras_hier.LevelAccuracy(h, 0, marginal=True)])
    history = seq.fit(x, y, epochs=1, batch_size=64, verbose=0)
    status["sequential_fit"] = sorted(history.history)
    seq.save("sequential.keras")
    keras.models.load_model("sequential.keras")
    try:
        out = keras_hier.evaluate(seq, (x, y), h)
        status["evaluate_sequential"] = "ok" if "classification" in out else f"keys {sorted(out)}"
    except Exception:
        status["evaluate_sequential"] = traceback.format_exc(limit=-3)[-1500:]
    if status.get("readme_export") == "ok":
        status["export_versions"] = sorted(os.listdir("serving"))
    print("STATUS" + json.dumps(status))
''')


def readme_lines(export_dir):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    code = re.search(r"```python\n(.*?)```", text.split("## Ten lines", 1)[1], flags=re.S).group(1)
    code = code.replace("/tmp/serving/cifar100", export_dir)
    return [line for line in code.splitlines() if line.strip()]


def build_user_venv(folder):
    """A venv with the keras_hier wheel installed; dependencies seen through a .pth (see module doc)."""
    source = folder / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if os.path.exists(os.path.join(ROOT, name)):
            shutil.copy(os.path.join(ROOT, name), source / name)
    shutil.copytree(os.path.join(ROOT, "keras_hier"), source / "keras_hier",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(folder / "dist"), str(source)],
                   check=True, capture_output=True, cwd=str(folder))
    wheel = next((folder / "dist").glob("keras_hier-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder / "venv")], check=True)
    python = folder / "venv" / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(purelib, "_test_dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    return python, purelib


@pytest.fixture(scope="module")
def user_venv(tmp_path_factory):
    return build_user_venv(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def user_runs(user_venv, tmp_path_factory):
    """{backend: status dict or {"error": text}}: the user script on every backend, run concurrently."""
    python, purelib = user_venv
    running = {}
    for backend in BACKENDS:
        if backend == "torch" and importlib.util.find_spec("torch") is None:
            continue
        work = tmp_path_factory.mktemp(f"user_{backend}")
        (work / "readme.json").write_text(json.dumps(readme_lines(str(work / "serving"))))
        (work / "user.py").write_text(USER_SCRIPT)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
        running[backend] = subprocess.Popen([str(python), "user.py"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True, cwd=str(work), env=env)
    results = {}
    for backend, process in running.items():
        stdout, stderr = process.communicate(timeout=900)
        if process.returncode:
            results[backend] = {"error": f"{backend}: {stdout[-2000:]}\n{stderr[-4000:]}"}
        else:
            results[backend] = dict(json.loads(stdout.split("STATUS", 1)[1]), purelib=purelib)
    return results


def run_user(user_runs, backend):
    """The user script's status on `backend`; a failure fails (or xfails when known and owned elsewhere)."""
    if backend == "torch":
        pytest.importorskip("torch")
    status = user_runs[backend]
    if "error" in status:
        known = KNOWN_FAILURES.get(backend)
        if known and known[0] in status["error"]:
            pytest.xfail(known[1])
        pytest.fail(status["error"])
    return status


#: backend -> (text of the error, reason): failures of code owned by other helpers, reported, not hidden.
KNOWN_FAILURES = {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_readme_save_load_and_sequential_from_the_installed_wheel(user_runs, backend):
    status = run_user(user_runs, backend)
    assert status["backend"] == backend
    assert status["origin"].startswith(status["purelib"]) and not status["origin"].startswith(ROOT)
    assert status["readme"] == "ok"
    assert status["loaded"] == ["Classifier", "SimLoss"]
    assert status["load_max_diff"] < 1e-4
    assert {"loss", "accuracy", "mistake_severity", "level_0_accuracy"} <= set(status["sequential_fit"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("part", ["readme_evaluate", "evaluate_sequential", "readme_export"])
def test_evaluate_and_export_from_the_installed_wheel(user_runs, backend, part):
    status = run_user(user_runs, backend)
    if status.get(part) != "ok":
        pytest.xfail(f"{part} on {backend} (owned by the evaluation / export helpers): {status.get(part)}")
    if part == "readme_export":
        assert status["export_versions"] == ["1"]
