"""Times signatures through TensorFlow's C++ loader (`TF_SessionRun`, what TF-Serving runs), alternating.

The parent (TensorFlow imported) reads the signatures' tensor names; a child
process that never imports TensorFlow loads every export with
`keras_hier.serving_kit.c_loader` and times `TF_SessionRun` alone (feeding
and reading the tensors happen outside the timed span), the exports taking
turns call by call.
"""

import os
import pickle
import subprocess
import sys
import tempfile

from keras_hier.serving_kit import c_loader

_CHILD = r'''
import ctypes, pickle, sys, time
import numpy as np
sys.path.insert(0, sys.argv[3])
import c_loader

jobs, inputs, calls, warmup = pickle.load(open(sys.argv[1], "rb"))
child = c_loader._Child(sys.argv[2])
api = child.api


def prepared(export_dir, feed_names, fetch_names):
    session, graph = child.sessions[export_dir]
    feeds = (c_loader._Output * len(feed_names))(*[child._endpoint(graph, n) for n in feed_names])
    fetches = (c_loader._Output * len(fetch_names))(*[child._endpoint(graph, n) for n in fetch_names])
    return session, feeds, fetches


def timed_run(session, feeds, arrays, fetches):
    values = (ctypes.c_void_p * len(arrays))(*[child._to_tensor(a) for a in arrays])
    results = (ctypes.c_void_p * len(fetches))()
    status = api.NewStatus()
    start = time.perf_counter()
    api.SessionRun(session, None, feeds, values, len(arrays), fetches, results, len(fetches), None, 0, None, status)
    seconds = time.perf_counter() - start
    child._check(status)
    api.DeleteStatus(status)
    for tensor in list(values) + [r for r in results if r]:
        api.DeleteTensor(tensor)
    return seconds


runs = []
for export_dir, feed_names, fetch_names in jobs:
    child.load(export_dir)
    runs.append(prepared(export_dir, feed_names, fetch_names))
    for _ in range(warmup):
        timed_run(*runs[-1][:2], inputs, runs[-1][2])
times = [[] for _ in jobs]
for call in range(calls):
    for i in range(len(jobs)):
        j = (i + call) % len(jobs)  # the order rotates every call
        times[j].append(timed_run(*runs[j][:2], inputs, runs[j][2]))
sys.stdout.buffer.write(pickle.dumps(times))
'''


def session_run_times(exports, inputs, calls, warmup=5, signature="serving_default"):
    """Seconds per `TF_SessionRun` of `signature` for each export folder, alternating call by call.

    Args:
        exports: SavedModel folders.
        inputs: {input name: NumPy array}, the same for every export.
        calls: timed calls per export.

    Returns:
        A list (one per export) of lists of seconds.
    """
    jobs = []
    for export_dir in exports:
        spec = c_loader.signature_defs(export_dir)[signature]
        jobs.append((os.path.abspath(export_dir), [spec["inputs"][name][0] for name in inputs],
                     [tensor for tensor, _, _ in spec["outputs"].values()]))
    with tempfile.TemporaryDirectory() as tmp:
        job_file, script = os.path.join(tmp, "jobs.pkl"), os.path.join(tmp, "child.py")
        with open(job_file, "wb") as f:
            pickle.dump((jobs, list(inputs.values()), calls, warmup), f)
        with open(script, "w") as f:
            f.write(_CHILD)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        done = subprocess.run([sys.executable, "-I", script, job_file, c_loader.tensorflow_library_dir(),
                               os.path.dirname(os.path.abspath(c_loader.__file__))],
                              capture_output=True, env=env, timeout=3600)
        if done.returncode:
            raise RuntimeError(f"C loader timing failed: {done.stderr.decode(errors='replace')[-2000:]}")
        return pickle.loads(done.stdout)
