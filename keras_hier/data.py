"""Datasets for hierarchy-aware training: arrays, IDX files, image folders, tfds.

`load_arrays` reads raw data into memory (uint8 images, int64 labels, class
names) from local sources; `load_dataset` adds the hierarchy, a seeded
train/validation split, the paper's augmentation and a batched, prefetched
`tf.data.Dataset`.

Sources (`name_or_path`):
- a `.npz` file, a directory or glob of `.npz` parts with keys `images`,
  `labels` and optionally `label_names` (`split` picks `*train*` vs `*test*`
  files in a directory). Loaded without pickle.
- a directory of MNIST-style IDX files (`train-images-idx3-ubyte[.gz]`,
  `t10k-labels-idx1-ubyte[.gz]`, ...), e.g. Debian's
  `/usr/share/datasets/fashion-mnist`.
- an image folder of nested class folders (`root/Animals/cat/001.jpg`); the
  hierarchy is `Hierarchy.from_directory(root)`. An optional `train/` and
  `test/` level below the root is honoured.
- a tensorflow-datasets name (`cifar100`, `cifar10`, `fashion_mnist`, or any
  image classification set with a user hierarchy), read from `data_dir` /
  `TFDS_DATA_DIR`. When the data is not prepared and the download host cannot
  be reached, it fails within seconds with a message listing local sources.
- `"wordnet_glosses"`: the WordNet gloss text benchmark
  (`keras_hier.glosses`): strings and WordNet-tree labels, built offline.
"""

import dataclasses
import glob
import gzip
import logging
import math
import os
import pathlib
import re
import socket
import threading
import urllib.parse
import zipfile
import zlib

import numpy as np

from keras_hier.labels import class_ids

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
# tfds names with a built-in hierarchy (keras_hier.hierarchies.<function>)
BUILTIN_HIERARCHIES = {"cifar100": "cifar100", "cifar10": "cifar10",
                       "fashion_mnist": "fashion_mnist"}
# local copies used when tfds cannot download (Debian's dataset-* packages)
LOCAL_FALLBACKS = {"fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
                   "mnist": ("/usr/share/datasets/mnist",)}
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_IDX_PREFIX = {"train": "train", "test": "t10k"}
GLOSSES = "wordnet_glosses"  # keras_hier.glosses.NAME: the text benchmark load_dataset knows
GLOSSES_OPTIONS = ("depth", "min_count", "max_per_class")


# --------------------------------------------------------------------------- raw arrays
def load_arrays(source, split="train", image_size=None):
    """Reads a local dataset into memory.

    Args:
        source: path of a `.npz` file, a directory or glob of `.npz` parts, a
            directory of IDX files, or an image folder (see module docstring).
        split: `"train"` or `"test"`.
        image_size: `(height, width)` to resize image-folder images to; by
            default the size of the first image (all must then agree).

    Returns:
        `(images, labels, class_names)`: uint8 `[N, H, W, C]`, int64 `[N]`,
        `list[str]` indexed by label.

    Example:

    ```python
    images, labels, names = load_arrays("cifar10_jpeg/", "test")
    ```
    """
    _check_split(split)
    src = str(source)
    if any(ch in src for ch in "*?[") and not os.path.exists(src):
        files = sorted(glob.glob(src))
        if not files:
            raise ValueError(f"load_arrays: the glob {src!r} matches no file")
        return _load_npz_files(files)
    path = pathlib.Path(src).expanduser()
    if not path.exists():
        raise ValueError(f"load_arrays: {src!r} does not exist")
    if path.is_file():
        if path.suffix == ".npz":
            return _load_npz_files([path])
        raise ValueError(f"load_arrays: unsupported file {src!r} (expected .npz)")
    if _idx_files(path, split) is not None:
        return _load_idx(path, split)
    npz = sorted(path.glob("*.npz"))
    if npz:
        wanted = [f for f in npz if split in f.name]
        if not wanted and len(npz) == 1:
            wanted = npz
        if not wanted:
            raise ValueError(f"load_arrays: no {split!r} .npz file in {src!r} "
                             f"(found {[f.name for f in npz]})")
        return _load_npz_files(wanted)
    root, hierarchy = _image_folder_root(path, split)
    return _load_image_folder(root, hierarchy, image_size)[:3]


def _check_split(split):
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


_UNNAMED = 2 ** 62  # no class names: labels need only be whole and non-negative


