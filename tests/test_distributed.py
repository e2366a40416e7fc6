"""Multi-worker training (keras_hier.distributed).

- Two TensorFlow workers on 127.0.0.1 (`MultiWorkerMirroredStrategy` from
  `TF_CONFIG`, CPU) train a Dense head, NormFace and ProxyDR with EMA
  proxies and a dynamic scale on fixed global batches; every variable
  (weights, proxies, scale and its Adam state) equals a single-process run
  with the same global batch, and both workers hold identical values. A
  control model whose heads skip the cross-replica reductions makes the
  workers disagree, so the check can fail.
- Fault: worker 1 SIGKILLs itself mid-epoch; the supervisor here restarts
  whichever worker exits with an error (the chief's collectives fail when
  its peer stops sending heartbeats), and the run finishes from the chief's
  `backup_and_restore` backup with every epoch in the chief's history once
  and the same final weights as an uninterrupted single-process run.
- JAX: `keras.distribution.DataParallel` over two host devices gives the
  same variables as one device.

Workers are `tests/distributed_worker.py` subprocesses; every one is killed
when its test ends, and each run is bounded by `DEADLINE` seconds of wall
clock (the CPU work is a few seconds per process; the bound is generous
because the 2 cores may be shared).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from keras_hier import distributed
from ports import free_ports

WORKER = Path(__file__).with_name("distributed_worker.py")
DEADLINE = 240.0
EQUIVALENT_HEADS = ("dense", "normface", "proxydr")
RTOL, ATOL = 1e-3, 1e-5  # float32, different summation orders; the control differs by > 1e-2


# ------------------------------------------------------------------ processes


class Cluster:
    """Worker subprocesses of one run; `with Cluster(...)` kills any still alive on exit."""

    def __init__(self, tmp_path, mode, args, workers=2, env=None):
        self.tmp_path, self.mode, self.args = Path(tmp_path), mode, list(args)
        ports = free_ports(workers) if workers else []
        self.cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
        self.env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **(env or {}))
        self.env.pop("TF_CONFIG", None)
        self.procs, self.exits, self.logs = {}, {}, {}

    def start(self, key, index=None, out=None, args=None):
        """Starts worker `index` of the cluster (None: a process without TF_CONFIG), with
        `args` instead of the cluster's arguments if given."""
        env = dict(self.env)
        if index is not None:
            env["TF_CONFIG"] = json.dumps({"cluster": self.cluster, "task": {"type": "worker", "index": index}})
        runs = len(self.exits.setdefault(key, []))
        log = self.tmp_path / f"{key}.{runs}.log"
        self.logs.setdefault(key, []).append(log)
        args = self.args if args is None else list(args)
        command = [sys.executable, str(WORKER), self.mode, "--out", str(out or self.tmp_path / "out")] + args
        with open(log, "w") as stream:
            proc = subprocess.Popen(command, env=env, stdout=stream, stderr=subprocess.STDOUT)
        self.procs[key] = (proc, index, out, args)

    def wait(self, restart=0):
        """Waits for every process; a worker exiting non-zero is restarted up to `restart` times."""
        deadline = time.monotonic() + DEADLINE
        running = dict(self.procs)
        while running:
            if time.monotonic() > deadline:
                raise AssertionError(f"cluster still running after {DEADLINE} s:\n{self.tail()}")
            time.sleep(0.2)
            for key, (proc, index, out, args) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                self.exits[key].append(code)
                del running[key]
                if code != 0 and len(self.exits[key]) <= restart:
                    self.start(key, index, out, args)
                    running[key] = self.procs[key]
        failed = {key: codes for key, codes in self.exits.items() if codes[-1] != 0}
        assert not failed, f"workers failed {failed}:\n{self.tail()}"

    def tail(self, lines=15):
        text = []
        for key, logs in self.logs.items():
            kept = [line for line in logs[-1].read_text(errors="replace").splitlines()
                    if not line.startswith(("I0000", "W0000", "WARNING: All"))]
            text.append(f"--- {key} ({logs[-1].name})\n" + "\n".join(kept[-lines:]))
        return "\n".join(text)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for proc, *_ in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _load(path):
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def _assert_same(actual, expected, what, rtol=RTOL, atol=ATOL):
    assert sorted(actual) == sorted(expected), what
    for key in expected:
        np.testing.assert_allclose(actual[key], expected[key], rtol=rtol, atol=atol, err_msg=f"{what}: {key}")


