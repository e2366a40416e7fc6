"""The random-CNN recipe runs end to end on a tiny synthetic dataset."""

import json

import numpy as np

from keras_hier.recipes import random_cnn


def test_balanced_sample():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    idx = random_cnn.balanced_sample(labels, 5, seed=1)
    assert np.bincount(labels[idx]).tolist() == [5, 3, 5]
    assert len(set(idx.tolist())) == len(idx)
    np.testing.assert_array_equal(idx, random_cnn.balanced_sample(labels, 5, seed=1))


def test_recipe_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 6).astype(np.int16)
    # images whose colour depends on the top-level group (vehicles vs animals)
    vehicle = np.isin(labels, [0, 1, 8, 9])
    images = rng.integers(0, 120, size=(60, 12, 12, 3)).astype(np.uint8)
    images[vehicle, ..., 2] += 120
    names = np.array(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"])
    np.savez(tmp_path / "tiny_train.npz", images=images, labels=labels, label_names=names)
    out = tmp_path / "res" / "random_cnn.json"
    rows = random_cnn.run(["--data", str(tmp_path), "--hierarchy", "cifar10", "--per-class", "4",
                            "--seeds", "0", "1", "--n-permutations", "30", "--out", str(out)])
    assert [r["representation"] for r in rows] == ["random small_cnn", "random small_cnn", "pixels"]
    payload = json.loads(out.read_text())
    assert len(payload["runs"]) == 3
    for r in rows:
        for m in random_cnn.MEASURES:
            assert -1 <= r[m] <= 1 and 0 < r[m + "_p"] <= 1
    # the blue channel separates the top-level groups: pixels beat the permutation null
    pixels = rows[-1]
    assert pixels["spearman_pairwise"] > pixels["spearman_pairwise_null_mean"]
    assert "| pixels |" in payload["markdown"]
