"""Tests of keras_hier.hierarchy against an independent graph computation."""

import collections
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from keras_hier import Hierarchy


def reference_distances(paths):
    """Shortest leaf-to-leaf paths by BFS on an explicit graph of prefixes."""
    graph = collections.defaultdict(set)
    for path in paths:
        for k in range(len(path)):
            parent, child = tuple(path[:k]), tuple(path[: k + 1])
            graph[parent].add(child)
            graph[child].add(parent)
    leaves = [tuple(path) for path in paths]
    out = np.zeros((len(leaves), len(leaves)), dtype=int)
    for i, source in enumerate(leaves):
        seen, frontier, distance = {source: 0}, [source], 0
        while frontier:
            distance += 1
            nxt = []
            for node in frontier:
                for other in graph[node]:
                    if other not in seen:
                        seen[other] = distance
                        nxt.append(other)
            frontier = nxt
        out[i] = [seen[leaf] for leaf in leaves]
    return out


def reference_lca_height(paths):
    """Height of the LCA node: longest downward path from it to a leaf."""
    leaves = [tuple(p) for p in paths]
    out = np.zeros((len(leaves), len(leaves)), dtype=int)
    for i, a in enumerate(leaves):
        for j, b in enumerate(leaves):
            if i == j:
                continue
            k = 0
            while k < min(len(a), len(b)) and a[k] == b[k]:
                k += 1
            lca = a[:k]
            out[i, j] = max(len(leaf) for leaf in leaves if leaf[:k] == lca) - k
    return out


@st.composite
def random_paths(draw, uniform=False):
    num_classes = draw(st.integers(1, 12))
    depth = draw(st.integers(1, 4))
    paths = []
    for index in range(num_classes):
        length = depth if uniform else draw(st.integers(1, depth))
        prefix = [draw(st.sampled_from("abc")) for _ in range(length - 1)]
        paths.append(tuple(prefix) + (f"class{index}",))
    return paths


def test_small_tree_values():
    h = Hierarchy.from_paths({"rose": "plant/flower/rose", "tulip": "plant/flower/tulip",
                              "oak": "plant/tree/oak", "truck": "vehicle/road/truck"})
    assert h.classes == ("rose", "tulip", "oak", "truck")
    np.testing.assert_array_equal(h.distance_matrix(), [[0, 2, 4, 6], [2, 0, 4, 6], [4, 4, 0, 6], [6, 6, 6, 0]])
    np.testing.assert_array_equal(h.distance_matrix("lca_height"),
                                  [[0, 1, 2, 3], [1, 0, 2, 3], [2, 2, 0, 3], [3, 3, 3, 0]])
    assert h.level_names(0) == ["plant", "vehicle"]
    assert h.level_names(1) == ["flower", "tree", "road"]
    np.testing.assert_array_equal(h.ancestors(0), [0, 0, 0, 1])
    np.testing.assert_array_equal(h.ancestors(-1), np.arange(4))
    assert h.depth == 3 and h.is_uniform
    assert h.distance_counts() == {0: 4, 2: 2, 4: 4, 6: 6}


