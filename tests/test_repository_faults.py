"""Faults in the model repository while clients keep sending requests: none may fail.

A version that fails to load, versions that disappear and come back, and a
model.onnx copied in non-atomically, in pieces: the server must keep serving the
best loadable version the policy allows, with health SERVING throughout.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_helpers import Stubs, images, predict_request
from helpers import wait_for
from inpaint.core.contract import VersionState
from inpaint.serving.models import ModelManager, VersionPolicy
from onnx_models import expected_fill, fill_model, write_version

AVAILABLE, END = int(VersionState.AVAILABLE), int(VersionState.END)
SERVING = health_pb2.HealthCheckResponse.SERVING
FILLS = {1: 128, 2: 60, 3: 200}  # each version fills holes with its own value
POLL_SECONDS = 0.05


class LoadLoop:
    """Client threads sending Predict requests non-stop, and one watching health, until stopped.

    Every failed request, wrong output and health answer other than SERVING is
    collected in ``failures``; ``seen`` holds the version that answered each request.
    """

    def __init__(self, target: str, clients: int = 4):
        self.stubs = Stubs(target)
        self.health = health_pb2_grpc.HealthStub(self.stubs.channel)
        self.image, self.mask = images(1, 8, 8)
        self.request = predict_request(self.image, self.mask)
        self.expected = {version: expected_fill(self.image, self.mask, fill).tolist()
                         for version, fill in FILLS.items()}
        self.seen: list[int] = []
        self.failures: list[str] = []
        self.health_checks = 0
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client) for _ in range(clients)]
        self.threads.append(threading.Thread(target=self._watch_health))

    def __enter__(self) -> "LoadLoop":
        wait_for(lambda: self._health() == SERVING, 10, "health to be SERVING before the load starts")
        for thread in self.threads:
            thread.start()
        wait_for(lambda: len(self.seen) >= 20 and self.health_checks >= 5, 10, "the load loop to get going")
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()
        self.stubs.close()

    def _client(self) -> None:
        while not self.stopping.is_set():
            try:
                response = self.stubs.prediction.Predict(self.request, timeout=10)
            except grpc.RpcError as error:
                self.failures.append(f"request failed: {error.code().name} {error.details()}")
                continue
            version = response.model_spec.version.value
            output = np.frombuffer(response.outputs["inpainted"].tensor_content, np.uint8)
            if output.reshape(self.image.shape).tolist() != self.expected.get(version):
                self.failures.append(f"version {version} gave the wrong output")
            self.seen.append(version)

    def _health(self) -> int | None:
        try:
            return self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        except grpc.RpcError as error:
            return error.code().name

    def _watch_health(self) -> None:
        while not self.stopping.is_set():
            status = self._health()
            if status != SERVING:
                self.failures.append(f"health was {status}")
            self.health_checks += 1

    def wait_served_only_by(self, version: int, count: int = 20) -> None:
        """Until the last ``count`` answers all came from ``version``."""
        wait_for(lambda: self.seen[-count:] == [version] * count, 15, f"version {version} alone to serve")

    def wait_more_served(self, count: int = 20) -> list[int]:
        """Until ``count`` more answers came; the versions that gave them."""
        start = len(self.seen)
        wait_for(lambda: len(self.seen) >= start + count, 15, f"{count} more answers")
        return self.seen[start:]


def version_states(stubs: Stubs) -> dict[int, tuple[int, str]]:
    """GetModelStatus as {version: (state, error message)}."""
    return {s.version: (s.state, s.status.error_message) for s in stubs.status().model_version_status}


def polls(server) -> int:
    return server.call(lambda: server.server.manager.polls)


def wait_polls(server, count: int) -> None:
    """Until ``count`` polls began and ended after this call."""
    start = polls(server)
    wait_for(lambda: polls(server) >= start + count + 1, 15, f"{count} more polls")


def start_loaded(start_server, base: Path):
    server = start_server(base, poll_seconds=POLL_SECONDS)
    return server, Stubs(server.grpc_target)


# -- a real server under load ------------------------------------------------------------------------

def test_a_broken_version_leaves_the_serving_one_alone_and_a_fixed_one_replaces_it(onnx_repo, start_server):
    write_version(onnx_repo, 2, fill=FILLS[2])
    server, stubs = start_loaded(start_server, onnx_repo)
    with LoadLoop(server.grpc_target) as load:
        load.wait_served_only_by(2)

        broken = onnx_repo / "3"
        broken.mkdir()
        (broken / "model.onnx").write_bytes(b"not an onnx model")
        failed = wait_for(lambda: version_states(stubs).get(3, (0, ""))[1], 10, "version 3 to fail to load")
        assert version_states(stubs)[3][0] == END and failed
        assert version_states(stubs)[2] == (AVAILABLE, "")
        assert set(load.wait_more_served()) == {2}

        shutil.rmtree(broken)
        wait_polls(server, 2)
        assert version_states(stubs)[2] == (AVAILABLE, "")
        assert set(load.wait_more_served()) == {2}

        write_version(onnx_repo, 3, fill=FILLS[3])
        load.wait_served_only_by(3)
        wait_for(lambda: version_states(stubs)[2][0] == END, 10, "version 2 to be unloaded")
    assert not load.failures, load.failures[:5]
    assert version_states(stubs) == {2: (END, ""), 3: (AVAILABLE, "")}


def test_removing_the_newest_version_brings_the_previous_one_back(onnx_repo, start_server):
    server, stubs = start_loaded(start_server, onnx_repo)
    with LoadLoop(server.grpc_target) as load:
        load.wait_served_only_by(1)
        write_version(onnx_repo, 2, fill=FILLS[2])
        load.wait_served_only_by(2)
        wait_for(lambda: version_states(stubs)[1][0] == END, 10, "version 1 to be unloaded")

        shutil.rmtree(onnx_repo / "2")
        load.wait_served_only_by(1)
        wait_for(lambda: version_states(stubs)[2][0] == END, 10, "version 2 to be unloaded")
    assert not load.failures, load.failures[:5]
    assert version_states(stubs) == {1: (AVAILABLE, ""), 2: (END, "")}


def test_a_model_copied_in_non_atomically_in_pieces_costs_no_request(onnx_repo, start_server):
    server, stubs = start_loaded(start_server, onnx_repo)
    content = fill_model(FILLS[2]).SerializeToString()
    pieces = [content[: len(content) // 4], content[len(content) // 4: len(content) // 2], content[len(content) // 2:]]
    (onnx_repo / "2").mkdir()
    with LoadLoop(server.grpc_target) as load, open(onnx_repo / "2" / "model.onnx", "wb") as model_file:
        load.wait_served_only_by(1)
        for piece in pieces[:-1]:
            model_file.write(piece)
            model_file.flush()
            wait_polls(server, 2)  # the same truncated file at two polls: it looks settled and may be tried
            states = version_states(stubs)
            assert states[1] == (AVAILABLE, ""), states
            assert states.get(2, (END, ""))[0] == END, f"a truncated file was loaded: {states}"
            assert set(load.wait_more_served()) == {1}
        model_file.write(pieces[-1])
        model_file.close()
        load.wait_served_only_by(2)
        wait_for(lambda: version_states(stubs)[1][0] == END, 10, "version 1 to be unloaded")
    assert not load.failures, load.failures[:5]
    assert version_states(stubs) == {1: (END, ""), 2: (AVAILABLE, "")}


# -- the convergence rules, without a server ---------------------------------------------------------

SIGNATURE = {"inputs": {"image": ("uint8", [-1, -1, -1, 3]), "mask": ("uint8", [-1, -1, -1, 1])},
             "outputs": {"inpainted": ("uint8", [-1, -1, -1, 3])}}


class FakeServable:
    def signature(self):
        return SIGNATURE

    def inpaint(self, images, masks):
        return images


class FakeLoader:
    """Loads a file reading ``good ... end``; anything else (garbage, a truncated file) raises."""

    def __init__(self):
        self.attempts: dict[int, int] = {}

    def graph_file(self, version_path: Path) -> str:
        return "model.onnx"

    def __call__(self, version_path: Path) -> FakeServable:
        version = int(version_path.name)
        self.attempts[version] = self.attempts.get(version, 0) + 1
        content = (version_path / self.graph_file(version_path)).read_bytes()
        if not (content.startswith(b"good") and content.endswith(b"end")):
            raise ValueError(f"not a model: {content!r}")
        return FakeServable()


def publish(base: Path, version: int, content: bytes, mtime: float | None = None) -> None:
    """Write ``base/version/model.onnx``, last modified at ``mtime`` or else a minute ago (settled at once)."""
    path = base / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    mtime = time.time() - 60 if mtime is None else mtime
    os.utime(path, (mtime, mtime))


def states_of(manager: ModelManager) -> dict[int, tuple[str, bool]]:
    """{version: (state name, has an error)}."""
    return {v.version: (v.state.name, bool(v.error)) for v in manager.statuses(manager.name)}


async def poll(manager: ModelManager) -> None:
    """One poll, then a few turns of the event loop for any unload it started."""
    await manager.poll()
    for _ in range(5):
        await asyncio.sleep(0)


async def drained(manager: ModelManager, version: int) -> None:
    """Let the event loop run until ``version``'s unload, waiting on its requests, has finished."""
    for _ in range(100):
        if manager.versions[version].state == VersionState.END:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"version {version} is still {manager.versions[version].state.name}")


