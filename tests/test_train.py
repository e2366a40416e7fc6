"""Tests for keras_hier.recipes.train / configs on a tiny synthetic dataset."""

import csv
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_hier.recipes import configs
from keras_hier.recipes import train as recipe

ROOT = pathlib.Path(__file__).resolve().parent.parent
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]


def _dataset(root, n_train=96, n_test=40):
    """CIFAR-10-named classes (so the built-in hierarchy applies), 8x8 images whose
    mean colour depends on the class."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 10
        base = (labels[:, None, None, None] * 25).astype(np.int64)
        images = np.clip(base + rng.integers(-20, 20, (n, 8, 8, 3)), 0, 255).astype(np.uint8)
        np.savez(root / f"tiny_{split}.npz", images=images, labels=labels,
                 label_names=np.array(CIFAR10))
    return root


def _config_file(tmp_path, **extra):
    cfg = {"dataset": str(_dataset(tmp_path / "data")), "epochs": 3, "batch_size": 16,
           "validation_split": 0.25, "backbone_kwargs": {"filters": [8, 8, 16, 16]},
           "embedding_dim": 8, "n_permutations": 10, "figures": False, "head": "proxydr",
           "lr": 3e-3, "verbose": 2}
    cfg.update(extra)
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(cfg))
    return path


def _run(code, *args, timeout=240):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


_KILLABLE = """
    import json, os, sys
    import keras
    from keras_hier.recipes.train import config_from_args, train

    kill_epoch, kill_batch, probe = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

    def checksum(model):
        return float(sum(float(abs(w).sum()) for w in model.get_layer("embedding").get_weights()))

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):  # runs after BackupAndRestore restored
            with open(probe + ".begin", "w") as f:
                json.dump({"checksum": checksum(self.model)}, f)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_epoch_end(self, epoch, logs=None):
            with open(probe + f".end{epoch}", "w") as f:
                json.dump({"checksum": checksum(self.model)}, f)

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == kill_epoch and batch == kill_batch:
                os._exit(17)  # a kill: no cleanup, no callbacks

    config, out = config_from_args(sys.argv[4:])
    train(config, out, callbacks=[Probe()])
