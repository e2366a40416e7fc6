"""Training on several workers: `tf.distribute` from `TF_CONFIG`, `keras.distribution` on JAX.

TensorFlow: every worker runs the same program with its own `TF_CONFIG`
(see docs/distributed.md). `strategy_from_environment()` returns a
`tf.distribute.MultiWorkerMirroredStrategy` when `TF_CONFIG` names a
cluster of more than one task, else `MirroredStrategy` over several local
GPUs, else the default strategy. Create it first thing in the program
(before any other TensorFlow op), build and compile the model under
`strategy.scope()`, feed `fit` a dataset batched with the GLOBAL batch size
(`shard_dataset`: auto-shard by DATA, the global batch split across the
replicas), and let every worker run every step, saving included:

- `is_chief()` tells the one worker whose files count;
- `chief_only_path(path)` is `path` on the chief and a throw-away temporary
  path on the other workers, as the Keras multi-worker guide prescribes
  (saving may run collective ops, so every worker must take part);
- `backup_and_restore(backup_dir)` is a `keras.callbacks.BackupAndRestore`
  that the chief alone writes (atomically, weights then metadata) and every
  worker restores from, so a cluster restarted after a worker was killed
  resumes from the last finished epoch.

The heads' EMA proxies and dynamic scale (`keras_hier.layers`) all-reduce
their batch statistics through the replica context, which under
`MultiWorkerMirroredStrategy` spans every replica of every worker, so all
workers assign the same values (`reduction_bytes` counts what that adds).

JAX: `data_parallel()` sets `keras.distribution.DataParallel` over the
local (or, after `keras.distribution.initialize`, all hosts') devices; the
jitted train step then sees the global batch, split across devices.

Example (`environ` stands in for each process's environment):

>>> one = {}                                   # no TF_CONFIG: one process, the chief
>>> num_workers(one), task_index(one), is_chief(one), chief_only_path("/runs/a/export", one)
(1, 0, True, '/runs/a/export')
>>> second = {"TF_CONFIG": json.dumps({"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
...                                    "task": {"type": "worker", "index": 1}})}
>>> num_workers(second), task_index(second), is_chief(second)
(2, 1, False)
>>> chief_only_path("/runs/a/export", second).startswith("/runs")   # a throw-away temporary path
False
>>> cleanup_worker_paths()
"""

import contextlib
import json
import os
import shutil
import tempfile

__all__ = [
    "cluster_config", "num_workers", "task_index", "is_chief", "strategy_from_environment",
    "chief_only_path", "chief_only", "cleanup_worker_paths", "shard_dataset", "backup_and_restore",
    "barrier", "data_parallel", "reduction_bytes", "fix_keras_multi_worker", "WORKER_TASK_TYPES",
]

#: Task types that train (TensorFlow's `"chief"` is a worker with the chief role).
WORKER_TASK_TYPES = ("chief", "worker")
_OTHER_TASK_TYPES = ("ps", "evaluator")
_WORKER_TMP_DIRS = []


# ----------------------------------------------------------------- TF_CONFIG
def cluster_config(environ=None):
    """The parsed and checked `TF_CONFIG` (`{"cluster": ..., "task": ...}`), or None.

    None when `TF_CONFIG` is unset or empty. A cluster with a single task is
    returned as well (`num_workers` then gives 1).

    Args:
        environ: mapping to read instead of `os.environ`.

    Returns:
        dict or None.

    Raises:
        ValueError: `TF_CONFIG` is not JSON, has no `cluster` / `task`, names a
            task type or index that is not in the cluster, or lists a
            parameter server (`MultiWorkerMirroredStrategy` has none).

    Example:

    >>> tf_config = {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
    ...              "task": {"type": "worker", "index": 1}}
    >>> cluster_config({"TF_CONFIG": json.dumps(tf_config)})["task"]
    {'type': 'worker', 'index': 1}
    """
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}): {raw[:200]!r}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise ValueError(f"TF_CONFIG needs a 'cluster' object mapping task types to address lists, got {raw[:200]!r}")
    cluster, task = config["cluster"], config.get("task")
    if not cluster:
        return None
    if not isinstance(task, dict) or "type" not in task:
        raise ValueError(f"TF_CONFIG needs a 'task' object with 'type' and 'index', got task={task!r}")
    kind, index = task["type"], task.get("index", 0)
    for name, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise ValueError(f"TF_CONFIG cluster[{name!r}] must be a list of 'host:port' strings, got {addresses!r}")
    if "ps" in cluster:
        raise ValueError("TF_CONFIG lists parameter servers ('ps'): keras_hier trains with "
                         "MultiWorkerMirroredStrategy (chief/worker tasks only)")
    if kind not in cluster or kind not in WORKER_TASK_TYPES + _OTHER_TASK_TYPES:
        raise ValueError(f"TF_CONFIG task type {kind!r} is not one of the cluster's task types {sorted(cluster)}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ValueError(f"TF_CONFIG task index {index!r} is out of range for {len(cluster[kind])} "
                         f"{kind!r} task(s)")
    if len(cluster.get("chief", [])) > 1:
        raise ValueError(f"TF_CONFIG may name one chief, got {len(cluster['chief'])}")
    return {"cluster": cluster, "task": {"type": kind, "index": index}}


