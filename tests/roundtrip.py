"""Shared serialisation round trip: save a `.keras` file, load it where a user would, compare outputs.

In the way keras-hub's `run_serialization_test` is called by every layer and
model test in one line: `run_serialization_test(obj, inputs, y)` wraps `obj`
(a model, a layer, a loss or a metric) in a small model, saves it as a
`.keras` file, loads it in a FRESH Python process that runs only
`import keras, keras_hier` (so the object must be found through the
registration `import keras_hier` does, and its hierarchy rebuilt from the
config), and compares what the loaded model computes with what the original
computes (outputs, not configs):

- a `keras.Model`: `predict(inputs)`; when it is compiled and `y` is given,
  also `evaluate(inputs, y)` (loss and metrics);
- a `keras.layers.Layer`: a functional model `Input -> layer`, `predict`;
- a `keras.losses.Loss`: an identity model compiled with it as the loss,
  `evaluate(inputs, y)`: `inputs` are the scores (y_pred), `y` the labels;
- a `keras.metrics.Metric`: the same, with the metric in `metrics=`.

`run_serialization_tests([(obj, inputs, y), ...])` does several in one
subprocess (one TensorFlow start-up).

`make_hard_tree()` is the tree these round trips use: ragged (depths 1 to 4),
node names with `/`, unicode and spaces, and classes that also have
sub-classes (so a node and a class share a name); `hard_tree` is the same
as a pytest fixture (import it into a test module).
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

__all__ = ["hard_tree", "make_hard_tree", "hard_tree_paths", "run_serialization_test", "run_serialization_tests",
           "run_fresh_python"]

#: (class name, path from the top level) of the hard tree, in class-id order.
HARD_TREE = (
    ("rose", ("plants", "flowers", "rose")),
    ("rosa/canina", ("plants", "flowers", "rose", "rosa/canina")),   # a class under a class; '/' in a name
    ("tulip", ("plants", "flowers", "tulip")),
    ("oak", ("plants", "trees", "oak")),
    ("Dackel größe/klein", ("tiere", "hund", "Dackel größe/klein")),  # unicode, space and '/'
    ("hund", ("tiere", "hund")),                                       # a class that has children
    ("猫", ("tiere", "猫")),
    ("a/b", ("a/b",)),                                                 # depth 1, '/' in a top-level name
    ("x", ("a", "b", "x")),                                            # 'a/b' split would collide here
    ("truck", ("vehicles", "road", "heavy", "truck")),
)


def hard_tree_paths():
    """`(classes, paths)` of the hard tree (paths as tuples of node names)."""
    return [name for name, _ in HARD_TREE], [path for _, path in HARD_TREE]


def _hard_tree():
    from keras_hier import Hierarchy

    classes, paths = hard_tree_paths()
    return Hierarchy(paths, classes)


def make_hard_tree():
    """The hard tree as a `keras_hier.Hierarchy` (10 classes, depths 1 to 5)."""
    return _hard_tree()


@pytest.fixture
def hard_tree():
    """Fixture: the hard tree as a `keras_hier.Hierarchy`."""
    return _hard_tree()


# ------------------------------------------------------------------ the round trip
_LOADER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras, keras_hier

    jobs = json.loads(sys.argv[1])
    out = {}
    for index, job in enumerate(jobs):
        model = keras.models.load_model(job["path"])
        data = np.load(job["data"])
        x = data["x"]
        result = {}
        if job["predict"]:
            result["predict"] = np.asarray(model.predict(x, verbose=0, batch_size=len(x)))
        if job["evaluate"]:
            y = data["y"]
            values = model.evaluate(x, y, verbose=0, return_dict=True, batch_size=len(x))
            for name, value in values.items():
                result["evaluate/" + name] = np.asarray(value)
        np.savez(job["result"], **result)
    print("ROUNDTRIP-OK")
""")


