"""HTTP's side of every REST adapter: a body read within the memory budget and its limits, large bodies parsed
and answers encoded in a codec process, and a request's failure turned into ``{"error": ...}`` with its status.
TF Serving's REST API (``rest``) and the Open Inference Protocol's (``v2_rest``) both answer through a
``RestTransport``; the request's path: the ``inpaint.serving`` package's docstring.

Bodies over ``INLINE_BODY_BYTES`` are decoded and answers encoded in a worker process, so the event loop keeps
answering health checks while they are parsed. A body is held from the memory budget chunk by chunk as it is
read and inflated (``read_body``: gzip and deflate are inflated here, with a cap, not by aiohttp), and its
parse is admitted before it is spent (``parse_cost``).
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import select
import signal
import threading
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import aiohttp
import numpy as np
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from .admission import JSON_BYTES_PER_VALUE, Cost
from .dataplane import DataPlane, Outcome
from .errors import InvalidInput, RequestTooLarge, SlowBody, status_of
from .rest_codec import check_json_values, encode_predictions
from .runtime import hand_large_buffers_back_when_freed, return_freed_memory

INLINE_BODY_BYTES = 2**20  # parsed on the event loop: a few milliseconds at most
BODY_PIECE_BYTES = 2**20   # a body is read, and inflated, this much at a time, each piece held from the budget
ENCODINGS = {"identity": None, "gzip": 47, "x-gzip": 47, "deflate": 47}  # zlib's wbits: gzip or zlib header
PARSE_COPIES = 3           # a body's bytes in the codec process: its copy there, the parsed strings, files


def json_values(body: bytes) -> int:
    """About how many JSON values ``body`` holds (its separators): what parsing it costs."""
    return body.count(b",") + body.count(b"[") + body.count(b"{")


def parse_cost(body: bytes, max_json_values: int) -> Cost:
    """What parsing a JSON body costs: its copies, and its values as Python objects and arrays; a body of more
    values than REST takes as arrays is refused first (``check_json_values``), whatever the budget."""
    check_json_values(body, max_json_values)
    return Cost(message=PARSE_COPIES * len(body) + JSON_BYTES_PER_VALUE * json_values(body))


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _codec_pool() -> ProcessPoolExecutor:
    """One worker, from a fork server: forking this threaded process directly is unsafe.

    The fork server and the worker exit when the server does, however the server ends (even SIGKILL: the
    worker by ``exit_with``), and with them multiprocessing's resource tracker, which lives while they hold
    its pipe.
    """
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"),
                               initializer=start_codec_worker, initargs=(os.getpid(),))


def start_codec_worker(pid: int) -> None:
    """In the codec process: exit with the server (``exit_with``), and give large buffers back when freed."""
    exit_with(pid)
    hand_large_buffers_back_when_freed()


def trimmed(function, *args):
    """``function(*args)`` in the codec process, then its freed memory given back: the worker holds a large
    body's parse only while it runs (it kept 25 MiB more after each burst of the soak, measured)."""
    try:
        return function(*args)
    finally:
        return_freed_memory()


def exit_with(pid: int) -> None:
    """In a child process: exit as soon as process ``pid`` has ended (watched by a daemon thread), or its own
    parent (the fork server, which exits with ``pid``) has."""
    die_with_parent()
    try:
        watched = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (not Linux 5.3+): poll for the process instead
        watched = None
    if watched is None and not _alive(pid):
        os._exit(0)
    threading.Thread(target=_exit_when_gone, args=(pid, watched), name=f"exit-with-{pid}", daemon=True).start()


_PR_SET_PDEATHSIG = 1  # prctl's option: the signal the kernel sends this process when its parent exits


