"""Offline evaluation: what did a model learn about the class hierarchy?

- `hierarchy_informed(y_true, scores, hierarchy)`: accuracy, top-k, per-level
  accuracy, AHC, mistake severity, AHD@k, HP@k, superclass and failed
  superclass accuracy.
- `class_representatives(model_or_embeddings, ...)`: normalised proxies ("W")
  and normalised class means of normalised embeddings ("proto").
- `hierarchical_inference(representatives, hierarchy)` (in
  `keras_hier.inference`) and `retrieval(embeddings, labels, hierarchy)` (in
  `keras_hier.retrieval_metrics`), re-exported here.
- `evaluate(model, dataset, hierarchy)` runs everything and returns a plain
  dict; `report(results, path)` writes JSON, Markdown and figures.

The measures are NumPy/SciPy and work on arrays from any model; importing this
module does not import TensorFlow (only `evaluate` and
`class_representatives` with a model do).
"""

import json
import os
import tempfile

import numpy as np

from keras_hier.inference import hierarchical_inference
from keras_hier.retrieval_metrics import DEFAULT_KS, retrieval


# --------------------------------------------------------------- validation
def _check_labels(y_true, n, num_classes, name="y_true"):
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2 and y.shape[1] == num_classes and n == y.shape[0]:
        y = np.argmax(y, axis=1)  # one-hot
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must be [N] class ids with N = {n}, got shape {np.shape(y_true)}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integer class ids, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} must be in 0..{num_classes - 1}, got values {y.min()}..{y.max()}")
    return y.astype(np.int64)


def _check_distance(distance):
    if distance not in ("path", "lca_height"):
        raise ValueError(f"distance must be 'path' or 'lca_height', got {distance!r}")


def top_k_predictions(scores, k):
    """Indices of the k highest scores per row, ties broken by the smaller index.

    `keras.ops.top_k` breaks ties the same way, so the streaming metrics agree.
    """
    return np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]


def hp_radius(hierarchy, k, rule="devise", distance="path"):
    """Per-class radius of the hCorrect set of HP@k (int [C]).

    `"devise"`: the smallest radius around the class holding at least k
    classes (itself included), i.e. the k-th smallest entry of its distance
    row. `"reference"`: the reference code's looser radius, entry k + 1
    (0-based) of the sorted row, which holds at least k + 2 classes.
    """
    t = np.sort(np.asarray(hierarchy.distance_matrix(distance)), axis=1)
    c = t.shape[0]
    if rule == "devise":
        return t[:, min(k, c) - 1]
    if rule == "reference":
        return t[:, min(k + 1, c - 1)]
    raise ValueError(f"hp_radius rule must be 'devise' or 'reference', got {rule!r}")


def superclass_correct(hierarchy, y_true, y_pred):
    """True where the prediction lies under the parent node of the true class.

    On a tree whose leaves all have the same depth this is "same ancestor at
    the level above the classes" (SimLoss's superclass accuracy); on a ragged
    tree it uses each class's own parent (the root for a top-level class).
    """
    lca = np.asarray(hierarchy.lca_depth_matrix())
    depth = np.asarray(hierarchy.leaf_depths)
    return lca[y_true, y_pred] >= depth[y_true] - 1


