"""The script behind docs/tutorial.md: hierarchy-aware training in Keras.

    python docs/tutorial.py                      # Fashion-MNIST, a few minutes on a CPU
    python docs/tutorial.py --tiny --data DIR    # the CI budget (seconds)

Steps: build a hierarchy; train a softmax model with `SimLoss` and a model
with a `ProxyDRHead`; compare their mistakes and the trees they learned
(figures); export the ProxyDR model for TF-Serving; query the export.
"""

import argparse
import os
import sys

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="Fashion-MNIST IDX folder (default: tfds, else Debian's copy)")
    parser.add_argument("--out", default="runs/tutorial")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-examples", type=int, default=20000)
    parser.add_argument("--tiny", action="store_true", help="a few hundred images, one epoch (CI)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.epochs, args.max_examples = 1, min(args.max_examples, 512)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    # --8<-- [start:hierarchy]
    import keras

    import keras_hier
    from keras_hier import Hierarchy, hierarchies

    hierarchy = hierarchies.fashion_mnist()
    print(hierarchy.summary())
    # any tree works the same way, e.g. one written by hand:
    toy = Hierarchy.from_paths({"rose": "plant/flower/rose", "tulip": "plant/flower/tulip",
                                "truck": "vehicle/road/truck"})
    print("toy tree distances:\n", toy.distance_matrix("path"))
    # --8<-- [end:hierarchy]

    # --8<-- [start:data]
    source = args.data or "fashion_mnist"  # offline, tfds' Fashion-MNIST falls back to Debian's IDX files
    train = keras_hier.load_dataset(source, "train", hierarchy=hierarchy, batch_size=64,
                                    validation_split=0.1, seed=0, max_examples=args.max_examples)
    test = keras_hier.load_dataset(source, "test", hierarchy=hierarchy, batch_size=256,
                                   max_examples=args.max_examples // 2)
    # --8<-- [end:data]

    # --8<-- [start:models]
    def backbone():
        return keras_hier.backbones.small_cnn(train.input_shape, filters=(16, 32, 64, 64))

    keras.utils.set_random_seed(0)
    simloss_model = keras_hier.build_classifier(backbone(), head="softmax", num_classes=hierarchy.num_classes,
                                                embedding_dim=64)
    simloss_model.compile(optimizer=keras.optimizers.Adam(1e-3),
                          loss=keras_hier.SimLoss.from_hierarchy(hierarchy, beta=1.0),
                          metrics=["accuracy", keras_hier.MistakeSeverity(hierarchy)])

    proxydr_model = keras_hier.build_classifier(backbone(), head="proxydr", num_classes=hierarchy.num_classes,
                                                embedding_dim=64)
    proxydr_model.compile(optimizer=keras.optimizers.Adam(1e-3),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=["accuracy", keras_hier.MistakeSeverity(hierarchy)])
    for name, model in [("SimLoss", simloss_model), ("ProxyDR", proxydr_model)]:
        print(f"\n== training {name}")
        model.fit(train.dataset, validation_data=train.validation, epochs=args.epochs, verbose=2)
    # --8<-- [end:models]

    # --8<-- [start:evaluate]
    rows = []
    for name, model in [("SimLoss", simloss_model), ("ProxyDR", proxydr_model)]:
        results = keras_hier.evaluate(model, test.dataset, hierarchy, train_dataset=train.dataset,
                                      n_permutations=50, seed=0)
        keras_hier.report(results, os.path.join(args.out, name), hierarchy=hierarchy)
        c = results["classification"]
        w = results["inference"]["W"]
        rows.append((name, c["accuracy"], c["mistake_severity"], c["ahd_at_k"], w["spearman_classwise"]))
    print("\nmodel    accuracy  mistake severity  AHD@5   Spearman(W vs tree)")
    for name, accuracy, severity, ahd, rho in rows:
        print(f"{name:8s} {accuracy:8.3f}  {severity:16.3f}  {ahd:6.3f}  {rho:8.3f}")
    print(f"reports and figures: {args.out}/SimLoss/report.md, {args.out}/ProxyDR/report.md")
    # --8<-- [end:evaluate]

    # --8<-- [start:export]
    import shutil

    import tensorflow as tf

    export_base = os.path.join(args.out, "serving")
    shutil.rmtree(export_base, ignore_errors=True)
    version_dir = keras_hier.export_saved_model(proxydr_model, hierarchy, export_base, backoff_threshold=0.7)
    served = tf.saved_model.load(version_dir).signatures["serving_default"]
    images = next(iter(test.dataset))[0][:3]
    answer = served(images=tf.convert_to_tensor(images))
    for i in range(3):
        chain = " > ".join(answer[f"level_{level}_names"][i].numpy().decode() for level in range(hierarchy.depth))
        print(f"image {i}: {answer['classes'][i].numpy().decode():12s} p={float(answer['scores'][i]):.2f}  "
              f"chain {chain}  back-off -> {answer['prediction'][i].numpy().decode()}")
    # --8<-- [end:export]
    return 0


if __name__ == "__main__":
    sys.exit(main())
