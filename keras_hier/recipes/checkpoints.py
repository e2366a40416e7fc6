"""The run folder's state: a per-epoch backup and the best epoch, robust to kills, damage and full disks.

- `EpochBackup` writes `backup/latest.weights.h5` (weights and optimizer)
  and `backup/training_metadata.json` (`{"epoch": finished epochs}`) after
  every epoch, keeping the previous pair as `backup/previous.*`. Every file
  is written through `keras_hier.files.atomic_replace`: a kill or a full disk
  leaves the old files intact and no temporary file behind.
- `restore_backup` loads the newest backup that reads back whole; a damaged
  one (truncated, not HDF5, metadata not JSON) is named, renamed to
  `<name>.damaged` and the previous one is used.
- `BestCheckpoint` keeps `best.weights.h5` + `best.json` (the best epoch by
  a monitored value, surviving resumes); `load_best` loads it at the end, or
  says why it cannot and leaves the last epoch's weights.

Every problem with a run file raises `RunFileError` (a `ValueError`) whose
message names the file and what to do.
"""

import json
import os

import keras

from keras_hier.files import atomic_replace, atomic_write_json

__all__ = ["RunFileError", "read_json", "weights_file_error", "save_weights", "EpochBackup",
           "restore_backup", "finished_epochs", "BestCheckpoint", "load_best"]


class RunFileError(ValueError):
    """A file of the run folder is damaged or unreadable (the message names it)."""


def _warn(message):
    print(f"[keras_hier] warning: {message}", flush=True)


def read_json(path):
    """The JSON value stored in `path`; `RunFileError` naming the file if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise RunFileError(f"{path} is damaged (not valid JSON: {err})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RunFileError(f"{path} cannot be read ({err})") from None


def weights_file_error(path):
    """None if `path` is a whole Keras weights file (HDF5, every array readable), else why not."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: obj[()] if isinstance(obj, h5py.Dataset) else None)
    except Exception as err:  # h5py raises OSError, KeyError, RuntimeError, ... on damaged files
        return f"{type(err).__name__}: {err}"
    return None


def save_weights(model, path):
    """`model.save_weights(path)` atomically; an OSError (full disk, read-only) names `path`."""
    try:
        with atomic_replace(path) as tmp:
            model.save_weights(tmp, overwrite=True)
    except OSError as err:
        raise OSError(err.errno, f"could not write {path}: {err.strerror or err}") from err


def _set_aside(path, why):
    """Renames a damaged file to `<path>.damaged` so that it is kept but never read again."""
    _warn(f"{path} is damaged ({why}); kept as {path}.damaged")
    try:
        os.replace(path, f"{path}.damaged")
    except OSError:
        pass


class _BackupFiles:
    def __init__(self, backup_dir):
        self.dir = backup_dir
        self.pairs = [(os.path.join(backup_dir, "latest.weights.h5"),
                       os.path.join(backup_dir, "training_metadata.json")),
                      (os.path.join(backup_dir, "previous.weights.h5"),
                       os.path.join(backup_dir, "previous_metadata.json"))]


class EpochBackup(keras.callbacks.Callback):
    """Saves the training state after every epoch into `backup_dir` (see the module doc).

    Args:
        backup_dir: the run's backup folder (created).
    """

    def __init__(self, backup_dir):
        super().__init__()
        self.files = _BackupFiles(backup_dir)

    def on_epoch_end(self, epoch, logs=None):
        save_backup(self.model, self.files.dir, epoch + 1)


def save_backup(model, backup_dir, epoch):
    """Writes the backup of `epoch` finished epochs, the old one becoming `previous`."""
    (latest, meta), (previous, previous_meta) = _BackupFiles(backup_dir).pairs
    os.makedirs(backup_dir, exist_ok=True)
    try:
        with atomic_replace(latest) as tmp:
            model.save_weights(tmp, overwrite=True)
            if os.path.exists(latest) and os.path.exists(meta):
                os.replace(latest, previous)
                os.replace(meta, previous_meta)
    except OSError as err:
        raise OSError(err.errno, f"could not write the backup {latest}: {err.strerror or err}") from err
    atomic_write_json(meta, {"epoch": int(epoch), "batch": 0})


