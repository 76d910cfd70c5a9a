"""Model versions on disk -> loaded ONNX Runtime sessions, the way TF Serving manages servables.

The base path is polled. Each poll converges what is loaded on what is on disk:

* **Candidates** are the versions whose ``model.onnx`` is *settled* and is not a
  known failure. A file is settled once its (size, mtime_ns) stamp is the same
  at two consecutive polls, or its mtime is already ``settle_seconds`` (5 s)
  old, so a server starting on an existing repository loads it at once; a new
  file waits one poll. A file still being written by a non-atomic copier
  therefore waits; one that stalls long enough to look settled is tried, fails,
  and costs no request (see below).
* A version that failed to load stays END with its error and is not retried
  until its file's stamp changes (or the version folder is removed and comes
  back).
* The **target** is ``policy.select(candidates)``. Target versions that are not
  loaded (new, failed with a since-changed file, or END after an unload) are
  loaded and checked by running them (``warm_up``) before they are AVAILABLE:
  runs at ``WARM_UP_SHAPES`` must return uint8 images of the input's shape
  with every known pixel kept. A version that loads but answers with another
  shape or dtype (say a fixed 16 x 16 crop) fails like one that cannot load:
  END with the error, never AVAILABLE, and the versions serving go on. After the
  loads the target is computed again (a failure drops out, so under latest:N an
  older loadable version becomes the target) until nothing is left to load.
* An AVAILABLE version outside the target is unloaded only once every target
  version is AVAILABLE, so nothing is unloaded before its replacement serves, and
  a version that fails to load or is still being written leaves the serving
  ones untouched. When the policy wants nothing that is on disk (say, every
  version folder was removed), everything is unloaded.
* Unloading drains: the version is UNLOADING (no new requests) until its
  in-flight requests finish, then END without an error.

* A **loaded file changed in place** (its size, mtime or inode differ from
  those of the file loaded; a new file renamed over it, say) is loaded again
  once settled, as a new load of that version: loaded and warmed up while the
  file loaded before goes on serving, then swapped in; requests in flight
  finish on the old one. If the changed file fails, the old one keeps serving,
  the version's status carries the error (AVAILABLE, error_code UNKNOWN) and
  the log says so; it is not retried until the file changes again.

Publishing a new version number remains the clean way to change a model.
Publish atomically (write under a hidden name, then rename) and no
truncated file is ever tried; the rules above make non-atomic writers safe, at
worst with a failed attempt logged when a writer stalls mid-file.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from inpaint.core.contract import OUTPUT_CHANNELS, ContractError, VersionState, check_signature
from inpaint.core.onnx_model import Signature
from inpaint.core.repository import ONNX_FILENAME, list_versions

from .errors import ModelNotFound, ServerUnavailable, quoted

logger = logging.getLogger(__name__)


class Servable(Protocol):
    """What the manager needs of a loaded model (TF Serving's word for it)."""

    def inpaint(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray: ...

    def signature(self) -> Signature: ...


class Loader(Protocol):
    """Loads a version folder's graph; ``graph_file`` names the file in it that a load reads."""

    def __call__(self, version_path: Path) -> Servable: ...

    def graph_file(self, version_path: Path) -> str: ...


@dataclass
class VersionPolicy:
    """``latest:N``, ``all`` or ``specific:1,3``, as TF Serving's model_version_policy."""

    kind: str
    count: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "VersionPolicy":
        if text == "all":
            return cls("all")
        if match := re.fullmatch(r"latest(?::(\d+))?", text):
            count = int(match.group(1) or 1)
            if count >= 1:
                return cls("latest", count=count)
        if match := re.fullmatch(r"specific:(\d+(?:,\d+)*)", text):
            return cls("specific", versions=tuple(sorted({int(v) for v in match.group(1).split(",")})))
        raise ValueError(f"bad version policy {text!r}: use latest:N, all or specific:1,3")

    def __str__(self) -> str:
        """As ``--model-version-policy`` spells it (``latest:1``, ``all``, ``specific:1,3``)."""
        if self.kind == "latest":
            return f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:" + ",".join(str(version) for version in self.versions)
        return self.kind

    def select(self, versions: list[int]) -> set[int]:
        if self.kind == "all":
            return set(versions)
        if self.kind == "latest":
            return set(sorted(versions)[-self.count:])
        return set(versions) & set(self.versions)


FileStamp = tuple[int, int, int]  # a model.onnx's (size, mtime_ns, inode): when it changes, the file changed

SETTLE_SECONDS = 5.0  # a file whose mtime is this old is taken as complete on first sight
# (N, H, W) of the runs that check a version before it serves: square, oblong, a batch of two.
WARM_UP_SHAPES = ((1, 64, 64), (1, 48, 80), (2, 32, 32))


def warm_up_inputs(count: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed noise image and a mask whose hole is a centred box, a quarter of the image."""
    image = np.random.default_rng(height * width + count).integers(0, 256, (count, height, width, 3), np.uint8)
    mask = np.zeros((count, height, width, 1), np.uint8)
    mask[:, height // 4 : height * 3 // 4, width // 4 : width * 3 // 4] = 1
    return image, mask


def warm_up(servable: "Servable") -> None:
    """Run ``servable`` at each of ``WARM_UP_SHAPES``; ContractError unless every answer is the contract's:
    a uint8 ``[N,H,W,3]`` array of the input's N, H and W, with every pixel outside the hole kept.

    This is also TF Serving's warm-up: the first request pays no setup."""
    for shape in WARM_UP_SHAPES:
        image, mask = warm_up_inputs(*shape)
        output = servable.inpaint(image, mask)
        ran = "x".join(map(str, shape))
        expected = [*shape, OUTPUT_CHANNELS]
        if not isinstance(output, np.ndarray) or output.dtype != np.uint8 or list(output.shape) != expected:
            got = (f"{output.dtype} {list(output.shape)}" if isinstance(output, np.ndarray)
                   else type(output).__name__)
            raise ContractError(f"warm-up run on {ran} images returned {got}; the contract is uint8 {expected}")
        changed = int(np.count_nonzero((output != image).any(axis=-1) & (mask[..., 0] == 0)))
        if changed:
            raise ContractError(f"warm-up run on {ran} images changed {changed} known pixels (outside the hole); "
                                "the contract keeps them")


@dataclass
class ModelVersion:
    version: int
    path: Path
    state: VersionState = VersionState.START
    servable: Servable | None = None
    error: str = ""
    in_flight: int = 0
    stamp: FileStamp | None = None  # the model.onnx this entry loaded, or failed to load
    refused: FileStamp | None = None  # a changed model.onnx that failed to load while this one served
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    model: str = ""  # the model's name: its batching queue and metrics labels

    @property
    def failed(self) -> bool:
        return self.state == VersionState.END and bool(self.error)


def release(model_version: ModelVersion) -> None:
    """A request on ``model_version`` has ended (whatever model it belongs to, removed or not)."""
    model_version.in_flight -= 1
    if model_version.in_flight == 0:
        model_version.drained.set()


class ModelManager:
    """All versions of one model. Lives on the event loop; loading runs in ``load_executor``."""

    def __init__(self, name: str, base_path: Path, policy: VersionPolicy, loader: Loader,
                 load_executor: Executor | None = None, settle_seconds: float = SETTLE_SECONDS):
        self.name, self.base_path, self.policy, self.loader = name, Path(base_path), policy, loader
        self.load_executor = load_executor
        self.settle_seconds = settle_seconds
        self.versions: dict[int, ModelVersion] = {}
        self.on_change: list[Callable[[], None]] = []
        self.polls = 0  # finished polls, for tests and diagnostics
        self.unsettled: set[int] = set()  # versions whose model.onnx was still changing at the last poll
        self._seen_last_poll: dict[int, FileStamp] = {}
        self._without_graph: set[int] = set()  # versions said to lack the graph this server runs
        self._poll_lock = asyncio.Lock()
        self._draining: set[asyncio.Task] = set()

    # -- requests -------------------------------------------------------------------------------

    def acquire(self, name: str, version: int | None) -> ModelVersion:
        """The version to run (latest AVAILABLE by default), counted as in flight until released."""
        if name != self.name:
            raise ModelNotFound(f"Servable not found for request: model {quoted(name)} is not served "
                                f"(this server serves '{self.name}')")
        available = [v for v in self.versions.values() if v.state == VersionState.AVAILABLE]
        if version is None:
            if not available:
                raise ServerUnavailable(f"model '{name}' has no available version yet")
            chosen = max(available, key=lambda v: v.version)
        else:
            chosen = next((v for v in available if v.version == version), None)
            if chosen is None:
                have = ", ".join(str(v.version) for v in sorted(available, key=lambda v: v.version)) or "none"
                raise ModelNotFound(f"Servable not found for request: Specific({name}, {version}); "
                                    f"available versions: {have}")
        chosen.in_flight += 1
        chosen.drained.clear()
        return chosen

    def release(self, model_version: ModelVersion) -> None:
        release(model_version)

    def available_versions(self) -> list[int]:
        return sorted(v.version for v in self.versions.values() if v.state == VersionState.AVAILABLE)

    def statuses(self, name: str, version: int | None = None) -> list[ModelVersion]:
        if name != self.name:
            raise ModelNotFound(f"Servable not found for request: model {quoted(name)} is not served")
        if version is None:
            return sorted(self.versions.values(), key=lambda v: v.version)
        if version not in self.versions:
            raise ModelNotFound(f"Servable not found for request: Specific({name}, {version})")
        return [self.versions[version]]

    def is_available(self) -> bool:
        return any(v.state == VersionState.AVAILABLE for v in self.versions.values())

    # -- the file system --------------------------------------------------------------------------

    def _on_disk(self) -> dict[int, FileStamp]:
        """Versions with the graph this server runs (the loader's ``graph_file``), and that file's stamp."""
        found = {}
        for version in list_versions(self.base_path):
            path = self.base_path / str(version)
            graph = self.loader.graph_file(path)
            try:
                stat = (path / graph).stat()
            except OSError:  # a SavedModel-only version: TF Serving's, not ours (or one removed just now)
                self._say_why_not_served(version, graph)
                continue
            found[version] = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        return found

    def _say_why_not_served(self, version: int, graph: str) -> None:
        """Once per version: one that has a model.onnx but not ``graph``, the graph this server runs (its int8
        graph under --precision int8), is not served, and the log says how to make that graph."""
        path = self.base_path / str(version)
        if graph == ONNX_FILENAME or version in self._without_graph or not (path / ONNX_FILENAME).is_file():
            return
        self._without_graph.add(version)
        logger.warning("%s version %d has no %s, so it is not served (--precision int8 runs that graph): write "
                       "it with `python benchmarks/int8.py --model %s --install`", self.name, version, graph, path)

    def _settled(self, on_disk: dict[int, FileStamp]) -> set[int]:
        """Versions whose file looked the same at the last poll, or has not been modified for a while."""
        oldest_fresh_mtime = time.time_ns() - int(self.settle_seconds * 1e9)
        settled = {version for version, stamp in on_disk.items()
                   if self._seen_last_poll.get(version) == stamp or stamp[1] <= oldest_fresh_mtime}
        for version in sorted(set(on_disk) - settled):
            logger.debug("%s version %d: model.onnx is still changing (%d bytes); waiting for it to settle",
                         self.name, version, on_disk[version][0])
        return settled

    def _forget_failures_of_removed_versions(self, on_disk: dict[int, FileStamp]) -> None:
        """A failed version whose file is gone is tried again if one re-appears, whatever its stamp."""
        for model_version in self.versions.values():
            if model_version.failed and model_version.version not in on_disk:
                model_version.stamp = None

    def _is_known_failure(self, version: int, stamp: FileStamp) -> bool:
        current = self.versions.get(version)
        return current is not None and current.failed and current.stamp == stamp

    def _target(self, on_disk: dict[int, FileStamp], settled: set[int]) -> set[int]:
        """What the policy selects among the settled versions not known to fail."""
        candidates = [version for version in settled if not self._is_known_failure(version, on_disk[version])]
        return self.policy.select(candidates)

    def _needs_load(self, version: int) -> bool:
        """Never loaded, failed (with a file changed since) or unloaded; not while LOADING or draining."""
        current = self.versions.get(version)
        return current is None or current.state in (VersionState.START, VersionState.END)

    def _replacements_ready(self, target: set[int], wanted_on_disk: set[int]) -> bool:
        """May versions outside ``target`` be unloaded? Only once all of it serves, or nothing is wanted."""
        if target:
            return all(version in self.versions and self.versions[version].state == VersionState.AVAILABLE
                       for version in target)
        # Nothing loadable: keep serving while a version the policy wants is being written or fails.
        return not wanted_on_disk

    async def poll(self) -> None:
        """Look at the base path once; load and unload until what serves is the best the policy allows."""
        async with self._poll_lock:
            on_disk = self._on_disk()
            settled = self._settled(on_disk)
            self._seen_last_poll, self.unsettled = on_disk, set(on_disk) - settled
            self._forget_failures_of_removed_versions(on_disk)
            target = self._target(on_disk, settled)
            while loads := [version for version in sorted(target) if self._needs_load(version)]:
                await asyncio.gather(*(self._load(version, on_disk[version]) for version in loads))
                target = self._target(on_disk, settled)  # failures drop out; an older version may step in
            await self._reload_changed(target, on_disk, settled)
            if self._replacements_ready(target, self.policy.select(list(on_disk))):
                self._unload_all_but(target)
            self.polls += 1

    # -- loading and unloading ----------------------------------------------------------------------

    async def _load(self, version: int, stamp: FileStamp) -> None:
        previous = self.versions.get(version)
        if previous is not None and previous.failed:
            logger.info("%s version %d failed before; its model.onnx changed, loading it again", self.name, version)
        model_version = ModelVersion(version, self.base_path / str(version), VersionState.LOADING, stamp=stamp,
                                     model=self.name)
        self.versions[version] = model_version
        self._changed()
        logger.info("loading %s version %d from %s", self.name, version, model_version.path)
        loop = asyncio.get_running_loop()
        try:
            model_version.servable = await loop.run_in_executor(self.load_executor, self._load_and_warm_up,
                                                              model_version.path)
        except Exception as error:  # noqa: BLE001 - any load failure is reported, never fatal
            model_version.state, model_version.error = VersionState.END, f"{type(error).__name__}: {error}"
            logger.error("version %d of %s failed to load (not retried until its model.onnx changes): %s",
                         version, self.name, model_version.error)
        else:
            model_version.state = VersionState.AVAILABLE
            logger.info("%s version %d is AVAILABLE", self.name, version)
        self._changed()

    def _load_and_warm_up(self, path: Path) -> Servable:
        servable = self.loader(path)
        check_signature(servable.signature())
        warm_up(servable)
        return servable

    def _changed_in_place(self, target: set[int], on_disk: dict[int, FileStamp], settled: set[int]) -> list[int]:
        """AVAILABLE target versions whose settled model.onnx is not the file loaded, nor one refused before."""
        return [version for version in sorted(target)
                if (current := self.versions.get(version)) is not None and current.state == VersionState.AVAILABLE
                and version in settled and on_disk[version] not in (current.stamp, current.refused)]

    async def _reload_changed(self, target: set[int], on_disk: dict[int, FileStamp], settled: set[int]) -> None:
        for version in self._changed_in_place(target, on_disk, settled):
            await self._reload(self.versions[version], on_disk[version])

    async def _reload(self, current: ModelVersion, stamp: FileStamp) -> None:
        """Load a serving version's changed file; swap it in once warmed up, or keep the old one and say so."""
        logger.warning("%s version %d: model.onnx changed in place; loading it again (the file loaded before "
                       "serves until the new one passes its warm-up)", self.name, current.version)
        loop = asyncio.get_running_loop()
        try:
            servable = await loop.run_in_executor(self.load_executor, self._load_and_warm_up, current.path)
        except Exception as error:  # noqa: BLE001 - any load failure is reported, never fatal
            current.refused = stamp
            current.error = (f"model.onnx changed in place and the new file failed to load, so the file loaded "
                             f"before still serves: {type(error).__name__}: {error}")
            logger.error("%s version %d: %s (not retried until model.onnx changes again)", self.name,
                         current.version, current.error)
        else:
            # Requests in flight hold the old entry and finish on its servable; new ones get this one.
            self.versions[current.version] = ModelVersion(current.version, current.path, VersionState.AVAILABLE,
                                                          servable=servable, stamp=stamp, model=self.name)
            logger.info("%s version %d: its changed model.onnx is loaded and serves", self.name, current.version)
        self._changed()

    async def unload_all(self) -> None:
        """Unload every version (a model removed from the config) and wait until their requests finished."""
        async with self._poll_lock:
            self._unload_all_but(set())
        while self._draining:
            await asyncio.gather(*list(self._draining), return_exceptions=True)

    async def stop(self) -> None:
        """The server stops: unloads still waiting for their requests are cancelled, and awaited."""
        for task in self._draining:
            task.cancel()
        await asyncio.gather(*list(self._draining), return_exceptions=True)

    def _unload_all_but(self, keep: set[int]) -> None:
        for model_version in list(self.versions.values()):
            if model_version.state == VersionState.AVAILABLE and model_version.version not in keep:
                self._unload(model_version)

    def _unload(self, model_version: ModelVersion) -> None:
        """UNLOADING at once (no new requests), END once its in-flight requests have finished."""
        model_version.state = VersionState.UNLOADING
        self._changed()
        logger.info("unloading %s version %d once %d in-flight request(s) finish", self.name,
                    model_version.version, model_version.in_flight)
        if model_version.in_flight:
            task = asyncio.get_running_loop().create_task(self._finish_unload_when_drained(model_version))
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)
        else:
            self._finish_unload(model_version)

    async def _finish_unload_when_drained(self, model_version: ModelVersion) -> None:
        await model_version.drained.wait()
        self._finish_unload(model_version)

    def _finish_unload(self, model_version: ModelVersion) -> None:
        model_version.servable, model_version.state = None, VersionState.END
        self._changed()
        logger.info("%s version %d unloaded", self.name, model_version.version)

    async def poll_until_settled(self, interval: float) -> None:
        """Poll until every version on disk has settled (so it is loaded, or failed): what a start waits for
        before it checks version labels. A file settles at the second poll that sees it unchanged."""
        await self.poll()
        while self.unsettled:
            await asyncio.sleep(min(interval, 0.1))
            await self.poll()

    async def poll_forever(self, interval: float) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # noqa: BLE001 - a bad poll must not stop future polls
                logger.exception("polling %s failed", self.base_path)
            await asyncio.sleep(interval)

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()
