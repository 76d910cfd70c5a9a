"""Dynamic batching with TF Serving's knobs, on the event loop, compute in worker threads.

Requests for the same model version and the same H x W join an open batch.
A batch is closed when it is full, or once ``batch_timeout_micros`` passed
since its first request arrived and one of the ``num_batch_threads`` workers
is free to run it (TF Serving's rule). While every worker is busy a batch past
its timeout stays open and keeps filling: it could not run sooner, and under
load this is what makes batches full. Closed batches wait in a bounded queue;
a full queue (open batches count) refuses new requests at once
(RESOURCE_EXHAUSTED), so memory stays bounded. Requests whose deadline has
passed, or whose caller went away, are dropped before the model runs. With
``allowed_batch_sizes`` a batch is padded up to the next allowed size, as TF
Serving does, so a GPU backend sees only a few distinct shapes.

``DirectScheduler`` is the same interface without batching.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from google.protobuf import text_format

from .errors import DeadlineExpired, QueueFull
from inpaint.core.contract import padded_pixels
from inpaint.core.protos import session_bundle_config_pb2

from .models import ModelVersion
from .settings import setting

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = field(default=32, metadata=setting("Most images in one model run.", min=1))
    batch_timeout_micros: int = field(default=2000, metadata=setting("Longest a batch waits to fill.", min=0))
    max_enqueued_batches: int = field(default=100, metadata=setting(
        "Batches that may wait; beyond it requests get RESOURCE_EXHAUSTED.", min=1))
    num_batch_threads: int = field(default=2, metadata=setting("Batches run at once.", min=1))
    allowed_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self):
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"batching parameter {name} must be at least 1, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise ValueError(f"batch_timeout_micros must not be negative, got {self.batch_timeout_micros}")
        sizes = self.allowed_batch_sizes
        if sizes and (list(sizes) != sorted(set(sizes)) or sizes[-1] != self.max_batch_size):
            raise ValueError(f"allowed_batch_sizes {list(sizes)} must increase and end at max_batch_size "
                             f"{self.max_batch_size}")

    @classmethod
    def from_file(cls, path: Path, **defaults) -> "BatchingOptions":
        """Read TF Serving's ``--batching_parameters_file`` (text-format ``BatchingParameters``)."""
        try:
            proto = text_format.Parse(Path(path).read_text(), session_bundle_config_pb2.BatchingParameters())
        except text_format.ParseError as error:
            raise ValueError(f"cannot parse batching parameters file {path}: {error}") from None
        values = dict(defaults)
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
            if proto.HasField(name):
                values[name] = getattr(proto, name).value
        if proto.allowed_batch_sizes:
            values["allowed_batch_sizes"] = tuple(proto.allowed_batch_sizes)
        return cls(**values)


@dataclass(eq=False)
class _Task:
    image: np.ndarray
    mask: np.ndarray
    future: asyncio.Future
    enqueued_at: float
    deadline: float | None
    size: int = field(init=False)    # images
    pixels: int = field(init=False)  # N x H x W as the model runs it (padded: contract.padded_pixels)

    def __post_init__(self):
        batch, height, width = self.image.shape[:3]
        self.size, self.pixels = batch, padded_pixels(batch, height, width)


@dataclass(eq=False)
class _Batch:
    key: tuple
    model_version: ModelVersion
    tasks: list[_Task] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    timed_out: bool = False  # past batch_timeout_micros: runs as soon as a worker is free
    size: int = 0            # images, kept as tasks join: checked on every request
    pixels: int = 0

    def add(self, task: _Task) -> None:
        self.tasks.append(task)
        self.size += task.size
        self.pixels += task.pixels

    @property
    def opened_at(self) -> float:
        return self.tasks[0].enqueued_at


# (version, images in the batch, seconds each request queued, seconds the model ran)
Observer = Callable[[ModelVersion, int, list[float], float], None]


