"""mds_proxies: spherical MDS of the tree distances (keras_hier.similarity)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from keras_hier import Hierarchy
from keras_hier.similarity import mds_proxies, mds_target_distances

TREE = Hierarchy.from_paths([f"{top}/{mid}/{top}{mid}{leaf}" for top in "ab" for mid in "cde" for leaf in "xyz"])


def np_stress(proxies, hierarchy, beta=1.0):
    t = hierarchy.distance_matrix("path").astype(np.float64)
    target = np.sqrt(2) * t / (beta + t)
    unit = proxies / np.linalg.norm(proxies, axis=1, keepdims=True)
    diff = unit[:, None, :] - unit[None, :, :]
    return np.linalg.norm(target - np.linalg.norm(diff, axis=-1)) / np.linalg.norm(target)


def test_target_distances_follow_the_formula():
    t = TREE.distance_matrix("path")
    np.testing.assert_allclose(mds_target_distances(TREE, beta=2.0), np.sqrt(2) * t / (2.0 + t))
    assert mds_target_distances(TREE).max() < np.sqrt(2)


def test_mds_proxies_are_unit_rows_with_a_small_reported_stress():
    proxies, stress = mds_proxies(TREE, dim=32, steps=1000, seed=1)
    assert proxies.shape == (TREE.num_classes, 32) and proxies.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(proxies, axis=1), 1.0, rtol=1e-5)
    assert stress == pytest.approx(np_stress(proxies, TREE), rel=1e-4, abs=1e-6)
    assert stress < 1e-3
    _, early = mds_proxies(TREE, dim=32, steps=20, seed=1)
    assert early > 3 * stress
    # chordal distances follow the tree: same-parent pairs are closer than cross-top-level pairs
    d = np.linalg.norm(proxies[:, None] - proxies[None], axis=-1)
    t = TREE.distance_matrix("path")
    assert d[t == 2].max() < d[t == 6].min()


def test_mds_proxies_are_deterministic_per_seed():
    a, sa = mds_proxies(TREE, dim=8, steps=30, seed=3)
    b, sb = mds_proxies(TREE, dim=8, steps=30, seed=3)
    c, _ = mds_proxies(TREE, dim=8, steps=30, seed=4)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert sa == pytest.approx(sb, rel=1e-6)
    assert not np.allclose(a, c)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dim"):
        mds_proxies(TREE, dim=0)
    with pytest.raises(ValueError, match="beta"):
        mds_proxies(TREE, dim=4, beta=0.0)


def test_similarity_module_imports_without_tensorflow():
    code = ("import sys, keras_hier.similarity as s; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'; "
            "print(s.tree_factors.__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-2000:]
