"""Offline evaluation: what did a model learn about the class hierarchy?

- `hierarchy_informed(y_true, scores, hierarchy)`: accuracy, top-k, per-level
  accuracy, AHC, mistake severity, AHD@k, HP@k, superclass and failed
  superclass accuracy.
- `class_representatives(model_or_embeddings, ...)`: normalised proxies ("W")
  and normalised class means of normalised embeddings ("proto").
- `hierarchical_inference(representatives, hierarchy)` (in
  `keras_hier.inference`) and `retrieval(embeddings, labels, hierarchy)` (in
  `keras_hier.retrieval_metrics`), re-exported here.
- `evaluate(model, dataset, hierarchy)` runs everything in one streaming
  pass and returns a plain dict; `report(results, path)` (in
  `keras_hier.reporting`) writes JSON, Markdown and figures.

Nothing here is C x C or N x C: the model runs batch by batch
(`keras_hier.model_scoring.Scorer`: top-k and decoders inside the compiled
step), the measures are running sums (`keras_hier.streaming_eval`), tree
distances come for the pairs that are needed (`keras_hier.tree_counts`),
and above 5 000 classes hierarchical inference is a sampled estimate with
confidence intervals (`keras_hier.inference_sampled`). The measures are
NumPy/SciPy and work on arrays from any model; importing this module does not
import TensorFlow (only `evaluate` and `class_representatives` with a model do).
"""

import time

import numpy as np

from keras_hier.geometry import normalize_rows
from keras_hier.inference import hierarchical_inference
from keras_hier.labels import class_ids
from keras_hier.reporting import report
from keras_hier.retrieval_metrics import DEFAULT_KS, retrieval
from keras_hier.streaming_eval import InformedSums, hp_radius, superclass_correct, top_k_predictions
from keras_hier.tree_counts import check_distance_kind


