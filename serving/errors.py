"""The server's domain errors and the one table that maps them to gRPC and HTTP codes.

The data plane raises these (and the core's ``TensorError`` and ``ImageError``
for malformed inputs); ``to_status`` is the only place that turns an exception
into a status. Anything else is a bug: it becomes INTERNAL and is logged with
its traceback by the caller.
"""

from __future__ import annotations

import logging

import grpc

from inpaint.core.images import ImageError
from inpaint.core.tensors import TensorError

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 1024  # TF Serving truncates error messages there too
QUOTED_CHARS = 64  # the most of a client's string (a model name, say) that a message or log line quotes


def quoted(text: str, limit: int = QUOTED_CHARS) -> str:
    """``text`` quoted for a message; a client's string may be megabytes, so only its first ``limit``
    characters, and its length."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class ModelNotFound(LookupError):
    """Unknown model name or version."""


class InvalidInput(ValueError):
    """A request that can never succeed as sent: wrong inputs, dtypes, shapes or sizes."""


class RequestTooLarge(ValueError):
    """A message over the size limit (as gRPC's own limit answers: RESOURCE_EXHAUSTED; HTTP 413)."""


class InvalidConfig(ValueError):
    """A model server config (--model_config_file, HandleReloadConfigRequest) that cannot be used as written."""


class FailedPrecondition(RuntimeError):
    """A request the server's state does not allow now: a version label on a version that is not available."""


class ServerUnavailable(RuntimeError):
    """Nothing is loaded yet, or the server is draining."""


class QueueFull(RuntimeError):
    """The batching queue is full; retry later or elsewhere."""


class DeadlineExpired(RuntimeError):
    """The request's deadline passed before the model ran it."""


class SlowBody(RuntimeError):
    """A REST body that did not arrive within --rest-body-seconds (HTTP's 408 Request Timeout)."""


_STATUS_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode, int], ...] = (
    (ModelNotFound, grpc.StatusCode.NOT_FOUND, 404),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (TensorError, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (ImageError, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (InvalidConfig, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, 400),
    (RequestTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    (ServerUnavailable, grpc.StatusCode.UNAVAILABLE, 503),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    (DeadlineExpired, grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    (SlowBody, grpc.StatusCode.DEADLINE_EXCEEDED, 408),
)


def to_status(error: BaseException) -> tuple[grpc.StatusCode, int, str] | None:
    """``(grpc code, HTTP status, message)`` for a domain error, None for anything else."""
    for error_type, code, http_status in _STATUS_TABLE:
        if isinstance(error, error_type):
            return code, http_status, str(error)[:MAX_MESSAGE_CHARS]
    return None


def status_of(error: Exception, api: str, model_name: str) -> tuple[grpc.StatusCode, int, str]:
    """The status for any failed request; an unexpected error is INTERNAL and logged with its traceback."""
    status = to_status(error)
    if status is None:
        logger.error("%s on %s failed unexpectedly", api, quoted(model_name), exc_info=error)
        return grpc.StatusCode.INTERNAL, 500, f"internal error: {type(error).__name__}: {error}"[:MAX_MESSAGE_CHARS]
    return status
