"""One training step of a small CNN with a Dense vs NormFace vs ProxyDR head.

C = 1000 and 100 000 classes (target at 100 000: NormFace / ProxyDR within
1.15x of Dense), 128-d embedding, 32x32x3 inputs, batch 128, Adam,
`keras_hier.build_classifier` (its `Classifier.train_step`, as `model.fit`
runs it) on random images. Every model is warmed up (tracing, one epoch of
`fit`), then timed step by step with `train_on_batch`, the heads alternating
call by call (the order rotates every step) so that load from other
processes hits all heads alike. Reported: min and median step time, and the
ratio to Dense as min over min and as the median of the per-step ratios
(each step against the Dense step next to it).

Usage: .venv/bin/python benchmarks/bench_heads.py [--classes 1000 100000] [--steps 15] [--rounds 3] [--threads 1]
       [--no-write]
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--embedding-dim", type=int, default=128)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow intra/inter-op threads (0: default)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from _report import publish

    rows = {classes: time_heads(args, classes) for classes in args.classes}
    one, five, fifteen = os.getloadavg()
    lines = [
        "## Heads: one training step, Dense vs NormFace vs ProxyDR (`keras_hier.layers`)",
        "",
        f"`small_cnn` backbone (32x32x3 inputs), {args.embedding_dim}-d embedding, batch {args.batch}, Adam, "
        f"cross-entropy, `build_classifier` models stepped with `train_on_batch` (the `train_step` `fit` runs) "
        f"after a warm-up epoch; {args.rounds} rounds of {args.steps} steps, the heads alternating call by call "
        f"(rotating order); {args.threads or 'default'} TensorFlow thread(s). Ratio to Dense: min step over min "
        f"step, and the median of the per-step ratios (each step against the neighbouring Dense step). EMA / "
        f"dynamic-scale rows include the after-step update of `keras_hier.models.Classifier`. Target: NormFace "
        f"and ProxyDR within {TARGET}x of Dense at C = 100 000 (judged on the median ratio). Load average at the "
        f"end: {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} cores.",
        "",
        "| C | head | min step | median step | ratio to Dense (min / median) |",
        "|---|---|---|---|---|",
    ]
    for classes, result in rows.items():
        for label, (fastest, median, ratio_min, ratio_median) in result.items():
            mark = " (target {}x: {})".format(TARGET, "met" if ratio_median <= TARGET else "missed") if (
                classes >= 100_000 and label in ("NormFace", "ProxyDR")) else ""
            lines.append(f"| {classes} | {label} | {1000 * fastest:.1f} ms | {1000 * median:.1f} ms | "
                         f"{ratio_min:.3f}x / {ratio_median:.3f}x{mark} |")
    publish("heads", lines, write=not args.no_write)


def time_heads(args, classes):
    """{variant label: (min, median step seconds, ratio of mins, median per-step ratio to Dense)} at C = `classes`."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_hier.backbones import small_cnn
    from keras_hier.models import build_classifier

    rng = np.random.default_rng(0)
    images = rng.random((args.batch * args.steps, 32, 32, 3), dtype=np.float32)
    labels = rng.integers(0, classes, len(images)).astype(np.int32)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(args.batch).cache().prefetch(2)
    batches = [(tf.constant(x), tf.constant(y)) for x, y in data.as_numpy_iterator()]
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
        model.train_on_batch(*batches[0])
        models.append((label, model))
        print("built", label, "C =", classes, flush=True)
    times = {label: [] for label, _ in models}
    step = 0
    for _ in range(args.rounds):
        for x, y in batches:
            shift = step % len(models)
            for label, model in models[shift:] + models[:shift]:
                start = time.perf_counter()
                model.train_on_batch(x, y)
                times[label].append(time.perf_counter() - start)
            step += 1
        print(classes, ", ".join(f"{label} {1000 * np.median(t):.1f} ms" for label, t in times.items()), flush=True)
    dense = np.asarray(times[VARIANTS[0][0]])
    result = {}
    for label, seconds in times.items():
        seconds = np.asarray(seconds)
        result[label] = (float(seconds.min()), float(np.median(seconds)), float(seconds.min() / dense.min()),
                         float(np.median(seconds / dense)))
    return result


if __name__ == "__main__":
    main()
