"""Train, evaluate and export a hierarchy-aware classifier in one command.

    python -m recipes.train --config cpu_small --dataset fashion_mnist \\
        --head proxydr --ema --epochs 3 --out runs/fmnist_proxydr

(also installed as the `keras-hier-train` console script). The run directory
`--out` receives:

- `config.json`: the resolved configuration;
- `backup/`: the training state after every epoch (weights, optimizer,
  epoch): re-running the same command after a kill resumes from the last
  finished epoch; a finished run is not trained again;
- `best.weights.h5` (+ `best.json`): the best epoch by validation accuracy;
- `logs/`: TensorBoard; `history.csv`: per-epoch metrics;
- `report/`: `report.md`, `results.json` and figures of `keras_hier.evaluate`
  on the test split, with the best weights;
- `export/<version>/`: the TF-Serving SavedModel (`keras_hier.export_saved_model`);
- `summary.json`: the headline numbers.

On GPUs the mixed_float16 policy is used automatically and several GPUs are
used through `tf.distribute.MirroredStrategy`.
"""

import argparse
import inspect
import json
import os
import sys
import time

from recipes.configs import CONFIGS, DEFAULTS, get_config

HEADS = ("softmax", "normface", "proxydr", "corr")
LOSSES = ("ce", "simloss", "hxe", "softlabel")


# --------------------------------------------------------------------------- small helpers
def _atomic_json(path, obj):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


def _atomic_save_weights(model, path):
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f"tmp-{os.getpid()}-{name}")  # keeps the .weights.h5 suffix
    model.save_weights(tmp)
    os.replace(tmp, path)


def setup_devices(config):
    """Chooses the distribution strategy and the dtype policy.

    Returns:
        `(strategy, policy_name)`.
    """
    import keras
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    mp = str(config["mixed_precision"]).lower()
    if mp not in ("auto", "on", "off", "true", "false"):
        raise ValueError(f"mixed_precision must be auto/on/off, got {config['mixed_precision']!r}")
    use_mp = bool(gpus) if mp == "auto" else mp in ("on", "true")
    policy = "mixed_float16" if use_mp else "float32"
    keras.mixed_precision.set_global_policy(policy)
    kind = config["strategy"]
    if kind not in ("auto", "mirrored", "default"):
        raise ValueError(f"strategy must be auto/mirrored/default, got {kind!r}")
    if kind == "mirrored" or (kind == "auto" and len(gpus) > 1):
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    else:
        strategy = tf.distribute.get_strategy()
    return strategy, policy


def load_hierarchy(spec):
    """A Hierarchy from a CSV (`Class,Path` table) or JSON file; None passes through."""
    if spec is None:
        return None
    from keras_hier.hierarchy import Hierarchy

    if str(spec).endswith(".json"):
        return Hierarchy.from_json(spec)
    if str(spec).endswith(".csv"):
        return Hierarchy.from_csv(spec)
    raise ValueError(f"--hierarchy must be a .csv or .json file, got {spec!r}")


def load_data(config):
    """(train LoadedData with validation, test LoadedData, train set for class means)."""
    from keras_hier.data import load_dataset

    common = dict(hierarchy=load_hierarchy(config["hierarchy"]), batch_size=config["batch_size"],
                  seed=config["seed"], data_dir=config["data_dir"],
                  manual_dir=config["manual_dir"])
    train = load_dataset(config["dataset"], "train", validation_split=config["validation_split"],
                         augment=config["augment"], max_examples=config["max_examples"], **common)
    common["hierarchy"] = train.hierarchy
    test = load_dataset(config["dataset"], "test", shuffle=False,
                        max_examples=config["max_test_examples"], **common)
    plain = train.dataset
    if config["augment"]:  # class means from un-augmented training images
        plain = load_dataset(config["dataset"], "train", shuffle=False,
                             validation_split=config["validation_split"],
                             max_examples=config["max_examples"], **common).dataset
    return train, test, plain


# --------------------------------------------------------------------------- model
def _supported(fn, kwargs):
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


