"""Forward+backward time and peak memory: CE vs dense SimLoss vs tree-factorised
SimLoss / HXE / soft labels, C = 100 .. 100 000 classes.

For every C a subprocess builds a random ragged tree (leaf depths 6-10) and
float32 logits [256, C], and measures

- time (one process per C, all losses side by side): a `tf.function`
  computing the mean loss and its gradient w.r.t. the logits, called in
  rounds that interleave the losses; best of `--repeats` calls per loss (the
  `timeit` convention: the least disturbed by other processes), with
  `--threads` TensorFlow threads (default 1: steadier on a shared machine);
- peak memory (one fresh process per C and loss): peak resident set size
  (`ru_maxrss`) after two calls minus the resident size just before the loss
  object is built (so the dense S, its distance matrices and the traced
  graph all count).

Usage: .venv/bin/python benchmarks/bench_losses.py [--classes 100 1000 10000 100000] [--batch 256]
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

LOSSES = ("ce", "simloss_dense", "simloss_tree", "hxe", "soft_labels")
LABELS = {"ce": "cross-entropy (Keras)", "simloss_dense": "SimLoss dense S", "simloss_tree": "SimLoss factorised",
          "hxe": "HXE factorised", "soft_labels": "soft labels factorised"}
DENSE_LIMIT = 10_000  # the dense S of C = 100 000 needs 40 GB (float32) plus its int32 distance matrices


def random_paths(num_classes, seed=0, min_depth=6, max_depth=10):
    import numpy as np

    rng = np.random.default_rng(seed)
    # branching so that the deepest level has roughly C nodes
    branching = max(2, int(round(num_classes ** (1.0 / (max_depth - 1)))) + 1)
    paths = []
    for c in range(num_classes):
        depth = int(rng.integers(min_depth, max_depth + 1))
        inner = rng.integers(0, branching, depth - 1)
        paths.append(tuple(f"n{v}" for v in inner) + (f"class{c}",))
    return paths


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(tree, loss_name):
    import keras

    from keras_hier.losses import HierarchicalCrossEntropy, SimLoss, SoftLabelCrossEntropy

    if loss_name == "ce":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if loss_name == "simloss_dense":
        return SimLoss(tree.similarity_matrix("exp", beta=1.0))
    if loss_name == "simloss_tree":
        return SimLoss.from_hierarchy(tree, beta=1.0)
    if loss_name == "hxe":
        return HierarchicalCrossEntropy(tree, alpha=0.1)
    return SoftLabelCrossEntropy(tree, beta=1.0)


def worker(num_classes, names, batch, repeats, threads, measure):
    """measure="time": all `names` interleaved in rounds (best call per loss);
    "memory": one loss, peak RSS growth from building it to two calls."""
    import resource

    import numpy as np
    import tensorflow as tf

    from keras_hier import Hierarchy

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    tree = Hierarchy(random_paths(num_classes))
    rng = np.random.default_rng(1)
    logits = tf.constant(rng.normal(size=(batch, num_classes)).astype(np.float32) * 3)
    labels = tf.constant(rng.integers(0, num_classes, batch).astype(np.int32))
    base = rss_mb()
    steps = {}
    for name in names:
        loss = build(tree, name)

        @tf.function
        def step(z, loss=loss):
            with tf.GradientTape() as tape:
                tape.watch(z)
                value = loss(labels, z)
            return value, tape.gradient(value, z)

        steps[name] = step
        for _ in range(2):
            value, grad = step(logits)
    if measure == "memory":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return dict(peak_mb=peak - base, loss=float(value), finite=bool(np.all(np.isfinite(grad.numpy()))),
                    depth=tree.depth, nodes=tree.num_node_ids)
    times = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            start = time.perf_counter()
            value, grad = steps[name](logits)
            grad.numpy()
            times[name].append(time.perf_counter() - start)
    return {name: dict(time_ms=1000 * float(np.min(t)), median_ms=1000 * float(np.median(t)))
            for name, t in times.items()}


def run_worker(num_classes, names, args, measure, repeats):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, os.path.abspath(__file__), "--worker", str(num_classes), measure, *names,
               "--batch", str(args.batch), "--repeats", str(repeats), "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if done.returncode != 0:
        return dict(error=done.stderr.strip().splitlines()[-1][:120] if done.stderr.strip() else "failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000, 10000, 100000])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow intra/inter-op threads (0: default)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print only, do not update BENCHMARKS.md")
    args = parser.parse_args()
    if args.worker:
        num_classes, measure, *names = args.worker
        print(json.dumps(worker(int(num_classes), names, args.batch, args.repeats, args.threads, measure)))
        return

    from _report import publish

    rows = []
    for num_classes in args.classes:
        results = {}
        names = [n for n in LOSSES if not (n == "simloss_dense" and num_classes > DENSE_LIMIT)]
        repeats = args.repeats if num_classes < 100_000 else max(3, args.repeats // 2)
        timing = run_worker(num_classes, names, args, "time", repeats)
        for name in LOSSES:
            if name not in names:
                gb = num_classes**2 * 4 / 1e9
                results[name] = dict(skipped=f"not run: S alone needs {gb:.0f} GB")
                continue
            memory = run_worker(num_classes, [name], args, "memory", 1)
            results[name] = dict(memory, **timing.get(name, {})) if "error" not in timing else timing
            print(num_classes, name, results[name], flush=True)
        rows.append((num_classes, results))

    lines = [
        "## Losses: cross-entropy vs dense vs tree-factorised SimLoss / HXE / soft labels (`keras_hier.losses`)",
        "",
        f"Batch {args.batch}, float32 logits, random ragged trees (leaf depths 6-10), TensorFlow `tf.function` "
        "computing the mean loss and its gradient w.r.t. the logits, "
        f"{args.threads or 'default'} TensorFlow thread(s); all losses of one C run in one process, interleaved "
        f"call by call; time = best of {args.repeats} calls after warm-up (median in brackets). "
        "Peak = peak resident set size (`ru_maxrss`) of a fresh process per configuration (two calls) minus its "
        "size just before the loss is built (includes the dense S and the distance matrices it is built from, and the traced "
        "graph). Ratio = time / cross-entropy time.",
        "",
        "| C | depth / nodes | loss | fwd+bwd time | ratio to CE | peak memory | loss value |",
        "|---|---|---|---|---|---|---|",
    ]
    for num_classes, results in rows:
        ce_time = results["ce"].get("time_ms")
        for name in LOSSES:
            r = results[name]
            if "skipped" in r or "error" in r:
                lines.append(f"| {num_classes} | | {LABELS[name]} | {r.get('skipped') or r.get('error')} | | | |")
                continue
            ratio = f"{r['time_ms'] / ce_time:.2f}x" if ce_time else ""
            lines.append(f"| {num_classes} | {r['depth']} / {r['nodes']} | {LABELS[name]} | {r['time_ms']:.2f} ms "
                         f"({r['median_ms']:.2f}) "
                         f"| {ratio} | {r['peak_mb']:.0f} MiB | {r['loss']:.4f} |")
    publish("losses", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
