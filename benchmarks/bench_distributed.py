"""Multi-worker training on one machine: throughput of 2 local workers vs 1, and what the heads' reductions cost.

    .venv/bin/python benchmarks/bench_distributed.py [--steps 30] [--global-batch 64] [--no-write]

Starts `MultiWorkerMirroredStrategy` workers on 127.0.0.1 (CPU, gRPC ring
all-reduce; `keras_hier.distributed.strategy_from_environment` from
`TF_CONFIG`) and, for comparison, one process with the same global batch:

1. images/s of `fit` (small CNN on 32x32x3, ProxyDR with EMA proxies and a
   dynamic scale, 100 classes), timed over the second epoch (tracing
   excluded). On a 2-core machine two workers share the cores, so this is a
   sanity figure (the cluster runs and is not pathologically slow), not a
   speed claim.
2. The communication the EMA / dynamic-scale updates add per step: payload
   bytes (`keras_hier.distributed.reduction_bytes`) next to the gradient
   all-reduce, and the measured time of those collectives alone (the same
   all-reduces / all-gather the heads issue, in a `tf.function`, 2 workers).

Writes the `distributed` section of BENCHMARKS.md.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import publish  # noqa: E402

CLASSES, EMBEDDING, IMAGE = 100, 128, (32, 32, 3)


# ------------------------------------------------------------------ the worker
def _model():
    import keras

    import keras_hier

    backbone = keras_hier.backbones.small_cnn(IMAGE, filters=(16, 32, 64))
    model = keras_hier.build_classifier(backbone, "proxydr", num_classes=CLASSES, embedding_dim=EMBEDDING,
                                        proxy_mode="ema", dynamic_scale=True)
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _throughput(strategy, args):
    import numpy as np
    import tensorflow as tf

    from keras_hier.distributed import shard_dataset

    rng = np.random.default_rng(0)
    n = args.steps * args.global_batch
    x = rng.random((n,) + IMAGE, dtype=np.float32)
    y = rng.integers(0, CLASSES, n).astype("int32")
    data = shard_dataset(tf.data.Dataset.from_tensor_slices((x, y)), args.global_batch).cache().prefetch(2)
    with strategy.scope():
        model = _model()
    times = []

    class Clock(__import__("keras").callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(data, epochs=2, verbose=0, callbacks=[Clock()])
    return n / times[-1], model


def _collectives(strategy, args, batched=False, repeats=50):
    """Seconds per step of the heads' reductions alone: all-reduce [C, D] + [C] + 3 scalars, all-gather [B].

    `batched=False` issues them as the heads do (one `all_reduce` per tensor);
    `batched=True` passes the five tensors to one `all_reduce` call, which
    tf.distribute packs into fewer collectives.
    """
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    local = args.global_batch // replicas

    @tf.function
    def step():
        def replica():
            context = tf.distribute.get_replica_context()
            values = [tf.ones((CLASSES, EMBEDDING)), tf.ones((CLASSES,))] + [tf.constant(1.0)] * 3
            if batched:
                reduced = context.all_reduce("sum", values)
            else:
                reduced = [context.all_reduce("sum", v) for v in values]
            angles = context.all_gather(tf.ones((local,)), axis=0)
            return tf.add_n([tf.reduce_sum(v) for v in reduced]) + tf.reduce_sum(angles)

        return strategy.run(replica)

    step()  # trace
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def worker(args):
    import numpy as np

    from keras_hier.distributed import reduction_bytes, strategy_from_environment, task_index

    strategy = strategy_from_environment(communication="ring")
    images_per_second, model = _throughput(strategy, args)
    result = {"replicas": int(strategy.num_replicas_in_sync), "images_per_second": images_per_second,
              "collective_seconds": _collectives(strategy, args),
              "batched_collective_seconds": _collectives(strategy, args, batched=True),
              "bytes": reduction_bytes(model, args.global_batch),
              "params": int(sum(np.prod(w.shape) for w in model.trainable_weights))}
    with open(os.path.join(args.out, f"result_{task_index()}_{result['replicas']}.json"), "w") as f:
        json.dump(result, f)


# ------------------------------------------------------------------ the driver
def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run(workers, args, out):
    """Runs `workers` processes (1: no TF_CONFIG) to completion; returns the chief's result."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", KERAS_BACKEND="tensorflow")
    env.pop("TF_CONFIG", None)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(workers)]}
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--out", out, "--steps", str(args.steps),
               "--global-batch", str(args.global_batch)]
    procs = []
    try:
        for index in range(workers):
            if workers > 1:
                env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            log = open(os.path.join(out, f"worker{index}_{workers}.log"), "w")
            procs.append(subprocess.Popen(command, env=dict(env), stdout=log, stderr=subprocess.STDOUT))
        for proc in procs:
            if proc.wait(timeout=args.timeout) != 0:
                raise RuntimeError(f"a worker failed; see the logs in {out}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    with open(os.path.join(out, f"result_0_{workers}.json")) as f:
        return json.load(f)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="global batches per epoch")
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_distributed_") as out:
        one = _run(1, args, out)
        two = _run(2, args, out)
    load = max(load_before, os.getloadavg()[0])
    sizes = two["bytes"]
    kib = 1024.0
    lines = [
        "## Multi-worker training (2 local workers vs 1 process)",
        "",
        f"Small CNN (16-32-64) on 32x32x3, ProxyDR head with EMA proxies and a dynamic scale, C = {CLASSES}, "
        f"D = {EMBEDDING}, global batch {args.global_batch}, {args.steps} steps, second epoch timed; "
        "`MultiWorkerMirroredStrategy` over gRPC on 127.0.0.1 (ring all-reduce), CPU.",
        "",
        "| run | replicas | images/s |",
        "|---|---|---|",
        f"| 1 process | {one['replicas']} | {one['images_per_second']:.0f} |",
        f"| 2 workers | {two['replicas']} | {two['images_per_second']:.0f} |",
        "",
        "A sanity figure: both workers share this machine's 2 cores (and the loopback network), so no speed-up "
        "is expected; on separate machines each worker brings its own cores or GPUs. "
        f"Load average around the run: {load:.1f} (other jobs shared the cores).",
        "",
        "Communication per step (float32 payload; a ring all-reduce sends about 2 (N - 1) / N of it per "
        "worker):",
        "",
        "| reduction | bytes per step |",
        "|---|---|",
        f"| gradients ({two['params']} trainable weights; any data-parallel training) | "
        f"{sizes['gradients']} ({sizes['gradients'] / kib:.0f} KiB) |",
        f"| EMA proxies: class sums [C, D] + counts [C] | {sizes['ema']} ({sizes['ema'] / kib:.1f} KiB) |",
        f"| dynamic scale: 3 scalar sums + all-gather of the {args.global_batch} target angles | "
        f"{sizes['dynamic_scale']} |",
        f"| heads total, relative to the gradients | {sizes['heads']} "
        f"({100.0 * sizes['heads'] / sizes['gradients']:.1f} %) |",
        "",
        f"Measured time of the heads' collectives alone, 2 workers: "
        f"{1000 * two['collective_seconds']:.2f} ms per step as the heads issue them (5 all-reduces + "
        f"1 all-gather), {1000 * two['batched_collective_seconds']:.2f} ms with the five sums in one "
        f"`all_reduce` call; a training step takes {1000 * args.global_batch / two['images_per_second']:.0f} ms "
        f"({100 * two['collective_seconds'] * two['images_per_second'] / args.global_batch:.1f} % for the "
        "heads' collectives). On loopback gRPC each collective costs a few milliseconds of latency whatever "
        "its size, so the count matters more than the bytes here.",
    ]
    publish("distributed", lines, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