def build_model(config, hierarchy, input_shape):
    """Backbone + embedding + head via `keras_hier.build_classifier`."""
    import keras_hier
    from keras_hier.backbones import get_backbone

    head = config["head"]
    if head not in HEADS:
        raise ValueError(f"--head must be one of {HEADS}, got {head!r}")
    bkw = dict(config.get("backbone_kwargs") or {})
    if config["backbone"] == "resnet50":
        bkw["weights"] = config["backbone_weights"]
    backbone = get_backbone(config["backbone"], input_shape, **bkw)
    if config["ema"] and config["mds"]:
        raise ValueError("--ema and --mds exclude each other (MDS proxies are fixed)")
    kwargs = dict(head=head, num_classes=hierarchy.num_classes,
                  embedding_dim=int(config["embedding_dim"]), hierarchy=hierarchy)
    if head in ("normface", "proxydr"):
        kwargs["proxy_mode"] = "ema" if config["ema"] else "mds" if config["mds"] else "learned"
        kwargs["dynamic_scale"] = bool(config["dynamic"])
        if not config["dynamic"]:  # dynamic: the head starts from its own initial s
            kwargs["scale"] = float(config["scale"])
        if config["mds"]:
            kwargs["mds_seed"] = int(config["seed"])
    else:
        unsupported = [o for o in ("ema", "dynamic") if config[o]]
        if head == "softmax" and config["mds"]:
            unsupported.append("mds")
        if unsupported:
            raise ValueError(f"--head {head} does not support --{', --'.join(unsupported)}")
        if head == "corr":
            kwargs["mds_seed"] = int(config["seed"])
    return keras_hier.build_classifier(backbone, **kwargs)


def build_loss(config, hierarchy):
    """The training loss named by `config["loss"]` (CORR head: `CORRLoss`)."""
    import keras
    import keras_hier

    if config["head"] == "corr":
        return keras_hier.CORRLoss()
    name = config["loss"]
    if name == "ce":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if name == "simloss":
        cls = keras_hier.SimLoss
        kw = dict(hierarchy=hierarchy, beta=config["loss_beta"])
    elif name == "hxe":
        cls = keras_hier.HierarchicalCrossEntropy
        kw = dict(hierarchy=hierarchy, alpha=config["loss_alpha"])
    elif name == "softlabel":
        cls = keras_hier.SoftLabelCrossEntropy
        kw = dict(hierarchy=hierarchy, beta=config["loss_beta"])
    else:
        raise ValueError(f"--loss must be one of {LOSSES}, got {name!r}")
    return cls(**_supported(cls.__init__, kw))