def test_ragged_tree_and_level_rules():
    h = Hierarchy.from_paths(["a/x/p", "a/x/q", "a/r", "s"])
    np.testing.assert_array_equal(h.leaf_depths, [3, 3, 2, 1])
    assert not h.is_uniform
    # shallow leaves map to themselves below their depth
    np.testing.assert_array_equal(h.ancestors(1), [0, 0, 1, 2])
    assert h.level_names(1) == ["x", "r", "s"]
    assert h.level_paths(1) == ["a/x", "a/r", "s"]
    np.testing.assert_array_equal(h.level_mask, [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(h.distance_matrix(), reference_distances(h.paths))
    np.testing.assert_array_equal(h.lca_depth_matrix(), [[3, 2, 1, 0], [2, 3, 1, 0], [1, 1, 2, 0], [0, 0, 0, 1]])
    assert h.num_node_ids == sum(h.level_sizes) == 2 + 3 + 4


def test_nodes_grouped_by_full_path_not_name():
    h = Hierarchy.from_paths(["animal/other/x", "animal/other/y", "plant/other/z"])
    assert h.num_nodes(1) == 2  # two distinct "other" nodes
    assert h.distance_matrix()[0, 2] == 6


def test_class_that_is_also_internal_node_becomes_leaf_child():
    h = Hierarchy.from_paths({"A": "x/A", "B": "x/A/B"})
    assert h.paths[0] == ("x", "A", "A")
    assert h.distance_matrix()[0, 1] == 2


@settings(max_examples=60, deadline=None)
@given(random_paths())
def test_distance_properties_on_random_trees(paths):
    h = Hierarchy(paths)
    t = h.distance_matrix()
    np.testing.assert_array_equal(t, reference_distances(h.paths))
    np.testing.assert_array_equal(t, t.T)
    off = ~np.eye(len(paths), dtype=bool)
    assert np.all(t[off] > 0) and np.all(np.diag(t) == 0)
    # triangle inequality
    assert np.all(t[:, None, :] <= t[:, :, None] + t[None, :, :])
    height = h.distance_matrix("lca_height")
    np.testing.assert_array_equal(height, reference_lca_height(h.paths))
    # ancestor heights: longest downward path from each ancestor to a leaf
    heights = h.ancestor_heights()
    for c, path in enumerate(h.paths):
        for level in range(h.depth):
            prefix = path[: level + 1] if len(path) > level else path
            below = [len(p) for p in h.paths if p[: len(prefix)] == prefix]
            assert heights[c, level + 1] == max(below) - len(prefix)
    assert np.all(heights[:, 0] == h.depth)
    # lca height is an ultrametric
    assert np.all(height[:, None, :] <= np.maximum(height[:, :, None], height[None, :, :]))
    # the factorisation identity used by losses and decoders
    shared = np.zeros_like(t)
    for level in range(h.depth):
        mask = h.level_mask[:, level]
        ids = h.node_ids[:, level]
        shared += mask[:, None] * (ids[:, None] == ids[None, :])
    np.testing.assert_array_equal(shared, h.lca_depth_matrix())
    # every level is a partition; the last one is the identity
    np.testing.assert_array_equal(h.ancestors(-1), np.arange(len(paths)))
    for level in range(h.depth):
        assert set(h.ancestors(level)) == set(range(h.num_nodes(level)))


@settings(max_examples=40, deadline=None)
@given(random_paths(uniform=True))
def test_path_is_twice_lca_height_on_uniform_trees(paths):
    h = Hierarchy(paths)
    np.testing.assert_array_equal(h.distance_matrix("path"), 2 * h.distance_matrix("lca_height"))


@settings(max_examples=30, deadline=None)
@given(random_paths())
def test_serialisation_round_trips(paths):
    h = Hierarchy(paths)
    assert Hierarchy.from_dict(json.loads(json.dumps(h.to_dict()))) == h
    assert Hierarchy.from_json(h.to_json()) == h


def test_csv_round_trip_and_newick(tmp_path):
    h = Hierarchy.from_paths(["a/x/p", "a/x/q", "a/r", "s"])
    h.to_csv(tmp_path / "h.csv")
    assert Hierarchy.from_csv(tmp_path / "h.csv") == h
    assert h.to_newick() == "(((p,q)x,r)a,s);"
    assert "4 classes" in repr(h) and "ragged" in h.summary()


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_from_csv_options(tmp_path):
    text = "Class,Path,Number\nb,/data/set/top/mid/b,1\na,/data/set/top/a,0\n"
    h = Hierarchy.from_csv(write(tmp_path, "x.csv", text), strip_prefix="/data/set/")
    assert h.classes == ("a", "b")  # ordered by the id column
    assert h.paths == (("top", "a"), ("top", "mid", "b"))
    piped = "Id|Class name|Hierarchy|Number\n7|Eider (m)|Birds//Ducks//Eider (m)|0\n8|Hawk|Birds//Hawks|1\n"
    g = Hierarchy.from_csv(write(tmp_path, "y.csv", piped), delimiter="|", class_column="Class name",
                           path_column="Hierarchy", path_separator="//")
    # a path not ending in the class name is the class's parent
    assert g.paths == (("Birds", "Ducks", "Eider (m)"), ("Birds", "Hawks", "Hawk"))
    no_ids = Hierarchy.from_csv(write(tmp_path, "z.csv", "Class,Path\nq,g/q\np,g/p\n"))
    assert no_ids.classes == ("q", "p")


@pytest.mark.parametrize("text, message", [
    ("Class,Path,Number\na,x/a,0\nb,x/b,2\n", "id 1 is missing"),
    ("Class,Path,Number\na,x/a,0\nb,x/b,0\n", "line 3: class 'b' repeats id 0"),
    ("Class,Path,Number\na,x/a,0\na,y/a,1\n", "duplicate class name 'a'"),
    ("Class,Path,Number\na,x/a,zero\n", "line 2: class 'a' has a non-integer id"),
    ("Class,Path,Number\n", "no classes"),
    ("Name,Path\na,x/a\n", "no column 'Class'"),
    ("Class,Path,Number\na,x//a,0\n", "line 2 (class 'a'): path 'x//a' has an empty node name"),
])
def test_from_csv_errors_name_the_culprit(tmp_path, text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Hierarchy.from_csv(write(tmp_path, "bad.csv", text))


def test_from_csv_strip_prefix_mismatch(tmp_path):
    path = write(tmp_path, "p.csv", "Class,Path,Number\na,/other/x/a,0\n")
    with pytest.raises(ValueError, match="line 2: path '/other/x/a' does not start with '/data/'"):
        Hierarchy.from_csv(path, strip_prefix="/data/")


def test_from_parents_and_its_errors():
    h = Hierarchy.from_parents({"rose": "flower", "tulip": "flower", "flower": "plant", "oak": "plant"},
                               ["rose", "tulip", "oak"])
    assert h.paths == (("plant", "flower", "rose"), ("plant", "flower", "tulip"), ("plant", "oak"))
    with pytest.raises(ValueError, match="cycle .* 'a'"):
        Hierarchy.from_parents({"a": "b", "b": "c", "c": "b"}, ["a"])
    with pytest.raises(ValueError, match="node 'a' has two parents: 'b' and 'c'"):
        Hierarchy.from_parents([("a", "b"), ("a", "c")], ["a"])
    with pytest.raises(ValueError, match="empty"):
        Hierarchy.from_parents({}, [])


def test_constructor_errors():
    with pytest.raises(ValueError, match="empty"):
        Hierarchy.from_paths([])
    with pytest.raises(ValueError, match="empty"):
        Hierarchy.from_paths({})
    with pytest.raises(ValueError, match="duplicate class name 'x'"):
        Hierarchy.from_paths(["a/x", "b/x"])
    with pytest.raises(ValueError, match="class 'c'.*empty node name"):
        Hierarchy.from_paths({"c": "a//c"})
    h = Hierarchy.from_paths(["a/x", "b/y"])
    with pytest.raises(ValueError, match="level 2 out of range"):
        h.ancestors(2)
    with pytest.raises(KeyError, match="unknown class 'z'"):
        h.class_index("z")
    with pytest.raises(ValueError, match="unknown distance kind"):
        h.distance_matrix("euclid")


def test_from_directory(tmp_path):
    for folder in ["animals/cat", "animals/dog", "plants/other", "animals/other", "animals"]:
        os.makedirs(tmp_path / folder, exist_ok=True)
    for folder in ["animals/cat", "animals/dog", "plants/other", "animals/other"]:
        (tmp_path / folder / "img0.png").write_bytes(b"x")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "f").write_bytes(b"x")
    h = Hierarchy.from_directory(tmp_path)
    assert h.classes == ("cat", "dog", "animals/other", "plants/other")
    assert h.paths[2] == ("animals", "other")
    assert h.class_folders[0].endswith(os.path.join("animals", "cat"))
    empty = tmp_path / "empty_root"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="no class folders"):
        Hierarchy.from_directory(empty)
    with pytest.raises(ValueError, match="not a directory"):
        Hierarchy.from_directory(tmp_path / "missing")


def test_tree_similarity_matches_distances():
    h = Hierarchy.from_paths(["a/x/p", "a/x/q", "a/r", "s"])
    t = reference_distances(h.paths)
    np.testing.assert_allclose(h.similarity_matrix("exp", beta=0.5), np.exp(-0.5 * t), rtol=1e-6)
    np.testing.assert_allclose(h.similarity_matrix("linear"), 1 - t / t.max(), rtol=1e-6)


# ------------------------------------------------- tree tables and pairwise distance
@settings(max_examples=60, deadline=None)
@given(random_paths(), st.data())
def test_pairwise_distance_equals_the_matrix_on_ragged_trees(paths, data):
    h = Hierarchy(paths)
    num_classes = h.num_classes
    a = np.array(data.draw(st.lists(st.integers(0, num_classes - 1), min_size=1, max_size=20)))
    b = np.array(data.draw(st.lists(st.integers(0, num_classes - 1), min_size=len(a), max_size=len(a))))
    path_ref, height_ref = reference_distances(h.paths), reference_lca_height(h.paths)
    np.testing.assert_array_equal(h.distance(a, b), path_ref[a, b])
    np.testing.assert_array_equal(h.distance(a, b, kind="lca_height"), height_ref[a, b])
    # broadcasting: every pair of a top-k style table
    np.testing.assert_array_equal(h.distance(a[:, None], b[None, :]), path_ref[a[:, None], b[None, :]])
    assert h.distance(a, b).dtype == np.int32
    np.testing.assert_array_equal(h.distance_matrix("lca_height"), height_ref)


@settings(max_examples=60, deadline=None)
@given(random_paths())
def test_parents_heights_and_offsets_against_the_paths(paths):
    h = Hierarchy(paths)
    np.testing.assert_array_equal(h.level_offsets, np.concatenate([[0], np.cumsum(h.level_sizes)]))
    for level in range(h.depth):
        np.testing.assert_array_equal(h.node_ids[:, level], h.ancestors(level) + h.level_offsets[level])
        keys = h.level_paths(level)
        parents = h.parents(level)
        assert parents.dtype == np.int32 and parents.shape == (h.num_nodes(level),)
        for node, key in enumerate(keys):
            parts = key.split("/")
            if level == 0:
                assert parents[node] == -1
            else:
                parent_key = keys[node] if len(parts) <= level else "/".join(parts[:-1])
                assert h.level_paths(level - 1)[parents[node]] == parent_key
            below = [len(p) for p in h.paths if "/".join(p[: len(parts)]) == key]
            assert h.node_heights(level)[node] == max(below) - len(parts)
    columns = [h.node_heights(level)[h.ancestors(level)] for level in range(h.depth)]
    np.testing.assert_array_equal(h.ancestor_heights()[:, 1:], np.stack(columns, axis=1))


def test_distance_rejects_bad_ids_and_kinds():
    from keras_hier.hierarchy import DISTANCE_KINDS, check_distance_kind

    h = Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    assert DISTANCE_KINDS == ("path", "lca_height")
    with pytest.raises(ValueError, match="class id 3 outside"):
        h.distance([0, 3], [1, 1])
    with pytest.raises(ValueError, match="class id -1 outside"):
        h.distance([0], [-1])
    with pytest.raises(TypeError, match="integer class ids"):
        h.distance([0.5], [1])
    with pytest.raises(ValueError, match="unknown distance kind kind='euclid'"):
        h.distance(0, 1, kind="euclid")
    with pytest.raises(ValueError, match="distance='cos'"):
        check_distance_kind("cos", where="distance")
    assert h.distance(np.array([2.0]), [0]).tolist() == [4]
    assert h.distance(np.zeros((0,), int), np.zeros((0,), int)).shape == (0,)


def test_distance_at_scale_needs_no_matrix():
    # 20 000 classes: a C x C int32 matrix would need 1.6 GB; pairs stay cheap.
    paths = [f"g{c % 7}/s{c % 97}/class{c}" for c in range(20000)]
    h = Hierarchy.from_paths(paths)
    a, b = np.arange(0, 20000, 3), np.arange(1, 20000, 3)[: len(np.arange(0, 20000, 3))]
    a = a[: len(b)]
    expected = np.where(a % 7 != b % 7, 6, np.where(a % 97 != b % 97, 4, 2))
    np.testing.assert_array_equal(h.distance(a, b), expected)
    assert "_path_distance" not in h.__dict__ and "_lca_depth" not in h.__dict__


# --------------------------------------------------------------- to_config
@st.composite
def awkward_paths(draw):
    alphabet = st.sampled_from(["a", "b/c", "é", "日本", "x y", '"q"', "\\", "{", "/"])
    num_classes = draw(st.integers(1, 8))
    paths = []
    for index in range(num_classes):
        prefix = draw(st.lists(alphabet, min_size=0, max_size=4))
        paths.append(tuple(prefix) + (draw(alphabet) + f"{index}",))
    return paths


@settings(max_examples=60, deadline=None)
@given(st.one_of(random_paths(), awkward_paths()))
def test_config_round_trips_through_json(paths):
    h = Hierarchy(paths)
    config = h.to_config()
    assert set(config) == {"format", "num_classes", "tree"} and isinstance(config["tree"], str)
    again = Hierarchy.from_config(json.loads(json.dumps(config)))
    assert again == h
    np.testing.assert_array_equal(again.distance_matrix(), h.distance_matrix())


def test_config_keeps_class_names_children_and_wordnet_choices():
    h = Hierarchy.from_paths({"A": "x/A", "B": "x/A/B", "r/s": "x/r/s"})   # 'A' has a child, a name with '/'
    g = Hierarchy([("top", "leaf")], classes=["other name"])
    g.wordnet_choices = {"other name": "leaf.n.01"}
    for hierarchy in (h, g):
        again = Hierarchy.from_config(hierarchy.to_config())
        assert again == hierarchy and again.paths == hierarchy.paths
        assert again.wordnet_choices == hierarchy.wordnet_choices
    assert Hierarchy.from_config(h.to_dict()) == h     # the older dict form still loads
    assert Hierarchy.from_json(json.dumps(h.to_config())) == h


@pytest.mark.parametrize("config, error, message", [
    ([1, 2], TypeError, "got list"),
    ({"format": "keras_hier.Hierarchy/9", "tree": "{}"}, ValueError, "unknown format 'keras_hier.Hierarchy/9'"),
    ({"format": "keras_hier.Hierarchy/1", "tree": 3}, TypeError, "'tree' must be a JSON string"),
    ({"tree": "{"}, ValueError, "not valid JSON"),
    ({"tree": "[" * 100000}, ValueError, "not valid JSON"),
    ({"tree": '{"nodes": ["a"], "parent": [0], "leaf": [0]}'}, ValueError, "node 0 .*parent"),
    ({"tree": '{"nodes": ["a"], "parent": [-1], "leaf": [5]}'}, ValueError, "'leaf'"),
])
def test_from_config_errors(config, error, message):
    with pytest.raises(error, match=message):
        Hierarchy.from_config(config)
