"""serving_graph: the decoders on TensorFlow primitives give decoding.decode's answers, in both layouts."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_hier import decoding, serving_graph
from keras_hier.hierarchy import Hierarchy


@st.composite
def ragged_hierarchies(draw):
    count = draw(st.integers(1, 9))
    paths = []
    for index in range(count):
        if paths and draw(st.integers(0, 4)) == 0:
            prefix = draw(st.sampled_from(paths))  # a class that also has a sub-class
        else:
            prefix = tuple(draw(st.lists(st.sampled_from(["a", "b", "other"]), max_size=3)))
        paths.append(prefix + (f"c{index}",))
    return Hierarchy(paths, [p[-1] for p in paths])


REGIMES = {  # dense: 0/1 membership matmuls + tf.math.top_k; segment: segment sums + blocked top-k;
    # class_major: the same on [C, B] scores, the expected cost ranked under the best nodes (CostTopK);
    # class_major_full: every class ranked; runs (argmax): the chosen chains summed from blocks of 3 classes
    "dense": {"dense_limit": 1 << 40, "topk_min_classes": 1 << 40, "chain_runs": False},
    "segment": {"dense_limit": 0, "topk_min_classes": 1, "chain_runs": False, "class_major_min_classes": 1 << 40},
    "class_major": {"dense_limit": 0, "topk_min_classes": 1, "chain_runs": False, "cost_top_k_ranker": True},
    "class_major_full": {"dense_limit": 0, "topk_min_classes": 1, "chain_runs": False, "cost_top_k_ranker": False},
    "runs": {"dense_limit": 0, "topk_min_classes": 1, "chain_runs": 3},
}


def served(h, logits, regime, **kwargs):
    forced = REGIMES[regime]
    fn = serving_graph.serving_decoder(h, **kwargs, **forced)
    return {key: v.numpy() for key, v in tf.function(fn, autograph=False)(tf.constant(logits)).items()}


@settings(max_examples=50, deadline=None)
@given(h=ragged_hierarchies(), decoder=st.sampled_from(decoding.DECODERS), cost=st.sampled_from(decoding.COSTS),
       threshold=st.floats(0.2, 0.95), k=st.integers(1, 4), seed=st.integers(0, 1000),
       regime=st.sampled_from(list(REGIMES)))
def test_serving_decoder_equals_decode_in_both_layouts(h, decoder, cost, threshold, k, seed, regime):
    logits = (np.random.default_rng(seed).normal(size=(6, h.num_classes)) * 3).astype(np.float32)
    out = served(h, logits, regime, decoder=decoder, cost=cost, backoff_threshold=threshold, top_k=k)
    ref = decoding.decode(logits, h, decoder, cost=cost, backoff_threshold=threshold, top_k=k)
    np.testing.assert_array_equal(out["class_ids"], ref["class_ids"])
    np.testing.assert_array_equal(out["top_k_ids"], ref["top_k_ids"])
    np.testing.assert_allclose(out["top_k_scores"], ref["top_k_scores"], rtol=1e-6)
    np.testing.assert_allclose(out["scores"], ref["scores"], rtol=1e-6)
    assert out["classes"].astype(str).tolist() == [h.classes[c] for c in ref["class_ids"]]
    for level in range(h.depth):
        np.testing.assert_array_equal(out[f"level_{level}_ids"], ref["level_ids"][:, level])
        np.testing.assert_allclose(out[f"level_{level}_scores"], ref["level_scores"][:, level], rtol=1e-5,
                                   atol=1e-7)
        names = np.array(h.level_names(level))[ref["level_ids"][:, level]]
        assert out[f"level_{level}_names"].astype(str).tolist() == names.tolist()
        if level:  # exact, no tolerance
            assert np.all(out[f"level_{level - 1}_scores"] >= out[f"level_{level}_scores"])
    np.testing.assert_array_equal(out["prediction_level"], ref["prediction_level"])
    np.testing.assert_allclose(out["prediction_score"], ref["prediction_score"], rtol=1e-5)
    all_names = [n for level in range(h.depth) for n in h.level_names(level)]
    names = [decoding.ROOT_NAME if n < 0 else all_names[n] for n in ref["prediction_node"]]
    assert out["prediction"].astype(str).tolist() == names


@pytest.mark.parametrize("regime", list(REGIMES))
def test_empty_batch_and_probability_inputs(regime):
    h = Hierarchy.from_paths(["a/b/x", "a/b/y", "a/z", "q"])
    decoder = "argmax" if regime == "runs" else "expected_cost"
    out = served(h, np.zeros((0, 4), np.float32), regime, decoder=decoder, backoff_threshold=0.5, top_k=2)
    assert out["class_ids"].shape == (0,) and out["top_k_classes"].shape == (0, 2) and out["prediction"].shape == (0,)
    assert out["level_1_scores"].shape == (0,)
    p = np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)
    out = served(h, p, regime, from_logits=False)
    np.testing.assert_allclose(out["scores"], [0.4]) and np.testing.assert_allclose(out["level_0_scores"], [0.6])


@pytest.mark.parametrize("width,k,block", [(10, 3, 4), (64, 5, 8), (1000, 5, 64), (7, 5, 2), (9, 5, 4)])
def test_blocked_top_k_equals_top_k_with_ties(width, k, block):
    x = np.random.default_rng(width).integers(0, 4, size=(20, width)).astype(np.float32)  # many ties
    values, ids = serving_graph.blocked_top_k(tf.constant(x), k, block)
    want_values, want_ids = tf.math.top_k(x, k)
    np.testing.assert_array_equal(ids.numpy(), want_ids.numpy())
    np.testing.assert_array_equal(values.numpy(), want_values.numpy())


def test_refuses_bad_arguments():
    h = Hierarchy.from_paths(["a/x", "b/y"])
    with pytest.raises(ValueError, match="decoder 'crm'"):
        serving_graph.serving_decoder(h, decoder="crm")
    with pytest.raises(ValueError, match="top_k"):
        serving_graph.serving_decoder(h, top_k=0)
    with pytest.raises(TypeError, match="keras_hier.Hierarchy"):
        serving_graph.serving_decoder(h.to_dict())


@pytest.mark.parametrize("block,shuffle", [(7, False), (7, True), (64, True), (1000, False)])
@pytest.mark.parametrize("gathered", [False, True])
def test_chain_runs_give_the_chains_marginals(block, shuffle, gathered, monkeypatch):
    """Chains summed from blocks (whole blocks gathered, or from block sums) equal the bottom-up NumPy marginals,
    on a ragged tree whose nodes hold several runs (shallow classes in between; shuffled class order), parents
    never below."""
    monkeypatch.setattr(serving_graph.ChainRuns, "GATHER_SHARE", 1e9 if gathered else 0.0)
    rng = np.random.default_rng(block)
    paths = [(f"g{c // 60}", f"f{c // 9}", f"c{c}") if c % 5 else (f"g{c // 60}", f"c{c}") for c in range(300)]
    if shuffle:
        paths = [paths[i] for i in rng.permutation(len(paths))]
    h = Hierarchy(paths, [p[-1] for p in paths])
    tables = decoding.DecoderTables(h)
    runs = serving_graph.ChainRuns(tables, block)
    assert (runs.middles is None) == gathered and (runs.wholes is None) != gathered
    p = rng.dirichlet(np.full(h.num_classes, 0.05), size=40).astype(np.float32)
    p[0] = 0.0
    p[0, 5] = 1.0  # zeros next to a one
    class_ids = rng.integers(0, h.num_classes, size=40).astype(np.int32)
    got = runs(tf.constant(p), tf.constant(class_ids), tf.constant(p[np.arange(40), class_ids])).numpy()
    levels = decoding.level_marginals(p, h)
    want = np.stack([levels[level][np.arange(40), h.ancestors(level)[class_ids]] for level in range(h.depth)], 1)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    assert np.all(got[:, :-1] >= got[:, 1:])
    np.testing.assert_array_equal(got[:, -1], p[np.arange(40), class_ids])


def test_level_runs_cover_every_class_once():
    ancestors = np.random.default_rng(0).integers(0, 12, size=500)
    ancestors[ancestors == 3] = 4  # a node id with no class is an empty row
    table = serving_graph.level_runs(ancestors, 16)
    covered = np.zeros(500, int)
    for node in range(table.shape[0]):
        for head, lo, hi, last, _, end, mid_lo, mid_hi in table[node]:
            classes = [head * 16 + c for c in range(lo, hi)] + [last * 16 + c for c in range(end)] + \
                list(range(mid_lo * 16, mid_hi * 16))
            assert np.all(ancestors[classes] == node)
            covered[classes] += 1
    np.testing.assert_array_equal(covered, 1)


def test_chain_runs_gather_whole_blocks_of_a_contiguous_tree():
    h = Hierarchy([(f"g{c // 50}", f"f{c // 10}", f"c{c}") for c in range(200)], [f"c{c}" for c in range(200)])
    runs = serving_graph.ChainRuns(decoding.DecoderTables(h), 10)
    assert runs.middles is None and runs.num_runs == 2
    # g1 (classes 50..99): first and last blocks as edge rows, the 3 between gathered whole
    np.testing.assert_array_equal(runs.wholes[0][1], [[6, 1], [7, 1], [8, 1]])
    np.testing.assert_array_equal(runs.edges[0][1], [[5, 0, 10], [9, 0, 10]])


@pytest.mark.parametrize("cost", decoding.COSTS)
@pytest.mark.parametrize("logits", ["ties", "zeros", "peaked"])
def test_class_major_expected_cost_with_ties(cost, logits):
    """Class-major expected cost (blocked top-k over [C, B]) gives decode's ids, ties included."""
    rng = np.random.default_rng(3)
    paths = [(f"g{c // 40}", f"f{c // 6}", f"c{c}") if c % 7 else (f"g{c // 40}", f"c{c}") for c in range(200)]
    h = Hierarchy(paths, [p[-1] for p in paths])
    x = {"ties": rng.integers(0, 3, size=(30, 200)), "zeros": np.zeros((30, 200)),
         "peaked": rng.normal(size=(30, 200)) * 6}[logits].astype(np.float32)
    for k in (None, 1, 4):
        out = served(h, x, "class_major", decoder="expected_cost", cost=cost, top_k=k)
        ref = decoding.decode(x, h, "expected_cost", cost=cost, top_k=k)
        np.testing.assert_array_equal(out["class_ids"], ref["class_ids"])
        np.testing.assert_allclose(out["scores"], ref["scores"], rtol=1e-6)
        if k:
            np.testing.assert_array_equal(out["top_k_ids"], ref["top_k_ids"])