def num_workers(environ=None):
    """Number of training tasks (chief + workers) in `TF_CONFIG`; 1 without a cluster."""
    config = cluster_config(environ)
    if config is None:
        return 1
    return sum(len(config["cluster"].get(kind, [])) for kind in WORKER_TASK_TYPES)


def task_index(environ=None):
    """This worker's rank among the training tasks: the chief (or worker 0 without
    a chief) is 0; without a cluster 0."""
    config = cluster_config(environ)
    if config is None:
        return 0
    kind, index = config["task"]["type"], config["task"]["index"]
    if kind == "worker" and "chief" in config["cluster"]:
        return index + 1
    return index


def is_chief(environ=None):
    """True for the worker whose outputs count (checkpoints, report, export).

    TensorFlow: the `"chief"` task, or worker 0 when the cluster has no chief;
    true without `TF_CONFIG`. JAX with several processes
    (`keras.distribution.initialize`): process 0.
    """
    config = cluster_config(environ)
    if config is not None:
        kind = config["task"]["type"]
        if kind == "chief":
            return True
        return kind == "worker" and config["task"]["index"] == 0 and "chief" not in config["cluster"]
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.process_index() == 0
    return True


# ------------------------------------------------------------------ strategy
def strategy_from_environment(devices=None, communication="auto", timeout_seconds=None, heartbeat_seconds=None,
                              environ=None):
    """The `tf.distribute` strategy this process should train under.

    - `TF_CONFIG` with more than one training task:
      `MultiWorkerMirroredStrategy` (collective all-reduce across all
      replicas of all workers; create it before any other TensorFlow op);
    - else several local GPUs (or explicit `devices`): `MirroredStrategy`;
    - else the default strategy (one replica).

    Args:
        devices: local device names for `MirroredStrategy` (single machine only).
        communication: `"auto"`, `"ring"` (gRPC; CPU clusters) or `"nccl"`
            (GPU clusters), the collective implementation.
        timeout_seconds: abort a collective op after this long (so a
            worker whose peer died fails and can be restarted instead of
            hanging); None = no timeout.
        heartbeat_seconds: declare a silent peer dead after this long
            (TensorFlow's coordination service; its default is 10 s). The
            surviving workers' collectives then fail with "tasks are
            unhealthy", so a cluster manager can restart them.
        environ: mapping to read instead of `os.environ`.

    Returns:
        A `tf.distribute.Strategy`.

    Example:

    >>> strategy_from_environment(environ={}).num_replicas_in_sync
    1
    """
    import tensorflow as tf

    implementations = {"auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
                       "ring": tf.distribute.experimental.CommunicationImplementation.RING,
                       "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL}
    if communication not in implementations:
        raise ValueError(f"communication must be one of {sorted(implementations)}, got {communication!r}")
    if num_workers(environ) > 1:
        if devices is not None:
            raise ValueError("devices= is for one machine; under TF_CONFIG every worker uses its local GPUs "
                             "(or CPU)")
        if heartbeat_seconds is not None:
            _configure_heartbeat(cluster_config(environ)["cluster"], heartbeat_seconds)
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=implementations[communication], timeout_seconds=timeout_seconds)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        fix_keras_multi_worker()
        return strategy
    if devices is None:
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] if len(gpus) > 1 else None
    if devices:
        return tf.distribute.MirroredStrategy(devices=list(devices))
    return tf.distribute.get_strategy()


