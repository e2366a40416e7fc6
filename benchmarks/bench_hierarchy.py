"""Hierarchies at scale: building, saving and pairwise distances without a C x C matrix.

Times, on WordNet's 64 958 leaf nouns (up to 19 levels, ragged) and on
synthetic uniform trees of 100 000 and 1 000 000 classes:
- reading WordNet's noun graph (`keras_hier.wordnet.noun_graph`, cold) and
  building `hierarchies.wordnet_nouns()` / `hierarchies.imagenet1k()`;
- `Hierarchy.from_paths` on "a/b/class" strings;
- `to_config` + `json.dumps` (what a Keras `get_config` holds) and back;
- `Hierarchy.distance` on 1 000 000 random pairs (both kinds), and its
  agreement with `distance_matrix` on a 2 000-class sample.

    .venv/bin/python benchmarks/bench_hierarchy.py            # about a minute; rewrites its BENCHMARKS.md section
    .venv/bin/python benchmarks/bench_hierarchy.py --quick    # no 1 000 000-class row, results not written
    .venv/bin/python benchmarks/bench_hierarchy.py --no-write # every row, printed only
"""

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import publish  # noqa: E402

from keras_hier import Hierarchy, hierarchies  # noqa: E402
from keras_hier.wordnet import noun_graph  # noqa: E402


def timed(function, repeat=1):
    """(result, best CPU seconds of this process over `repeat` runs).

    CPU time, not wall time: the work is single-threaded NumPy/Python, and
    CPU time does not count other processes sharing the machine.
    """
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.process_time()
        result = function()
        best = min(best, time.process_time() - start)
    return result, best


def synthetic_paths(num_classes, branching=(10, 10, 10)):
    """Uniform 4-level tree: "g{..}/s{..}/t{..}/class{c}" strings."""
    c = np.arange(num_classes)
    a, b, d = c % branching[0], (c // branching[0]) % branching[1], (c // 7) % branching[2]
    return [f"g{x}/s{x}{y}/t{x}{y}{z}/class{i}" for i, x, y, z in zip(c, a, b, d)]


def tree_rows(name, hierarchy_from_strings, strings, separator="/"):
    rows = []
    h, build = timed(lambda: hierarchy_from_strings(strings, separator), repeat=2)
    config, to_config = timed(lambda: json.dumps(h.to_config()), repeat=2)
    again, from_config = timed(lambda: Hierarchy.from_config(json.loads(config)), repeat=2)
    assert again == h
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, h.num_classes, 1_000_000), rng.integers(0, h.num_classes, 1_000_000)
    _, path_time = timed(lambda: h.distance(a, b), repeat=2)
    _, height_time = timed(lambda: h.distance(a, b, kind="lca_height"), repeat=2)
    sample = rng.choice(h.num_classes, size=min(2000, h.num_classes), replace=False)
    small = Hierarchy([h.paths[i] for i in sample], [h.classes[i] for i in sample])
    # path distances depend only on the two paths, so the sample's own matrix is exact
    assert np.array_equal(small.distance_matrix("path"), h.distance(sample[:, None], sample[None, :]))
    rows.append(f"| {name} | {h.num_classes:,} | {h.depth} | {build:.2f} | {to_config:.2f} / {len(config) / 1e6:.1f} MB "
                f"| {from_config:.2f} | {path_time:.2f} / {height_time:.2f} |")
    return rows


def keras_round_trip(hierarchy, folder):
    """CPU seconds to save and load a .keras model whose layer config holds `hierarchy.to_config()`."""
    import keras

    @keras.saving.register_keras_serializable(package="bench_hierarchy")
    class TreeHolder(keras.layers.Layer):
        def __init__(self, hierarchy, **kwargs):
            super().__init__(**kwargs)
            self.hierarchy = Hierarchy.from_config(hierarchy)

        def call(self, x):
            return x

        def get_config(self):
            return {**super().get_config(), "hierarchy": self.hierarchy.to_config()}

    inputs = keras.Input((3,))
    model = keras.Model(inputs, TreeHolder(hierarchy)(inputs))
    path = os.path.join(folder, "tree.keras")
    _, save = timed(lambda: model.save(path))
    loaded, load = timed(lambda: keras.saving.load_model(path))
    assert loaded.layers[-1].hierarchy == hierarchy
    return save, load


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the 1 000 000-class tree; do not write")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md as it is")
    args = parser.parse_args(argv)
    graph, graph_time = timed(noun_graph)
    nouns, nouns_time = timed(hierarchies.wordnet_nouns)
    imagenet, imagenet_time = timed(hierarchies.imagenet1k)
    leaf_strings = ["|".join(path) for path in nouns.paths]   # some synset names contain "/"
    lines = [
        "## Hierarchies at scale",
        "",
        f"CPU seconds. WordNet 3.0 noun graph read from `data.noun`/`index.noun` (cold, {len(graph.names):,} synsets): "
        f"{graph_time:.2f} s. `hierarchies.wordnet_nouns()` ({nouns.num_classes:,} classes, "
        f"{nouns.depth} levels) after it: {nouns_time:.2f} s. `hierarchies.imagenet1k()` "
        f"({imagenet.num_classes} classes, {imagenet.depth} levels): {imagenet_time:.2f} s.",
        "",
        "CPU seconds (best of 2):",
        "",
        "| tree | classes | levels | `from_paths` s | `to_config` + `json.dumps` s / size "
        "| `from_config` s | `distance` of 10^6 pairs s (path / lca_height) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += tree_rows("WordNet leaf nouns", Hierarchy.from_paths, leaf_strings, "|")
    lines += tree_rows("synthetic uniform", Hierarchy.from_paths, synthetic_paths(100_000))
    if not args.quick:
        lines += tree_rows("synthetic uniform", Hierarchy.from_paths, synthetic_paths(1_000_000))
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        big = Hierarchy.from_paths(synthetic_paths(100_000))
        save, load = keras_round_trip(big, folder)
    lines += ["", f"A `.keras` model whose layer config holds a 100 000-class `to_config()`: save {save:.2f} s, "
              f"load {load:.2f} s (CPU)."]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    lines += ["", f"Peak resident memory of the whole run: {peak:.2f} GiB. `distance` never builds a C x C "
              "matrix (one at 100 000 classes would take 40 GB); it agrees with `distance_matrix` on a "
              "2 000-class sample of each tree (path kind, checked in the run)."]
    publish("hierarchy", lines, write=not (args.quick or args.no_write))


if __name__ == "__main__":
    main()
