"""Tests of the similarity-matrix builders (NumPy references)."""

import numpy as np
import pytest

from keras_hier import Hierarchy
from keras_hier.similarity import ordinal_similarity, similarity_from_scores, tree_similarity, validate_similarity


def test_ordinal():
    s = ordinal_similarity(4, 0.5)
    i, j = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    np.testing.assert_allclose(s, 0.5 ** np.abs(i - j))
    np.testing.assert_array_equal(ordinal_similarity(3, 0.0), np.eye(3))
    with pytest.raises(ValueError, match="r must be in"):
        ordinal_similarity(3, 1.0)


def test_from_scores_and_embeddings():
    sim = np.array([[1.0, 0.6, -0.2], [0.6, 1.0, 0.3], [-0.2, 0.3, 1.0]])
    s = similarity_from_scores(sim, lower=0.2)
    expected = np.maximum(0, (sim - 0.2) / 0.8)
    np.fill_diagonal(expected, 1)
    np.testing.assert_allclose(s, expected, rtol=1e-6)
    vectors = np.random.default_rng(0).normal(size=(5, 3))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(similarity_from_scores(embeddings=vectors), np.clip(unit @ unit.T, 0, 1), atol=1e-6)
    with pytest.raises(ValueError, match=r"scores\[0, 1\] = 2.0 is outside"):
        similarity_from_scores(np.array([[1, 2], [0, 1.0]]))
    with pytest.raises(ValueError, match="class 1 is the zero vector"):
        similarity_from_scores(embeddings=np.array([[1.0, 0], [0, 0]]))


@pytest.mark.parametrize("matrix, message", [
    ([[1, 0.5], [0.5]], "non-numeric|square"),
    ([[1, "x"], [0, 1]], r"non-numeric entry at \[0, 1\] \('x'\)"),
    ([[1, 1.5], [0, 1]], r"\[0, 1\] = 1.5 is outside \[0, 1\]"),
    ([[1, -0.1], [0, 1]], r"\[0, 1\] = -0.1 is outside"),
    ([[0.9, 0], [0, 1]], r"\[0, 0\] = 0.9; the diagonal must be 1"),
    ([[1, np.nan], [0, 1]], "finite"),
    (np.ones((2, 3)), "square"),
])
def test_validation_errors(matrix, message):
    with pytest.raises(ValueError, match=message):
        validate_similarity(matrix)


def test_validation_class_count():
    with pytest.raises(ValueError, match="2x2 but there are 3 classes"):
        validate_similarity(np.eye(2), num_classes=3)


def test_tree_rules():
    h = Hierarchy.from_paths(["a/x", "a/y", "b/z"])
    t = np.array([[0, 2, 4], [2, 0, 4], [4, 4, 0]], dtype=float)
    np.testing.assert_allclose(tree_similarity(h, "exp", beta=1.0), np.exp(-t), rtol=1e-6)
    np.testing.assert_allclose(tree_similarity(h, "linear"), 1 - t / 4, rtol=1e-6)
    np.testing.assert_allclose(tree_similarity(h, lambda d: 1 / (1 + d)), 1 / (1 + t), rtol=1e-6)
    np.testing.assert_allclose(tree_similarity(h, "exp", distance="lca_height"), np.exp(-t / 2), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown tree similarity rule"):
        tree_similarity(h, "cosine")
    with pytest.raises(ValueError, match="diagonal must be 1"):
        tree_similarity(h, lambda d: 0.5 + 0 * d)
