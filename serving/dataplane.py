"""The protocol-neutral data plane: predict, metadata and status for the served models, in numpy and dataclasses.

The adapters convert their wire formats to these calls and back, and nothing more; where the data plane sits
on a request's path: the ``inpaint.serving`` package's docstring. Domain errors raised here become statuses
in ``errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Protocol

import numpy as np

from inpaint.core.contract import (BYTES_SIGNATURE_NAME, IMAGE_BYTES, MASK_BYTES, OUTPUT, OUTPUT_BYTES,
                                   SIGNATURE_NAME, padded_pixels)
from inpaint.core.detail import finish_fills
from inpaint.core.images import ImageTooLarge, check_encoded_size, decode_image, decode_mask, encode_png
from inpaint.core.onnx_model import Signature
from inpaint.core.tiling import TilingOptions, has_wide_holes, inpaint_tiled

from .admission import (ONNXRUNTIME_RUN, Cost, MemoryBudget, Reservation, RunCost, array_predict_cost,
                        bytes_predict_cost, wide_holes_cost)
from .decoding import check_jpeg_scans
from .errors import DeadlineExpired, InvalidInput, ServerUnavailable, to_status
from .inputs import Limits, prepare_inputs
from .metrics import ServerMetrics
from .models import ModelVersion
from .registry import ModelRegistry, Version


class Scheduler(Protocol):
    """Runs a request's images on a model version: batched (``BatchScheduler``) or not (``DirectScheduler``)."""

    busy: bool

    async def run(self, model_version: ModelVersion, image: np.ndarray, mask: np.ndarray,
                  deadline: float | None) -> np.ndarray: ...

    def flush(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class Outcome:
    """What ``request`` records once a request ends."""

    version: str = ""
    status: str = "OK"
    reservation: Reservation | None = None  # the memory it holds from the server's budget (admission)


@dataclass
class Prediction:
    version: int
    outputs: dict[str, np.ndarray | list[bytes]]  # arrays (serving_default) or PNG files (serving_bytes)


@dataclass
class ModelSignature:
    version: int
    signature: Signature


class DataPlane:
    """Predict, metadata and status for the served models (``models``), whatever the protocol.

    A request names its model and a version: a number, a version label (``canary``), or None for the latest
    AVAILABLE (``Version``); ``models`` resolves it.

    Images up to ``tiling.tile_above_pixels`` go to the scheduler whole, whose runs take the model's
    ``compute`` threads (the detail pass of those images runs there too); larger ones run in windows in
    ``tiled``, ``tiled_threads`` of the data plane's own, so a photo running for minutes never holds the
    threads the small requests need. Files are decoded and encoded in ``decoder``, the data plane's too. The
    whole path of a request: the ``inpaint.serving`` package's docstring.
    """

    def __init__(self, models: ModelRegistry, scheduler: Scheduler, limits: Limits, metrics: ServerMetrics,
                 tiling: TilingOptions = TilingOptions(), compute: Executor | None = None,
                 budget: MemoryBudget | None = None, decode_threads: int = 2, tiled_threads: int = 1,
                 run_cost: RunCost = ONNXRUNTIME_RUN):
        self.models, self.scheduler, self.limits, self.metrics = models, scheduler, limits, metrics
        self.tiling, self.compute, self.budget, self.run_cost = tiling, compute, budget, run_cost
        self.decoder = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode")
        self.tiled = ThreadPoolExecutor(tiled_threads, thread_name_prefix="tiled")
        self.draining = False
        self.active = 0
        self.finished_since_trim = False  # a request ended since freed memory was last given back
        self.last_request_at = 0.0

    @contextlib.asynccontextmanager
    async def request(self, api: str, model_name: str, protocol: str = "tfserving"):
        """Counts the request as active, times it, and labels its metrics with its outcome and protocol
        (``tfserving`` or ``v2``)."""
        outcome, started = Outcome(), time.perf_counter()
        if self.budget is not None:
            outcome.reservation = self.budget.reservation()
        in_flight = self.metrics.requests_in_flight.labels(model_name)
        in_flight.inc()
        self.active += 1
        self.last_request_at = asyncio.get_running_loop().time()
        try:
            yield outcome
        except BaseException as error:
            status = to_status(error)
            outcome.status = status[0].name if status else ("CANCELLED" if isinstance(error, asyncio.CancelledError)
                                                            else "INTERNAL")
            raise
        finally:
            if outcome.reservation is not None:
                outcome.reservation.release()
            in_flight.dec()
            self.active -= 1
            self.finished_since_trim = True
            self.metrics.request_count.labels(model_name, outcome.version, api, outcome.status, protocol).inc()
            self.metrics.request_latency.labels(model_name, api, protocol).observe(
                (time.perf_counter() - started) * 1e6)

    def _check_open(self) -> None:
        if self.draining:
            raise ServerUnavailable("server is shutting down; retry on another replica")

    def close(self) -> None:
        for executor in (self.decoder, self.tiled):
            executor.shutdown(wait=False, cancel_futures=True)

    # -- memory admission (``admission``) ---------------------------------------------------------------

    async def admit(self, outcome: Outcome, cost: Cost, what: str, deadline: float | None) -> None:
        """Reserve ``cost`` before spending it, waiting a little if the budget is full (then QueueFull)."""
        if outcome.reservation is not None:
            await outcome.reservation.grow(cost.total, f"{what} ({cost.describe()})", deadline)

    async def admit_arrays(self, outcome: Outcome, shape: tuple[int, ...], itemsize: int,
                           reply_bytes_per_value: int, deadline: float | None, list_values: int = 0) -> None:
        """Admit a ``serving_default`` request whose image's declared ``[N, H, W, 3]`` passed the limits."""
        count, height, width = shape[:3]
        cost = array_predict_cost(count, height, width, itemsize, self.tiling, reply_bytes_per_value, list_values,
                                  self.run_cost)
        await self.admit(outcome, cost, f"a request of {count} image(s) of {width}x{height}", deadline)

    async def decoded(self, function, *args):
        """``function(*args)`` in the data plane's decoding threads (array conversions, file decoding)."""
        return await in_thread(self.decoder, function, *args)

    async def predict(self, outcome: Outcome, name: str, version: Version, signature: str,
                      arrays: dict[str, np.ndarray], output_filter: list[str],
                      deadline: float | None) -> Prediction:
        """``serving_default``: uint8 image and mask arrays in, the inpainted array out."""
        self._check_open()
        check_signature_name(signature, SIGNATURE_NAME)
        check_output_filter(output_filter, OUTPUT)
        image, mask = await self.decoded(prepare_inputs, arrays, self.limits)
        model_version = self.models.acquire(name, version)
        outcome.version = str(model_version.version)
        try:
            output = await self._inpaint(model_version, image, mask, deadline, outcome)
        finally:
            self.models.release(model_version)
        return Prediction(model_version.version, {OUTPUT: output})

    async def predict_bytes(self, outcome: Outcome, name: str, version: Version,
                            files: dict[str, list[bytes]], output_filter: list[str],
                            deadline: float | None, reply_factor: float = 2.0) -> Prediction:
        """``serving_bytes``: encoded image and mask files in, PNG files out.

        Every file's size is read from its header and checked against the limits (and a JPEG's scans against
        ``decoding.MAX_JPEG_SCANS``) before any is decoded, and the request's memory is admitted from them;
        then the images are decoded, inpainted (the tiled path included) and encoded one at a time.
        ``reply_factor``: the reply's bytes per byte of the PNG files (copies, base64).
        """
        self._check_open()
        check_output_filter(output_filter, OUTPUT_BYTES)
        images, masks = self._check_files(files)
        sizes = [self._checked_pair_size(index, image, mask) for index, (image, mask) in enumerate(zip(images, masks))]
        total = sum(height * width for height, width in sizes)
        if total > self.limits.max_request_pixels:
            raise InvalidInput(f"request holds {len(images)} images of {total} pixels in all, over the limit of "
                               f"{self.limits.max_request_pixels} per request (--max-request-pixels)")
        await self.admit(outcome, bytes_predict_cost(sizes, self.tiling, reply_factor, self.run_cost),
                         f"a request of {len(sizes)} file(s) of {total} pixels", deadline)
        model_version = self.models.acquire(name, version)
        outcome.version = str(model_version.version)
        try:
            outputs = []
            for index, (image_file, mask_file) in enumerate(zip(images, masks)):
                image, mask = await self.decoded(self._decode_pair, index, image_file, mask_file)
                output = await self._inpaint(model_version, image[None], mask[None, ..., None], deadline, outcome)
                del image, mask
                outputs.append(await self.decoded(encode_png, output[0]))
        finally:
            self.models.release(model_version)
        return Prediction(model_version.version, {OUTPUT_BYTES: outputs})

    def _check_files(self, files: dict[str, list[bytes]]) -> tuple[list[bytes], list[bytes]]:
        expected = {IMAGE_BYTES, MASK_BYTES}
        if set(files) != expected:
            raise InvalidInput(f"inputs are {sorted(files)}; signature '{BYTES_SIGNATURE_NAME}' takes "
                               f"{sorted(expected)}")
        images, masks = files[IMAGE_BYTES], files[MASK_BYTES]
        if not images or len(images) != len(masks):
            raise InvalidInput(f"'{IMAGE_BYTES}' holds {len(images)} files and '{MASK_BYTES}' {len(masks)}; "
                               "send one mask per image, at least one")
        if len(images) > self.limits.max_images:
            raise InvalidInput(f"request holds {len(images)} images, over the limit of {self.limits.max_images} "
                               "per request (--max-images-per-request)")
        return images, masks

    def _checked_pair_size(self, index: int, image: bytes, mask: bytes) -> tuple[int, int]:
        """The pair's ``(height, width)`` from their headers: within --max-pixels and equal."""
        try:
            size = check_encoded_size(image, self.limits.max_pixels, f"input '{IMAGE_BYTES}'[{index}]")
            mask_size = check_encoded_size(mask, self.limits.max_pixels, f"input '{MASK_BYTES}'[{index}]")
        except ImageTooLarge as error:
            raise InvalidInput(f"{error} per image (--max-pixels)") from None
        check_jpeg_scans(image, f"input '{IMAGE_BYTES}'[{index}]")
        check_jpeg_scans(mask, f"input '{MASK_BYTES}'[{index}]")
        if size != mask_size:
            raise InvalidInput(f"input '{MASK_BYTES}'[{index}] is {mask_size[1]}x{mask_size[0]} but "
                               f"'{IMAGE_BYTES}'[{index}] is {size[1]}x{size[0]}; they must match")
        return size

    def _decode_pair(self, index: int, image: bytes, mask: bytes) -> tuple[np.ndarray, np.ndarray]:
        limit = self.limits.max_pixels
        return (decode_image(image, limit, f"input '{IMAGE_BYTES}'[{index}]"),
                decode_mask(mask, limit, f"input '{MASK_BYTES}'[{index}]"))

    async def _inpaint(self, model_version: ModelVersion, image: np.ndarray, mask: np.ndarray,
                       deadline: float | None, outcome: Outcome | None = None) -> np.ndarray:
        output = await self._fill(model_version, image, mask, deadline, outcome)
        detail = getattr(model_version.servable, "detail", None)
        if detail is not None and detail.enabled:
            tiled = self.tiling.is_tiled(*image.shape[1:3])
            await in_thread(self.tiled if tiled else self.compute, finish_fills, output, mask, detail, tiled)
        return output

    async def _fill(self, model_version: ModelVersion, image: np.ndarray, mask: np.ndarray,
                    deadline: float | None, outcome: Outcome | None = None) -> np.ndarray:
        count, height, width = image.shape[:3]
        if self.tiling.is_tiled(height, width):
            if outcome is not None and outcome.reservation is not None:
                await self._admit_wide_holes(outcome, mask, deadline)
            return await self._inpaint_tiled(model_version, image, mask, deadline)
        per_run = max(1, self.tiling.tile_above_pixels // padded_pixels(1, height, width))
        if count <= per_run:
            return await self.scheduler.run(model_version, image, mask, deadline)
        parts = [await self.scheduler.run(model_version, image[start : start + per_run],
                                          mask[start : start + per_run], deadline)
                 for start in range(0, count, per_run)]
        return np.concatenate(parts)

    async def _admit_wide_holes(self, outcome: Outcome, mask: np.ndarray, deadline: float | None) -> None:
        """Reserve the downscaled pass of photos whose mask holds wide holes (known only from the mask)."""
        height, width = mask.shape[1:3]
        wide = sum([await self.decoded(has_wide_holes, one_mask, self.tiling) for one_mask in mask])
        if wide:
            cost = wide_holes_cost(height, width, self.tiling, self.run_cost)
            await outcome.reservation.grow(cost.total * wide, f"wide holes in {wide} {width}x{height} photo(s) "
                                           f"({cost.describe()} each)", deadline)

    async def _inpaint_tiled(self, model_version: ModelVersion, image: np.ndarray, mask: np.ndarray,
                             deadline: float | None) -> np.ndarray:
        """Each image through ``inpaint_tiled`` in ``tiled``; stops between runs if the caller left."""
        abandoned = threading.Event()

        def run(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
            if abandoned.is_set():
                raise asyncio.CancelledError()
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExpired("deadline passed while the photo was being inpainted")
            return model_version.servable.inpaint(images, masks)

        def inpaint_all() -> np.ndarray:
            if len(image) == 1:  # no stacked copy of a large photo's output
                return inpaint_tiled(image[0], mask[0], run, self.tiling)[None]
            return np.stack([inpaint_tiled(one_image, one_mask, run, self.tiling)
                             for one_image, one_mask in zip(image, mask)])

        return await in_thread(self.tiled, inpaint_all, on_cancel=abandoned.set)

    def signature(self, outcome: Outcome, name: str, version: Version) -> ModelSignature:
        self._check_open()
        model_version = self.models.acquire(name, version)
        outcome.version = str(model_version.version)
        try:
            return ModelSignature(model_version.version, model_version.servable.signature())
        finally:
            self.models.release(model_version)

    def version_statuses(self, name: str, version: Version) -> list[ModelVersion]:
        return self.models.statuses(name, version)

    def is_ready(self) -> bool:
        return not self.draining and self.models.is_available()

    async def drain(self, seconds: float, quiet: float = 0.25) -> bool:
        """Refuse new work, then wait up to ``seconds`` for queued and in-flight work; True if all done.

        It also waits for ``quiet`` seconds without any new request: callers still
        arriving get a clean UNAVAILABLE (and retry elsewhere) instead of a
        connection cut by the shutdown that follows.
        """
        self.draining = True
        self.scheduler.flush()
        loop = asyncio.get_running_loop()
        give_up = loop.time() + seconds

        last_busy = loop.time()
        while loop.time() < give_up:
            now = loop.time()
            if self.active or self.scheduler.busy:
                last_busy = now
            elif now - max(last_busy, self.last_request_at) >= quiet:
                break
            await asyncio.sleep(0.01)
        return not (self.active or self.scheduler.busy)


SIGNATURE_NAMES = (SIGNATURE_NAME, BYTES_SIGNATURE_NAME)


async def in_thread(executor: Executor, function, *args, on_cancel=None):
    """``function(*args)`` in ``executor``. If the request is cancelled (its client left or its deadline
    passed), ``on_cancel`` is called and the request still ends only when the thread has: what the thread
    holds stays reserved from the budget until then, and is not counted twice."""
    future = asyncio.get_running_loop().run_in_executor(executor, function, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if on_cancel is not None:
            on_cancel()
        with contextlib.suppress(BaseException):  # its outcome no longer matters, only that it ended
            await future
        raise


def is_bytes_signature(signature: str) -> bool:
    """Whether a request names ``serving_bytes``; any other name but the default is refused by ``predict``."""
    return signature == BYTES_SIGNATURE_NAME


def check_signature_name(signature: str, expected: str) -> None:
    if signature not in ("", expected):
        raise InvalidInput(f"Serving signature key \"{signature}\" not found; the model has "
                           f"{' and '.join(repr(name) for name in SIGNATURE_NAMES)}")


def check_output_filter(output_filter: list[str], output: str) -> None:
    unknown = sorted(set(output_filter) - {output})
    if unknown:
        raise InvalidInput(f"output_filter names unknown output(s) {', '.join(unknown)}; the signature has "
                           f"'{output}'")
