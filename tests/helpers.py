"""Test helpers: a server on a background event loop, waiting on conditions, free ports."""

from __future__ import annotations

import asyncio
import collections
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
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


def requests_in_flight(rest_port: int) -> float | None:
    """The server's ``inpaint_requests_in_flight`` gauge, read from its metrics page."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("inpaint_requests_in_flight{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def settled_usage(cgroup: "MemoryCgroup", rest_port: int, steady_seconds: float = 2.5) -> int:
    """A server's memory cgroup usage once no request is in flight (a cancelled one ends when its threads
    have) and the usage has held within 1 MiB for ``steady_seconds``: the server frees and trims ~1 s after
    its last request ends."""
    wait_for(lambda: requests_in_flight(rest_port) == 0, 600, "no request in flight")
    readings: collections.deque[tuple[float, int]] = collections.deque()

    def steady() -> int:
        now, usage = time.monotonic(), cgroup.usage
        readings.append((now, usage))
        while now - readings[0][0] > steady_seconds:
            readings.popleft()
        held = now - readings[0][0] >= steady_seconds - 0.1
        return usage if held and max(u for _, u in readings) - min(u for _, u in readings) <= 2**20 else 0

    return wait_for(steady, 60, f"the cgroup's usage to hold steady for {steady_seconds} s")


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

    def wait_until_versions(self, versions: list[int], timeout: float = 60) -> None:
        """Until exactly ``versions`` are AVAILABLE (a version policy's others load one after another)."""
        wait_for(lambda: self.call(self.server.manager.available_versions) == sorted(versions), timeout,
                 f"versions {versions} to become AVAILABLE")

    def stop(self) -> bool:
        finished = True
        if self.server is not None and not self.server.stopped.is_set():
            finished = self.run(self.server.drain_and_stop(), self.config.drain_seconds + 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        return finished


# -- memory cgroups: a server under a memory cap like the pod's -------------------------------------------

CGROUP_MEMORY_ROOT = "/sys/fs/cgroup/memory"


def cgroup_unavailable_reason() -> str | None:
    """Why a cgroup v1 memory cgroup cannot be made here (None when it can)."""
    import os

    if not os.path.isdir(CGROUP_MEMORY_ROOT):
        return f"no cgroup v1 memory controller at {CGROUP_MEMORY_ROOT}"
    probe = os.path.join(CGROUP_MEMORY_ROOT, f"inpaint-probe-{os.getpid()}")
    try:
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError as error:
        return f"cannot create a memory cgroup in {CGROUP_MEMORY_ROOT}: {error.strerror}"
    return None


class MemoryCgroup:
    """A cgroup v1 memory cgroup capped at ``limit_bytes``: a process started with ``preexec`` runs in it (with
    every child it starts), as a container runs under its pod's memory limit. The kernel's own counters are
    the evidence: ``peak`` (memory.max_usage_in_bytes), ``failures`` (memory.failcnt: allocations that hit
    the limit and made the kernel reclaim) and ``oom_kills`` (memory.oom_control). ``remove`` after."""

    def __init__(self, limit_bytes: int, name: str | None = None):
        import os

        self.limit = limit_bytes
        self.path = os.path.join(CGROUP_MEMORY_ROOT, name or f"inpaint-test-{os.getpid()}-{time.monotonic_ns()}")
        os.mkdir(self.path)
        self._write("memory.limit_in_bytes", str(limit_bytes))
        try:
            self._write("memory.memsw.limit_in_bytes", str(limit_bytes))  # no swap past the cap either
        except OSError:
            pass

    def _write(self, name: str, value: str) -> None:
        with open(f"{self.path}/{name}", "w") as handle:
            handle.write(value)

    def _read(self, name: str) -> str:
        with open(f"{self.path}/{name}") as handle:
            return handle.read()

    def preexec(self) -> None:
        """For ``subprocess.Popen(preexec_fn=...)``: the child joins the cgroup before it runs anything."""
        import os

        self._write("cgroup.procs", str(os.getpid()))

    @property
    def usage(self) -> int:
        return int(self._read("memory.usage_in_bytes"))

    def processes(self) -> list[int]:
        """The ids of the processes in the cgroup."""
        return [int(pid) for pid in self._read("cgroup.procs").split()]

    @property
    def peak(self) -> int:
        return int(self._read("memory.max_usage_in_bytes"))

    def reset_peak(self) -> None:
        self._write("memory.max_usage_in_bytes", "0")

    @property
    def failures(self) -> int:
        return int(self._read("memory.failcnt"))

    @property
    def oom_kills(self) -> int:
        for line in self._read("memory.oom_control").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def rss(self) -> int:
        """Resident anonymous memory of the cgroup's processes, shared pages counted once (memory.stat's
        total_rss; ``usage`` adds the page cache charged to it)."""
        return self.charges()["rss"]

    def charges(self) -> dict[str, int]:
        """What is charged to the cgroup by kind, in bytes: memory.stat's total_rss and total_cache; anonymous
        memory no process maps any more but still charged (on the LRU lists beyond RSS: parts of huge pages
        freed, which the kernel splits and frees only under pressure); and, where the kernel accounts them,
        kernel memory and TCP buffers."""
        stats = {key: int(value) for key, value in (line.split() for line in self._read("memory.stat").splitlines())}
        kinds = {"rss": stats.get("total_rss", stats.get("rss", 0)),
                 "cache": stats.get("total_cache", stats.get("cache", 0))}
        anon = stats.get("total_active_anon", 0) + stats.get("total_inactive_anon", 0)
        kinds["unmapped anon"] = max(0, anon - kinds["rss"])
        for kind, name in (("kernel", "memory.kmem.usage_in_bytes"), ("tcp", "memory.kmem.tcp.usage_in_bytes")):
            try:
                kinds[kind] = int(self._read(name))
            except OSError:
                pass
        return kinds

    def remove(self) -> None:
        """Move any process left to the parent cgroup, then delete this one."""
        import os

        try:
            left = self._read("cgroup.procs").split()
        except OSError:
            return
        for pid in left:
            try:
                with open(f"{CGROUP_MEMORY_ROOT}/cgroup.procs", "w") as handle:
                    handle.write(pid)
            except OSError:
                pass
        for _ in range(100):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.05)


# -- inpaint-serve as in its pod: the Deployment's args, under its memory limit ---------------------------

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENT = ROOT / "k8s" / "base" / "deployment.yaml"
SHIPPED = ROOT / "models" / "pretrained" / "inpaint"
OWN_FLAGS = ("--model-base-path", "--port", "--rest-port", "--host")


def deployment_server() -> tuple[list[str], int]:
    """The server container's args (less paths and ports) and its memory limit in bytes."""
    import yaml

    document = next(yaml.safe_load_all(DEPLOYMENT.read_text()))
    [container] = [c for c in document["spec"]["template"]["spec"]["containers"] if c["name"] == "server"]
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Mi"), limit
    return [arg for arg in container["args"] if not arg.startswith(OWN_FLAGS)], int(limit[:-2]) * 2**20


class PodProcess:
    """``inpaint-serve`` on the shipped model with the Deployment's args (then ``extra_args``: a flag given again
    wins), every process of it in a memory cgroup at the pod's limit, on 127.0.0.1 with free ports. Its output
    is collected as it comes (``output``), so a chatty log never fills the pipe. ``remove`` after."""

    def __init__(self, *extra_args: str, log_level: str = "WARNING", timeout: float = 120):
        args, self.limit = deployment_server()
        self.cgroup = MemoryCgroup(self.limit)
        self.port, self.rest_port = free_port(), free_port()
        command = [sys.executable, "-m", "inpaint.serving.cli", "--model-base-path", str(SHIPPED), "--host",
                   "127.0.0.1", "--port", str(self.port), "--rest-port", str(self.rest_port), "--log-level",
                   log_level, *args, *extra_args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        preexec_fn=self.cgroup.preexec)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._collect, name="pod-output", daemon=True)
        self._reader.start()
        try:
            wait_for(self._serving, timeout, f"{self.target} to report SERVING")
        except BaseException:
            self.remove()
            raise

    def _collect(self) -> None:
        for line in self.process.stdout:
            self._lines.append(line)

    def _serving(self) -> bool:
        from grpc_health.v1 import health_pb2

        if self.process.poll() is not None:
            self._reader.join(timeout=5)
            raise AssertionError(f"server exited with {self.process.returncode}: {self.output()[-3000:]}")
        return health_status(self.target) == health_pb2.HealthCheckResponse.SERVING

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str = "/v1/models/inpaint:predict") -> str:
        return f"http://127.0.0.1:{self.rest_port}{path}"

    def output(self) -> str:
        """What the server has written so far (all of it once it has exited and ``wait`` returned)."""
        return "".join(self._lines)

    def wait(self, timeout: float) -> int:
        """The exit status, once the process and the reading of its output have ended."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def remove(self) -> None:
        """Kill the server if it still runs, and delete its cgroup (moving out anything left in it)."""
        if self.process.poll() is None:
            self.process.kill()
        self.wait(timeout=30)
        self.cgroup.remove()
