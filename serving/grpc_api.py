"""The TF Serving gRPC API over the data plane: protos in, numpy to the data plane, protos out.

Requests arrive as raw bytes and are parsed here, so a body that is not the
message it should be is the caller's INVALID_ARGUMENT, not gRPC's UNKNOWN.
A message is held from the memory budget as soon as it has arrived (refused at
once if it does not fit), its value lists are measured on the wire before it is
parsed, and input shapes are checked against the limits from the tensors'
headers and the request admitted (``admission``) before any value is decoded;
the reply is serialized before the request lets its memory go. ``call`` is the
one place where a gRPC request's failure becomes its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Awaitable, Callable, TypeVar

import grpc
from google.protobuf.message import DecodeError

from inpaint.core.contract import BYTES_SIGNATURE, BYTES_SIGNATURE_NAME, DTYPES, IMAGE, SIGNATURE_NAME
from inpaint.core.protos import get_model_metadata_pb2, get_model_status_pb2, predict_pb2
from inpaint.core.tensors import fill_strings, fill_tensor, signature_def, tensor_shape, to_numpy, to_strings

from .dataplane import DataPlane, Outcome, Prediction, is_bytes_signature
from .errors import InvalidInput, QueueFull, RequestTooLarge, status_of
from .inputs import Limits, check_shapes
from .wire import WireError, predict_list_values

MESSAGE_COPIES = 2   # a message held: the bytes received and the parsed message
REPLY_BYTES_PER_VALUE = 2  # past the output array: the reply message's copy and its serialized form

T = TypeVar("T")
UNKNOWN_ERROR_CODE = 2  # tensorflow.error.UNKNOWN, in a version's load status


def requested_version(model_spec) -> int | None:
    if model_spec.HasField("version_label"):
        raise InvalidInput("version labels are not supported; ask for a version number")
    return model_spec.version.value if model_spec.HasField("version") else None


def parse(message_class, raw: bytes):
    """The request message in ``raw``; InvalidInput when the bytes are not one."""
    try:
        return message_class.FromString(raw)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise InvalidInput(f"request body is not a valid {message_class.DESCRIPTOR.full_name}: {error}") from None


def model_name_of(request) -> str:
    """The model a request names: TF Serving's ``model_spec.name``, or the Open Inference Protocol's
    ``model_name`` (infer) or ``name`` (metadata, ready); "" for a request that names none or was not parsed."""
    if request is None:
        return ""
    if request.DESCRIPTOR.fields_by_name.get("model_spec") is not None:
        return request.model_spec.name
    return getattr(request, "model_name", getattr(request, "name", ""))


def check_list_values(count: int, limits: Limits) -> None:
    """Refuse tensors sent as more value-list numbers than ``limits.max_list_values``, before parsing."""
    if count > limits.max_list_values:
        raise InvalidInput(f"request sends more than {limits.max_list_values} values as value lists (int_val, "
                           "float_val, contents), which are parsed one number at a time; send the tensors as "
                           "raw bytes (tensor_content, raw_input_contents)")


def predict_lists_checked(raw: bytes, limits: Limits) -> None:
    try:
        count = predict_list_values(raw, limits.max_list_values)
    except WireError:
        return  # not a message: the parser says so
    check_list_values(count, limits)


async def call(context: grpc.aio.ServicerContext, dataplane: DataPlane, api: str, raw: bytes, message_class,
               handler: Callable[[object, Outcome], Awaitable[T]], *, protocol: str = "tfserving",
               counted: bool = True, check_raw: Callable[[bytes], None] | None = None) -> T:
    """Parse ``raw`` and run ``handler``; a domain error aborts with its status, anything else with INTERNAL.

    The request is counted in the metrics under ``protocol``, unless it is a probe (``counted=False``); a
    counted one holds its message from the memory budget before it is parsed. ``check_raw`` looks at the
    bytes before they are parsed (a value list too long to parse, say) and raises InvalidInput.
    """
    code = message = None
    held = dataplane.budget.reservation() if counted and dataplane.budget is not None else None
    try:
        if held is not None:  # before parsing: a message that does not fit is dropped unparsed
            held.grow_now(MESSAGE_COPIES * len(raw), f"a {len(raw)}-byte {api} message")
        if check_raw is not None:
            check_raw(raw)
        request, problem = parse(message_class, raw), None
    except (InvalidInput, QueueFull, RequestTooLarge) as error:
        request, problem = None, error
    model_name = model_name_of(request)
    scope = dataplane.request(api, model_name, protocol) if counted else contextlib.nullcontext(Outcome())
    async with scope as outcome:
        if held is not None:
            outcome.reservation.release()
            outcome.reservation = held  # released when the request ends
        try:
            if problem is not None:
                raise problem
            return await handler(request, outcome)
        except Exception as error:  # noqa: BLE001 - every failure becomes a status
            label = api if protocol == "tfserving" else f"{protocol} {api}"
            code, _, message = status_of(error, label, model_name)
            outcome.status = code.name
    await context.abort(code, message)


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


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining


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

    async def Predict(self, raw: bytes, context) -> predict_pb2.PredictResponse:
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
                          check_raw=lambda message: predict_lists_checked(message, self.dataplane.limits))

    async def GetModelMetadata(self, raw: bytes, context) -> get_model_metadata_pb2.GetModelMetadataResponse:
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


class ModelServicer:
    """``tensorflow.serving.ModelService``: GetModelStatus (HandleReloadConfigRequest is UNIMPLEMENTED)."""

    def __init__(self, dataplane: DataPlane):
        self.dataplane = dataplane

    async def GetModelStatus(self, raw: bytes, context) -> get_model_status_pb2.GetModelStatusResponse:
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


def raw_unary(method, response_class) -> grpc.RpcMethodHandler:
    """A handler that receives the request's bytes unparsed (``parse`` reads them) and answers with a message
    or, when it serialized the reply itself (a large one, within its memory reservation), its bytes."""
    def serialize(response) -> bytes:
        return response if isinstance(response, bytes) else response_class.SerializeToString(response)

    return grpc.unary_unary_rpc_method_handler(method, request_deserializer=None, response_serializer=serialize)


def add_tf_serving_services(server: grpc.aio.Server, dataplane: DataPlane) -> None:
    """Register PredictionService and ModelService under TF Serving's names."""
    prediction, models = PredictionServicer(dataplane), ModelServicer(dataplane)
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
            "Predict": raw_unary(prediction.Predict, predict_pb2.PredictResponse),
            "GetModelMetadata": raw_unary(prediction.GetModelMetadata,
                                           get_model_metadata_pb2.GetModelMetadataResponse),
        }),
        grpc.method_handlers_generic_handler("tensorflow.serving.ModelService", {
            "GetModelStatus": raw_unary(models.GetModelStatus, get_model_status_pb2.GetModelStatusResponse),
        }),
    ))
