"""gRPC's side of every adapter: a call's message received within the memory budget, parsed, handled, and
its failure turned into its status. TF Serving's API (``grpc_api``) and the Open Inference Protocol's
(``v2_api``) both register their methods with it; the request's path: the ``inpaint.serving`` package's
docstring.

Methods receive their request as raw bytes and parse them here, so a body that is not the message it should
be is the caller's INVALID_ARGUMENT, not gRPC's UNKNOWN. gRPC buffers a message whole, up to its cap, before a
unary handler sees it, so every method registers as client-streaming (the same call on the wire) and reads
its message itself (``receive``): a predict once it holds what the largest message may take while it arrives
(``receiving_unary``), then keeps what it really takes; the other methods (``small_unary``: metadata, status,
reload, the v2 readiness calls, health, each message of a reflection stream), whose messages are bytes in
practice but may be as large as a predict's, through a gate that lets ``SMALL_ARRIVALS`` arrive at once,
outside the budget (the Deployment's arithmetic counts them: ``serving/admission.py``), then, up to
``SMALL_MESSAGE_BYTES``, held as soon as they have arrived, refused at once if they do not fit; a larger one is
refused unparsed. ``call`` is the one place where a gRPC request's failure becomes its status.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.reflection import aio as reflection_aio

from .admission import Reservation
from .dataplane import DataPlane, Outcome
from .errors import DeadlineExpired, InvalidInput, QueueFull, RequestTooLarge, status_of
from .inputs import Limits
from .wire import WireError

MESSAGE_COPIES = 2   # a message held: the bytes received and the parsed message
# A message arriving: gRPC's buffer of it and, for a moment when it is handed over, its copy as bytes too.
ARRIVAL_COPIES = 2
ARRIVAL_SECONDS = 60.0  # the longest a message may take to arrive once its memory is held (or the deadline)
# Messages of methods other than predicts arrive one at a time, each up to gRPC's cap: they are bytes in
# practice, but one of 90 MB peaked at 258 MiB over idle as it arrived. A tiny one passes in microseconds; a
# slow one holds the gate for SMALL_ARRIVAL_SECONDS at most.
SMALL_ARRIVALS = 1
SMALL_ARRIVAL_SECONDS = 2.0
# A reflection stream waits this long for its next request, holding the gate, before it ends: clients send
# their lookups back to back (each 5-16 ms on loopback, measured), then leave the stream open.
REFLECTION_IDLE_SECONDS = 0.5
# The most a message of a method other than a predict may hold once it has arrived: theirs are bytes (a model
# config of a thousand models is ~100 KB); a larger one is dropped unparsed (parsing a 90 MB model name held
# four copies of it).
SMALL_MESSAGE_BYTES = 2**20
# Streams that stay open as long as the client likes (health Watch, reflection), at once, per method: each
# keeps its request (up to SMALL_MESSAGE_BYTES) while open, and a reflection stream whose answers are not read
# its answer too, which repeats the request (~5 MiB for a 1 MiB lookup, measured). Uncounted, 473 unread
# streams of 1 MiB lookups OOM-killed the pod in 9 s, and 1,150 Watch streams of 1 MiB service names too.
OPEN_STREAMS = 16
REPLY_BYTES_PER_VALUE = 2  # past the output array: the reply message's copy and its serialized form

T = TypeVar("T")


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


def lists_checked(raw: bytes, limits: Limits, count_values: Callable[[bytes, int], int]) -> None:
    """The value lists of a raw message (``count_values`` reads its protocol's wire format) within the limit."""
    try:
        count = count_values(raw, limits.max_list_values)
    except WireError:
        return  # not a message: the parser says so
    check_list_values(count, limits)


class OpenStreams:
    """At most ``most`` streams of one long-lived method open at once; one more is refused (QueueFull)."""

    def __init__(self, method: str, most: int = OPEN_STREAMS):
        self.method, self.most, self.open = method, most, 0

    @contextlib.contextmanager
    def slot(self):
        if self.open >= self.most:
            raise QueueFull(f"too many {self.method} streams open at once ({self.most}): close one, or retry later")
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1


@dataclass(frozen=True)
class Incoming:
    """A call's request message not received yet: gRPC receives it when ``requests`` is read."""

    requests: AsyncIterator[bytes]
    max_bytes: int  # gRPC's cap on a message (grpc.max_receive_message_length)
    gate: asyncio.Semaphore | None = None  # not a predict: arrives through the gate, outside the budget


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
    from the budget (waiting as ``MemoryBudget.acquire`` does), or once it may pass the gate of the methods
    other than predicts; then held at what it really takes."""
    if incoming.gate is not None:
        async with gate_passed(incoming.gate, api, deadline):
            raw = await arrived(incoming, api, deadline)
        refuse_if_not_small(raw, api)
        if held is not None:
            held.grow_now(MESSAGE_COPIES * len(raw), f"a {len(raw)}-byte {api} message")
        return raw
    if held is not None:
        await held.grow(ARRIVAL_COPIES * incoming.max_bytes, f"a {api} message arriving (up to "
                        f"{incoming.max_bytes} bytes)", deadline)
    raw = await arrived(incoming, api, deadline)
    if held is not None:
        held.shrink_to(MESSAGE_COPIES * len(raw))
    return raw


def seconds_left(deadline: float | None, most: float = ARRIVAL_SECONDS) -> float:
    """What a message may still take to arrive: ``most``, or less if the call's deadline is nearer."""
    if deadline is None:
        return most
    return max(0.0, min(most, deadline - asyncio.get_running_loop().time()))


async def arrived(incoming: Incoming, api: str, deadline: float | None) -> bytes:
    seconds = seconds_left(deadline, ARRIVAL_SECONDS if incoming.gate is None else SMALL_ARRIVAL_SECONDS)
    try:
        raw = await asyncio.wait_for(only_message(incoming.requests), seconds)
    except asyncio.TimeoutError:
        raise DeadlineExpired(f"the {api} message did not arrive within {seconds:g} s") from None
    if raw is None:
        raise InvalidInput(f"the call ended without its {api} message")
    return raw


def refuse_if_not_small(raw: bytes, api: str) -> None:
    """A message of a method other than a predict over ``SMALL_MESSAGE_BYTES`` is refused unparsed."""
    if len(raw) > SMALL_MESSAGE_BYTES:
        raise RequestTooLarge(f"a {api} message of {len(raw)} bytes; this method takes at most "
                              f"{SMALL_MESSAGE_BYTES} bytes")


@contextlib.asynccontextmanager
async def gate_passed(gate: asyncio.Semaphore, api: str, deadline: float | None):
    """Hold one of the gate's places while a message arrives; refused (RESOURCE_EXHAUSTED) if none frees up
    within ``ARRIVAL_SECONDS`` or the deadline."""
    try:
        await asyncio.wait_for(gate.acquire(), seconds_left(deadline))
    except asyncio.TimeoutError:
        raise QueueFull(f"too many {api} messages arriving at once ({SMALL_ARRIVALS}); retry") from None
    try:
        yield
    finally:
        gate.release()


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


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining


def reply_serializer(response_class) -> Callable[[object], bytes]:
    """A reply message's bytes, or the bytes a handler serialized itself (a large reply, within its memory
    reservation)."""
    def serialize(response) -> bytes:
        return response if isinstance(response, bytes) else response_class.SerializeToString(response)

    return serialize


def receiving_unary(method, response_class, max_message_bytes: int,
                    gate: asyncio.Semaphore | None = None) -> grpc.RpcMethodHandler:
    """A unary method whose handler receives the request message itself (``Incoming``), so that its memory is
    held, or it has passed ``gate``, before gRPC buffers it. Registered as client-streaming, which is the
    same call on the wire: gRPC then reads a message only when the handler asks for it."""
    async def behavior(requests: AsyncIterator[bytes], context):
        return await method(Incoming(requests, max_message_bytes, gate), context)

    return grpc.stream_unary_rpc_method_handler(behavior, request_deserializer=None,
                                                response_serializer=reply_serializer(response_class))


def small_unary(method, response_class, max_message_bytes: int, gate: asyncio.Semaphore) -> grpc.RpcMethodHandler:
    """A unary method other than a predict: its message arrives through ``gate`` (``receive``)."""
    return receiving_unary(method, response_class, max_message_bytes, gate)


def add_health_service(server: grpc.aio.Server, health, max_message_bytes: int, gate: asyncio.Semaphore) -> None:
    """``grpc.health.v1.Health`` answered by grpcio-health-checking's servicer (``health``), its requests
    arriving through ``gate`` as the other small methods' do."""
    async def request_of(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext):
        try:
            raw = await receive(Incoming(requests, max_message_bytes, gate), None, "health", deadline_of(context))
            return parse(health_pb2.HealthCheckRequest, raw)
        except (InvalidInput, QueueFull, RequestTooLarge, DeadlineExpired) as error:
            code, _, text = status_of(error, "health", "")
        await context.abort(code, text)

    async def check(requests, context):
        return await health.Check(await request_of(requests, context), context)

    watches = OpenStreams("health Watch")

    async def watch(requests, context):
        try:
            with watches.slot():
                await health.Watch(await request_of(requests, context), context)
            return
        except QueueFull as error:
            code, _, text = status_of(error, "health", "")
        await context.abort(code, text)

    serialize = health_pb2.HealthCheckResponse.SerializeToString
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.stream_unary_rpc_method_handler(check, request_deserializer=None, response_serializer=serialize),
        "Watch": grpc.stream_stream_rpc_method_handler(watch, request_deserializer=None,
                                                       response_serializer=serialize),
    }),))


