"""Tests of keras_hier.reporting: report.md people can read, JSON, figures, atomic writes."""

import json
import os

import numpy as np
import pytest

from keras_hier import Hierarchy
from keras_hier.reporting import MEASURES, jsonable, report


def tree():
    return Hierarchy.from_paths(["A/a1/x0", "A/a1/x1", "A/a2/x2", "A/a2/x3", "B/b1/x4", "B/b1/x5",
                                 "B/x6", "C/c1/q/x7"])


@pytest.fixture(scope="module")
def results():
    import keras

    from keras_hier import evaluate

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = np.arange(64) % 8
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(8, name="head")(keras.layers.Dense(4, name="embedding")(inputs)))
    out = evaluate(model, (x, y), tree(), ks=(1, 5), n_permutations=20)
    out["meta"]["config"] = {"head": "softmax", "epochs": 3, "lr": 1e-3, "name|with pipe": "a|b"}
    return out


def test_markdown_explains_every_measure_and_shows_the_config(results, tmp_path):
    md = report(results, tmp_path / "r")
    text = open(md).read()
    assert "## Configuration" in text and "| epochs | 3 |" in text and "| lr | 0.0010 |" in text
    assert "a\\|b" in text  # a pipe inside a value does not break the table
    for key in ("ahc", "mistake_severity", "ahd_at_k", "hp_at_k", "hs_at_k", "ahs", "map_at_r", "spearman",
                "ceiling", "null"):
        assert MEASURES[key] in text, key
    assert "tree distance: path" in text and "expected_cost decoder: accuracy" in text
    for name in ("tree_W.png", "distances_W.png", "tree_proto.png", "distances_proto.png", "hs_curve.png"):
        assert os.path.getsize(tmp_path / "r" / name) > 5000 and f"({name})" in text
    loaded = json.loads((tmp_path / "r" / "results.json").read_text())
    assert loaded["classification"]["accuracy"] == results["classification"]["accuracy"]
    assert not [f for f in os.listdir(tmp_path / "r") if f.startswith(".")]  # no temporary files left


def test_sampled_inference_and_notes_are_rendered(tmp_path):
    res = {"meta": {"distance": "lca_height"},
           "classification": {"distance": "lca_height", "k": 1, "accuracy": 1.0, "mistake_severity": float("nan"),
                              "notes": ["mistake_severity ... every prediction is correct"]},
           "inference": {"W": {"distance": "lca_height", "method": "sampled", "num_anchors": 10, "num_pairs": 99,
                               "spearman_classwise": 0.5, "spearman_classwise_offdiag": 0.4,
                               "spearman_pairwise": 0.3, "confidence_interval": {"spearman_pairwise": [0.2, 0.4]},
                               "ceiling": {"spearman_pairwise": 0.9}, "levels": []},
                         "proto": {"error": "needs at least 3 classes"}}}
    text = open(report(res, tmp_path, figures=False)).read()
    assert "| mistake_severity | n/a |" in text and "Note: mistake_severity" in text
    assert "10 anchor classes and 99 class pairs" in text and "0.3000 [0.2000, 0.4000]" in text
    assert "not computed: needs at least 3 classes" in text


def test_jsonable():
    assert jsonable({1: np.float32(np.nan), "a": np.arange(2), "b": (np.int64(3), np.bool_(True))}) == \
        {"1": None, "a": [0, 1], "b": [3, True]}


def test_figures_name_their_distance(results, tmp_path):
    from keras_hier import plots

    reps = np.array(results["representatives"]["W"])
    fig = plots.plot_distance_matrices(reps, tree(), name="W", distance="path")
    assert "chordal" in fig.axes[0].get_title() and "path" in fig.axes[1].get_title()
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()][0] in tree().classes


def test_large_c_results_keep_node_representatives_and_figures(tmp_path, monkeypatch):
    import keras

    from keras_hier import evaluate, evaluation, plots

    monkeypatch.setattr(evaluation, "MAX_REPORTED_REPRESENTATIVES", 4)
    monkeypatch.setattr(plots, "MAX_PLOT_CLASSES", 4)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6)).astype("float32")
    y = np.array([0, 1, 2, 3, 4, 6, 7] * 6)[:40]  # class 5 absent: its proto row is NaN, node B still has some
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(8, name="head")(keras.layers.Dense(4, name="embedding")(inputs)))
    out = evaluate(model, (x, y), tree(), ks=(1,), n_permutations=0)
    assert out["representatives_level"] == 0 and len(out["representatives"]["W"]) == 3  # A, B, C
    w = np.asarray(model.get_layer("head").kernel).T
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    a = w[:4].mean(0)
    np.testing.assert_allclose(out["representatives"]["W"][0], a / np.linalg.norm(a), atol=1e-5)
    report(out, tmp_path)
    for name in ("tree_W.png", "distances_W.png", "tree_proto.png", "distances_proto.png"):
        assert os.path.getsize(tmp_path / name) > 5000, name


def test_absent_classes_are_left_out_of_the_figures(results, tmp_path):
    res = dict(results)
    proto = [list(r) for r in results["representatives"]["proto"]]
    proto[7] = [None] * len(proto[7])  # as evaluate stores an absent class
    res["representatives"] = {"proto": proto}
    report(res, tmp_path)
    assert os.path.getsize(tmp_path / "distances_proto.png") > 5000
