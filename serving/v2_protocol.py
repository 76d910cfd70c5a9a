"""The Open Inference Protocol (KServe v2, what Triton and KServe speak): what its two adapters share, ``v2_api``
(gRPC) and ``v2_rest`` (REST). Its tensors as declared, checked before any array is built, its versions and
its metadata; the request's path: the ``inpaint.serving`` package's docstring.

* Inputs are ``image`` UINT8 ``[N,H,W,3]`` and ``mask`` UINT8 ``[N,H,W,1]`` (FP32 in [0, 1] is accepted too,
  as in TF Serving's API); the output is ``inpainted`` UINT8 ``[N,H,W,3]``.
* Declared shapes are checked against the limits before any array is built, and a tensor's bytes must be
  exactly what its shape and datatype need.
* ServerLive, ServerReady and ModelReady are probes and are not counted in the request metrics; the others
  are, with ``protocol="v2"``.
"""

from __future__ import annotations

import collections
import functools
import importlib.metadata
import math
import re
from dataclasses import dataclass

import numpy as np

from inpaint.core.contract import INPUT_CHANNELS, OUTPUT, OUTPUT_CHANNELS, VersionState

from .dataplane import DataPlane, Outcome
from .errors import InvalidInput
from .inputs import Limits, check_shapes

PROTOCOL = "v2"  # the request metrics' protocol label
SERVER_NAME = "inpaint-serve"
EXTENSIONS = ("binary_tensor_data",)
PLATFORM = "onnxruntime_onnx"
# The protocol's datatypes that the contract takes: uint8 pixels, or float32 in [0, 1].
DATATYPES: dict[str, np.dtype] = {"UINT8": np.dtype(np.uint8), "FP32": np.dtype("<f4")}
INPUTS = [{"name": name, "datatype": "UINT8", "shape": [-1, -1, -1, channels]}
          for name, channels in INPUT_CHANNELS.items()]
OUTPUTS = [{"name": OUTPUT, "datatype": "UINT8", "shape": [-1, -1, -1, OUTPUT_CHANNELS]}]
OUTPUT_DATATYPE = "UINT8"

_VERSION = re.compile(r"[0-9]{1,18}")


@functools.cache
def server_version() -> str:
    try:
        return importlib.metadata.version("inpaint")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def server_metadata() -> dict:
    return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}


def requested_version(text: str) -> int | str | None:
    """A request's ``model_version``, a string in this protocol: "" is the latest AVAILABLE, digits a version
    number, anything else a version label (``canary``; labels are never all digits)."""
    if text == "":
        return None
    if text.isascii() and text.isdigit():
        if not _VERSION.fullmatch(text):
            raise InvalidInput(f"model version {text[:64]!r} is too large for a version number")
        return int(text)
    return text


def model_ready(dataplane: DataPlane, name: str, version: int | None) -> bool:
    """Whether that model version (any, without one) is AVAILABLE; ModelNotFound for a name or version the
    server does not know."""
    versions = dataplane.version_statuses(name, version)
    return not dataplane.draining and any(v.state == VersionState.AVAILABLE for v in versions)


def model_metadata(dataplane: DataPlane, outcome: Outcome, name: str, version: int | None) -> dict:
    """The model's metadata: the versions that may be asked for, its platform, inputs and outputs."""
    served = dataplane.signature(outcome, name, version)  # NOT_FOUND, or UNAVAILABLE before a version loads
    if version is None:
        versions = [str(v.version) for v in dataplane.version_statuses(name, None)
                    if v.state == VersionState.AVAILABLE]
    else:
        versions = [str(served.version)]
    def tensors(metadata: list[dict]) -> list[dict]:
        return [dict(tensor, shape=list(tensor["shape"])) for tensor in metadata]

    return {"name": name, "versions": versions, "platform": PLATFORM, "inputs": tensors(INPUTS),
            "outputs": tensors(OUTPUTS)}


# -- tensors ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputSpec:
    """What a request declares for one input, before any of its values is read."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return DATATYPES[self.datatype]

    @property
    def count(self) -> int:
        return math.prod(self.shape)  # Python integers: no overflow, whatever the request claims

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize

    def describe(self) -> str:
        return f"shape {list(self.shape)} of {self.datatype}"


def check_inputs(specs: list[InputSpec], limits: Limits) -> None:
    """Names, datatypes and declared shapes against the signature and ``limits``; nothing is allocated."""
    duplicates = sorted(name for name, count in collections.Counter(spec.name for spec in specs).items()
                        if count > 1)
    if duplicates:
        raise InvalidInput(f"input(s) {', '.join(duplicates)} given more than once")
    for spec in specs:
        if min(spec.shape, default=0) < 0:
            raise InvalidInput(f"input '{spec.name}' has a negative dimension in shape {list(spec.shape)}")
    check_shapes({spec.name: spec.shape for spec in specs}, limits)
    for spec in specs:
        if spec.datatype not in DATATYPES:
            raise InvalidInput(f"input '{spec.name}' has datatype {spec.datatype[:32]!r}; expected UINT8 "
                               "(or FP32 in [0, 1])")


def array_from_bytes(spec: InputSpec, data: bytes | memoryview, what: str) -> np.ndarray:
    """Raw little-endian row-major values; ``what`` names where they came from in errors."""
    if len(data) != spec.nbytes:
        raise InvalidInput(f"input '{spec.name}' has {len(data)} bytes of {what}; {spec.describe()} needs "
                           f"{spec.nbytes}")
    return np.frombuffer(data, spec.dtype).reshape(spec.shape)


def check_outputs(names: list[str]) -> list[str]:
    unknown = sorted(set(names) - {OUTPUT})
    if unknown:
        raise InvalidInput(f"requested output(s) {', '.join(unknown)} unknown; the model has '{OUTPUT}'")
    return names
