"""TF Serving's REST API on aiohttp, plus Prometheus metrics and liveness/readiness.

* ``GET /v1/models/NAME[/versions/V | /labels/LABEL]`` model status
* ``GET /v1/models/NAME[/versions/V | /labels/LABEL]/metadata`` signature
* ``POST /v1/models/NAME[/versions/V | /labels/LABEL]:predict`` with ``instances`` (row) or ``inputs``
  (columnar)
* ``GET /monitoring/prometheus/metrics`` and ``/metrics``
* ``GET /healthz`` (alive) and ``/readyz`` (a version AVAILABLE and not draining)
* ``GET /``: the web page (``web``)
* ``/v2/...``: the Open Inference Protocol (KServe v2), added by ``v2_rest`` on the same app

A thin adapter: JSON to numpy (``rest_codec``), the data plane, numpy to JSON.
Bodies over ``INLINE_BODY_BYTES`` are decoded and answers encoded in a worker
process, so the event loop keeps answering health checks while they are parsed.
A body is held from the memory budget chunk by chunk as it is read and inflated
(``read_body``: gzip and deflate are inflated here, with a cap, not by aiohttp),
and its parse and the rest of the request are admitted before they are spent.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import multiprocessing
import zlib
import os
import re
import select
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import aiohttp
import numpy as np
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf import json_format

from inpaint.core.contract import BYTES_SIGNATURE, BYTES_SIGNATURE_NAME, IMAGE, OUTPUT, OUTPUT_BYTES, SIGNATURE_NAME
from inpaint.core.tensors import signature_def

from .admission import JSON_BYTES_PER_VALUE, JSON_OUT_BYTES_PER_VALUE, Cost
from .dataplane import DataPlane, Outcome, is_bytes_signature
from .errors import InvalidInput, RequestTooLarge, SlowBody, status_of
from .models import ModelVersion
from .rest_codec import check_json_values, decode_predict, encode_predictions
from .shutdown import Replies
from .web import add_web_routes, cors_middleware

INLINE_BODY_BYTES = 2**20  # parsed on the event loop: a few milliseconds at most
BODY_PIECE_BYTES = 2**20   # a body is read, and inflated, this much at a time, each piece held from the budget
ENCODINGS = {"identity": None, "gzip": 47, "x-gzip": 47, "deflate": 47}  # zlib's wbits: gzip or zlib header
PARSE_COPIES = 3           # a body's bytes in the codec process: its copy there, the parsed strings, files
BYTES_REPLY_FACTOR = 4.0   # PNG answers as base64 JSON: the files, their base64 and the JSON's copies


def json_values(body: bytes) -> int:
    """About how many JSON values ``body`` holds (its separators): what parsing it costs."""
    return body.count(b",") + body.count(b"[") + body.count(b"{")


def parse_cost(body: bytes, max_json_values: int) -> Cost:
    """What parsing a JSON body costs: its copies, and its values as Python objects and arrays; a body of more
    values than REST takes as arrays is refused first (``check_json_values``), whatever the budget."""
    check_json_values(body, max_json_values)
    return Cost(message=PARSE_COPIES * len(body) + JSON_BYTES_PER_VALUE * json_values(body))


_MODEL_PATH = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                         r"(?P<rest>/metadata|:predict)?$")


def version_status_json(model_version: ModelVersion) -> dict:
    """One entry of TF Serving's REST model status."""
    return {"version": str(model_version.version), "state": model_version.state.name,
            "status": {"error_code": "UNKNOWN" if model_version.error else "OK",
                       "error_message": model_version.error}}


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _codec_pool() -> ProcessPoolExecutor:
    """One worker, from a fork server: forking this threaded process directly is unsafe.

    The fork server and the worker exit when the server does, however the server ends (even SIGKILL: the
    worker by ``exit_with``), and with them multiprocessing's resource tracker, which lives while they hold
    its pipe.
    """
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"),
                               initializer=exit_with, initargs=(os.getpid(),))


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