def test_versions_converge_whatever_the_order_of_events(tmp_path):
    base, loader = tmp_path / "inpaint", FakeLoader()

    async def events():
        manager = ModelManager("inpaint", base, VersionPolicy.parse("latest:1"), loader)
        publish(base, 1, b"good 1 end")
        await poll(manager)
        assert states_of(manager) == {1: ("AVAILABLE", False)}
        publish(base, 2, b"good 2 end")
        await poll(manager)
        assert states_of(manager) == {1: ("END", False), 2: ("AVAILABLE", False)}

        shutil.rmtree(base / "2")  # the newest is deleted: the previous one is loaded again
        await poll(manager)
        assert states_of(manager) == {1: ("AVAILABLE", False), 2: ("END", False)}

        publish(base, 2, b"good 2 end")  # and re-appears
        await poll(manager)
        assert states_of(manager) == {1: ("END", False), 2: ("AVAILABLE", False)}

        publish(base, 3, b"garbage")  # fails: 2 goes on serving, 3 is not retried while its file stays
        for _ in range(3):
            await poll(manager)
            assert states_of(manager) == {1: ("END", False), 2: ("AVAILABLE", False), 3: ("END", True)}
        assert loader.attempts[3] == 1

        in_flight = manager.acquire("inpaint", None)
        publish(base, 3, b"good 3 end")  # fixed: its file changed, it is loaded; 2 drains, then unloads
        await poll(manager)
        assert in_flight.version == 2 and loader.attempts[3] == 2
        assert states_of(manager) == {1: ("END", False), 2: ("UNLOADING", False), 3: ("AVAILABLE", False)}
        manager.release(in_flight)
        await drained(manager, 2)
        assert states_of(manager) == {1: ("END", False), 2: ("END", False), 3: ("AVAILABLE", False)}

        long_ago = time.time() - 3600
        publish(base, 4, b"broken", long_ago)  # the newest is deleted and a newer broken one appears, at once:
        shutil.rmtree(base / "3")    # the best loadable one left, 2, is loaded in the same poll
        await poll(manager)
        assert states_of(manager) == {1: ("END", False), 2: ("AVAILABLE", False), 3: ("END", False),
                                      4: ("END", True)}

        shutil.rmtree(base / "4")  # a failed version removed and put back, the very same file, is tried again
        await poll(manager)
        publish(base, 4, b"broken", long_ago)
        await poll(manager)
        assert loader.attempts[4] == 2 and states_of(manager)[2] == ("AVAILABLE", False)

        for version in (1, 2, 4):  # nothing left on disk: nothing serves
            shutil.rmtree(base / str(version))
        await poll(manager)
        assert not manager.is_available()

    asyncio.run(events())


