"""The protocol-neutral data plane: predict, metadata and status for one model, in numpy and dataclasses.

The adapters (``grpc_api`` and ``rest`` for TF Serving's gRPC and REST APIs,
``v2_api`` and ``v2_rest`` for the Open Inference Protocol's) convert their
wire formats to these calls and back, and nothing more. Every request passes
through ``request``, which counts it, times it and labels its metrics with its
outcome and protocol; domain errors raised here become statuses in ``errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass
from concurrent.futures import Executor
from typing import Protocol

import numpy as np

from inpaint.core.contract import (BYTES_SIGNATURE_NAME, IMAGE_BYTES, MASK_BYTES, OUTPUT, OUTPUT_BYTES,
                                   SIGNATURE_NAME)
from inpaint.core.images import ImageTooLarge, check_encoded_size, decode_image, decode_mask, encode_png
from inpaint.core.onnx_model import Signature
from inpaint.core.tiling import TilingOptions, inpaint_large

from .errors import DeadlineExpired, InvalidInput, QueueFull, ServerUnavailable, to_status
from .inputs import Limits, prepare_inputs
from .metrics import ServerMetrics
from .models import ModelManager, ModelVersion


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


@dataclass
class Prediction:
    version: int
    outputs: dict[str, np.ndarray | list[bytes]]  # arrays (serving_default) or PNG files (serving_bytes)


@dataclass
class ModelSignature:
    version: int
    signature: Signature


class DataPlane:
    """Predict, metadata and status for one model, whatever the protocol.

    Images up to ``tiling.whole_max_pixels`` go to the scheduler whole, in runs of at most that many pixels
    (a request of many images is split); larger ones run through ``inpaint_large`` in the ``large``
    executor, so no model run holds more than the window batch. ``max_inflight_pixels`` caps the pixels of
    all requests being served at once: with the per-run bounds it is what keeps memory under the pod limit.
    """

    def __init__(self, manager: ModelManager, scheduler: Scheduler, limits: Limits, metrics: ServerMetrics,
                 tiling: TilingOptions = TilingOptions(), large: Executor | None = None,
                 max_inflight_pixels: int | None = None):
        self.manager, self.scheduler, self.limits, self.metrics = manager, scheduler, limits, metrics
        self.tiling, self.large, self.max_inflight_pixels = tiling, large, max_inflight_pixels
        self.draining = False
        self.active = 0
        self.inflight_pixels = 0
        self.finished_since_trim = False  # a request ended since freed memory was last given back
        self.last_request_at = 0.0

    @contextlib.asynccontextmanager
    async def request(self, api: str, model_name: str, protocol: str = "tfserving"):
        """Counts the request as active, times it, and labels its metrics with its outcome and protocol
        (``tfserving`` or ``v2``)."""
        outcome, started = Outcome(), time.perf_counter()
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
            in_flight.dec()
            self.active -= 1
            self.finished_since_trim = True
            self.metrics.request_count.labels(model_name, outcome.version, api, outcome.status, protocol).inc()
            self.metrics.request_latency.labels(model_name, api, protocol).observe(
                (time.perf_counter() - started) * 1e6)

    def _check_open(self) -> None:
        if self.draining:
            raise ServerUnavailable("server is shutting down; retry on another replica")

    async def predict(self, outcome: Outcome, name: str, version: int | None, signature: str,
                      arrays: dict[str, np.ndarray], output_filter: list[str],
                      deadline: float | None) -> Prediction:
        """``serving_default``: uint8 image and mask arrays in, the inpainted array out."""
        self._check_open()
        check_signature_name(signature, SIGNATURE_NAME)
        check_output_filter(output_filter, OUTPUT)
        image, mask = prepare_inputs(arrays, self.limits)
        model_version = self.manager.acquire(name, version)
        outcome.version = str(model_version.version)
        try:
            with self._admitted(image.shape[0] * image.shape[1] * image.shape[2]):
                output = await self._inpaint(model_version, image, mask, deadline)
        finally:
            self.manager.release(model_version)
        return Prediction(model_version.version, {OUTPUT: output})

    async def predict_bytes(self, outcome: Outcome, name: str, version: int | None,
                            files: dict[str, list[bytes]], output_filter: list[str],
                            deadline: float | None) -> Prediction:
        """``serving_bytes``: encoded image and mask files in, PNG files out.

        Every file's size is read from its header and checked against the limits before any is decoded;
        then the images are decoded, inpainted (the large-photo path included) and encoded one at a time.
        """
        self._check_open()
        check_output_filter(output_filter, OUTPUT_BYTES)
        images, masks = self._check_files(files)
        sizes = [self._checked_pair_size(index, image, mask) for index, (image, mask) in enumerate(zip(images, masks))]
        total = sum(height * width for height, width in sizes)
        if total > self.limits.max_request_pixels:
            raise InvalidInput(f"request holds {len(images)} images of {total} pixels in all, over the limit of "
                               f"{self.limits.max_request_pixels} per request (--max-request-pixels)")
        model_version = self.manager.acquire(name, version)
        outcome.version = str(model_version.version)
        loop = asyncio.get_running_loop()
        try:
            with self._admitted(total):
                outputs = []
                for index, (image_file, mask_file) in enumerate(zip(images, masks)):
                    image, mask = await loop.run_in_executor(self.large, self._decode_pair, index, image_file,
                                                             mask_file)
                    output = await self._inpaint(model_version, image[None], mask[None, ..., None], deadline)
                    outputs.append(await loop.run_in_executor(self.large, encode_png, output[0]))
        finally:
            self.manager.release(model_version)
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
        if size != mask_size:
            raise InvalidInput(f"input '{MASK_BYTES}'[{index}] is {mask_size[1]}x{mask_size[0]} but "
                               f"'{IMAGE_BYTES}'[{index}] is {size[1]}x{size[0]}; they must match")
        return size

    def _decode_pair(self, index: int, image: bytes, mask: bytes) -> tuple[np.ndarray, np.ndarray]:
        limit = self.limits.max_pixels
        return (decode_image(image, limit, f"input '{IMAGE_BYTES}'[{index}]"),
                decode_mask(mask, limit, f"input '{MASK_BYTES}'[{index}]"))

    @contextlib.contextmanager
    def _admitted(self, pixels: int):
        """Count the request's pixels as in flight, or refuse it while others hold the budget."""
        budget = self.max_inflight_pixels
        if budget is not None and self.inflight_pixels and self.inflight_pixels + pixels > budget:
            raise QueueFull(f"server is busy: {self.inflight_pixels} pixels of requests in flight and this one "
                            f"holds {pixels}, over --max-inflight-pixels {budget}; retry later")
        self.inflight_pixels += pixels
        try:
            yield
        finally:
            self.inflight_pixels -= pixels

    async def _inpaint(self, model_version: ModelVersion, image: np.ndarray, mask: np.ndarray,
                       deadline: float | None) -> np.ndarray:
        count, height, width = image.shape[:3]
        if self.tiling.is_tiled(height, width):
            return await self._inpaint_large(model_version, image, mask, deadline)
        per_run = max(1, self.tiling.whole_max_pixels // (height * width))
        if count <= per_run:
            return await self.scheduler.run(model_version, image, mask, deadline)
        parts = [await self.scheduler.run(model_version, image[start : start + per_run],
                                          mask[start : start + per_run], deadline)
                 for start in range(0, count, per_run)]
        return np.concatenate(parts)

    async def _inpaint_large(self, model_version: ModelVersion, image: np.ndarray, mask: np.ndarray,
                             deadline: float | None) -> np.ndarray:
        """Each image through ``inpaint_large`` in a worker thread; stops between runs if the caller left."""
        loop = asyncio.get_running_loop()
        abandoned = threading.Event()

        def run(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
            if abandoned.is_set():
                raise asyncio.CancelledError()
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExpired("deadline passed while the photo was being inpainted")
            return model_version.servable.inpaint(images, masks)

        def inpaint_all() -> np.ndarray:
            return np.stack([inpaint_large(one_image, one_mask, run, self.tiling)
                             for one_image, one_mask in zip(image, mask)])

        try:
            return await loop.run_in_executor(self.large, inpaint_all)
        except asyncio.CancelledError:
            abandoned.set()
            raise

    def signature(self, outcome: Outcome, name: str, version: int | None) -> ModelSignature:
        self._check_open()
        model_version = self.manager.acquire(name, version)
        outcome.version = str(model_version.version)
        try:
            return ModelSignature(model_version.version, model_version.servable.signature())
        finally:
            self.manager.release(model_version)

    def version_statuses(self, name: str, version: int | None) -> list[ModelVersion]:
        return self.manager.statuses(name, version)

    def is_ready(self) -> bool:
        return not self.draining and self.manager.is_available()

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