class RestApi:
    def __init__(self, dataplane: DataPlane, max_request_bytes: int, max_json_values: int,
                 model_name: str = "inpaint", cors_origin: str | None = None, timeout: float | None = None,
                 body_seconds: float | None = None):
        self.dataplane, self.max_request_bytes = dataplane, max_request_bytes
        self.timeout = timeout  # a predict's deadline, from when its body has been read
        self.body_seconds = body_seconds  # the longest a body may take to arrive (None: no limit)
        self.max_json_values = max_json_values  # what bounds a JSON array body's memory
        self.codec: ProcessPoolExecutor | None = None  # started by start_codec, restarted if it dies
        self.replies = Replies()  # outermost: it writes the replies, after the other middlewares set headers
        middlewares = [self.replies.middleware] + ([cors_middleware(cors_origin)] if cors_origin else [])
        self.app = web.Application(client_max_size=max_request_bytes, middlewares=middlewares)
        add_web_routes(self.app, model_name)
        self.app.add_routes([
            web.get("/v1/models/{path:.+}", self.get_model),
            web.post("/v1/models/{path:.+}", self.post_model),
            web.get("/monitoring/prometheus/metrics", self.metrics),
            web.get("/metrics", self.metrics),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
        ])

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
            return await asyncio.get_running_loop().run_in_executor(self.codec, function, *args)
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

    def _parse(self, request: web.Request) -> tuple[str, int | str | None, str]:
        """``(model name, version, method)``: the version a number (``/versions/V``), a label
        (``/labels/LABEL``) or None."""
        match = _MODEL_PATH.match(request.match_info["path"])
        if match is None:
            raise web.HTTPNotFound(text=json.dumps({"error": f"malformed model URL {request.path[:128]}"}),
                                   content_type="application/json")
        version = int(match["version"]) if match["version"] else match["label"]
        return match["name"], version, match["rest"] or ""

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

    async def get_model(self, request: web.Request) -> web.Response:
        name, version, rest = self._parse(request)
        if rest == ":predict":
            return error_response(405, "use POST for :predict")
        if rest == "/metadata":
            async def metadata(outcome):
                served = self.dataplane.signature(outcome, name, version)
                definitions = {SIGNATURE_NAME: json_format.MessageToDict(signature_def(served.signature)),
                               BYTES_SIGNATURE_NAME: json_format.MessageToDict(signature_def(BYTES_SIGNATURE))}
                return {"model_spec": {"name": name, "signature_name": "", "version": str(served.version)},
                        "metadata": {"signature_def": {"signature_def": definitions}}}

            return await self.respond("metadata", name, metadata)

        async def status(outcome):
            return {"model_version_status": [version_status_json(v)
                                             for v in self.dataplane.version_statuses(name, version)]}

        return await self.respond("status", name, status)

    async def post_model(self, request: web.Request) -> web.Response:
        name, version, rest = self._parse(request)
        if rest != ":predict":
            return error_response(404, f"unknown REST method {request.path}; use .../models/{name}:predict")

        async def predict(outcome):
            body = await self.read_body(request, outcome)
            deadline = self.deadline()
            await self.dataplane.admit(outcome, parse_cost(body, self.max_json_values), "parsing the body", deadline)
            inputs, row_form, signature = await self.in_codec(len(body), decode_predict, body,
                                                               self.dataplane.limits, self.max_json_values)
            if is_bytes_signature(signature):
                prediction = await self.dataplane.predict_bytes(outcome, name, version, inputs, [], deadline,
                                                                BYTES_REPLY_FACTOR)
                files = prediction.outputs[OUTPUT_BYTES]
                return await self.in_codec(sum(map(len, files)), encode_predictions, files, row_form)
            if IMAGE in inputs:
                await self.dataplane.admit_arrays(outcome, inputs[IMAGE].shape, 1, JSON_OUT_BYTES_PER_VALUE,
                                                  deadline)
            prediction = await self.dataplane.predict(outcome, name, version, signature, inputs, [], deadline)
            output = prediction.outputs[OUTPUT]
            return await self.in_codec(output.nbytes * 4, encode_predictions, output, row_form)

        return await self.respond("predict", name, predict)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.dataplane.metrics.render(), content_type="text/plain", charset="utf-8")

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.dataplane.draining:
            return web.json_response({"status": "draining"}, status=503)
        if not self.dataplane.models.is_available():
            return web.json_response({"status": "no model version available"}, status=503)
        return web.json_response({"status": "ready"})
