"""The TF Serving gRPC API over the data plane: protos in, numpy to the data plane, protos out.

Requests arrive as raw bytes and are parsed here, so a body that is not the
message it should be is the caller's INVALID_ARGUMENT, not gRPC's UNKNOWN.
A predict's message is received only once its memory is held from the budget
(``receiving_unary``: gRPC buffers a message whole before any handler sees it,
so the handler reads it itself, after holding what the largest message may take
while it arrives, and keeps what it really takes); other methods' messages are
held as soon as they have arrived (refused at once if they do not fit). Value
lists are measured on the wire before a message is parsed, and input shapes are
checked against the limits from the tensors' headers and the request admitted
(``admission``) before any value is decoded; the reply is serialized before the
request lets its memory go. ``call`` is the one place where a gRPC request's
failure becomes its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, TypeVar

import grpc
from google.protobuf.message import DecodeError

from inpaint.core.contract import BYTES_SIGNATURE, BYTES_SIGNATURE_NAME, DTYPES, IMAGE, SIGNATURE_NAME
from inpaint.core.protos import get_model_metadata_pb2, get_model_status_pb2, model_management_pb2, predict_pb2
from inpaint.core.tensors import fill_strings, fill_tensor, signature_def, tensor_shape, to_numpy, to_strings

from .admission import Reservation
from .dataplane import DataPlane, Outcome, Prediction, is_bytes_signature
from .errors import DeadlineExpired, InvalidInput, QueueFull, RequestTooLarge, status_of
from .inputs import Limits, check_shapes
from .wire import WireError, predict_list_values

MESSAGE_COPIES = 2   # a message held: the bytes received and the parsed message
# A message arriving: gRPC's buffer of it and, for a moment when it is handed over, its copy as bytes too.
ARRIVAL_COPIES = 2
ARRIVAL_SECONDS = 60.0  # the longest a message may take to arrive once its memory is held (or the deadline)
REPLY_BYTES_PER_VALUE = 2  # past the output array: the reply message's copy and its serialized form

T = TypeVar("T")
UNKNOWN_ERROR_CODE = 2  # tensorflow.error.UNKNOWN, in a version's load status


def requested_version(model_spec) -> int | str | None:
    """A ModelSpec's version: a number, a label (``version_label``), or None for the latest."""
    if model_spec.HasField("version_label"):
        return model_spec.version_label
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


def lists_checked(raw: bytes, limits: Limits, count_values=predict_list_values) -> None:
    """The value lists of a raw message (``count_values`` reads its protocol's wire format) within the limit."""
    try:
        count = count_values(raw, limits.max_list_values)
    except WireError:
        return  # not a message: the parser says so
    check_list_values(count, limits)


@dataclass(frozen=True)
class Incoming:
    """A call's request message not received yet: gRPC receives it when ``requests`` is read."""

    requests: AsyncIterator[bytes]
    max_bytes: int  # gRPC's cap on a message (grpc.max_receive_message_length)


async def only_message(requests: AsyncIterator[bytes]) -> bytes | None:
    """The call's one message (None if it has none), read to the end of the stream so that gRPC's receiver
    keeps no reference to it."""
    messages = aiter(requests)
    raw = await anext(messages, None)
    if raw is not None and await anext(messages, None) is not None:
        raise InvalidInput("the call carries more than one request message")
    return raw


async def receive(incoming: Incoming, held: Reservation | None, api: str, deadline: float | None) -> bytes:
    """The message, received once what it may take while arriving (``ARRIVAL_COPIES`` x gRPC's cap) is held
    from the budget (waiting as ``MemoryBudget.acquire`` does), then held at what it really takes."""
    if held is not None:
        await held.grow(ARRIVAL_COPIES * incoming.max_bytes, f"a {api} message arriving (up to "
                        f"{incoming.max_bytes} bytes)", deadline)
    loop = asyncio.get_running_loop()
    seconds = ARRIVAL_SECONDS if deadline is None else min(ARRIVAL_SECONDS, deadline - loop.time())
    try:
        raw = await asyncio.wait_for(only_message(incoming.requests), max(seconds, 0.0))
    except asyncio.TimeoutError:
        raise DeadlineExpired(f"the {api} message did not arrive within {seconds:.0f} s") from None
    if raw is None:
        raise InvalidInput(f"the call ended without its {api} message")
    if held is not None:
        held.shrink_to(MESSAGE_COPIES * len(raw))
    return raw


async def held_message(message: bytes | Incoming, held: Reservation | None, api: str,
                       deadline: float | None) -> bytes:
    """The message's bytes, held from the budget before they are parsed: received within the budget, or, when
    they have arrived already, held at once (a message that does not fit is dropped unparsed)."""
    if isinstance(message, Incoming):
        return await receive(message, held, api, deadline)
    if held is not None:
        held.grow_now(MESSAGE_COPIES * len(message), f"a {len(message)}-byte {api} message")
    return message


