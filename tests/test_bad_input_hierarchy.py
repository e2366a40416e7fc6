"""Bad input to hierarchies, hierarchy files and data files (issue 12): every case either
raises an error of the right type whose message names the culprit, or gives a correct,
finite result. Hypothesis generates malformed hierarchies, label arrays and files."""

import gzip
import json
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from keras_hier import Hierarchy, data

FILE_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------ strings where lists are expected
def test_hierarchy_refuses_path_strings_instead_of_node_lists():
    with pytest.raises(TypeError, match=r"class id 0: path 'plant/rose' is a string.*from_paths"):
        Hierarchy(["plant/rose", "plant/tulip"])
    with pytest.raises(TypeError, match="single string 'ab'"):
        Hierarchy([("x", "a"), ("x", "b")], classes="ab")
    with pytest.raises(TypeError, match="not the single string 'x/a'"):
        Hierarchy.from_paths("x/a")


def test_from_parents_refuses_a_string_of_classes():
    with pytest.raises(TypeError, match="single string 'ab'"):
        Hierarchy.from_parents({"a": "x", "b": "x"}, classes="ab")
    with pytest.raises(TypeError, match="not the string 'ab'"):
        Hierarchy.from_parents("ab")
    with pytest.raises(ValueError, match="'abc' is not a \\(child, parent\\) pair"):
        Hierarchy.from_parents(["abc"])


def test_from_dict_and_from_json_accept_path_strings():
    h = Hierarchy.from_dict({"classes": ["rose", "tulip"], "paths": ["plant/rose", "plant/tulip"]})
    assert h.paths == (("plant", "rose"), ("plant", "tulip"))
    # a string path that does not end with the class is its parent, as in from_csv
    g = Hierarchy.from_json(json.dumps({"classes": ["rose"], "paths": ["plant/flower"]}))
    assert g.paths == (("plant", "flower", "rose"),)
    no_classes = Hierarchy.from_dict({"paths": [["a", "x"], "a/y"]})
    assert no_classes.classes == ("x", "y")
    assert Hierarchy.from_dict(h.to_dict()) == h


@pytest.mark.parametrize("payload, message", [
    ({"classes": ["a"], "paths": None}, "'paths' must be a list .* got NoneType"),
    ({"classes": ["a"]}, "'paths' must be a list"),
    ({"classes": "ab", "paths": [["x", "a"], ["x", "b"]]}, "'classes' must be a list of names, got str"),
    ({"classes": ["a", "b"], "paths": [["x", "a"]]}, "2 classes but 1 paths"),
    ({"classes": ["a"], "paths": [["x", 3]]}, "class 'a': a path must be a list of node names"),
    ({"classes": ["a"], "paths": [{"x": 1}]}, "class 'a': a path must be"),
    ({"classes": ["a"], "paths": [[]]}, "class 'a': invalid path"),
    ({"classes": ["a"], "paths": [["x", "a"]], "wordnet_choices": [1]}, "'wordnet_choices' must be a mapping"),
    ([1, 2], "expected a JSON object .* got list"),
])
def test_from_dict_errors(payload, message):
    with pytest.raises(ValueError, match=message):
        Hierarchy.from_dict(payload)
    with pytest.raises(ValueError, match=message):
        Hierarchy.from_json(json.dumps(payload))


def test_from_json_text_and_file_errors(tmp_path):
    with pytest.raises(ValueError, match="JSON text: expected a JSON object .* got list"):
        Hierarchy.from_json("[1,2]")
    with pytest.raises(ValueError, match="JSON text: JSON nested too deeply"):
        Hierarchy.from_json("[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match="JSON text: invalid JSON at line 1"):
        Hierarchy.from_json("{'classes': 1}")
    with pytest.raises(ValueError, match="'missing.json' is neither JSON text .* nor an existing file"):
        Hierarchy.from_json("missing.json")
    bad = tmp_path / "h.json"
    bad.write_bytes(b'{"classes": ["caf\xe9"], "paths": [["x", "caf\xe9"]]}')
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ": not UTF-8 text"):
        Hierarchy.from_json(bad)
    bad.write_text('{"classes": ["a"],\n "paths": [["x", "a"]]')
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ": invalid JSON at line 2"):
        Hierarchy.from_json(str(bad))
    bad.write_text('{"paths": null}')
    with pytest.raises(ValueError, match=re.escape(str(bad)) + ": 'paths' must be a list"):
        Hierarchy.from_json(bad)


