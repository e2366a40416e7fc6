"""One worker (or the single-process reference) of tests/test_distributed.py.

    TF_CONFIG=... python tests/distributed_worker.py equivalence --out DIR
    python tests/distributed_worker.py equivalence --out DIR          # reference, 1 replica
    TF_CONFIG=... python tests/distributed_worker.py fault --out DIR --kill-at 2,1
    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
        python tests/distributed_worker.py jax --out DIR

`equivalence` trains a Dense head, NormFace and ProxyDR (EMA proxies and
dynamic scale) for a few steps on fixed global batches and writes every
variable of every model to `DIR/<head>_<task index>.npz` (each worker its
own file, to check that all workers hold the same values). `fault` trains
for several epochs with `keras_hier.distributed.backup_and_restore` and a
chief-only `history.csv`; `--kill-at E,B` makes worker 1 SIGKILL itself at
batch B of epoch E once (a marker file in DIR remembers it). `jax` trains
each head once on one device and once under `DataParallel` over all
devices and writes both.
"""

import argparse
import json
import os
import re
import signal
import sys

import numpy as np

_FAST = dict(ema_momentum=0.5, scale_learning_rate=0.05)  # large moves: a wrong reduction shows
HEADS = {
    "dense": dict(head="softmax"),
    "normface": dict(head="normface", proxy_mode="ema", dynamic_scale=True, **_FAST),
    "proxydr": dict(head="proxydr", proxy_mode="ema", dynamic_scale=True, **_FAST),
    "normface_learned": dict(head="normface", scale=8.0),
    "proxydr_learned": dict(head="proxydr", scale=4.0),
}
INPUT_DIM, HIDDEN, EMBEDDING, CLASSES = 6, 8, 4, 5


def make_data(num_examples, seed=0):
    """Fixed inputs and labels (every class present in every 8 examples)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_examples, INPUT_DIM)).astype("float32")
    y = (np.arange(num_examples) * 3 + rng.integers(0, 2, num_examples)) % CLASSES
    return x, y.astype("int32")


def make_model(name, seed=0):
    """The tiny classifier `name` (see HEADS; a `_local` suffix is the same head), its
    weights set from a seeded NumPy generator."""
    import keras

    import keras_hier

    backbone = keras.Sequential([keras.Input((INPUT_DIM,)), keras.layers.Dense(HIDDEN, activation="tanh")])
    head = HEADS[name.removesuffix("_local")]
    model = keras_hier.build_classifier(backbone, num_classes=CLASSES, embedding_dim=EMBEDDING, **head)
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if weight.path.split("/")[-1] in ("kernel", "bias", "proxies"):
            weight.assign(rng.normal(scale=0.5, size=weight.shape).astype("float32"))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def local_statistics(name):
    """For a `_local` model: the heads' cross-replica reductions replaced by the
    identity (each worker uses its own batch statistics), the mistake the
    equivalence test must catch."""
    import contextlib
    from unittest import mock

    from keras_hier import layers

    if not name.endswith("_local"):
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(layers, "_all_sum", lambda values: values))
    stack.enter_context(mock.patch.object(layers, "_all_gather", lambda value: value))
    return stack


def weights_of(model):
    """Every variable by path, auto-numbering removed ("sequential_2/dense_2/kernel" -> "sequential/dense/kernel")."""
    import keras

    return {re.sub(r"_\d+(?=/|$)", "", w.path): keras.ops.convert_to_numpy(w.value) for w in model.weights}


def dataset(x, y, global_batch):
    import tensorflow as tf

    from keras_hier.distributed import shard_dataset

    return shard_dataset(tf.data.Dataset.from_tensor_slices((x, y)), global_batch)


def equivalence(args, strategy):
    from keras_hier.distributed import task_index

    x, y = make_data(args.steps * args.global_batch)
    for name in args.heads.split(","):
        with strategy.scope():
            model = make_model(name)
        if args.save_init:
            np.savez(os.path.join(args.out, f"{name}_init.npz"), **weights_of(model))
        with local_statistics(name):
            model.fit(dataset(x, y, args.global_batch), epochs=1, verbose=0, shuffle=False)
        np.savez(os.path.join(args.out, f"{name}_{task_index()}.npz"), **weights_of(model))
        if name == args.export:
            export(model, args.out)


def export(model, out):
    """Every worker exports (tracing may run ops under the strategy); only the chief's lands in out/export."""
    import keras_hier
    from keras_hier.distributed import chief_only_path, cleanup_worker_paths

    hierarchy = keras_hier.Hierarchy.from_paths(["a/c0", "a/c1", "b/c2", "b/c3", "c4"])
    path = keras_hier.export_saved_model(model, hierarchy, chief_only_path(os.path.join(out, "export")))
    print(f"[worker] exported {path}", flush=True)
    cleanup_worker_paths()


