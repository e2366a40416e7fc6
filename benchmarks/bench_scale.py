"""Evaluation at scale: `evaluate` of a 100 000-class model, hierarchical inference at 65 000 classes.

Two rows of BENCHMARKS.md's "scale" section (ImageNet-21k / iNaturalist sizes):

- `evaluate` of a 100 000-class model on 50 000 inputs, against
  `model.predict` over the same inputs. The model is cheap on purpose (a
  64-d Dense embedding and a Dense(100 000) head whose class vectors are the
  class centres of tree-structured inputs, so the measures are not trivial)
  on a synthetic ragged 100 000-class tree. `model.predict` is run in chunks
  of 2 500 inputs whose outputs are dropped: one call would have to return
  the 50 000 x 100 000 float32 scores (20 GB). Targets: peak memory <= 4 GiB
  beyond the model (peak RSS during `evaluate` minus the RSS before it, with
  the model, the data and TensorFlow loaded), time <= 2x `model.predict`.
- `hierarchical_inference` on the WordNet-leaves tree (64 958 classes, 19
  levels; sampled estimator), and the estimate against the exact value on a
  5 000-class subset of the same tree (where both run).

Peak memory: the process's VmHWM (reset through /proc/self/clear_refs before
each measurement) minus the RSS at the start of it.

Run: .venv/bin/python benchmarks/bench_scale.py [--stage evaluate inference] [--classes 100000]
     [--samples 50000] [--exact-classes 5000]
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _report import publish  # noqa: E402

NAMES = ("spearman_classwise", "spearman_classwise_offdiag", "spearman_pairwise")


# ------------------------------------------------------------------ memory
def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def load_note():
    """The machine's 1/5/15-minute load averages: wall times on a shared machine are inflated by them."""
    one, five, fifteen = os.getloadavg()
    return (f"Wall-clock times; load average at the end {one:.1f} / {five:.1f} / {fifteen:.1f} on "
            f"{os.cpu_count()} cores (other jobs shared the machine when the load exceeds the core count).")


def measured(fn):
    """(result, seconds, peak bytes above the RSS at the start)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:  # pragma: no cover
        pass
    start = _status("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    return out, seconds, max(_status("VmHWM") - start, 0)


# -------------------------------------------------------------- evaluate
def synthetic_tree(num_classes, seed=0, branching=12):
    """A ragged tree: leaf depths 2..6, node names drawn per level (grouped by full path)."""
    from keras_hier import Hierarchy

    rng = np.random.default_rng(seed)
    depths = rng.integers(2, 7, size=num_classes)
    inner = rng.integers(0, branching, size=(num_classes, 5))
    paths = [[f"n{v}" for v in inner[i, :depths[i] - 1]] + [f"c{i}"] for i in range(num_classes)]
    return Hierarchy(paths)


def tree_data(h, n, dim, seed=0, noise=8.0):
    """Inputs near tree-structured class centres (sum of node vectors along the path)."""
    rng = np.random.default_rng(seed)
    nodes = rng.normal(size=(h.num_node_ids, dim)).astype(np.float32) / np.sqrt(h.depth)
    centres = np.zeros((h.num_classes, dim), dtype=np.float32)
    for level in range(h.depth):
        centres += nodes[h.node_ids[:, level]] * h.level_mask[:, level, None]
    y = rng.integers(0, h.num_classes, size=n)
    x = centres[y] + noise / np.sqrt(dim) * rng.normal(size=(n, dim)).astype(np.float32)
    return x.astype(np.float32), y, centres


def cheap_model(centres, scale=10.0):
    """Input -> Dense embedding (identity) -> Dense head whose class vectors are the centres."""
    import keras

    c, dim = centres.shape
    inputs = keras.Input((dim,))
    emb = keras.layers.Dense(dim, name="embedding")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(c, name="head")(emb))
    model.get_layer("embedding").set_weights([np.eye(dim, dtype=np.float32), np.zeros(dim, np.float32)])
    unit = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    model.get_layer("head").set_weights([scale * unit.T, np.zeros(c, np.float32)])
    return model


def decoder_cost(model, h, x):
    """Seconds of evaluate's per-batch step on x without and with the in-graph expected-cost decoder."""
    from keras_hier.model_scoring import Scorer, embedding_model

    base, _ = embedding_model(model)
    times = []
    for decoders in ((), ("expected_cost",)):
        scorer = Scorer(base, 5, hierarchy=h, decoders=decoders)
        scorer.predict_on_batch(x[:256])
        t0 = time.perf_counter()
        for start in range(0, len(x), 256):
            scorer.predict_on_batch(x[start:start + 256])
        times.append(time.perf_counter() - t0)
    return times


