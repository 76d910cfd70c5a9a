"""The inference service and its thin gRPC servicers.

``InferenceService`` holds the logic both front doors share (gRPC here, REST in
``rest.py``): validate, run, report. The servicers only convert protos to numpy
and back. ``call`` is the one place where exceptions become statuses and
metrics are recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

import grpc
import numpy as np

from .batching import Batcher, DirectRunner
from .errors import InvalidInput, ServerUnavailable, status_of, to_status
from .inputs import OUTPUT, Limits, prepare_inputs
from .metrics import ServerMetrics
from .models import ModelManager, ModelVersion
from .protos import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    meta_graph_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    types_pb2,
)
from .tensors import from_numpy, to_numpy


SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
_DTYPE_ENUM = {"uint8": types_pb2.DT_UINT8, "float32": types_pb2.DT_FLOAT}
T = TypeVar("T")


@dataclass
class Outcome:
    """What ``call`` records once a request ends."""

    version: str = ""
    status: str = "OK"


class InferenceService:
    """Predict, metadata and status for one model, whatever the protocol."""

    def __init__(self, manager: ModelManager, runner: Batcher | DirectRunner, limits: Limits,
                 metrics: ServerMetrics):
        self.manager, self.runner, self.limits, self.metrics = manager, runner, limits, metrics
        self.draining = False
        self.active = 0
        self.last_request_at = 0.0

    @contextlib.asynccontextmanager
    async def request(self, api: str, model_name: str):
        """Counts the request as active, times it, and labels its metrics with its outcome."""
        outcome, started = Outcome(), time.perf_counter()
        self.active += 1
        self.last_request_at = asyncio.get_running_loop().time()
        try:
            yield outcome
        except BaseException as error:
            status = to_status(error)
            outcome.status = status[0].name if status else ("CANCELLED" if isinstance(error, asyncio.CancelledError)
                                                            else "INTERNAL")
            raise
        finally:
            self.active -= 1
            self.metrics.request_count.labels(model_name, outcome.version, api, outcome.status).inc()
            self.metrics.request_latency.labels(model_name, api).observe((time.perf_counter() - started) * 1e6)

    def _check_open(self) -> None:
        if self.draining:
            raise ServerUnavailable("server is shutting down; retry on another replica")

    async def predict(self, outcome: Outcome, name: str, version: int | None, signature: str,
                      arrays: dict[str, np.ndarray], output_filter: list[str],
                      deadline: float | None) -> tuple[ModelVersion, dict[str, np.ndarray]]:
        self._check_open()
        check_signature_name(signature)
        unknown = sorted(set(output_filter) - {OUTPUT})
        if unknown:
            raise InvalidInput(f"output_filter names unknown output(s) {', '.join(unknown)}; the signature has "
                               f"'{OUTPUT}'")
        image, mask = prepare_inputs(arrays, self.limits)
        model_version = self.manager.acquire(name, version)
        outcome.version = str(model_version.version)
        try:
            output = await self.runner.run(model_version, image, mask, deadline)
        finally:
            self.manager.release(model_version)
        return model_version, {OUTPUT: output}

    def signature_def(self, name: str, version: int | None) -> tuple[int, meta_graph_pb2.SignatureDef]:
        self._check_open()
        model_version = self.manager.acquire(name, version)
        try:
            signature = model_version.runner.signature()
        finally:
            self.manager.release(model_version)
        definition = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
        for kind, infos in (("inputs", definition.inputs), ("outputs", definition.outputs)):
            for tensor_name, (dtype, shape) in signature[kind].items():
                info = infos[tensor_name]
                info.name = f"{tensor_name}:0"
                info.dtype = _DTYPE_ENUM.get(dtype, types_pb2.DT_INVALID)
                info.tensor_shape.dim.add().size = -1  # N
                for size in shape[1:]:
                    info.tensor_shape.dim.add().size = size
        return model_version.version, definition

    def version_statuses(self, name: str, version: int | None) -> list[ModelVersion]:
        return self.manager.statuses(name, version)

    async def drain(self, seconds: float, quiet: float = 0.25) -> bool:
        """Refuse new work, then wait up to ``seconds`` for queued and in-flight work; True if all done.

        It also waits for ``quiet`` seconds without any new request: callers still
        arriving get a clean UNAVAILABLE (and retry elsewhere) instead of a
        connection cut by the shutdown that follows.
        """
        self.draining = True
        loop = asyncio.get_running_loop()
        give_up = loop.time() + seconds

        last_busy = loop.time()
        while loop.time() < give_up:
            now = loop.time()
            if self.active or self.runner.busy:
                last_busy = now
            elif now - max(last_busy, self.last_request_at) >= quiet:
                break
            await asyncio.sleep(0.01)
        return not (self.active or self.runner.busy)


def check_signature_name(signature: str) -> None:
    if signature not in ("", SIGNATURE):
        raise InvalidInput(f"Serving signature key \"{signature}\" not found; the model has '{SIGNATURE}'")


def requested_version(model_spec) -> int | None:
    if model_spec.HasField("version_label"):
        raise InvalidInput("version labels are not supported; ask for a version number")
    return model_spec.version.value if model_spec.HasField("version") else None


async def call(context: grpc.aio.ServicerContext, service: InferenceService, api: str, model_name: str,
               handler: Callable[[Outcome], Awaitable[T]]) -> T:
    """Run ``handler``; a domain error aborts with its status, anything else with INTERNAL."""
    code = message = None
    async with service.request(api, model_name) as outcome:
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

    def __init__(self, service: InferenceService):
        self.service = service

    async def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        spec = request.model_spec

        async def handle(outcome: Outcome) -> predict_pb2.PredictResponse:
            arrays = {name: to_numpy(name, tensor) for name, tensor in request.inputs.items()}
            model_version, outputs = await self.service.predict(
                outcome, spec.name, requested_version(spec), spec.signature_name, arrays,
                list(request.output_filter), deadline_of(context))
            response = predict_pb2.PredictResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = model_version.version
            response.model_spec.signature_name = spec.signature_name or SIGNATURE
            for name in request.output_filter or outputs:
                response.outputs[name].CopyFrom(from_numpy(outputs[name]))
            return response

        return await call(context, self.service, "predict", spec.name, handle)

    async def GetModelMetadata(self, request, context) -> get_model_metadata_pb2.GetModelMetadataResponse:
        spec = request.model_spec

        async def handle(outcome: Outcome) -> get_model_metadata_pb2.GetModelMetadataResponse:
            fields = set(request.metadata_field)
            if fields != {"signature_def"}:
                raise InvalidInput(f"metadata_field must be ['signature_def'], got {sorted(fields)}")
            version, definition = self.service.signature_def(spec.name, requested_version(spec))
            outcome.version = str(version)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = version
            signatures = get_model_metadata_pb2.SignatureDefMap()
            signatures.signature_def[SIGNATURE].CopyFrom(definition)
            response.metadata["signature_def"].Pack(signatures)
            return response

        return await call(context, self.service, "metadata", spec.name, handle)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``tensorflow.serving.ModelService``: GetModelStatus."""

    def __init__(self, service: InferenceService):
        self.service = service

    async def GetModelStatus(self, request, context) -> get_model_status_pb2.GetModelStatusResponse:
        spec = request.model_spec

        async def handle(outcome: Outcome) -> get_model_status_pb2.GetModelStatusResponse:
            response = get_model_status_pb2.GetModelStatusResponse()
            for model_version in self.service.version_statuses(spec.name, requested_version(spec)):
                status = response.model_version_status.add(version=model_version.version,
                                                           state=int(model_version.state))
                if model_version.error:
                    status.status.error_code = 2  # tensorflow.error.UNKNOWN
                    status.status.error_message = model_version.error
            return response

        return await call(context, self.service, "status", spec.name, handle)

