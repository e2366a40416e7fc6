"""Train, evaluate and export a hierarchy-aware classifier in one command.

    keras-hier-train --config cpu_small --dataset fashion_mnist \\
        --head proxydr --proxy-mode ema --epochs 3 --out runs/fmnist_proxydr

(also `python -m keras_hier.recipes.train`, and `python -m recipes.train` in a
checkout). Texts and KerasHub backbones take the same options:

    keras-hier-train --config cpu_glosses --out runs/glosses      # wordnet_glosses, text_bag
    keras-hier-train --dataset fashion_mnist --backbone keras_hub:ResNetBackbone \
        --backbone-kwargs '{"config": {...}}' --backbone-weights resnet.weights.h5

A text backbone (`text_bag`, `text_cnn`) adapts its vocabulary to the
unshuffled training split (the same on every resume) and its export answers
plain strings; augmentation is refused for texts. The run directory `--out`
receives:

- `config.json`: the resolved configuration (a re-run must ask for the same
  training settings; it may change epochs, evaluation and export options);
- `backup/`: the training state after every epoch (weights, optimizer,
  epoch): re-running the same command after a kill resumes from the last
  finished epoch; a finished run is not trained again;
- `best.weights.h5` (+ `best.json`): the best epoch by validation accuracy;
- `logs/`: TensorBoard; `history.csv`: per-epoch metrics (accuracy, mistake
  severity, AHD@k and level accuracies, on training and validation data);
- `report/`: `report.md`, `results.json` and figures of `keras_hier.evaluate`
  on the test split, with the best weights and precise BatchNorm statistics;
- `export/<version>/`: the TF-Serving SavedModel (`keras_hier.export_saved_model`);
- `summary.json`: the headline numbers.

On GPUs the mixed_float16 policy is used automatically and several GPUs are
used through `tf.distribute.MirroredStrategy`.
"""

import inspect
import math
import os
import sys
import time

from keras_hier.files import atomic_write_json
from keras_hier.recipes.cli import build_parser, config_from_args, run_command
from keras_hier.recipes.configs import (HEADS, LOSSES, PROXY_MODES, TEXT_DATASETS, config_differences,
                                        is_keras_hub_backbone, is_text_backbone, validate_config)

__all__ = ["build_parser", "multi_worker", "setup_devices", "load_hierarchy", "load_data", "check_backbone_kwargs", "build_model",
           "build_loss", "build_metrics", "compile_model", "make_callbacks", "epoch_stream",
           "prepare_run_dir", "run_evaluation", "run_export", "train",
           "config_from_args", "main", "HEADS", "LOSSES", "PROXY_MODES"]

#: Above this many classes the [C, C]-table metrics (mistake severity, AHD@k) are left out of `fit`.
MAX_TABLE_METRIC_CLASSES = 4096


def _log(message):
    print(f"[keras_hier] {message}", flush=True)


# --------------------------------------------------------------------------- devices and data
def multi_worker():
    """True when `TF_CONFIG` names a cluster of several training tasks (`keras_hier.distributed`)."""
    if not os.environ.get("TF_CONFIG"):
        return False
    from keras_hier import distributed

    return distributed.num_workers() > 1


def setup_devices(config):
    """Chooses the distribution strategy and the dtype policy.

    `strategy="auto"`: `MultiWorkerMirroredStrategy` when `TF_CONFIG` names
    a cluster (`keras_hier.distributed.strategy_from_environment`, created
    before any other TensorFlow op), `MirroredStrategy` on several GPUs,
    else the default strategy.

    Returns:
        `(strategy, policy_name)`.
    """
    import keras
    import tensorflow as tf

    cluster = config["strategy"] == "auto" and multi_worker()
    if cluster:
        from keras_hier import distributed

        cluster = distributed.strategy_from_environment()
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
    if cluster:
        strategy = cluster
    elif kind == "mirrored" or (kind == "auto" and len(gpus) > 1):
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

    if not os.path.isfile(spec):
        raise ValueError(f"hierarchy file {spec} does not exist")
    if str(spec).endswith(".json"):
        return Hierarchy.from_json(spec)
    if str(spec).endswith(".csv"):
        return Hierarchy.from_csv(spec)
    raise ValueError(f"--hierarchy must be a .csv or .json file, got {spec!r}")


