"""Serving latency: hierarchy-consistent SavedModel vs the same model with a plain argmax signature.

Both SavedModels hold the same Keras model and are written with
`keras.export.ExportArchive`; the plain one returns only `class_ids` and
`scores` (argmax of the softmax), the keras_hier one every output of
`export_saved_model` (classes, top-5, per-level ids/names/marginals,
back-off, input checks), with the `argmax` or the `expected_cost` decoder.
Calls alternate between the plain and the keras_hier signature call by call,
in one process, so that load from other processes hits both alike; the
table gives the median and the minimum over the calls.

    .venv/bin/python benchmarks/bench_export.py            # full run, writes BENCHMARKS.md
    .venv/bin/python benchmarks/bench_export.py --quick    # a few seconds per row, no BENCHMARKS.md
    .venv/bin/python benchmarks/bench_export.py --classes 100000 --batches 256   # a subset, no BENCHMARKS.md
    .venv/bin/python benchmarks/bench_export.py --loaders c++   # TF_SessionRun only (TF-Serving's loader)
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _c_loader_timing import session_run_times  # noqa: E402
from _report import publish  # noqa: E402

from keras_hier import export, hierarchies  # noqa: E402
from keras_hier.backbones import small_cnn  # noqa: E402
from keras_hier.hierarchy import Hierarchy  # noqa: E402
from keras_hier.models import build_classifier  # noqa: E402

SHAPE = (32, 32, 3)


def tiny_cnn(num_classes):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(SHAPE)
    x = inputs
    for filters in (32, 64, 128):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def realistic(hierarchy):
    """What users export: the library's small CNN backbone with a ProxyDR head."""
    keras.utils.set_random_seed(0)
    return build_classifier(small_cnn(SHAPE), head="proxydr", hierarchy=hierarchy)


def synthetic_hierarchy(num_classes, branching=10, seed=0):
    """A ragged tree: branching-ary levels, every 7th class one level shallower."""
    rng = np.random.default_rng(seed)
    depth = int(np.ceil(np.log(num_classes) / np.log(branching)))
    paths = []
    for c in range(num_classes):
        digits = [(c // branching ** k) % branching for k in range(depth - 1, 0, -1)]
        path = tuple(f"n{'_'.join(map(str, digits[:i + 1]))}" for i in range(len(digits)))
        if rng.random() < 1 / 7 and len(path) > 1:
            path = path[:-1]
        paths.append(path + (f"class{c}",))
    return Hierarchy(paths, [p[-1] for p in paths])


def plain_argmax_export(model, path):
    """The baseline: the same model, argmax class ids + scores, written by ExportArchive."""
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(images):
        probabilities = tf.nn.softmax(tf.cast(model(images, training=False), tf.float32))
        return {"class_ids": tf.argmax(probabilities, axis=-1, output_type=tf.int32),
                "scores": tf.reduce_max(probabilities, axis=-1)}

    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec([None, *SHAPE], tf.float32, name="images")])
    archive.write_out(path, verbose=False)
    return path


def measure(functions, x, calls):
    """Seconds per call of each function, alternating call by call: (medians, minima)."""
    tensor = tf.constant(x)
    for fn in functions:
        for _ in range(5):
            [v.numpy() for v in fn(images=tensor).values()]
    times = [[] for _ in functions]
    for _ in range(calls):
        for i, fn in enumerate(functions):
            start = time.perf_counter()
            _ = [v.numpy() for v in fn(images=tensor).values()]
            times[i].append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times], [float(np.min(t)) for t in times]


def setups(quick, sizes=(100, 10_000, 100_000)):
    cifar = hierarchies.cifar100()
    tiny = "3-conv CNN (32-64-128), Dense head"
    real = "`small_cnn` + ProxyDR head"
    rows = [(f"CIFAR-100 tree (C = 100, 4 levels), {tiny}", cifar, tiny_cnn),
            (f"CIFAR-100 tree (C = 100, 4 levels), {real}", cifar, realistic)] if 100 in sizes else []
    for size in (s for s in sizes if s != 100):
        h = synthetic_hierarchy(size)
        label = f"synthetic ragged tree (C = {size:,}".replace(",", " ") + f", {h.depth} levels)"
        rows.append((f"{label}, {tiny}", h, tiny_cnn))
        if not quick:
            rows.append((f"{label}, {real}", h, realistic))
    return rows


def measure_c_loader(paths, x, calls):
    """As `measure`, through TensorFlow's C++ loader (`TF_SessionRun` only, in a child process)."""
    times = session_run_times(paths, {"images": x}, calls)
    return [float(np.median(t)) for t in times], [float(np.min(t)) for t in times]