# --------------------------------------------------------------- two workers
@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """One run: two workers and the single-process reference, same global batches."""
    tmp = tmp_path_factory.mktemp("two_workers")
    heads = ",".join(EQUIVALENT_HEADS + ("proxydr_local",))
    (tmp / "scratch").mkdir()
    args = ["--heads", heads, "--steps", "4", "--global-batch", "8", "--export", "proxydr"]
    with Cluster(tmp, "equivalence", args, env={"TMPDIR": str(tmp / "scratch")}) as cluster:
        cluster.start("worker0", 0)
        cluster.start("worker1", 1)
        cluster.start("reference", None, tmp / "reference", args[:-2])  # one process, no export
        cluster.wait()
    return tmp


@pytest.mark.parametrize("head", EQUIVALENT_HEADS)
def test_two_workers_equal_one_process(two_workers, head):
    worker0 = _load(two_workers / "out" / f"{head}_0.npz")
    worker1 = _load(two_workers / "out" / f"{head}_1.npz")
    reference = _load(two_workers / "reference" / f"{head}_0.npz")
    for key in worker0:  # every worker holds the same values (the all-reduce is identical everywhere)
        np.testing.assert_array_equal(worker0[key], worker1[key], err_msg=f"{head}: workers differ on {key}")
    _assert_same(worker0, reference, f"{head}: 2 workers vs 1 process")
    if head != "dense":  # the EMA proxies and the dynamic scale did move
        assert {"head/proxies", "head/log_scale", "head/visited", "head/scale_adam_state"} <= set(reference)
        assert reference["head/scale_adam_state"][2] == 4  # four steps
        assert np.all(reference["head/visited"] == 1)


def test_only_the_chief_exports(two_workers):
    """Both workers run the export; one version lands in the chief's folder, the other's copy is removed."""
    assert sorted(os.listdir(two_workers / "out" / "export")) == ["1"]
    assert (two_workers / "out" / "export" / "1" / "saved_model.pb").exists()
    assert not os.listdir(two_workers / "scratch")  # worker 1's throw-away export is gone
    assert not (two_workers / "reference" / "export").exists()


def test_workers_disagree_without_the_heads_reductions(two_workers):
    """The control: per-worker statistics (no all-reduce) give different proxies and scale."""
    worker0 = _load(two_workers / "out" / "proxydr_local_0.npz")
    worker1 = _load(two_workers / "out" / "proxydr_local_1.npz")
    assert np.abs(worker0["head/proxies"] - worker1["head/proxies"]).max() > 1e-2
    assert abs(float(worker0["head/log_scale"]) - float(worker1["head/log_scale"])) > 1e-3