# ------------------------------------------------------- classification
def hierarchy_informed(y_true, scores, hierarchy, k=5, distance="path", hp_rule="devise"):
    """Hierarchy-informed classification measures of a test set.

    With predictions ranked by score (ties: smaller class id first) and t the
    tree distance of kind `distance`:
    - `accuracy`, `top_k_accuracy`;
    - `level_accuracy`: list over levels 0..depth-1, prediction and label
      mapped to their ancestors at that level (the last entry = accuracy);
    - `ahc`: mean t(prediction, label) over all samples; `mistake_severity`:
      the same over misclassified samples only (NaN, with a warning and a
      `notes` entry, when there is no mistake);
    - `ahd_at_k`: mean over samples of the mean t over the top-k predictions;
    - `hp_at_k`: |top-k ∩ hCorrect(y)| / k, hCorrect = classes within the
      radius of `hp_radius(hierarchy, k, hp_rule)` around y;
    - `superclass_accuracy`: prediction under the true class's parent
      (`superclass_correct`); `failed_superclass_accuracy`: the same over the
      misclassified samples only.
    No C x C matrix is built: tree distances of the (label, top-k) pairs only
    (see `keras_hier.streaming_eval.InformedSums`, which `evaluate` feeds
    batch by batch).

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
    check_distance_kind(distance)
    s = np.asarray(scores)
    c = hierarchy.num_classes
    if s.ndim != 2 or s.shape[1] != c:
        raise ValueError(f"scores must be [N, num_classes={c}], got shape {s.shape}")
    if s.shape[0] == 0:
        raise ValueError("hierarchy_informed got no samples (scores has 0 rows)")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"scores contain NaN/inf in {int(np.sum(~np.all(np.isfinite(s), 1)))} rows")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= c:
        raise ValueError(f"k must be an integer in 1..num_classes={c}, got {k!r}")
    y = class_ids(y_true, c, source="y_true", num_samples=s.shape[0])
    sums = InformedSums(hierarchy, k=k, distance=distance, hp_rule=hp_rule)
    sums.update(y, top_k_predictions(s, k))
    return sums.result()


# ------------------------------------------------------- representatives
class ClassMeanSums:
    """Running sums of normalised embeddings per class; `means()` gives "proto" ([C, D])."""

    def __init__(self, num_classes):
        self.num_classes, self.sums, self.counts = num_classes, None, np.zeros(num_classes, dtype=np.int64)

    def update(self, embeddings, labels):
        """Adds a batch of [B, D] embeddings with their [B] class ids."""
        x = normalize_rows(embeddings)
        if self.sums is None:
            self.sums = np.zeros((self.num_classes, x.shape[1]))
        np.add.at(self.sums, labels, x)
        self.counts += np.bincount(labels, minlength=self.num_classes)

    def means(self):
        """Normalised class means; a class without samples gets a row of NaN."""
        proto = normalize_rows(self.sums)
        proto[self.counts == 0] = np.nan
        return proto


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
    sums = ClassMeanSums(num_classes)
    sums.update(x, class_ids(labels, num_classes, source="labels", num_samples=x.shape[0]))
    return sums.means()


def head_proxies(model):
    """Normalised class representatives of a model's head ([C, D]), or None.

    See `keras_hier.model_scoring.find_head` for how the head is found.
    """
    from keras_hier.model_scoring import head_proxies as proxies

    return proxies(model)


def _scorer(model, k, hierarchy=None, decoders=(), probabilities=False, cost="path", embedding_model=None,
            need_embeddings=True):
    """(Scorer, reason the embeddings are missing or None)."""
    from keras_hier import model_scoring

    base, reason = model, None
    if embedding_model is None and need_embeddings:
        graph, reason = model_scoring.embedding_model(model)
        base = graph if graph is not None else model
    scorer = model_scoring.Scorer(base, k, hierarchy=hierarchy, decoders=decoders, probabilities=probabilities,
                                  cost=cost, embedder=embedding_model)
    return scorer, reason


def _batches(model, dataset, num_classes, batch_size, **scorer_kwargs):
    """Yields (labels [B], scorer outputs) per batch, checking the score width once."""
    from keras_hier.model_scoring import iterate_batches

    scorer, reason = _scorer(model, **scorer_kwargs)
    seen = False
    for x, y in iterate_batches(dataset, batch_size):
        out = scorer.predict_on_batch(x)
        if not seen:
            seen = True
            width = int(np.asarray(out["num_scores"]).reshape(-1)[0])
            if width != num_classes:
                raise ValueError(f"the model outputs {width} scores per sample but the hierarchy has {num_classes} "
                                 "classes")
        yield class_ids(y, num_classes, source="dataset labels", num_samples=len(out["top_ids"])), out, reason
    if not seen:
        raise ValueError("the dataset is empty")


def class_representatives(model_or_embeddings, data=None, num_classes=None, batch_size=256, embedding_model=None):
    """Class representatives: the head's proxies ("W") and class means ("proto").

    Args:
        model_or_embeddings: a Keras model (functional, Sequential, or
            subclassed with `embedding_model`), or an [N, D] array of embeddings.
        data: for a model, the dataset (tf.data.Dataset of (x, y) batches or an
            (x, y) tuple) whose embeddings give the class means (None: W only);
            for embeddings, the [N] labels.
        num_classes: C (default: taken from the head, or max label + 1).
        batch_size: batch size when `data` is an (x, y) tuple.
        embedding_model: for subclassed models, a model mapping inputs to embeddings.

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
    if isinstance(model_or_embeddings, (np.ndarray, list, tuple)):
        if data is None:
            raise ValueError("class_representatives(embeddings, labels): labels are missing")
        labels = np.asarray(data)
        num_classes = num_classes or int(labels.max()) + 1
        proto = class_means(model_or_embeddings, labels, num_classes)
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
                raise ValueError("the model has no head layer with proxies/kernel and no data was given")
            out["missing_classes"] = []
            return out
        if num_classes is None:
            raise ValueError("class_representatives: pass num_classes (the model's head was not found)")
        sums = ClassMeanSums(num_classes)
        for y, batch, reason in _batches(model, data, num_classes, batch_size, k=1, embedding_model=embedding_model,
                                         hierarchy=None):
            if "embedding" not in batch:
                raise ValueError(f"cannot compute class means: {reason}")
            sums.update(batch["embedding"], y)
        proto = sums.means()
    out["proto"] = proto
    out["missing_classes"] = [int(i) for i in np.flatnonzero(np.isnan(proto[:, 0]))]
    return out


