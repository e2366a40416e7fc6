"""keras_hier.labels: class ids from user labels, NumPy (`class_ids`) and keras.ops (`sparse_labels`)."""

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from keras_hier.labels import class_ids, sparse_labels


def test_class_ids_accepts_ids_columns_whole_floats_and_one_hot():
    assert class_ids([2, 0, 1], 3).tolist() == [2, 0, 1]
    assert class_ids([[2], [0]], 3).tolist() == [2, 0]
    assert class_ids(np.array([2.0, 0.0]), 3).tolist() == [2, 0]
    assert class_ids(np.eye(3)[[1, 2]], 3).tolist() == [1, 2]
    assert class_ids(np.zeros(0, dtype=np.int64), 3).tolist() == []


@pytest.mark.parametrize("labels, match", [
    ([0, 3], "label 3 at index 1 is outside"),
    ([-1], "label -1 at index 0 is outside"),
    ([0.5], "label 0.5 at index 0 is not a whole class id"),
    ([np.nan], "label nan at index 0 is not a whole class id"),
    ([[0, 0, 0]], "one-hot row 0 is not a single 1"),
    ([[0.5, 0.5, 0]], "one-hot row 0"),
])
def test_class_ids_refuses_bad_labels_naming_the_source(labels, match):
    with pytest.raises(ValueError, match=f"train.csv: {match}"):
        class_ids(np.asarray(labels, dtype=np.float64), 3, source="train.csv")
    with pytest.raises(TypeError, match="numeric"):
        class_ids(["a"], 3, source="x")
    with pytest.raises(ValueError, match="3 labels for 2 samples"):
        class_ids([0, 1, 2], 3, num_samples=2)


def test_sparse_labels_forms_agree():
    for y in ([2, 0, 1], [[2], [0], [1]], np.array([2.0, 0.0, 1.0], np.float32), np.eye(3)[[2, 0, 1]]):
        got = sparse_labels(ops.convert_to_tensor(np.asarray(y)), 3, "loss")
        assert ops.convert_to_numpy(got).tolist() == [2, 0, 1]
        assert got.dtype == "int32"


def test_sparse_labels_raise_eagerly_with_the_callers_name():
    with pytest.raises(ValueError, match="MyLoss: label 5 at index 1 is outside"):
        sparse_labels(ops.convert_to_tensor([0, 5]), 3, "MyLoss")
    with pytest.raises(ValueError, match="MyLoss: label 2.5 at index 0 is not a whole class id"):
        sparse_labels(ops.convert_to_tensor([2.5]), 3, "MyLoss")
    with pytest.raises(ValueError, match=r"targets must be class ids \[B\]"):
        sparse_labels(ops.convert_to_tensor(np.zeros((2, 2, 2))), 3, "MyLoss")


def test_sparse_labels_mask_bad_labels_under_xla_and_assert_in_graphs():
    compiled = tf.function(lambda y: sparse_labels(y, 3, "MyLoss", with_valid=True), jit_compile=True)
    ids, valid = compiled(tf.constant([0.0, 1.5, 2.0, -1.0, 3.0, np.nan]))
    assert ids.numpy().tolist() == [0, 0, 2, 0, 0, 0]
    assert valid.numpy().tolist() == [True, False, True, False, False, False]
    ids, valid = compiled(tf.constant(np.eye(3, dtype=np.float32)[[1]] * [[1, 0, 0]] + [[0, 1, 0]]))
    assert valid.numpy().tolist() == [True] and ids.numpy().tolist() == [1]
    ids, valid = compiled(tf.constant([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    assert valid.numpy().tolist() == [False, True]
    graph = tf.function(lambda y: sparse_labels(y, 3, "MyLoss"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="MyLoss: a label is not a whole class id"):
        graph(tf.constant([0, 7]))
    assert graph(tf.zeros((0,), tf.int32)).numpy().tolist() == []