class BatchScheduler:
    """Merges concurrent same-size requests into one model call and splits the result back."""

    def __init__(self, options: BatchingOptions, executor: Executor, observe: Observer | None = None,
                 tile_above_pixels: int | None = None):
        self.options, self.executor, self.observe = options, executor, observe
        self.tile_above_pixels = tile_above_pixels  # images up to this run whole: the most pixels in one model run,
        # which bounds its memory whatever the batch size
        self._open: dict[tuple, _Batch] = {}
        self._ready: collections.deque[_Batch] = collections.deque()
        self._wakeup = asyncio.Event()
        self._workers: list[asyncio.Task] = []
        self._running = 0
        self._idle_workers = 0

    @property
    def queued_batches(self) -> int:
        return len(self._open) + len(self._ready)

    @property
    def busy(self) -> bool:
        """Anything queued or running: what a drain waits for."""
        return bool(self.queued_batches or self._running)

    def start(self) -> None:
        self._workers = [asyncio.get_running_loop().create_task(self._work(), name=f"batch-thread-{i}")
                         for i in range(self.options.num_batch_threads)]

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def run(self, model_version: ModelVersion, image: np.ndarray, mask: np.ndarray,
                  deadline: float | None) -> np.ndarray:
        loop = asyncio.get_running_loop()
        task = _Task(image, mask, loop.create_future(), loop.time(), deadline)
        self._enqueue(model_version, task)
        return await task.future  # a cancelled caller cancels the future: the worker skips it

    def _enqueue(self, model_version: ModelVersion, task: _Task) -> None:
        key = (id(model_version), image_key(task.image))
        batch = self._open.get(key)
        if batch is not None and not self._fits(batch, task):
            self._close(batch)
            batch = None
        if batch is None:
            if self.queued_batches >= self.options.max_enqueued_batches:
                raise QueueFull(f"batching queue is full ({self.options.max_enqueued_batches} batches waiting); "
                                "retry later")
            batch = self._open[key] = _Batch(key, model_version)
            timeout = self.options.batch_timeout_micros / 1e6
            batch.timer = asyncio.get_running_loop().call_later(timeout, self._time_out, batch)
        batch.add(task)
        if batch.size >= self.options.max_batch_size:
            self._close(batch)

    def _time_out(self, batch: _Batch) -> None:
        """The batch may now run unfilled: at once if a worker is free, else when the next one is."""
        batch.timer = None
        batch.timed_out = True
        if self._idle_workers > len(self._ready):
            self._close(batch)

    def _fits(self, batch: _Batch, task: _Task) -> bool:
        if batch.size + task.size > self.options.max_batch_size:
            return False
        return self.tile_above_pixels is None or batch.pixels + task.pixels <= self.tile_above_pixels

    def flush(self) -> None:
        """Close every open batch now: when draining, no request will come to fill them."""
        for batch in list(self._open.values()):
            self._close(batch)

    def _close(self, batch: _Batch, first: bool = False) -> None:
        if self._open.get(batch.key) is batch:
            del self._open[batch.key]
            if batch.timer is not None:
                batch.timer.cancel()
            if first:
                self._ready.appendleft(batch)
            else:
                self._ready.append(batch)
            self._wakeup.set()

    def _close_overdue(self) -> None:
        """Queue the oldest open batch, if past its timeout, ahead of closed batches younger than it.

        Batches open, and time out, in arrival order; so a worker runs batches in
        arrival order too, and a size that trickles in is not starved by one that
        keeps filling batches.
        """
        oldest = next(iter(self._open.values()), None)
        if oldest is None or not oldest.timed_out:
            return
        if not self._ready or oldest.opened_at <= self._ready[0].opened_at:
            self._close(oldest, first=True)

    async def _next_batch(self) -> _Batch:
        while True:
            self._close_overdue()
            if self._ready:
                return self._ready.popleft()
            self._wakeup.clear()
            self._idle_workers += 1
            try:
                await self._wakeup.wait()
            finally:
                self._idle_workers -= 1

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            tasks = self._live_tasks(batch, loop.time())
            if not tasks:
                continue
            self._running += 1
            try:
                await self._run_batch(batch.model_version, tasks, loop)
            finally:
                self._running -= 1

    @staticmethod
    def _live_tasks(batch: _Batch, now: float) -> list[_Task]:
        live = []
        for task in batch.tasks:
            if task.future.done():  # cancelled: the caller's deadline passed or it hung up
                continue
            if task.deadline is not None and now >= task.deadline:
                task.future.set_exception(DeadlineExpired("deadline passed while the request was queued"))
                continue
            live.append(task)
        return live

    async def _run_batch(self, model_version: ModelVersion, tasks: list[_Task], loop) -> None:
        started = loop.time()
        images = np.concatenate([t.image for t in tasks]) if len(tasks) > 1 else tasks[0].image
        masks = np.concatenate([t.mask for t in tasks]) if len(tasks) > 1 else tasks[0].mask
        images, masks = self._pad(images), self._pad(masks)
        try:
            output = await loop.run_in_executor(self.executor, model_version.servable.inpaint, images, masks)
        except Exception as error:  # noqa: BLE001 - handed to every caller; they report it
            for task in tasks:
                if not task.future.done():
                    task.future.set_exception(error)
            return
        if self.observe is not None:
            self.observe(model_version, len(images), [started - t.enqueued_at for t in tasks], loop.time() - started)
        offset = 0
        for task in tasks:
            if not task.future.done():
                task.future.set_result(output[offset : offset + task.size])
            offset += task.size

    def _pad(self, batch: np.ndarray) -> np.ndarray:
        """``batch`` with zero images appended up to the next allowed batch size (the caller slices them off)."""
        size = next((s for s in self.options.allowed_batch_sizes if s >= len(batch)), len(batch))
        if size == len(batch):
            return batch
        return np.concatenate([batch, np.zeros((size - len(batch), *batch.shape[1:]), batch.dtype)])