def _read_npz(f):
    """`(images, labels, names or None)` of one `.npz` part; errors name the file."""
    try:
        with np.load(f, allow_pickle=False) as z:
            for key in ("images", "labels"):
                if key not in z.files:
                    raise ValueError(f"{f}: missing key {key!r} (has {z.files})")
            images, raw_labels = np.asarray(z["images"]), np.asarray(z["labels"])
            names = [str(n) for n in z["label_names"]] if "label_names" in z.files else None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(f"{f}: not a readable .npz file ({error})") from None
    except ValueError as error:
        if str(error).startswith(str(f)):
            raise
        raise ValueError(f"{f}: not a readable .npz file ({error})") from None
    if images.ndim not in (3, 4) or images.shape[0] == 0:
        raise ValueError(f"{f}: 'images' must be [N, H, W] or [N, H, W, C] with N > 0, got shape {images.shape}")
    labels = class_ids(raw_labels, len(names) if names is not None else _UNNAMED,
                       source=f"{f} ('labels')", num_samples=len(images))
    return images, labels, names


def _load_npz_files(files):
    images, labels, names = [], [], None
    for f in files:
        part_images, part_labels, part_names = _read_npz(f)
        if part_names is not None:
            if names is not None and part_names != names:
                raise ValueError(f"{f}: label_names differ from the other parts")
            names = part_names
        if images and part_images.shape[1:3] != images[0].shape[1:3]:
            raise ValueError(f"{f}: images of shape {part_images.shape[1:]}, the first part has {images[0].shape[1:]}")
        images.append(part_images)
        labels.append(part_labels)
    images = np.concatenate(images)
    labels = np.concatenate(labels)
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8:
        raise ValueError(f"{files[0]}: images must be uint8, got {images.dtype}")
    if names is None:
        names = [str(i) for i in range(int(labels.max()) + 1)]
    else:
        labels = class_ids(labels, len(names), source=f"{files[0]} ('labels' against 'label_names')")
    return images, labels, names


def _idx_files(path, split):
    prefix = _IDX_PREFIX[split]
    found = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        for name in (f"{prefix}-{kind}", f"{prefix}-{kind}.gz"):
            if (path / name).is_file():
                found.append(path / name)
                break
        else:
            return None
    return found


def read_idx(path):
    """Reads one IDX file (MNIST format, optionally gzip'd) into a NumPy array.

    Raises:
        ValueError: naming the file, for a corrupt or truncated gzip stream,
            a bad magic number, element type or number of dimensions, or a
            body whose size does not match the header.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: cannot read the file; corrupt or truncated? ({error})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    if not 1 <= ndim <= 4 or len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: bad IDX header ({ndim} dimensions in {len(data)} bytes; expected 1 to 4)")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(dtypes[data[2]])
    body = len(data) - 4 - 4 * ndim
    if body != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"{path}: header says {shape} ({math.prod(shape) * dtype.itemsize} bytes) but the body "
                         f"holds {body} bytes; truncated or corrupt")
    array = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
    return array.reshape(shape).astype(array.dtype.newbyteorder("="))


def _load_idx(path, split):
    image_file, label_file = _idx_files(path, split)
    images, raw_labels = read_idx(image_file), read_idx(label_file)
    if images.dtype != np.uint8:
        raise ValueError(f"{image_file}: images must be unsigned bytes")
    if images.ndim not in (3, 4) or images.shape[0] == 0:
        raise ValueError(f"{image_file}: expected N > 0 images [N, H, W] or [N, H, W, C], got shape {images.shape}")
    if raw_labels.ndim != 1:
        raise ValueError(f"{label_file}: labels must be one-dimensional, got shape {raw_labels.shape}")
    labels = class_ids(raw_labels, _UNNAMED, source=str(label_file), num_samples=len(images))
    if images.ndim == 3:
        images = images[..., None]
    num = int(labels.max()) + 1
    if "fashion" in str(path).lower() and num == len(FASHION_MNIST_CLASSES):
        names = list(FASHION_MNIST_CLASSES)
    else:
        names = [str(i) for i in range(num)]
    return images, labels, names


def _image_folder_root(path, split):
    from keras_hier.hierarchy import Hierarchy

    sub = path / split
    root = sub if sub.is_dir() and (path / ("test" if split == "train" else "train")).is_dir() else path
    try:
        hierarchy = Hierarchy.from_directory(str(root))
    except (ValueError, OSError) as err:
        raise ValueError(f"{path}: not a .npz, IDX or image-folder dataset ({err})") from err
    return root, hierarchy


def _class_of_folder(hierarchy, root):
    """Maps a folder's path parts relative to `root` to a class id."""
    lookup = {}
    for cid, folder in enumerate(getattr(hierarchy, "class_folders", ()) or ()):
        lookup[tuple(pathlib.Path(os.path.relpath(folder, root)).parts)] = cid
    for cid, p in enumerate(hierarchy.paths):
        lookup.setdefault(tuple(p), cid)
        if len(p) >= 2 and p[-1] == p[-2]:  # a class that also has sub-classes
            lookup.setdefault(tuple(p[:-1]), cid)
    return lookup


