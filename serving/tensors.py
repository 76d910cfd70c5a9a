"""``tensorflow.TensorProto`` <-> numpy, for the dtypes an image model takes.

uint8 arrives as ``tensor_content`` (raw little-endian bytes, what we send) or
as ``int_val`` (what ``tf.make_tensor_proto`` of a list gives); float32 as
``tensor_content`` or ``float_val``.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidInput
from .protos import tensor_pb2, tensor_shape_pb2, types_pb2

DTYPES: dict[int, np.dtype] = {
    types_pb2.DT_UINT8: np.dtype(np.uint8),
    types_pb2.DT_FLOAT: np.dtype("<f4"),
}
DTYPE_NAMES = {types_pb2.DT_UINT8: "DT_UINT8", types_pb2.DT_FLOAT: "DT_FLOAT"}
_VALUE_FIELDS = {types_pb2.DT_UINT8: "int_val", types_pb2.DT_FLOAT: "float_val"}


def to_numpy(name: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    """The array a TensorProto holds; InvalidInput names ``name`` when it is malformed."""
    if proto.dtype not in DTYPES:
        dtype_name = types_pb2.DataType.Name(proto.dtype) if proto.dtype in types_pb2.DataType.values() \
            else str(proto.dtype)
        raise InvalidInput(f"input '{name}' has dtype {dtype_name}; expected DT_UINT8 (or DT_FLOAT in [0, 1])")
    if proto.tensor_shape.unknown_rank:
        raise InvalidInput(f"input '{name}' has unknown rank")
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise InvalidInput(f"input '{name}' has a negative dimension in shape {list(shape)}")
    dtype = DTYPES[proto.dtype]
    count = int(np.prod(shape, dtype=np.int64))
    if proto.tensor_content:
        if len(proto.tensor_content) != count * dtype.itemsize:
            raise InvalidInput(f"input '{name}' has {len(proto.tensor_content)} bytes of tensor_content; "
                               f"shape {list(shape)} needs {count * dtype.itemsize}")
        return np.frombuffer(proto.tensor_content, dtype).reshape(shape)
    values = getattr(proto, _VALUE_FIELDS[proto.dtype])
    if len(values) == count:
        array = np.asarray(values, dtype=np.int64 if proto.dtype == types_pb2.DT_UINT8 else np.float32)
    elif len(values) == 1 and count > 0:  # TensorProto's fill-with-one-value form
        array = np.full(count, values[0], dtype=np.int64 if proto.dtype == types_pb2.DT_UINT8 else np.float32)
    else:
        raise InvalidInput(f"input '{name}' has {len(values)} values; shape {list(shape)} needs {count}")
    if proto.dtype == types_pb2.DT_UINT8 and array.size and (array.min() < 0 or array.max() > 255):
        raise InvalidInput(f"input '{name}' has int_val outside 0..255")
    return array.astype(dtype).reshape(shape)


def from_numpy(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A TensorProto with ``tensor_content``: the compact form."""
    array = np.ascontiguousarray(array)
    dtype = {np.dtype(np.uint8): types_pb2.DT_UINT8, np.dtype(np.float32): types_pb2.DT_FLOAT}[array.dtype]
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_content=array.tobytes())
    proto.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in array.shape)
    return proto
