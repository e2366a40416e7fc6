"""keras-hier-train under bad input and faults: clear errors naming the culprit, nothing lost.

Bad options and files, a resume with other settings, damaged run files
(truncated weights, corrupt JSON), a full disk (simulated ENOSPC), read-only
folders and kills at every step of a backup write.
"""

import errno
import json
import os
import shutil

import numpy as np
import pytest

from keras_hier.recipes import checkpoints
from keras_hier.recipes.train import main

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _dataset(root, n_train=96, n_test=40):
    """CIFAR-10-named classes (built-in hierarchy), 8x8 images whose colour depends on the class."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 10
        images = np.clip(labels[:, None, None, None] * 25 + rng.integers(-20, 20, (n, 8, 8, 3)), 0, 255)
        np.savez(root / f"tiny_{split}.npz", images=images.astype(np.uint8), labels=labels,
                 label_names=np.array(CIFAR10))
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny config file and a finished 2-epoch run made from it (copied by each test)."""
    root = tmp_path_factory.mktemp("tiny")
    cfg = {"dataset": str(_dataset(root / "data")), "epochs": 2, "batch_size": 16, "validation_split": 0.25,
           "backbone_kwargs": {"filters": [4, 4, 8, 8]}, "embedding_dim": 8, "head": "proxydr",
           "evaluate": False, "export": False, "precise_bn_batches": 2, "verbose": 0}
    path = root / "tiny.json"
    path.write_text(json.dumps(cfg))
    run = root / "finished"
    assert main(["--config", str(path), "--out", str(run)]) == 0
    return {"config": str(path), "run": run, "root": root}


def _copy(tiny, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny["run"], out)
    return out


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _clean_error(capsys, *names):
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert "Traceback" not in text
    for name in names:
        assert str(name) in text, (name, text[-2000:])
    return text


# --------------------------------------------------------------------------- options and files
@pytest.mark.parametrize("args,option", [
    (["--epochs", "0"], "--epochs"), (["--epochs", "-1"], "--epochs"), (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "--lr"), (["--max-examples", "0"], "--max-examples"), (["--batch-size", "0"], "--batch-size"),
    (["--validation-split", "1"], "--validation-split"), (["--epochs", "2.5"], "--epochs"),
    (["--backbone-kwargs", "{filters: 3}"], "--backbone-kwargs"), (["--backbone-kwargs", "[1]"], "--backbone-kwargs"),
])
def test_bad_numbers_on_the_command_line(args, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--out", "/nonexistent/never-written"])
    assert exit_info.value.code == 2
    assert option in _clean_error(capsys)


@pytest.mark.parametrize("setting,message", [
    ({"epochs": 0}, "epochs must be an integer >= 1, got 0"), ({"lr": -1}, "lr must be a number > 0"),
    ({"max_examples": 0}, "max_examples must be an integer >= 1"), ({"head": "arcface"}, "head must be one of"),
    ({"epochs": "3"}, "epochs must be an integer"), ({"colour": 1}, "unknown config keys ['colour']"),
    ({"head": "softmax", "proxy_mode": "ema"}, "head softmax has no proxies"),
])
def test_bad_settings_in_a_config_file(tiny, tmp_path, setting, message, capsys):
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({**json.loads(open(tiny["config"]).read()), **setting}))
    out = tmp_path / "out"
    assert main(["--config", str(cfg), "--out", str(out)]) == 2
    _clean_error(capsys, message)
    assert not out.exists()


