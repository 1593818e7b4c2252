"""serving.inference.ndarray: what tf.make_ndarray answers, for every encoding a server may use.

TF Serving answers in typed fields by default (float_val, int_val, ...; AsProtoField in
tensorflow/core/framework/tensor.cc); ``ndarray`` reads packed ones from their wire bytes and
must agree with ``tf.make_ndarray`` everywhere, falling back to it where it cannot.
"""
import numpy as np
import pytest

from trainer import tf_env  # noqa: F401  (before TensorFlow)
import tensorflow as tf  # noqa: E402
from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: E402

from serving import inference  # noqa: E402

RNG = np.random.default_rng(3)
ARRAYS = {
    "probabilities": RNG.random((2, 256, 256)).astype(np.float32),
    "mask": (RNG.random((2, 256, 256)) > 0.5).astype(np.int32),
    "negative_and_large_ints": RNG.integers(-300, 300, (3, 5)).astype(np.int32),
    "int64": RNG.integers(0, 100, (4,)).astype(np.int64),
    "bools": RNG.random((3, 3)) > 0.5,
    "doubles": RNG.random((2, 3)),
    "scalar": np.float32(1.5),
    "empty": np.zeros((0, 256, 256), np.float32),
    "strings": np.array([b"a", b"bc"]),
}


def element_by_element(array):
    """The typed field filled value by value, as a server written without shortcuts would."""
    proto = tf.make_tensor_proto(array)
    field = {np.float32: "float_val", np.int32: "int_val", np.int64: "int64_val",
             np.bool_: "bool_val", np.float64: "double_val"}.get(array.dtype.type)
    if field is None:
        return proto
    typed = tensor_pb2.TensorProto(dtype=proto.dtype, tensor_shape=proto.tensor_shape)
    getattr(typed, field).extend(array.ravel().tolist())
    return typed


@pytest.mark.parametrize("name", sorted(ARRAYS))
@pytest.mark.parametrize("encode", [
    lambda a: inference.tensor_proto(a, inference.AS_PROTO_FIELD),
    lambda a: inference.tensor_proto(a, inference.AS_TENSOR_CONTENT),
    element_by_element,
], ids=["proto_field", "tensor_content", "element_by_element"])
def test_agrees_with_make_ndarray(name, encode):
    proto = encode(np.asarray(ARRAYS[name]))
    # Through the wire, as a client receives it.
    proto = tensor_pb2.TensorProto.FromString(proto.SerializeToString())
    expected = tf.make_ndarray(proto)
    got = inference.ndarray(proto)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_a_single_value_for_a_larger_shape_is_broadcast_as_tensorflow_does():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    proto.tensor_shape.dim.add(size=4)
    proto.float_val.append(2.5)
    np.testing.assert_array_equal(inference.ndarray(proto), np.full(4, 2.5, np.float32))
