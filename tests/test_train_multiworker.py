"""keras-hier-train under TF_CONFIG: two local workers, MultiWorkerMirroredStrategy, chief-only writes."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ports import free_ports

pytest.importorskip("keras_hier.distributed")

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]




def _config(root):
    rng = np.random.default_rng(0)
    data = root / "data"
    data.mkdir()
    for split, n in (("train", 96), ("test", 40)):
        labels = np.arange(n) % 10
        images = np.clip(labels[:, None, None, None] * 25 + rng.integers(-20, 20, (n, 8, 8, 3)), 0, 255)
        np.savez(data / f"tiny_{split}.npz", images=images.astype(np.uint8), labels=labels,
                 label_names=np.array(CIFAR10))
    cfg = {"dataset": str(data), "epochs": 2, "batch_size": 16, "validation_split": 0.25,
           "backbone_kwargs": {"filters": [4, 4, 8, 8]}, "embedding_dim": 8, "head": "proxydr",
           "proxy_mode": "ema", "evaluate": False, "export": False, "precise_bn_batches": 2, "verbose": 2}
    path = root / "tiny.json"
    path.write_text(json.dumps(cfg))
    return path


def test_two_workers_train_one_run_written_by_the_chief(tmp_path):
    config, out, scratch = _config(tmp_path), tmp_path / "run", tmp_path / "scratch"
    scratch.mkdir()
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    procs = []
    for index in range(2):
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                   TMPDIR=str(scratch),
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        log = open(tmp_path / f"worker{index}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "-m", "keras_hier.recipes.train", "--config", str(config),
                                        "--out", str(out)], env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        codes = [proc.wait(timeout=300) for proc, _ in procs]
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
            log.close()
    logs = "\n".join((tmp_path / f"worker{i}.log").read_text()[-2500:] for i in range(2))
    assert codes == [0, 0], logs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["replicas"] == 2 and len(summary["history"]["loss"]) == 2
    assert np.isfinite(summary["history"]["loss"]).all()
    with open(out / "history.csv") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [0, 1]  # one writer: the chief
    meta = json.loads((out / "backup" / "training_metadata.json").read_text())
    assert meta["epoch"] == 2
    assert sorted(p.name for p in (out / "backup").iterdir()) == [
        "epoch-0001.weights.h5", "epoch-0002.weights.h5", "training_metadata.json"]
    assert not [p for p in scratch.iterdir() if p.name.startswith("keras_hier_worker")]  # workers' copies removed
