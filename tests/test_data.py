"""Tests for keras_hier.data on fixtures written by the tests themselves."""

import gzip
import time

import numpy as np
import pytest

from keras_hier import data
from keras_hier.hierarchy import Hierarchy

RNG = np.random.default_rng(0)


def _images(n, h=6, w=5, c=3):
    return RNG.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def _write_idx(path, array, compress):
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(payload)


def _identity_images(n):
    """Images whose pixels encode their index (to trace them through pipelines)."""
    x = np.zeros((n, 4, 4, 1), np.uint8)
    x[:, 0, 0, 0] = np.arange(n) % 256
    x[:, 0, 1, 0] = np.arange(n) // 256
    return x


def _ids(batches):
    x = np.concatenate([np.asarray(b[0]) for b in batches])
    if x.dtype != np.uint8:
        x = np.round(x * 255).astype(np.int64)
    return x[:, 0, 0, 0].astype(np.int64) + 256 * x[:, 0, 1, 0].astype(np.int64)


# ------------------------------------------------------------------- npz
def test_npz_parts_and_split_selection(tmp_path):
    names = np.array(["cat", "dog", "eel"])
    parts = []
    for k in range(3):
        x, y = _images(7), RNG.integers(0, 3, 7).astype(np.int16)
        np.savez_compressed(tmp_path / f"set_train_part{k}.npz", images=x, labels=y,
                            label_names=names)
        parts.append((x, y))
    xt, yt = _images(4), np.array([2, 1, 0, 2], np.int16)
    np.savez_compressed(tmp_path / "set_test.npz", images=xt, labels=yt, label_names=names)

    x, y, n = data.load_arrays(tmp_path, "train")
    np.testing.assert_array_equal(x, np.concatenate([p[0] for p in parts]))
    np.testing.assert_array_equal(y, np.concatenate([p[1] for p in parts]))
    assert y.dtype == np.int64 and x.dtype == np.uint8 and n == ["cat", "dog", "eel"]
    x, y, _ = data.load_arrays(tmp_path, "test")
    np.testing.assert_array_equal(x, xt)
    np.testing.assert_array_equal(y, yt)
    x, y, _ = data.load_arrays(str(tmp_path / "set_train_part*.npz"))
    assert len(y) == 21
    x, _, _ = data.load_arrays(tmp_path / "set_test.npz")
    assert x.shape == (4, 6, 5, 3)