def wide_ragged_tree(num_classes=3000, seed=0):
    """Three levels above the classes, every 7th class one level shallower, class ids shuffled (so a node's
    classes are neither contiguous nor sorted)."""
    ids = np.random.default_rng(seed).permutation(num_classes)
    paths = [(f"g{c // 300}", f"f{c // 9}", f"c{c}") if c % 7 else (f"g{c // 300}", f"c{c}") for c in ids]
    return Hierarchy(paths, [p[-1] for p in paths])


@pytest.mark.parametrize("cost", decoding.COSTS)
@pytest.mark.parametrize("batch", [1, 40])  # the unsorted and the sorted segment maximum
@pytest.mark.parametrize("general_weights", [False, True])
def test_cost_top_k_ranks_under_the_best_nodes_only(cost, batch, general_weights, monkeypatch):
    """CostTopK's candidates alone give the k best classes of the whole ranking on peaked outputs (ties
    included), and that ranking (`decoding.negated_cost`) is never computed (eager cond: only the branch
    taken runs)."""
    h = wide_ragged_tree()
    tables = decoding.DecoderTables(h, dense_limit=0)
    ops = serving_graph._ClassMajorOps()
    assert serving_graph.CostTopK.applies(tables, cost)
    ranker = serving_graph.CostTopK(tables, cost, ops)
    if general_weights:
        assert ranker.node_weight is not None
        ranker.node_weight = None  # the leaf weights multiplied before the maximum, as for any tree
    x = (np.random.default_rng(1).normal(size=(batch, h.num_classes)) * 8).astype(np.float32)
    p = tf.transpose(tf.nn.softmax(x))
    levels = decoding.marginals(p, tables, ops)

    def refused(*args):
        raise AssertionError("the whole ranking was computed")

    ranking = decoding.negated_cost(p, levels, tables, cost, ops)  # the whole ranking, same float operations
    for k in (1, 5, 17):
        ref = ops.top_k(ranking, k)[1].numpy()
        with monkeypatch.context() as patch:
            patch.setattr(decoding, "negated_cost", refused)
            ids = ranker(p, levels, k).numpy()
        np.testing.assert_array_equal(ids, ref)