def hierarchy_informed(y_true, scores, hierarchy, k=5, distance="path", hp_rule="devise"):
    """Hierarchy-informed classification measures of a test set.

    With predictions ranked by score (ties: smaller class id first) and t the
    tree distance of kind `distance`:
    - `accuracy`, `top_k_accuracy`;
    - `level_accuracy`: list over levels 0..depth-1, prediction and label
      mapped to their ancestors at that level (the last entry = accuracy);
    - `ahc`: mean t(prediction, label) over all samples; `mistake_severity`:
      the same over misclassified samples only (NaN without mistakes);
    - `ahd_at_k`: mean over samples of the mean t over the top-k predictions;
    - `hp_at_k`: |top-k ∩ hCorrect(y)| / k, hCorrect = classes within the
      radius of `hp_radius(hierarchy, k, hp_rule)` around y;
    - `superclass_accuracy`: prediction under the true class's parent
      (`superclass_correct`); `failed_superclass_accuracy`: the same over the
      misclassified samples only.

    Args:
        y_true: [N] integer class ids (or one-hot [N, C]).
        scores: [N, C] logits or probabilities.
        hierarchy: a `keras_hier.Hierarchy` with C classes.
        k: the k of top-k accuracy, AHD@k and HP@k (1 <= k <= C).
        distance: `"path"` (edges between leaves) or `"lca_height"`.
        hp_rule: `"devise"` or `"reference"` (see `hp_radius`).

    Returns:
        A plain dict; `distance`, `k` and `hp_rule` state what was used;
        `classes_absent` lists classes without samples (not an error).

    Example:

    >>> import numpy as np, keras_hier
    >>> h = keras_hier.Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    >>> out = hierarchy_informed([0, 2], np.array([[.1, .9, 0.], [0., 0., 1.]]), h, k=1)
    >>> out["accuracy"], out["ahc"], out["superclass_accuracy"]
    (0.5, 1.0, 1.0)
    """
    _check_distance(distance)
    s = np.asarray(scores)
    c = hierarchy.num_classes
    if s.ndim != 2 or s.shape[1] != c:
        raise ValueError(f"scores must be [N, num_classes={c}], got shape {s.shape}")
    if s.shape[0] == 0:
        raise ValueError("hierarchy_informed got no samples (scores has 0 rows)")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"scores contain NaN/inf in {int(np.sum(~np.all(np.isfinite(s), 1)))} rows")
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= c:
        raise ValueError(f"k must be an integer in 1..num_classes={c}, got {k!r}")
    y = _check_labels(y_true, s.shape[0], c)
    t = np.asarray(hierarchy.distance_matrix(distance), dtype=np.float64)

    top = top_k_predictions(s, k)
    pred = top[:, 0]
    correct = pred == y
    dist = t[y, pred]
    mistakes = ~correct
    radius = hp_radius(hierarchy, k, hp_rule, distance)
    in_radius = t[y[:, None], top] <= radius[y][:, None]
    sup = superclass_correct(hierarchy, y, pred)
    nan = float("nan")
    counts = np.bincount(y, minlength=c)
    return {
        "distance": distance,
        "k": int(k),
        "hp_rule": hp_rule,
        "num_samples": int(y.size),
        "accuracy": float(np.mean(correct)),
        "top_k_accuracy": float(np.mean(np.any(top == y[:, None], axis=1))),
        "level_accuracy": [float(np.mean(a[pred] == a[y]))
                           for a in (np.asarray(hierarchy.ancestors(lv)) for lv in range(hierarchy.depth))],
        "ahc": float(np.mean(dist)),
        "mistake_severity": float(np.mean(dist[mistakes])) if mistakes.any() else nan,
        "ahd_at_k": float(np.mean(t[y[:, None], top])),
        "hp_at_k": float(np.mean(np.sum(in_radius, axis=1) / k)),
        "superclass_accuracy": float(np.mean(sup)),
        "failed_superclass_accuracy": float(np.mean(sup[mistakes])) if mistakes.any() else nan,
        "classes_absent": [int(i) for i in np.flatnonzero(counts == 0)],
    }