def die_with_parent() -> None:
    """Have the kernel SIGKILL this worker when its parent, the fork server, exits: unlike the watching thread
    it needs no GIL, so a worker parsing a large body (json.loads holds the GIL for seconds) dies at once too.

    The fork server lives while any process holds the write end of its "alive" pipe, and multiprocessing
    hands one to each worker: the worker's copy is closed, so the fork server exits with the server.
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the watching thread alone
        return
    from multiprocessing import forkserver

    alive = getattr(forkserver._forkserver, "_forkserver_alive_fd", None)  # CPython's; absent: the thread alone
    if alive is not None:
        os.close(alive)
        forkserver._forkserver._forkserver_alive_fd = None


def _exit_when_gone(pid: int, watched: int | None) -> None:
    if watched is not None:
        select.select([watched], [], [])  # readable once the process has exited
    else:
        while _alive(pid):
            time.sleep(1.0)
    os._exit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RestTransport:
    """A REST adapter's requests: their bodies, their codec process, their answers and their deadline."""

    def __init__(self, dataplane: DataPlane, max_request_bytes: int, max_json_values: int,
                 timeout: float | None = None, body_seconds: float | None = None):
        self.dataplane, self.max_request_bytes = dataplane, max_request_bytes
        self.timeout = timeout  # a predict's deadline, from when its body has been read
        self.body_seconds = body_seconds  # the longest a body may take to arrive (None: no limit)
        self.max_json_values = max_json_values  # what bounds a JSON array body's memory
        self.codec: ProcessPoolExecutor | None = None  # started by start_codec, restarted if it dies

    async def start_codec(self) -> None:
        """Start the codec process now, so the first large body does not pay its start-up on the event loop."""
        self.codec = _codec_pool()
        await asyncio.get_running_loop().run_in_executor(self.codec, encode_predictions,
                                                         np.zeros((1, 1, 1, 3), np.uint8), True)

    def close(self) -> None:
        if self.codec is not None:
            self.codec.shutdown(wait=False, cancel_futures=True)

    async def in_codec(self, size: int, function, *args):
        """``function(*args)`` inline for small bodies, in the codec process for large ones."""
        if size < INLINE_BODY_BYTES:
            return function(*args)
        if self.codec is None:
            self.codec = _codec_pool()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.codec, trimmed, function, *args)
        except BrokenProcessPool:
            self.codec = None  # the next large body starts a new one
            raise

    async def read_body(self, request: web.Request, outcome: Outcome | None = None) -> bytes:
        """The body, inflated; over-limit and undecodable bodies are the caller's errors.

        Its bytes are held from the memory budget (``outcome``'s reservation) as they arrive and as they
        inflate, now or never: a body the budget cannot hold is refused with 429 as soon as it passes what is
        free, and one that inflates past --max-request-bytes with 413, a piece at a time, so neither a large
        body nor a gzip bomb grows memory past the budget.
        """
        reservation = outcome.reservation if outcome is not None else None
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower() or "identity"
        if encoding not in ENCODINGS:
            raise InvalidInput(f"cannot read the request body: Content-Encoding {encoding[:32]!r} is not one of "
                               f"{', '.join(ENCODINGS)}")
        declared = request.content_length
        if declared is not None and declared > self.max_request_bytes:
            raise self._too_large()
        try:
            async with asyncio.timeout(self.body_seconds):
                body = await self._read_pieces(request, reservation)
        except TimeoutError:
            raise SlowBody(f"the request body did not arrive within {self.body_seconds:g} s "
                           "(--rest-body-seconds)") from None
        except (RequestPayloadError, aiohttp.ClientPayloadError, aiohttp.http_exceptions.HttpProcessingError,
                ValueError) as error:
            reason = " ".join(str(error).split())
            raise InvalidInput(f"cannot read the request body: {reason}") from None
        if ENCODINGS[encoding] is None:
            return body
        return await self._inflate(body, ENCODINGS[encoding], reservation)

    def _too_large(self, what: str = "request body is larger") -> RequestTooLarge:
        return RequestTooLarge(f"{what} than the limit of {self.max_request_bytes} bytes (--max-request-bytes)")

    async def _read_pieces(self, request: web.Request, reservation) -> bytes:
        pieces, size = [], 0
        async for piece in request.content.iter_chunked(BODY_PIECE_BYTES):
            size += len(piece)
            if size > self.max_request_bytes:
                raise self._too_large()
            if reservation is not None:
                reservation.grow_now(len(piece), "the request body")
            pieces.append(piece)
        if reservation is not None and len(pieces) > 1:
            reservation.grow_now(size, "the request body")  # joined: a second copy for a moment
        return b"".join(pieces)

    async def _inflate(self, body: bytes, wbits: int, reservation) -> bytes:
        """``body`` inflated a piece at a time, each piece held from the budget, capped at the body limit."""
        inflater = zlib.decompressobj(wbits)
        pieces, size, remaining = [], 0, body
        try:
            while not inflater.eof:
                piece = inflater.decompress(remaining, BODY_PIECE_BYTES)
                remaining = inflater.unconsumed_tail
                if not piece and not remaining:
                    raise InvalidInput("cannot read the request body: the compressed data ends early")
                size += len(piece)
                if size > self.max_request_bytes:
                    raise self._too_large("request body inflates to more")
                if reservation is not None:
                    reservation.grow_now(len(piece), "the inflated request body")
                pieces.append(piece)
                await asyncio.sleep(0)  # a piece is milliseconds: others run in between
        except zlib.error as error:
            raise InvalidInput(f"cannot read the request body: not valid compressed data ({error})") from None
        if reservation is not None:
            reservation.grow_now(size, "the inflated request body")
        return b"".join(pieces)

    async def respond(self, api: str, name: str, handler, protocol: str = "tfserving") -> web.Response:
        """``handler``'s answer (a dict, encoded JSON bytes or a response); a failure as ``{"error": ...}``.

        The request is counted in the metrics under ``protocol`` (``tfserving``, or ``v2`` from ``v2_rest``).
        """
        async with self.dataplane.request(api, name, protocol) as outcome:
            try:
                answer = await handler(outcome)
                if isinstance(answer, web.Response):
                    return answer
                if isinstance(answer, bytes):
                    return web.Response(body=answer, content_type="application/json")
                return web.json_response(answer)
            except Exception as error:  # noqa: BLE001 - the same table as gRPC
                label = f"REST {api}" if protocol == "tfserving" else f"REST {protocol} {api}"
                code, http_status, message = status_of(error, label, name)
                outcome.status = code.name
                response = error_response(http_status, message)
                if isinstance(error, SlowBody):
                    response.force_close()  # the rest of the body is not read (Replies closes its connection)
                return response

    def deadline(self) -> float | None:
        """A predict's deadline on the event loop's clock, ``timeout`` from now (its body has been read)."""
        return None if self.timeout is None else asyncio.get_running_loop().time() + self.timeout
