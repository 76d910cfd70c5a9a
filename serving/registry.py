"""The models a server serves, by name, and their version labels: what ``--model_config_file`` and
``HandleReloadConfigRequest`` change while traffic flows.

Each model keeps its own versions (a ``ModelManager`` polling its base path), its own batching queue (a
scheduler of ``PerModelScheduler``), its own metrics labels and health; the memory budget and the compute
threads are the server's, shared. ``apply`` replaces the config:

* Labels are checked first, as TF Serving checks them: a label may point only at a version that is
  AVAILABLE now, unless ``allow_unavailable_labels`` (``--allow_version_labels_for_unavailable_models``) and
  the label is new or keeps its version. A config that fails this changes nothing (FAILED_PRECONDITION).
* A model added gets its manager and scheduler and is polled at once; a model whose ``base_path`` changed
  gets a new manager, loaded before it replaces the old one; a model whose policy changed is polled again.
* A model removed answers NOT_FOUND at once; its versions are unloaded once their in-flight requests have
  finished, then its scheduler stops.
* Labels are swapped in whole, in one step, once the models are in place.

No other model's requests are touched by any of this. At start, a config with labels is polled once before
its labels are checked (TF Serving waits for its first models to load too), so labels on the versions that
load need no flag.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from .batching import PerModelScheduler
from .errors import FailedPrecondition, InvalidInput, ModelNotFound, quoted
from .model_config import ModelEntry
from .models import ModelManager, ModelVersion, release

logger = logging.getLogger(__name__)

Version = int | str | None  # a version number, a version label, or None for the latest AVAILABLE
ManagerFactory = Callable[[ModelEntry], ModelManager]


class ModelRegistry:
    """Models by name, each with its versions, labels and scheduler. Lives on the event loop."""

    def __init__(self, make_manager: ManagerFactory, schedulers: PerModelScheduler, poll_seconds: float,
                 allow_unavailable_labels: bool = False):
        self.make_manager, self.schedulers, self.poll_seconds = make_manager, schedulers, poll_seconds
        self.allow_unavailable_labels = allow_unavailable_labels
        self.managers: dict[str, ModelManager] = {}
        self.entries: dict[str, ModelEntry] = {}
        self.labels: dict[str, dict[str, int]] = {}
        self.on_change: list[Callable[[], None]] = []
        self._counted: set[str] = set()  # models the server's health waits for (see ``is_available``)
        self._pollers: dict[str, asyncio.Task] = {}
        self._retiring: set[asyncio.Task] = set()
        self._lock = asyncio.Lock()
        self._started = False

    # -- requests -------------------------------------------------------------------------------------

    def manager(self, name: str) -> ModelManager:
        manager = self.managers.get(name)
        if manager is None:
            served = ", ".join(repr(served) for served in sorted(self.managers)) or "none"
            raise ModelNotFound(f"Servable not found for request: model {quoted(name)} is not served (this "
                                f"server serves {served})")
        return manager

    def version_of(self, name: str, version: Version) -> int | None:
        """A request's version number: a label resolved, a number or None as it is."""
        if not isinstance(version, str):
            return version
        labels = self.labels.get(name, {})
        if version not in labels:
            known = ", ".join(repr(label) for label in sorted(labels)) or "none"
            raise InvalidInput(f"Unrecognized servable version label: {quoted(version)} (model {quoted(name)} "
                               f"has labels: {known})")
        return labels[version]

    def acquire(self, name: str, version: Version) -> ModelVersion:
        """The version to run, counted as in flight until ``release``."""
        manager = self.manager(name)
        number = self.version_of(name, version)
        try:
            return manager.acquire(name, number)
        except ModelNotFound:
            if not isinstance(version, str):
                raise
            raise ModelNotFound(f"Servable not found for request: version label {quoted(version)} of model "
                                f"{quoted(name)} points at version {number}, which is not available "
                                f"(available: {', '.join(map(str, manager.available_versions())) or 'none'})"
                                ) from None

    def release(self, model_version: ModelVersion) -> None:
        release(model_version)

    def statuses(self, name: str, version: Version) -> list[ModelVersion]:
        return self.manager(name).statuses(name, self.version_of(name, version))

    def is_available(self) -> bool:
        """The server is ready when every model it counts has an AVAILABLE version: the models it started
        with, and each model added later once it first became available (so adding a model does not take
        the server out of its load balancer)."""
        counted = [self.managers[name] for name in self._counted if name in self.managers]
        return bool(counted) and all(manager.is_available() for manager in counted)

    # -- the config -----------------------------------------------------------------------------------

    def add(self, entry: ModelEntry) -> None:
        """Serve a model of the starting config (``start`` polls it), its labels as they are."""
        self._add_manager(entry)
        self.labels[entry.name] = dict(entry.labels)
        self._counted.add(entry.name)

    async def start(self) -> None:
        """Start polling every model; with labels, poll once first and check them (FailedPrecondition)."""
        self._started = True
        if any(self.labels.values()):
            await asyncio.gather(*(manager.poll_until_settled(self.poll_seconds)
                                   for manager in self.managers.values()))
            self._check_labels(list(self.entries.values()), current={})
        for name in self.managers:
            self._start_polling(name)

    async def stop(self) -> None:
        """Cancel every task the registry and its managers started (polls, retirements, unloads), and await it."""
        tasks = [*self._pollers.values(), *self._retiring]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(manager.stop() for manager in self.managers.values()))

    async def apply(self, entries: list[ModelEntry]) -> None:
        """Replace the config with ``entries`` (checked by ``model_config``); FailedPrecondition, with nothing
        changed, when a label points at a version that is not available."""
        async with self._lock:
            self._check_labels(entries, current=self.labels)
            wanted = {entry.name: entry for entry in entries}
            for name in sorted(set(self.managers) - set(wanted)):
                self._remove(name)
            for entry in entries:
                await self._add_or_update(entry)
            self.labels = {entry.name: dict(entry.labels) for entry in entries}
            logger.info("model config applied: %s", "; ".join(describe(entry) for entry in entries) or "no models")
            self._changed()

    def _check_labels(self, entries: list[ModelEntry], current: dict[str, dict[str, int]]) -> None:
        for entry in entries:
            manager = self.managers.get(entry.name)
            available = set(manager.available_versions()) if manager is not None else set()
            for label, version in sorted(entry.labels.items()):
                moved = current.get(entry.name, {}).get(label, version) != version
                if version in available or (self.allow_unavailable_labels and not moved):
                    continue
                hint = ("" if self.allow_unavailable_labels else
                        "; label it once it is AVAILABLE, or start with --allow_version_labels_for_unavailable_"
                        "models to label a version that is still loading")
                raise FailedPrecondition(f"Request to assign label {quoted(label)} to version {version} of model "
                                         f"{quoted(entry.name)}, which is not currently available for inference "
                                         f"(available: {', '.join(map(str, sorted(available))) or 'none'}){hint}")

    async def _add_or_update(self, entry: ModelEntry) -> None:
        old = self.entries.get(entry.name)
        if old is None:
            logger.info("adding model %s from %s", entry.name, entry.base_path)
            self._add_manager(entry)
            self._start_polling(entry.name)
        elif old.base_path != entry.base_path:
            await self._replace(entry)
        elif old.policy != entry.policy:
            logger.info("model %s: version policy %s", entry.name, entry.policy)
            self.managers[entry.name].policy = entry.policy
            await self.managers[entry.name].poll()
        self.entries[entry.name] = entry

    def _add_manager(self, entry: ModelEntry) -> None:
        manager = self.make_manager(entry)
        manager.on_change.append(self._changed)
        self.managers[entry.name], self.entries[entry.name] = manager, entry
        self.schedulers.add(entry.name)

    def _start_polling(self, name: str) -> None:
        if self._started:
            self._pollers[name] = asyncio.get_running_loop().create_task(
                self.managers[name].poll_forever(self.poll_seconds), name=f"poll-{name}")

    async def _replace(self, entry: ModelEntry) -> None:
        """A model's new base path: its versions there are loaded, then they serve and the old ones go."""
        logger.info("model %s moves to %s; loading it there before the old versions go", entry.name,
                    entry.base_path)
        old_manager, poller = self.managers[entry.name], self._pollers.pop(entry.name, None)
        manager = self.make_manager(entry)
        manager.on_change.append(self._changed)
        await manager.poll_until_settled(self.poll_seconds)
        if not manager.is_available():
            logger.warning("model %s has no available version under %s yet", entry.name, entry.base_path)
        self.managers[entry.name] = manager
        self._start_polling(entry.name)
        self._retire(entry.name, old_manager, poller, remove_scheduler=False)

    def _remove(self, name: str) -> None:
        """New requests get NOT_FOUND at once; the versions go once their requests have finished."""
        logger.info("removing model %s: unloading its versions once their requests finish", name)
        manager, poller = self.managers.pop(name), self._pollers.pop(name, None)
        del self.entries[name]
        self._counted.discard(name)
        self._retire(name, manager, poller, remove_scheduler=True)

    def _retire(self, name: str, manager: ModelManager, poller: asyncio.Task | None, remove_scheduler: bool) -> None:
        if poller is not None:
            poller.cancel()

        async def unload() -> None:
            if poller is not None:
                await asyncio.gather(poller, return_exceptions=True)
            await manager.unload_all()
            if remove_scheduler and name not in self.managers:
                await self.schedulers.remove(name)
            logger.info("model %s: the versions from %s are unloaded", name, manager.base_path)
            self._changed()

        task = asyncio.get_running_loop().create_task(unload(), name=f"retire-{name}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _changed(self) -> None:
        for name, manager in self.managers.items():
            if manager.is_available():
                self._counted.add(name)
        for callback in self.on_change:
            callback()


def describe(entry: ModelEntry) -> str:
    labels = ", ".join(f"{label}={version}" for label, version in sorted(entry.labels.items()))
    return f"{entry.name} from {entry.base_path} ({entry.policy}{'; labels ' + labels if labels else ''})"

