import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


import numpy as np
import pytest


@pytest.fixture(params=["matmul", "flat", "cascade"])
def schedule(request, monkeypatch):
    """Every summation schedule of `keras_hier.ops.TreePlan`."""
    from keras_hier import ops as kh_ops

    monkeypatch.setattr(kh_ops.TreePlan, "MATMUL_SIZE", 10**9 if request.param == "matmul" else -1)
    monkeypatch.setattr(kh_ops.TreePlan, "FLAT_PAIRS", 10**9 if request.param == "flat" else -1)
    return request.param


def random_tree(seed, num_classes=12, max_depth=5, branching=2):
    """A ragged random tree: class c gets a random-length path of random node names."""
    from keras_hier import Hierarchy

    rng = np.random.default_rng(seed)
    paths = []
    for c in range(num_classes):
        depth = int(rng.integers(1, max_depth + 1))
        inner = [f"n{rng.integers(0, branching)}" for _ in range(depth - 1)]
        paths.append("/".join(inner + [f"class{c}"]))
    return Hierarchy.from_paths(paths)
