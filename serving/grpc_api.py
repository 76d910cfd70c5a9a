"""TF Serving's gRPC API (``tensorflow.serving.PredictionService`` and ``ModelService``) over the data plane:
its protos to numpy and the data plane's calls, its answers back to protos. Calls go through
``grpc_transport``; the request's path: the ``inpaint.serving`` package's docstring.
"""

from __future__ import annotations

import asyncio
import math
from typing import Awaitable, Callable

import grpc

from inpaint.core.contract import BYTES_SIGNATURE, BYTES_SIGNATURE_NAME, DTYPES, IMAGE, SIGNATURE_NAME
from inpaint.core.protos import get_model_metadata_pb2, get_model_status_pb2, model_management_pb2, predict_pb2
from inpaint.core.tensors import fill_strings, fill_tensor, signature_def, tensor_shape, to_numpy, to_strings

from .dataplane import DataPlane, Outcome, Prediction, is_bytes_signature
from .errors import InvalidInput
from .grpc_transport import (REPLY_BYTES_PER_VALUE, Incoming, call, deadline_of, lists_checked,
                             receiving_unary, small_unary)
from .inputs import Limits, check_shapes
from .wire import predict_list_values

UNKNOWN_ERROR_CODE = 2  # tensorflow.error.UNKNOWN, in a version's load status


def requested_version(model_spec) -> int | str | None:
    """A ModelSpec's version: a number, a label (``version_label``), or None for the latest."""
    if model_spec.HasField("version_label"):
        return model_spec.version_label
    return model_spec.version.value if model_spec.HasField("version") else None


def input_shapes(request: predict_pb2.PredictRequest, limits: Limits) -> dict[str, tuple[int, ...]]:
    """The tensors' declared shapes, checked against the signature and the limits."""
    shapes = {name: tensor_shape(name, tensor) for name, tensor in request.inputs.items()}
    check_shapes(shapes, limits)
    return shapes


def input_itemsize(request: predict_pb2.PredictRequest) -> int:
    """The widest input dtype's bytes per value (an unknown dtype is refused by ``to_numpy``)."""
    return max(DTYPES[tensor.dtype].itemsize if tensor.dtype in DTYPES else 1 for tensor in request.inputs.values())


def list_values(request: predict_pb2.PredictRequest, shapes: dict[str, tuple[int, ...]]) -> int:
    """Values of the tensors sent as value lists rather than ``tensor_content``."""
    return sum(math.prod(shapes[name]) for name, tensor in request.inputs.items() if not tensor.tensor_content)


def input_arrays(request: predict_pb2.PredictRequest, shapes: dict[str, tuple[int, ...]]) -> dict:
    """The request's tensors as numpy, after their declared shapes passed the limits."""
    return {name: to_numpy(name, tensor, shape=shapes[name]) for name, tensor in request.inputs.items()}


def predict_response(spec, prediction: Prediction) -> predict_pb2.PredictResponse:
    response = predict_pb2.PredictResponse()
    response.model_spec.name = spec.name
    response.model_spec.version.value = prediction.version
    response.model_spec.signature_name = spec.signature_name or SIGNATURE_NAME
    for name, value in prediction.outputs.items():
        if isinstance(value, list):
            fill_strings(response.outputs[name], value)
        else:
            fill_tensor(response.outputs[name], value)
    return response


