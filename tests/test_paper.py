"""The paper-grid aggregation: table values and the paired test."""

import json
import math
import os

import numpy as np
from scipy import stats

from keras_hier.recipes import paper


def fake_results(accuracy, classwise):
    return {"classification": {"accuracy": accuracy, "ahc": 1 - accuracy, "ahd_at_k": 2.0, "hp_at_k": 0.5},
            "inference": {"W": {"spearman_classwise": classwise, "spearman_pairwise": classwise / 2},
                          "proto": {"spearman_classwise": classwise}},
            "retrieval": {"ahs_250": 0.7}}


def test_grid_matches_the_paper():
    cells = paper.grid()
    names = [c[0] for c in cells]
    assert names[0] == "softmax" and names[-1] == "corr"
    assert len(cells) == 1 + 2 * 6 + 1
    assert dict((c[0], c[2]) for c in cells)["proxydr-mds+dynamic"] == {"proxy_mode": "mds", "dynamic_scale": True}


def test_aggregate_and_paired_test(tmp_path):
    rng = np.random.default_rng(0)
    nf = rng.uniform(0.3, 0.5, 3)
    pd = nf + np.array([0.10, 0.12, 0.07])
    for cell, values in [("normface-standard", nf), ("proxydr-standard", pd)]:
        for seed, value in enumerate(values):
            run = tmp_path / cell / f"seed{seed}"
            os.makedirs(run / "report")
            (run / "summary.json").write_text("{}")
            (run / "report" / "results.json").write_text(json.dumps(fake_results(0.8, float(value))))
    # an unfinished run (no summary.json) is ignored
    os.makedirs(tmp_path / "proxydr-standard" / "seed9" / "report")
    runs = paper.collect(str(tmp_path))
    assert sorted(runs["proxydr-standard"]) == [0, 1, 2]
    rows, tests = paper.aggregate(runs)
    mean, std, n = rows["proxydr-standard"]["W_classwise"]
    assert n == 3 and math.isclose(mean, pd.mean()) and math.isclose(std, pd.std(ddof=1))
    diff, p = tests["standard"]["W_classwise"]
    assert math.isclose(diff, (pd - nf).mean())
    assert math.isclose(p, stats.ttest_rel(pd, nf).pvalue)
    assert math.isnan(rows["proxydr-standard"]["proto_pairwise"][0])  # absent measure
    text = paper.write_table(str(tmp_path))
    assert "proxydr-standard" in text and "p=" in text
    assert (tmp_path / "table.md").read_text() == text


def test_overrides_and_clean_errors(tmp_path, capsys):
    assert paper.parse_overrides(["epochs=5", "dataset=/d", "augment=false"]) == \
        {"epochs": 5, "dataset": "/d", "augment": False}
    assert paper.main(["--table-only", "--out", str(tmp_path / "grid")]) == 0
    assert (tmp_path / "grid" / "table.md").exists()
    assert paper.main(["epochs=0", "--out", str(tmp_path / "grid"), "--heads", "softmax", "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert "epochs must be an integer >= 1" in err and "Traceback" not in err
    assert not (tmp_path / "grid" / "softmax").exists()
