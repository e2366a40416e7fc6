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