# ------------------------------------------------------- representatives
def _normalize(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.sqrt(np.maximum(np.sum(x * x, axis=-1, keepdims=True), 1e-12))


def class_means(embeddings, labels, num_classes):
    """Normalised class means of normalised embeddings ("proto", [C, D]).

    A class without samples gets a row of NaN (see `hierarchical_inference`).
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        bad = np.flatnonzero(~np.all(np.isfinite(x), axis=1))
        raise ValueError(f"embeddings contain NaN/inf in {bad.size} rows (first: row {bad[0]})")
    y = _check_labels(labels, x.shape[0], num_classes, name="labels")
    sums = np.zeros((num_classes, x.shape[1]))
    np.add.at(sums, y, _normalize(x))
    counts = np.bincount(y, minlength=num_classes)
    proto = _normalize(sums)
    proto[counts == 0] = np.nan
    return proto


def head_proxies(model):
    """Normalised class representatives of a model's "head" layer ([C, D]).

    keras_hier heads expose `.proxies`; a Dense softmax head contributes its
    kernel columns (the weight vector of every class). Returns None when the
    model has no such head.
    """
    try:
        head = model.get_layer("head")
    except ValueError:
        return None
    if hasattr(head, "proxies"):
        return _normalize(np.asarray(head.proxies))
    kernel = getattr(head, "kernel", None)
    if kernel is None:
        return None
    return _normalize(np.asarray(kernel).T)


def _iterate_batches(dataset, batch_size=256):
    """Yields (x, y) batches from a tf.data.Dataset/iterable of pairs or an (x, y) tuple."""
    if isinstance(dataset, tuple) and len(dataset) == 2 and hasattr(dataset[0], "shape"):
        x, y = dataset
        for start in range(0, len(x), batch_size):
            yield x[start:start + batch_size], y[start:start + batch_size]
        return
    for batch in dataset:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError("dataset must yield (inputs, labels) pairs")
        yield batch[0], batch[1]


def model_outputs(model, dataset, batch_size=256):
    """Runs the model once: (logits [N, C], embeddings [N, D] or None, labels [N]).

    Embeddings are the output of the layer named "embedding" when present.
    """
    import keras

    try:
        emb_layer = model.get_layer("embedding")
    except ValueError:
        emb_layer = None
    outputs = [model.output] + ([emb_layer.output] if emb_layer is not None else [])
    runner = keras.Model(model.input, outputs)
    logits, embeddings, labels = [], [], []
    for x, y in _iterate_batches(dataset, batch_size):
        out = runner.predict_on_batch(x)  # one traced function, no Python-side eager loop
        out = out if isinstance(out, (list, tuple)) else [out]
        logits.append(np.asarray(out[0], dtype=np.float32))
        if emb_layer is not None:
            embeddings.append(np.asarray(out[1], dtype=np.float32))
        y = np.asarray(keras.ops.convert_to_numpy(y))
        labels.append(np.argmax(y, axis=-1) if y.ndim == 2 and y.shape[-1] > 1 else y.reshape(-1))
    if not logits:
        raise ValueError("the dataset is empty")
    emb = np.concatenate(embeddings) if embeddings else None
    return np.concatenate(logits), emb, np.concatenate(labels).astype(np.int64)


def class_representatives(model_or_embeddings, data=None, num_classes=None, batch_size=256):
    """Class representatives: the head's proxies ("W") and class means ("proto").

    Args:
        model_or_embeddings: a Keras model built by `build_classifier` (with
            layers named "embedding" and "head"), or an [N, D] array of
            embeddings.
        data: for a model, the dataset (tf.data.Dataset of (x, y) batches or an
            (x, y) tuple) whose embeddings give the class means (None: W only);
            for embeddings, the [N] labels.
        num_classes: C (default: taken from the head, or max label + 1).
        batch_size: batch size when `data` is an (x, y) tuple.

    Returns:
        dict with `"W"` ([C, D] normalised proxies, models only), `"proto"`
        ([C, D] normalised means of normalised embeddings; NaN rows for absent
        classes) and `"missing_classes"` (list of class ids without samples).

    Example:

    >>> import numpy as np
    >>> reps = class_representatives(np.array([[2., 0.], [0., 1.]]), np.array([0, 1]))
    >>> reps["proto"].tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    out = {}
    if isinstance(model_or_embeddings, np.ndarray) or isinstance(model_or_embeddings, (list, tuple)):
        if data is None:
            raise ValueError("class_representatives(embeddings, labels): labels are missing")
        emb = np.asarray(model_or_embeddings)
        labels = np.asarray(data)
        if num_classes is None:
            num_classes = int(labels.max()) + 1
    else:
        model = model_or_embeddings
        if not hasattr(model, "get_layer"):
            raise TypeError(f"expected a Keras model or an [N, D] array, got {type(model).__name__}")
        w = head_proxies(model)
        if w is not None:
            out["W"] = w
            num_classes = num_classes or w.shape[0]
        if data is None:
            if w is None:
                raise ValueError("the model has no 'head' layer with proxies/kernel and no data was given")
            out["missing_classes"] = []
            return out
        logits, emb, labels = model_outputs(model, data, batch_size)
        if emb is None:
            raise ValueError("the model has no layer named 'embedding'; cannot compute class means")
        num_classes = num_classes or logits.shape[1]
    proto = class_means(emb, labels, num_classes)
    out["proto"] = proto
    out["missing_classes"] = [int(i) for i in np.flatnonzero(np.isnan(proto[:, 0]))]
    return out


# ------------------------------------------------------------------ evaluate
def evaluate(model, dataset, hierarchy, train_dataset=None, k=5, ks=DEFAULT_KS, distance="path",
             n_permutations=1000, seed=0, batch_size=256):
    """Runs every measure on a model and returns a plain dict.

    Args:
        model: a Keras model outputting logits [B, C]; with a layer named
            "embedding" (retrieval, class means) and one named "head" (W).
        dataset: the evaluation set: tf.data.Dataset of (x, y) batches or an
            (x, y) tuple of arrays.
        hierarchy: a `keras_hier.Hierarchy`.
        train_dataset: data for the class means ("proto"); when None the
            evaluation set is used (stated in `meta.proto_source`).
        k: k of top-k / AHD@k / HP@k.
        ks: k values of HS@k and Recall@k.
        distance: tree distance kind for every measure.
        n_permutations, seed: permutation null of `hierarchical_inference`.
        batch_size: batch size for array inputs.

    Returns:
        dict with `classification` (`hierarchy_informed`), `retrieval`,
        `inference` ({"W": ..., "proto": ...}), `representatives` (lists, for
        the figures of `report`), `hierarchy` (class paths) and `meta`.
    """
    logits, emb, labels = model_outputs(model, dataset, batch_size)
    c = hierarchy.num_classes
    results = {
        "meta": {"num_samples": int(labels.size), "num_classes": c, "distance": distance,
                 "proto_source": "train_dataset" if train_dataset is not None else "dataset"},
        "hierarchy": {"classes": list(hierarchy.classes), "paths": ["/".join(p) for p in hierarchy.paths]},
        "classification": hierarchy_informed(labels, logits, hierarchy, k=min(k, c), distance=distance),
    }
    if emb is not None and labels.size > 1:
        kept = [kk for kk in ks if kk <= labels.size - 1]
        results["retrieval"] = retrieval(emb, labels, hierarchy, ks=kept or (1,), distance=distance)
    reps = {}
    w = head_proxies(model)
    if w is not None and w.shape[0] == c:
        reps["W"] = w
    if emb is not None:
        if train_dataset is None:
            reps["proto"] = class_means(emb, labels, c)
        else:
            reps["proto"] = class_representatives(model, train_dataset, c, batch_size)["proto"]
        results["meta"]["classes_without_proto"] = [int(i) for i in np.flatnonzero(np.isnan(reps["proto"][:, 0]))]
    results["inference"] = {}
    for name, r in reps.items():
        try:
            results["inference"][name] = hierarchical_inference(r, hierarchy, distance=distance,
                                                                n_permutations=n_permutations, seed=seed)
        except ValueError as err:  # e.g. fewer than 3 classes present: reported, not a crash
            results["inference"][name] = {"error": str(err)}
    results["representatives"] = {name: np.where(np.isnan(r), None, r).tolist() for name, r in reps.items()}
    return results


def report(results, path, hierarchy=None, figures=True):
    """Writes `results.json`, `report.md` and PNG figures into directory `path`.

    Every file is written to a temporary name first and moved into place
    (`os.replace`), so a reader never sees a half-written file.

    Args:
        results: the dict of `evaluate` (or any dict of the same sections).
        path: output directory (created).
        hierarchy: the `Hierarchy` for the tree figures; default rebuilt from
            `results["hierarchy"]["paths"]` when present.
        figures: False to skip the PNGs (matplotlib not needed then).

    Returns:
        The path of the Markdown file.
    """
    os.makedirs(path, exist_ok=True)
    clean = _jsonable(results)
    _atomic_write(os.path.join(path, "results.json"), json.dumps(clean, indent=2, allow_nan=False))
    figs = {}
    if figures:
        figs = _report_figures(results, path, hierarchy)
    md_path = os.path.join(path, "report.md")
    _atomic_write(md_path, _markdown(clean, figs))
    return md_path


def _atomic_write(path, text):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _jsonable(obj):
    """Plain JSON types; NaN/inf become None, dict keys strings."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


def _report_figures(results, path, hierarchy):
    from keras_hier import plots

    figs = {}
    if hierarchy is None and "hierarchy" in results:
        from keras_hier.hierarchy import Hierarchy

        h = results["hierarchy"]
        hierarchy = Hierarchy([p.split("/") for p in h["paths"]], classes=h["classes"])
    for name, reps in results.get("representatives", {}).items():
        reps = np.array(reps, dtype=np.float64)
        if hierarchy is None or not np.all(np.isfinite(reps)):
            continue
        figs[f"tree_{name}"] = plots.save_figure(
            plots.plot_dendrograms(reps, hierarchy, name=name), os.path.join(path, f"tree_{name}.png"))
        figs[f"distances_{name}"] = plots.save_figure(
            plots.plot_distance_matrices(reps, hierarchy, name=name),
            os.path.join(path, f"distances_{name}.png"))
    curve = results.get("retrieval", {}).get("hs_curve")
    if curve:
        figs["hs_curve"] = plots.save_figure(plots.plot_hs_curves({"test embeddings": curve}),
                                             os.path.join(path, "hs_curve.png"))
    return {k: os.path.basename(v) for k, v in figs.items()}


def _fmt(v):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _markdown(results, figs):
    lines = ["# keras_hier evaluation report", ""]
    meta = results.get("meta", {})
    if meta:
        lines += [", ".join(f"{k}: {_fmt(v)}" for k, v in meta.items()), ""]
    cls = results.get("classification")
    if cls:
        lines += [f"## Classification (tree distance: {cls['distance']}, k = {cls['k']})", "",
                  "| measure | value |", "|---|---|"]
        for key in ("accuracy", "top_k_accuracy", "ahc", "mistake_severity", "ahd_at_k", "hp_at_k",
                    "superclass_accuracy", "failed_superclass_accuracy"):
            lines.append(f"| {key} | {_fmt(cls.get(key))} |")
        for level, acc in enumerate(cls.get("level_accuracy", [])):
            lines.append(f"| accuracy at level {level} | {_fmt(acc)} |")
        if cls.get("classes_absent"):
            lines.append(f"\nClasses absent from the evaluation set: {cls['classes_absent']}")
        lines.append("")
    ret = results.get("retrieval")
    if ret:
        lines += [f"## Retrieval (tree distance: {ret['distance']})", "", "| measure | value |", "|---|---|"]
        for k, v in ret.get("hs_at_k", {}).items():
            lines.append(f"| HS@{k} | {_fmt(v)} |")
        lines.append(f"| AHS@{ret.get('ahs_k')} | {_fmt(ret.get('ahs'))} |")
        for k, v in ret.get("recall_at_k", {}).items():
            lines.append(f"| Recall@{k} | {_fmt(v)} |")
        lines += [f"| MAP@R | {_fmt(ret.get('map_at_r'))} |", ""]
    for name, inf in results.get("inference", {}).items():
        lines += [f"## Hierarchical inference of {name}", ""]
        if "error" in inf:
            lines += [f"not computed: {inf['error']}", ""]
            continue
        lines += ["| measure | value | ceiling (no ties) | null mean ± std | p-value |", "|---|---|---|---|---|"]
        null = inf.get("null", {})
        for key in ("spearman_classwise", "spearman_classwise_offdiag", "spearman_pairwise"):
            n = null.get(key, {})
            lines.append(f"| {key} | {_fmt(inf[key])} | {_fmt(inf['ceiling'][key])} | "
                         f"{_fmt(n.get('mean'))} ± {_fmt(n.get('std'))} | {_fmt(n.get('p_value'))} |")
        lines += ["", f"Cophenetic correlation (UPGMA vs tree): {_fmt(inf['cophenetic_correlation'])}; "
                  f"Robinson-Foulds: {inf['robinson_foulds']} of {inf['robinson_foulds_max']} "
                  f"({_fmt(inf['robinson_foulds_normalized'])}).", "",
                  "| level | nodes | P@1 | R-precision | MAP@R |", "|---|---|---|---|---|"]
        for lv in inf.get("levels", []):
            lines.append(f"| {lv['level']} | {lv['num_nodes']} | {_fmt(lv['p_at_1'])} | "
                         f"{_fmt(lv['r_precision'])} | {_fmt(lv['map_at_r'])} |")
        lines.append("")
    if figs:
        lines += ["## Figures", ""] + [f"![{k}]({v})" for k, v in figs.items()] + [""]
    return "\n".join(lines)


__all__ = ["hierarchy_informed", "hierarchical_inference", "retrieval", "class_representatives",
           "class_means", "head_proxies", "model_outputs", "evaluate", "report", "hp_radius",
           "superclass_correct", "top_k_predictions"]
