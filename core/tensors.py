"""``tensorflow.TensorProto`` <-> numpy for the contract's dtypes, and the messages they travel in.

uint8 arrives as ``tensor_content`` (raw little-endian bytes, what we send) or
as ``int_val`` (what ``tf.make_tensor_proto`` of a list gives); float32 as
``tensor_content`` or ``float_val``. A malformed tensor raises ``TensorError``,
which each side reports its own way: the server as the caller's invalid input,
the client as a bad reply from the server.
"""

from __future__ import annotations

import math

import numpy as np

from .contract import (BYTES_SIGNATURE_NAME, DTYPES, IMAGE, IMAGE_BYTES, MASK, MASK_BYTES, OUTPUT, OUTPUT_BYTES,
                       PREDICT_METHOD, SIGNATURE_NAME, dtype_enum, dtype_name)
from .protos import grpc_predict_v2_pb2, meta_graph_pb2, predict_pb2, tensor_pb2, types_pb2

_VALUE_FIELDS = {types_pb2.DT_UINT8: "int_val", types_pb2.DT_FLOAT: "float_val"}


class TensorError(ValueError):
    """A TensorProto that does not hold what it claims, or holds a dtype outside the contract."""


def tensor_shape(name: str, proto: tensor_pb2.TensorProto) -> tuple[int, ...]:
    """The declared shape, checked for rank and sign before anything is allocated."""
    if proto.tensor_shape.unknown_rank:
        raise TensorError(f"tensor '{name}' has unknown rank")
    shape = tuple([dim.size for dim in proto.tensor_shape.dim])
    if min(shape, default=0) < 0:
        raise TensorError(f"tensor '{name}' has a negative dimension in shape {list(shape)}")
    return shape


