"""Blockwise `retrieval` vs the full-matrix formulation (N x N, argsort).

The full-matrix version follows the reference code: the N x N float64 cosine
matrix and the N x N class-similarity matrix, each argsorted row by row. It
needs about 4 x 8 N^2 bytes at its peak: 3.2 GB at N = 10 000 and 80 GB at
N = 50 000, more than this 24 GiB machine has, so at N = 50 000 only the
blockwise version runs (its full-matrix column says why).

Run: .venv/bin/python benchmarks/bench_eval.py [--sizes 10000 50000] [--full-max 10000]
"""

import argparse
import os
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _report import publish  # noqa: E402

from keras_hier import hierarchies  # noqa: E402
from keras_hier.retrieval_metrics import retrieval, tree_similarity_for_hs  # noqa: E402

KS = (1, 5, 10, 50, 100, 250)


def full_matrix_retrieval(x, y, hierarchy, k_hs=250, ks=KS):
    """The reference formulation: full N x N matrices and row argsorts."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(y)
    sigma = tree_similarity_for_hs(hierarchy)
    cos = x @ x.T
    np.fill_diagonal(cos, -np.inf)
    order = np.argsort(-cos, axis=1)[:, : n - 1]
    del cos
    sim_cls = sigma[y][:, y]
    np.fill_diagonal(sim_cls, -np.inf)  # the query itself is not a candidate
    best = -np.sort(-sim_cls, axis=1)[:, :k_hs]
    del sim_cls
    gained = np.cumsum(sigma[y[:, None], y[order[:, :k_hs]]], axis=1)
    curve = np.mean(gained / np.cumsum(best, axis=1), axis=0)
    ahs = np.trapezoid(curve, dx=1.0 / (k_hs - 1))
    r = np.bincount(y)[y] - 1
    rel = y[order] == y[:, None]
    del order
    recall = {k: float(np.mean(np.any(rel[:, :k], axis=1))) for k in ks}
    pos = np.arange(1, n)
    ap = np.sum(np.cumsum(rel, axis=1) / pos * rel * (pos[None, :] <= r[:, None]), axis=1) / r
    return {"hs_curve": curve, "ahs": ahs, "recall_at_k": recall, "map_at_r": float(np.mean(ap))}


def data(n, hierarchy, dim=128, seed=0):
    """Tree-structured embeddings: sum of node vectors along each class path + noise."""
    rng = np.random.default_rng(seed)
    nodes = rng.normal(size=(hierarchy.num_node_ids, dim))
    centres = nodes[hierarchy.node_ids].sum(1)
    y = rng.integers(0, hierarchy.num_classes, size=n)
    return centres[y] + 2.5 * rng.normal(size=(n, dim)), y


def measure(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--full-max", type=int, default=10_000,
                        help="largest N for the full-matrix version (memory ~ 32 N^2 bytes)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    h = hierarchies.cifar100()
    rows = []
    for n in args.sizes:
        x, y = data(n, h)
        block, t_block, m_block = measure(lambda x=x, y=y: retrieval(x, y, h, ks=KS, hs_max_k=250))
        row = {"n": n, "t_block": t_block, "m_block": m_block, "ahs": block["ahs"],
               "map": block["map_at_r"], "r1": block["recall_at_k"][1]}
        if n <= args.full_max:
            full, t_full, m_full = measure(lambda x=x, y=y: full_matrix_retrieval(x, y, h))
            diff = max(np.max(np.abs(np.asarray(block["hs_curve"]) - full["hs_curve"])),
                       abs(block["ahs"] - full["ahs"]), abs(block["map_at_r"] - full["map_at_r"]),
                       max(abs(block["recall_at_k"][k] - full["recall_at_k"][k]) for k in KS))
            row.update(t_full=t_full, m_full=m_full, diff=diff)
        rows.append(row)
        print(row, flush=True)

    lines = ["## Retrieval: blockwise top-k vs full N x N matrix (`keras_hier.retrieval_metrics`)", "",
             "D = 128, C = 100 (CIFAR-100 tree), float64, HS@k for k = 1..250, Recall@k, MAP@R. "
             "Peak = peak of Python/NumPy allocations (tracemalloc).", "",
             "| N | blockwise time | blockwise peak | full-matrix time | full-matrix peak | speed-up | "
             "memory ratio | max abs difference | AHS@250 | MAP@R | Recall@1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "t_full" in r:
            full = (f"{r['t_full']:.1f} s | {r['m_full'] / 2**20:.0f} MiB | {r['t_full'] / r['t_block']:.1f}x | "
                    f"1/{r['m_full'] / r['m_block']:.0f} | {r['diff']:.1e}")
        else:
            need = 4 * 8 * r["n"] ** 2 / 2**30
            full = f"not run: needs ~{need:.0f} GiB (> 24 GiB RAM) | | | | "
        lines.append(f"| {r['n']} | {r['t_block']:.1f} s | {r['m_block'] / 2**20:.0f} MiB | {full} | "
                     f"{r['ahs']:.4f} | {r['map']:.4f} | {r['r1']:.4f} |")
    publish("eval", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
