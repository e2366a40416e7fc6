"""Decoders on a real trained model: argmax vs expected cost (CRM), and back-off.

Trains a small CNN on Fashion-MNIST (IDX files from /usr/share/datasets/fashion-mnist)
for a fixed time budget, then decodes the test-set logits with `argmax` and
`expected_cost` (path and lca_height costs) and measures them with
`keras_hier.evaluation.hierarchy_informed` on the decoder's ranking (scores =
-expected cost for CRM): accuracy, mistake severity, AHD@k. Back-off rows give,
per threshold, how many answers stay at the class level and how often the
returned node is on the true class's path.

    .venv/bin/python benchmarks/bench_decoders.py                 # ~2 min of training
    .venv/bin/python benchmarks/bench_decoders.py --quick          # 20 s, results not written
"""

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import machine_line, write_section  # noqa: E402

from keras_hier import decoding, hierarchies  # noqa: E402
from keras_hier.data import load_arrays  # noqa: E402
from keras_hier.evaluation import hierarchy_informed  # noqa: E402

DATA = "/usr/share/datasets/fashion-mnist"


class TimeBudget(keras.callbacks.Callback):
    def __init__(self, seconds):
        super().__init__()
        self.seconds, self.start = seconds, None

    def on_train_begin(self, logs=None):
        self.start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        if time.time() - self.start > self.seconds:
            self.model.stop_training = True


def model_for(num_classes):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="training time budget")
    parser.add_argument("--quick", action="store_true", help="20 s of training, results not written")
    args = parser.parse_args(argv)
    seconds = 20.0 if args.quick else args.seconds
    hierarchy = hierarchies.fashion_mnist()
    x_train, y_train, _ = load_arrays(DATA, "train")
    x_test, y_test, _ = load_arrays(DATA, "test")
    x_train = x_train.astype(np.float32) / 255.0
    x_test = x_test.astype(np.float32) / 255.0
    model = model_for(hierarchy.num_classes)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    data = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(60000, seed=0).batch(128).prefetch(2)
    start = time.time()
    history = model.fit(data, epochs=50, callbacks=[TimeBudget(seconds)], verbose=0)
    trained = time.time() - start
    epochs = len(history.history["loss"])
    logits = model.predict(x_test, batch_size=512, verbose=0)
    probs = tf.nn.softmax(logits).numpy()
    print(f"trained {trained:.0f} s ({epochs} epochs, last partial)", flush=True)

    rows = []
    decoders = [("argmax", "argmax", None)] + [(f"expected_cost ({c})", "expected_cost", c) for c in decoding.COSTS]
    for label, decoder, cost in decoders:
        ranking = probs if decoder == "argmax" else -np.asarray(decoding.expected_cost(probs, hierarchy, cost))
        for distance in decoding.COSTS:
            out = hierarchy_informed(y_test, ranking, hierarchy, k=5, distance=distance)
            ahd1 = hierarchy_informed(y_test, ranking, hierarchy, k=1, distance=distance)["ahd_at_k"]
            rows.append((label, distance, out["accuracy"], out["mistake_severity"], ahd1, out["ahd_at_k"],
                         out["level_accuracy"][0]))
            print(rows[-1], flush=True)

    backoff = []
    paths = hierarchy.paths
    for threshold in (0.5, 0.7, 0.9):
        out = {k: np.asarray(v) for k, v in decoding.decode(logits, hierarchy, backoff_threshold=threshold).items()}
        level = out["prediction_level"]
        at_leaf = level == (hierarchy.leaf_depths[out["class_ids"]] - 1)
        ids = out["class_ids"]
        # the answer is right when the returned node lies on the true class's path
        right = np.array([lv == -1 or paths[c][:lv + 1] == paths[y][:lv + 1] for c, y, lv in zip(ids, y_test, level)])
        backoff.append((threshold, at_leaf.mean(), (level == -1).mean(), right.mean(),
                        (ids[at_leaf] == y_test[at_leaf]).mean()))
        print(backoff[-1], flush=True)

    table = ["| decoder | distance | accuracy | mistake severity | AHD@1 | AHD@5 | level-0 accuracy |",
             "|---|---|---|---|---|---|---|"]
    table += [f"| {a} | {d} | {acc:.4f} | {ms:.3f} | {a1:.4f} | {a5:.3f} | {l0:.4f} |"
              for a, d, acc, ms, a1, a5, l0 in rows]
    back = ["| back-off threshold | answered at class level | backed off to root | answer on the true path "
            "| accuracy of class-level answers |", "|---|---|---|---|---|"]
    back += [f"| {t} | {leaf:.1%} | {root:.1%} | {right:.1%} | {acc:.1%} |" for t, leaf, root, right, acc in backoff]
    command = ".venv/bin/python benchmarks/bench_decoders.py" + (" --quick" if args.quick else
                                                                   f" --seconds {args.seconds:g}")
    markdown = "\n".join([
        "## Decoders on a trained model: argmax vs expected cost (`keras_hier.decoding`)", "",
        f"Fashion-MNIST, `keras_hier.hierarchies.fashion_mnist()` (ragged, {hierarchy.depth} levels), a 2-conv CNN "
        f"trained with plain cross-entropy for {trained:.0f} s ({epochs} epochs, Adam, batch 128); the 10 000 test "
        "images. Measures from `keras_hier.evaluation.hierarchy_informed` on each decoder's ranking (probability "
        "for argmax, increasing expected cost for CRM); mistake severity = mean tree distance over the "
        "misclassified images; AHD@k = mean distance over the top-k. Each decoder is scored with both tree "
        "distances (`distance` column).", "", *table, "",
        "Back-off (argmax decoder): the deepest node of the predicted chain whose probability reaches the "
        "threshold.", "", *back, "", f"Command: `{command}`", "", f"Machine: {machine_line()}"])
    print(markdown)
    if not args.quick:
        write_section("decoders", markdown)


if __name__ == "__main__":
    main()
