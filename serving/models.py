"""Model versions on disk -> loaded ONNX Runtime sessions, the way TF Serving manages servables.

The base path is polled. A new version is loaded and warmed up before it is
AVAILABLE; a version leaving the policy is UNLOADING until its in-flight
requests finish, and only once a newer version is available, so no request
fails during a swap. A version that fails to load is reported with its error
and leaves everything else serving.
"""

from __future__ import annotations

import asyncio
import logging
import re
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from inpaint.core.contract import VersionState, check_signature
from inpaint.core.onnx_model import Signature
from inpaint.core.repository import ONNX_FILENAME, list_versions

from .errors import ModelNotFound, ServerUnavailable

logger = logging.getLogger(__name__)


class Servable(Protocol):
    """What the manager needs of a loaded model (TF Serving's word for it)."""

    def inpaint(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray: ...

    def signature(self) -> Signature: ...


Loader = Callable[[Path], Servable]


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

    def select(self, versions: list[int]) -> set[int]:
        if self.kind == "all":
            return set(versions)
        if self.kind == "latest":
            return set(sorted(versions)[-self.count:])
        return set(versions) & set(self.versions)


@dataclass
class ModelVersion:
    version: int
    path: Path
    state: VersionState = VersionState.START
    servable: Servable | None = None
    error: str = ""
    in_flight: int = 0
    mtime: float = 0.0
    drained: asyncio.Event = field(default_factory=asyncio.Event)


class ModelManager:
    """All versions of one model. Lives on the event loop; loading runs in ``load_executor``."""

    def __init__(self, name: str, base_path: Path, policy: VersionPolicy, loader: Loader,
                 load_executor: Executor | None = None):
        self.name, self.base_path, self.policy, self.loader = name, Path(base_path), policy, loader
        self.load_executor = load_executor
        self.versions: dict[int, ModelVersion] = {}
        self.on_change: list[Callable[[], None]] = []

    # -- requests -------------------------------------------------------------------------------

    def acquire(self, name: str, version: int | None) -> ModelVersion:
        """The version to run (latest AVAILABLE by default), counted as in flight until released."""
        if name != self.name:
            raise ModelNotFound(f"Servable not found for request: model '{name}' is not served "
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
        model_version.in_flight -= 1
        if model_version.in_flight == 0:
            model_version.drained.set()

    def statuses(self, name: str, version: int | None = None) -> list[ModelVersion]:
        if name != self.name:
            raise ModelNotFound(f"Servable not found for request: model '{name}' is not served")
        if version is None:
            return sorted(self.versions.values(), key=lambda v: v.version)
        if version not in self.versions:
            raise ModelNotFound(f"Servable not found for request: Specific({name}, {version})")
        return [self.versions[version]]

    def is_available(self) -> bool:
        return any(v.state == VersionState.AVAILABLE for v in self.versions.values())

    # -- the file system --------------------------------------------------------------------------

    def _on_disk(self) -> dict[int, float]:
        """Versions with a model.onnx, and that file's modification time."""
        found = {}
        for version in list_versions(self.base_path):
            onnx = self.base_path / str(version) / ONNX_FILENAME
            try:
                found[version] = onnx.stat().st_mtime
            except OSError:
                continue  # a SavedModel-only version: TF Serving's, not ours
        return found

    async def poll(self) -> None:
        """Load what the policy wants and is new or changed, unload what it no longer wants."""
        on_disk = self._on_disk()
        wanted = self.policy.select(list(on_disk))
        loads = []
        for version in sorted(wanted):
            current = self.versions.get(version)
            if current is None or (current.state == VersionState.END and current.mtime != on_disk[version]):
                loads.append(self._load(version, on_disk[version]))
        if loads:
            await asyncio.gather(*loads)
        if self.is_available() or not wanted:
            for model_version in list(self.versions.values()):
                if model_version.version not in wanted and model_version.state == VersionState.AVAILABLE:
                    asyncio.get_running_loop().create_task(self._unload(model_version))

    async def _load(self, version: int, mtime: float) -> None:
        model_version = ModelVersion(version, self.base_path / str(version), VersionState.LOADING, mtime=mtime)
        self.versions[version] = model_version
        self._changed()
        logger.info("loading %s version %d from %s", self.name, version, model_version.path)
        loop = asyncio.get_running_loop()
        try:
            model_version.servable = await loop.run_in_executor(self.load_executor, self._load_and_warm_up,
                                                              model_version.path)
        except Exception as error:  # noqa: BLE001 - any load failure is reported, never fatal
            model_version.state, model_version.error = VersionState.END, f"{type(error).__name__}: {error}"
            logger.error("version %d of %s failed to load: %s", version, self.name, model_version.error)
        else:
            model_version.state = VersionState.AVAILABLE
            logger.info("%s version %d is AVAILABLE", self.name, version)
        self._changed()

    def _load_and_warm_up(self, path: Path) -> Servable:
        servable = self.loader(path / ONNX_FILENAME)
        check_signature(servable.signature())
        # One inference before AVAILABLE, as TF Serving's warmup does: the first request pays no setup.
        servable.inpaint(np.zeros((1, 16, 16, 3), np.uint8), np.ones((1, 16, 16, 1), np.uint8))
        return servable

    async def _unload(self, model_version: ModelVersion) -> None:
        model_version.state = VersionState.UNLOADING
        self._changed()
        logger.info("unloading %s version %d once %d in-flight request(s) finish", self.name,
                    model_version.version, model_version.in_flight)
        if model_version.in_flight:
            await model_version.drained.wait()
        model_version.servable, model_version.state = None, VersionState.END
        self._changed()
        logger.info("%s version %d unloaded", self.name, model_version.version)

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
