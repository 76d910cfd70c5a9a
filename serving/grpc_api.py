"""The TF Serving gRPC API over the data plane: protos in, numpy to the data plane, protos out.

``call`` is the one place where a gRPC request's failure becomes its status.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, TypeVar

import grpc

from inpaint.core.contract import SIGNATURE_NAME
from inpaint.core.protos import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from inpaint.core.tensors import from_numpy, signature_def, to_numpy

from .dataplane import DataPlane, Outcome
from .errors import InvalidInput, status_of

T = TypeVar("T")
UNKNOWN_ERROR_CODE = 2  # tensorflow.error.UNKNOWN, in a version's load status


def requested_version(model_spec) -> int | None:
    if model_spec.HasField("version_label"):
        raise InvalidInput("version labels are not supported; ask for a version number")
    return model_spec.version.value if model_spec.HasField("version") else None


async def call(context: grpc.aio.ServicerContext, dataplane: DataPlane, api: str, model_name: str,
               handler: Callable[[Outcome], Awaitable[T]]) -> T:
    """Run ``handler``; a domain error aborts with its status, anything else with INTERNAL."""
    code = message = None
    async with dataplane.request(api, model_name) as outcome:
        try:
            return await handler(outcome)
        except Exception as error:  # noqa: BLE001 - every failure becomes a status
            code, _, message = status_of(error, api, model_name)
            outcome.status = code.name
    await context.abort(code, message)


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``tensorflow.serving.PredictionService``: Predict and GetModelMetadata."""

    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    async def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        spec = request.model_spec

        async def handle(outcome: Outcome) -> predict_pb2.PredictResponse:
            arrays = {name: to_numpy(name, tensor) for name, tensor in request.inputs.items()}
            prediction = await self.dataplane.predict(
                outcome, spec.name, requested_version(spec), spec.signature_name, arrays,
                list(request.output_filter), deadline_of(context))
            response = predict_pb2.PredictResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = prediction.version
            response.model_spec.signature_name = spec.signature_name or SIGNATURE_NAME
            for name in request.output_filter or prediction.outputs:
                response.outputs[name].CopyFrom(from_numpy(prediction.outputs[name]))
            return response

        return await call(context, self.dataplane, "predict", spec.name, handle)

    async def GetModelMetadata(self, request, context) -> get_model_metadata_pb2.GetModelMetadataResponse:
        spec = request.model_spec

        async def handle(outcome: Outcome) -> get_model_metadata_pb2.GetModelMetadataResponse:
            fields = set(request.metadata_field)
            if fields != {"signature_def"}:
                raise InvalidInput(f"metadata_field must be ['signature_def'], got {sorted(fields)}")
            served = self.dataplane.signature(outcome, spec.name, requested_version(spec))
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = served.version
            signatures = get_model_metadata_pb2.SignatureDefMap()
            signatures.signature_def[SIGNATURE_NAME].CopyFrom(signature_def(served.signature))
            response.metadata["signature_def"].Pack(signatures)
            return response

        return await call(context, self.dataplane, "metadata", spec.name, handle)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``tensorflow.serving.ModelService``: GetModelStatus."""

    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    async def GetModelStatus(self, request, context) -> get_model_status_pb2.GetModelStatusResponse:
        spec = request.model_spec

        async def handle(outcome: Outcome) -> get_model_status_pb2.GetModelStatusResponse:
            response = get_model_status_pb2.GetModelStatusResponse()
            for model_version in self.dataplane.version_statuses(spec.name, requested_version(spec)):
                status = response.model_version_status.add(version=model_version.version,
                                                           state=int(model_version.state))
                if model_version.error:
                    status.status.error_code = UNKNOWN_ERROR_CODE
                    status.status.error_message = model_version.error
            return response

        return await call(context, self.dataplane, "status", spec.name, handle)