async def call(context: grpc.aio.ServicerContext, dataplane: DataPlane, api: str, message: bytes | Incoming,
               message_class, handler: Callable[[object, Outcome], Awaitable[T]], *, protocol: str = "tfserving",
               counted: bool = True, check_raw: Callable[[bytes], None] | None = None) -> T:
    """Parse ``message`` and run ``handler``; a domain error aborts with its status, anything else with INTERNAL.

    The request is counted in the metrics under ``protocol``, unless it is a probe (``counted=False``); a
    counted one holds its message from the memory budget before it is parsed (``held_message``). ``check_raw``
    looks at the bytes before they are parsed (a value list too long to parse, say) and raises InvalidInput.
    """
    code = text = None
    held = dataplane.budget.reservation() if counted and dataplane.budget is not None else None
    try:
        raw = await held_message(message, held, api, deadline_of(context))
        if check_raw is not None:
            check_raw(raw)
        request, problem = parse(message_class, raw), None
        del raw
    except (InvalidInput, QueueFull, RequestTooLarge, DeadlineExpired) as error:
        request, problem = None, error
    except BaseException:  # cancelled while it arrived: nothing else will give its memory back
        if held is not None:
            held.release()
        raise
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
            code, _, text = status_of(error, label, model_name)
            outcome.status = code.name
    # gRPC may keep the abort's exception, and with its traceback this frame: let it hold nothing large.
    message = raw = request = problem = None
    await context.abort(code, text)


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
                          check_raw=lambda message: lists_checked(message, self.dataplane.limits))

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


Reloader = Callable[[object], Awaitable[None]]  # serves a ModelServerConfig's models from now on


class ModelServicer:
    """``tensorflow.serving.ModelService``: GetModelStatus and HandleReloadConfigRequest (``reload``)."""

    def __init__(self, dataplane: DataPlane, reload: Reloader | None = None):
        self.dataplane, self.reload = dataplane, reload

    async def HandleReloadConfigRequest(self, raw: bytes, context) -> model_management_pb2.ReloadConfigResponse:
        """As TF Serving: OK once the config is in place (new models load in the background); a config that
        cannot be used is refused with its status, and changes nothing."""
        async def handle(request, outcome: Outcome) -> model_management_pb2.ReloadConfigResponse:
            if self.reload is None:
                raise InvalidInput("this server does not take model configs")
            await self.reload(request.config)
            return model_management_pb2.ReloadConfigResponse()  # status: OK (error_code 0)

        return await call(context, self.dataplane, "reload_config", raw, model_management_pb2.ReloadConfigRequest,
                          handle, counted=False)

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


def reply_serializer(response_class) -> Callable[[object], bytes]:
    """A reply message's bytes, or the bytes a handler serialized itself (a large reply, within its memory
    reservation)."""
    def serialize(response) -> bytes:
        return response if isinstance(response, bytes) else response_class.SerializeToString(response)

    return serialize


def raw_unary(method, response_class) -> grpc.RpcMethodHandler:
    """A handler that receives the request's bytes unparsed (``parse`` reads them)."""
    return grpc.unary_unary_rpc_method_handler(method, request_deserializer=None,
                                               response_serializer=reply_serializer(response_class))


def receiving_unary(method, response_class, max_message_bytes: int) -> grpc.RpcMethodHandler:
    """A unary method whose handler receives the request message itself (``Incoming``), so that its memory is
    held before gRPC buffers it. Registered as client-streaming, which is the same call on the wire: gRPC
    then reads a message only when the handler asks for it."""
    async def behavior(requests: AsyncIterator[bytes], context):
        return await method(Incoming(requests, max_message_bytes), context)

    return grpc.stream_unary_rpc_method_handler(behavior, request_deserializer=None,
                                                response_serializer=reply_serializer(response_class))


def add_tf_serving_services(server: grpc.aio.Server, dataplane: DataPlane, max_message_bytes: int,
                            reload: Reloader | None = None) -> None:
    """Register PredictionService and ModelService under TF Serving's names; Predict receives its messages,
    of at most ``max_message_bytes``, within the memory budget; ``reload`` applies a HandleReloadConfigRequest."""
    prediction, models = PredictionServicer(dataplane), ModelServicer(dataplane, reload)
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
            "Predict": receiving_unary(prediction.Predict, predict_pb2.PredictResponse, max_message_bytes),
            "GetModelMetadata": raw_unary(prediction.GetModelMetadata,
                                           get_model_metadata_pb2.GetModelMetadataResponse),
        }),
        grpc.method_handlers_generic_handler("tensorflow.serving.ModelService", {
            "GetModelStatus": raw_unary(models.GetModelStatus, get_model_status_pb2.GetModelStatusResponse),
            "HandleReloadConfigRequest": raw_unary(models.HandleReloadConfigRequest,
                                                   model_management_pb2.ReloadConfigResponse),
        }),
    ))