# --------------------------------------------------------------------------- from_parents
def test_from_parents_names_unknown_classes_and_infers_them():
    links = {"rose": "flower", "flower": "plant"}
    with pytest.raises(ValueError, match=r"classes not in the parent links: 'daisy', 'Rose '"):
        Hierarchy.from_parents(links, classes=["rose", "daisy", "Rose "])
    inferred = Hierarchy.from_parents({"rose": "flower", "tulip": "flower", "flower": "plant", "oak": "plant"})
    assert inferred.classes == ("rose", "tulip", "oak")
    top = Hierarchy.from_parents({"rose": "plant", "daisy": None}, classes=["rose", "daisy"])
    assert top.paths == (("plant", "rose"), ("daisy",))
    # a class named as a parent has children: it becomes a leaf below its own node
    inner = Hierarchy.from_parents(links, classes=["rose", "flower"])
    assert inner.paths == (("plant", "flower", "rose"), ("plant", "flower", "flower"))


@st.composite
def parent_maps(draw):
    nodes = [f"n{i}" for i in range(draw(st.integers(2, 8)))]
    parents = {node: draw(st.sampled_from(nodes + [None])) for node in nodes}
    return parents


@settings(max_examples=80, deadline=None)
@given(parent_maps(), st.lists(st.sampled_from(["n0", "n1", "n2", "n3", "zz"]), min_size=1, max_size=4))
def test_random_parent_maps_give_a_tree_or_a_clear_error(parents, classes):
    try:
        h = Hierarchy.from_parents(parents, classes)
    except ValueError as error:
        text = str(error)
        assert any(key in text for key in ("cycle", "its own parent", "not in the parent links", "duplicate class",
                                           "same path")), text
        return
    # a correct tree: every class's path follows the links up to a top node
    for name, path in zip(h.classes, h.paths):
        # a class with children is a leaf below its own node: (..., name, name)
        chain = path[:-1] if len(path) > 1 and path[-1] == path[-2] else path
        assert path[-1] == name
        for child, parent in zip(chain[1:], chain[:-1]):
            assert parents[child] == parent
        assert parents.get(chain[0]) is None
    assert np.all(np.isfinite(h.distance_matrix()))


# ------------------------------------------------------------------------------ hierarchies
@st.composite
def malformed_paths(draw):
    """Lists of paths with one random defect (or none)."""
    paths, classes = [["a", "x"], ["a", "y"], ["b", "z"]], ["x", "y", "z"]
    defect = draw(st.sampled_from(["none", "empty_name", "non_string", "empty_path", "duplicate", "string",
                                   "same_path", "number", "few_classes"]))
    index = draw(st.integers(0, 2))
    if defect == "empty_name":
        paths[index] = ["", paths[index][-1]]
    elif defect == "non_string":
        paths[index] = [None, paths[index][-1]]
    elif defect == "empty_path":
        paths[index] = []
    elif defect == "duplicate":
        classes[index] = classes[(index + 1) % 3]
    elif defect == "string":
        paths[index] = "/".join(paths[index])
    elif defect == "same_path":
        paths[index] = list(paths[(index + 1) % 3])
    elif defect == "number":
        paths[index] = 7
    elif defect == "few_classes":
        classes = classes[:index]
    return defect, index, paths, classes


@settings(max_examples=80, deadline=None)
@given(malformed_paths())
def test_malformed_paths_are_refused_naming_the_class(case):
    defect, index, paths, classes = case
    if defect == "none":
        assert Hierarchy(paths, classes).num_classes == 3
        return
    expected = {"empty_name": (ValueError, "invalid path"), "non_string": (ValueError, "invalid path"),
                "empty_path": (ValueError, "invalid path"), "duplicate": (ValueError, "duplicate class name"),
                "string": (TypeError, f"class id {index}: path .* is a string"),
                "same_path": (ValueError, "have the same path"),
                "number": (TypeError, f"class id {index}: path 7 is not a sequence"),
                "few_classes": (ValueError, f"{index} class names for 3 paths")}[defect]
    with pytest.raises(expected[0], match=expected[1]):
        Hierarchy(paths, classes)


