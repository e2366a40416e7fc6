"""The WordNet gloss benchmark: a real, public, offline text hierarchy benchmark.

WordNet 3.0 holds a gloss (a one-sentence definition) for each of its
82 115 noun synsets. `load_glosses(depth=5, min_count=50)` labels every noun
synset by its ancestor at `depth` (edges below `entity.n.01`) on its one
hypernym path (`keras_hier.wordnet.hypernym_path`: the longest path, ties
broken by synset names, the rule `Hierarchy.from_wordnet` uses), keeps the
ancestors that label at least `min_count` synsets (the ancestor itself
included), and returns the glosses as texts with those labels, seeded
train / validation / test splits and the WordNet tree above the ancestors as
the `Hierarchy` (the tree `Hierarchy.from_wordnet` builds for those synsets:
single-child chains collapsed). With the defaults: 139 classes, 66 542 glosses, a 5-level tree
(2 / 10 / 31 / 74 / 139 nodes, leaf depth 3 to 5).

What it is: a text classification task with 100+ classes and a deep, real,
published hierarchy, built from the local WordNet (Debian's `wordnet-base`,
NLTK's data, or any WordNet 3.0 database folder; see
`keras_hier.wordnet.get_wordnet`) with no download, fully deterministic given
`(depth, min_count, seed)`. Every synset's gloss is in exactly one split (the
split is stratified per class, so every class is in every split).

What it is not: a natural-language benchmark of human-written documents.
Glosses are short (about 11 words), written in WordNet's house style, and the
labels are defined by the same lexicographers' tree the hierarchy measures
compare with, so a model can learn "words of the animal subtree" cues. Some
glosses are repeated across synsets (`info["duplicate_texts"]` counts them);
they are kept, as WordNet has them. Nothing here is comparable to published
text-classification numbers.

Building reads `data.noun` directly (`keras_hier.wordnet.noun_graph`, a few seconds);
the noun records (names, glosses, paths) are cached as JSON under
`$KERAS_HIER_CACHE/glosses` (default `~/.cache/keras_hier/glosses`), so later
loads take well under a second. `cache_dir=False` never reads or writes it.
"""

import collections
import dataclasses
import hashlib
import json
import os
import re

import numpy as np

from keras_hier.files import atomic_write_json

__all__ = ["load_glosses", "loaded_data", "GlossData", "noun_records", "split_by_class", "FORMAT", "NAME"]

NAME = "wordnet_glosses"  # the name `keras_hier.load_dataset` knows it by

FORMAT = "keras_hier.glosses/1"
_SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class GlossData:
    """What `load_glosses` returns.

    Attributes:
        train, validation, test: `(texts, labels)` tuples: a NumPy array of
            `str` objects `[N]` (dtype object) and int64 class ids `[N]` (class ids of `hierarchy`).
            Ready for `model.fit(*data.train)` and `keras_hier.evaluate(model,
            data.test, data.hierarchy)`.
        synsets: `{split: array of synset names [N]}` aligned with the texts.
        hierarchy: the `keras_hier.Hierarchy`; its classes are the ancestor
            synset names (`"canine.n.02"`), ordered by hypernym path.
        info: counts and parameters (`depth`, `min_count`, `seed`,
            `fractions`, `num_classes`, `num_glosses`, `num_noun_synsets`,
            `duplicate_texts`, `sizes`, `build_seconds`, `cached`).
    """

    train: tuple
    validation: tuple
    test: tuple
    synsets: dict
    hierarchy: object
    info: dict

    def split(self, name):
        """`(texts, labels)` of `"train"`, `"validation"` or `"test"`."""
        if name not in _SPLITS:
            raise ValueError(f"GlossData.split: unknown split {name!r}; choose one of {_SPLITS}")
        return getattr(self, name)

    def dataset(self, name, batch_size=128, shuffle=None, seed=0):
        """A batched `tf.data.Dataset` of `(text, label)` for split `name`.

        Args:
            name: `"train"`, `"validation"` or `"test"`.
            batch_size: batch size.
            shuffle: reshuffle every epoch (default: True for `"train"`).
            seed: shuffling seed.

        Returns:
            A prefetched `tf.data.Dataset` of (string [B], int64 [B]).
        """
        import tensorflow as tf

        texts, labels = self.split(name)
        ds = tf.data.Dataset.from_tensor_slices((texts, labels))
        if (name == "train") if shuffle is None else shuffle:
            ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(int(batch_size)).prefetch(tf.data.AUTOTUNE)