def _load_image_folder(root, hierarchy, image_size=None):
    import tensorflow as tf

    lookup = _class_of_folder(hierarchy, root)
    files, labels = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        parts = tuple(pathlib.Path(dirpath).relative_to(root).parts)
        for name in sorted(filenames):
            if name.lower().endswith(_IMAGE_EXTENSIONS) and not name.startswith("."):
                if parts not in lookup:
                    raise ValueError(f"{dirpath}: folder is not a class of the hierarchy")
                files.append(os.path.join(dirpath, name))
                labels.append(lookup[parts])
    if not files:
        raise ValueError(f"{root}: no image files ({', '.join(_IMAGE_EXTENSIONS)})")
    images = []
    for f in files:
        try:
            img = tf.io.decode_image(tf.io.read_file(f), expand_animations=False).numpy()
        except tf.errors.OpError as error:
            raise ValueError(f"{f}: not a readable image ({error.message.splitlines()[0]})") from None
        if image_size is None:
            image_size = img.shape[:2]
        if img.shape[:2] != tuple(image_size):
            img = tf.cast(tf.round(tf.image.resize(img, image_size)), tf.uint8).numpy()
        if images and img.shape[-1] != images[0].shape[-1]:
            raise ValueError(f"{f}: {img.shape[-1]} channels, the first image has "
                             f"{images[0].shape[-1]}")
        images.append(img)
    return (np.stack(images), np.asarray(labels, np.int64), list(hierarchy.classes), hierarchy)


# --------------------------------------------------------------------------- tfds
def _reachable(hosts, timeout=3.0):
    """True when a TCP connection to any (host, port) opens within `timeout` s."""
    result = []

    def probe(host, port):
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    threads = [threading.Thread(target=probe, args=hp, daemon=True) for hp in hosts]
    for t in threads:
        t.start()
    for t in threads:  # bounded even when DNS hangs
        t.join(timeout)
    return bool(result)


def _offline_message(name, data_dir, manual_dir, builder):
    files = sorted({info.filename for info in (builder.url_infos or {}).values()
                    if info.filename})
    return (
        f"tfds dataset {name!r} is not prepared in {builder.data_dir} and its download "
        f"host is unreachable. Point keras_hier at local data instead:\n"
        f"  - data_dir=DIR (or TFDS_DATA_DIR) holding prepared tfds data "
        f"(DIR/{name}/<version>/, e.g. copied from a machine with network);\n"
        f"  - manual_dir=DIR holding the original archive(s) {files or '(see tfds docs)'};\n"
        f"  - a .npz file or directory of .npz parts (keys images, labels, label_names);\n"
        f"  - a directory of MNIST-style IDX files (e.g. /usr/share/datasets/fashion-mnist "
        f"from Debian's dataset-fashion-mnist);\n"
        f"  - an image folder of nested class folders.")