def load_data(config, drop_remainder=False):
    """(train LoadedData with validation, test LoadedData, un-augmented training batches).

    `drop_remainder`: training batches all of `batch_size` (several workers
    split every batch evenly). For a text benchmark (`wordnet_glosses`) the
    test split comes from the same `max_examples` subsample as the training
    split (its splits are disjoint only then; `max_test_examples` then cuts
    it), and the third item is the training split unshuffled (the
    vocabulary is adapted to it, the same on every resume).
    """
    import dataclasses

    from keras_hier.data import load_dataset

    text = config["dataset"] in TEXT_DATASETS
    common = dict(hierarchy=load_hierarchy(config["hierarchy"]), batch_size=config["batch_size"],
                  seed=config["seed"], data_dir=config["data_dir"],
                  manual_dir=config["manual_dir"], **(config.get("dataset_kwargs") or {}))
    train = load_dataset(config["dataset"], "train", validation_split=config["validation_split"],
                         augment=config["augment"], max_examples=config["max_examples"],
                         drop_remainder=drop_remainder, **common)
    common["hierarchy"] = train.hierarchy
    test = load_dataset(config["dataset"], "test", shuffle=False,
                        max_examples=config["max_examples" if text else "max_test_examples"], **common)
    limit = config["max_test_examples"]
    if text and limit is not None and limit < test.num_examples:
        test = dataclasses.replace(test, dataset=test.dataset.unbatch().take(limit).batch(config["batch_size"]),
                                   num_examples=int(limit))
    plain = train.dataset
    if config["augment"] or text:  # class means and BN statistics from un-augmented training images
        plain = load_dataset(config["dataset"], "train", shuffle=False,
                             validation_split=config["validation_split"],
                             max_examples=config["max_examples"], **common).dataset
    return train, test, plain


# --------------------------------------------------------------------------- model
def _supported(fn, kwargs):
    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


#: Builder arguments the recipe sets itself (not `--backbone-kwargs`).
_RECIPE_BACKBONE_ARGS = ("input_shape", "weights", "texts", "vocabulary", "vectorizer", "token_ids")


def check_backbone_kwargs(config):
    """Refuses `backbone_kwargs` keys the backbone builder does not take, naming them.

    Image and text builders are looked up in `keras_hier.backbones.BACKBONES`
    and `TEXT_BACKBONES`; `keras_hub:` backbones are not checked here
    (`keras_hub_backbone` names a bad `config`).
    """
    from keras_hier.backbones import BACKBONES, TEXT_BACKBONES

    name = config["backbone"]
    if is_keras_hub_backbone(name):
        return
    builder = BACKBONES.get(name) or TEXT_BACKBONES.get(name)
    if builder is None:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES) + sorted(TEXT_BACKBONES)}")
    params = inspect.signature(builder).parameters
    accepted = sorted(p for p in params if p not in _RECIPE_BACKBONE_ARGS)
    unknown = sorted(set(config.get("backbone_kwargs") or {}) - set(accepted))
    if unknown:
        raise ValueError(f"--backbone-kwargs: {name} takes no argument(s) {unknown}; "
                         f"it takes {accepted}")