def test_npz_is_never_unpickled(tmp_path):
    np.savez(tmp_path / "evil.npz", images=_images(2), labels=np.array([0, 1]),
             label_names=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        data.load_arrays(tmp_path / "evil.npz")


def test_npz_missing_key_and_bad_paths(tmp_path):
    np.savez(tmp_path / "x.npz", pictures=_images(2), labels=np.array([0, 1]))
    with pytest.raises(ValueError, match="images"):
        data.load_arrays(tmp_path / "x.npz")
    with pytest.raises(ValueError, match="does not exist"):
        data.load_arrays(tmp_path / "nope")
    with pytest.raises(ValueError, match="split"):
        data.load_arrays(tmp_path, "validation")


# ------------------------------------------------------------------- IDX
@pytest.mark.parametrize("compress", [True, False])
def test_idx_files(tmp_path, compress):
    root = tmp_path / "fashion-mnist"
    root.mkdir()
    ext = ".gz" if compress else ""
    x, y = _images(9, 7, 7, 1)[..., 0], RNG.integers(0, 10, 9)
    xt, yt = _images(3, 7, 7, 1)[..., 0], np.array([9, 0, 5])
    y[:10] = np.arange(9)
    y[-1] = 9
    _write_idx(root / f"train-images-idx3-ubyte{ext}", x, compress)
    _write_idx(root / f"train-labels-idx1-ubyte{ext}", y, compress)
    _write_idx(root / f"t10k-images-idx3-ubyte{ext}", xt, compress)
    _write_idx(root / f"t10k-labels-idx1-ubyte{ext}", yt, compress)
    gx, gy, names = data.load_arrays(root, "train")
    np.testing.assert_array_equal(gx, x[..., None])
    np.testing.assert_array_equal(gy, y)
    assert names[0] == "T-shirt/top" and names[9] == "Ankle boot"  # "fashion" in the path
    gx, gy, _ = data.load_arrays(root, "test")
    np.testing.assert_array_equal(gx[..., 0], xt)
    np.testing.assert_array_equal(gy, yt)
    # the built-in Fashion-MNIST hierarchy is recognised and labels follow its order
    loaded = data.load_dataset(root, "test", batch_size=2, image_dtype="uint8")
    assert loaded.hierarchy.num_classes == 10 and loaded.input_shape == (7, 7, 1)
    order = [loaded.hierarchy.classes.index(c) for c in
             ["Ankle_boot", "T-shirt_top", "Sandal"]]
    got = np.concatenate([b[1].numpy() for b in loaded.dataset])
    np.testing.assert_array_equal(got, order)


def test_idx_bad_magic(tmp_path):
    (tmp_path / "f").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(tmp_path / "f")


# ------------------------------------------------------------------- image folder
def _write_folder(root, layout, per_class=3):
    import tensorflow as tf

    for k, rel in enumerate(layout):
        folder = root.joinpath(*rel.split("/"))
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.full((5, 4, 3), 10 * k + i, np.uint8)
            tf.io.write_file(str(folder / f"{i}.png"), tf.io.encode_png(img))


def test_image_folder(tmp_path):
    layout = ["animal/cat", "animal/dog", "plant/tree/oak", "plant/rose"]
    _write_folder(tmp_path / "train", layout, 3)
    _write_folder(tmp_path / "test", layout, 1)
    (tmp_path / "train" / "animal" / "cat" / "notes.txt").write_text("not an image")
    x, y, names = data.load_arrays(tmp_path, "train")
    assert x.shape == (12, 5, 4, 3) and len(names) == 4
    # every image's pixel value says which folder (layout index) it came from
    for img, label in zip(x, y):
        k = int(img[0, 0, 0]) // 10
        assert names[label] == layout[k].split("/")[-1]
    loaded = data.load_dataset(tmp_path, "test", batch_size=8)
    h = loaded.hierarchy
    assert set(h.classes) == {"cat", "dog", "oak", "rose"} and h.depth == 3
    xb, yb = next(iter(loaded.dataset))
    assert xb.dtype.name == "float32" and xb.shape == (4, 5, 4, 3)
    for img, label in zip(xb.numpy(), yb.numpy()):
        k = int(round(img[0, 0, 0] * 255)) // 10
        assert h.classes[label] == layout[k].split("/")[-1]


def test_image_folder_resizes_to_image_size(tmp_path):
    import tensorflow as tf

    for name, size in [("a", (6, 6)), ("b", (9, 7))]:
        (tmp_path / name).mkdir()
        tf.io.write_file(str(tmp_path / name / "0.png"),
                         tf.io.encode_png(np.zeros(size + (1,), np.uint8)))
    x, _, _ = data.load_arrays(tmp_path, image_size=(4, 4))
    assert x.shape == (2, 4, 4, 1)


# ------------------------------------------------------------------- hierarchy alignment
def test_align_labels_reorders_and_names_the_missing():
    h = Hierarchy.from_paths({"dog": "animal/dog", "cat": "animal/cat", "oak": "plant/oak"})
    labels = np.array([0, 1, 2, 2, 0])
    got = data.align_labels(labels, ["Cat", "oak", "DOG"], h)
    expected = np.array([h.classes.index(n) for n in ["cat", "oak", "dog"]])[labels]
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(data.align_labels(labels, ["0", "1", "2"], h), labels)
    with pytest.raises(ValueError, match="'fir'"):
        data.align_labels(labels, ["cat", "fir", "dog"], h)


def test_unknown_classes_need_a_hierarchy(tmp_path):
    np.savez(tmp_path / "a.npz", images=_images(4), labels=np.array([0, 1, 0, 1]),
             label_names=np.array(["foo", "bar"]))
    with pytest.raises(ValueError, match="hierarchy"):
        data.load_dataset(tmp_path / "a.npz")
    h = Hierarchy.from_paths({"bar": "x/bar", "foo": "x/foo"})
    loaded = data.load_dataset(tmp_path / "a.npz", hierarchy=h, shuffle=False)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in loaded.dataset]), [1, 0, 1, 0])


# ------------------------------------------------------------------- splits and order
def _split_fixture(tmp_path, n=200):
    np.savez(tmp_path / "d.npz", images=_identity_images(n), labels=np.arange(n) % 3)
    return tmp_path / "d.npz", Hierarchy.from_paths({"0": "a/0", "1": "a/1", "2": "b/2"})


def test_seeded_split_is_disjoint_and_deterministic(tmp_path):
    path, h = _split_fixture(tmp_path)
    kw = dict(hierarchy=h, batch_size=16, validation_split=0.25, image_dtype="uint8")
    a = data.load_dataset(path, seed=1, **kw)
    b = data.load_dataset(path, seed=1, **kw)
    c = data.load_dataset(path, seed=2, **kw)
    assert a.num_examples == 150 and a.num_validation == 50
    train_a, val_a = _ids(a.dataset), _ids(a.validation)
    assert sorted(np.concatenate([train_a, val_a])) == list(range(200))
    np.testing.assert_array_equal(val_a, _ids(b.validation))
    assert set(val_a) != set(_ids(c.validation))
    np.testing.assert_array_equal(val_a, np.sort(val_a))  # validation is not shuffled
    # labels travel with their images (one pass: every pass reshuffles)
    batches = list(a.dataset)
    np.testing.assert_array_equal(np.concatenate([bb[1] for bb in batches]), _ids(batches) % 3)


