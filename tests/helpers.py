"""Test helpers: a server on a background event loop, waiting on conditions, free ports."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from typing import Callable, TypeVar

from inpaint.serving.server import InpaintServer, ServerConfig

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy and return that; fail after ``timeout`` seconds.

    The polling interval is short and fixed: tests wait on what they need to
    see, never for a guessed amount of time.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def free_port() -> int:
    """A TCP port nothing listens on right now (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def health_status(target: str, service: str = "") -> int | None:
    """The grpc.health.v1 status at ``target``, or None when nobody answers."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                             timeout=1).status
        except grpc.RpcError:
            return None


def wait_serving(target: str, process: subprocess.Popen | None = None, service: str = "",
                 timeout: float = 60) -> None:
    """Wait until ``target`` reports SERVING; fail at once with its output if ``process`` exits first."""
    from grpc_health.v1 import health_pb2

    def serving() -> bool:
        if process is not None and process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"server exited with {process.returncode}: {output[-3000:]}")
        return health_status(target, service) == health_pb2.HealthCheckResponse.SERVING

    wait_for(serving, timeout, f"{target} to report SERVING")


class ServerThread:
    """An ``InpaintServer`` on its own event loop in a background thread."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.server: InpaintServer | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="inpaint-server", daemon=True)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "ServerThread":
        self._thread.start()

        async def create_and_start() -> InpaintServer:
            server = InpaintServer(self.config)
            await server.start()
            return server

        self.server = self.run(create_and_start())
        return self

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.server.rest_port}"

    def run(self, coroutine, timeout: float = 60):
        """Run a coroutine on the server's loop (to poll now, say) and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=timeout)

    def call(self, function: Callable[[], T], timeout: float = 60) -> T:
        """Call ``function`` on the server's loop: its state is only read where it is changed."""
        async def on_loop() -> T:
            return function()

        return self.run(on_loop(), timeout)

    def wait_until_available(self, timeout: float = 60) -> None:
        wait_for(lambda: self.call(self.server.manager.is_available), timeout,
                 "a model version to become AVAILABLE")

    def stop(self) -> bool:
        finished = True
        if self.server is not None and not self.server.stopped.is_set():
            finished = self.run(self.server.drain_and_stop(), self.config.drain_seconds + 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        return finished
