"""The paper's grid: every head x training option x seed, resumable, one table.

    python -m recipes.paper --config cpu_cifar10 --dataset PATH/cifar10_jpeg \\
        --heads softmax normface proxydr --options standard ema --seeds 0 1 2 \\
        --out runs/paper_cifar10

Configurations (as in Kim et al., arXiv 2301.11065): Softmax; NormFace and
ProxyDR each with standard, EMA, dynamic, EMA+dynamic, MDS, MDS+dynamic; CORR
(with MDS proxies). Each (configuration, seed) is one `recipes.train` run in
`OUT/<head>-<option>/seed<k>/`; a run whose `summary.json` exists is skipped
and an interrupted run resumes from its last epoch, so re-running the same
command continues the grid. The result is `OUT/table.md` (+ `table.json`):
mean +- std over seeds per configuration, and a paired test (paired t-test
over seeds, two-sided) of ProxyDR vs NormFace for every option and measure.
"""

import argparse
import json
import math
import os
import sys

import numpy as np

OPTIONS = {
    "standard": {},
    "ema": {"ema": True},
    "dynamic": {"dynamic": True},
    "ema+dynamic": {"ema": True, "dynamic": True},
    "mds": {"mds": True},
    "mds+dynamic": {"mds": True, "dynamic": True},
}

# column -> (path in the run's results, label); "summary" reads summary.json.
MEASURES = {
    "accuracy": (("classification", "accuracy"), "Acc"),
    "W_classwise": (("inference", "W", "spearman_classwise"), "ρ_cls W"),
    "W_pairwise": (("inference", "W", "spearman_pairwise"), "ρ_pair W"),
    "proto_classwise": (("inference", "proto", "spearman_classwise"), "ρ_cls proto"),
    "proto_pairwise": (("inference", "proto", "spearman_pairwise"), "ρ_pair proto"),
    "ahc": (("classification", "ahc"), "AHC"),
    "ahd_at_5": (("classification", "ahd_at_k"), "AHD@5"),
    "hp_at_5": (("classification", "hp_at_k"), "HP@5"),
    "ahs_250": (("retrieval", "ahs_250"), "AHS@250"),
}


def grid(heads=("softmax", "normface", "proxydr", "corr"), options=tuple(OPTIONS)):
    """The list of `(name, head, option overrides)` of the paper's grid."""
    cells = []
    for head in heads:
        if head == "softmax":
            cells.append(("softmax", "softmax", {}))
        elif head == "corr":
            cells.append(("corr", "corr", {"mds": True}))
        else:
            for option in options:
                if option not in OPTIONS:
                    raise ValueError(f"unknown option {option!r}; choose from {sorted(OPTIONS)}")
                cells.append((f"{head}-{option}", head, OPTIONS[option]))
    return cells


def _lookup(results, path):
    value = results
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return math.nan
        value = value[key]
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def measures_of(results):
    """{measure: float} of one run's evaluation results (NaN when absent)."""
    return {name: _lookup(results, path) for name, (path, _) in MEASURES.items()}