@pytest.mark.parametrize("logits", ["zeros", "ties", "near_uniform"])
def test_cost_top_k_falls_back_on_ties_across_nodes(logits):
    """Outputs whose node bounds tie beyond the margin take the whole ranking: the ids of the graph that
    ranks every class. (Against NumPy's `decode`, exact ties can differ by float summation order.)"""
    h = wide_ragged_tree()
    rng = np.random.default_rng(2)
    x = {"zeros": np.zeros((20, h.num_classes)), "ties": rng.integers(0, 2, size=(20, h.num_classes)),
         "near_uniform": rng.normal(size=(20, h.num_classes)) * 1e-3}[logits].astype(np.float32)
    for k in (None, 3, 40):
        out = served(h, x, "class_major", decoder="expected_cost", top_k=k)
        ref = served(h, x, "class_major_full", decoder="expected_cost", top_k=k)
        np.testing.assert_array_equal(out["class_ids"], ref["class_ids"])
        if k:
            np.testing.assert_array_equal(out["top_k_ids"], ref["top_k_ids"])


def test_cost_top_k_checks_its_candidates_on_tied_small_trees(monkeypatch):
    """With one node of margin, tied outputs on small shuffled trees take both branches; every answer
    equals the whole ranking's."""
    monkeypatch.setattr(serving_graph.CostTopK, "TIE_MARGIN", 1)
    whole = decoding.negated_cost
    branches = set()
    for seed in range(30):
        rng = np.random.default_rng(seed)
        paths = [(f"g{c % 2}", f"f{c % 5}", f"c{c}") for c in rng.permutation(14)]
        h = Hierarchy(paths, [p[-1] for p in paths])
        tables, ops = decoding.DecoderTables(h, dense_limit=0), serving_graph._ClassMajorOps()
        ranker = serving_graph.CostTopK(tables, "path", ops)
        p = tf.transpose(tf.nn.softmax(rng.integers(0, 3, size=(4, 14)).astype(np.float32)))
        levels = decoding.marginals(p, tables, ops)
        for k in (1, 2, 3):
            calls = []
            monkeypatch.setattr(decoding, "negated_cost", lambda *args, calls=calls: calls.append(1) or whole(*args))
            ids = ranker(p, levels, k).numpy()
            monkeypatch.setattr(decoding, "negated_cost", whole)
            np.testing.assert_array_equal(ids, ops.top_k(whole(p, levels, tables, "path", ops), k)[1].numpy())
            branches.add(bool(calls))
    assert branches == {False, True}