# ---------------------------------------------------------------------- fault
def test_killed_worker_resumes_without_losing_an_epoch(tmp_path):
    args = ["--heads", "proxydr", "--epochs", "3", "--steps", "3", "--global-batch", "8", "--heartbeat", "2"]
    with Cluster(tmp_path, "fault", args + ["--kill-at", "1,1"]) as cluster:
        cluster.start("worker0", 0)
        cluster.start("worker1", 1)
        cluster.start("reference", None, tmp_path / "reference")
        cluster.wait(restart=2)
    assert cluster.exits["worker1"][0] == -9, cluster.exits  # killed mid-epoch 1 ...
    assert cluster.exits["reference"] == [0]
    out = tmp_path / "out"
    lines = (out / "history.csv").read_text().split()
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "1", "2"], lines  # ... and no epoch lost or repeated
    metadata = json.loads((out / "backup" / "training_metadata.json").read_text())
    assert metadata["epoch"] == 3 and (out / "backup" / metadata["weights"]).exists()
    assert sorted(p.name for p in out.iterdir()) == ["after_barrier_0.json", "after_barrier_1.json", "backup",
                                                     "final_0.npz", "final_1.npz", "history.csv", "killed"]
    for index in (0, 1):  # after `barrier`, worker 1 too sees the chief's last backup
        assert json.loads((out / f"after_barrier_{index}.json").read_text()) == {"replicas": 2, "backup_epochs": 3}
    assert json.loads((tmp_path / "reference" / "after_barrier_0.json").read_text())["replicas"] == 1
    final0, final1 = _load(out / "final_0.npz"), _load(out / "final_1.npz")
    for key in final0:
        np.testing.assert_array_equal(final0[key], final1[key], err_msg=key)
    reference = _load(tmp_path / "reference" / "final_0.npz")
    assert final0["head/scale_adam_state"][2] == reference["head/scale_adam_state"][2] == 9  # 3 x 3 steps, no more
    np.testing.assert_allclose(final0["head/log_scale"], reference["head/log_scale"], atol=1e-4)
    # Nine steps of the dynamic scale amplify float32 summation-order differences to ~2e-4
    # (the same without a kill); one lost epoch would move the weights by ~1e-1.
    _assert_same(final0, reference, "resumed 2 workers vs uninterrupted 1 process", atol=2e-3)


