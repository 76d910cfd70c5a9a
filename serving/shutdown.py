"""Stopping inside the pod's grace period (docs/serving.md, "Shutdown").

A stop has three phases, each bounded: the drain (``--drain-seconds``: queued and in-flight requests finish,
new ones are refused), the close (``--close-seconds``: replies still being written finish, gRPC calls still
open get their grace, then whatever is left is cut) and the exit (``EXIT_SECONDS``: executors, the codec
process, the interpreter). ``stop_seconds`` is their sum, which the pod's ``terminationGracePeriodSeconds``
must exceed (tests/test_shutdown.py reads the manifests and checks it).

A REST reply cut by the stop must not look like a whole one: ``Replies`` writes each reply inside the
handler's task, so a reply cut while it is written is known, and its connection is reset (RST) rather than
closed, and a request cut before its reply started gets 503. Replies that did finish but still sit in a
transport's buffer when the close runs out are reset too: an orderly close after the process exits would
deliver a 200 whose body stops short.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time

from aiohttp import web

logger = logging.getLogger(__name__)

# SIGHUP (the terminal or session that started the server went away) stops it as SIGTERM does: the server has
# no configuration to reload on a signal (model versions, and a --model-config-file, are polled).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
EXIT_SECONDS = 2.0  # after the close: a margin for the executors, the codec process and the interpreter to stop
CUT_SECONDS = 1.0   # the close's last part: handlers still running are cancelled, their connections cut
# aiohttp's own wait for handlers, given twice in its cleanup (before and after cancelling request bodies)
RUNNER_SHUTDOWN_SECONDS = CUT_SECONDS / 4
STOPPED_MESSAGE = "the server stopped before this request finished (its drain period ran out); retry"


def stop_seconds(drain_seconds: float, close_seconds: float) -> float:
    """The longest a stop takes, from the signal to the process's exit."""
    return drain_seconds + close_seconds + EXIT_SECONDS


class PortInUse(OSError):
    """A port the server is to listen on is taken, by another server most likely."""


def check_ports_free(host: str, ports: dict[str, int | None]) -> None:
    """PortInUse naming the first of ``ports`` (flag: port) that something already listens on at ``host``.

    Checked before anything starts, so a second server on the same ports says so in one line instead of
    half-starting; 0 (any free port) and None (off) are skipped.
    """
    for flag, port in ports.items():
        if port and _in_use(host, port):
            raise PortInUse(f"port {port} ({flag}) is already in use on {host}: is another inpaint-serve "
                            f"running? Stop it, or give {flag} a free port (0 picks one)")


def _in_use(host: str, port: int) -> bool:
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False  # the real bind reports a bad host
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            # as the servers bind: SO_REUSEADDR, so only a listening socket (not TIME_WAIT) counts as taken
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    return True
    return False


def reset(transport: asyncio.BaseTransport | None) -> None:
    """Close ``transport``'s connection with an RST (SO_LINGER 0), dropping what it has not sent yet: the
    client reads an error, never a clean end of a reply that stopped short."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already closed
    transport.abort()


class Replies:
    """An aiohttp middleware that writes each reply itself, so the stop knows the requests still running (their
    reply included), and ``cut`` answers those whose reply has not begun 503 (``STOPPED_MESSAGE``) and resets
    the connections of those whose reply was being written."""

    def __init__(self):
        self.running: set[asyncio.Task] = set()  # requests whose handler runs or whose reply is being written
        self.stopping = False  # set by ``cut``: a handler cancelled from then on was cut by the stop

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        task = asyncio.current_task()
        self.running.add(task)
        try:
            response = await self._answer(request, handler)
            if isinstance(response, web.Response) and not response.prepared:
                await response.prepare(request)
                await response.write_eof()
                if response.status == 408 and request.transport is not None:
                    request.transport.close()  # not linger reading a body that is late already (aiohttp: 10 s)
            return response
        except asyncio.CancelledError:
            reset(request.transport)  # a reply cut while written: an error for the client, not a short 200
            raise
        finally:
            self.running.discard(task)

    async def _answer(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except asyncio.CancelledError:
            if not self.stopping:
                raise
            asyncio.current_task().uncancel()  # cut by the stop before its reply began: say so
            response = web.json_response({"error": STOPPED_MESSAGE}, status=503)
            response.force_close()
            return response

    def cut(self) -> None:
        """Cancel every request still running (``middleware`` answers or resets each)."""
        self.stopping = True
        for task in self.running:
            task.cancel()

    async def finished(self, deadline: float) -> bool:
        """Wait until no request runs, or the loop's clock reaches ``deadline``; True if none does."""
        loop = asyncio.get_running_loop()
        while self.running and loop.time() < deadline:
            await asyncio.sleep(0.02)
        return not self.running


async def flush_or_reset(transports: list[asyncio.BaseTransport], deadline: float) -> int:
    """Let what ``transports`` still buffer reach the kernel until ``deadline``, then reset the connections that
    still hold some (the process is about to exit, and its buffers with it); returns how many were reset."""
    loop = asyncio.get_running_loop()
    pending = [t for t in transports if not _sent(t)]
    while pending and loop.time() < deadline:
        await asyncio.sleep(0.02)
        pending = [t for t in pending if not _sent(t)]
    for transport in pending:
        reset(transport)
    return len(pending)


async def close_rest(runner: web.AppRunner, replies: Replies, deadline: float) -> None:
    """Stop listening and close every REST connection by ``deadline`` (the loop's clock): requests still running
    (their replies included) get until ``CUT_SECONDS`` before it, then they are cut (``Replies.cut``), and what
    the connections still buffer at the deadline is reset."""
    if not await replies.finished(deadline - CUT_SECONDS):
        logger.warning("close period over with %d REST request(s) unanswered; cutting them", len(replies.running))
        replies.cut()
        await replies.finished(deadline - CUT_SECONDS / 2)
    transports = [handler.transport for handler in runner.server.connections if handler.transport is not None]
    await runner.cleanup()  # stops listening, closes idle connections (waits RUNNER_SHUTDOWN_SECONDS, twice)
    cut = await flush_or_reset(transports, deadline)
    if cut:
        logger.warning("reset %d REST connection(s) whose reply could not be sent in time", cut)


def _sent(transport: asyncio.BaseTransport) -> bool:
    """Whether all that was written to ``transport`` has been handed to the kernel (or its socket is gone)."""
    if transport.get_extra_info("socket") is None or transport.get_extra_info("socket").fileno() < 0:
        return True
    return transport.get_write_buffer_size() == 0


def exit_once_threads_end(seconds: float = EXIT_SECONDS / 2, code: int = 0) -> None:
    """Give the threads still running ``seconds`` to end (the codec pool's manager, say), then end the process
    without waiting for the rest: a model run cut by the stop cannot be interrupted (ONNX Runtime), and the
    interpreter would wait for it at exit, past the grace period. Returns if none is left."""
    deadline = time.monotonic() + seconds
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    busy = [thread.name for thread in threading.enumerate()
            if thread is not threading.main_thread() and not thread.daemon and thread.is_alive()]
    if not busy:
        return
    logger.warning("exiting without waiting for %d thread(s) still running (%s)", len(busy), ", ".join(busy[:4]))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