# ------------------------------------------------------------------------------------- CSV
def test_csv_latin1_and_binary_files_are_named(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("Class,Path,Number\nrose,plant/rose,0\ncaf\xe9,drink/caf\xe9,1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=re.escape(str(latin)) + ", line 3: not UTF-8 text"):
        Hierarchy.from_csv(latin)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"Class,Path\nrose,plant/rose\n\x00\x01\x02")
    with pytest.raises(ValueError, match=re.escape(str(binary)) + ", line 3: NUL byte"):
        Hierarchy.from_csv(binary)


@FILE_SETTINGS
@given(st.binary(min_size=0, max_size=200))
def test_random_bytes_as_csv_give_a_hierarchy_or_a_named_error(tmp_path, payload):
    path = tmp_path / "random.csv"
    path.write_bytes(b"Class,Path\n" + payload)
    try:
        h = Hierarchy.from_csv(path)
    except ValueError as error:
        assert str(path) in str(error)
    else:
        assert h.num_classes >= 1 and np.all(h.distance(np.arange(h.num_classes), 0) >= 0)


# ------------------------------------------------------------------------------ data files
def _write_idx(path, header, body=b"", compress=False):
    payload = bytes(header) + body
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(payload)


def _idx_dir(tmp_path, images, labels):
    folder = tmp_path / "idx"
    folder.mkdir(exist_ok=True)
    images, labels = np.asarray(images, np.uint8), np.asarray(labels, np.uint8)
    for name, array in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
        header = [0, 0, 8, array.ndim] + list(b"".join(int(d).to_bytes(4, "big") for d in array.shape))
        _write_idx(folder / name, header, array.tobytes())
    return folder


@pytest.mark.parametrize("header, body, message", [
    ([0, 0, 8, 0], b"", "bad IDX header"),
    ([0, 0, 8, 9] + [0, 0, 0, 1] * 9, b"x", "bad IDX header"),
    ([0, 0, 8, 3, 0, 0], b"", "bad IDX header"),
    ([0, 0, 8, 1, 0, 0, 0, 5], b"abc", r"header says \(5,\) \(5 bytes\) but the body holds 3 bytes; truncated"),
    ([0, 0, 0x0C, 1, 0, 0, 0, 2], b"abcde", r"header says \(2,\) \(8 bytes\) but the body holds 5 bytes"),
    ([1, 2, 8, 1], b"", "not an IDX file"),
])
def test_idx_headers_and_bodies(tmp_path, header, body, message):
    path = tmp_path / "bad-idx1-ubyte"
    _write_idx(path, header, body)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": " + message):
        data.read_idx(path)


def test_idx_corrupt_gzip_and_zero_images(tmp_path):
    folder = _idx_dir(tmp_path, np.zeros((3, 2, 2)), [0, 1, 2])
    good = (folder / "train-images-idx3-ubyte").read_bytes()
    corrupt = folder / "train-images-idx3-ubyte.gz"
    corrupt.write_bytes(gzip.compress(good)[:-12])
    with pytest.raises(ValueError, match=re.escape(str(corrupt)) + ": cannot read the file"):
        data.read_idx(corrupt)
    corrupt.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ValueError, match=re.escape(str(corrupt)) + ": cannot read the file"):
        data.read_idx(corrupt)
    empty = _idx_dir(tmp_path, np.zeros((0, 2, 2)), np.zeros((0,)))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: expected N > 0 images"):
        data.load_arrays(empty, "train")


def test_idx_label_count_and_shape(tmp_path):
    folder = _idx_dir(tmp_path, np.zeros((3, 2, 2)), [0, 1])
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte: 2 labels for 3 samples"):
        data.load_arrays(folder, "train")
    folder = _idx_dir(tmp_path, np.zeros((2, 2, 2)), [[0], [1]])
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte: labels must be one-dimensional"):
        data.load_arrays(folder, "train")


@FILE_SETTINGS
@given(st.binary(min_size=0, max_size=64), st.booleans())
def test_random_idx_bytes_read_or_raise_naming_the_file(tmp_path, payload, compress):
    path = tmp_path / ("random-idx.gz" if compress else "random-idx")
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(payload)
    if compress and payload:
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated stream
    try:
        array = data.read_idx(path)
    except ValueError as error:
        assert str(path) in str(error)
    else:
        assert array.size == int(np.prod(array.shape))


def test_npz_empty_corrupt_and_mismatched(tmp_path):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(str(empty)) + ": not a readable .npz"):
        data.load_arrays(empty)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=re.escape(str(garbage)) + ": not a readable .npz"):
        data.load_arrays(garbage)
    no_images = tmp_path / "none.npz"
    np.savez(no_images, images=np.zeros((0, 2, 2), np.uint8), labels=np.zeros((0,), np.int64))
    with pytest.raises(ValueError, match=re.escape(str(no_images)) + ": 'images' must be .* N > 0"):
        data.load_arrays(no_images)
    three_two = tmp_path / "three_two.npz"
    np.savez(three_two, images=np.zeros((3, 2, 2), np.uint8), labels=np.array([0, 1]))
    with pytest.raises(ValueError, match=re.escape(str(three_two)) + r" \('labels'\): 2 labels for 3 samples"):
        data.load_arrays(three_two)


@pytest.mark.parametrize("labels, names, message", [
    ([0.0, 2.7, 1.0], None, r"label \S*2.7\S* at index 1 is not a whole class id"),
    ([0.0, np.nan, 1.0], None, r"label \S*nan\S* at index 1 is not a whole class id"),
    ([-0.5, 0.0, 1.0], None, r"label \S*-0.5\S* at index 0"),
    ([0, -1, 1], None, "label -1 at index 1 is outside"),
    ([0, 1, 3], ["a", "b", "c"], "label 3 at index 2 is outside the valid range \\[0, 3\\)"),
])
def test_npz_labels_are_checked_naming_the_file(tmp_path, labels, names, message):
    path = tmp_path / "labels.npz"
    extra = {} if names is None else {"label_names": np.array(names)}
    np.savez(path, images=np.zeros((3, 2, 2), np.uint8), labels=np.array(labels), **extra)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        data.load_arrays(path)
    with pytest.raises(ValueError, match=message):
        data.load_dataset(path, hierarchy=Hierarchy.from_paths(["t/a", "t/b", "t/c", "t/d"]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.integers(-3, 6), st.floats(-3, 6), st.just(float("nan"))), min_size=1, max_size=8))