def _cache_dir(cache_dir):
    if cache_dir is False:
        return None
    if cache_dir is None:
        root = os.environ.get("KERAS_HIER_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "keras_hier"))
        cache_dir = os.path.join(root, "glosses")
    return os.fspath(cache_dir)


def _source_key(wordnet_dir):
    """Cache key of the WordNet source (a folder given explicitly, or the default search)."""
    source = "default" if wordnet_dir is None else os.path.abspath(os.fspath(wordnet_dir))
    return hashlib.sha1(f"{FORMAT}|{source}".encode()).hexdigest()[:12]


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def noun_records(wordnet_dir=None, cache_dir=None):
    """Every WordNet noun synset: its name, gloss and hypernym path.

    Args:
        wordnet_dir: a WordNet 3.0 database folder (default: see
            `keras_hier.wordnet.get_wordnet`).
        cache_dir: cache folder (None: `$KERAS_HIER_CACHE/glosses`; False: no cache).

    Returns:
        dict with `names` (synset names, WordNet's order), `glosses` (their
        definitions) and `paths` (each path as indices into `names`, root
        first, the synset last: the rule of `keras_hier.wordnet.hypernym_path`,
        computed by `keras_hier.wordnet.noun_graph`).
    """
    folder = _cache_dir(cache_dir)
    path = os.path.join(folder, f"nouns-{_source_key(wordnet_dir)}.json") if folder else None
    if path and os.path.exists(path):
        cached = _read_json(path)
        if cached is not None:
            return cached
    from keras_hier import wordnet

    graph = wordnet.noun_graph(wordnet_dir)
    glosses = [None] * len(graph.names)
    for line in wordnet.database_lines("data.noun", wordnet_dir):
        if not line.startswith(" "):
            glosses[graph.index_of_offset[int(line[:8])]] = _definition(line)
    missing = [graph.names[i] for i, g in enumerate(glosses) if g is None]
    if missing:
        raise RuntimeError(f"WordNet data.noun has no gloss for {len(missing)} synsets (first: {missing[0]})")
    index = {name: i for i, name in enumerate(graph.names)}
    records = {"format": FORMAT, "names": list(graph.names), "glosses": glosses,
               "paths": [[index[a] for a in graph.path(i)] for i in range(len(graph.names))]}
    if path:
        os.makedirs(folder, exist_ok=True)
        atomic_write_json(path, records, indent=None, separators=(",", ":"))
    return records


def _definition(line):
    """A synset's definition from its `data.noun` line: the gloss without its quoted
    examples (NLTK's `Synset.definition()` rule)."""
    gloss = line.strip().split("|", 1)[1]
    return re.sub(r'".*?"', "", gloss).strip().strip("; ")


def _labelled(records, depth, min_count):
    """(class synset indices ordered by path, [M] synset indices, [M] class ids)."""
    counts = collections.Counter(p[depth] for p in records["paths"] if len(p) > depth)
    kept = [a for a, n in counts.items() if n >= min_count]
    if not kept:
        raise ValueError(f"load_glosses: no ancestor at depth {depth} labels {min_count} or more synsets "
                         f"(largest: {max(counts.values()) if counts else 0}); lower depth or min_count")
    names, paths = records["names"], records["paths"]
    kept.sort(key=lambda a: tuple(names[i] for i in paths[a]))
    class_of = {a: c for c, a in enumerate(kept)}
    members = [(i, class_of[p[depth]]) for i, p in enumerate(paths) if len(p) > depth and p[depth] in class_of]
    synsets = np.array([i for i, _ in members], dtype=np.int64)
    labels = np.array([c for _, c in members], dtype=np.int64)
    return kept, synsets, labels


def _hierarchy(class_paths):
    """The tree `Hierarchy.from_wordnet(class synset names)` builds, from the paths at hand.

    Same rule (`keras_hier.wordnet.collapse_chains`: single-child chains and
    the common top removed); the classes are the synsets themselves, so no
    WordNet lookup is needed (tests compare it with `from_wordnet`).
    """
    from keras_hier.hierarchy import Hierarchy
    from keras_hier.wordnet import collapse_chains

    names = [path[-1] for path in class_paths]
    hierarchy = Hierarchy(collapse_chains([tuple(path) for path in class_paths]), names)
    hierarchy.wordnet_choices = {name: name for name in names}
    return hierarchy


def split_by_class(labels, fractions=(0.8, 0.1, 0.1), seed=0):
    """Seeded stratified split of `range(len(labels))` into train / validation / test.

    Each class's members are permuted with `numpy.random.default_rng(seed)`;
    the first `round(fractions[2] * n)` (at least 1) go to test, the next
    `round(fractions[1] * n)` (at least 1) to validation, the rest to train.
    Every index lands in exactly one split.

    Args:
        labels: int class ids `[N]`.
        fractions: `(train, validation, test)`, non-negative, summing to 1.
        seed: the seed.

    Returns:
        `(train, validation, test)` sorted int64 index arrays.

    Example:
    >>> tr, va, te = split_by_class([0] * 10 + [1] * 10, seed=0)
    >>> len(tr), len(va), len(te), len(set(tr) | set(va) | set(te))
    (16, 2, 2, 20)
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be (train, validation, test) >= 0 summing to 1, got {fractions!r}")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    rng = np.random.default_rng(seed)
    parts = ([], [], [])
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(members.size)]
        n = members.size
        n_test = max(1, int(round(fractions[2] * n))) if fractions[2] > 0 else 0
        n_val = max(1, int(round(fractions[1] * n))) if fractions[1] > 0 else 0
        if n_test + n_val >= n:
            raise ValueError(f"class {int(c)} has {n} examples: too few for the fractions {fractions}")
        parts[2].append(members[:n_test])
        parts[1].append(members[n_test:n_test + n_val])
        parts[0].append(members[n_test + n_val:])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64) for p in parts)


def load_glosses(depth=5, min_count=50, seed=0, fractions=(0.8, 0.1, 0.1), wordnet_dir=None,
                 cache_dir=None, max_per_class=None):
    """The WordNet gloss benchmark (see the module docstring): splits and hierarchy.

    Args:
        depth: depth of the label ancestor (edges below `entity.n.01`).
        min_count: keep ancestors labelling at least this many synsets.
        seed: seed of the split (and of the `max_per_class` subsample).
        fractions: `(train, validation, test)` fractions of each class.
        wordnet_dir: a WordNet 3.0 database folder (default: NLTK's data,
            `$KERAS_HIER_WORDNET`, `/usr/share/wordnet`).
        cache_dir: cache folder (None: `$KERAS_HIER_CACHE/glosses`; False: none).
        max_per_class: keep a seeded random subset of at most this many
            glosses per class before splitting (quick runs, tutorials).

    Returns:
        A `GlossData` (`train`, `validation`, `test` as `(texts, labels)`,
        `synsets`, `hierarchy`, `info`).

    Raises:
        ValueError: bad depth / min_count / fractions, or no class left.
        RuntimeError: no WordNet 3.0 found (with how to install one).

    Example:

    ```python
    from keras_hier.glosses import load_glosses
    data = load_glosses(depth=5, min_count=50, seed=0)
    texts, labels = data.train          # 'a domesticated carnivorous mammal ...', class id
    data.hierarchy.num_classes          # 139
    ```
    """
    import time

    start = time.perf_counter()
    for arg, value, low in (("depth", depth, 1), ("min_count", min_count, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"load_glosses: {arg} must be an int >= {low}, got {value!r}")
    if max_per_class is not None and int(max_per_class) < 3:
        raise ValueError(f"load_glosses: max_per_class must be >= 3 (one gloss per split), got {max_per_class!r}")
    folder = _cache_dir(cache_dir)
    was_cached = bool(folder) and os.path.exists(os.path.join(folder, f"nouns-{_source_key(wordnet_dir)}.json"))
    records = noun_records(wordnet_dir, cache_dir)
    classes, synsets, labels = _labelled(records, int(depth), int(min_count))
    names = records["names"]
    hierarchy = _hierarchy([[names[i] for i in records["paths"][a]] for a in classes])
    if max_per_class is not None:
        keep = _subsample(labels, int(max_per_class), seed)
        synsets, labels = synsets[keep], labels[keep]
    texts = np.array([records["glosses"][i] for i in synsets], dtype=object)  # what Keras fit/predict take
    parts = split_by_class(labels, fractions, seed)
    synset_names = np.array([names[i] for i in synsets], dtype=str)
    info = {"depth": int(depth), "min_count": int(min_count), "seed": int(seed), "fractions": list(fractions),
            "num_noun_synsets": len(names), "num_classes": len(classes), "num_glosses": int(labels.size),
            "duplicate_texts": int(labels.size - len(set(texts.tolist()))),
            "sizes": {s: int(p.size) for s, p in zip(_SPLITS, parts)}, "cached": was_cached,
            "build_seconds": round(time.perf_counter() - start, 3)}
    return GlossData(**{s: (texts[p], labels[p]) for s, p in zip(_SPLITS, parts)},
                     synsets={s: synset_names[p] for s, p in zip(_SPLITS, parts)},
                     hierarchy=hierarchy, info=info)


def _subsample(labels, per_class, seed):
    rng = np.random.default_rng(seed + 1)
    keep = [members[rng.permutation(members.size)[:per_class]]
            for members in (np.flatnonzero(labels == c) for c in np.unique(labels))]
    return np.sort(np.concatenate(keep))


_IMAGE_ONLY = ("augment", "data_dir", "image_dtype", "image_size", "manual_dir", "drop_remainder")


def loaded_data(split="train", hierarchy=None, batch_size=128, validation_split=None, seed=0, shuffle=None,
                max_examples=None, depth=5, min_count=50, max_per_class=None, **image_options):
    """The gloss benchmark as `keras_hier.load_dataset("wordnet_glosses", ...)` returns it.

    Takes `load_dataset`'s arguments. The validation part is the benchmark's
    own validation split (`validation_split` only switches it off when 0);
    `max_examples` keeps about that many glosses, evenly per class.

    Args:
        split: `"train"` (with `validation`) or `"test"`.
        hierarchy: None, or the benchmark's own hierarchy (anything else is refused).
        batch_size, seed, shuffle: as for `load_dataset` (`seed` also seeds the split).
        validation_split: None (the benchmark's 10 %) or 0 (no validation set).
        max_examples: approximate total size (quick runs).
        depth, min_count, max_per_class: see `load_glosses`.
        **image_options: `load_dataset`'s image options; only their defaults are accepted.

    Returns:
        A `keras_hier.data.LoadedData` whose datasets yield (string [B], int64 [B])
        and whose `input_shape` is `()`.

    Example:

    ```python
    train = keras_hier.load_dataset("wordnet_glosses", "train", batch_size=128)
    ```
    """
    from keras_hier.data import LoadedData

    used = sorted(k for k, v in image_options.items() if k not in _IMAGE_ONLY or v not in (None, False, "float32"))
    if used:
        raise ValueError(f"load_dataset({NAME!r}): text data take no {used}")
    if split not in ("train", "test"):
        raise ValueError(f"load_dataset({NAME!r}): split must be 'train' or 'test', got {split!r}")
    if validation_split not in (None, 0, 0.0):
        raise ValueError(f"load_dataset({NAME!r}): the validation split is the benchmark's own (10 % per class); "
                         f"pass validation_split=None or 0, not {validation_split!r}")
    if max_examples is not None and max_per_class is None:
        max_per_class = max(3, int(max_examples) // 100)
    data = load_glosses(depth=depth, min_count=min_count, seed=seed, max_per_class=max_per_class)
    if hierarchy is not None and hierarchy != data.hierarchy:
        raise ValueError(f"load_dataset({NAME!r}): the hierarchy is the benchmark's own (WordNet above the "
                         f"depth-{depth} ancestors); pass hierarchy=None")
    validation, n_val = None, 0
    if split == "train" and validation_split is None:
        validation, n_val = data.dataset("validation", batch_size), len(data.validation[1])
    dataset = data.dataset(split, batch_size, shuffle=shuffle, seed=seed)
    return LoadedData(dataset=dataset, validation=validation, hierarchy=data.hierarchy,
                      class_names=list(data.hierarchy.classes), input_shape=(),
                      num_examples=len(data.split(split)[1]), num_validation=n_val)
