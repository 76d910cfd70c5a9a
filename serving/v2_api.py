"""The Open Inference Protocol's gRPC adapter, ``inference.GRPCInferenceService``, over the data plane: registered
on the TF Serving port by ``add_v2_service``. What the protocol's two adapters share is ``v2_protocol``'s;
calls go through ``grpc_transport``; the request's path: the ``inpaint.serving`` package's docstring.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, TypeVar

import grpc
import numpy as np

from inpaint.core.contract import IMAGE, OUTPUT
from inpaint.core.protos import grpc_predict_v2_pb2 as pb

from .dataplane import DataPlane, Outcome
from .errors import InvalidInput, ModelNotFound
from .grpc_transport import (REPLY_BYTES_PER_VALUE, Incoming, call, deadline_of, lists_checked,
                             receiving_unary, small_unary)
from .inputs import Limits
from .v2_protocol import (OUTPUT_DATATYPE, PROTOCOL, InputSpec, array_from_bytes, check_inputs, check_outputs,
                          model_metadata, model_ready, requested_version, server_metadata)
from .wire import infer_list_values

T = TypeVar("T")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


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

    async def _call(self, context: grpc.aio.ServicerContext, api: str, raw: Incoming, message_class,
                    handler: Callable[[object, Outcome], Awaitable[T]], counted: bool = True) -> T:
        return await call(context, self.dataplane, api, raw, message_class, handler, protocol=PROTOCOL,
                          counted=counted)

    async def ServerLive(self, raw: Incoming, context) -> pb.ServerLiveResponse:
        async def handle(request, outcome):
            return pb.ServerLiveResponse(live=True)

        return await self._call(context, "live", raw, pb.ServerLiveRequest, handle, counted=False)

    async def ServerReady(self, raw: Incoming, context) -> pb.ServerReadyResponse:
        async def handle(request, outcome):
            return pb.ServerReadyResponse(ready=self.dataplane.is_ready())

        return await self._call(context, "ready", raw, pb.ServerReadyRequest, handle, counted=False)

    async def ModelReady(self, raw: Incoming, context) -> pb.ModelReadyResponse:
        async def handle(request: pb.ModelReadyRequest, outcome):
            version = requested_version(request.version)
            try:
                ready = model_ready(self.dataplane, request.name, version)
            except ModelNotFound:
                ready = False  # as Triton answers: not ready, rather than an error
            return pb.ModelReadyResponse(ready=ready)

        return await self._call(context, "model_ready", raw, pb.ModelReadyRequest, handle, counted=False)

    async def ServerMetadata(self, raw: Incoming, context) -> pb.ServerMetadataResponse:
        async def handle(request, outcome):
            return pb.ServerMetadataResponse(**server_metadata())

        return await self._call(context, "server_metadata", raw, pb.ServerMetadataRequest, handle, counted=False)

    async def ModelMetadata(self, raw: Incoming, context) -> pb.ModelMetadataResponse:
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


def add_v2_service(server: grpc.aio.Server, dataplane: DataPlane, max_message_bytes: int,
                   gate: asyncio.Semaphore) -> None:
    """Register ``inference.GRPCInferenceService`` (the Open Inference Protocol) on ``server``; ModelInfer
    receives its messages, of at most ``max_message_bytes``, within the memory budget, the other methods
    through ``gate``."""
    servicer = InferenceServicer(dataplane)
    methods = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, {
        method.name: (receiving_unary(servicer.ModelInfer, pb.ModelInferResponse, max_message_bytes)
                      if method.name == "ModelInfer"
                      else small_unary(getattr(servicer, method.name), getattr(pb, method.output_type.name),
                                       max_message_bytes, gate))
        for method in methods
    }),))
