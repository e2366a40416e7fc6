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
