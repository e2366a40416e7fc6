"""Training throughput: keras_hier.recipes.train's model and fit loop vs a plain model.fit.

For every head and option of the recipe, the same backbone is trained (a)
as a plain Keras model (backbone -> Dense embedding -> Dense softmax,
`SparseCategoricalCrossentropy`, no callbacks) and (b) as the recipe builds
it (`keras_hier.recipes.train.build_model` + `compile_model`, with the recipe's
callbacks: per-epoch backup, best checkpoint, CSV log, TensorBoard). Both read
the same `tf.data` pipeline (`keras_hier.data.make_pipeline`) of synthetic
32x32x3 images. Images/s is measured on the epochs after the first (tracing),
from the median interval between batches; the recipe's extra per-epoch cost
(its callbacks) is reported separately. Plain and recipe epochs alternate,
and the ratio is the median of the per-round ratios, so load from other
processes affects both sides alike.

    .venv/bin/python benchmarks/bench_train.py            # full table
    .venv/bin/python benchmarks/bench_train.py --quick    # a few rows, small
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _report import publish  # noqa: E402

VARIANTS = [("softmax", ())] + [
    (head, opts) for head in ("normface", "proxydr")
    for opts in ((), ("ema",), ("dynamic",), ("ema", "dynamic"), ("mds",), ("mds", "dynamic"))
] + [("corr", ("mds",))]


def option_settings(opts):
    """("ema", "dynamic") -> {"proxy_mode": "ema", "dynamic_scale": True} (the recipe's config keys)."""
    settings = {"proxy_mode": next((o for o in opts if o in ("ema", "mds")), "learned")}
    settings["dynamic_scale"] = "dynamic" in opts
    return settings


class EpochTimer:
    """Records epoch wall times and the intervals between consecutive batches."""

    def __init__(self):
        import keras

        timer = self

        class _CB(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                timer.start = timer.last = time.perf_counter()
                timer.steps.append([])

            def on_train_batch_end(self, batch, logs=None):
                now = time.perf_counter()
                timer.steps[-1].append(now - timer.last)
                timer.last = now

            def on_epoch_end(self, epoch, logs=None):
                timer.times.append(time.perf_counter() - timer.start)

        self.times, self.steps, self.callback = [], [], _CB()

    def step_seconds(self):
        """Median batch interval over the timed epochs (robust to other load)."""
        return float(np.median([t for epoch in self.steps[1:] for t in epoch[1:]]))

    def epoch_overhead(self):
        """Median seconds per epoch spent outside the batches (callbacks, validation)."""
        return float(np.median([t - sum(s) for t, s in zip(self.times[1:], self.steps[1:])]))


def plain_model(backbone, num_classes, lr):
    import keras

    x = keras.layers.Dense(128, name="embedding")(backbone.output)
    y = keras.layers.Dense(num_classes, activation="softmax", name="head")(x)
    model = keras.Model(backbone.input, y)
    model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    return model


def compare(plain, recipe_model, recipe_callbacks, data, rounds):
    """Alternates one epoch of each model `rounds` times (the first round traces)."""
    pt, rt = EpochTimer(), EpochTimer()
    for k in range(rounds):
        plain.fit(data, initial_epoch=k, epochs=k + 1, verbose=0, shuffle=False,
                  callbacks=[pt.callback])
        recipe_model.fit(data, initial_epoch=k, epochs=k + 1, verbose=0, shuffle=False,
                         callbacks=list(recipe_callbacks) + [rt.callback])
    return pt, rt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 variants, 1024 images")
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=5,
                        help="alternating rounds of one epoch each; the first is not timed")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    import keras

    from keras_hier import hierarchies
    from keras_hier.backbones import get_backbone
    from keras_hier.data import make_pipeline
    from keras_hier.recipes.configs import get_config
    from keras_hier.recipes.train import build_model, compile_model, make_callbacks

    variants = VARIANTS[:1] + [VARIANTS[2], VARIANTS[7]] if args.quick else VARIANTS
    n = 1024 if args.quick else args.images
    hierarchy = hierarchies.cifar100()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, hierarchy.num_classes, n)
    data = make_pipeline(images, labels, args.batch_size, shuffle=True, seed=0)
    shape = (32, 32, 3)
    rows = []
    for head, opts in variants:
        keras.utils.set_random_seed(0)
        config = get_config("cpu_small", backbone=args.backbone, head=head, lr=1e-3,
                            batch_size=args.batch_size, **option_settings(opts))
        plain_net = plain_model(get_backbone(args.backbone, shape), hierarchy.num_classes, 1e-3)
        recipe_net = build_model(config, hierarchy, shape)
        compile_model(recipe_net, config, hierarchy)
        with tempfile.TemporaryDirectory() as out:
            plain, recipe = compare(plain_net, recipe_net, make_callbacks(out, "accuracy"), data,
                                    args.epochs)
        # per round: the two epochs ran back to back, so they saw the same machine load
        ratios = [np.median(p[1:]) / np.median(r[1:])
                  for p, r in zip(plain.steps[1:], recipe.steps[1:])]
        p = args.batch_size / plain.step_seconds()
        r = args.batch_size / recipe.step_seconds()
        q = float(np.median(ratios))
        extra = recipe.epoch_overhead() - plain.epoch_overhead()
        # the same per-epoch overhead spread over a CIFAR-size epoch of 45 000 images
        full = q * (45_000 / r) / (45_000 / r + max(extra, 0.0))
        name = head + ("+" + "+".join(opts) if opts else "")
        rows.append((name, p, r, q, extra, full))
        print(f"{name:24s} plain {p:7.1f} img/s  recipe {r:7.1f} img/s  ratio {q:.2f}  "
              f"epoch overhead {extra:+.2f} s  ratio@45k {full:.2f}", flush=True)
    lines = [
        "## Training throughput: recipes/train.py vs plain model.fit",
        "",
        f"{args.backbone} backbone, 128-d embedding, {hierarchy.num_classes} classes, "
        f"batch {args.batch_size}, {n} synthetic 32x32x3 images per epoch, "
        f"{args.epochs} rounds of one plain epoch then one recipe epoch (the first round, "
        "with tracing, is excluded). Images/s = batch size / median interval between "
        "batches; *ratio* = median over rounds of recipe/plain speed within the round "
        "(the two epochs of a round ran back to back, so load from other processes on "
        "this shared 2-core machine hits both alike). *Epoch overhead*: the recipe's extra seconds "
        "per epoch outside the batches (its callbacks: per-epoch backup, best checkpoint, "
        "CSV, TensorBoard); *ratio @45k* spreads it over a CIFAR-size epoch of 45 000 "
        "images. Target: ratio >= 0.9.",
        "",
        "| head + options | plain images/s | recipe images/s | ratio | epoch overhead (s) "
        "| ratio @45k |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {a} | {p:.0f} | {r:.0f} | {q:.2f} | {e:+.2f} | {f:.2f} |"
              for a, p, r, q, e, f in rows]
    publish("bench_train", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