def test_a_file_still_being_written_waits_and_a_truncated_one_is_retried_once_complete(tmp_path):
    base, loader = tmp_path / "inpaint", FakeLoader()

    async def events():
        manager = ModelManager("inpaint", base, VersionPolicy.parse("latest:1"), loader)
        publish(base, 1, b"good 1 end")  # an old file is loaded on first sight
        await poll(manager)
        assert states_of(manager) == {1: ("AVAILABLE", False)}

        path = base / "2" / "model.onnx"
        path.parent.mkdir()
        with open(path, "wb") as model_file:  # a writer still busy: changed at every poll, never tried
            for piece in (b"good", b" 2", b" en"):
                model_file.write(piece)
                model_file.flush()
                await poll(manager)
                assert 2 not in loader.attempts and states_of(manager) == {1: ("AVAILABLE", False)}
            await poll(manager)  # a writer that stalls: the truncated file looks settled, is tried, fails
            await poll(manager)
            assert loader.attempts[2] == 1
            assert states_of(manager) == {1: ("AVAILABLE", False), 2: ("END", True)}
            model_file.write(b"d")
        await poll(manager)  # complete, but changed since the last poll: not yet
        assert loader.attempts[2] == 1
        await poll(manager)
        assert loader.attempts[2] == 2
        assert states_of(manager) == {1: ("END", False), 2: ("AVAILABLE", False)}

    asyncio.run(events())