def _tfds_arrays(name, split, data_dir=None, manual_dir=None, image_size=None, timeout=3.0):
    """Loads a tfds image classification set into memory, failing fast offline."""
    import tensorflow_datasets as tfds

    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # DatasetNotFoundError and friends
        raise ValueError(f"{name!r} is neither a local path nor a tfds dataset ({err})") from None
    if not builder.is_prepared():
        urls = list(builder.url_infos or {})
        files = [builder.url_infos[u].filename for u in urls]
        manual = manual_dir and all(f and (pathlib.Path(manual_dir) / f).exists() for f in files)
        if manual:
            config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
            builder.download_and_prepare(download_config=config)
        else:
            hosts = {(urllib.parse.urlparse(u).hostname, urllib.parse.urlparse(u).port
                      or (443 if u.startswith("https") else 80)) for u in urls}
            hosts.add(("storage.googleapis.com", 443))  # tfds' prepared-data mirror
            if not _reachable(sorted(hosts), timeout):
                for local in LOCAL_FALLBACKS.get(name, ()):
                    if os.path.isdir(local) and _idx_files(pathlib.Path(local), split):
                        logging.getLogger("keras_hier").warning(
                            "tfds %r unavailable offline; using the IDX files in %s", name, local)
                        return _load_idx(pathlib.Path(local), split)
                raise ConnectionError(_offline_message(name, data_dir, manual_dir, builder))
            builder.download_and_prepare()
    keys = builder.info.supervised_keys or ("image", "label")
    label_feature = builder.info.features[keys[1]]
    names = list(getattr(label_feature, "names", None) or [])
    tf_split = "train" if split == "train" else "test"
    ds = builder.as_dataset(split=tf_split, as_supervised=True, shuffle_files=False)
    shape = getattr(builder.info.features[keys[0]], "shape", (None,))
    if image_size is not None:
        import tensorflow as tf

        def resize(x, y):
            x = tf.cast(tf.round(tf.image.resize(x, image_size)), tf.uint8)
            return x, y

        ds = ds.map(resize)
    elif any(d is None for d in shape):
        raise ValueError(f"tfds {name!r} has images of varying size {shape}; pass image_size=(H, W)")
    images, labels = [], []
    for x, y in tfds.as_numpy(ds.batch(4096)):
        images.append(x)
        labels.append(y)
    if not labels:
        raise ValueError(f"tfds {name!r} split {tf_split!r} holds no examples")
    images = np.concatenate(images)
    labels = class_ids(np.concatenate(labels), len(names) if names else _UNNAMED,
                       source=f"tfds {name!r} labels", num_samples=len(images))
    if not names:
        names = [str(i) for i in range(int(labels.max()) + 1)]
    return images, labels, names


# --------------------------------------------------------------------------- hierarchy matching
def _normalise(name):
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


def _generic_names(names):
    return all(str(n) == str(i) for i, n in enumerate(names))


def align_labels(labels, class_names, hierarchy, source="labels"):
    """Re-indexes dataset labels to the class order of `hierarchy`.

    A dataset name matches the hierarchy class of the same name; otherwise
    the class whose name is equal case- and punctuation-insensitively
    (`"T-shirt/top"` matches `"t_shirt_top"`). A name with several such
    matches, or two dataset names matching one class, is refused, listing the
    names. Datasets without real names (`"0"`, `"1"`, ...) are taken to be in
    the hierarchy's order.

    Args:
        labels: dataset label ids (checked with `keras_hier.labels.class_ids`:
            whole numbers in `[0, len(class_names))`; -1 is not a class).
        class_names: the dataset's class names, indexed by label.
        hierarchy: a `keras_hier.Hierarchy`.
        source: what the labels are, for messages (a file, a dataset name).

    Returns:
        int64 array of hierarchy class ids.

    Raises:
        ValueError: naming the dataset classes the hierarchy lacks, ambiguous
            matches, or the first bad label.
    """
    if isinstance(class_names, (str, bytes)):
        raise TypeError(f"class_names must be a list of names, not the single string {class_names!r}")
    class_names = [str(name) for name in class_names]
    if len(class_names) > hierarchy.num_classes:
        raise ValueError(f"the dataset has {len(class_names)} classes but the hierarchy "
                         f"only {hierarchy.num_classes}")
    labels = class_ids(labels, len(class_names), source=source)
    if _generic_names(class_names):
        return labels
    return _name_mapping(class_names, hierarchy)[labels]


def _name_mapping(class_names, hierarchy):
    """Hierarchy class id of every dataset class name (exact, else unique normalised match)."""
    exact = {name: index for index, name in enumerate(hierarchy.classes)}
    loose = {}
    for index, name in enumerate(hierarchy.classes):
        loose.setdefault(_normalise(name), []).append(index)
    mapping, missing, ambiguous = [], [], []
    for name in class_names:
        candidates = [exact[name]] if name in exact else loose.get(_normalise(name), [])
        if len(candidates) > 1:
            ambiguous.append(f"{name!r} matches {[hierarchy.classes[c] for c in candidates]}")
        elif not candidates:
            missing.append(name)
        mapping.append(candidates[0] if candidates else -1)
    if missing:
        raise ValueError(f"dataset classes not in the hierarchy: {missing[:10]}"
                         f"{' ...' if len(missing) > 10 else ''}")
    if ambiguous:
        raise ValueError("ambiguous class names (rename them or the hierarchy classes): " + "; ".join(ambiguous))
    owners = {}
    for name, target in zip(class_names, mapping):
        owners.setdefault(target, []).append(name)
    merged = [f"{names} all match {hierarchy.classes[target]!r}" for target, names in owners.items() if len(names) > 1]
    if merged:
        raise ValueError("several dataset classes match one hierarchy class: " + "; ".join(merged))
    return np.array(mapping, np.int64)


