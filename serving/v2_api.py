"""The Open Inference Protocol (KServe v2, what Triton and KServe speak) over the data plane.

This module holds what both transports share, the protocol's tensors and
metadata, and the gRPC adapter, ``inference.GRPCInferenceService``, registered
on the TF Serving port by ``add_v2_service``; ``v2_rest`` is the REST adapter.

* Inputs are ``image`` UINT8 ``[N,H,W,3]`` and ``mask`` UINT8 ``[N,H,W,1]`` (FP32 in [0, 1] is accepted too,
  as in TF Serving's API); the output is ``inpainted`` UINT8 ``[N,H,W,3]``.
* Declared shapes are checked against the limits before any array is built, and a tensor's bytes must be
  exactly what its shape and datatype need.
* ``DataPlane.predict`` runs them, so validation, batching, the tiled path and metrics are the same as
  for TF Serving's API; errors map through ``errors`` as theirs do.
* Requests arrive as raw bytes, so a malformed message is INVALID_ARGUMENT. ServerLive, ServerReady and
  ModelReady are probes and are not counted in the request metrics; the others are, with ``protocol="v2"``.
"""

from __future__ import annotations

import collections
import functools
import importlib.metadata
import json
import math
import re
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

import grpc
import numpy as np

from inpaint.core.contract import IMAGE, INPUT_CHANNELS, OUTPUT, OUTPUT_CHANNELS, VersionState
from inpaint.core.protos import grpc_predict_v2_pb2 as pb

from .dataplane import DataPlane, Outcome
from .errors import InvalidInput, ModelNotFound
from .grpc_api import (REPLY_BYTES_PER_VALUE, Incoming, call, lists_checked, deadline_of, raw_unary,
                       receiving_unary)
from .inputs import Limits, check_shapes
from .rest_codec import check_json_values, parse_body
from .wire import infer_list_values

T = TypeVar("T")

PROTOCOL = "v2"  # the request metrics' protocol label
SERVER_NAME = "inpaint-serve"
EXTENSIONS = ("binary_tensor_data",)
PLATFORM = "onnxruntime_onnx"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

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


def array_from_contents(spec: InputSpec, contents: pb.InferTensorContents) -> np.ndarray:
    """The typed ``contents`` of a gRPC input: ``uint_contents`` for UINT8, ``fp32_contents`` for FP32."""
    field_name = "uint_contents" if spec.datatype == "UINT8" else "fp32_contents"
    values = getattr(contents, field_name)
    if len(values) != spec.count:
        raise InvalidInput(f"input '{spec.name}' has {len(values)} values in contents.{field_name}; "
                           f"{spec.describe()} needs {spec.count} (or send raw_input_contents)")
    if spec.datatype == "UINT8":
        array = np.asarray(values, dtype=np.uint32)
        if array.size and array.max() > 255:
            raise InvalidInput(f"input '{spec.name}' has uint_contents outside 0..255")
        return array.astype(np.uint8).reshape(spec.shape)
    return np.asarray(values, dtype=np.float32).reshape(spec.shape)


def array_from_json(spec: InputSpec, data) -> np.ndarray:
    """A JSON ``data`` array, flattened or nested: integers 0..255 for UINT8, numbers for FP32."""
    if not isinstance(data, list):
        raise InvalidInput(f"input '{spec.name}' has 'data' that is not a JSON array")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"input '{spec.name}' has 'data' that is not a rectangular array of numbers") from None
    integers = array.dtype.kind in "iu"
    if array.size and not (integers or (spec.datatype == "FP32" and array.dtype.kind == "f")):
        kind = "integers 0..255" if spec.datatype == "UINT8" else "numbers"
        raise InvalidInput(f"input '{spec.name}' is {spec.datatype} and its 'data' must hold {kind}")
    if array.size != spec.count:
        raise InvalidInput(f"input '{spec.name}' has {array.size} values in 'data'; {spec.describe()} needs "
                           f"{spec.count}")
    if spec.datatype == "UINT8" and array.size and (array.min() < 0 or array.max() > 255):
        raise InvalidInput(f"input '{spec.name}' has values outside 0..255")
    return array.astype(spec.dtype, copy=False).reshape(spec.shape)


def check_outputs(names: list[str]) -> list[str]:
    unknown = sorted(set(names) - {OUTPUT})
    if unknown:
        raise InvalidInput(f"requested output(s) {', '.join(unknown)} unknown; the model has '{OUTPUT}'")
    return names


# -- REST bodies (plain functions the REST adapter's codec process can run) -------------------------

@dataclass
class InferBody:
    """A REST infer request's JSON, checked: arrays of the inputs sent as JSON, where the binary ones lie."""

    id: str | None
    arrays: dict[str, np.ndarray]
    binary: list[tuple[InputSpec, int]]  # (input, offset in the binary part), in input order
    outputs: list[tuple[str, bool]]      # (name, as binary data)


def _parameters(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} 'parameters' must be a JSON object")
    return value


def _flag(parameters: dict, key: str, where: str, default: bool) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where} parameter '{key}' must be true or false")
    return value