class _KillOnce:
    """Callback factory: SIGKILL this process at (epoch, batch) unless the marker exists."""

    @staticmethod
    def make(epoch, batch, marker):
        import keras

        class KillOnce(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.epoch = -1

            def on_epoch_begin(self, e, logs=None):
                self.epoch = e

            def on_train_batch_begin(self, b, logs=None):
                if (self.epoch, b) == (epoch, batch) and not os.path.exists(marker):
                    open(marker, "w").close()
                    print(f"[worker] killing myself at epoch {epoch} batch {batch}", flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)

        return KillOnce()


def fault(args, strategy):
    import keras

    from keras_hier.distributed import backup_and_restore, barrier, chief_only_path, task_index

    x, y = make_data(args.steps * args.global_batch)
    with strategy.scope():
        model = make_model(args.heads.split(",")[0])
    callbacks = [backup_and_restore(os.path.join(args.out, "backup")),
                 keras.callbacks.CSVLogger(chief_only_path(os.path.join(args.out, "history.csv")), append=True)]
    if args.kill_at and task_index() == 1:
        epoch, batch = (int(v) for v in args.kill_at.split(","))
        callbacks.append(_KillOnce.make(epoch, batch, os.path.join(args.out, "killed")))
    model.fit(dataset(x, y, args.global_batch), epochs=args.epochs, verbose=0, shuffle=False,
              callbacks=callbacks)
    replicas = barrier(model.distribute_strategy)  # the chief has written its last backup
    with open(os.path.join(args.out, "backup", "training_metadata.json")) as f:
        seen = json.load(f)["epoch"]
    print(f"[worker] barrier of {replicas} replicas; the chief's backup holds {seen} epochs", flush=True)
    np.savez(os.path.join(args.out, f"final_{task_index()}.npz"), **weights_of(model))
    with open(os.path.join(args.out, f"after_barrier_{task_index()}.json"), "w") as f:
        json.dump({"replicas": replicas, "backup_epochs": seen}, f)


def jax_equivalence(args):
    """Each head on one device, then under DataParallel over all devices; writes
    `<head>_single.npz`, `<head>_parallel.npz` and `jax.json` (devices, the batch
    layout, heads the backend refused)."""
    import keras

    from keras_hier.distributed import data_parallel

    x, y = make_data(args.steps * args.global_batch)
    refused = {}
    for name in args.heads.split(","):
        model = make_model(name)
        try:
            model.fit(x, y, batch_size=args.global_batch, epochs=1, verbose=0, shuffle=False)
        except NotImplementedError as error:
            refused[name] = str(error)
            continue
        np.savez(os.path.join(args.out, f"{name}_single.npz"), **weights_of(model))
    distribution = data_parallel()
    for name in args.heads.split(","):
        if name not in refused:
            model = make_model(name)
            model.fit(x, y, batch_size=args.global_batch, epochs=1, verbose=0, shuffle=False)
            np.savez(os.path.join(args.out, f"{name}_parallel.npz"), **weights_of(model))
    layout = distribution.get_data_layout((args.global_batch, INPUT_DIM))
    info = {"devices": int(distribution.device_mesh.devices.size), "data_axes": list(layout.axes),
            "refused": refused}
    keras.distribution.set_distribution(None)
    with open(os.path.join(args.out, "jax.json"), "w") as f:
        json.dump(info, f)
    print(f"[worker] {info}", flush=True)


def main(argv=None):
    if os.environ.get("KH_DEBUG"):
        import keras
        keras.config.disable_traceback_filtering()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["equivalence", "fault", "jax"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--heads", default="dense,normface,proxydr")
    parser.add_argument("--save-init", action="store_true", help="also write the initial weights")
    parser.add_argument("--export", default="", help="equivalence: export this head's model (chief only)")
    parser.add_argument("--steps", type=int, default=4, help="global batches per epoch")
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--kill-at", default="", help="EPOCH,BATCH at which worker 1 kills itself once")
    parser.add_argument("--timeout", type=float, default=None, help="collective timeout in seconds")
    parser.add_argument("--heartbeat", type=float, default=None, help="peer heartbeat timeout in seconds")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.mode == "jax":
        return jax_equivalence(args)
    from keras_hier.distributed import strategy_from_environment

    strategy = strategy_from_environment(communication="ring", timeout_seconds=args.timeout,
                                         heartbeat_seconds=args.heartbeat)
    print(f"[worker] {type(strategy).__name__}, {strategy.num_replicas_in_sync} replicas", flush=True)
    (equivalence if args.mode == "equivalence" else fault)(args, strategy)
    print("[worker] done", flush=True)


if __name__ == "__main__":
    sys.exit(main())