def predict_in_chunks(model, x, chunk=2500, batch_size=256):
    for start in range(0, len(x), chunk):
        model.predict(x[start:start + chunk], batch_size=batch_size, verbose=0)


def bench_evaluate(args):
    from keras_hier import evaluate

    h = synthetic_tree(args.classes)
    x, y, centres = tree_data(h, args.samples, args.dim)
    model = cheap_model(centres)
    predict_in_chunks(model, x[:512])  # warm-up: tracing is not timed
    _, t_predict, m_predict = measured(lambda: predict_in_chunks(model, x))
    results, t_eval, m_eval = measured(lambda: evaluate(model, (x, y), h, n_permutations=args.permutations,
                                                        batch_size=256))
    t_plain, t_decoder = decoder_cost(model, h, x[:5000])
    cls, ret = results["classification"], results["retrieval"]
    inf = results["inference"].get("W", {})
    row = {"C": h.num_classes, "N": args.samples, "depth": h.depth, "t_predict": t_predict, "m_predict": m_predict,
           "t_eval": t_eval, "m_eval": m_eval, "seconds": results["meta"]["seconds"], "acc": cls["accuracy"],
           "ahc": cls["ahc"], "t_plain": t_plain, "t_decoder": t_decoder, "ahs": ret["ahs"],
           "map": ret["map_at_r"], "pair": inf.get("spearman_pairwise"), "method": inf.get("method")}
    print(row, flush=True)
    return row


# ------------------------------------------------------------- inference
def tree_representatives(h, dim=64, seed=0, noise=2.0):
    rng = np.random.default_rng(seed)
    nodes = rng.normal(size=(h.num_node_ids, dim)) / np.sqrt(h.depth)
    reps = np.zeros((h.num_classes, dim))
    for level in range(h.depth):
        reps += nodes[h.node_ids[:, level]] * h.level_mask[:, level, None]
    return reps + noise / np.sqrt(dim) * rng.normal(size=reps.shape)


def bench_inference(args):
    from keras_hier import Hierarchy, hierarchies
    from keras_hier.inference import hierarchical_inference

    h = hierarchies.wordnet_nouns()
    reps = tree_representatives(h)
    big, t_big, m_big = measured(lambda: hierarchical_inference(reps, h, n_permutations=args.permutations))
    rng = np.random.default_rng(1)
    sub = np.sort(rng.choice(h.num_classes, size=args.exact_classes, replace=False))
    hs = Hierarchy([h.paths[i] for i in sub], classes=[h.classes[i] for i in sub])
    sub_reps = reps[sub]
    exact, t_exact, m_exact = measured(lambda: hierarchical_inference(sub_reps, hs, n_permutations=20,
                                                                      method="exact"))
    est, t_est, m_est = measured(lambda: hierarchical_inference(sub_reps, hs, n_permutations=20, method="sampled"))
    row = {"C": h.num_classes, "depth": h.depth, "t_big": t_big, "m_big": m_big, "big": big,
           "C_small": hs.num_classes, "t_exact": t_exact, "m_exact": m_exact, "t_est": t_est, "m_est": m_est,
           "exact": exact, "est": est}
    print({k: v for k, v in row.items() if k not in ("big", "exact", "est")}, flush=True)
    for name in NAMES:
        print(name, exact[name], est[name], est["confidence_interval"][name], flush=True)
    return row


# ----------------------------------------------------------------- report
def _gib(b):
    return f"{b / 2**30:.2f} GiB"


