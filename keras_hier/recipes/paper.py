"""The paper's grid: every head x training option x seed, resumable, one table.

    keras-hier-paper --config cpu_cifar10 --heads softmax normface proxydr \\
        --options standard ema --seeds 0 1 2 --out runs/paper_cifar10 dataset=PATH/cifar10_jpeg

(also `python -m keras_hier.recipes.paper`, and `python -m recipes.paper` in a checkout).

Configurations (as in Kim et al., arXiv 2301.11065): Softmax; NormFace and
ProxyDR each with standard, EMA, dynamic, EMA+dynamic, MDS, MDS+dynamic; CORR
(with MDS proxies). Each (configuration, seed) is one `keras_hier.recipes.train` run in
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

from keras_hier.files import atomic_write_json, atomic_write_text
from keras_hier.recipes.cli import run_command

OPTIONS = {
    "standard": {},
    "ema": {"proxy_mode": "ema"},
    "dynamic": {"dynamic_scale": True},
    "ema+dynamic": {"proxy_mode": "ema", "dynamic_scale": True},
    "mds": {"proxy_mode": "mds"},
    "mds+dynamic": {"proxy_mode": "mds", "dynamic_scale": True},
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
            cells.append(("corr", "corr", {"proxy_mode": "mds"}))
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
    rows, tests = aggregate(collect(out))
    text = to_markdown(rows, tests)
    atomic_write_text(os.path.join(out, "table.md"), text)
    atomic_write_json(os.path.join(out, "table.json"), {"rows": rows, "tests": tests}, default=str)
    return text


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _parser():
    parser = argparse.ArgumentParser(prog="keras-hier-paper", description=__doc__, formatter_class=_Help)
    parser.add_argument("--config", default="cpu_cifar10",
                        help="keras_hier.recipes.configs preset or a .json file of settings")
    parser.add_argument("--heads", nargs="+", default=["softmax", "normface", "proxydr", "corr"],
                        choices=["softmax", "normface", "proxydr", "corr"], help="heads of the grid")
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS),
                        help="NormFace / ProxyDR training options of the grid")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one run per seed")
    parser.add_argument("--out", default="runs/paper", help="grid folder: OUT/<configuration>/seed<k>/")
    parser.add_argument("--table-only", action="store_true", help="only aggregate the finished runs")
    parser.add_argument("overrides", nargs="*", default=[],
                        help="config settings KEY=VALUE (JSON values), e.g. dataset=PATH epochs=5")
    return parser


def parse_overrides(items):
    """`["epochs=5", "dataset=/d"]` -> `{"epochs": 5, "dataset": "/d"}` (values parsed as JSON if they are)."""
    overrides = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            overrides[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.replace("-", "_")] = value
    return overrides


def run_grid(config, heads, options, seeds, out, overrides):
    """Trains every unfinished (configuration, seed) of the grid under `out`, updating the table."""
    from keras_hier.recipes.configs import get_config
    from keras_hier.recipes.train import train

    for cell, head, option in grid(heads, options):
        for seed in seeds:
            run_dir = os.path.join(out, cell, f"seed{seed}")
            if os.path.exists(os.path.join(run_dir, "summary.json")):
                continue
            settings = {**overrides, "head": head, "seed": seed, "proxy_mode": "learned",
                        "dynamic_scale": False, **option}
            for old in ("ema", "mds", "dynamic"):
                settings.pop(old, None)
            cfg = get_config(config, **settings)
            cfg["name"] = f"{cell}-seed{seed}"
            print(f"[paper] {cell} seed {seed} -> {run_dir}", flush=True)
            train(cfg, run_dir)
            write_table(out)


def main(argv=None):
    """Console entry point (`keras-hier-paper`, `python -m keras_hier.recipes.paper`)."""
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")

    def body():
        overrides = parse_overrides(args.overrides + [u.lstrip("-") for u in unknown])
        os.makedirs(args.out, exist_ok=True)
        if not args.table_only:
            run_grid(args.config, args.heads, args.options, args.seeds, args.out, overrides)
        print(write_table(args.out))

    return run_command("keras-hier-paper", body)


if __name__ == "__main__":
    sys.exit(main())