def _builtin_hierarchy(key, class_names):
    from keras_hier import hierarchies

    if key is None:  # recognise a built-in set from its class names
        wanted = {_normalise(n) for n in class_names}
        for candidate in ("cifar10", "fashion_mnist", "cifar100"):
            h = getattr(hierarchies, candidate)()
            if {_normalise(c) for c in h.classes} == wanted:
                return h
        return None
    return getattr(hierarchies, key)()


# --------------------------------------------------------------------------- tf.data
def augmentation(seed=None, rotation=15.0, translation=0.1, scale=0.1, shear=10.0, flip=True):
    """The paper's augmentation as Keras preprocessing layers.

    Random affine (rotation +-15 degrees, translation +-10 %, scale 0.9-1.1,
    x-shear +-10 degrees, zero fill as in torchvision's RandomAffine) then a
    random horizontal flip. Works on batches of float images inside `tf.data`.

    Args:
        seed: int seed for the random layers (None: unseeded).
        rotation: maximum rotation in degrees.
        translation: maximum shift as a fraction of height/width.
        scale: maximum relative zoom (0.1: scale in [0.9, 1.1]).
        shear: maximum shear angle in degrees.
        flip: add a horizontal flip.

    Returns:
        A `keras.Sequential` of preprocessing layers.
    """
    import keras

    seeds = [None] * 5 if seed is None else [int(seed) + i for i in range(5)]
    fill = {"fill_mode": "constant", "fill_value": 0.0}
    layers = [
        keras.layers.RandomRotation(rotation / 360.0, seed=seeds[0], **fill),
        keras.layers.RandomTranslation(translation, translation, seed=seeds[1], **fill),
        keras.layers.RandomZoom((-scale, scale), seed=seeds[2], **fill),
        keras.layers.RandomShear(x_factor=math.tan(math.radians(shear)), y_factor=0.0,
                                 seed=seeds[3], **fill),
    ]
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seeds[4]))
    return keras.Sequential(layers, name="augmentation")


def make_pipeline(images, labels, batch_size=128, shuffle=False, seed=0, augment=False,
                  image_dtype="float32", drop_remainder=False):
    """Batched, prefetched `tf.data.Dataset` of (image, label) from arrays.

    Args:
        images: uint8 `[N, H, W, C]`.
        labels: int `[N]`.
        batch_size: batch size.
        shuffle: reshuffle every epoch; the order is a function of `seed` only.
        seed: int seed for shuffling and augmentation.
        augment: apply `augmentation(seed)` (training only).
        image_dtype: `"float32"` (pixels scaled to [0, 1]) or `"uint8"` (raw).
        drop_remainder: drop the last incomplete batch.

    Returns:
        `tf.data.Dataset` yielding `(images [B, H, W, C], labels int32 [B])`.
    """
    import tensorflow as tf

    if image_dtype not in ("float32", "uint8"):
        raise ValueError(f"image_dtype must be 'float32' or 'uint8', got {image_dtype!r}")
    if augment and image_dtype != "float32":
        raise ValueError("augment=True needs image_dtype='float32'")
    ds = tf.data.Dataset.from_tensor_slices((images, np.asarray(labels, np.int32)))
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    def scale(x, y):
        return tf.cast(x, tf.float32) / 255.0, y

    if image_dtype == "float32":
        ds = ds.map(scale, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if augment:
        aug = augmentation(seed)

        def transform(x, y):
            return tf.clip_by_value(aug(x, training=True), 0.0, 1.0), y

        # sequential: the layers' seed state then advances in a fixed order,
        # so the augmented stream is a function of `seed`
        ds = ds.map(transform)
    return ds.prefetch(tf.data.AUTOTUNE)


@dataclasses.dataclass
class LoadedData:
    """What `load_dataset` returns.

    Attributes:
        dataset: batched `tf.data.Dataset` of the requested split (for
            `split="train"` with a validation split: the training part).
        validation: the held-out part of the training split (None when
            `validation_split=0` or `split="test"`); never shuffled/augmented.
        hierarchy: the `keras_hier.Hierarchy`; labels are its class ids.
        class_names: `list(hierarchy.classes)`.
        input_shape: `(H, W, C)` of the images (`()` for texts).
        num_examples: examples in `dataset`.
        num_validation: examples in `validation`.
    """

    dataset: object
    validation: object
    hierarchy: object
    class_names: list
    input_shape: tuple
    num_examples: int
    num_validation: int = 0

    @property
    def train(self):
        """Alias of `dataset`."""
        return self.dataset


def split_indices(n, validation_split, seed):
    """Seeded split of `range(n)` into (train, validation) index arrays."""
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * validation_split))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _is_path(name):
    """Local path (existing, a glob, a .npz, or written as a path) vs a tfds name
    (which may contain "/" for configs and versions: "cifar10/3.0.2")."""
    s = str(name)
    return (isinstance(name, os.PathLike) or os.path.exists(s) or any(c in s for c in "*?[")
            or s.endswith(".npz") or s.startswith(("/", "./", "../", "~")))