def _input_spec(index: int, tensor) -> InputSpec:
    if not isinstance(tensor, dict):
        raise InvalidInput(f"inputs[{index}] must be a JSON object with name, shape, datatype and data")
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str):
        raise InvalidInput(f"inputs[{index}] needs a string 'name'")
    if not isinstance(datatype, str):
        raise InvalidInput(f"input '{name}' needs a string 'datatype'")
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
        raise InvalidInput(f"input '{name}' needs a 'shape' that is a list of integers")
    return InputSpec(name, datatype, tuple(shape))


def decode_infer(header: bytes, binary_bytes: int, limits: Limits, max_json_values: int) -> InferBody:
    """A REST infer request's JSON ``header``, followed by ``binary_bytes`` of binary tensor data.

    The inputs' declared shapes pass the limits, and each binary input's ``binary_data_size`` is what its
    shape needs, before any array is built; the binary sizes must add up to ``binary_bytes`` exactly.
    """
    check_json_values(header, max_json_values)
    parsed = parse_body(header)
    request_id = parsed.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    parameters = _parameters(parsed.get("parameters"), "the request's")
    tensors = parsed.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise InvalidInput("the request body needs 'inputs', a non-empty list of tensors")
    specs = [_input_spec(index, tensor) for index, tensor in enumerate(tensors)]
    check_inputs(specs, limits)
    arrays, binary, offset = {}, [], 0
    for spec, tensor in zip(specs, tensors):
        size = _parameters(tensor.get("parameters"), f"input '{spec.name}'").get("binary_data_size")
        if size is None:
            if "data" not in tensor:
                raise InvalidInput(f"input '{spec.name}' has neither 'data' nor a 'binary_data_size' parameter")
            arrays[spec.name] = None  # built once every size has been checked
            continue
        if "data" in tensor:
            raise InvalidInput(f"input '{spec.name}' has both 'data' and binary data; send one")
        if not isinstance(size, int) or isinstance(size, bool) or size != spec.nbytes:
            raise InvalidInput(f"input '{spec.name}' has binary_data_size {size!r}; {spec.describe()} needs "
                               f"{spec.nbytes}")
        binary.append((spec, offset))
        offset += size
    if offset != binary_bytes:
        raise InvalidInput(f"the body holds {binary_bytes} bytes of binary tensor data after its JSON header but "
                           f"the inputs' binary_data_size add up to {offset}")
    for spec, tensor in zip(specs, tensors):
        if spec.name in arrays:
            arrays[spec.name] = array_from_json(spec, tensor["data"])
    binary_default = _flag(parameters, "binary_data_output", "the request's", False)
    outputs = parsed.get("outputs")
    if outputs is None or outputs == []:  # none named: all of them
        return InferBody(request_id, arrays, binary, [(OUTPUT, binary_default)])
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                for o in outputs):
        raise InvalidInput("'outputs' must be a list of objects, each with a string 'name'")
    check_outputs([o["name"] for o in outputs])
    wanted = [(o["name"], _flag(_parameters(o.get("parameters"), f"output '{o['name']}'"), "binary_data",
                                f"output '{o['name']}'", binary_default)) for o in outputs]
    return InferBody(request_id, arrays, binary, list(dict(wanted).items()))


def encode_infer(model_name: str, version: int, request_id: str | None, output: np.ndarray,
                 outputs: list[tuple[str, bool]]) -> tuple[bytes, int | None]:
    """The REST infer answer: ``(body, JSON header length)``, the length None when no output is binary."""
    answer: dict = {"model_name": model_name, "model_version": str(version)}
    if request_id is not None:
        answer["id"] = request_id
    tensors, binary = [], []
    for name, as_binary in outputs:
        tensor = {"name": name, "datatype": OUTPUT_DATATYPE, "shape": list(output.shape)}
        if as_binary:
            tensor["parameters"] = {"binary_data_size": output.nbytes}
            binary.append(np.ascontiguousarray(output).data)
        else:
            tensor["data"] = output.ravel().tolist()
        tensors.append(tensor)
    answer["outputs"] = tensors
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not binary:
        return header, None
    return b"".join([header, *binary]), len(header)


# -- gRPC ------------------------------------------------------------------------------------------

def grpc_input_specs(request: pb.ModelInferRequest, limits: Limits) -> list[InputSpec]:
    """The request's inputs as declared, checked against the signature and the limits."""
    specs = [InputSpec(tensor.name, tensor.datatype, tuple(tensor.shape)) for tensor in request.inputs]
    check_inputs(specs, limits)
    return specs


