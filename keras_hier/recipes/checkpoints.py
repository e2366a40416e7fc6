"""The run folder's state: a per-epoch backup and the best epoch, robust to kills, damage and full disks.

- `EpochBackup` writes `backup/epoch-NNNN.weights.h5` (weights and
  optimizer) and then `backup/training_metadata.json` (`{"epoch": finished
  epochs, "weights": file name}`, the commit point) after every epoch,
  keeping the previous epoch's weights too. Every file is written through
  `keras_hier.files`: a kill or a full disk leaves the old files intact and
  no temporary file behind.
- `restore_backup` loads the newest backup that reads back whole; a damaged
  one (truncated, not HDF5, metadata not JSON) is named, renamed to
  `<name>.damaged` and the previous epoch's one is used.
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

__all__ = ["RunFileError", "read_json", "weights_file_error", "save_weights", "EpochBackup", "save_backup",
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


METADATA = "training_metadata.json"


def _weights_name(epoch):
    return f"epoch-{int(epoch):04d}.weights.h5"


def _epoch_of(name):
    """The epoch of a backup weights file name `epoch-NNNN.weights.h5` (None for other names)."""
    stem = name[len("epoch-"):-len(".weights.h5")] if name.startswith("epoch-") else ""
    return int(stem) if stem.isdigit() and name.endswith(".weights.h5") else None


class EpochBackup(keras.callbacks.Callback):
    """Saves the training state after every epoch into `backup_dir` (see `save_backup`).

    Args:
        backup_dir: the run's backup folder (created).
    """

    def __init__(self, backup_dir):
        super().__init__()
        self.backup_dir = backup_dir

    def on_epoch_end(self, epoch, logs=None):
        save_backup(self.model, self.backup_dir, epoch + 1)


def save_backup(model, backup_dir, epoch, keep=2):
    """Writes the backup of `epoch` finished epochs.

    The weights (and optimizer state) go to `epoch-NNNN.weights.h5`, then
    `training_metadata.json` (`{"epoch", "batch", "weights"}`) is replaced:
    it is the commit point, so a kill at any moment leaves a metadata file
    naming a whole weights file. Then all but the `keep` newest weights files
    are removed. Every write is atomic (`keras_hier.files`); a failed one
    (full disk) leaves no temporary file and the previous backup in place.
    """
    os.makedirs(backup_dir, exist_ok=True)
    name = _weights_name(epoch)
    save_weights(model, os.path.join(backup_dir, name))
    atomic_write_json(os.path.join(backup_dir, METADATA), {"epoch": int(epoch), "batch": 0, "weights": name})
    files = [(e, n) for n in os.listdir(backup_dir) if (e := _epoch_of(n)) is not None]
    older = sorted(f for f in files if f[0] < epoch)
    newer = [f for f in files if f[0] > epoch]  # an abandoned timeline (resumed from an older backup)
    for _, stale in older[:max(0, len(older) - (keep - 1))] + newer:
        os.remove(os.path.join(backup_dir, stale))


def _metadata(meta):
    """(finished epochs, weights file name) committed in the metadata file."""
    record = read_json(meta)
    epoch = record.get("epoch") if isinstance(record, dict) else None
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise RunFileError(f"{meta} is damaged (no finished-epoch count in {record!r})")
    weights = record.get("weights", "latest.weights.h5")  # the name written before epoch-numbered files
    if not isinstance(weights, str) or os.path.basename(weights) != weights:
        raise RunFileError(f"{meta} is damaged (weights file {weights!r})")
    return epoch, weights


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


def _candidates(backup_dir, problems):
    """(epoch, weights path) to try, newest first: the committed one, then older whole files."""
    meta = os.path.join(backup_dir, METADATA)
    committed = None
    if os.path.exists(meta):
        try:
            committed = _metadata(meta)
        except RunFileError as err:
            problems.append(str(err))
            _set_aside(meta, "not valid training metadata")
    files = sorted(((e, n) for n in os.listdir(backup_dir) if (e := _epoch_of(n)) is not None), reverse=True)
    if committed is not None:  # newer files were never committed (a kill before the metadata write)
        files = [committed] + [(e, n) for e, n in files if e < committed[0]]
    return [(e, os.path.join(backup_dir, n)) for e, n in files]


def restore_backup(model, backup_dir):
    """Loads the newest good backup of `backup_dir` into `model`.

    A damaged weights or metadata file is named, renamed to `<name>.damaged`
    and the next older backup is used.

    Returns:
        The number of finished epochs it holds (0 when there is no backup).

    Raises:
        RunFileError: backups exist but none reads back (the message names the files).
    """
    if not os.path.isdir(backup_dir):
        return 0
    problems = []
    for epoch, weights in _candidates(backup_dir, problems):
        if not os.path.exists(weights):
            problems.append(f"{weights} is missing")
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
    """Finished epochs committed in the run's backup metadata (0 for a new run).

    Raises:
        RunFileError: `backup/training_metadata.json` is damaged.
    """
    meta = os.path.join(out, "backup", METADATA)
    return _metadata(meta)[0] if os.path.exists(meta) else 0


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
            _warn(f"until a better epoch replaces {self.path}, the last epoch's weights are evaluated")
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