def build_model(config, hierarchy, input_shape, texts=None):
    """Backbone + embedding + head via `keras_hier.build_classifier`.

    Args:
        config, hierarchy: the run's config and hierarchy.
        input_shape: the data's `input_shape` (image backbones).
        texts: text backbones: the training strings their vocabulary is
            adapted to (a list, an array or a `tf.data.Dataset` of string
            batches, e.g. `train.dataset.map(lambda x, y: x)`).
    """
    import keras_hier
    from keras_hier.backbones import get_backbone

    validate_config(config)
    check_backbone_kwargs(config)
    head, name = config["head"], config["backbone"]
    bkw = dict(config.get("backbone_kwargs") or {})
    if name == "resnet50" or (is_keras_hub_backbone(name) and config["backbone_weights"] is not None):
        bkw["weights"] = config["backbone_weights"]
    if is_text_backbone(name):
        if texts is None:
            raise ValueError(f"build_model: backbone {name} needs texts= (the training strings) to adapt "
                             "its vocabulary")
        bkw["texts"] = texts
    backbone = get_backbone(name, input_shape if not is_text_backbone(name) else None, **bkw)
    kwargs = dict(head=head, num_classes=hierarchy.num_classes,
                  embedding_dim=int(config["embedding_dim"]), hierarchy=hierarchy)
    if head in ("normface", "proxydr"):
        kwargs["proxy_mode"] = config["proxy_mode"]
        kwargs["dynamic_scale"] = bool(config["dynamic_scale"])
        if not config["dynamic_scale"]:  # dynamic: the head starts from its own initial s
            kwargs["scale"] = float(config["scale"])
        if config["proxy_mode"] == "mds":
            kwargs["mds_seed"] = int(config["seed"])
    elif head == "corr":
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


def build_metrics(hierarchy, k=5):
    """The metrics `fit` shows every epoch, on training and validation data.

    Accuracy; `MistakeSeverity` and `AverageHierarchicalDistanceAtK` (path
    distance; left out above `MAX_TABLE_METRIC_CLASSES` classes, where their
    [C, C] table would not fit); `LevelAccuracy` of every level above the
    classes.
    """
    import keras

    from keras_hier import metrics

    found = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if hierarchy.num_classes <= MAX_TABLE_METRIC_CLASSES:
        found += [metrics.MistakeSeverity(hierarchy),
                  metrics.AverageHierarchicalDistanceAtK(hierarchy, k=min(int(k), hierarchy.num_classes))]
    else:
        _log(f"{hierarchy.num_classes} classes: mistake severity and AHD@k are left to the final report")
    found += [metrics.LevelAccuracy(hierarchy, level=level) for level in range(hierarchy.depth - 1)]
    return found


def compile_model(model, config, hierarchy):
    """Adam (AdamW with `weight_decay`), the configured loss and `build_metrics`."""
    import keras

    kw = {"learning_rate": config["lr"]}
    if config["weight_decay"]:
        optimizer = keras.optimizers.AdamW(weight_decay=config["weight_decay"], **kw)
    else:
        optimizer = keras.optimizers.Adam(**kw)
    model.compile(optimizer=optimizer, loss=build_loss(config, hierarchy),
                  metrics=build_metrics(hierarchy, config.get("metrics_k", 5)))


# --------------------------------------------------------------------------- callbacks
def make_callbacks(out, monitor):
    """Backup, best checkpoint, CSV log and TensorBoard callbacks of a run folder."""
    import keras

    from keras_hier.recipes.checkpoints import BestCheckpoint, EpochBackup

    callbacks = [
        EpochBackup(os.path.join(out, "backup")),
        BestCheckpoint(os.path.join(out, "best.weights.h5"), monitor),
        keras.callbacks.CSVLogger(os.path.join(out, "history.csv"), append=True),
    ]
    try:
        import tensorboard  # noqa: F401  (tf.summary needs it)

        callbacks.append(keras.callbacks.TensorBoard(os.path.join(out, "logs"), write_graph=False))
    except ImportError:
        _log("tensorboard is not installed: no TensorBoard logs")
    return callbacks


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