def test_cost_top_k_on_a_tree_with_fewer_nodes_than_k():
    paths = [("a", "x", f"c{c}") for c in range(6)] + [("b", "y", f"d{c}") for c in range(5)]
    h = Hierarchy(paths, [p[-1] for p in paths])
    x = np.random.default_rng(0).normal(size=(4, h.num_classes)).astype(np.float32)
    out = served(h, x, "class_major", decoder="expected_cost", top_k=3)
    np.testing.assert_array_equal(out["top_k_ids"], decoding.decode(x, h, "expected_cost", top_k=3)["top_k_ids"])


def test_cost_top_k_is_skipped_where_its_candidates_would_outnumber_a_quarter_of_the_classes():
    h = wide_ragged_tree()
    tables = decoding.DecoderTables(h, dense_limit=0)
    ranker = serving_graph.CostTopK(tables, "path", serving_graph._ClassMajorOps())
    width = ranker.children.shape[1]
    assert ranker.pays(5) and not ranker.pays(h.num_classes // (4 * width) + 1)
    x = np.random.default_rng(0).normal(size=(3, h.num_classes)).astype(np.float32)
    k = h.num_classes // (4 * width) + 1  # served by the whole ranking by default, same ids
    out = serving_graph.serving_decoder(h, decoder="expected_cost", top_k=k, dense_limit=0)(tf.constant(x))
    np.testing.assert_array_equal(out["top_k_ids"].numpy(), served(h, x, "class_major_full", decoder="expected_cost",
                                                                   top_k=k)["top_k_ids"])


# ------------------------------------------------------------------ image bytes
def _encoded_images(count, seed=0):
    """Small random RGB images of several sizes, encoded as JPEG and PNG in turn."""
    rng = np.random.default_rng(seed)
    pixels = [rng.integers(0, 256, (int(rng.integers(5, 30)), int(rng.integers(5, 30)), 3), dtype=np.uint8)
              for _ in range(count)]
    encoded = [(tf.io.encode_png if i % 2 else tf.io.encode_jpeg)(p).numpy() for i, p in enumerate(pixels)]
    return encoded


def _decode(encoded, limit=10_000, dtype="float32"):
    fn = tf.function(lambda b: serving_graph.decode_images(b, (8, 6), 3, max_image_pixels=limit, dtype=dtype),
                     input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    return fn(tf.constant(encoded, tf.string)).numpy()


@pytest.mark.parametrize("count", [1, 2, 5])
def test_decode_images_decodes_and_resizes_each_image(count):
    encoded = _encoded_images(count)
    expected = [tf.image.resize(tf.io.decode_image(e, channels=3, expand_animations=False), (8, 6)).numpy() / 255.0
                for e in encoded]
    np.testing.assert_allclose(_decode(encoded), np.stack(expected), rtol=1e-6, atol=1e-6)
    as_uint8 = _decode(encoded, dtype="uint8")
    assert as_uint8.dtype == np.uint8
    np.testing.assert_array_equal(as_uint8, np.clip(np.round(np.stack(expected) * 255.0), 0, 255))
    assert _decode([]).shape == (0, 8, 6, 3)


@pytest.mark.parametrize("count, bad", [(1, 0), (2, 0), (3, 1), (4, 3)])
@pytest.mark.parametrize("damage", ["truncated", "header_only"])
def test_decode_images_names_the_image_the_decoder_refuses(count, bad, damage):
    encoded = _encoded_images(count, seed=bad)
    encoded[bad] = encoded[bad][:len(encoded[bad]) // 2] if damage == "truncated" else encoded[bad][:20]
    pattern = rf"\[image_bytes\] \[{bad}\] \[could not be decoded \(corrupt or truncated data\)\]"
    if count == 1:  # a single image: the decoder's own message
        pattern = r"Invalid (JPEG|PNG) data"
    with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
        _decode(encoded)


def test_decode_images_names_the_first_bad_image_of_each_kind():
    encoded = _encoded_images(4)
    every_one_truncated = [e[:len(e) // 2] for e in encoded]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[image_bytes\] \[0\] \[could not be decoded"):
        _decode(every_one_truncated)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[image_bytes\] \[2\] \[is not a JPEG, PNG, GIF or BMP"):
        _decode(encoded[:2] + [b"junk", b"more junk"])
    big = tf.io.encode_png(np.zeros((40, 50, 3), np.uint8)).numpy()
    for batch in ([encoded[0], big, big], [big], [encoded[0], big, b"junk"]):
        index = batch.index(big)
        with pytest.raises(tf.errors.InvalidArgumentError, match=rf"\[image_bytes\] \[{index}\] \[has\] \[2000\] \[pixels"):
            _decode(batch, limit=1999)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[image_bytes\] \[0\] \[is not a JPEG"):
        _decode([b"junk"])
    assert _decode([encoded[0], big], limit=2000).shape == (2, 8, 6, 3)