# ------------------------------------------------------------------ evaluate
DECODERS = ("argmax", "expected_cost")
#: Above this many classes `evaluate` scores only the argmax decoder unless `decoders=` asks for more: the
#: expected-cost decoder costs O(C * depth) per input, about 9x the forward pass of a cheap Dense head at
#: C = 100 000 (BENCHMARKS.md, scale).
EXPECTED_COST_MAX_CLASSES = 20_000


def _stream(model, dataset, hierarchy, k, distance, batch_size, from_logits, decoders, embedding_model):
    """One pass over the data: (InformedSums, ClassMeanSums, embeddings, labels, reason)."""
    from keras_hier.outputs import resolve_from_logits

    unknown = [d for d in decoders if d not in DECODERS]
    if unknown:
        raise ValueError(f"unknown decoders {unknown}; use some of {DECODERS}")
    c = hierarchy.num_classes
    probabilities = not resolve_from_logits(from_logits, model, where="keras_hier.evaluate")
    informed = InformedSums(hierarchy, k=k, distance=distance)
    means = ClassMeanSums(c)
    embeddings, labels, reason = [], [], None
    extra = tuple(d for d in decoders if d != "argmax")
    for y, out, why in _batches(model, dataset, c, batch_size, k=k, hierarchy=hierarchy, decoders=extra,
                                probabilities=probabilities, cost=distance, embedding_model=embedding_model):
        reason = why
        if "probabilities" in out:  # not the TensorFlow backend: decode this batch on the host
            from keras_hier.model_scoring import decoder_class_ids

            probs = np.asarray(out.pop("probabilities"), dtype=np.float32)
            out.update({name: decoder_class_ids(probs, hierarchy, name, distance) for name in extra})
        decoded = {name: out[name] for name in extra}
        if "argmax" in decoders and extra:
            decoded = {"argmax": out["top_ids"][:, 0], **decoded}
        informed.update(y, out["top_ids"], decoded)
        labels.append(y)
        if "embedding" in out:
            embeddings.append(np.asarray(out["embedding"], dtype=np.float32))
            means.update(out["embedding"], y)
    emb = np.concatenate(embeddings) if embeddings else None
    return informed, means, emb, np.concatenate(labels), reason


