"""File-level helpers behind the Hierarchy constructors and writers."""

import pytest

from keras_hier.hierarchy_io import atomic_write, csv_text, newick, read_csv_table, split_path


def test_split_path():
    assert split_path("/data/a/b/", "/", "x") == ("data", "a", "b")
    assert split_path(["a", " b "], "/", "x") == ("a", "b")
    assert split_path("Birds//Ducks", "//", "x") == ("Birds", "Ducks")
    with pytest.raises(ValueError, match="line 3: empty path"):
        split_path("//", "/", "line 3")
    with pytest.raises(TypeError, match="class 'c': a path must be a string"):
        split_path(3, "/", "class 'c'")


def test_csv_text_round_trips_and_refuses_separator_in_names(tmp_path):
    paths = [("a", "x"), ("b", "y z")]
    text = csv_text(["x", "y z"], paths)
    assert text.splitlines() == ["Class,Path,Number", "x,a/x,0", "y z,b/y z,1"]
    atomic_write(tmp_path / "h.csv", text)
    assert read_csv_table(tmp_path / "h.csv") == (paths, ["x", "y z"])
    with pytest.raises(ValueError, match="class 'T/top': node name 'T/top' contains the path separator"):
        csv_text(["T/top"], [("clothes", "T/top")])


def test_newick_quotes_names():
    assert newick([("a", "x y"), ("a", "z"), ("b",)]) == "(('x y',z)a,b);"


def test_level_ids_number_nodes_by_first_appearance():
    import numpy as np

    from keras_hier.hierarchy_io import classes_with_children, level_ids

    paths = [("b", "x"), ("a", "y"), ("b", "z"), ("a",)]
    ancestors, representatives = level_ids(paths)
    assert [ids.tolist() for ids in ancestors] == [[0, 1, 0, 1], [0, 1, 2, 3]]
    # the first class below each node names it
    assert [first.tolist() for first in representatives] == [[0, 1], [0, 1, 2, 3]]
    # ("a",) is a prefix of ("a", "y"): a class that has children
    np.testing.assert_array_equal(classes_with_children(paths, ancestors), [False, False, False, True])


def test_encode_decode_tree_stores_each_node_once():
    import json

    from keras_hier.hierarchy_io import decode_tree, encode_tree

    paths = [("a/b", "x"), ("a/b", "é"), ("c", "x")]
    text = encode_tree(["x", "é", "x2"], paths)
    tree = json.loads(text)
    assert tree["nodes"] == ["a/b", "c", "x", "é", "x"] and tree["parent"] == [-1, -1, 0, 0, 1]  # level by level
    assert tree["leaf"] == [2, 3, 4]
    assert tree["classes"] == ["x", "é", "x2"]     # stored because 'x2' differs from its node name
    classes, decoded, _ = decode_tree(text)
    assert classes == ["x", "é", "x2"] and decoded == paths
    # the depth-first layout that earlier versions wrote still reads back
    earlier = '{"nodes":["a/b","x","é","c","x"],"parent":[-1,0,0,-1,3],"leaf":[1,2,4],"classes":["x","é","x2"]}'
    assert decode_tree(earlier)[:2] == (["x", "é", "x2"], paths)
    with pytest.raises(ValueError, match="2 nodes but 1 parent entries"):
        decode_tree('{"nodes": ["a", "b"], "parent": [-1], "leaf": [1]}')


def test_read_json_names_its_source(tmp_path):
    from keras_hier.hierarchy_io import read_json

    assert read_json('{"a": 1}') == ({"a": 1}, "JSON text")
    path = tmp_path / "x.json"
    path.write_text("[1, 2]")
    assert read_json(path) == ([1, 2], str(path))
    with pytest.raises(TypeError, match="got int"):
        read_json(3)
