"""Serving latency: hierarchy-consistent SavedModel vs the same model with a plain argmax signature.

Both SavedModels hold the same Keras model; the plain one returns only
`class_ids` and `scores` (argmax of the softmax), the keras_hier one every
output of `export_saved_model` (level ids/names/marginals, top-k, back-off).
Calls alternate between the two models in rounds so that load from other
processes hits both alike; the table gives medians over the rounds.

    .venv/bin/python benchmarks/bench_export.py            # full run
    .venv/bin/python benchmarks/bench_export.py --quick    # a few seconds, no BENCHMARKS.md
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
from _report import machine_line, write_section  # noqa: E402

from keras_hier import export, hierarchies  # noqa: E402
from keras_hier.backbones import small_cnn  # noqa: E402
from keras_hier.models import build_classifier  # noqa: E402
from keras_hier.hierarchy import Hierarchy  # noqa: E402


def cnn(shape, num_classes, filters=(32, 64, 128)):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape)
    x = inputs
    for f in filters:
        x = keras.layers.Conv2D(f, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def realistic(hierarchy):
    """What users export: the library's small CNN backbone with a ProxyDR head."""
    keras.utils.set_random_seed(0)
    return build_classifier(small_cnn((32, 32, 3)), head="proxydr", hierarchy=hierarchy)


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
    module = tf.Module()
    module.model_variables = list(model.variables)
    shape = [None, *model.inputs[0].shape[1:]]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="images")])
    def serving_default(images):
        probabilities = tf.nn.softmax(tf.cast(model(images, training=False), tf.float32))
        return {"class_ids": tf.argmax(probabilities, axis=-1, output_type=tf.int32),
                "scores": tf.reduce_max(probabilities, axis=-1)}

    module.serving_default = serving_default
    tf.saved_model.save(module, path, signatures={"serving_default": serving_default})
    return path


def measure(functions, x, rounds, calls):
    """Median seconds per call of each function, alternating in rounds."""
    tensor = tf.constant(x)
    for fn in functions:
        for _ in range(3):
            fn(images=tensor)
    times = [[] for _ in functions]
    for _ in range(rounds):
        for i, fn in enumerate(functions):
            start = time.perf_counter()
            for _ in range(calls):
                out = fn(images=tensor)
            _ = [v.numpy() for v in out.values()]
            times[i].append((time.perf_counter() - start) / calls)
    return [float(np.median(t)) for t in times]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run, results not written")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else 15
    cifar, ragged = hierarchies.cifar100(), synthetic_hierarchy(10_000)
    tiny = "3-conv CNN (32-64-128), Dense head"
    real = "`small_cnn((32, 32, 3))` + `build_classifier(head=\"proxydr\")`"
    setups = [
        (f"CIFAR-100 tree (C = 100, 4 levels), {tiny}", cifar, lambda h: cnn((32, 32, 3), h.num_classes)),
        (f"CIFAR-100 tree (C = 100, 4 levels), {real}", cifar, realistic),
        (f"synthetic ragged tree (C = 10 000, 4 levels), {tiny}", ragged, lambda h: cnn((32, 32, 3), h.num_classes)),
        (f"synthetic ragged tree (C = 10 000, 4 levels), {real}", ragged, realistic),
    ]
    shape = (32, 32, 3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for s, (label, hierarchy, build) in enumerate(setups):
            model = build(hierarchy)
            plain = tf.saved_model.load(plain_argmax_export(model, os.path.join(tmp, f"plain{s}")))
            variants = {}
            for decoder in ("argmax", "expected_cost"):
                path = export.export_saved_model(model, hierarchy, os.path.join(tmp, f"hier{s}_{decoder}"),
                                                 decoder=decoder, backoff_threshold=0.5, top_k=5)
                variants[decoder] = tf.saved_model.load(path)
            functions = [plain.signatures["serving_default"]] + [v.signatures["serving_default"]
                                                                 for v in variants.values()]
            for batch in (1, 256):
                x = np.random.default_rng(batch).uniform(0, 1, size=(batch, *shape)).astype(np.float32)
                calls = (20 if batch == 1 else 2) if args.quick else (100 if batch == 1 else 5)
                base, arg, exp = measure(functions, x, rounds, calls)
                rows.append((label, batch, base, arg, exp))
                print(f"{label} batch {batch}: plain {base * 1e3:.2f} ms, keras_hier argmax {arg * 1e3:.2f} ms "
                      f"({arg / base:.2f}x), expected_cost {exp * 1e3:.2f} ms ({exp / base:.2f}x)", flush=True)
    table = ["| model | batch | plain argmax signature | keras_hier `argmax` + back-off + top-5 | ratio "
             "| keras_hier `expected_cost` + back-off + top-5 | ratio |",
             "|---|---|---|---|---|---|---|"]
    for label, batch, base, arg, exp in rows:
        table.append(f"| {label} | {batch} | {base * 1e3:.2f} ms | {arg * 1e3:.2f} ms | {arg / base:.2f}x "
                     f"| {exp * 1e3:.2f} ms | {exp / base:.2f}x |")
    command = ".venv/bin/python benchmarks/bench_export.py" + (" --quick" if args.quick else "")
    markdown = "\n".join([
        "## Export: serving latency of hierarchy-consistent SavedModels (`keras_hier.export`)", "",
        "Median latency per call of `tf.saved_model.load(...).signatures['serving_default']` (in process, "
        "float32 images, random weights; a tiny 3-conv CNN, where the fixed per-call cost of the extra "
        "outputs shows most, and the library's `small_cnn` + ProxyDR head that users export), the plain "
        "signature returning argmax class ids + scores and the "
        "keras_hier export returning all outputs (classes, top-5, per-level ids/names/marginals, back-off at "
        f"0.5). {rounds} alternating rounds. Target: within 1.10x of the plain signature.", "",
        *table, "", f"Command: `{command}`", "", f"Machine: {machine_line()}"])
    print(markdown)
    if not args.quick:
        write_section("export", markdown)


if __name__ == "__main__":
    main()