def to_numpy(name: str, proto: tensor_pb2.TensorProto, max_elements: int | None = None,
             shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The array a TensorProto holds; TensorError names ``name`` when it is malformed.

    With ``max_elements`` a tensor declaring more values is refused before
    anything is allocated (the one-value fill form could otherwise claim gigabytes).
    ``shape`` is ``tensor_shape(name, proto)`` when the caller has already read it.
    """
    dtype = DTYPES.get(proto.dtype)
    if dtype is None:
        raise TensorError(f"tensor '{name}' has dtype {dtype_name(proto.dtype)}; "
                          "expected DT_UINT8 (or DT_FLOAT in [0, 1])")
    if shape is None:
        shape = tensor_shape(name, proto)
    count = math.prod(shape)  # Python integers: no overflow, whatever the header claims
    if max_elements is not None and count > max_elements:
        raise TensorError(f"tensor '{name}' declares shape {list(shape)} = {count} values, over the limit of "
                          f"{max_elements}")
    content = proto.tensor_content  # each read of a bytes field makes a new copy
    if content:
        if len(content) != count * dtype.itemsize:
            raise TensorError(f"tensor '{name}' has {len(content)} bytes of tensor_content; "
                              f"shape {list(shape)} needs {count * dtype.itemsize}")
        return np.frombuffer(content, dtype).reshape(shape)
    values = getattr(proto, _VALUE_FIELDS[proto.dtype])
    wide = np.int64 if proto.dtype == types_pb2.DT_UINT8 else np.float32
    if len(values) == count:
        array = np.asarray(values, dtype=wide)
    elif len(values) == 1 and count > 0:  # TensorProto's fill-with-one-value form
        array = np.full(count, values[0], dtype=wide)
    else:
        raise TensorError(f"tensor '{name}' has {len(values)} values; shape {list(shape)} needs {count}")
    if proto.dtype == types_pb2.DT_UINT8 and array.size and (array.min() < 0 or array.max() > 255):
        raise TensorError(f"tensor '{name}' has int_val outside 0..255")
    return array.astype(dtype).reshape(shape)


def from_numpy(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A TensorProto with ``tensor_content``: the compact form."""
    proto = tensor_pb2.TensorProto()
    fill_tensor(proto, array)
    return proto


def fill_tensor(proto: tensor_pb2.TensorProto, array: np.ndarray) -> None:
    """Write ``array`` into an empty ``proto`` as ``from_numpy`` would, in place: a message's own
    field (a map entry of a reply, say) is filled without building a tensor and copying it in."""
    array = np.ascontiguousarray(array)
    enum_value = dtype_enum(array.dtype)
    if enum_value == types_pb2.DT_INVALID:
        raise TensorError(f"dtype {array.dtype} is outside the contract (uint8 or float32)")
    proto.dtype = enum_value
    proto.tensor_content = array.tobytes()
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add(size=size)


def to_strings(name: str, proto: tensor_pb2.TensorProto, max_count: int) -> list[bytes]:
    """The byte strings of a DT_STRING ``[N]`` tensor, N at most ``max_count``; TensorError names ``name``."""
    if proto.dtype != types_pb2.DT_STRING:
        raise TensorError(f"tensor '{name}' has dtype {dtype_name(proto.dtype)}; expected DT_STRING "
                          "(encoded image files)")
    shape = tensor_shape(name, proto)
    if len(shape) != 1:
        raise TensorError(f"tensor '{name}' must have shape [N] (one encoded file each), got {list(shape)}")
    if shape[0] > max_count:
        raise TensorError(f"tensor '{name}' holds {shape[0]} files, over the limit of {max_count}")
    if len(proto.string_val) != shape[0]:
        raise TensorError(f"tensor '{name}' has {len(proto.string_val)} string_val; shape {list(shape)} "
                          f"needs {shape[0]}")
    return list(proto.string_val)


def fill_strings(proto: tensor_pb2.TensorProto, values: list[bytes]) -> None:
    """Write byte strings into an empty ``proto`` as a DT_STRING ``[N]`` tensor."""
    proto.dtype = types_pb2.DT_STRING
    proto.tensor_shape.dim.add(size=len(values))
    proto.string_val.extend(values)


Version = int | str | None  # a version number, a version label ("canary"), or None for the latest


def set_model_spec(message, model: str, version: Version = None) -> None:
    """A request's ``model_spec``: the model's name and its version number or label (``version_label``)."""
    message.model_spec.name = model
    if isinstance(version, str):
        message.model_spec.version_label = version
    elif version is not None:
        message.model_spec.version.value = version


def _request_for(model: str, version: Version, signature: str) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    set_model_spec(request, model, version)
    request.model_spec.signature_name = signature
    return request


def predict_bytes_request(images: list[bytes], masks: list[bytes], model: str,
                          version: Version = None) -> predict_pb2.PredictRequest:
    """A ``serving_bytes`` PredictRequest: encoded image and mask files, one of each per image."""
    request = _request_for(model, version, BYTES_SIGNATURE_NAME)
    fill_strings(request.inputs[IMAGE_BYTES], images)
    fill_strings(request.inputs[MASK_BYTES], masks)
    request.output_filter.append(OUTPUT_BYTES)
    return request


def bytes_output_of(response: predict_pb2.PredictResponse, count: int) -> list[bytes]:
    """The PNG files of a ``serving_bytes`` reply, checked against the number of images sent."""
    if OUTPUT_BYTES not in response.outputs:
        raise TensorError(f"reply has no '{OUTPUT_BYTES}' output (has {sorted(response.outputs)})")
    values = to_strings(OUTPUT_BYTES, response.outputs[OUTPUT_BYTES], count)
    if len(values) != count:
        raise TensorError(f"reply '{OUTPUT_BYTES}' holds {len(values)} files for {count} images")
    return values


def predict_request(images: np.ndarray, masks: np.ndarray, model: str, version: Version = None,
                    signature: str = SIGNATURE_NAME) -> predict_pb2.PredictRequest:
    """A PredictRequest for uint8 ``(N, H, W, 3)`` images and ``(N, H, W)`` or ``(N, H, W, 1)`` masks."""
    if masks.ndim == 3:
        masks = masks[..., None]
    request = _request_for(model, version, signature)
    fill_tensor(request.inputs[IMAGE], images)
    fill_tensor(request.inputs[MASK], masks)
    request.output_filter.append(OUTPUT)
    return request


def infer_request(images: np.ndarray, masks: np.ndarray, model: str,
                  version: Version = None) -> grpc_predict_v2_pb2.ModelInferRequest:
    """An Open Inference Protocol (v2) ModelInferRequest: uint8 tensors as ``raw_input_contents``, as
    tritonclient sends them; the version a string there, a number or a label."""
    if masks.ndim == 3:
        masks = masks[..., None]
    request = grpc_predict_v2_pb2.ModelInferRequest(model_name=model, model_version="" if version is None
                                                    else str(version))
    for name, array in ((IMAGE, images), (MASK, masks)):
        request.inputs.add(name=name, datatype="UINT8", shape=array.shape)
        request.raw_input_contents.append(np.ascontiguousarray(array, np.uint8).tobytes())
    request.outputs.add(name=OUTPUT)
    return request


def output_of(response: predict_pb2.PredictResponse, shape: tuple[int, ...]) -> np.ndarray:
    """The ``inpainted`` tensor of a reply, checked against the batch it answers."""
    if OUTPUT not in response.outputs:
        raise TensorError(f"reply has no '{OUTPUT}' output (has {sorted(response.outputs)})")
    array = to_numpy(OUTPUT, response.outputs[OUTPUT], max_elements=math.prod(shape))
    if array.dtype != np.uint8 or array.shape != tuple(shape):
        raise TensorError(f"reply '{OUTPUT}' is {array.dtype} {list(array.shape)}; expected uint8 {list(shape)}")
    return array


_SIGNATURE_DTYPES = {"uint8": types_pb2.DT_UINT8, "float32": types_pb2.DT_FLOAT, "string": types_pb2.DT_STRING}


def signature_def(signature: dict[str, dict[str, tuple[str, list[int]]]]) -> meta_graph_pb2.SignatureDef:
    """TF Serving's SignatureDef for ``{"inputs"|"outputs": {name: (dtype name, shape)}}``; N is always -1."""
    definition = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
    for kind, infos in (("inputs", definition.inputs), ("outputs", definition.outputs)):
        for tensor_name, (dtype, shape) in signature[kind].items():
            info = infos[tensor_name]
            info.name = f"{tensor_name}:0"
            info.dtype = _SIGNATURE_DTYPES.get(dtype, types_pb2.DT_INVALID)
            info.tensor_shape.dim.add().size = -1
            for size in shape[1:]:
                info.tensor_shape.dim.add().size = size
    return definition