"""


def test_train_end_to_end_with_kill_and_resume(tmp_path):
    cfg = _config_file(tmp_path)
    out = tmp_path / "run"
    probe = str(tmp_path / "probe")
    args = ["--config", str(cfg), "--out", str(out), "--proxy-mode", "ema"]
    first = _run(_KILLABLE, "1", "1", probe, *args)
    assert first.returncode == 17, first.stderr[-3000:]
    meta = json.loads((out / "backup" / "training_metadata.json").read_text())
    assert meta["epoch"] == 1  # epoch 0 saved, epoch 1 lost mid-way
    assert not (out / "summary.json").exists()

    second = _run(_KILLABLE, "-1", "-1", probe, *args)
    assert second.returncode == 0, second.stderr[-3000:]
    # training resumed from the saved state of epoch 0, not from scratch
    begin = json.loads(pathlib.Path(probe + ".begin").read_text())["checksum"]
    end0 = json.loads(pathlib.Path(probe + ".end0").read_text())["checksum"]
    assert begin == pytest.approx(end0, rel=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["history"]["loss"]) == 2  # epochs 1 and 2 only
    with open(out / "history.csv") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == [0, 1, 2]
    assert summary["best"]["monitor"] == "val_accuracy" and 1 <= summary["best"]["epoch"] <= 3
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert "ahc" in summary["classification"]
    assert (out / "report" / "report.md").exists() and (out / "report" / "results.json").exists()
    assert (out / "export" / "1" / "saved_model.pb").exists()
    assert (out / "best.weights.h5").exists() and (out / "logs").is_dir()
    assert json.loads((out / "config.json").read_text())["proxy_mode"] == "ema"
    # the hierarchical metrics stream in fit's log, for training and validation, and in TensorBoard
    for name in ("mistake_severity", "ahd_at_5", "level_0_accuracy"):
        assert name in summary["history"] and f"val_{name}" in summary["history"], name
    assert 0 <= summary["history"]["val_level_0_accuracy"][-1] <= 1
    assert np.isfinite(summary["history"]["val_ahd_at_5"]).all()
    assert summary["history"]["ahd_at_5"][-1] > 0  # 5 predictions of 10 classes: at least 4 mistakes
    assert "val_ahd_at_5" in open(out / "history.csv").readline()
    for split in ("train", "validation"):
        tags = _tensorboard_tags(out / "logs" / split)
        assert {"epoch_mistake_severity", "epoch_ahd_at_5", "epoch_level_0_accuracy"} <= tags, (split, tags)
    # precise BN ran before the final evaluation, and the summary records it
    assert summary["precise_bn"]["layers"] == 4 and summary["precise_bn"]["batches"] >= 1


def _tensorboard_tags(folder):
    import tensorflow as tf

    tags = set()
    for path in folder.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    cfg = _config_file(tmp_path, epochs=1, head="normface")
    code = """
        import sys
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from keras_hier.recipes.train import main
        sys.exit(main(sys.argv[1:]))
    """
    out = tmp_path / "mirrored"
    done = _run(code, "--config", str(cfg), "--out", str(out), "--strategy", "mirrored",
                "--proxy-mode", "ema", "--dynamic-scale", "--no-evaluate", "--no-export")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["replicas"] == 2 and summary["policy"] == "float32"
    assert np.isfinite(summary["history"]["loss"][0])


@pytest.mark.parametrize("head,loss,options", [
    ("softmax", "ce", {}),
    ("normface", "simloss", {"dynamic_scale": True}),
    ("proxydr", "hxe", {"proxy_mode": "ema", "dynamic_scale": True}),
    ("proxydr", "softlabel", {"proxy_mode": "mds"}),
    ("corr", "ce", {"proxy_mode": "mds"}),
])
def test_every_head_and_loss_trains(head, loss, options):
    import keras
    from keras_hier import hierarchies

    h = hierarchies.cifar10()
    config = configs.get_config("cpu_small", head=head, loss=loss, embedding_dim=8,
                                backbone_kwargs={"filters": [4, 4, 8, 8]}, **options)
    model = recipe.build_model(config, h, (8, 8, 3))
    recipe.compile_model(model, config, h)
    assert model.get_layer("embedding") is not None and model.get_layer("head") is not None
    x = np.random.default_rng(0).random((20, 8, 8, 3), dtype=np.float32)
    y = np.arange(20) % 10
    history = model.fit(x, y, batch_size=10, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    logits = model.predict(x[:2], verbose=0)
    assert logits.shape == (2, 10) and logits.dtype == np.float32
    assert isinstance(model.loss, keras.losses.Loss)


def test_configs_match_the_paper_recipe():
    paper = configs.get_config("paper_cifar100")
    expected = {"dataset": "cifar100", "backbone": "resnet50", "embedding_dim": 128,
                "augment": True, "batch_size": 32, "lr": 1e-4, "weight_decay": 0.0,
                "epochs": 100, "seeds": [1, 2, 3, 4, 5]}
    for key, value in expected.items():
        assert paper[key] == value, key
    assert round(50_000 * paper["validation_split"]) == 5_000
    small = configs.get_config("cpu_small", epochs=7, head=None)
    assert small["epochs"] == 7 and small["head"] == configs.DEFAULTS["head"]
    with pytest.raises(ValueError, match="nope"):
        configs.get_config("nope")
    with pytest.raises(ValueError, match="colour"):
        configs.get_config("cpu_small", colour=1)


def test_command_line_overrides(tmp_path):
    config, out = recipe.config_from_args(
        ["--config", "cpu_cifar10", "--head", "normface", "--proxy-mode", "ema", "--no-augment",
         "--epochs", "2", "--batch-size", "64", "--lr", "0.01", "--seed", "4",
         "--embedding-dim", "32", "--loss", "simloss", "--loss-beta", "2.5",
         "--backbone-kwargs", '{"filters": [4, 8, 8, 8]}'])
    assert (config["head"], config["proxy_mode"], config["augment"], config["epochs"]) == \
        ("normface", "ema", False, 2)
    assert (config["batch_size"], config["lr"], config["seed"], config["embedding_dim"],
            config["loss"]) == (64, 0.01, 4, 32, "simloss")
    assert config["loss_beta"] == 2.5 and config["backbone_kwargs"] == {"filters": [4, 8, 8, 8]}
    assert out == os.path.join("runs", "cpu_cifar10_normface_s4")
    with pytest.raises(SystemExit):
        recipe.config_from_args(["--head", "arcface"])
    # the old spellings still work, as deprecated aliases of the API's names
    old, _ = recipe.config_from_args(["--head", "proxydr", "--ema", "--dynamic"])
    new, _ = recipe.config_from_args(["--head", "proxydr", "--proxy-mode", "ema", "--dynamic-scale"])
    assert old == new and old["proxy_mode"] == "ema" and old["dynamic_scale"] is True
    assert recipe.config_from_args(["--mds"])[0]["proxy_mode"] == "mds"
    assert configs.get_config("cpu_small", ema=True, dynamic=True) == new


def test_help_documents_every_option():
    parser = recipe.build_parser()
    text = parser.format_help()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.option_strings
            documented = "default" in action.help or "deprecated" in action.help
            assert documented or action.dest in ("evaluate", "export", "figures"), action.option_strings
    assert "--proxy-mode" in text and "--dynamic-scale" in text and "--precise-bn-batches" in text


def test_checkout_entry_points_and_installed_layout():
    """`python -m recipes.train` works in a checkout; the wheel installs keras_hier only."""
    import importlib

    import recipes.train

    assert recipes.train is importlib.import_module("keras_hier.recipes.train")
    done = subprocess.run([sys.executable, "-m", "recipes.train", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "--proxy-mode" in done.stdout, done.stderr[-2000:]
    demo = subprocess.run([sys.executable, "-m", "recipes.demo", "--hierarchy-only"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert demo.returncode == 0 and "CIFAR-100 path distances" in demo.stdout, demo.stderr[-2000:]
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["keras_hier*"]
    scripts = project["project"]["scripts"]
    for name in ("keras-hier-train", "keras-hier-demo", "keras-hier-paper", "keras-hier-random-cnn"):
        module, function = scripts[name].split(":")
        assert module.startswith("keras_hier.recipes.") and callable(getattr(importlib.import_module(module), function))
    # no made-up project URLs: every URL given is absolute
    assert all(url.startswith("https://") for url in project["project"].get("urls", {}).values())


def test_main_reports_bad_data_cleanly(tmp_path, capsys):
    code = recipe.main(["--dataset", str(tmp_path / "missing.npz"), "--out",
                        str(tmp_path / "r"), "--epochs", "1"])
    assert code == 2
    assert "missing.npz" in capsys.readouterr().err


def test_resumed_fit_sees_the_same_batches(tmp_path):
    """A run resumed after epoch 1 trains on the batches the uninterrupted run saw."""
    import json

    import keras
    import numpy as np
    import tensorflow as tf

    from keras_hier.data import make_pipeline
    from keras_hier.recipes.checkpoints import finished_epochs
    from keras_hier.recipes.train import epoch_stream

    images = np.arange(12, dtype=np.uint8).reshape(12, 1, 1, 1)
    labels = np.arange(12) % 2
    seen = []

    def record(x, y):
        def log(v):
            seen.append(v.numpy().ravel().tolist())
            return v
        return tf.reshape(tf.py_function(log, [x], tf.uint8), [-1, 1, 1, 1]), y

    def model():
        m = keras.Sequential([keras.Input((1, 1, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
        m.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return m

    def pipeline():
        return make_pipeline(images, labels, batch_size=4, shuffle=True, seed=3, image_dtype="uint8").map(record)

    stream, steps = epoch_stream(pipeline())
    model().fit(stream, steps_per_epoch=steps, epochs=3, verbose=0)
    full = [b for b in seen]
    assert len(full) >= 9 and full[:3] != full[6:9]
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "training_metadata.json").write_text(json.dumps({"epoch": 1, "batch": 0}))
    assert finished_epochs(str(tmp_path)) == 1 and finished_epochs(str(tmp_path / "new")) == 0
    seen.clear()
    stream, steps = epoch_stream(pipeline(), finished=1)
    model().fit(stream, steps_per_epoch=steps, initial_epoch=1, epochs=3, verbose=0)
    trained = seen[steps:]  # the skipped epoch's batches are read first, then epochs 2 and 3
    assert trained[:2 * steps] == full[steps:3 * steps]