def image_key(image: np.ndarray) -> tuple[int, int]:
    """Requests can share a batch only when their images have the same H and W."""
    return image.shape[1], image.shape[2]


class DirectScheduler:
    """No batching: every request runs on its own in a worker thread."""

    def __init__(self, executor: Executor, observe: Observer | None = None):
        self.executor, self.observe = executor, observe
        self._running = 0

    @property
    def busy(self) -> bool:
        return bool(self._running)

    def start(self) -> None:
        pass

    def flush(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def run(self, model_version: ModelVersion, image: np.ndarray, mask: np.ndarray,
                  deadline: float | None) -> np.ndarray:
        loop = asyncio.get_running_loop()
        enqueued = loop.time()
        if deadline is not None and enqueued >= deadline:
            raise DeadlineExpired("deadline passed before the request reached the model")
        started: list[float] = []

        def run_model():
            started.append(time.monotonic())  # the event loop's clock
            return model_version.servable.inpaint(image, mask)

        self._running += 1
        try:
            output = await loop.run_in_executor(self.executor, run_model)
        finally:
            self._running -= 1
        if self.observe is not None:
            self.observe(model_version, len(image), [started[0] - enqueued], loop.time() - started[0])
        return output


class PerModelScheduler:
    """One scheduler per model, so each model has its own batching queue, behind the one scheduler interface:
    ``run`` hands a request to the scheduler of its version's model. ``make`` builds a model's scheduler."""

    def __init__(self, make: Callable[[], "BatchScheduler | DirectScheduler"]):
        self.make = make
        self._by_model: dict[str, BatchScheduler | DirectScheduler] = {}
        self._started = False

    @property
    def busy(self) -> bool:
        return any(scheduler.busy for scheduler in self._by_model.values())

    @property
    def queued_batches(self) -> int:
        """Batches open or waiting, all models together (a DirectScheduler queues none)."""
        return sum(getattr(scheduler, "queued_batches", 0) for scheduler in self._by_model.values())

    def add(self, model: str) -> None:
        """A model's scheduler, started if the others are; kept if the model has one already."""
        if model not in self._by_model:
            scheduler = self._by_model[model] = self.make()
            if self._started:
                scheduler.start()

    async def remove(self, model: str) -> None:
        """Stop a removed model's scheduler (once its requests have finished)."""
        scheduler = self._by_model.pop(model, None)
        if scheduler is not None:
            await scheduler.stop()

    def start(self) -> None:
        self._started = True
        for scheduler in self._by_model.values():
            scheduler.start()

    def flush(self) -> None:
        for scheduler in self._by_model.values():
            scheduler.flush()

    async def stop(self) -> None:
        await asyncio.gather(*(scheduler.stop() for scheduler in self._by_model.values()))

    async def run(self, model_version: ModelVersion, image: np.ndarray, mask: np.ndarray,
                  deadline: float | None) -> np.ndarray:
        return await self._by_model[model_version.model].run(model_version, image, mask, deadline)
