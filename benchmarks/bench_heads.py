"""One training step of a small CNN with a Dense vs NormFace vs ProxyDR head.

C = 1000 and 100 000 classes (target at 100 000: NormFace / ProxyDR within
1.15x of Dense), 128-d embedding, 32x32x3 inputs, batch 128, Adam,
`keras_hier.build_classifier` + `model.fit` on a `tf.data` pipeline of random
images. Every model is warmed up (tracing), then timed in interleaved rounds
(model 1, model 2, ..., again) so that load from other processes hits all
heads alike; a head's time is the median step time of its best round.

Usage: .venv/bin/python benchmarks/bench_heads.py [--classes 1000 100000] [--steps 15] [--rounds 5] [--threads 1]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TARGET = 1.15  # NormFace / ProxyDR step time over Dense at C = 100 000 (issue 14)

VARIANTS = [
    ("Dense (softmax)", "softmax", {}),
    ("NormFace", "normface", {}),
    ("ProxyDR", "proxydr", {}),
    ("ProxyDR, EMA + dynamic scale", "proxydr", dict(proxy_mode="ema", dynamic_scale=True)),
    ("NormFace, fixed proxies + dynamic scale", "normface", dict(proxy_mode="fixed", dynamic_scale=True)),
]


class StepTimer:
    def __init__(self):
        self.times = []

    def callback(self):
        import keras

        timer = self

        class _Callback(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                timer.start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                timer.times.append(time.perf_counter() - timer.start)

        return _Callback()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--embedding-dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow intra/inter-op threads (0: default)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from _report import publish

    rows = {classes: time_heads(args, classes) for classes in args.classes}
    lines = [
        "## Heads: one training step, Dense vs NormFace vs ProxyDR (`keras_hier.layers`)",
        "",
        f"`small_cnn` backbone (32x32x3 inputs), {args.embedding_dim}-d embedding, batch {args.batch}, Adam, "
        f"cross-entropy, `model.fit` on a cached `tf.data` pipeline; median step time of the best of "
        f"{args.rounds} interleaved rounds of {args.steps} steps (after a warm-up epoch), "
        f"{args.threads or 'default'} TensorFlow thread(s) (steadier on a shared machine). EMA / dynamic-scale "
        f"rows include the after-step update of `keras_hier.models.Classifier`. Target: NormFace and ProxyDR "
        f"within {TARGET}x of Dense at C = 100 000.",
        "",
        "| C | head | step time | ratio to Dense |",
        "|---|---|---|---|",
    ]
    for classes, best in rows.items():
        dense = best[VARIANTS[0][0]]
        for label, seconds in best.items():
            mark = " (target {}x: {})".format(TARGET, "met" if seconds / dense <= TARGET else "missed") if (
                classes >= 100_000 and label in ("NormFace", "ProxyDR")) else ""
            lines.append(f"| {classes} | {label} | {1000 * seconds:.1f} ms | {seconds / dense:.3f}x{mark} |")
    publish("heads", lines, write=not args.no_write)


def time_heads(args, classes):
    """{variant label: best median step time in seconds} at C = `classes`."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_hier.backbones import small_cnn
    from keras_hier.models import build_classifier

    rng = np.random.default_rng(0)
    images = rng.random((args.batch * args.steps, 32, 32, 3), dtype=np.float32)
    labels = rng.integers(0, classes, len(images)).astype(np.int32)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(args.batch).cache().prefetch(2)
    proxies = rng.normal(size=(classes, args.embedding_dim)).astype(np.float32)
    models = []
    for label, head, kwargs in VARIANTS:
        kwargs = dict(kwargs)
        if kwargs.get("proxy_mode") == "fixed":
            kwargs["proxies"] = proxies
        keras.utils.set_random_seed(0)
        model = build_classifier(small_cnn((32, 32, 3)), head=head, num_classes=classes,
                                 embedding_dim=args.embedding_dim, **kwargs)
        model.compile(optimizer=keras.optimizers.Adam(1e-4),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(data, epochs=1, verbose=0)  # tracing and warm-up
        models.append((label, model))
        print("built", label, "C =", classes, flush=True)
    best = {label: None for label, _ in models}
    for _ in range(args.rounds):
        for label, model in models:
            timer = StepTimer()
            model.fit(data, epochs=1, verbose=0, callbacks=[timer.callback()])
            median = float(np.median(timer.times[1:] or timer.times))
            best[label] = median if best[label] is None else min(best[label], median)
            print(classes, label, f"{1000 * median:.1f} ms", flush=True)
    return best


if __name__ == "__main__":
    main()
