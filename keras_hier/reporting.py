"""`report(results, path)`: the evaluation as files people read.

Writes `results.json` (every number), `report.md` (the configuration as a
table, each section's measures with one line saying what they mean, the
figures) and PNG figures (dendrograms, distance heatmaps with class labels,
HS@k curves with the random and ideal references). Every file goes through
`keras_hier.files` (temporary name, then rename).

The module is called `reporting`, not `report`: a submodule named like the
function `keras_hier.report` would replace that function on the package as
soon as it is imported.

NumPy only at import time; matplotlib is imported for the figures.
"""

import json
import os

import numpy as np

from keras_hier.files import atomic_write_text

__all__ = ["report", "MEASURES"]

#: One line per measure, shown in report.md beside the numbers.
MEASURES = {
    "accuracy": "fraction of samples whose top-scored class is the label",
    "top_k_accuracy": "fraction of samples whose label is among the k top-scored classes",
    "ahc": "AHC, average hierarchical cost: mean tree distance between prediction and label, over all samples",
    "mistake_severity": "mean tree distance between prediction and label over the mistakes only (how bad a mistake is)",
    "ahd_at_k": "AHD@k: mean tree distance between the label and the k top-scored classes",
    "hp_at_k": "HP@k: fraction of the k top-scored classes inside the label's smallest tree neighbourhood "
               "holding k classes (DeViSE hierarchical precision)",
    "superclass_accuracy": "fraction of predictions under the label's parent node",
    "failed_superclass_accuracy": "superclass accuracy over the mistakes only",
    "hs_at_k": "HS@k: summed tree similarity of the k nearest test embeddings to the query, divided by the best "
               "possible sum (1 = ideal ranking)",
    "ahs": "AHS: normalised area under the HS@k curve for k = 1..K",
    "recall_at_k": "Recall@k: fraction of queries with a same-class sample among the k nearest",
    "map_at_r": "MAP@R: mean average precision over the first R results, R = number of same-class samples",
    "spearman": "Spearman: rank correlation between representative distances and tree distances "
                "(classwise = per class, Fisher-z averaged; pairwise = over all class pairs)",
    "ceiling": "ceiling: the largest Spearman tie-free distances can reach (tree distances have many ties)",
    "null": "null: the same measure with the tree's class labels shuffled (mean ± std; p = share of "
            "shuffles at least as high)",
}


_DECODERS = {"argmax": "the most probable class",
             "expected_cost": "the class with the smallest expected tree distance to the label (CRM)"}


def report(results, path, hierarchy=None, figures=True, level=None):
    """Writes `results.json`, `report.md` and PNG figures into directory `path`.

    Every file is written to a temporary name first and moved into place, so a
    reader never sees a half-written file.

    Args:
        results: the dict of `evaluate` (or any dict of the same sections).
        path: output directory (created).
        hierarchy: the `Hierarchy` for the tree figures; default rebuilt from
            `results["hierarchy"]["paths"]` when present.
        figures: False to skip the PNGs (matplotlib not needed then).
        level: tree level the class figures are drawn at (None: the class
            level up to `keras_hier.plots.MAX_PLOT_CLASSES` classes, else the
            deepest level with at most that many nodes).

    Returns:
        The path of the Markdown file.

    Example:

    >>> import tempfile
    >>> md = report({"classification": {"distance": "path", "k": 1, "accuracy": 0.5}}, tempfile.mkdtemp(),
    ...             figures=False)
    >>> "| accuracy | 0.5000 |" in open(md).read()
    True
    """
    os.makedirs(path, exist_ok=True)
    clean = jsonable(results)
    atomic_write_text(os.path.join(path, "results.json"), json.dumps(clean, indent=2, allow_nan=False))
    figs = _report_figures(results, path, hierarchy, level) if figures else {}
    md_path = os.path.join(path, "report.md")
    atomic_write_text(md_path, _markdown(clean, figs))
    return md_path