def grpc_input_arrays(request: pb.ModelInferRequest, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """The request's inputs as numpy, after their declared shapes passed the limits (``grpc_input_specs``)."""
    raw = request.raw_input_contents
    if not raw:
        return {spec.name: array_from_contents(spec, tensor.contents) for spec, tensor in zip(specs, request.inputs)}
    if len(raw) != len(specs):
        raise InvalidInput(f"raw_input_contents holds {len(raw)} entries for {len(specs)} inputs; send one per "
                           "input, in the order of 'inputs'")
    if any(tensor.HasField("contents") for tensor in request.inputs):
        raise InvalidInput("inputs have both raw_input_contents and contents; send one")
    return {spec.name: array_from_bytes(spec, raw[index], "raw_input_contents")
            for index, spec in enumerate(specs)}


class InferenceServicer:
    """``inference.GRPCInferenceService``: health, metadata and ModelInfer."""

    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    async def _call(self, context: grpc.aio.ServicerContext, api: str, raw: bytes, message_class,
                    handler: Callable[[object, Outcome], Awaitable[T]], counted: bool = True) -> T:
        return await call(context, self.dataplane, api, raw, message_class, handler, protocol=PROTOCOL,
                          counted=counted)

    async def ServerLive(self, raw: bytes, context) -> pb.ServerLiveResponse:
        async def handle(request, outcome):
            return pb.ServerLiveResponse(live=True)

        return await self._call(context, "live", raw, pb.ServerLiveRequest, handle, counted=False)

    async def ServerReady(self, raw: bytes, context) -> pb.ServerReadyResponse:
        async def handle(request, outcome):
            return pb.ServerReadyResponse(ready=self.dataplane.is_ready())

        return await self._call(context, "ready", raw, pb.ServerReadyRequest, handle, counted=False)

    async def ModelReady(self, raw: bytes, context) -> pb.ModelReadyResponse:
        async def handle(request: pb.ModelReadyRequest, outcome):
            version = requested_version(request.version)
            try:
                ready = model_ready(self.dataplane, request.name, version)
            except ModelNotFound:
                ready = False  # as Triton answers: not ready, rather than an error
            return pb.ModelReadyResponse(ready=ready)

        return await self._call(context, "model_ready", raw, pb.ModelReadyRequest, handle, counted=False)

    async def ServerMetadata(self, raw: bytes, context) -> pb.ServerMetadataResponse:
        async def handle(request, outcome):
            return pb.ServerMetadataResponse(**server_metadata())

        return await self._call(context, "server_metadata", raw, pb.ServerMetadataRequest, handle, counted=False)

    async def ModelMetadata(self, raw: bytes, context) -> pb.ModelMetadataResponse:
        async def handle(request: pb.ModelMetadataRequest, outcome: Outcome) -> pb.ModelMetadataResponse:
            metadata = model_metadata(self.dataplane, outcome, request.name, requested_version(request.version))
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"],
                inputs=[tensor(**t) for t in metadata["inputs"]], outputs=[tensor(**t) for t in metadata["outputs"]])

        return await self._call(context, "metadata", raw, pb.ModelMetadataRequest, handle)

    async def ModelInfer(self, raw: bytes | Incoming, context) -> pb.ModelInferResponse:
        async def handle(request: pb.ModelInferRequest, outcome: Outcome) -> pb.ModelInferResponse:
            version = requested_version(request.model_version)
            requested = check_outputs([output.name for output in request.outputs])
            output_names = list(dict.fromkeys(requested)) or [OUTPUT]
            specs, deadline = grpc_input_specs(request, self.dataplane.limits), deadline_of(context)
            image = next(spec for spec in specs if spec.name == IMAGE)
            listed = 0 if request.raw_input_contents else sum(spec.count for spec in specs)
            await self.dataplane.admit_arrays(outcome, image.shape, max(spec.dtype.itemsize for spec in specs),
                                              REPLY_BYTES_PER_VALUE * len(output_names), deadline, listed)
            arrays = await self.dataplane.decoded(grpc_input_arrays, request, specs)
            prediction = await self.dataplane.predict(outcome, request.model_name, version, "", arrays,
                                                      output_names, deadline)
            output = np.ascontiguousarray(prediction.outputs[OUTPUT])
            response = pb.ModelInferResponse(model_name=request.model_name, model_version=str(prediction.version),
                                             id=request.id)
            for name in output_names:
                response.outputs.add(name=name, datatype=OUTPUT_DATATYPE, shape=output.shape)
                response.raw_output_contents.append(output.tobytes())
            return response.SerializeToString()  # while its memory is still held

        return await call(context, self.dataplane, "predict", raw, pb.ModelInferRequest, handle, protocol=PROTOCOL,
                          check_raw=lambda message: lists_checked(message, self.dataplane.limits, infer_list_values))


def add_v2_service(server: grpc.aio.Server, dataplane: DataPlane, max_message_bytes: int) -> None:
    """Register ``inference.GRPCInferenceService`` (the Open Inference Protocol) on ``server``; ModelInfer
    receives its messages, of at most ``max_message_bytes``, within the memory budget."""
    servicer = InferenceServicer(dataplane)
    methods = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, {
        method.name: (receiving_unary(servicer.ModelInfer, pb.ModelInferResponse, max_message_bytes)
                      if method.name == "ModelInfer"
                      else raw_unary(getattr(servicer, method.name), getattr(pb, method.output_type.name)))
        for method in methods
    }),))