def test_missing_or_unknown_files_and_names(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--config", tiny["config"], "--out", str(out)]
    missing = tmp_path / "missing.csv"
    assert main(base + ["--hierarchy", str(missing)]) == 2
    _clean_error(capsys, missing)
    assert main(["--config", "paper_cifar1000", "--out", str(out)]) == 2
    _clean_error(capsys, "paper_cifar1000", "cpu_small")
    assert main(["--config", str(tmp_path / "nope.json"), "--out", str(out)]) == 2
    _clean_error(capsys, tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"epochs": 2,\n')
    assert main(["--config", str(broken), "--out", str(out)]) == 2
    _clean_error(capsys, broken, "not valid JSON")
    assert main(base + ["--backbone-kwargs", '{"filterz": [4, 4, 8, 8]}']) == 2
    _clean_error(capsys, "filterz", "filters")
    assert main(base + ["--dataset", str(tmp_path / "none.npz")]) == 2
    _clean_error(capsys, "none.npz")
    assert not out.exists()


def test_out_is_a_file_or_read_only(tiny, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    assert main(["--config", tiny["config"], "--out", str(a_file)]) == 2
    _clean_error(capsys, a_file, "not a folder")
    assert main(["--config", tiny["config"], "--out", str(a_file / "run")]) == 2
    _clean_error(capsys, a_file)
    locked = tmp_path / "locked"
    locked.mkdir()
    with _read_only(locked):
        assert main(["--config", tiny["config"], "--out", str(locked / "run")]) == 2
        _clean_error(capsys, locked)
        assert not (locked / "run").exists()


class _read_only:
    """A read-only folder: chmod 555, or for root (who ignores modes) the immutable attribute."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        if os.geteuid() != 0:
            os.chmod(self.path, 0o555)
        elif os.system(f"chattr +i '{self.path}' 2>/dev/null") != 0:
            pytest.skip("running as root without chattr: cannot make a read-only folder")

    def __exit__(self, *exc):
        if os.geteuid() == 0:
            os.system(f"chattr -i '{self.path}'")
        os.chmod(self.path, 0o755)


# --------------------------------------------------------------------------- the run folder
@pytest.mark.parametrize("change,key", [(["--head", "normface"], "head"), (["--embedding-dim", "64"], "embedding_dim"),
                                        (["--proxy-mode", "ema"], "proxy_mode")])
def test_resume_with_other_settings_changes_nothing(tiny, tmp_path, change, key, capsys):
    out = _copy(tiny, tmp_path)
    before = {p: (out / p).read_bytes() for p in _listing(out) if (out / p).is_file()}
    assert main(["--config", tiny["config"], "--out", str(out)] + change) == 2
    text = _clean_error(capsys, f"{key}: stored", "new --out", out / "config.json")
    assert text.count("stored") == 1  # only the differing key is listed
    after = {p: (out / p).read_bytes() for p in _listing(out) if (out / p).is_file()}
    assert after == before


def test_damaged_config_json_is_named(tiny, tmp_path, capsys):
    out = _copy(tiny, tmp_path)
    (out / "config.json").write_text('{"head": ')
    assert main(["--config", tiny["config"], "--out", str(out)]) == 2
    _clean_error(capsys, out / "config.json", "damaged")


def test_truncated_best_weights_fall_back_to_the_last_backup(tiny, tmp_path, capsys):
    out = _copy(tiny, tmp_path)
    best = out / "best.weights.h5"
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    capsys.readouterr()
    assert main(["--config", tiny["config"], "--out", str(out)]) == 0
    _clean_error(capsys, best, "damaged", "last epoch's weights")
    assert (out / "best.weights.h5.damaged").exists() and not best.exists()
    summary = json.loads((out / "summary.json").read_text())
    assert "best" not in summary and 0 <= summary["test_accuracy"] <= 1
    assert main(["--config", tiny["config"], "--out", str(out)]) == 0  # and again: it keeps going


def test_truncated_backup_resumes_from_the_previous_epoch(tiny, tmp_path, capsys):
    out = _copy(tiny, tmp_path)
    latest = out / "backup" / "epoch-0002.weights.h5"
    assert json.loads((out / "backup" / "training_metadata.json").read_text())["weights"] == latest.name
    latest.write_bytes(latest.read_bytes()[:1000])
    capsys.readouterr()
    assert main(["--config", tiny["config"], "--out", str(out), "--epochs", "3"]) == 0
    text = _clean_error(capsys, latest, "damaged", "resuming from", "epoch-0001.weights.h5")
    assert "1 finished epochs" in text
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["history"]["loss"]) == 2  # epochs 2 and 3 trained again
    assert json.loads((out / "backup" / "training_metadata.json").read_text())["epoch"] == 3


def test_corrupt_metadata_and_best_json_are_named(tiny, tmp_path, capsys):
    out = _copy(tiny, tmp_path)
    meta, best_json = out / "backup" / "training_metadata.json", out / "best.json"
    meta.write_text('{"epoch": 2,\n')
    best_json.write_text("\x00\x01")
    capsys.readouterr()
    assert main(["--config", tiny["config"], "--out", str(out)]) == 0
    _clean_error(capsys, meta, best_json, "resuming from")
    # nothing usable at all: a clear error naming the files
    out2 = _copy(tiny, tmp_path / "second")
    (out2 / "backup" / "training_metadata.json").write_text("garbage")
    for path in (out2 / "backup").glob("epoch-*.weights.h5"):
        path.write_bytes(b"\x89HDF\r\n")
    assert main(["--config", tiny["config"], "--out", str(out2)]) == 2
    _clean_error(capsys, "no usable backup", "epoch-0002.weights.h5", "training_metadata.json", "Remove")


# --------------------------------------------------------------------------- full disk and kills
def _tiny_model(seed):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("adam", "mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), verbose=0)
    return model


def _weights(model):
    return [np.asarray(w) for w in model.get_weights()]


def _enospc_after(nbytes):
    """A save_weights that writes `nbytes` of its file, then fails as on a full disk."""
    def save_weights(path, overwrite=True):
        with open(path, "wb") as f:
            f.write(b"\x89HDF" * (nbytes // 4))
        raise OSError(errno.ENOSPC, "No space left on device")
    return save_weights


def test_full_disk_leaves_no_partial_file(tmp_path, monkeypatch):
    backup = tmp_path / "backup"
    model = _tiny_model(0)
    checkpoints.save_backup(model, str(backup), 1)
    before = {p: (backup / p).read_bytes() for p in _listing(backup)}
    monkeypatch.setattr(model, "save_weights", _enospc_after(4096))
    with pytest.raises(OSError, match="No space left") as err:
        checkpoints.save_backup(model, str(backup), 2)
    assert err.value.errno == errno.ENOSPC and "epoch-0002.weights.h5" in str(err.value)
    assert {p: (backup / p).read_bytes() for p in _listing(backup)} == before  # no tmp file, nothing changed
    with pytest.raises(OSError, match="best.weights.h5"):
        checkpoints.save_weights(model, str(tmp_path / "best.weights.h5"))
    assert _listing(tmp_path) == ["backup"] + [f"backup/{p}" for p in before]
    fresh = _tiny_model(1)
    assert checkpoints.restore_backup(fresh, str(backup)) == 1


def test_full_disk_during_a_run_then_resume(tiny, tmp_path, monkeypatch, capsys):
    import keras

    calls, real = [], keras.Model.save_weights

    def failing(self, filepath, *args, **kwargs):
        calls.append(filepath)
        if len(calls) == 3:  # epoch 1: backup, best; epoch 2: backup fails
            return _enospc_after(2048)(filepath)
        return real(self, filepath, *args, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(keras.Model, "save_weights", failing)
    assert main(["--config", tiny["config"], "--out", str(out)]) == 2
    _clean_error(capsys, "No space left on device", "epoch-0002.weights.h5")
    assert not [p for p in _listing(out) if ".tmp-" in p]
    assert json.loads((out / "backup" / "training_metadata.json").read_text())["epoch"] == 1
    monkeypatch.setattr(keras.Model, "save_weights", real)
    assert main(["--config", tiny["config"], "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["history"]["loss"]) == 1  # resumed after epoch 1


class _Kill(BaseException):
    """Stands for SIGKILL inside a write (BaseException: nothing catches it)."""


@pytest.mark.parametrize("step", range(4))
def test_kill_at_every_step_of_a_backup_write(tmp_path, monkeypatch, step):
    backup = tmp_path / "backup"
    first, second = _tiny_model(0), _tiny_model(1)
    checkpoints.save_backup(first, str(backup), 1)
    checkpoints.save_backup(first, str(backup), 2)
    done = []

    def hook(real):
        def wrapped(*args, **kwargs):
            if len(done) == step:
                (backup / ".tmp-999-x-epoch-0003.weights.h5").write_bytes(b"partial")  # a kill leaves this
                raise _Kill()
            done.append(1)
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(os, "replace", hook(os.replace))  # steps 0, 1: the weights and metadata renames
    monkeypatch.setattr(os, "remove", hook(os.remove))    # steps 2, 3: removing old epochs
    try:
        checkpoints.save_backup(second, str(backup), 3)
    except _Kill:
        pass
    monkeypatch.undo()
    restored = _tiny_model(7)
    epoch = checkpoints.restore_backup(restored, str(backup))
    expected = {2: _weights(first), 3: _weights(second)}
    assert epoch == (2 if step < 2 else 3)
    for got, want in zip(_weights(restored), expected[epoch]):
        np.testing.assert_array_equal(got, want)
    assert checkpoints.finished_epochs(str(tmp_path)) == epoch


def test_run_folders_of_the_previous_version_still_resume(tmp_path):
    """Backups as `latest.weights.h5` + metadata without a file name, configs with ema/mds/dynamic."""
    from keras_hier.recipes.configs import config_differences, get_config

    backup = tmp_path / "backup"
    backup.mkdir()
    old = _tiny_model(0)
    old.save_weights(str(backup / "latest.weights.h5"))
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": 4, "batch": 0}))
    fresh = _tiny_model(3)
    assert checkpoints.restore_backup(fresh, str(backup)) == 4
    for got, want in zip(_weights(fresh), _weights(old)):
        np.testing.assert_array_equal(got, want)
    stored = {k: v for k, v in get_config("cpu_small").items() if k not in ("proxy_mode", "dynamic_scale")}
    stored.update(ema=True, dynamic=False, mds=False)
    assert config_differences(stored, get_config("cpu_small", proxy_mode="ema")) == []
    assert config_differences(stored, get_config("cpu_small")) == [("proxy_mode", "ema", "learned")]