def jsonable(obj):
    """Plain JSON types; NaN/inf become None, dict keys strings."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


def _hierarchy_of(results, hierarchy):
    if hierarchy is None and "hierarchy" in results:
        from keras_hier.hierarchy import Hierarchy

        h = results["hierarchy"]
        hierarchy = Hierarchy([p.split("/") for p in h["paths"]], classes=h["classes"])
    return hierarchy


def _present(reps, hierarchy):
    """Rows with a representative (absent classes have NaN rows) and the hierarchy of those classes."""
    keep = np.flatnonzero(np.all(np.isfinite(reps), axis=1))
    if keep.size == reps.shape[0]:
        return reps, hierarchy
    if keep.size < 3:
        return reps, None
    from keras_hier.hierarchy import Hierarchy

    return reps[keep], Hierarchy([hierarchy.paths[i] for i in keep], classes=[hierarchy.classes[i] for i in keep])


def _report_figures(results, path, hierarchy, level):
    from keras_hier import plots

    figs = {}
    hierarchy = _hierarchy_of(results, hierarchy)
    distance = results.get("meta", {}).get("distance", "path")
    if hierarchy is not None and results.get("representatives_level") is not None:
        # evaluate kept node representatives of this level (large C): draw that level's tree
        level = None
        hierarchy = plots.level_hierarchy(hierarchy, results["representatives_level"])
    for name, reps in results.get("representatives", {}).items():
        reps = np.array([[np.nan if v is None else v for v in row] for row in reps], dtype=np.float64)
        if hierarchy is None or reps.ndim != 2 or reps.shape[0] != hierarchy.num_classes:
            continue
        reps, h = _present(reps, hierarchy)
        if h is None:
            continue
        figs[f"tree_{name}"] = plots.plot_dendrograms(reps, h, os.path.join(path, f"tree_{name}.png"),
                                                      name=name, level=level)
        figs[f"distances_{name}"] = plots.plot_distance_matrices(
            reps, h, os.path.join(path, f"distances_{name}.png"), name=name, distance=distance, level=level)
    ret = results.get("retrieval", {})
    if ret.get("hs_curve"):
        curves = {"test embeddings": ret["hs_curve"]}
        plots.plot_hs_curves(curves, os.path.join(path, "hs_curve.png"), random=ret.get("hs_curve_random"),
                             title=f"HS@k of the test embeddings (tree distance: {ret.get('distance', distance)})")
        figs["hs_curve"] = True
    return {k: f"{k}.png" for k in figs}


def _fmt(v):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, (list, tuple)) and len(v) > 12:
        return f"{len(v)} entries"
    return str(v)


def _table(rows, header=("measure", "value", "meaning")):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cells = [[(c if isinstance(c, str) else _fmt(c)).replace("|", "\\|") for c in row] for row in rows]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return lines + [""]


def _meta_section(meta):
    lines = []
    config = meta.get("config")
    if isinstance(config, dict) and config:
        lines += ["## Configuration", ""] + _table(sorted(config.items()), ("setting", "value"))
    rest = [(k, v) for k, v in meta.items() if k != "config"]
    if rest:
        lines += ["## Data", ""] + _table(rest, ("item", "value"))
    return lines


def _classification_section(cls):
    lines = [f"## Classification (tree distance: {cls.get('distance')}, k = {cls.get('k')})", ""]
    rows = [(key, _fmt(cls[key]), MEASURES[key]) for key in
            ("accuracy", "top_k_accuracy", "ahc", "mistake_severity", "ahd_at_k", "hp_at_k",
             "superclass_accuracy", "failed_superclass_accuracy") if key in cls]
    rows += [(f"accuracy at level {lv}", _fmt(acc), "prediction and label mapped to their level-"
              f"{lv} ancestors") for lv, acc in enumerate(cls.get("level_accuracy", []))]
    for name, dec in cls.get("decoders", {}).items():
        rows += [(f"{name} decoder: {key}", _fmt(dec.get(key)), f"{key} when predicting {_DECODERS.get(name, name)}")
                 for key in ("accuracy", "ahc", "mistake_severity")]
    lines += _table(rows)
    if cls.get("classes_absent"):
        lines += [f"Classes absent from the evaluation set: {_fmt(cls['classes_absent'])}", ""]
    lines += [f"Note: {n}" for n in cls.get("notes", [])]
    return lines


def _retrieval_section(ret):
    lines = [f"## Retrieval among test embeddings (tree distance: {ret.get('distance')})", ""]
    rows = [(f"HS@{k}", _fmt(v), MEASURES["hs_at_k"] if i == 0 else "")
            for i, (k, v) in enumerate(ret.get("hs_at_k", {}).items())]
    rows.append((f"AHS@{ret.get('ahs_k')}", _fmt(ret.get("ahs")), MEASURES["ahs"]))
    rows += [(f"Recall@{k}", _fmt(v), MEASURES["recall_at_k"] if i == 0 else "")
             for i, (k, v) in enumerate(ret.get("recall_at_k", {}).items())]
    rows.append(("MAP@R", _fmt(ret.get("map_at_r")), MEASURES["map_at_r"]))
    return lines + _table(rows) + [f"Note: {n}" for n in ret.get("notes", [])]


def _inference_section(name, inf):
    lines = [f"## Hierarchical inference of {name} (tree distance: {inf.get('distance')}, "
             f"representative distance: {inf.get('representative_distance', 'chordal')})", ""]
    if "error" in inf:
        return lines + [f"not computed: {inf['error']}", ""]
    lines += [f"- {MEASURES[k]}" for k in ("spearman", "ceiling", "null")] + [""]
    if inf.get("method") == "sampled":
        lines += [f"Estimated from {inf.get('num_anchors')} anchor classes and {inf.get('num_pairs')} class pairs "
                  "(95% confidence interval in brackets); ceilings are exact.", ""]
    rows = []
    null = inf.get("null", {})
    for key in ("spearman_classwise", "spearman_classwise_offdiag", "spearman_pairwise"):
        n = null.get(key, {})
        ci = inf.get("confidence_interval", {}).get(key)
        value = _fmt(inf.get(key)) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "")
        rows.append((key, value, _fmt(inf.get("ceiling", {}).get(key)),
                     f"{_fmt(n.get('mean'))} ± {_fmt(n.get('std'))}", _fmt(n.get("p_value"))))
    lines += _table(rows, ("measure", "value", "ceiling (no ties)", "null mean ± std", "p-value"))
    if inf.get("cophenetic_correlation") is not None:
        lines += [f"Cophenetic correlation (UPGMA vs tree): {_fmt(inf['cophenetic_correlation'])}; "
                  f"Robinson-Foulds: {inf.get('robinson_foulds')} of {inf.get('robinson_foulds_max')} "
                  f"({_fmt(inf.get('robinson_foulds_normalized'))}).", ""]
    levels = [(lv["level"], lv["num_nodes"], _fmt(lv.get("p_at_1")), _fmt(lv.get("r_precision")),
               _fmt(lv.get("map_at_r"))) for lv in inf.get("levels", [])]
    if levels:
        lines += ["Retrieval among representatives at each upper level (same node = relevant):", ""]
        lines += _table(levels, ("level", "nodes", "P@1", "R-precision", "MAP@R"))
    return lines + [f"Note: {n}" for n in inf.get("notes", [])] + [""]


def _markdown(results, figs):
    lines = ["# keras_hier evaluation report", ""]
    lines += _meta_section(results.get("meta", {}))
    if results.get("classification"):
        lines += _classification_section(results["classification"])
    if results.get("retrieval"):
        lines += _retrieval_section(results["retrieval"])
    for name, inf in results.get("inference", {}).items():
        lines += _inference_section(name, inf)
    if figs:
        lines += ["## Figures", ""] + [f"![{k}]({v})" for k, v in figs.items()] + [""]
    return "\n".join(lines)