def evaluate(model, dataset, hierarchy, train_dataset=None, k=5, ks=DEFAULT_KS, distance="path",
             n_permutations=1000, seed=0, batch_size=256, from_logits=None, decoders=None,
             embedding_model=None, retrieval_dtype=np.float32):
    """Runs every measure on a model in one streaming pass and returns a plain dict.

    The model runs batch by batch; each batch leaves only its top-k class
    ids, the classes chosen by the decoders and its embeddings behind (never
    the N x C scores), so N = 50 000 inputs of a C = 100 000 class model fit
    in a few GiB. Measures are running sums (`InformedSums`); retrieval is
    blockwise over the N x D embeddings; hierarchical inference switches to
    its sampled estimator above `keras_hier.inference.EXACT_MAX_CLASSES`.

    Args:
        model: a Keras model (functional, Sequential or subclassed) mapping
            inputs to [B, C] scores. The embedding is the output of the layer
            named "embedding", else the input of the head (see
            `keras_hier.model_scoring`); W comes from the head.
        dataset: the evaluation set: tf.data.Dataset of (x, y) batches, any
            iterable of (x, y) pairs, or an (x, y) tuple of arrays.
        hierarchy: a `keras_hier.Hierarchy`.
        train_dataset: data for the class means ("proto"); when None the
            evaluation set is used (stated in `meta.proto_source`).
        k: k of top-k / AHD@k / HP@k.
        ks: k values of HS@k and Recall@k.
        distance: tree distance kind for every measure (and the expected-cost decoder's cost).
        n_permutations, seed: permutation null of `hierarchical_inference`.
        batch_size: batch size for array inputs.
        from_logits: whether the model outputs logits; None detects a softmax
            output (`keras_hier.outputs.resolve_from_logits`). Only the
            expected-cost decoder needs it (rankings are the same).
        decoders: decoders whose predictions are scored in
            `classification.decoders` (`"argmax"`, `"expected_cost"`); None:
            both up to `EXPECTED_COST_MAX_CLASSES` classes, argmax only above.
        embedding_model: for subclassed models, a model mapping inputs to embeddings.
        retrieval_dtype: float type of the retrieval similarities.

    Returns:
        dict with `classification` (`hierarchy_informed`, plus `decoders`),
        `retrieval`, `inference` ({"W": ..., "proto": ...}), `representatives`
        (lists, for the figures of `report`), `hierarchy` (class paths) and
        `meta` (with `embedding_note` when no embedding was found, and why;
        `seconds` spent in the model pass, retrieval and inference).
    """
    check_distance_kind(distance)
    c = hierarchy.num_classes
    if decoders is None:
        decoders = DECODERS if c <= EXPECTED_COST_MAX_CLASSES else ("argmax",)
    clock = [time.perf_counter()]
    informed, means, emb, labels, reason = _stream(model, dataset, hierarchy, min(k, c), distance, batch_size,
                                                   from_logits, decoders, embedding_model)
    results = {
        "meta": {"num_samples": int(labels.size), "num_classes": c, "distance": distance,
                 "proto_source": "train_dataset" if train_dataset is not None else "dataset"},
        "hierarchy": {"classes": list(hierarchy.classes), "paths": ["/".join(p) for p in hierarchy.paths]},
        "classification": informed.result(),
    }
    seconds = results["meta"]["seconds"] = {"model_pass": _lap(clock)}
    if emb is None:
        results["meta"]["embedding_note"] = f"no retrieval or class means: {reason}"
    elif labels.size > 1:
        kept = [kk for kk in ks if kk <= labels.size - 1]
        results["retrieval"] = retrieval(emb, labels, hierarchy, ks=kept or (1,), distance=distance,
                                         dtype=retrieval_dtype)
        seconds["retrieval"] = _lap(clock)
    reps = _representatives(model, means if emb is not None else None, train_dataset, c, batch_size,
                            embedding_model)
    if "proto" in reps:
        results["meta"]["classes_without_proto"] = [int(i) for i in np.flatnonzero(np.isnan(reps["proto"][:, 0]))]
    results["inference"] = {}
    for name, r in reps.items():
        try:
            results["inference"][name] = hierarchical_inference(r, hierarchy, distance=distance,
                                                                n_permutations=n_permutations, seed=seed)
        except ValueError as err:  # e.g. fewer than 3 classes present: reported, not a crash
            results["inference"][name] = {"error": str(err)}
    seconds["inference"] = _lap(clock)
    results.update(_reported_representatives(reps, hierarchy))
    return results


def _reported_representatives(reps, hierarchy):
    """The representatives kept in the results for `report`'s figures: per class up to
    `MAX_REPORTED_REPRESENTATIVES` classes, else per node of the level the figures collapse to."""
    out = {"representatives": {}}
    if hierarchy.num_classes > MAX_REPORTED_REPRESENTATIVES:
        from keras_hier.plots import collapse_to_level, plot_level

        level = plot_level(hierarchy)
        out["representatives_level"] = level
        reps = {name: collapse_to_level(r, hierarchy, level)[0] for name, r in reps.items()}
    out["representatives"] = {name: np.where(np.isnan(r), None, r).tolist() for name, r in reps.items()}
    return out


def _lap(clock):
    now = time.perf_counter()
    elapsed, clock[0] = now - clock[0], now
    return round(elapsed, 3)


#: Above this many classes the results keep node representatives of a coarser level (its JSON would be huge).
MAX_REPORTED_REPRESENTATIVES = 5000


def _representatives(model, means, train_dataset, c, batch_size, embedding_model):
    reps = {}
    w = head_proxies(model)
    if w is not None and w.shape[0] == c:
        reps["W"] = w
    if train_dataset is not None and means is not None:
        reps["proto"] = class_representatives(model, train_dataset, c, batch_size, embedding_model)["proto"]
    elif means is not None:
        reps["proto"] = means.means()
    return reps


__all__ = ["hierarchy_informed", "hierarchical_inference", "retrieval", "class_representatives",
           "class_means", "head_proxies", "evaluate", "report", "hp_radius", "ClassMeanSums",
           "superclass_correct", "top_k_predictions", "DECODERS", "EXPECTED_COST_MAX_CLASSES"]
