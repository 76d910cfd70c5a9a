"""The client's one error hierarchy, and the one place gRPC status codes map onto it."""

from __future__ import annotations

import grpc


class InpaintError(Exception):
    """Anything that went wrong calling the service."""


class InvalidInput(InpaintError, ValueError):
    """The request cannot succeed as sent (checked locally, or INVALID_ARGUMENT from the server)."""


class ModelNotFound(InpaintError, LookupError):
    """The server does not serve this model or version (NOT_FOUND)."""


class ServerUnavailable(InpaintError, ConnectionError):
    """No server at the target, or it is not ready or is shutting down (UNAVAILABLE), after retries."""


class Overloaded(InpaintError):
    """The server's queue is full (RESOURCE_EXHAUSTED): slow down or add replicas."""


class DeadlineExceeded(InpaintError, TimeoutError):
    """The call's deadline passed (DEADLINE_EXCEEDED)."""


class ServerError(InpaintError):
    """The server failed (INTERNAL, UNIMPLEMENTED, UNKNOWN, ...)."""


_BY_CODE: dict[grpc.StatusCode, type[InpaintError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInput,
    grpc.StatusCode.NOT_FOUND: ModelNotFound,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def how_to_start(target: str) -> str:
    """How to start a server at ``target``, or point at one: the fix for "no server reachable"."""
    port = target.rsplit(":", 1)[-1]
    return (f"start one with `make serve PORT={port}` or `inpaint-serve --model-base-path models/pretrained/inpaint "
            f"--port {port}`, or point --target (INPAINT_CLIENT_TARGET) at a running one")


def from_rpc_error(error: grpc.RpcError, target: str) -> InpaintError:
    """The InpaintError for a failed call; its message names the target and the server's reason."""
    code, details = error.code(), (error.details() or "").strip()
    error_type = _BY_CODE.get(code, ServerError)
    if error_type is ServerUnavailable and ("connect" in details.lower() or "dns" in details.lower()):
        return ServerUnavailable(f"no server reachable at {target}: {details}; {how_to_start(target)}")
    if error_type is Overloaded and "message larger than max" in details.lower():
        side = "this client's max_message_bytes" if "sent message" in details.lower() else \
            "the server's --max-request-bytes"
        return InvalidInput(f"request too large for {target}: {details}; send fewer or smaller images, or raise "
                            f"{side}")
    if error_type is Overloaded:
        return Overloaded(f"server at {target} is overloaded: {details}")
    if error_type is DeadlineExceeded:
        return DeadlineExceeded(f"deadline exceeded calling {target}: {details or 'no answer in time'}")
    return error_type(f"{code.name} from {target}: {details}")
