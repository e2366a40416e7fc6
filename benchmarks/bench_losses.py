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
  (`VmHWM`) after two calls minus the resident size just before the loss
  object is built (so the dense S, its distance matrices and the traced
  graph all count).

Section "dense_simloss" (`--dense-classes`, default 1 000 and 10 000): the
dense `SimLoss(S)` against the plain formulation with S as a tensor
(-log sum_c S[y, c] softmax(z)_c, five lines of TensorFlow): first call
(building the loss + tracing + one step) and peak memory in a fresh process
each, step time interleaved call by call in one process; plus the `.keras`
save time of a model whose loss holds a 100 000-class hierarchy against the
same model with cross-entropy (`--save-classes`).

Usage: .venv/bin/python benchmarks/bench_losses.py [--classes 100 1000 10000 100000] [--batch 256]
       [--only factorised|dense]
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report import publish  # noqa: E402

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


def peak_rss_mb():
    """Peak resident set size of this process image (`VmHWM`; unlike `ru_maxrss` it is not inherited from the
    parent across fork + exec, which would report the parent's peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


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
        return dict(peak_mb=peak_rss_mb() - base, loss=float(value), finite=bool(np.all(np.isfinite(grad.numpy()))),
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


# ------------------------------------------------------ dense SimLoss(S)
DENSE_IMPLS = ("plain", "simloss")


def dense_step(impl, similarity_path, labels):
    """(step function, build seconds): loss + gradient w.r.t. the logits in a `tf.function`."""
    import numpy as np
    import tensorflow as tf

    s = np.load(similarity_path)
    start = time.perf_counter()
    if impl == "plain":
        s_t = tf.convert_to_tensor(s)

        def loss(y, z):
            rows = tf.gather(s_t, y)
            return tf.reduce_mean(-tf.math.log(tf.reduce_sum(rows * tf.nn.softmax(z), axis=-1)))
    else:
        from keras_hier.losses import SimLoss

        loss = SimLoss(s)
    del s

    @tf.function
    def step(z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            value = loss(labels, z)
        return value, tape.gradient(value, z)

    return step, time.perf_counter() - start


def dense_worker(num_classes, impls, batch, repeats, threads, similarity_path, measure):
    """measure="first": one impl, build + first call time and peak RSS growth; "time": impls interleaved."""

    import numpy as np
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    rng = np.random.default_rng(1)
    logits = tf.constant(rng.normal(size=(batch, num_classes)).astype(np.float32) * 3)
    labels = tf.constant(rng.integers(0, num_classes, batch).astype(np.int32))
    np.load(similarity_path)  # page cache and allocator warm, like the measured load below
    if "simloss" in impls:
        import keras_hier.losses  # noqa: F401  (import time is not the loss's first call)
    base = rss_mb()
    if measure == "first":
        start = time.perf_counter()
        step, _ = dense_step(impls[0], similarity_path, labels)
        value, grad = step(logits)
        grad.numpy()
        first = time.perf_counter() - start
        return dict(first_s=first, peak_mb=peak_rss_mb() - base, loss=float(value))
    steps = {impl: dense_step(impl, similarity_path, labels)[0] for impl in impls}
    for step in steps.values():
        step(logits)
    times = {impl: [] for impl in impls}
    for _ in range(repeats):
        for impl in impls:
            start = time.perf_counter()
            steps[impl](logits)[1].numpy()
            times[impl].append(time.perf_counter() - start)
    return {impl: dict(time_ms=1000 * float(np.min(t)), median_ms=1000 * float(np.median(t)))
            for impl, t in times.items()}


def save_worker(num_classes, impl):
    """Seconds to `model.save` a tiny model compiled with CE or a hierarchy loss: the first save, and
    the median of the next two (the loss encodes its immutable hierarchy once)."""
    import tempfile

    import keras
    import numpy as np

    from keras_hier import Hierarchy
    from keras_hier.losses import SimLoss

    tree = Hierarchy(random_paths(num_classes))
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(num_classes)])
    loss = (keras.losses.SparseCategoricalCrossentropy(from_logits=True) if impl == "ce"
            else SimLoss.from_hierarchy(tree, beta=1.0))
    model.compile(optimizer="adam", loss=loss)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(3):
            start = time.perf_counter()
            model.save(os.path.join(tmp, f"m{index}.keras"))
            times.append(time.perf_counter() - start)
        size = os.path.getsize(os.path.join(tmp, "m0.keras"))
    return dict(first_s=times[0], save_s=float(np.median(times[1:])), size_mb=size / 2**20)


def run_python(arguments, timeout=1800):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, os.path.abspath(__file__), *arguments], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if done.returncode != 0:
        return dict(error=done.stderr.strip().splitlines()[-1][:160] if done.stderr.strip() else "failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def load_line():
    """The machine's load while the benchmark ran (other processes slow memory-bound losses more than CE)."""
    one, five, fifteen = os.getloadavg()
    return (f"Load average at the end of the run: {one:.1f} / {five:.1f} / {fifteen:.1f} (1 / 5 / 15 min) on "
            f"{os.cpu_count()} cores.")