def _backup_epoch(meta):
    record = read_json(meta)
    epoch = record.get("epoch") if isinstance(record, dict) else None
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise RunFileError(f"{meta} is damaged (no finished-epoch count in {record!r})")
    return epoch


def _load(model, path):
    reason = weights_file_error(path)
    if reason is None:
        try:
            if model.optimizer is not None and not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)  # its state is in the file too
            model.load_weights(path)
        except Exception as err:  # a file of another model, or damage h5py did not see
            reason = f"{type(err).__name__}: {err}"
    return reason


def restore_backup(model, backup_dir):
    """Loads the newest good backup of `backup_dir` into `model`.

    Returns:
        The number of finished epochs it holds (0 when there is no backup).

    Raises:
        RunFileError: backups exist but none reads back (the message names the files).
    """
    problems = []
    for weights, meta in _BackupFiles(backup_dir).pairs:
        if not (os.path.exists(weights) and os.path.exists(meta)):
            continue  # never written, or a kill between the two writes: the other pair is whole
        try:
            epoch = _backup_epoch(meta)
        except RunFileError as err:
            problems.append(str(err))
            _set_aside(meta, "not valid training metadata")
            continue
        reason = _load(model, weights)
        if reason is not None:
            problems.append(f"{weights} is damaged ({reason})")
            _set_aside(weights, reason)
            continue
        if problems:
            _warn(f"{'; '.join(problems)}; resuming from {weights} ({epoch} finished epochs)")
        return epoch
    if problems:
        raise RunFileError(f"no usable backup in {backup_dir}: {'; '.join(problems)}. Remove {backup_dir} "
                           "to train this run again from scratch, or give a new --out")
    return 0


def finished_epochs(out):
    """Finished epochs recorded in the run's latest backup metadata (0 for a new run).

    Raises:
        RunFileError: `backup/training_metadata.json` is damaged.
    """
    meta = _BackupFiles(os.path.join(out, "backup")).pairs[0][1]
    return _backup_epoch(meta) if os.path.exists(meta) else 0


class BestCheckpoint(keras.callbacks.Callback):
    """Keeps the weights of the best epoch by `monitor` (max) in `path`, surviving resumes.

    `path` ends in `.weights.h5`; `best.json` beside it records the epoch and
    value. A damaged pair at the start is reported and replaced by the next
    epoch's weights.
    """

    def __init__(self, path, monitor):
        super().__init__()
        self.path, self.monitor = path, monitor
        self.meta = path.replace(".weights.h5", ".json")
        self.best = None

    def on_train_begin(self, logs=None):
        self.best = None
        if not (os.path.exists(self.meta) and os.path.exists(self.path)):
            return
        try:
            self.best = float(read_json(self.meta)["value"])
        except (RunFileError, KeyError, TypeError, ValueError) as err:
            _warn(f"{self.meta} is damaged ({err}); the next epoch starts a new best")
            return
        reason = weights_file_error(self.path)
        if reason is not None:
            _set_aside(self.path, reason)
            self.best = None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or (self.best is not None and value <= self.best):
            return
        self.best = float(value)
        save_weights(self.model, self.path)
        atomic_write_json(self.meta, {"epoch": epoch + 1, "monitor": self.monitor, "value": self.best})


def load_best(model, path):
    """Loads the best weights at `path` into `model` if they read back whole.

    Returns:
        The best epoch's record (`best.json`), `{}` when only the weights are
        readable, or None when there are no usable best weights (the model
        keeps its current weights, and the reason is printed).
    """
    if not os.path.exists(path):
        return None
    reason = _load(model, path)
    if reason is not None:
        _set_aside(path, reason)
        _warn(f"evaluating the last epoch's weights instead of {path}")
        return None
    meta = path.replace(".weights.h5", ".json")
    try:
        record = read_json(meta)
    except RunFileError as err:
        _warn(str(err))
        return {}
    return record if isinstance(record, dict) else {}
