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


def served(h, logits, regime, **kwargs):
    # dense: 0/1 membership matmuls + tf.math.top_k; segment: sorted segment sums + blocked top-k
    forced = {"dense_limit": 1 << 40, "topk_min_classes": 1 << 40} if regime == "dense" else \
        {"dense_limit": 0, "topk_min_classes": 1}
    fn = serving_graph.serving_decoder(h, **kwargs, **forced)
    return {key: v.numpy() for key, v in tf.function(fn, autograph=False)(tf.constant(logits)).items()}


@settings(max_examples=25, deadline=None)
@given(h=ragged_hierarchies(), decoder=st.sampled_from(decoding.DECODERS), cost=st.sampled_from(decoding.COSTS),
       threshold=st.floats(0.2, 0.95), k=st.integers(1, 4), seed=st.integers(0, 1000),
       regime=st.sampled_from(["dense", "segment"]))
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


@pytest.mark.parametrize("regime", ["dense", "segment"])
def test_empty_batch_and_probability_inputs(regime):
    h = Hierarchy.from_paths(["a/b/x", "a/b/y", "a/z", "q"])
    out = served(h, np.zeros((0, 4), np.float32), regime, decoder="expected_cost", backoff_threshold=0.5, top_k=2)
    assert out["class_ids"].shape == (0,) and out["top_k_classes"].shape == (0, 2) and out["prediction"].shape == (0,)
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
