"""The script behind docs/text_tutorial.md: a hierarchy-aware text classifier on WordNet glosses.

    python docs/text_tutorial.py            # the full benchmark, a few minutes on a CPU
    python docs/text_tutorial.py --tiny     # a few glosses per class, one epoch (CI, under a minute)

Steps: load the WordNet gloss benchmark (offline); build a text backbone;
train a ProxyDR model with EMA proxies; evaluate its mistakes and the tree
its proxies learned; classify new sentences; export it for TF-Serving and
query the export with plain text.
"""

import argparse
import os


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/text_tutorial")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-per-class", type=int, default=None, help="glosses kept per class")
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--tiny", action="store_true", help="8 glosses per class, one epoch (CI)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.epochs, args.max_per_class, args.permutations = 1, 8, 50
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    # --8<-- [start:data]
    import keras
    import numpy as np

    import keras_hier
    from keras_hier.glosses import load_glosses

    data = load_glosses(depth=5, min_count=50, seed=0, max_per_class=args.max_per_class)
    hierarchy = data.hierarchy
    print(data.info["num_classes"], "classes,", data.info["num_glosses"], "glosses,", data.info["sizes"])
    print(hierarchy.summary())
    texts, labels = data.train
    print(repr(str(texts[0])), "->", " / ".join(hierarchy.paths[labels[0]]))
    # --8<-- [end:data]

    # --8<-- [start:model]
    keras.utils.set_random_seed(0)
    backbone = keras_hier.backbones.text_bag(texts=texts, embedding_dim=64, max_tokens=20_000)
    model = keras_hier.build_classifier(backbone, head="proxydr", num_classes=hierarchy.num_classes,
                                        embedding_dim=128, proxy_mode="ema")
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy", keras_hier.MistakeSeverity(hierarchy)])
    model.fit(data.dataset("train", batch_size=128), validation_data=data.dataset("validation", 512),
              epochs=args.epochs, verbose=2)
    # --8<-- [end:model]

    # --8<-- [start:evaluate]
    results = keras_hier.evaluate(model, data.test, hierarchy,
                                  train_dataset=data.dataset("train", 512, shuffle=False),
                                  n_permutations=args.permutations)
    c = results["classification"]
    print(f"accuracy {c['accuracy']:.3f}, mistake severity {c['mistake_severity']:.2f} edges, "
          f"AHD@5 {c['ahd_at_k']:.2f}, AHS@250 {results['retrieval'].get('ahs_250', float('nan')):.3f}")
    w = results["inference"]["W"]
    print(f"proxies vs tree: classwise Spearman {w['spearman_classwise']:.3f} "
          f"(ceiling {w['ceiling']['spearman_classwise']:.3f}, "
          f"null {w['null']['spearman_classwise']['mean']:.3f}, p {w['null']['spearman_classwise']['p_value']:.3g})")
    keras_hier.report(results, os.path.join(args.out, "report"), hierarchy, figures=not args.tiny)
    # --8<-- [end:evaluate]

    # --8<-- [start:predict]
    sentences = np.array(["a small domesticated feline", "a tool for cutting wood",
                          "a feeling of great happiness"], dtype=object)
    scores = model.predict(sentences, verbose=0)
    for sentence, class_id in zip(sentences, scores.argmax(axis=1)):
        print(f"{sentence!r}: {' / '.join(hierarchy.paths[class_id])}")
    # --8<-- [end:predict]

    # --8<-- [start:export]
    import tensorflow as tf

    export_dir = keras_hier.export_saved_model(model, hierarchy, os.path.join(args.out, "export"))
    serving = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
    (input_name,) = serving.structured_input_signature[1]     # the model's one string input
    answer = serving(**{input_name: tf.constant(sentences.astype(str))})
    print([name.decode() for name in answer["classes"].numpy()])
    assert answer["class_ids"].numpy().tolist() == scores.argmax(axis=1).tolist()
    # --8<-- [end:export]
    return results


if __name__ == "__main__":
    main()