def bench_setup(label, hierarchy, build, tmp, index, quick, batches=(1, 256), decoders=("argmax", "expected_cost"),
                loaders=("python", "c++")):
    model = build(hierarchy.num_classes) if build is tiny_cnn else build(hierarchy)
    plain_path = plain_argmax_export(model, os.path.join(tmp, f"plain{index}"))
    plain = tf.saved_model.load(plain_path)
    paths, variants = [], []
    for decoder in decoders:
        paths.append(export.export_saved_model(model, hierarchy, os.path.join(tmp, f"hier{index}_{decoder}"),
                                               decoder=decoder, backoff_threshold=0.5, top_k=5))
        variants.append(tf.saved_model.load(paths[-1]).signatures["serving_default"])
    rows = []
    for batch in batches:
        x = np.random.default_rng(batch).uniform(0, 1, size=(batch, *SHAPE)).astype(np.float32)
        calls = (30 if batch == 1 else 4) if quick else (400 if batch == 1 else 30)
        for name, path, variant in zip(decoders, paths, variants):
            for loader in loaders:
                medians, minima = measure([plain.signatures["serving_default"], variant], x, calls) \
                    if loader == "python" else measure_c_loader([plain_path, path], x, calls)
                rows.append((label, batch, name, loader, medians, minima))
                print(f"{label} batch {batch} {name} ({loader}): plain {medians[0] * 1e3:.3f} ms, keras_hier "
                      f"{medians[1] * 1e3:.3f} ms ({medians[1] / medians[0]:.3f}x median, "
                      f"{minima[1] / minima[0]:.3f}x min)", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run, results not written")
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 10_000, 100_000],
                        help="only these tree sizes (results not written unless all)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256], help="batch sizes")
    parser.add_argument("--decoders", nargs="+", default=["argmax", "expected_cost"], help="keras_hier decoders")
    parser.add_argument("--loaders", nargs="+", default=["python", "c++"], choices=["python", "c++"],
                        help="python: tf.saved_model.load signatures; c++: TF_SessionRun in TensorFlow's C++ loader")
    args = parser.parse_args(argv)
    partial = (sorted(args.classes) != [100, 10_000, 100_000] or sorted(args.batches) != [1, 256]
               or sorted(args.decoders) != ["argmax", "expected_cost"] or sorted(args.loaders) != ["c++", "python"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, (label, hierarchy, build) in enumerate(setups(args.quick, args.classes)):
            rows += bench_setup(label, hierarchy, build, tmp, index, args.quick, args.batches, args.decoders,
                                args.loaders)
    table = ["| model | batch | keras_hier decoder | loader | plain argmax (median / min) | keras_hier (median / min) "
             "| ratio median | ratio min |", "|---|---|---|---|---|---|---|---|"]
    for label, batch, name, loader, medians, minima in rows:
        table.append(f"| {label} | {batch} | `{name}` | {loader} | {medians[0] * 1e3:.3f} / {minima[0] * 1e3:.3f} ms "
                     f"| {medians[1] * 1e3:.3f} / {minima[1] * 1e3:.3f} ms | {medians[1] / medians[0]:.3f}x "
                     f"| {minima[1] / minima[0]:.3f}x |")
    lines = ["## Export: serving latency of hierarchy-consistent SavedModels (`keras_hier.export`)", "",
             "Latency per call of `tf.saved_model.load(...).signatures['serving_default']` in one process "
             "(float32 images 32x32x3, random weights). Plain: the same model exported with "
             "`keras.export.ExportArchive`, returning argmax class ids + scores. keras_hier: "
             "`export_saved_model(..., backoff_threshold=0.5, top_k=5)` with each decoder, returning classes, "
             "top-5, per-level ids/names/marginals and back-off, after its input checks (shape, NaN/inf, empty "
             "batch). The two sides alternate call by call. Loader `python`: the signature called in the "
             "process that loaded it (outputs read as NumPy); `c++`: `TF_SessionRun` alone through TensorFlow's "
             "C++ SavedModel loader (`keras_hier.serving_kit.c_loader`, the loader TF-Serving is built on), in a "
             "process without the Python TensorFlow. Target: keras_hier within 1.10x of plain "
             "(issue 9: C = 100 and 10 000; issue 14: C = 100 000), batch 1 and 256.", "", *table]
    publish("export", lines, write=not (args.quick or partial))


if __name__ == "__main__":
    main()