def _least_disturbed(results):
    """The run with the shortest first call (peak memory from the same run); an error if all failed."""
    good = [r for r in results if "error" not in r]
    return min(good, key=lambda r: r["first_s"]) if good else results[0]


def dense_section(args):
    import tempfile

    import numpy as np

    from keras_hier import Hierarchy

    rows = []
    for num_classes in args.dense_classes:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "s.npy")
            np.save(path, Hierarchy(random_paths(num_classes)).similarity_matrix("exp", beta=1.0))
            common = ["--batch", str(args.batch), "--threads", str(args.threads), "--repeats", str(args.repeats)]
            runs = {impl: [] for impl in DENSE_IMPLS}
            for _ in range(args.first_runs):  # fresh processes, alternating; the least disturbed one counts
                for impl in DENSE_IMPLS:
                    runs[impl].append(run_python(["--dense-worker", str(num_classes), "first", path, impl] + common))
            first = {impl: _least_disturbed(results) for impl, results in runs.items()}
            timing = run_python(["--dense-worker", str(num_classes), "time", path, *DENSE_IMPLS] + common)
        rows.append((num_classes, first, timing))
        print(num_classes, first, timing, flush=True)
    saves = {impl: run_python(["--save-worker", str(args.save_classes), impl]) for impl in ("ce", "simloss")}
    print(saves, flush=True)
    lines = [
        "## Dense SimLoss(S) vs the plain formulation (`keras_hier.losses.SimLoss`)",
        "",
        f"Batch {args.batch}, float32 logits, S = exp(-t) of a random ragged tree loaded from a `.npy` file. "
        "Plain = `tf.gather(S, y)`, softmax, sum, -log with S a `tf.Tensor`. First call = building the loss "
        "from the array + tracing + one forward/backward step, and peak = peak RSS growth over that (fresh "
        f"process each, the fastest of {args.first_runs} alternating runs). Step = forward + gradient w.r.t. the logits, best of {args.repeats} interleaved calls "
        f"(median in brackets), {args.threads or 'default'} TensorFlow thread(s).",
        "",
        "| C | implementation | first call | ratio | step | ratio | peak memory | ratio | loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for num_classes, first, timing in rows:
        plain_first, plain_time = first["plain"], timing.get("plain", {})
        for impl in DENSE_IMPLS:
            f, t = first[impl], timing.get(impl, {})
            if "error" in f or "error" in timing:
                lines.append(f"| {num_classes} | {impl} | {f.get('error') or timing.get('error')} | | | | | | |")
                continue
            lines.append(
                f"| {num_classes} | {'plain (S tensor)' if impl == 'plain' else 'SimLoss(S)'} | {f['first_s']:.2f} s "
                f"| {f['first_s'] / plain_first['first_s']:.2f}x | {t['time_ms']:.2f} ms ({t['median_ms']:.2f}) "
                f"| {t['time_ms'] / plain_time['time_ms']:.2f}x | {f['peak_mb']:.0f} MiB "
                f"| {f['peak_mb'] / max(plain_first['peak_mb'], 1):.2f}x | {f['loss']:.4f} |")
    ce, sim = saves["ce"], saves["simloss"]
    if "error" not in ce and "error" not in sim:
        lines += ["", f"`.keras` save of a Dense model compiled with `SimLoss.from_hierarchy` on a "
                  f"{args.save_classes}-class tree: first save {sim['first_s']:.2f} s, later saves "
                  f"{sim['save_s']:.2f} s ({sim['size_mb']:.1f} MiB) vs cross-entropy {ce['first_s']:.2f} s / "
                  f"{ce['save_s']:.2f} s ({ce['size_mb']:.1f} MiB): {sim['first_s'] / ce['first_s']:.2f}x first, "
                  f"{sim['save_s'] / ce['save_s']:.2f}x later (the first save encodes the tree: "
                  "`Hierarchy.to_config`)."]
    lines += ["", load_line()]
    publish("dense_simloss", lines, write=not args.no_write)


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
    parser.add_argument("--dense-classes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--save-classes", type=int, default=100_000)
    parser.add_argument("--first-runs", type=int, default=3, help="fresh processes per first-call measurement")
    parser.add_argument("--only", choices=["factorised", "dense"], help="run one section only")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--dense-worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--save-worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print only, do not update BENCHMARKS.md")
    args = parser.parse_args()
    if args.worker:
        num_classes, measure, *names = args.worker
        print(json.dumps(worker(int(num_classes), names, args.batch, args.repeats, args.threads, measure)))
        return
    if args.dense_worker:
        num_classes, measure, path, *impls = args.dense_worker
        print(json.dumps(dense_worker(int(num_classes), impls, args.batch, args.repeats, args.threads, path,
                                      measure)))
        return
    if args.save_worker:
        print(json.dumps(save_worker(int(args.save_worker[0]), args.save_worker[1])))
        return
    if args.only != "factorised":
        dense_section(args)
    if args.only != "dense":
        factorised_section(args)


def factorised_section(args):
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
        "Peak = peak resident set size (`VmHWM`) of a fresh process per configuration (two calls) minus its "
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
    lines += ["", load_line()]
    publish("losses", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