def evaluate_lines(r):
    s = r["seconds"]
    ratio = r["t_eval"] / r["t_predict"]
    return [
        f"`evaluate` of a {r['C']:,}-class model on {r['N']:,} inputs", "",
        f"Synthetic ragged tree ({r['C']:,} classes, {r['depth']} levels), inputs D = 64, model = Dense(64) "
        f"embedding + Dense({r['C']:,}) head. `model.predict` runs in chunks of 2 500 inputs (one call would "
        f"return {r['N'] * r['C'] * 4 / 1e9:.0f} GB of scores).", "",
        "| | time | peak memory beyond the model | target |", "|---|---|---|---|",
        f"| `model.predict` (same inputs) | {r['t_predict']:.1f} s | {_gib(r['m_predict'])} | |",
        f"| `keras_hier.evaluate` | {r['t_eval']:.1f} s ({ratio:.2f}x predict) | {_gib(r['m_eval'])} | "
        f"<= 2x predict ({'met' if ratio <= 2 else 'NOT met'}), <= 4 GiB "
        f"({'met' if r['m_eval'] <= 4 * 2**30 else 'NOT met'}) |", "",
        f"Inside `evaluate`: model pass with in-graph top-k (argmax decoder only: the default above "
        f"20 000 classes) {s.get('model_pass', 0):.1f} s, "
        f"retrieval (N x N blockwise, HS@1..250, MAP@R) {s.get('retrieval', 0):.1f} s, hierarchical inference "
        f"of W and proto ({r['method']}) {s.get('inference', 0):.1f} s. Results: accuracy {r['acc']:.3f}, AHC "
        f"{r['ahc']:.3f}, AHS@250 {r['ahs']:.3f}, MAP@R {r['map']:.3f}, pairwise Spearman of W {r['pair']:.3f}.", "",
        f"The expected-cost decoder (`decoders=(\"argmax\", \"expected_cost\")`) is the costly part at this C: "
        f"evaluate's per-batch step on 5 000 inputs takes {r['t_plain']:.1f} s without it and {r['t_decoder']:.1f} s "
        f"with it ({r['t_decoder'] / r['t_plain']:.1f}x; O(C x depth) per input in `keras_hier.decoding`).", ""]


def inference_lines(r):
    big, exact, est = r["big"], r["exact"], r["est"]
    lines = [
        f"Hierarchical inference at C = {r['C']:,} (WordNet leaf nouns, {r['depth']} levels)", "",
        f"Representatives: tree-structured random vectors (D = 64) with noise. Sampled estimator "
        f"({big['num_anchors']} anchors x {big['num_columns']} columns, {big['num_pairs']:,} pairs, "
        f"{big.get('null', {}).get('n_permutations', 0)} permutations; ceilings exact).", "",
        "| run | classes | method | time | peak memory |", "|---|---|---|---|---|",
        f"| full tree | {r['C']:,} | sampled | {r['t_big']:.1f} s | {_gib(r['m_big'])} |",
        f"| subset | {r['C_small']:,} | exact (20 permutations) | {r['t_exact']:.1f} s | {_gib(r['m_exact'])} |",
        f"| subset | {r['C_small']:,} | sampled (20 permutations) | {r['t_est']:.1f} s | {_gib(r['m_est'])} |", "",
        f"Estimate against the exact value at C = {r['C_small']:,}:", "",
        "| measure | exact | estimate [95% interval] | error | ceiling exact / from histograms | "
        f"value at C = {r['C']:,} [95% interval] |", "|---|---|---|---|---|---|"]
    for name in NAMES:
        lo, hi = est["confidence_interval"][name]
        blo, bhi = big["confidence_interval"][name]
        lines.append(f"| {name} | {exact[name]:.4f} | {est[name]:.4f} [{lo:.4f}, {hi:.4f}] | "
                     f"{est[name] - exact[name]:+.4f} | {exact['ceiling'][name]:.4f} / {est['ceiling'][name]:.4f} | "
                     f"{big[name]:.4f} [{blo:.4f}, {bhi:.4f}] |")
    return lines + [""]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", nargs="+", default=["evaluate", "inference"], choices=["evaluate", "inference"])
    parser.add_argument("--classes", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--exact-classes", type=int, default=5000)
    parser.add_argument("--permutations", type=int, default=100)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    title = "## Scale: {} without C x C objects"
    if "evaluate" in args.stage:  # each stage owns its section, so they can run (and be re-run) separately
        lines = [title.format("`keras_hier.evaluate`"), ""] + evaluate_lines(bench_evaluate(args))
        publish("scale_evaluate", lines + [load_note()], write=not args.no_write)
    if "inference" in args.stage:
        lines = [title.format("`hierarchical_inference`"), ""] + inference_lines(bench_inference(args))
        publish("scale_inference", lines + [load_note()], write=not args.no_write)


if __name__ == "__main__":
    main()