# --------------------------------------------------------------------------- the run folder
def _check_writable(out):
    """Refuses an `--out` that is a file or lies in a folder this process cannot write."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} exists and is not a folder; give a folder for the run")
    parent = os.path.abspath(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"--out {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise PermissionError(13, f"--out {out}: {parent} is not writable")


def prepare_run_dir(config, out):
    """Checks the request against the run folder before anything is written.

    A new folder is fine; an existing one must hold a config with the same
    training settings (`configs.config_differences`), else nothing is
    written and the error lists the differing keys.

    Returns:
        The stored config (None for a new run).
    """
    from keras_hier.recipes.checkpoints import RunFileError, read_json

    validate_config(config)
    check_backbone_kwargs(config)
    _check_writable(out)
    path = os.path.join(out, "config.json")
    if not os.path.exists(path):
        return None
    stored = read_json(path)
    if not isinstance(stored, dict):
        raise RunFileError(f"{path} is damaged (not a JSON object of settings)")
    diffs = config_differences(stored, config)
    if diffs:
        listed = "; ".join(f"{key}: stored {old!r}, requested {new!r}" for key, old, new in diffs)
        raise ValueError(f"{out} holds a run with other training settings ({listed}). Repeat the run's "
                         f"settings (see {path}) to resume it, or give a new --out to start a new run")
    return stored


def write_config(config, out):
    """Creates the run folder and writes `config.json` (an OSError names the folder)."""
    try:
        os.makedirs(out, exist_ok=True)
        atomic_write_json(os.path.join(out, "config.json"), config, default=str)
    except OSError as err:
        raise OSError(err.errno, f"cannot write the run folder {out}: {err.strerror or err}") from err


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

    card = {"training": {k: config[k] for k in ("dataset", "backbone", "head", "proxy_mode",
                                                 "dynamic_scale", "loss", "epochs", "seed")},
            "metrics": {k: v for k, v in summary.items() if isinstance(v, (int, float))}}
    return export_saved_model(model, hierarchy, os.path.join(out, "export"), model_card=card)


def _precise_bn(model, train_plain, test, config):
    """Recomputes BN statistics on training batches; the test accuracy before it, for the record."""
    from keras_hier.batchnorm import batchnorm_layers, recompute_batchnorm_statistics

    if not config["precise_bn_batches"] or not batchnorm_layers(model):
        return None
    before = model.evaluate(test, verbose=0, return_dict=True)
    info = recompute_batchnorm_statistics(model, train_plain, num_batches=int(config["precise_bn_batches"]))
    info["test_accuracy_moving_averages"] = float(before["accuracy"])
    return info


def _fit(model, config, train_data, out, write_dir, callbacks, strategy):
    """Resumes from `out`'s backup (if any) and runs `fit`, writing into `write_dir`.

    Returns:
        `(history, epochs finished before)`.
    """
    from keras_hier.recipes.checkpoints import restore_backup

    with strategy.scope():
        finished = restore_backup(model, os.path.join(out, "backup"))
    if finished:
        _log(f"resuming after epoch {finished} from {os.path.join(out, 'backup')}")
    stream, steps = epoch_stream(train_data.dataset, finished)
    validation = train_data.validation
    if multi_worker():  # every worker keeps its part of every global batch
        from keras_hier.distributed import shard_dataset

        stream = shard_dataset(stream, strategy=strategy)
        validation = None if validation is None else shard_dataset(validation, strategy=strategy)
    monitor = "val_accuracy" if train_data.validation is not None else "accuracy"
    verbose = config["verbose"]
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    history = model.fit(stream, steps_per_epoch=steps, validation_data=validation,
                        epochs=int(config["epochs"]), initial_epoch=min(finished, int(config["epochs"])),
                        verbose=int(verbose), shuffle=False,
                        callbacks=make_callbacks(write_dir, monitor) + list(callbacks))
    return history, finished


def _finish(model, config, out, write_dir, data, summary):
    """Best weights (read from `out`), precise BN, test accuracy, report and export (into
    `write_dir`); fills `summary`."""
    from keras_hier.recipes.checkpoints import load_best, save_weights

    train_data, test_data, train_plain = data
    hierarchy = train_data.hierarchy
    save_weights(model, os.path.join(write_dir, "final.weights.h5"))
    # Every worker (the chief too: it is a collective) waits here, so no worker reads the best checkpoint
    # while the chief may still be writing it; a no-op on one machine.
    from keras_hier.distributed import barrier

    barrier(model.distribute_strategy)
    best = load_best(model, os.path.join(out, "best.weights.h5"))
    if best is not None:
        summary["best"] = best
    precise = _precise_bn(model, train_plain, test_data.dataset, config)
    if precise:
        summary["precise_bn"] = precise
    test_metrics = model.evaluate(test_data.dataset, verbose=0, return_dict=True)
    summary["test_accuracy"] = float(test_metrics["accuracy"])
    summary["test_loss"] = float(test_metrics["loss"])
    summary["test_metrics"] = {k: float(v) for k, v in test_metrics.items() if math.isfinite(float(v))}
    if config["evaluate"]:
        results, path = run_evaluation(model, test_data.dataset, train_plain, hierarchy, config, write_dir)
        summary["report"] = path
        summary["classification"] = {k: v for k, v in results.get("classification", {}).items()
                                     if isinstance(v, (int, float))}
    if config["export"]:
        summary["export"] = run_export(model, hierarchy, config, write_dir, summary)
    atomic_write_json(os.path.join(write_dir, "summary.json"), summary, default=str)
    return summary


def train(config, out, callbacks=()):
    """Runs one configuration end to end; returns the summary dict.

    Args:
        config: dict from `keras_hier.recipes.configs.get_config`.
        out: run directory (created; reused to resume: its stored config must
            have the same training settings).
        callbacks: extra Keras callbacks for `fit`.

    Under `TF_CONFIG` (several workers) every worker runs every step, saving
    included, but only the chief writes into `out`; the others write into a
    throw-away folder (`keras_hier.distributed.chief_only_path`), and all
    resume from `out`'s backup, which must be on a shared file system.
    """
    import keras

    prepare_run_dir(config, out)
    strategy, policy = setup_devices(config)  # first: a multi-worker strategy precedes any TF op
    keras.utils.set_random_seed(int(config["seed"]))
    write_dir = out
    if multi_worker():
        from keras_hier.distributed import chief_only_path

        write_dir = chief_only_path(out)
    start = time.time()
    data = load_data(config, drop_remainder=multi_worker())
    train_data, test_data, _ = data
    hierarchy = train_data.hierarchy
    texts = data[2].map(lambda x, y: x) if is_text_backbone(config["backbone"]) else None
    with strategy.scope():
        model = build_model(config, hierarchy, train_data.input_shape, texts=texts)
        compile_model(model, config, hierarchy)
    write_config(config, write_dir)
    _log(f"{config['name']}: {config['head']} head on {config['dataset']} ({train_data.num_examples} train / "
         f"{train_data.num_validation} val / {test_data.num_examples} test, {hierarchy.num_classes} classes), "
         f"policy {policy}, {strategy.num_replicas_in_sync} replica(s), run dir {out}")
    history, _ = _fit(model, config, train_data, out, write_dir, callbacks, strategy)
    summary = {"config": config["name"], "epochs": int(config["epochs"]),
               "train_seconds": round(time.time() - start, 1), "policy": policy,
               "replicas": int(strategy.num_replicas_in_sync),
               "history": {k: [float(v) for v in vs] for k, vs in history.history.items()}}
    summary = _finish(model, config, out, write_dir, data, summary)
    if write_dir != out:
        from keras_hier.distributed import cleanup_worker_paths

        cleanup_worker_paths()
    _log(f"test accuracy {summary['test_accuracy']:.4f}; report: {summary.get('report')}; "
         f"export: {summary.get('export')}")
    return summary


def main(argv=None):
    """Console entry point (`keras-hier-train`, `python -m keras_hier.recipes.train`)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return run_command("keras-hier-train", lambda: train(*config_from_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
