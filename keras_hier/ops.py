"""Backend-agnostic numeric building blocks in `keras.ops` (compatibility names).

The formulas live in their own modules; this module keeps the historical
`keras_hier.ops.<name>` spellings working:

- sphere geometry and the head logit forms (`l2_normalize`,
  `cosine_logits_matrix`, `squared_distance`, `normface_logits`,
  `proxydr_logits`, `float32`, `EPSILON`, `COS_CLIP`, `DISTANCES`,
  `check_distance`): `keras_hier.geometry`;
- sums over the nodes of a class tree (`TreePlan`, `tree_plan`,
  `node_sums`, `path_sums`, `node_logsumexp`, ...): `keras_hier.tree_sums`.

New code imports from those modules.
"""

from keras_hier.geometry import (COS_CLIP, DISTANCES, EPSILON, check_distance, cosine_logits_matrix, float32,
                                 l2_normalize, normface_logits, proxydr_logits, squared_distance)
from keras_hier.tree_sums import (TreePlan, branching_sums, node_logsumexp, node_sums, node_sums_transposed,
                                  path_sums, tree_plan)

__all__ = ["l2_normalize", "node_sums", "node_sums_transposed", "branching_sums", "path_sums", "node_logsumexp",
           "tree_plan", "TreePlan", "cosine_logits_matrix", "squared_distance", "normface_logits",
           "proxydr_logits", "float32", "check_distance", "EPSILON", "COS_CLIP", "DISTANCES"]
