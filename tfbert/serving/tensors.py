"""numpy <-> TensorProto, as TF Serving reads requests and writes responses.

Requests are parsed defensively: a TensorProto comes from the network, so its shape and
value count are checked before anything is allocated (a 12-byte proto can claim a
terabyte-sized shape). Responses are written with the typed `*_val` fields, like TF
Serving's default `AsProtoField`, so clients that read `outputs["x"].float_val` work.
"""

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from tfbert.serving.serving_error import invalid_argument

# A request may give fewer values than its shape holds (TF repeats the last one, or fills
# zeros); refuse to materialise more than this many bytes that way.
_MAX_PADDED_BYTES = 64 << 20

# Which repeated field carries each dtype's values in a TensorProto.
_VALUE_FIELD = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_BFLOAT16: "half_val",
    types_pb2.DT_COMPLEX64: "scomplex_val",
    types_pb2.DT_COMPLEX128: "dcomplex_val",
}
# Complex values are stored as (real, imaginary) pairs.
_VALUES_PER_ELEMENT = {types_pb2.DT_COMPLEX64: 2, types_pb2.DT_COMPLEX128: 2}


def dtype_name(dtype_enum):
    """TF's DataTypeString: DT_FLOAT -> 'float', DT_STRING -> 'string', DT_INT32 -> 'int32'."""
    try:
        return types_pb2.DataType.Name(dtype_enum)[3:].lower()
    except ValueError:
        return f"unknown dtype {dtype_enum}"


def shape_string(shape):
    """[d0,d1,...] for a tuple or a TensorShapeProto ([?] for unknown rank), as TF Serving."""
    if isinstance(shape, tensor_shape_pb2.TensorShapeProto):
        if shape.unknown_rank:
            return "[?]"
        shape = [d.size for d in shape.dim]
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def shape_compatible(shape, shape_proto):
    """Whether a concrete shape fits a signature's TensorShapeProto (-1 = any size)."""
    if shape_proto.unknown_rank:
        return True
    if len(shape) != len(shape_proto.dim):
        return False
    return all(d.size < 0 or d.size == s for d, s in zip(shape_proto.dim, shape))


def proto_to_ndarray(proto, alias):
    """Parses a request TensorProto; INVALID_ARGUMENT 'tensor parsing error: <alias>' if bad."""
    error = invalid_argument(f"tensor parsing error: {alias}")
    if proto.dtype not in _VALUE_FIELD or proto.tensor_shape.unknown_rank:
        raise error
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise error
    num_elements = int(np.prod(dims, dtype=np.float64)) if dims else 1
    itemsize = 8 if proto.dtype == types_pb2.DT_STRING else tf.as_dtype(proto.dtype).size
    if proto.tensor_content:
        expected_bytes = num_elements * itemsize
        if proto.dtype == types_pb2.DT_STRING or len(proto.tensor_content) != expected_bytes:
            raise error
    else:
        count = len(getattr(proto, _VALUE_FIELD[proto.dtype]))
        count //= _VALUES_PER_ELEMENT.get(proto.dtype, 1)
        if count > num_elements:
            raise error
        if count < num_elements and num_elements * itemsize > _MAX_PADDED_BYTES:
            raise error
    try:
        array = tf.make_ndarray(proto)
    except Exception:  # noqa: BLE001 -- any failure here is a malformed client tensor.
        raise error from None
    if proto.dtype == types_pb2.DT_STRING:
        # make_ndarray pads a short string list with "" (str); keep every element bytes.
        array = to_bytes_array(array)
    return array


def ndarray_to_proto(array):
    """A TensorProto with typed value fields (TF Serving's AsProtoField layout)."""
    array = np.asarray(array)
    if array.dtype.kind in ("O", "S", "U"):
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING)
        proto.string_val.extend(to_bytes_array(array).reshape(-1).tolist())
    else:
        try:
            dtype_enum = tf.as_dtype(array.dtype).as_datatype_enum
        except TypeError:
            return tf.make_tensor_proto(array)
        field = _VALUE_FIELD.get(dtype_enum)
        if field is None:
            return tf.make_tensor_proto(array)
        proto = tensor_pb2.TensorProto(dtype=dtype_enum)
        flat = array.reshape(-1)
        if dtype_enum in (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16):
            # half_val holds the raw 16-bit patterns as ints.
            values = flat.view(np.uint16).astype(np.int32).tolist()
        elif dtype_enum in _VALUES_PER_ELEMENT:
            values = np.stack([flat.real, flat.imag], axis=-1).reshape(-1).tolist()
        else:
            values = flat.tolist()
        getattr(proto, field).extend(values)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=int(size))
    return proto


def _as_bytes(value):
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"expected str or bytes, got {type(value).__name__}: {value!r:.50}")


def to_bytes_array(values):
    """A numpy object array of bytes from str/bytes/array input (UTF-8 for str)."""
    array = np.asarray(values, dtype=object)
    flat = [_as_bytes(v) for v in array.reshape(-1)]
    out = np.empty(len(flat), dtype=object)
    out[:] = flat
    return out.reshape(array.shape)