class PredictionServicer:
    """``tensorflow.serving.PredictionService``: Predict and GetModelMetadata (others are UNIMPLEMENTED)."""

    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    async def Predict(self, raw: bytes | Incoming, context) -> predict_pb2.PredictResponse:
        async def handle(request: predict_pb2.PredictRequest, outcome: Outcome) -> predict_pb2.PredictResponse:
            spec = request.model_spec
            dataplane, deadline = self.dataplane, deadline_of(context)
            if is_bytes_signature(spec.signature_name):
                files = {name: to_strings(name, tensor, dataplane.limits.max_images)
                         for name, tensor in request.inputs.items()}
                prediction = await dataplane.predict_bytes(
                    outcome, spec.name, requested_version(spec), files, list(request.output_filter), deadline)
            else:
                shapes = input_shapes(request, dataplane.limits)
                await dataplane.admit_arrays(outcome, shapes[IMAGE], input_itemsize(request), REPLY_BYTES_PER_VALUE,
                                             deadline, list_values(request, shapes))
                arrays = await dataplane.decoded(input_arrays, request, shapes)
                prediction = await dataplane.predict(
                    outcome, spec.name, requested_version(spec), spec.signature_name, arrays,
                    list(request.output_filter), deadline)
            return predict_response(spec, prediction).SerializeToString()  # while its memory is still held

        return await call(context, self.dataplane, "predict", raw, predict_pb2.PredictRequest, handle,
                          check_raw=lambda message: lists_checked(message, self.dataplane.limits,
                                                                   predict_list_values))

    async def GetModelMetadata(self, raw: Incoming, context) -> get_model_metadata_pb2.GetModelMetadataResponse:
        async def handle(request, outcome: Outcome) -> get_model_metadata_pb2.GetModelMetadataResponse:
            spec = request.model_spec
            fields = set(request.metadata_field)
            if fields != {"signature_def"}:
                raise InvalidInput(f"metadata_field must be ['signature_def'], got {sorted(fields)}")
            served = self.dataplane.signature(outcome, spec.name, requested_version(spec))
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = served.version
            signatures = get_model_metadata_pb2.SignatureDefMap()
            signatures.signature_def[SIGNATURE_NAME].CopyFrom(signature_def(served.signature))
            signatures.signature_def[BYTES_SIGNATURE_NAME].CopyFrom(signature_def(BYTES_SIGNATURE))
            response.metadata["signature_def"].Pack(signatures)
            return response

        return await call(context, self.dataplane, "metadata", raw, get_model_metadata_pb2.GetModelMetadataRequest,
                          handle)


Reloader = Callable[[object], Awaitable[None]]  # serves a ModelServerConfig's models from now on


class ModelServicer:
    """``tensorflow.serving.ModelService``: GetModelStatus and HandleReloadConfigRequest (``reload``)."""

    def __init__(self, dataplane: DataPlane, reload: Reloader | None = None):
        self.dataplane, self.reload = dataplane, reload

    async def HandleReloadConfigRequest(self, raw: Incoming, context) -> model_management_pb2.ReloadConfigResponse:
        """As TF Serving: OK once the config is in place (new models load in the background); a config that
        cannot be used is refused with its status, and changes nothing."""
        async def handle(request, outcome: Outcome) -> model_management_pb2.ReloadConfigResponse:
            if self.reload is None:
                raise InvalidInput("this server does not take model configs")
            await self.reload(request.config)
            return model_management_pb2.ReloadConfigResponse()  # status: OK (error_code 0)

        return await call(context, self.dataplane, "reload_config", raw, model_management_pb2.ReloadConfigRequest,
                          handle, counted=False)

    async def GetModelStatus(self, raw: Incoming, context) -> get_model_status_pb2.GetModelStatusResponse:
        async def handle(request, outcome: Outcome) -> get_model_status_pb2.GetModelStatusResponse:
            spec = request.model_spec
            response = get_model_status_pb2.GetModelStatusResponse()
            for model_version in self.dataplane.version_statuses(spec.name, requested_version(spec)):
                status = response.model_version_status.add(version=model_version.version,
                                                           state=int(model_version.state))
                if model_version.error:
                    status.status.error_code = UNKNOWN_ERROR_CODE
                    status.status.error_message = model_version.error
            return response

        return await call(context, self.dataplane, "status", raw, get_model_status_pb2.GetModelStatusRequest,
                          handle)


def add_tf_serving_services(server: grpc.aio.Server, dataplane: DataPlane, max_message_bytes: int,
                            gate: asyncio.Semaphore, reload: Reloader | None = None) -> None:
    """Register PredictionService and ModelService under TF Serving's names; Predict receives its messages,
    of at most ``max_message_bytes``, within the memory budget, the other methods through ``gate``;
    ``reload`` applies a HandleReloadConfigRequest."""
    prediction, models = PredictionServicer(dataplane), ModelServicer(dataplane, reload)
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
            "Predict": receiving_unary(prediction.Predict, predict_pb2.PredictResponse, max_message_bytes),
            "GetModelMetadata": small_unary(prediction.GetModelMetadata,
                                            get_model_metadata_pb2.GetModelMetadataResponse, max_message_bytes, gate),
        }),
        grpc.method_handlers_generic_handler("tensorflow.serving.ModelService", {
            "GetModelStatus": small_unary(models.GetModelStatus, get_model_status_pb2.GetModelStatusResponse,
                                          max_message_bytes, gate),
            "HandleReloadConfigRequest": small_unary(models.HandleReloadConfigRequest,
                                                     model_management_pb2.ReloadConfigResponse, max_message_bytes,
                                                     gate),
        }),
    ))