def compile_model(model, config, hierarchy):
    import keras

    kw = {"learning_rate": config["lr"]}
    if config["weight_decay"]:
        optimizer = keras.optimizers.AdamW(weight_decay=config["weight_decay"], **kw)
    else:
        optimizer = keras.optimizers.Adam(**kw)
    model.compile(optimizer=optimizer, loss=build_loss(config, hierarchy),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


# --------------------------------------------------------------------------- callbacks
def _callbacks(out, monitor):
    import keras

    class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
        """BackupAndRestore whose files are replaced atomically (a kill mid-write
        leaves the previous epoch's state intact)."""

        def _save_model(self):
            os.makedirs(self.backup_dir, exist_ok=True)
            _atomic_save_weights(self.model, self._weights_path)
            _atomic_json(self._training_metadata_path,
                         {"epoch": self._current_epoch, "batch": self._last_batch_seen})

    class BestCheckpoint(keras.callbacks.Callback):
        """Keeps the weights of the best epoch by `monitor` (max), surviving resumes."""

        def __init__(self, path, monitor):
            super().__init__()
            self.path, self.monitor = path, monitor
            self.meta = path.replace(".weights.h5", ".json")
            self.best = None

        def on_train_begin(self, logs=None):
            if os.path.exists(self.meta) and os.path.exists(self.path):
                with open(self.meta) as f:
                    self.best = json.load(f)["value"]

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(self.monitor)
            if value is None or (self.best is not None and value <= self.best):
                return
            self.best = float(value)
            _atomic_save_weights(self.model, self.path)
            _atomic_json(self.meta, {"epoch": epoch + 1, "monitor": self.monitor,
                                     "value": self.best})

    callbacks = [
        AtomicBackupAndRestore(os.path.join(out, "backup"), delete_checkpoint=False),
        BestCheckpoint(os.path.join(out, "best.weights.h5"), monitor),
        keras.callbacks.CSVLogger(os.path.join(out, "history.csv"), append=True),
    ]
    try:
        import tensorboard  # noqa: F401  (tf.summary needs it)

        callbacks.append(keras.callbacks.TensorBoard(os.path.join(out, "logs"), write_graph=False))
    except ImportError:
        print("[keras_hier] tensorboard is not installed: no TensorBoard logs", flush=True)
    return callbacks


def finished_epochs(out):
    """Number of finished epochs recorded in the run's backup (0 for a new run)."""
    path = os.path.join(out, "backup", "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f).get("epoch", 0))


def epoch_stream(dataset, finished=0):
    """One endless stream of epochs whose order survives a kill.

    `tf.data`'s seeded `shuffle(reshuffle_each_iteration=True)` draws epoch
    e's order from its e-th iterator, and `fit` may create more than one
    iterator per epoch, so a resumed process would not continue the killed
    run's sequence. Here the epochs are `dataset.repeat()` read through one
    iterator (`fit(steps_per_epoch=...)`), and a resumed run skips the
    `finished` epochs it already trained on. Skipping runs the pipeline (the
    shuffle and the augmentation layers' random state advance exactly as
    they did), without training.

    Returns:
        `(stream, steps_per_epoch)`.
    """
    steps = int(dataset.cardinality())
    if steps <= 0:
        raise ValueError("the training dataset must be finite with a known number of batches")
    stream = dataset.repeat()
    if finished:
        stream = stream.skip(finished * steps)
    return stream, steps


# --------------------------------------------------------------------------- the job
def run_evaluation(model, test, train_plain, hierarchy, config, out):
    """`keras_hier.evaluate` on the test split + `report` into out/report."""
    from keras_hier.evaluation import evaluate, report

    results = evaluate(model, test, hierarchy, train_dataset=train_plain,
                       n_permutations=config["n_permutations"], seed=config["seed"])
    results.setdefault("meta", {})["config"] = config
    path = report(results, os.path.join(out, "report"), hierarchy=hierarchy,
                  figures=config["figures"])
    return results, path


def run_export(model, hierarchy, config, out, summary):
    """`keras_hier.export_saved_model` into out/export/<next version>."""
    from keras_hier.export import export_saved_model

    card = {"training": {k: config[k] for k in ("dataset", "backbone", "head", "ema", "dynamic",
                                                 "mds", "loss", "epochs", "seed")},
            "metrics": {k: v for k, v in summary.items() if isinstance(v, (int, float))}}
    return export_saved_model(model, hierarchy, os.path.join(out, "export"), model_card=card)


def train(config, out, callbacks=()):
    """Runs one configuration end to end; returns the summary dict.

    Args:
        config: dict from `recipes.configs.get_config`.
        out: run directory (created; reused to resume).
        callbacks: extra Keras callbacks for `fit`.
    """
    import keras

    os.makedirs(out, exist_ok=True)
    _atomic_json(os.path.join(out, "config.json"), config)
    keras.utils.set_random_seed(int(config["seed"]))
    strategy, policy = setup_devices(config)
    start = time.time()
    train_data, test_data, train_plain = load_data(config)
    hierarchy = train_data.hierarchy
    with strategy.scope():
        model = build_model(config, hierarchy, train_data.input_shape)
        compile_model(model, config, hierarchy)
    monitor = "val_accuracy" if train_data.validation is not None else "accuracy"
    verbose = config["verbose"]
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    print(f"[keras_hier] {config['name']}: {config['head']} head on {config['dataset']} "
          f"({train_data.num_examples} train / {train_data.num_validation} val / "
          f"{test_data.num_examples} test, {hierarchy.num_classes} classes), policy {policy}, "
          f"{strategy.num_replicas_in_sync} replica(s), run dir {out}", flush=True)
    finished = finished_epochs(out)
    if finished:
        print(f"[keras_hier] resuming after epoch {finished} from {os.path.join(out, 'backup')}", flush=True)
    stream, steps = epoch_stream(train_data.dataset, finished)
    history = model.fit(stream, steps_per_epoch=steps, validation_data=train_data.validation,
                        epochs=int(config["epochs"]), verbose=int(verbose), shuffle=False,
                        callbacks=_callbacks(out, monitor) + list(callbacks))
    train_seconds = time.time() - start
    _atomic_save_weights(model, os.path.join(out, "final.weights.h5"))
    best = os.path.join(out, "best.weights.h5")
    if os.path.exists(best):
        model.load_weights(best)
    summary = {"config": config["name"], "epochs": int(config["epochs"]),
               "train_seconds": round(train_seconds, 1), "policy": policy,
               "replicas": int(strategy.num_replicas_in_sync),
               "history": {k: [float(v) for v in vs] for k, vs in history.history.items()}}
    if os.path.exists(best.replace(".weights.h5", ".json")):
        with open(best.replace(".weights.h5", ".json")) as f:
            summary["best"] = json.load(f)
    test_metrics = model.evaluate(test_data.dataset, verbose=0, return_dict=True)
    summary["test_accuracy"] = float(test_metrics["accuracy"])
    summary["test_loss"] = float(test_metrics["loss"])
    if config["evaluate"]:
        results, path = run_evaluation(model, test_data.dataset, train_plain, hierarchy, config,
                                       out)
        summary["report"] = path
        summary["classification"] = {k: v for k, v in results.get("classification", {}).items()
                                     if isinstance(v, (int, float))}
    if config["export"]:
        summary["export"] = run_export(model, hierarchy, config, out, summary)
    _atomic_json(os.path.join(out, "summary.json"), summary)
    print(f"[keras_hier] test accuracy {summary['test_accuracy']:.4f}; "
          f"report: {summary.get('report')}; export: {summary.get('export')}", flush=True)
    return summary


# --------------------------------------------------------------------------- CLI
def _parser():
    p = argparse.ArgumentParser(prog="keras-hier-train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cpu_small",
                   help=f"preset ({', '.join(sorted(CONFIGS))}) or a .json file")
    p.add_argument("--out", default=None, help="run directory (default runs/<config>_<head>)")
    p.add_argument("--dataset", help="tfds name or a local path (.npz, IDX dir, image folder)")
    p.add_argument("--data-dir", dest="data_dir")
    p.add_argument("--manual-dir", dest="manual_dir")
    p.add_argument("--hierarchy", help="hierarchy .csv/.json (default: built-in / folders)")
    p.add_argument("--backbone", choices=["small_cnn", "resnet18", "resnet50"])
    p.add_argument("--backbone-weights", dest="backbone_weights")
    p.add_argument("--head", choices=HEADS)
    p.add_argument("--loss", choices=LOSSES)
    p.add_argument("--loss-beta", dest="loss_beta", type=float,
                   help="SimLoss / soft labels: S = exp(-beta * t)")
    p.add_argument("--loss-alpha", dest="loss_alpha", type=float,
                   help="HXE: lambda = exp(-alpha * height)")
    p.add_argument("--backbone-kwargs", dest="backbone_kwargs", type=json.loads,
                   help='JSON dict for the backbone builder, e.g. \'{"filters": [16, 32, 64, 64]}\'')
    for flag in ("ema", "dynamic", "mds", "augment"):
        p.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", dest="weight_decay", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--embedding-dim", dest="embedding_dim", type=int)
    p.add_argument("--scale", type=float)
    p.add_argument("--validation-split", dest="validation_split", type=float)
    p.add_argument("--max-examples", dest="max_examples", type=int)
    p.add_argument("--max-test-examples", dest="max_test_examples", type=int)
    p.add_argument("--mixed-precision", dest="mixed_precision", choices=["auto", "on", "off"])
    p.add_argument("--strategy", choices=["auto", "mirrored", "default"])
    p.add_argument("--n-permutations", dest="n_permutations", type=int)
    p.add_argument("--no-evaluate", dest="evaluate", action="store_false", default=None)
    p.add_argument("--no-export", dest="export", action="store_false", default=None)
    p.add_argument("--no-figures", dest="figures", action="store_false", default=None)
    p.add_argument("--verbose", type=int)
    return p


def config_from_args(argv=None):
    """Parses the command line into `(config, out)`."""
    args = vars(_parser().parse_args(argv))
    name, out = args.pop("config"), args.pop("out")
    config = get_config(name, **{k: v for k, v in args.items() if k in DEFAULTS})
    out = out or os.path.join("runs", f"{config['name']}_{config['head']}_s{config['seed']}")
    return config, out


def main(argv=None):
    """Console entry point (`keras-hier-train`, `python -m recipes.train`)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    config, out = config_from_args(argv)
    try:
        train(config, out)
    except (ValueError, ConnectionError) as err:
        print(f"keras-hier-train: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
