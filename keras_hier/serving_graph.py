"""The TensorFlow graph that decodes logits inside an exported SavedModel.

`keras_hier.decoding` is the reference decoder (in `keras.ops`, any backend).
Serving is TensorFlow-only and latency-bound (per-op overhead dominates at
batch 1), so the export builds a fused TF graph with its constant tables
computed once at export time. It returns exactly what
`keras_hier.decoding.decode` returns (tests/test_export.py checks that on
random ragged trees, both node-sum methods included).
"""

import numpy as np

from keras_hier import decoding

__all__ = ["serving_decoder", "blocked_top_k"]

_DENSE_LIMIT = 1 << 18  # membership-matrix entries up to which node sums are dense matmuls
_TOPK_MIN_CLASSES = 1024  # from this many classes top-k is blocked (tf.math.top_k is slow on wide rows)
_TOPK_BLOCK = 64


def blocked_top_k(x, k, block):
    """`tf.math.top_k(x, k)` (same values, ids and tie order) in two cheap stages.

    The k best entries lie in the k blocks of `block` columns with the best
    maxima (ties: lower block first, as top_k keeps lower indices first); the
    chosen blocks are gathered in index order so that ties still resolve to the
    lower index.
    """
    import tensorflow as tf

    width = x.shape[-1]
    groups = -(-width // block)
    if groups < k:
        return tf.math.top_k(x, k)
    pad = groups * block - width
    if pad:
        x = tf.pad(x, [[0, 0], [0, pad]], constant_values=float("-inf"))
    blocks = tf.reshape(x, [-1, groups, block])
    _, best = tf.math.top_k(tf.reduce_max(blocks, axis=2), k)
    best = tf.sort(best, axis=1)
    candidates = tf.reshape(tf.gather(blocks, best, batch_dims=1), [-1, k * block])
    values, where = tf.math.top_k(candidates, k)
    return values, tf.gather(best, where // block, batch_dims=1) * block + where % block


def serving_decoder(hierarchy, *, decoder, cost, backoff_threshold, top_k, from_logits,
                     dense_limit=None, topk_min_classes=None):
    """TF-native `decoding.decode` for the serving graph: logits -> the signature's outputs.

    Same decisions and values as `keras_hier.decoding.decode` (up to float
    summation order), with few ops (batch-1 latency is per-op overhead) and
    constant tables built once here:
    - node marginals bottom-up (parent = sum of its children, so a parent's
      marginal is never below its child's, exactly), as matmuls with 0/1
      membership matrices when those are small, else as segment sums on the
      transposed [nodes, batch] layout;
    - the chain of the chosen class is read with one gather of per-class tables;
    - back-off: the chain's marginals only decrease with depth, so the levels
      reaching the threshold are a prefix: the answer is at (count - 1);
    - top-k blocked for wide rows (`blocked_top_k`).
    """
    import tensorflow as tf

    dense_limit = _DENSE_LIMIT if dense_limit is None else dense_limit
    topk_min_classes = _TOPK_MIN_CLASSES if topk_min_classes is None else topk_min_classes
    t = decoding._tables(hierarchy)
    num_classes, depth = hierarchy.num_classes, hierarchy.depth
    top_k = None if top_k is None else min(int(top_k), num_classes)
    sizes, ancestors, parents = t["sizes"], t["ancestors"], t["parents"]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)
    classes = np.arange(num_classes, dtype=np.int32)
    # Columns of the stacked marginals [P_0, ..., P_{depth-2}, p]: the class level in class order.
    chain_cols = np.stack([offsets[level] + ancestors[level] for level in range(depth - 1)]
                          + [offsets[-1] + classes], axis=1).astype(np.int32)
    level_ids = tf.constant(np.stack(ancestors, axis=1).astype(np.int32))
    # Names: column 0 is the root (back-off to nothing), then the chain's node names.
    all_names = tf.constant([n for level in range(depth) for n in hierarchy.level_names(level)]
                            + [decoding.ROOT_NAME], dtype=tf.string)
    name_cols = tf.constant(np.concatenate([np.full((num_classes, 1), hierarchy.num_node_ids, np.int32),
                                            offsets[None, :] + np.stack(ancestors, axis=1)], axis=1))
    class_names = tf.constant(list(hierarchy.classes), dtype=tf.string)
    chain_cols = tf.constant(chain_cols)
    leaf_depths = tf.constant(t["leaf_depths"])
    # Reductions (ids, rows, cols): classes -> level depth-2, then level l -> l-1 down to level 0.
    steps = [] if depth == 1 else [(ancestors[depth - 2], num_classes, sizes[depth - 2])] + \
        [(parents[level], sizes[level], sizes[level - 1]) for level in range(depth - 2, 0, -1)]
    dense = sum(rows * cols for _, rows, cols in steps) <= dense_limit

    def onehot(ids, rows, cols):
        matrix = np.zeros((rows, cols), np.float32)
        matrix[np.arange(rows), ids] = 1.0
        return matrix

    if dense:
        matrices = [tf.constant(onehot(ids, rows, cols)) for ids, rows, cols in steps]
    else:
        first = np.argsort(ancestors[depth - 2], kind="stable").astype(np.int32)
        first_ids = tf.constant(ancestors[depth - 2][first])
        first = tf.constant(first)
        seg_ids = [tf.constant(ids) for ids, _, _ in steps]

    def marginals(p):
        """[P_0, ..., P_{depth-2}] (batch-major when dense, else node-major [n_l, B])."""
        levels = []
        if dense:
            current = p
            for matrix in matrices:
                current = tf.matmul(current, matrix)
                levels.append(current)
        elif steps:
            current = tf.math.segment_sum(tf.gather(tf.transpose(p), first), first_ids)
            levels.append(current)
            for (_, _, cols), ids in zip(steps[1:], seg_ids[1:]):
                current = tf.math.unsorted_segment_sum(current, ids, cols)
                levels.append(current)
        return levels[::-1]

    if decoder == "expected_cost":
        # Ranked by -E, so the weights are negated here (exact); the term e_coef * E[depth] is the same
        # for every class of a row, so it is left out of the ranking.
        bias, _, weights = decoding._cost_weights(hierarchy, cost)
        bias, weights = -bias, [-w for w in weights]
        leaf_weight = tf.constant(weights[-1][ancestors[-1]][None, :])
        bias = tf.constant(bias[None, :])
        if dense:
            spread = [tf.constant(onehot(ids, rows, cols).T) for ids, rows, cols in steps[::-1]]
            level_weights = [tf.constant(w[None, :]) for w in weights[:-1]]
        else:
            gathers = [tf.constant(parents[level]) for level in range(1, depth - 1)] + \
                [tf.constant(ancestors[depth - 2])]
            level_weights = [tf.constant(w[:, None]) for w in weights[:-1]]

    def negated_cost(p, levels):
        """[B, C] -(expected cost - e_coef * E[depth]), summed top-down as in `decoding.expected_cost`."""
        if depth == 1:
            running = p * leaf_weight
        elif dense:
            running = levels[0] * level_weights[0]
            for level in range(1, depth - 1):
                running = tf.matmul(running, spread[level - 1]) + levels[level] * level_weights[level]
            running = tf.matmul(running, spread[-1]) + p * leaf_weight
        else:
            running = levels[0] * level_weights[0]
            for level in range(1, depth - 1):
                running = tf.gather(running, gathers[level - 1]) + levels[level] * level_weights[level]
            running = tf.transpose(tf.gather(running, gathers[-1])) + p * leaf_weight
        return running + bias

    def rank(x):
        if top_k is None:
            return None, tf.argmax(x, axis=-1, output_type=tf.int32)
        if num_classes >= topk_min_classes:
            values, ids = blocked_top_k(x, top_k, _TOPK_BLOCK)
        else:
            values, ids = tf.math.top_k(x, top_k)
        return (values, ids), ids[:, 0]

    def decode(logits):
        logits = tf.cast(logits, tf.float32)
        p = tf.nn.softmax(logits, axis=-1) if from_logits else logits
        levels = marginals(p)
        if decoder == "argmax":
            top, class_ids = rank(p)
            top_ids = None if top is None else top[1]
            top_scores = None if top is None else top[0]
        else:
            top, class_ids = rank(negated_cost(p, levels))
            top_ids = None if top is None else top[1]
            top_scores = None if top is None else tf.gather(p, top_ids, batch_dims=1)
        scores = top_scores[:, 0] if top is not None else tf.gather(p, class_ids[:, None], batch_dims=1)[:, 0]
        if dense:
            stacked = tf.concat(levels + [p], axis=1)
            level_scores = tf.gather(stacked, tf.gather(chain_cols, class_ids), batch_dims=1)
        elif levels:
            upper = tf.concat(levels, axis=0)  # [nodes above the classes, B]
            cols = tf.gather(chain_cols[:, :-1], class_ids)
            rows = tf.broadcast_to(tf.range(tf.shape(p)[0])[:, None], tf.shape(cols))
            level_scores = tf.concat([tf.gather_nd(upper, tf.stack([cols, rows], axis=-1)), scores[:, None]], 1)
        else:
            level_scores = scores[:, None]
        names = tf.gather(all_names, tf.gather(name_cols, class_ids))  # [B, depth + 1], root first
        result = {"classes": tf.gather(class_names, class_ids), "class_ids": class_ids, "scores": scores}
        if top is not None:
            result.update(top_k_ids=top_ids, top_k_scores=top_scores, top_k_classes=tf.gather(class_names, top_ids))
        ids = tf.unstack(tf.gather(level_ids, class_ids), num=depth, axis=1)
        level_names = tf.unstack(names[:, 1:], num=depth, axis=1)
        level_values = tf.unstack(level_scores, num=depth, axis=1)
        for level in range(depth):
            result[f"level_{level}_ids"] = ids[level]
            result[f"level_{level}_names"] = level_names[level]
            result[f"level_{level}_scores"] = level_values[level]
        if backoff_threshold is not None:
            reaching = tf.reduce_sum(tf.cast(level_scores >= backoff_threshold, tf.int32), axis=1)
            count = tf.minimum(reaching, tf.gather(leaf_depths, class_ids))  # levels on the chain reaching it
            result["prediction"] = tf.gather(names, count, batch_dims=1)
            result["prediction_level"] = count - 1
            result["prediction_score"] = tf.gather(tf.pad(level_scores, [[0, 0], [1, 0]], constant_values=1.0),
                                                   count, batch_dims=1)
        return result

    return decode
