"""The serving contract: what every model version takes and returns, and how its versions are reported.

The trainer builds its signature from these names, the exporter checks the ONNX
graph against them, the server validates requests with them and the client
builds requests with them. Nothing here imports more than numpy and the
generated protos.
"""

from __future__ import annotations

import enum

import numpy as np

from .protos import get_model_status_pb2, types_pb2

SIGNATURE_NAME = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"

IMAGE, MASK, OUTPUT = "image", "mask", "inpainted"

# The second signature: encoded files in (PNG, JPEG, WebP or BMP; masks by core.images' rule), PNG out.
BYTES_SIGNATURE_NAME = "serving_bytes"
IMAGE_BYTES, MASK_BYTES, OUTPUT_BYTES = "image_bytes", "mask_bytes", "inpainted_bytes"
BYTES_SIGNATURE = {"inputs": {IMAGE_BYTES: ("string", [-1]), MASK_BYTES: ("string", [-1])},
                   "outputs": {OUTPUT_BYTES: ("string", [-1])}}
# Inputs and their channel counts: uint8 image [N,H,W,3], uint8 mask [N,H,W,1] (nonzero = hole).
INPUT_CHANNELS: dict[str, int] = {IMAGE: 3, MASK: 1}
OUTPUT_CHANNELS = 3

# The padding rule: the graph pads H and W up to multiples of 2**depth (16 for the shipped model, depth 4)
# before it runs, so a run's memory follows its padded size: a 1 x 262,144 strip runs as 16 x 262,144.
RUN_MULTIPLE = 16


def padded_pixels(count: int, height: int, width: int, multiple: int = RUN_MULTIPLE) -> int:
    """N x H x W of a model run once the graph has padded H and W to multiples of ``multiple``."""
    return count * -(-height // multiple) * multiple * -(-width // multiple) * multiple

# TF Serving's ModelVersionStatus.State, taken from the generated enum so the numbers cannot drift.
VersionState = enum.IntEnum("VersionState", dict(get_model_status_pb2.ModelVersionStatus.State.items()))

# The tensor dtypes the contract speaks: uint8 pixels, or float32 in [0, 1].
DTYPES: dict[int, np.dtype] = {
    types_pb2.DT_UINT8: np.dtype(np.uint8),
    types_pb2.DT_FLOAT: np.dtype("<f4"),
}
DTYPE_ENUMS: dict[np.dtype, int] = {dtype: enum_value for enum_value, dtype in DTYPES.items()}


def dtype_name(value: int) -> str:
    """``DT_UINT8`` for 4, and the bare number for a value the enum does not know."""
    return types_pb2.DataType.Name(value) if value in types_pb2.DataType.values() else str(value)


def dtype_enum(dtype: np.dtype | str) -> int:
    """The ``DataType`` for a numpy dtype (``DT_INVALID`` for one outside the contract)."""
    return DTYPE_ENUMS.get(np.dtype(dtype), types_pb2.DT_INVALID)


class ContractError(ValueError):
    """A model whose inputs or outputs are not the contract's."""


def check_signature(signature: dict[str, dict[str, tuple[str, list[int]]]]) -> None:
    """``{"inputs"|"outputs": {name: (dtype name, shape)}}`` must be uint8 image and mask in, uint8 out."""
    inputs, outputs = signature["inputs"], signature["outputs"]
    if set(inputs) != set(INPUT_CHANNELS) or set(outputs) != {OUTPUT}:
        raise ContractError(f"model inputs are {sorted(inputs)} and outputs {sorted(outputs)}; expected "
                            f"{sorted(INPUT_CHANNELS)} in and ['{OUTPUT}'] out")
    expected = {**INPUT_CHANNELS, OUTPUT: OUTPUT_CHANNELS}
    for name, (dtype, shape) in {**inputs, **outputs}.items():
        channels = expected[name]
        if dtype != "uint8" or len(shape) != 4 or shape[3] not in (channels, -1):
            raise ContractError(f"model tensor '{name}' is {dtype} {shape}; expected uint8 [N,H,W,{channels}]")


# gRPC's message cap for one request or reply, on both ends. A 24 MP photo is 72 MB as uint8 RGB.
MAX_MESSAGE_BYTES = 256 * 2**20