def _load_glosses(split, hierarchy, batch_size, validation_split, seed, augment, data_dir, shuffle,
                  image_dtype, image_size, manual_dir, max_examples, drop_remainder, options):
    """`load_dataset("wordnet_glosses", ...)`: `keras_hier.glosses.loaded_data`, arguments checked."""
    from keras_hier import glosses

    unknown = sorted(set(options) - set(GLOSSES_OPTIONS))
    if unknown:
        raise ValueError(f"load_dataset({GLOSSES!r}): unknown option(s) {unknown}; it takes {list(GLOSSES_OPTIONS)}")
    if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float, np.number)) \
            or not 0 <= validation_split < 1:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
    return glosses.loaded_data(split, hierarchy=hierarchy, batch_size=batch_size,
                               validation_split=None if validation_split else 0, seed=seed, shuffle=shuffle,
                               max_examples=max_examples, augment=augment, data_dir=data_dir,
                               image_dtype=image_dtype, image_size=image_size, manual_dir=manual_dir,
                               drop_remainder=drop_remainder, **options)


def load_dataset(name_or_path, split="train", hierarchy=None, batch_size=128,
                 validation_split=0.0, seed=0, augment=False, data_dir=None, shuffle=None,
                 image_dtype="float32", image_size=None, manual_dir=None,
                 max_examples=None, drop_remainder=False, **dataset_options):
    """Loads a dataset as batched `tf.data.Dataset`s with its hierarchy.

    Args:
        name_or_path: a tfds name (`"cifar100"`, `"cifar10"`, `"fashion_mnist"`,
            ...), a local path (see the module docstring), or
            `"wordnet_glosses"`: the WordNet gloss text benchmark
            (`keras_hier.glosses.loaded_data`; datasets of (string [B],
            int64 [B]), `input_shape` `()`, the benchmark's own hierarchy and
            train / validation / test splits: any `validation_split` > 0
            selects its validation split (10 % per class), 0 none;
            `max_examples` subsamples about that many glosses, evenly per
            class, *before* splitting, so give the same value for "train"
            and "test" to keep the splits disjoint; image options must keep
            their defaults).
        split: `"train"` or `"test"`.
        hierarchy: a `keras_hier.Hierarchy`. Default: the built-in one for
            cifar100/cifar10/fashion_mnist (also recognised from class names),
            `Hierarchy.from_directory` for image folders; required otherwise.
            Labels are re-indexed to its class order (see `align_labels`).
        batch_size: batch size.
        validation_split: fraction of the training split held out (seeded).
        seed: seed of the split, the shuffling and the augmentation.
        augment: the paper's random affine + flip on the training part.
        data_dir: tfds data directory (default `TFDS_DATA_DIR`, then tfds').
        shuffle: shuffle every epoch (default: True for `split="train"`).
        image_dtype: `"float32"` in [0, 1] (default) or `"uint8"`.
        image_size: `(H, W)` to resize to (image folders and tfds sets of
            mixed sizes).
        manual_dir: directory holding a tfds dataset's original archives
            (e.g. `cifar-100-binary.tar.gz`), used to prepare it offline.
        max_examples: keep a seeded random subset of this many examples
            (before the validation split), for quick runs.
        drop_remainder: drop incomplete last batches of `dataset`.
        **dataset_options: options of a named benchmark; `"wordnet_glosses"`
            takes `depth`, `min_count` and `max_per_class` (see
            `keras_hier.glosses.load_glosses`). Other sources take none.

    Returns:
        A `LoadedData` (`dataset`, `validation`, `hierarchy`, `class_names`,
        `input_shape`, `num_examples`, `num_validation`).

    Raises:
        ConnectionError: a tfds set that is not prepared and cannot be
            downloaded (after a few seconds, with the local alternatives).
        ValueError: unknown sources, class names missing from the hierarchy.

    Example:

    ```python
    data = load_dataset("/usr/share/datasets/fashion-mnist", "train",
                        validation_split=0.1, batch_size=64)
    model.fit(data.dataset, validation_data=data.validation)
    data = load_dataset("wordnet_glosses", "train", validation_split=0.1, depth=5, min_count=50)
    data.input_shape   # (): strings
    ```
    """
    _check_split(split)
    for argument, value in (("batch_size", batch_size), ("max_examples", max_examples)):
        if value is None and argument == "max_examples":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or value < 1 or value != int(value):
            raise ValueError(f"{argument} must be a positive int, got {value!r}")
    batch_size = int(batch_size)
    if str(name_or_path) == GLOSSES:
        return _load_glosses(split, hierarchy, batch_size, validation_split, seed, augment, data_dir, shuffle,
                             image_dtype, image_size, manual_dir, max_examples, drop_remainder, dataset_options)
    if dataset_options:
        raise ValueError(f"load_dataset({str(name_or_path)!r}): unknown argument(s) {sorted(dataset_options)}; "
                         f"dataset options are taken only by {GLOSSES!r}")
    folder_hierarchy = None
    if _is_path(name_or_path):
        path = pathlib.Path(str(name_or_path)).expanduser()
        if path.is_dir() and _idx_files(path, split) is None and not list(path.glob("*.npz")):
            root, folder_hierarchy = _image_folder_root(path, split)
            images, labels, names, _ = _load_image_folder(
                root, hierarchy or folder_hierarchy, image_size)
            folder_hierarchy = hierarchy or folder_hierarchy
        else:
            images, labels, names = load_arrays(name_or_path, split, image_size)
        key = None
    else:
        key = str(name_or_path)
        images, labels, names = _tfds_arrays(key, split, data_dir, manual_dir, image_size)
        key = BUILTIN_HIERARCHIES.get(key, "")
    if hierarchy is None:
        hierarchy = folder_hierarchy
    if hierarchy is None and key != "":
        hierarchy = _builtin_hierarchy(key, names)
    if hierarchy is None:
        raise ValueError(f"{name_or_path!r}: no built-in hierarchy for classes {names[:5]}...; "
                         "pass hierarchy=keras_hier.Hierarchy(...)")
    labels = align_labels(labels, names, hierarchy, source=f"{name_or_path} labels")
    if max_examples is not None and max_examples < len(labels):
        keep = np.sort(np.random.default_rng(seed + 1).permutation(len(labels))[:int(max_examples)])
        images, labels = images[keep], labels[keep]
    shuffle = (split == "train") if shuffle is None else bool(shuffle)
    validation, n_val = None, 0
    if split == "train" and validation_split:
        train_idx, val_idx = split_indices(len(labels), validation_split, seed)
        if not len(train_idx):
            raise ValueError(f"validation_split={validation_split} of {len(labels)} examples leaves "
                             f"{len(train_idx)} for training and {len(val_idx)} for validation")
        validation = make_pipeline(images[val_idx], labels[val_idx], batch_size,
                                   image_dtype=image_dtype)
        n_val = len(val_idx)
        images, labels = images[train_idx], labels[train_idx]
    dataset = make_pipeline(images, labels, batch_size, shuffle=shuffle, seed=seed,
                            augment=augment, image_dtype=image_dtype,
                            drop_remainder=drop_remainder)
    return LoadedData(dataset=dataset, validation=validation, hierarchy=hierarchy,
                      class_names=list(hierarchy.classes), input_shape=tuple(images.shape[1:]),
                      num_examples=len(labels), num_validation=n_val)