def add_reflection_service(server: grpc.aio.Server, service_names, pool, gate: asyncio.Semaphore) -> None:
    """gRPC server reflection, answered by grpcio-reflection's servicer; each request of its stream arrives
    through ``gate`` as the other small methods' messages do. Waiting for a request holds the gate, so a
    stream that sends none within ``SMALL_ARRIVAL_SECONDS`` (its first) or ``REFLECTION_IDLE_SECONDS`` (any
    later one) ends, with DEADLINE_EXCEEDED or OK: grpcurl keeps its stream open while it runs the call it
    looked up, and its reflection client opens a new stream when it needs one."""
    servicer = reflection_aio.ReflectionServicer(service_names, pool=pool)
    streams = OpenStreams("reflection")

    async def info(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext):
        messages = aiter(requests)

        async def one_at_a_time():
            first = True
            while True:
                async with gate_passed(gate, "reflection", deadline_of(context)):
                    wait = SMALL_ARRIVAL_SECONDS if first else REFLECTION_IDLE_SECONDS
                    try:
                        raw = await asyncio.wait_for(anext(messages, None), seconds_left(deadline_of(context), wait))
                    except asyncio.TimeoutError:
                        if not first:
                            return  # idle after its answers: the stream ends, and the gate is free again
                        raise DeadlineExpired(f"no reflection request arrived within {wait:g} s") from None
                first = False
                if raw is None:
                    return
                refuse_if_not_small(raw, "reflection")
                yield parse(reflection_pb2.ServerReflectionRequest, raw)

        try:
            with streams.slot():
                async for response in servicer.ServerReflectionInfo(one_at_a_time(), context):
                    yield response
            return
        except (InvalidInput, QueueFull, RequestTooLarge, DeadlineExpired) as error:
            code, _, text = status_of(error, "reflection", "")
        finally:
            # gRPC's receiver holds the last message it handed over until it is read again or closed: a refused
            # one would stay until the call is collected (sixteen refused 90 MB messages: 1.1 GiB over idle).
            await messages.aclose()
        await context.abort(code, text)

    serialize = reflection_pb2.ServerReflectionResponse.SerializeToString
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(reflection_pb2.DESCRIPTOR.services_by_name[
        "ServerReflection"].full_name, {"ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            info, request_deserializer=None, response_serializer=serialize)}),))
