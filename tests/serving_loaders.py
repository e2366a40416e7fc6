"""Load exports the three ways a deployment does, many exports per child process (keeps tests fast).

- `keras_hier.serving_kit.c_loader.CLoader`: TensorFlow's C++ loader (TF-Serving's), no TensorFlow import;
- `saved_model_cli_run`: `saved_model_cli run` as typed (.venv/bin), and `cli_batch`, the same
  session-based `run_saved_model_with_feed_dict` of saved_model_cli for many jobs in one process;
- `isolated_batch`: `tf.saved_model.load` in a process that cannot import keras or keras_hier.
"""

import json
import os
import pathlib
import pickle
import subprocess
import sys
import textwrap

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}, "TF_CPP_MIN_LOG_LEVEL": "3"}

_CLI_BATCH = textwrap.dedent("""
    import os, pickle, sys
    import numpy as np
    from tensorflow.python.tools import saved_model_cli
    jobs = pickle.load(open(sys.argv[1], "rb"))
    results = []
    for k, (path, signature, inputs) in enumerate(jobs):
        out = os.path.join(sys.argv[2], str(k))
        try:
            saved_model_cli.run_saved_model_with_feed_dict(path, "serve", signature, inputs, out, True)
            results.append({f[:-4]: np.load(os.path.join(out, f), allow_pickle=True) for f in os.listdir(out)})
        except Exception as error:
            results.append(error.__class__.__name__ + ": " + str(error))
    pickle.dump(results, open(sys.argv[3], "wb"))
""")

_ISOLATED = textwrap.dedent("""
    import importlib.machinery, importlib.util, os, pickle, sys
    # drop the editable install of keras_hier and any path that holds the source tree
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
    sys.path_importer_cache.clear()
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != SOURCE]

    class NoKeras(importlib.machinery.PathFinder):  # and no Keras either: as with TensorFlow alone
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.split(".")[0] in ("keras", "keras_hier", "tf_keras"):
                return None
            return super().find_spec(name, path, target)

    sys.meta_path[:] = [NoKeras if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
    assert importlib.util.find_spec("keras_hier") is None, "keras_hier is importable"
    assert importlib.util.find_spec("keras") is None, "keras is importable"
    import numpy as np
    import tensorflow as tf

    jobs = pickle.load(open(sys.argv[1], "rb"))
    results = []
    for path, signature, inputs in jobs:
        try:
            fn = tf.saved_model.load(path).signatures[signature]
            results.append({k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()})
        except Exception as error:
            results.append(error.__class__.__name__ + ": " + str(error))
    results.append(sorted(m for m in sys.modules if m.split(".")[0] in ("keras", "keras_hier", "tf_keras")))
    pickle.dump(results, open(sys.argv[2], "wb"))
""")


def _run_script(script, args, tmp_path, timeout=600):
    proc = subprocess.run([sys.executable, "-I", "-c", script, *map(str, args)], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


def cli_batch(jobs, tmp_path):
    """[(export dir, signature, {input: array})] -> list of {output: array} (or an error text), one process."""
    tmp_path = pathlib.Path(tmp_path)
    (tmp_path / "cli_jobs.pkl").write_bytes(pickle.dumps(jobs))
    _run_script(_CLI_BATCH, [tmp_path / "cli_jobs.pkl", tmp_path / "cli_out", tmp_path / "cli_results.pkl"], tmp_path)
    return pickle.loads((tmp_path / "cli_results.pkl").read_bytes())


def isolated_batch(jobs, tmp_path):
    """Like `cli_batch`, with `tf.saved_model.load` in a process without keras / keras_hier.

    Returns:
        (results, modules of keras / keras_hier that got imported: must be []).
    """
    tmp_path = pathlib.Path(tmp_path)
    (tmp_path / "iso_jobs.pkl").write_bytes(pickle.dumps(jobs))
    _run_script(f"SOURCE = {str(ROOT)!r}\n" + _ISOLATED, [tmp_path / "iso_jobs.pkl", tmp_path / "iso.pkl"], tmp_path)
    results = pickle.loads((tmp_path / "iso.pkl").read_bytes())
    return results[:-1], results[-1]


def saved_model_cli_run(path, signature, inputs, tmp_path):
    """`saved_model_cli run --dir D --tag_set serve --signature_def S --inputs name=file.npy`: {output: array}."""
    tmp_path = pathlib.Path(tmp_path)
    args = []
    for name, value in inputs.items():
        np.save(tmp_path / f"{signature}_{name}.npy", np.asarray(value), allow_pickle=True)
        args.append(f"{name}={tmp_path / f'{signature}_{name}.npy'}")
    out = tmp_path / f"cli_{signature}"
    cli = pathlib.Path(sys.executable).parent / "saved_model_cli"
    proc = subprocess.run([str(cli), "run", "--dir", str(path), "--tag_set", "serve", "--signature_def", signature,
                           "--inputs", ";".join(args), "--outdir", str(out), "--overwrite"],
                          capture_output=True, text=True, timeout=300, env=ENV)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return {f[:-4]: np.load(out / f, allow_pickle=True) for f in os.listdir(out)}


def as_text(values):
    """bytes / str arrays -> list of str (for comparing string outputs)."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).reshape(-1)]


def to_json(value):
    return json.loads(json.dumps(np.asarray(value).tolist(), default=lambda b: b.decode()))