def _configure_heartbeat(cluster, seconds):
    """Configures TensorFlow's coordination service as `MultiWorkerMirroredStrategy`
    would, with a heartbeat timeout of `seconds` (must run before the strategy)."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    if not seconds > 0:
        raise ValueError(f"heartbeat_seconds must be > 0, got {seconds!r}")
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster[job]))
            for job in WORKER_TASK_TYPES if job in cluster]
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(cluster),
        coordinated_jobs=jobs, heartbeat_timeout_in_ms=int(seconds * 1000))


def _is_multi_worker(strategy):
    extended = getattr(strategy, "extended", None)
    return bool(getattr(extended, "_in_multi_worker_mode", lambda: False)())


def fix_keras_multi_worker():
    """Lets Keras 3's `fit` run under `MultiWorkerMirroredStrategy`.

    Keras 3 (3.15 included; keras-team/keras#20585, tensorflow#72388) has two
    multi-worker faults, fixed here for multi-worker strategies only (other
    strategies, and Keras versions without this code, are left untouched):

    - before `fit` it builds the model from the first batch reduced by
      `strategy.reduce("MEAN", (x, y))`, which a multi-worker strategy refuses
      for a tuple ("Attempt to convert a value (PerReplica ...) to a
      Tensor"); only shapes matter there, so the first local replica's batch
      is used;
    - it averages each step's logs with `strategy.reduce("MEAN", v, axis=0)`,
      which fails on scalar logs ("Invalid reduction dimension 0"); they are
      averaged over all replicas with `axis=None` instead (every worker then
      logs the same, global, values).

    `strategy_from_environment` calls it; call it yourself when you create
    a `MultiWorkerMirroredStrategy` another way. Calling it again is a no-op.
    """
    try:
        from keras.src.backend.tensorflow import trainer as tf_trainer
    except ImportError:  # pragma: no cover - a Keras without this code path
        return
    trainer_class = tf_trainer.TensorFlowTrainer
    build = getattr(trainer_class, "_maybe_symbolic_build", None)
    reduce = getattr(tf_trainer, "reduce_per_replica", None)
    if build is None or reduce is None or getattr(build, "keras_hier_patched", False):
        return
    import tensorflow as tf

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = getattr(self, "_distribute_strategy", None)
        if iterator is None or strategy is None or not _is_multi_worker(strategy):
            return build(self, iterator=iterator, data_batch=data_batch)
        for _, _, data in iterator:
            data_batch = next(data)
            break

        def local(value):
            if isinstance(value, tf.distribute.DistributedValues):
                return strategy.experimental_local_results(value)[0]
            return value

        return build(self, data_batch=tf.nest.map_structure(local, data_batch))

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and _is_multi_worker(strategy):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce(values, strategy, reduction)

    _maybe_symbolic_build.keras_hier_patched = True
    trainer_class._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica


# ------------------------------------------------------------ chief-only files
def chief_only_path(path, environ=None):
    """`path` on the chief; a fresh throw-away path with the same base name on other workers.

    Every worker runs the same saving code (anything that may run
    collective ops under the strategy: evaluation, prediction, a SavedModel
    export) and only the chief's copy lands in `path`, as the Keras
    multi-worker guide prescribes. (Keras 3's `save_weights` runs no
    collective op: `if is_chief():` is enough around a weights file.) The
    other workers' temporary folders are removed by
    `cleanup_worker_paths()` (or use `chief_only`).

    Args:
        path: the file or folder the chief writes.
        environ: mapping to read instead of `os.environ`.

    Returns:
        str.
    """
    path = os.fspath(path)
    if is_chief(environ):
        return path
    folder = tempfile.mkdtemp(prefix=f"keras_hier_worker{task_index(environ)}_")
    _WORKER_TMP_DIRS.append(folder)
    return os.path.join(folder, os.path.basename(os.path.normpath(path)) or "output")


def cleanup_worker_paths():
    """Removes every throw-away folder `chief_only_path` made in this process."""
    while _WORKER_TMP_DIRS:
        shutil.rmtree(_WORKER_TMP_DIRS.pop(), ignore_errors=True)


@contextlib.contextmanager
def chief_only(path, environ=None):
    """Context manager form of `chief_only_path`: yields the path to write, and
    on a non-chief worker removes it afterwards.

    Example:

    >>> import tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "summary.json")
    >>> with chief_only(target, environ={}) as path:
    ...     _ = open(path, "w").write("{}")
    >>> os.path.exists(target)
    True
    """
    target = chief_only_path(path, environ)
    try:
        yield target
    finally:
        if target != os.fspath(path):
            shutil.rmtree(os.path.dirname(target), ignore_errors=True)
            if os.path.dirname(target) in _WORKER_TMP_DIRS:
                _WORKER_TMP_DIRS.remove(os.path.dirname(target))


def barrier(strategy=None):
    """Returns once every worker has called it (one tiny all-reduce); a no-op on one machine.

    Use it before a worker reads a file the chief writes at the end of a
    step every worker runs, e.g. the best checkpoint of the last epoch after
    `fit`: a worker may leave `fit` while the chief is still writing it.

    Args:
        strategy: the training strategy (`model.distribute_strategy`);
            default: the strategy of the current scope.

    Returns:
        The number of replicas that took part (1 on one machine).

    Example:

    >>> barrier()
    1
    """
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    if not _is_multi_worker(strategy):
        return 1
    ones = strategy.run(lambda: tf.constant(1.0))
    return int(strategy.reduce("SUM", ones, axis=None))


# ---------------------------------------------------------------------- data
def shard_dataset(dataset, global_batch_size=None, strategy=None, drop_remainder=True):
    """Prepares a `tf.data.Dataset` for `fit` on several workers.

    Sets the auto-shard policy to DATA (every worker reads the whole
    pipeline and keeps its part of every batch, so any source works, also
    a single file or in-memory tensors; use FILE with many TFRecord files
    for speed) and, if `global_batch_size` is given, batches the dataset by
    it: `fit` under a strategy splits each global batch across the
    replicas (`global_batch_size / num_replicas_in_sync` each), so a step
    sees the same examples as a single-process step with that batch.

    Args:
        dataset: `tf.data.Dataset` of (x, y) examples, or already batched
            by the global batch size when `global_batch_size` is None.
        global_batch_size: batch size summed over all replicas.
        strategy: checked for divisibility (default: the current strategy).
        drop_remainder: drop a last partial global batch (a partial batch
            cannot be split evenly across replicas).

    Returns:
        The dataset with the options set.
    """
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    if global_batch_size is not None:
        replicas = int(strategy.num_replicas_in_sync)
        if int(global_batch_size) <= 0 or int(global_batch_size) % replicas:
            raise ValueError(f"shard_dataset: global_batch_size={global_batch_size} must be a positive multiple "
                             f"of the {replicas} replicas in sync")
        dataset = dataset.batch(int(global_batch_size), drop_remainder=drop_remainder)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


# --------------------------------------------------------- backup and restore
def backup_and_restore(backup_dir, environ=None, **kwargs):
    """A `keras.callbacks.BackupAndRestore` for one or several workers.

    After every epoch the chief writes `epoch-<n>.weights.h5` and then
    `training_metadata.json` (each atomically; the metadata names the
    weights file, so a kill between the two leaves the previous state
    whole); other workers save to a throw-away folder (saving may run
    collective ops). On `fit` start every worker restores from
    `backup_dir`, which must therefore be on a file system all workers see
    (NFS, GCS, a shared volume). A cluster restarted after one of its
    workers was killed resumes after the last finished epoch.

    Args:
        backup_dir: the chief's backup folder.
        environ: mapping to read instead of `os.environ`.
        **kwargs: `keras.callbacks.BackupAndRestore` arguments
            (`delete_checkpoint`, default False here: keep the backup).

    Returns:
        A callback.
    """
    cls = _backup_class()
    kwargs.setdefault("delete_checkpoint", False)
    if kwargs.get("save_freq", "epoch") != "epoch":
        raise ValueError("backup_and_restore saves per epoch (save_freq='epoch')")
    return cls(os.fspath(backup_dir), environ=environ, **kwargs)


def _backup_class():
    import keras

    from keras_hier.files import atomic_replace, atomic_write_json

    class WorkerBackupAndRestore(keras.callbacks.BackupAndRestore):
        """BackupAndRestore: chief-only atomic saves, restores on every worker."""

        def __init__(self, backup_dir, environ=None, **kwargs):
            super().__init__(backup_dir, **kwargs)
            self.chief = is_chief(environ)
            self.write_dir = backup_dir if self.chief else chief_only_path(backup_dir, environ)

        def _read_metadata(self):
            if not os.path.exists(self._training_metadata_path):
                return None
            with open(self._training_metadata_path) as f:
                return json.load(f)

        def _load_model(self):
            metadata = self._read_metadata()
            if metadata is None:
                return
            weights = os.path.join(self.backup_dir, metadata.get("weights", "latest.weights.h5"))
            if self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            self.model.load_weights(weights)
            self.model._initial_epoch = int(metadata["epoch"])

        def _save_model(self):
            os.makedirs(self.write_dir, exist_ok=True)
            name = f"epoch-{self._current_epoch}.weights.h5"
            with atomic_replace(os.path.join(self.write_dir, name)) as tmp:
                self.model.save_weights(tmp)
            atomic_write_json(os.path.join(self.write_dir, "training_metadata.json"),
                              {"epoch": self._current_epoch, "batch": self._last_batch_seen, "weights": name})
            for old in os.listdir(self.write_dir):
                if old.startswith("epoch-") and old.endswith(".weights.h5") and old != name:
                    os.remove(os.path.join(self.write_dir, old))

        def on_train_end(self, logs=None):
            if self.delete_checkpoint and self.chief and os.path.exists(self.backup_dir):
                shutil.rmtree(self.backup_dir)
            if not self.chief:
                shutil.rmtree(os.path.dirname(self.write_dir), ignore_errors=True)

    return WorkerBackupAndRestore


# ----------------------------------------------------------------------- JAX
def data_parallel(devices=None):
    """Sets `keras.distribution.DataParallel` (JAX backend) and returns it.

    The batch of every jitted step is split across `devices` (default: all
    devices of all processes, `keras.distribution.list_devices()`); the
    weights are replicated and the gradients all-reduced by XLA. On several
    hosts call `keras.distribution.initialize(...)` (it wraps
    `jax.distributed.initialize`) first, in every process. On one CPU,
    `XLA_FLAGS=--xla_force_host_platform_device_count=2` gives two devices.

    Args:
        devices: device names or `jax.Device`s; default all devices.

    Returns:
        The `keras.distribution.DataParallel` set as the global distribution.
    """
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"data_parallel() is for the JAX backend (KERAS_BACKEND=jax), not "
                           f"{keras.backend.backend()!r}; on TensorFlow use strategy_from_environment()")
    devices = list(devices) if devices is not None else keras.distribution.list_devices()
    distribution = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(distribution)
    return distribution


# ------------------------------------------------------------ communication
def _layers(model):
    for layer in getattr(model, "layers", ()):
        yield layer
        yield from _layers(layer)


def reduction_bytes(model, global_batch_size):
    """Bytes each step all-reduces (or all-gathers) in float32, by purpose.

    - `"gradients"`: the gradient all-reduce of every trainable weight
      (what any data-parallel training pays);
    - `"ema"`: per EMA head, the all-gather of every example's normalised
      embedding [D], label and valid flag (global batch; the update then
      works on the batch's classes only);
    - `"dynamic_scale"`: per dynamic-scale head, three scalar sums and the
      all-gather of every example's target angle (global batch).

    These are payload sizes; a ring all-reduce sends about 2 (N - 1) / N
    times the payload per worker for N workers.

    Args:
        model: a built model (`keras_hier.build_classifier`).
        global_batch_size: examples per step over all replicas.

    Returns:
        dict of ints: `gradients`, `ema`, `dynamic_scale`, `heads` (ema +
        dynamic_scale).
    """
    import numpy as np

    gradients = int(sum(np.prod(w.shape) for w in model.trainable_weights)) * 4
    ema = dynamic = 0
    for layer in _layers(model):
        if getattr(layer, "proxy_mode", None) == "ema":
            dim = int(layer.proxies.shape[-1])
            ema += int(global_batch_size) * (dim + 2) * 4
        if getattr(layer, "dynamic_scale", False):
            dynamic += (3 + int(global_batch_size)) * 4
    return {"gradients": gradients, "ema": ema, "dynamic_scale": dynamic, "heads": ema + dynamic}