def test_shuffle_order_is_a_function_of_the_seed(tmp_path):
    path, h = _split_fixture(tmp_path)
    kw = dict(hierarchy=h, batch_size=32, image_dtype="uint8")
    a = data.load_dataset(path, seed=5, **kw).dataset
    b = data.load_dataset(path, seed=5, **kw).dataset
    epochs_a = [_ids(a) for _ in range(2)]
    epochs_b = [_ids(b) for _ in range(2)]
    np.testing.assert_array_equal(epochs_a[0], epochs_b[0])
    np.testing.assert_array_equal(epochs_a[1], epochs_b[1])
    assert not np.array_equal(epochs_a[0], epochs_a[1])  # reshuffled every epoch
    assert sorted(epochs_a[0]) == list(range(200))
    test = data.load_dataset(path, "train", shuffle=False, **kw).dataset
    np.testing.assert_array_equal(_ids(test), np.arange(200))


def test_max_examples_and_batching(tmp_path):
    path, h = _split_fixture(tmp_path)
    loaded = data.load_dataset(path, hierarchy=h, batch_size=7, max_examples=30,
                               drop_remainder=True, image_dtype="uint8")
    sizes = [len(b[1]) for b in loaded.dataset]
    assert loaded.num_examples == 30 and sizes == [7, 7, 7, 7]
    with pytest.raises(ValueError, match="batch_size"):
        data.load_dataset(path, hierarchy=h, batch_size=0)
    with pytest.raises(ValueError, match="validation_split"):
        data.load_dataset(path, hierarchy=h, validation_split=1.5)


# ------------------------------------------------------------------- augmentation
def test_augmentation_is_seeded_and_stays_in_range():
    x = _images(16, 12, 12, 3)
    y = np.arange(16) % 2

    def run(seed):
        ds = data.make_pipeline(x, y, batch_size=8, shuffle=True, seed=seed, augment=True)
        return np.concatenate([b[0].numpy() for b in ds])

    a, b, c = run(3), run(3), run(4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.dtype == np.float32 and a.min() >= 0.0 and a.max() <= 1.0
    plain = np.concatenate([b[0].numpy() for b in data.make_pipeline(x, y, 16)])
    np.testing.assert_allclose(plain, x / 255.0, atol=1e-7)
    layers = [type(layer).__name__ for layer in data.augmentation(0).layers]
    assert layers == ["RandomRotation", "RandomTranslation", "RandomZoom", "RandomShear",
                      "RandomFlip"]


# ------------------------------------------------------------------- tfds offline
def test_tfds_offline_fails_fast_with_local_alternatives(tmp_path, monkeypatch):
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    import tensorflow_datasets as tfds

    builder = tfds.builder("cifar100", data_dir=str(tmp_path))
    assert not builder.is_prepared()
    hosts = [("www.cs.toronto.edu", 443), ("storage.googleapis.com", 443)]
    if data._reachable(hosts, 3.0):  # a networked machine: only the probe is checked
        return
    start = time.monotonic()
    with pytest.raises(ConnectionError) as err:
        data.load_dataset("cifar100", data_dir=str(tmp_path))
    assert time.monotonic() - start < 10.0
    message = str(err.value)
    for hint in ("data_dir", "manual_dir", "cifar-100-binary.tar.gz", ".npz", "IDX",
                 "image folder"):
        assert hint in message


def test_reachable_is_bounded_in_time():
    start = time.monotonic()
    assert not data._reachable([("host.invalid", 443)], timeout=1.0)
    assert time.monotonic() - start < 10.0


def test_unknown_tfds_name():
    with pytest.raises(ValueError, match="no_such_dataset_xyz"):
        data.load_dataset("no_such_dataset_xyz")


def test_prepared_tfds_dataset_is_read_offline(tmp_path):
    """A tfds builder prepared in data_dir is read without any network access."""
    import tensorflow_datasets as tfds

    names = ["oak", "rose", "cat"]

    class TinyHierImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, supervised_keys=("image", "label"),
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(4, 4, 3)),
                    "label": tfds.features.ClassLabel(names=names)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(12), "test": self._generate_examples(6)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": np.full((4, 4, 3), i, np.uint8), "label": i % 3}

    TinyHierImages(data_dir=str(tmp_path)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    h = Hierarchy.from_paths({"cat": "animal/cat", "oak": "plant/oak", "rose": "plant/rose"})
    loaded = data.load_dataset("tiny_hier_images", "test", hierarchy=h, data_dir=str(tmp_path),
                               shuffle=False, image_dtype="uint8")
    x = np.concatenate([b[0] for b in loaded.dataset])
    y = np.concatenate([b[1] for b in loaded.dataset])
    assert loaded.num_examples == 6 and loaded.input_shape == (4, 4, 3)
    # the label of image i is names[i % 3], re-indexed to the hierarchy's order
    np.testing.assert_array_equal(y, [h.classes.index(names[int(v) % 3]) for v in x[:, 0, 0, 0]])
    with pytest.raises(ValueError, match="hierarchy"):
        data.load_dataset("tiny_hier_images", "test", data_dir=str(tmp_path))