def run_fresh_python(code, args=(), env=None, timeout=600, cwd=None):
    """Runs `code` in a fresh interpreter (the same backend); returns the CompletedProcess, stderr on failure."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    full_env.setdefault("KERAS_BACKEND", "tensorflow")
    full_env.update(env or {})
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=cwd or tempfile.gettempdir())
    assert done.returncode == 0, f"fresh process failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def _wrap(obj, inputs, y):
    """(model, predict?, evaluate?) holding `obj`."""
    import keras

    x = np.asarray(inputs)
    if isinstance(obj, keras.Model):
        return obj, True, bool(obj.compiled) and y is not None
    if isinstance(obj, keras.layers.Layer) and not isinstance(obj, keras.metrics.Metric):
        model_in = keras.Input(shape=x.shape[1:], dtype=str(x.dtype))
        return keras.Model(model_in, obj(model_in)), True, False
    if y is None:
        raise ValueError("a loss or metric round trip needs the labels y (inputs are y_pred)")
    model = keras.Sequential([keras.Input(shape=x.shape[1:]), keras.layers.Identity()])
    if isinstance(obj, keras.metrics.Metric):
        dummy = (keras.losses.CategoricalCrossentropy(from_logits=True) if np.ndim(y) == 2 and np.shape(y)[1] > 1
                 else keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.compile(loss=dummy, metrics=[obj])
    elif isinstance(obj, keras.losses.Loss):
        model.compile(loss=obj)
    else:
        raise TypeError(f"run_serialization_test: cannot wrap {type(obj).__name__} (not a Model, Layer, Loss "
                        "or Metric)")
    return model, False, True


def _compute(model, x, y, predict, evaluate):
    result = {}
    if predict:
        result["predict"] = np.asarray(model.predict(x, verbose=0, batch_size=len(x)))
    if evaluate:
        values = model.evaluate(x, y, verbose=0, return_dict=True, batch_size=len(x))
        result.update({f"evaluate/{k}": np.asarray(v) for k, v in values.items()})
    return result


def run_serialization_tests(cases, rtol=1e-5, atol=1e-6, directory=None, backend=None):
    """Round trips of several objects through `.keras` files and ONE fresh process.

    Args:
        cases: list of `(obj, inputs, y)`; `y` may be None for models and layers.
        rtol, atol: tolerances of the output comparison.
        directory: where the `.keras` files go (default: a temporary folder).
        backend: KERAS_BACKEND of the loading process (default: this process's).

    Returns:
        list of dicts (one per case): `{"predict": array, "evaluate/<name>": array}` as loaded.
    """
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        jobs, expected = [], []
        for index, (obj, inputs, y) in enumerate(cases):
            model, predict, evaluate = _wrap(obj, inputs, y)
            x = np.asarray(inputs)
            expected.append(_compute(model, x, y, predict, evaluate))
            path = os.path.join(tmp, f"case{index}.keras")
            model.save(path)
            data = os.path.join(tmp, f"case{index}.npz")
            np.savez(data, x=x, **({} if y is None else {"y": np.asarray(y)}))
            jobs.append(dict(path=path, data=data, result=os.path.join(tmp, f"result{index}.npz"),
                             predict=predict, evaluate=evaluate))
        env = {"KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"} if backend else None
        done = run_fresh_python(_LOADER, [json.dumps(jobs)], env=env)
        assert "ROUNDTRIP-OK" in done.stdout
        loaded = []
        for index, (job, want) in enumerate(zip(jobs, expected)):
            with np.load(job["result"]) as got:
                got = {k: got[k] for k in got.files}
            assert sorted(got) == sorted(want), f"case {index} ({type(cases[index][0]).__name__}): {sorted(got)}"
            for key, value in want.items():
                np.testing.assert_allclose(got[key], value, rtol=rtol, atol=atol,
                                           err_msg=f"case {index} ({type(cases[index][0]).__name__}) {key}")
            loaded.append(got)
        return loaded


def run_serialization_test(obj, inputs, y=None, rtol=1e-5, atol=1e-6):
    """Round trip of one object: save in a `.keras` file, load after only `import keras, keras_hier`
    in a fresh process, compare outputs (see the module doc for how each kind is wrapped).

    Args:
        obj: a `keras.Model`, `keras.layers.Layer`, `keras.losses.Loss` or `keras.metrics.Metric`.
        inputs: model inputs; for a loss or metric the scores y_pred [N, C].
        y: labels (needed for losses, metrics and compiled models' evaluate).
        rtol, atol: tolerances.

    Returns:
        dict of the loaded process's outputs.
    """
    return run_serialization_tests([(obj, inputs, y)], rtol=rtol, atol=atol)[0]
