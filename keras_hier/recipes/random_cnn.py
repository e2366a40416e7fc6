"""Does a CNN with random weights already "know" the class hierarchy?

For each seed: build the backbone with random weights (no training), embed a
class-balanced sample of the training images, take the normalised class means
of the normalised embeddings as representatives and run
`keras_hier.evaluation.hierarchical_inference` against the hierarchy, with
the permutation null (class labels of the tree shuffled). Raw pixels are
reported as a reference point.

Usage:
    keras-hier-random-cnn --data DIR_OR_NPZ --hierarchy cifar10 \
        [--per-class 500] [--seeds 0 1 2] [--n-permutations 1000] [--out results.json]

(also `python -m keras_hier.recipes.random_cnn`, and `python -m recipes.random_cnn`
in a checkout).

`--data` is anything `keras_hier.data.load_arrays` reads (a directory of
.npz parts, an .npz file, a directory of Fashion-MNIST IDX files, ...).
"""

import argparse
import os
import sys
import time

import numpy as np

from keras_hier.files import atomic_write_json

MEASURES = ("spearman_classwise", "spearman_classwise_offdiag", "spearman_pairwise")


def balanced_sample(labels, per_class, seed):
    """Indices of up to `per_class` random samples of every class (sorted)."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        picks.append(rng.choice(idx, size=min(per_class, idx.size), replace=False))
    return np.sort(np.concatenate(picks))


def random_embeddings(images, seed, backbone="small_cnn", embedding_dim=None, batch_size=256):
    """Embeddings of a randomly initialised backbone (inputs scaled to [0, 1])."""
    import keras

    from keras_hier import backbones

    keras.utils.set_random_seed(seed)
    net = backbones.get_backbone(backbone, images.shape[1:])
    if embedding_dim:
        inputs = keras.Input(images.shape[1:])
        net = keras.Model(inputs, keras.layers.Dense(embedding_dim, name="embedding")(net(inputs)))
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].astype("float32") / 255.0
        out.append(np.asarray(net.predict_on_batch(batch)))
    return np.concatenate(out)


def summarise(result):
    row = {m: result[m] for m in MEASURES}
    row.update({f"{m}_null_mean": result["null"][m]["mean"] for m in MEASURES})
    row.update({f"{m}_null_std": result["null"][m]["std"] for m in MEASURES})
    row.update({f"{m}_p": result["null"][m]["p_value"] for m in MEASURES})
    row["cophenetic_correlation"] = result["cophenetic_correlation"]
    row["robinson_foulds_normalized"] = result["robinson_foulds_normalized"]
    row["level_p_at_1"] = [lv["p_at_1"] for lv in result["levels"]]
    row["level_map_at_r"] = [lv["map_at_r"] for lv in result["levels"]]
    return row


def markdown(rows, ceiling, hierarchy_name, n_perm):
    lines = [f"Hierarchy `{hierarchy_name}`; ceilings (tie-free distances): "
             + ", ".join(f"{m} {ceiling[m]:.3f}" for m in MEASURES)
             + f"; null = {n_perm} label permutations of the tree (mean ± std, one-sided p).", "",
             "| representation | seed | classwise (diag) | null | p | classwise (no diag) | null | p | "
             "pairwise | null | p | cophenetic r | RF (norm.) | P@1 per upper level |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["representation"], str(r["seed"])]
        for m in MEASURES:
            cells += [f"{r[m]:.3f}", f"{r[m + '_null_mean']:.3f} ± {r[m + '_null_std']:.3f}", f"{r[m + '_p']:.3g}"]
        cells += [f"{r['cophenetic_correlation']:.3f}", f"{r['robinson_foulds_normalized']:.2f}",
                  ", ".join(f"{v:.2f}" for v in r["level_p_at_1"])]
        lines.append("| " + " | ".join(cells) + " |")
    cnn = [r for r in rows if r["representation"] != "pixels"]
    if len(cnn) > 1:
        lines += ["", "Random CNN over seeds (mean ± std): " + ", ".join(
            f"{m} {np.mean([r[m] for r in cnn]):.3f} ± {np.std([r[m] for r in cnn]):.3f}" for m in MEASURES)]
        beats = sum(all(r[m + "_p"] < 0.05 for m in MEASURES) for r in cnn)
        lines.append(f"Seeds beating the null on all three measures at p < 0.05: {beats} of {len(cnn)}.")
    return "\n".join(lines)


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _parser():
    parser = argparse.ArgumentParser(prog="keras-hier-random-cnn", description=__doc__, formatter_class=_Help)
    parser.add_argument("--data", required=True, help="dataset path for keras_hier.data.load_arrays")
    parser.add_argument("--hierarchy", required=True, choices=["cifar10", "cifar100", "fashion_mnist"])
    parser.add_argument("--split", default="train", help="split of --data to sample")
    parser.add_argument("--per-class", type=int, default=500, help="images per class (class-balanced sample)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one random backbone per seed")
    parser.add_argument("--backbone", default="small_cnn", choices=["small_cnn", "resnet18", "resnet50"],
                        help="backbone with random weights")
    parser.add_argument("--embedding-dim", type=int, default=None,
                        help="add a random Dense embedding of this size after the backbone")
    parser.add_argument("--n-permutations", type=int, default=1000, help="permutations of the null distribution")
    parser.add_argument("--distance", default="path", choices=["path", "lca_height"], help="tree distance")
    parser.add_argument("--no-pixels", action="store_true", help="skip the raw-pixel reference row")
    parser.add_argument("--out", default=None, help="write all results as JSON here")
    return parser


def run(argv=None):
    """Runs the study for the command line `argv`; returns the table rows."""
    args = _parser().parse_args(argv)

    from keras_hier import data, hierarchies
    from keras_hier.evaluation import class_means, hierarchical_inference

    hierarchy = getattr(hierarchies, args.hierarchy)()
    images, labels, names = data.load_arrays(args.data, args.split)
    if int(labels.max()) >= hierarchy.num_classes:
        raise SystemExit(f"labels go up to {labels.max()} but the {args.hierarchy} hierarchy has "
                         f"{hierarchy.num_classes} classes")
    norm = lambda s: s.lower().replace("-", "_").replace("/", "_").replace(" ", "_")  # noqa: E731
    if [norm(n) for n in names] != [norm(n) for n in hierarchy.classes[:len(names)]]:
        print(f"note: dataset class names {names} differ in spelling from the hierarchy's "
              f"{list(hierarchy.classes)}; matching by label id", file=sys.stderr)
    runs, rows = [], []
    t_start = time.time()

    def run(representation, seed, embeddings, sample_labels):
        reps = class_means(embeddings, sample_labels, hierarchy.num_classes)
        result = hierarchical_inference(reps, hierarchy, distance=args.distance,
                                        n_permutations=args.n_permutations, seed=seed)
        runs.append({"representation": representation, "seed": seed, "result": result})
        rows.append({"representation": representation, "seed": seed, **summarise(result)})
        print(f"[{time.time() - t_start:6.1f} s] {representation} seed {seed}: "
              + ", ".join(f"{m} {result[m]:.3f} (p {result['null'][m]['p_value']:.3g})" for m in MEASURES),
              flush=True)
        return result

    ceiling = None
    for seed in args.seeds:
        idx = balanced_sample(labels, args.per_class, seed)
        emb = random_embeddings(images[idx], seed, args.backbone, args.embedding_dim)
        ceiling = run(f"random {args.backbone}", seed, emb, labels[idx])["ceiling"]
    if not args.no_pixels:
        idx = balanced_sample(labels, args.per_class, args.seeds[0])
        pixels = images[idx].reshape(len(idx), -1).astype("float32") / 255.0
        run("pixels", args.seeds[0], pixels, labels[idx])

    text = markdown(rows, ceiling, args.hierarchy, args.n_permutations)
    print()
    print(f"Command: keras-hier-random-cnn {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(text)
    if args.out:
        payload = {"args": vars(args), "ceiling": ceiling, "rows": rows, "runs": runs, "markdown": text}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write_json(args.out, payload)
    return rows


def main(argv=None):
    """Console entry point (`keras-hier-random-cnn`); returns the exit status."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        run(argv)
    except (ValueError, OSError) as err:
        print(f"keras-hier-random-cnn: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