def paired_test(a, b):
    """Two-sided paired t-test of b vs a over seeds: `(mean difference, p)`."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 2:
        return (float(np.mean(b - a)) if len(a) else math.nan), math.nan
    diff = b - a
    if np.allclose(diff, diff[0]):
        return float(diff.mean()), (0.0 if diff[0] != 0 else 1.0)
    return float(diff.mean()), float(stats.ttest_rel(b, a).pvalue)


def aggregate(runs):
    """Builds the table from `{cell name: {seed: measures}}`.

    Returns:
        `(rows, tests)`: rows = {cell: {measure: (mean, std, n)}}; tests =
        {option: {measure: (mean diff ProxyDR - NormFace, p)}} over the seeds
        both configurations have.
    """
    rows = {}
    for cell, by_seed in runs.items():
        rows[cell] = {}
        for measure in MEASURES:
            values = np.array([m[measure] for m in by_seed.values()], dtype=float)
            values = values[np.isfinite(values)]
            std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            rows[cell][measure] = (float(values.mean()) if len(values) else math.nan, std, int(len(values)))
    tests = {}
    for option in OPTIONS:
        normface, proxydr = runs.get(f"normface-{option}"), runs.get(f"proxydr-{option}")
        if not normface or not proxydr:
            continue
        seeds = sorted(set(normface) & set(proxydr))
        tests[option] = {measure: paired_test([normface[s][measure] for s in seeds],
                                              [proxydr[s][measure] for s in seeds])
                         for measure in MEASURES}
        tests[option]["seeds"] = seeds
    return rows, tests


def _cell(mean, std, n):
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.4f} ± {std:.4f}" if math.isfinite(std) else f"{mean:.4f}"


def to_markdown(rows, tests):
    """The table (mean ± std over seeds) and the paired tests, as Markdown."""
    labels = [label for _, label in MEASURES.values()]
    lines = ["| configuration | seeds | " + " | ".join(labels) + " |",
             "|---|---|" + "---|" * len(labels)]
    for cell, row in rows.items():
        n = max(v[2] for v in row.values())
        lines.append(f"| {cell} | {n} | " + " | ".join(_cell(*row[m]) for m in MEASURES) + " |")
    if tests:
        lines += ["", "Paired t-test over seeds, ProxyDR − NormFace (mean difference, two-sided p):", "",
                  "| option | seeds | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
        for option, result in tests.items():
            cells = []
            for measure in MEASURES:
                diff, p = result[measure]
                cells.append("–" if not math.isfinite(diff) else
                             f"{diff:+.4f} (p={p:.3g})" if math.isfinite(p) else f"{diff:+.4f}")
            lines.append(f"| {option} | {len(result['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def collect(out):
    """Reads every finished run under `out`: {cell: {seed: measures}}."""
    runs = {}
    if not os.path.isdir(out):
        return runs
    for cell in sorted(os.listdir(out)):
        cell_dir = os.path.join(out, cell)
        if not os.path.isdir(cell_dir):
            continue
        for seed_dir in sorted(os.listdir(cell_dir)):
            results_path = os.path.join(cell_dir, seed_dir, "report", "results.json")
            if not (seed_dir.startswith("seed") and os.path.exists(os.path.join(cell_dir, seed_dir, "summary.json"))
                    and os.path.exists(results_path)):
                continue
            with open(results_path) as f:
                runs.setdefault(cell, {})[int(seed_dir[4:])] = measures_of(json.load(f))
    return runs


def write_table(out):
    """Aggregates the finished runs under `out` into table.md / table.json."""
    from recipes.train import _atomic_json

    rows, tests = aggregate(collect(out))
    text = to_markdown(rows, tests)
    tmp = os.path.join(out, "table.md.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(out, "table.md"))
    _atomic_json(os.path.join(out, "table.json"), {"rows": rows, "tests": tests})
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="cpu_cifar10", help="recipes.configs preset or .json")
    parser.add_argument("--heads", nargs="+", default=["softmax", "normface", "proxydr", "corr"])
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="runs/paper")
    parser.add_argument("--table-only", action="store_true", help="only aggregate finished runs")
    parser.add_argument("overrides", nargs="*", help="config overrides KEY=VALUE (JSON values)")
    args, unknown = parser.parse_known_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from recipes.configs import get_config
    from recipes.train import train

    overrides = {}
    for item in args.overrides + [u.lstrip("-") for u in unknown]:
        if "=" not in item:
            parser.error(f"override {item!r} is not KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            overrides[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.replace("-", "_")] = value
    os.makedirs(args.out, exist_ok=True)
    if not args.table_only:
        for cell, head, option in grid(args.heads, args.options):
            for seed in args.seeds:
                run_dir = os.path.join(args.out, cell, f"seed{seed}")
                if os.path.exists(os.path.join(run_dir, "summary.json")):
                    continue
                config = get_config(args.config, **{**overrides, "head": head, "seed": seed,
                                                    "ema": False, "dynamic": False, "mds": False, **option})
                config["name"] = f"{cell}-seed{seed}"
                print(f"[paper] {cell} seed {seed} -> {run_dir}", flush=True)
                train(config, run_dir)
                write_table(args.out)
    print(write_table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
