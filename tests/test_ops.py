"""keras_hier.ops: the historical names still resolve to their one implementation."""

from keras_hier import geometry, ops, tree_sums


def test_ops_names_are_the_geometry_and_tree_sum_functions():
    for name in ("l2_normalize", "cosine_logits_matrix", "squared_distance", "normface_logits", "proxydr_logits",
                 "float32", "check_distance", "EPSILON", "COS_CLIP", "DISTANCES"):
        assert getattr(ops, name) is getattr(geometry, name)
    for name in ("TreePlan", "tree_plan", "node_sums", "node_sums_transposed", "branching_sums", "path_sums",
                 "node_logsumexp"):
        assert getattr(ops, name) is getattr(tree_sums, name)
    assert sorted(ops.__all__) == sorted(set(ops.__all__))
