"""keras_hier.factorisation: the factorised S equals the dense tree similarity; max distances without [C, C]."""

import numpy as np
import pytest

from conftest import random_tree
from keras_hier import Hierarchy, hierarchies
from keras_hier.similarity import tree_similarity
from keras_hier.factorisation import max_tree_distance, tree_factors
from roundtrip import make_hard_tree


def test_tree_factors_reconstruct_tree_similarity():
    for seed in range(5):
        h = random_tree(seed, num_classes=15)
        for rule, distance in [("exp", "path"), ("exp", "lca_height"), ("linear", "lca_height")]:
            f = tree_factors(h, rule, 0.7, distance)
            dense = tree_similarity(h, rule, 0.7, distance)
            np.testing.assert_allclose(f.dense(h), dense, atol=1e-6)
            np.testing.assert_allclose(f.row_sums(h), dense.sum(1), rtol=1e-5)
            assert np.all(f.weights >= 0)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("kind", ["path", "lca_height"])
def test_max_tree_distance_equals_the_matrix_maximum(seed, kind):
    h = random_tree(seed, num_classes=int(np.random.default_rng(seed).integers(1, 25)), max_depth=6, branching=3)
    assert max_tree_distance(h, kind) == int(h.distance_matrix(kind).max())


def test_max_tree_distance_on_named_trees():
    c100 = hierarchies.cifar100()
    assert (max_tree_distance(c100, "path"), max_tree_distance(c100, "lca_height")) == (8, 4)
    hard = make_hard_tree()
    for kind in ("path", "lca_height"):
        assert max_tree_distance(hard, kind) == int(hard.distance_matrix(kind).max())
    chain = Hierarchy.from_paths(["top/mid/a", "top/mid/b/c"])  # branching only below a chain
    assert max_tree_distance(chain, "path") == 3 and max_tree_distance(chain, "lca_height") == 2
    assert max_tree_distance(Hierarchy.from_paths(["only"]), "path") == 0


def test_bad_arguments_are_named():
    h = random_tree(1)
    with pytest.raises(ValueError, match="distance"):
        tree_factors(h, "exp", 1.0, "euclid")
    with pytest.raises(ValueError, match="rule"):
        tree_factors(h, "cubic")
    with pytest.raises(ValueError, match="beta"):
        tree_factors(h, "exp", 0.0)


def test_uniform_trees_need_no_column_scale():
    c100 = hierarchies.cifar100()
    f = tree_factors(c100, "exp", 0.8, "path")
    assert np.all(f.column_scale == 1.0)  # the constant exp(-beta depth) is folded into the weights
    np.testing.assert_allclose(f.row_sums(c100), tree_similarity(c100, "exp", 0.8, "path").sum(1), rtol=1e-5)
    rows = np.array([0, 17, 99])
    np.testing.assert_allclose(f.dense(c100)[rows], tree_similarity(c100, "exp", 0.8, "path")[rows], atol=1e-6)
