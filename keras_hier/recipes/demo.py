"""The main job behind `make demo`: hierarchy -> train -> evaluate -> export -> query.

1. Build the CIFAR-100 hierarchy and print it with its distance statistics,
   and derive a small hierarchy from WordNet offline.
2. Train a ProxyDR model (small CNN) on Fashion-MNIST with its built-in
   hierarchy: tfds when reachable, else Debian's IDX files
   (/usr/share/datasets/fashion-mnist). A few minutes on a 2-core CPU.
3. Evaluate what it learned (accuracy, mistake severity, Spearman of the
   proxies vs the tree, retrieval) and write the report with figures.
4. Export a TF-Serving SavedModel and query its `serving_default` signature
   with three test images, printing hierarchy-consistent answers.

    keras-hier-demo [--epochs 2] [--out runs/demo] [--hierarchy-only]

(also `python -m keras_hier.recipes.demo`; `make demo` runs `python -m recipes.demo`
in a checkout).
"""

import argparse
import json
import os
import sys
import warnings


def show_hierarchies():
    from keras_hier import Hierarchy, hierarchies

    h = hierarchies.cifar100()
    print(h.summary())
    counts = h.distance_counts("path")
    print("CIFAR-100 path distances (ordered pairs):", counts)
    print("CIFAR-100 LCA heights (ordered pairs):  ", h.distance_counts("lca_height"))
    words = ["dog", "cat", "truck", "car", "rose", "tulip"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = Hierarchy.from_wordnet(words)
    except RuntimeError as error:  # no WordNet on this machine
        print(f"WordNet hierarchy skipped: {error}")
        return counts
    print("\nFrom WordNet:", w)
    for name, path in zip(w.classes, w.paths):
        print(f"  {name:6s} {'/'.join(path)}")
    t = w.distance_matrix()
    print("  path distance dog-cat =", t[0, 1], " dog-truck =", t[0, 2], " rose-tulip =", t[4, 5])
    return counts


def train_evaluate_export(epochs, out, max_examples=None):
    from keras_hier.recipes.configs import get_config
    from keras_hier.recipes.train import train

    config = get_config("cpu_small", dataset="fashion_mnist", head="proxydr", epochs=epochs, seed=0,
                        max_examples=max_examples, n_permutations=200, verbose=2)
    summary = train(config, out)
    with open(os.path.join(out, "report", "results.json")) as f:
        results = json.load(f)
    c, w, r = results["classification"], results["inference"]["W"], results.get("retrieval", {})
    print("\n== What the model learned (test set)")
    print(f"accuracy {c['accuracy']:.4f}   top-5 {c['top_k_accuracy']:.4f}   "
          f"level accuracy {[round(v, 4) for v in c['level_accuracy']]}")
    print(f"mistake severity {c['mistake_severity']:.3f}   AHC {c['ahc']:.3f}   AHD@5 {c['ahd_at_k']:.3f}   "
          f"HP@5 {c['hp_at_k']:.3f}   (path distance)")
    ceiling, null = w["ceiling"], w["null"]
    for key, label in [("spearman_classwise", "classwise"), ("spearman_pairwise", "pairwise")]:
        print(f"proxies vs tree, Spearman {label}: {w[key]:.3f} (ceiling {ceiling[key]:.3f}; "
              f"permutation null {null[key]['mean']:.3f} +- {null[key]['std']:.3f}, p = {null[key]['p_value']:.3f})")
    if r:
        print(f"retrieval: AHS@250 {r.get('ahs_250', float('nan')):.3f}   MAP@R {r.get('map_at_r', float('nan')):.3f}")
    print(f"report: {summary['report']}")
    return summary


def query_export(version_dir, dataset="fashion_mnist", count=3):
    """Queries the export's `serving_default` through TensorFlow's C++ loader, as TF-Serving loads it."""
    import numpy as np

    from keras_hier import hierarchies, load_dataset
    from keras_hier.serving_kit.c_loader import CLoader

    with CLoader() as loader:
        dtype = loader.signatures(version_dir)["serving_default"]["inputs"]["images"][1]
        test = load_dataset(dataset, "test", hierarchy=hierarchies.fashion_mnist(), batch_size=count, shuffle=False,
                            image_dtype="uint8" if dtype == "uint8" else "float32")
        images, labels = next(iter(test.dataset))
        answer = loader.run(version_dir, "serving_default", {"images": np.asarray(images)})
    depth = len([k for k in answer if k.endswith("_names") and k.startswith("level_")])
    print(f"\n== Querying {version_dir} (serving_default) with {count} test images through TensorFlow's C++ "
          "SavedModel loader (what TF-Serving runs)")
    for i in range(count):
        chain = " > ".join(answer[f"level_{l}_names"][i].decode() for l in range(depth))
        truth = test.class_names[int(labels[i])]
        print(f"image {i} (true {truth}): {answer['classes'][i].decode()} "
              f"p={float(answer['scores'][i]):.3f}   chain: {chain}")
    return answer


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def main(argv=None):
    """Console entry point (`keras-hier-demo`, `python -m recipes.demo`)."""
    parser = argparse.ArgumentParser(prog="keras-hier-demo", description=__doc__, formatter_class=_Help)
    parser.add_argument("--epochs", type=int, default=2, help="training epochs")
    parser.add_argument("--out", default="runs/demo", help="run directory (re-running resumes it)")
    parser.add_argument("--max-examples", type=int, default=None,
                        help="train on a seeded subset of this many images (default: all 54 000)")
    parser.add_argument("--hierarchy-only", action="store_true", help="only step 1 (no TensorFlow needed)")
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print("== 1. Hierarchies")
    show_hierarchies()
    if args.hierarchy_only:
        return 0
    print("\n== 2-4. Train ProxyDR on Fashion-MNIST, evaluate, export")
    summary = train_evaluate_export(args.epochs, args.out, args.max_examples)
    query_export(summary["export"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