def test_align_labels_on_random_label_arrays(labels):
    h = Hierarchy.from_paths(["p/c", "p/b", "q/a"])
    values = np.array(labels, dtype=float)
    try:
        out = data.align_labels(values, ["a", "b", "c"], h, source="random labels")
    except ValueError as error:
        assert "random labels" in str(error)
        assert not np.all(np.isfinite(values) & (values == np.round(values)) & (values >= 0) & (values < 3))
    else:
        np.testing.assert_array_equal(out, (2 - values).astype(int))  # a -> 2, b -> 1, c -> 0


def test_align_labels_refuses_ambiguous_and_merged_names():
    h = Hierarchy.from_paths(["flowers/rose", "trees/oak", "trees/elm"])
    with pytest.raises(ValueError, match=r"\['Rose', 'rose'\] all match 'rose'"):
        data.align_labels([0, 1, 2], ["Rose", "rose", "oak"], h)
    clothes = Hierarchy.from_paths(["top/t-shirt", "top/t_shirt", "bottom/jeans"])
    with pytest.raises(ValueError, match=r"'T-Shirt' matches \['t-shirt', 't_shirt'\]"):
        data.align_labels([0, 1], ["T-Shirt", "jeans"], clothes)
    # exact names are never ambiguous
    np.testing.assert_array_equal(data.align_labels([0, 1, 2], ["t_shirt", "jeans", "t-shirt"], clothes), [1, 2, 0])
    with pytest.raises(ValueError, match="labels: label -1 at index 0 is outside"):
        data.align_labels([-1, 0], ["oak", "rose"], h)
    with pytest.raises(TypeError, match="single string"):
        data.align_labels([0], "ab", h)


def test_corrupt_jpeg_in_an_image_folder_is_named(tmp_path):
    import tensorflow as tf

    for cls, value in (("cat", 10), ("dog", 200)):
        (tmp_path / "animals" / cls).mkdir(parents=True)
        jpeg = tf.io.encode_jpeg(np.full((4, 4, 3), value, np.uint8)).numpy()
        (tmp_path / "animals" / cls / "0.jpg").write_bytes(jpeg)
    broken = tmp_path / "animals" / "dog" / "1.jpg"
    broken.write_bytes(jpeg[:20])
    with pytest.raises(ValueError, match=re.escape(str(broken)) + ": not a readable image"):
        data.load_arrays(tmp_path)
    with pytest.raises(ValueError, match=re.escape(str(broken))):
        data.load_dataset(tmp_path)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_examples": 0}, "max_examples must be a positive int, got 0"),
    ({"max_examples": -1}, "max_examples must be a positive int"),
    ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
    ({"batch_size": 2.5}, "batch_size must be a positive int, got 2.5"),
    ({"validation_split": 0.9, "max_examples": 1}, "leaves 0 for training"),
])
def test_load_dataset_numbers(tmp_path, kwargs, message):
    path = tmp_path / "small.npz"
    np.savez(path, images=np.zeros((4, 2, 2), np.uint8), labels=np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=message):
        data.load_dataset(path, hierarchy=Hierarchy.from_paths(["t/a", "t/b"]), **kwargs)


def test_distance_matrix_refuses_a_huge_table_and_points_to_pairs():
    from keras_hier.hierarchy import MATRIX_LIMIT

    h = Hierarchy.from_paths([f"g{c % 3}/class{c}" for c in range(MATRIX_LIMIT + 1)])
    with pytest.raises(ValueError, match=r"would need 9 GiB; use Hierarchy.distance\(a, b\)"):
        h.distance_matrix()
    assert h.distance(0, MATRIX_LIMIT).tolist() == (2 if MATRIX_LIMIT % 3 == 0 else 4)


json_values = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=4),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                         max_size=3),
                           max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({}, optional={"classes": json_values, "paths": json_values,
                                           "wordnet_choices": json_values}))
def test_random_json_hierarchies_load_or_fail_clearly(payload):
    try:
        h = Hierarchy.from_json(json.dumps(payload))
    except (ValueError, TypeError) as error:
        assert "JSON text" in str(error) or "class" in str(error) or "paths" in str(error), str(error)
    else:
        assert h.num_classes >= 1 and Hierarchy.from_config(h.to_config()) == h