# ------------------------------------------------------------------------ JAX
def test_jax_data_parallel_equals_one_device(tmp_path):
    pytest.importorskip("jax")
    heads = "dense,normface_learned,proxydr_learned,normface,proxydr"
    env = {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    with Cluster(tmp_path, "jax", ["--heads", heads, "--steps", "4", "--global-batch", "8"], workers=0,
                 env=env) as cluster:
        cluster.start("jax", None, tmp_path / "out")
        cluster.wait()
    info = json.loads((tmp_path / "out" / "jax.json").read_text())
    assert info["devices"] == 2 and info["data_axes"] == ["batch", None]  # the batch is split over 2 devices
    for head in heads.split(","):
        if head in info["refused"]:
            assert head in ("normface", "proxydr"), info["refused"]
            continue
        single = _load(tmp_path / "out" / f"{head}_single.npz")
        _assert_same(_load(tmp_path / "out" / f"{head}_parallel.npz"), single, f"JAX {head}: 2 devices vs 1")
    if info["refused"]:
        pytest.skip(f"EMA / dynamic heads do not train on JAX in this checkout: {sorted(info['refused'])}")


# --------------------------------------------------------- in-process helpers
WORKERS_2 = {"cluster": {"worker": ["h0:1", "h1:1"]}, "task": {"type": "worker", "index": 1}}
CHIEF_1 = {"cluster": {"chief": ["c:1"], "worker": ["h0:1", "h1:1"]}, "task": {"type": "worker", "index": 0}}


def _env(config):
    return {"TF_CONFIG": json.dumps(config)}


def test_cluster_roles():
    assert distributed.cluster_config({}) is None
    assert (distributed.num_workers({}), distributed.task_index({}), distributed.is_chief({})) == (1, 0, True)
    assert (distributed.num_workers(_env(WORKERS_2)), distributed.task_index(_env(WORKERS_2))) == (2, 1)
    assert not distributed.is_chief(_env(WORKERS_2))
    first = dict(WORKERS_2, task={"type": "worker", "index": 0})
    assert distributed.is_chief(_env(first))
    assert (distributed.num_workers(_env(CHIEF_1)), distributed.task_index(_env(CHIEF_1))) == (3, 1)
    assert not distributed.is_chief(_env(CHIEF_1))  # worker 0 is not the chief when a chief is named
    assert distributed.is_chief(_env(dict(CHIEF_1, task={"type": "chief", "index": 0})))


@pytest.mark.parametrize("raw, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"task": {"type": "worker"}}), "'cluster'"),
    (json.dumps({"cluster": {"worker": ["a:1"]}}), "'task'"),
    (json.dumps(dict(WORKERS_2, task={"type": "worker", "index": 2})), "index 2 is out of range"),
    (json.dumps(dict(WORKERS_2, task={"type": "chief", "index": 0})), "task type 'chief'"),
    (json.dumps({"cluster": {"worker": ["nohostport"]}, "task": {"type": "worker", "index": 0}}), "host:port"),
    (json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker", "index": 0}}), "ps"),
])
def test_bad_tf_config_is_named(raw, message):
    with pytest.raises(ValueError, match="TF_CONFIG") as error:
        distributed.cluster_config({"TF_CONFIG": raw})
    assert message in str(error.value)


def test_chief_only_paths(tmp_path):
    target = tmp_path / "export"
    assert distributed.chief_only_path(target, {}) == str(target)
    other = distributed.chief_only_path(target, _env(WORKERS_2))
    assert other != str(target) and os.path.basename(other) == "export"
    assert os.path.isdir(os.path.dirname(other)) and "worker1" in other
    distributed.cleanup_worker_paths()
    assert not os.path.exists(os.path.dirname(other))
    with distributed.chief_only(target / "summary.json", _env(WORKERS_2)) as path:
        Path(path).write_text("{}")
    assert not os.path.exists(path) and not target.exists()  # nothing landed in the chief's folder


def test_shard_dataset_sets_data_policy_and_checks_the_batch():
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices((np.zeros((10, 2), "float32"), np.zeros(10, "int32")))
    sharded = distributed.shard_dataset(data, global_batch_size=4)
    assert sharded.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA
    assert [int(x.shape[0]) for x, _ in sharded] == [4, 4]  # the partial batch is dropped
    with pytest.raises(ValueError, match="global_batch_size=0"):
        distributed.shard_dataset(data, global_batch_size=0)


def test_strategy_without_cluster_is_the_default():
    import tensorflow as tf

    strategy = distributed.strategy_from_environment(environ={})
    assert strategy is tf.distribute.get_strategy() and strategy.num_replicas_in_sync == 1
    with pytest.raises(ValueError, match="communication"):
        distributed.strategy_from_environment(communication="carrier-pigeon", environ={})


def test_reduction_bytes_counts_the_heads_payload():
    import keras

    from keras_hier import build_classifier

    backbone = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8)])
    model = build_classifier(backbone, "proxydr", num_classes=5, embedding_dim=4, proxy_mode="ema", dynamic_scale=True)
    sizes = distributed.reduction_bytes(model, global_batch_size=32)
    assert sizes["gradients"] == 4 * ((6 * 8 + 8) + (8 * 4 + 4))  # proxies are not trained by gradient
    assert sizes["ema"] == 4 * 32 * (4 + 2) and sizes["dynamic_scale"] == 4 * (3 + 32)
    assert sizes["heads"] == sizes["ema"] + sizes["dynamic_scale"]
    dense = build_classifier(backbone, "softmax", num_classes=5, embedding_dim=4)
    assert distributed.reduction_bytes(dense, 32)["heads"] == 0


def test_keras_fix_is_idempotent_and_leaves_one_process_fit_alone():
    import keras
    from keras.src.backend.tensorflow import trainer

    distributed.fix_keras_multi_worker()
    patched = trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica
    distributed.fix_keras_multi_worker()
    assert (trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica) == patched
    assert patched[0].keras_hier_patched
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    history = model.fit(np.ones((8, 3), "float32"), np.zeros((8, 2), "float32"), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_backup_and_restore_resumes_in_one_process(tmp_path):
    import keras

    x, y = np.random.default_rng(0).normal(size=(16, 3)).astype("float32"), np.zeros(16, "int32")

    def model():
        m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        m.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return m

    class Stop(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        model().fit(x, y, epochs=4, verbose=0, callbacks=[distributed.backup_and_restore(tmp_path, environ={}), Stop()])
    metadata = json.loads((tmp_path / "training_metadata.json").read_text())
    assert metadata == {"epoch": 2, "batch": 0, "weights": "epoch-2.weights.h5"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-2.weights.h5", "training_metadata.json"]
    history = model().fit(x, y, epochs=4, verbose=0, callbacks=[distributed.backup_and_restore(tmp_path, environ={})])
    assert history.epoch == [2, 3]
