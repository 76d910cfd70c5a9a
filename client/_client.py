"""``InpaintClient`` and ``AsyncInpaintClient``: the TF Serving API, spoken for an inpainting model.

Both work against TF Serving and against ``inpaint-serve``. Only UNAVAILABLE is
retried, a bounded number of times, with capped exponential backoff and full
jitter, and only within the call's deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inpaint.core.contract import BYTES_SIGNATURE_NAME, MAX_MESSAGE_BYTES, SIGNATURE_NAME, VersionState, dtype_name
from inpaint.core.images import ImageError, ImageLike, as_image, as_mask, check_pair, check_sizes, encoded_size
from inpaint.core.protos import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from inpaint.core.tensors import (TensorError, bytes_output_of, output_of, predict_bytes_request, predict_request,
                                  set_model_spec)
from inpaint.core.tiling import TilingOptions, inpaint_tiled

from ._errors import DeadlineExceeded, InvalidInput, ModelNotFound, ServerError, from_rpc_error


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of UNAVAILABLE: at most ``max_attempts`` tries, ``initial * multiplier**n`` apart, capped,
    with full jitter, and never past the call's deadline. A dead target is given up on in about a second."""

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def delays(self) -> Iterator[float]:
        ceiling = self.initial_backoff
        while True:
            yield random.uniform(0, ceiling)
            ceiling = min(self.max_backoff, ceiling * self.multiplier)


def _renamed(old: str, new: str) -> None:
    warnings.warn(f"InpaintClient.{old} is now {new} (the serving_bytes signature)", DeprecationWarning,
                  stacklevel=3)


class _Attempts:
    """One call's retry budget, for the blocking and the asyncio client alike."""

    def __init__(self, policy: RetryPolicy, target: str, clock: Callable[[], float], timeout: float):
        self.target, self.clock = target, clock
        self.deadline = clock() + timeout
        self.delays = policy.delays()
        self.left = policy.max_attempts
        self.last_unavailable: grpc.RpcError | None = None

    def remaining(self) -> float:
        return max(self.deadline - self.clock(), 0.001)

    def delay_after(self, error: grpc.RpcError) -> float:
        """Seconds to wait before the next try, or the InpaintError to raise when there is none.

        When the deadline runs out while retrying UNAVAILABLE, the caller hears
        the server's own reason (no version loaded, draining, ...), not a bare
        deadline.
        """
        self.left -= 1
        code = error.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            self.last_unavailable = error
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED and self.last_unavailable is not None:
            raise from_rpc_error(self.last_unavailable, self.target) from None
        delay = next(self.delays)
        if code != grpc.StatusCode.UNAVAILABLE or self.left <= 0 or self.clock() + delay >= self.deadline:
            raise from_rpc_error(error, self.target) from None
        return delay


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def channel_credentials(ca_cert: str | Path | None) -> grpc.ChannelCredentials:
    root = Path(ca_cert).read_bytes() if ca_cert else None
    return grpc.ssl_channel_credentials(root_certificates=root)


def _left(deadline: float) -> float:
    """Seconds to ``deadline`` for the next request of a tiled call; DeadlineExceeded once it has passed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceeded("deadline passed while the photo's windows were being sent")
    return remaining


def _state_name(value: int) -> str:
    return VersionState(value).name if value in VersionState._value2member_map_ else str(value)


class _ClientBase:
    def __init__(self, target: str, *, model: str = "inpaint", version: int | None = None,
                 label: str | None = None, signature: str = SIGNATURE_NAME, timeout: float = 30.0,
                 tls: bool = False,
                 ca_cert: str | Path | None = None, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 retry: RetryPolicy = RetryPolicy(), tiling: TilingOptions = TilingOptions()):
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if version is not None and label is not None:
            raise ValueError("ask for a version or a version label, not both")
        self.target, self.model, self.version, self.signature = target, model, version, signature
        self.label = label  # a version label (stable, canary): the server resolves it to a version
        self.timeout, self.retry, self.tiling = timeout, retry, tiling
        self._tls = tls or ca_cert is not None
        self._ca_cert = ca_cert
        self._options = channel_options(max_message_bytes)
        self._takes_bytes: bool | None = None  # whether the model has serving_bytes, once asked

    @property
    def _version(self) -> int | str | None:
        """What the requests ask for: the label, the version number, or None (the latest)."""
        return self.label if self.label is not None else self.version

    def _spec(self, message) -> None:
        set_model_spec(message, self.model, self._version)

    def _predict_request(self, images: np.ndarray, masks: np.ndarray) -> predict_pb2.PredictRequest:
        return predict_request(images, masks, self.model, self._version, self.signature)

    def _output(self, response: predict_pb2.PredictResponse, shape: tuple[int, ...]) -> np.ndarray:
        """The batch's fills; a malformed reply is the server's fault, not the caller's."""
        try:
            return output_of(response, shape)
        except TensorError as error:
            raise ServerError(f"malformed reply from {self.target}: {error}") from None

    def _bytes_request(self, images: Sequence[bytes], masks: Sequence[bytes]) -> predict_pb2.PredictRequest:
        """A ``serving_bytes`` request, after the files' headers were checked as the server will check them."""
        if len(images) != len(masks):
            raise InvalidInput(f"{len(images)} images but {len(masks)} masks")
        for index, (image, mask) in enumerate(zip(images, masks)):
            name = f"image #{index}" if len(images) > 1 else "image"
            try:
                check_sizes(encoded_size(image, name)[1:], encoded_size(mask, f"mask of {name}")[1:], name)
            except ImageError as error:
                raise InvalidInput(str(error)) from None
        return predict_bytes_request(list(images), list(masks), self.model, self._version)

    def _bytes_output(self, response: predict_pb2.PredictResponse, count: int) -> list[bytes]:
        try:
            return bytes_output_of(response, count)
        except TensorError as error:
            raise ServerError(f"malformed reply from {self.target}: {error}") from None

    @staticmethod
    def _pairs(images: Sequence[ImageLike], masks: Sequence[ImageLike]) -> list[tuple[np.ndarray, np.ndarray]]:
        if len(images) != len(masks):
            raise InvalidInput(f"{len(images)} images but {len(masks)} masks")
        pairs = []
        for index, (image, mask) in enumerate(zip(images, masks)):
            name = f"image #{index}" if len(images) > 1 else "image"
            try:
                image, mask = as_image(image), as_mask(mask, "mask" if len(images) == 1 else f"mask of {name}")
                check_pair(image, mask, name)
            except ImageError as error:
                raise InvalidInput(str(error)) from None
            pairs.append((image, mask))
        return pairs

    def _is_tiled(self, image: np.ndarray) -> bool:
        return self.tiling.is_tiled(*image.shape[:2])

    def _groups(self, pairs, batch_size: int | None) -> list[list[int]]:
        """Indices of same-size images sent whole, one request each (split at ``batch_size``)."""
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, (image, _) in enumerate(pairs):
            if not self._is_tiled(image):
                by_size[image.shape[:2]].append(index)
        step = batch_size or max(len(pairs), 1)
        return [indices[i : i + step] for indices in by_size.values() for i in range(0, len(indices), step)]

    def _metadata_request(self):
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request)
        return request

    def _status_request(self):
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request)
        return request

    @staticmethod
    def _metadata_dict(response) -> dict:
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)

        def describe(infos):  # by name: a protobuf map's order differs from one process to the next
            return {name: {"dtype": dtype_name(info.dtype), "shape": [d.size for d in info.tensor_shape.dim]}
                    for name, info in sorted(infos.items())}

        return {"model": response.model_spec.name, "version": response.model_spec.version.value,
                "signatures": {key: {"inputs": describe(s.inputs), "outputs": describe(s.outputs),
                                     "method_name": s.method_name}
                               for key, s in sorted(signatures.signature_def.items())}}

    @staticmethod
    def _status_list(response) -> list[dict]:
        return [{"version": s.version, "state": _state_name(s.state),
                 "error": s.status.error_message} for s in response.model_version_status]


class InpaintClient(_ClientBase):
    """A blocking client. Use as a context manager, or call ``close()``.

    >>> with InpaintClient("localhost:8500") as client:
    ...     out = client.inpaint(image, mask)
    """

    def __init__(self, target: str, **options):
        super().__init__(target, **options)
        if self._tls:
            self._channel = grpc.secure_channel(target, channel_credentials(self._ca_cert), self._options)
        else:
            self._channel = grpc.insecure_channel(target, self._options)
        self._prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> "InpaintClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method, request, timeout: float | None):
        attempts = _Attempts(self.retry, self.target, time.monotonic, timeout or self.timeout)
        while True:
            try:
                return method(request, timeout=attempts.remaining())
            except grpc.RpcError as error:
                time.sleep(attempts.delay_after(error))

    def inpaint(self, image: ImageLike, mask: ImageLike, *, timeout: float | None = None) -> np.ndarray:
        """One image (array or path) and its mask (nonzero = hole) -> uint8 HxWx3."""
        return self.inpaint_batch([image], [mask], timeout=timeout)[0]

    def inpaint_batch(self, images: Sequence[ImageLike], masks: Sequence[ImageLike], *,
                      batch_size: int | None = None, timeout: float | None = None) -> list[np.ndarray]:
        """Same-size images go in one request (split at ``batch_size``); results keep the input order."""
        pairs = self._pairs(images, masks)
        results: list[np.ndarray | None] = [None] * len(pairs)
        for indices in self._groups(pairs, batch_size):
            output = self._predict(np.stack([pairs[i][0] for i in indices]), np.stack([pairs[i][1] for i in indices]),
                                   timeout)
            for position, index in enumerate(indices):
                results[index] = output[position]
        for index, (image, mask) in enumerate(pairs):
            if self._is_tiled(image):
                results[index] = self._inpaint_tiled(image, mask, timeout)
        return results

    def _predict(self, images: np.ndarray, masks: np.ndarray, timeout: float | None) -> np.ndarray:
        request = self._predict_request(images, masks)
        return self._output(self._call(self._prediction.Predict, request, timeout), images.shape)

    def _inpaint_tiled(self, image: np.ndarray, mask: np.ndarray, timeout: float | None) -> np.ndarray:
        """Only the windows around the holes travel, one request per window batch, all within ``timeout``."""
        deadline = time.monotonic() + (timeout or self.timeout)
        return inpaint_tiled(image, mask, lambda images, masks: self._predict(images, masks, _left(deadline)),
                             self.tiling)

    def inpaint_bytes(self, images: Sequence[bytes], masks: Sequence[bytes], *,
                      timeout: float | None = None) -> list[bytes]:
        """Encoded files in (PNG, JPEG, WebP or BMP, sent as they are), PNG files out: ``serving_bytes``.

        One request; images may differ in size. Needs a model with that signature (``takes_bytes``).
        """
        request = self._bytes_request(images, masks)
        return self._bytes_output(self._call(self._prediction.Predict, request, timeout), len(images))

    def takes_bytes(self, *, timeout: float | None = None) -> bool:
        """Whether the model has the ``serving_bytes`` signature (asked once, then remembered)."""
        if self._takes_bytes is None:
            self._takes_bytes = BYTES_SIGNATURE_NAME in self.metadata(timeout=timeout)["signatures"]
        return self._takes_bytes

    def inpaint_files(self, images: Sequence[bytes], masks: Sequence[bytes], *,
                      timeout: float | None = None) -> list[bytes]:
        """The old name of ``inpaint_bytes``: still works, with a DeprecationWarning."""
        _renamed("inpaint_files", "inpaint_bytes")
        return self.inpaint_bytes(images, masks, timeout=timeout)

    def takes_files(self, *, timeout: float | None = None) -> bool:
        """The old name of ``takes_bytes``: still works, with a DeprecationWarning."""
        _renamed("takes_files", "takes_bytes")
        return self.takes_bytes(timeout=timeout)

    def metadata(self, *, timeout: float | None = None) -> dict:
        return self._metadata_dict(self._call(self._prediction.GetModelMetadata, self._metadata_request(), timeout))

    def status(self, *, timeout: float | None = None) -> list[dict]:
        return self._status_list(self._call(self._models.GetModelStatus, self._status_request(), timeout))

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """``SERVING``, ``NOT_SERVING``, ...; ServerUnavailable if nobody answers, ModelNotFound for a service
        the server does not have."""
        try:
            response = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        except ModelNotFound:
            raise ModelNotFound(no_health_service(self.target, service)) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


class AsyncInpaintClient(_ClientBase):
    """The same calls on ``grpc.aio``, for many concurrent requests from one event loop."""

    def __init__(self, target: str, **options):
        super().__init__(target, **options)
        if self._tls:
            self._channel = grpc.aio.secure_channel(target, channel_credentials(self._ca_cert), self._options)
        else:
            self._channel = grpc.aio.insecure_channel(target, self._options)
        self._prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def __aenter__(self) -> "AsyncInpaintClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method, request, timeout: float | None):
        attempts = _Attempts(self.retry, self.target, asyncio.get_running_loop().time, timeout or self.timeout)
        while True:
            try:
                return await method(request, timeout=attempts.remaining())
            except grpc.RpcError as error:
                await asyncio.sleep(attempts.delay_after(error))

    async def inpaint(self, image: ImageLike, mask: ImageLike, *, timeout: float | None = None) -> np.ndarray:
        return (await self.inpaint_batch([image], [mask], timeout=timeout))[0]

    async def inpaint_batch(self, images: Sequence[ImageLike], masks: Sequence[ImageLike], *,
                            batch_size: int | None = None, timeout: float | None = None) -> list[np.ndarray]:
        pairs = self._pairs(images, masks)
        results: list[np.ndarray | None] = [None] * len(pairs)

        async def send(indices: list[int]) -> None:
            output = await self._predict(np.stack([pairs[i][0] for i in indices]),
                                         np.stack([pairs[i][1] for i in indices]), timeout)
            for position, index in enumerate(indices):
                results[index] = output[position]

        async def send_tiled(index: int) -> None:
            results[index] = await self._inpaint_tiled(*pairs[index], timeout)

        await asyncio.gather(*(send(indices) for indices in self._groups(pairs, batch_size)),
                             *(send_tiled(i) for i, (image, _) in enumerate(pairs) if self._is_tiled(image)))
        return results

    async def _predict(self, images: np.ndarray, masks: np.ndarray, timeout: float | None) -> np.ndarray:
        request = self._predict_request(images, masks)
        return self._output(await self._call(self._prediction.Predict, request, timeout), images.shape)

    async def _inpaint_tiled(self, image: np.ndarray, mask: np.ndarray, timeout: float | None) -> np.ndarray:
        """As the blocking client's: the window logic runs in a thread, its requests on this loop."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + (timeout or self.timeout)

        def run(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
            return asyncio.run_coroutine_threadsafe(self._predict(images, masks, _left(deadline)), loop).result()

        return await asyncio.to_thread(inpaint_tiled, image, mask, run, self.tiling)

    async def inpaint_bytes(self, images: Sequence[bytes], masks: Sequence[bytes], *,
                            timeout: float | None = None) -> list[bytes]:
        """As the blocking client's: encoded files in, PNG files out."""
        request = self._bytes_request(images, masks)
        return self._bytes_output(await self._call(self._prediction.Predict, request, timeout), len(images))

    async def takes_bytes(self, *, timeout: float | None = None) -> bool:
        if self._takes_bytes is None:
            self._takes_bytes = BYTES_SIGNATURE_NAME in (await self.metadata(timeout=timeout))["signatures"]
        return self._takes_bytes

    async def inpaint_files(self, images: Sequence[bytes], masks: Sequence[bytes], *,
                            timeout: float | None = None) -> list[bytes]:
        """The old name of ``inpaint_bytes``: still works, with a DeprecationWarning."""
        _renamed("inpaint_files", "inpaint_bytes")
        return await self.inpaint_bytes(images, masks, timeout=timeout)

    async def takes_files(self, *, timeout: float | None = None) -> bool:
        """The old name of ``takes_bytes``: still works, with a DeprecationWarning."""
        _renamed("takes_files", "takes_bytes")
        return await self.takes_bytes(timeout=timeout)

    async def metadata(self, *, timeout: float | None = None) -> dict:
        return self._metadata_dict(
            await self._call(self._prediction.GetModelMetadata, self._metadata_request(), timeout))

    async def status(self, *, timeout: float | None = None) -> list[dict]:
        return self._status_list(await self._call(self._models.GetModelStatus, self._status_request(), timeout))

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        try:
            response = await self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service),
                                        timeout)
        except ModelNotFound:
            raise ModelNotFound(no_health_service(self.target, service)) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def no_health_service(target: str, service: str) -> str:
    """What NOT_FOUND from grpc.health.v1 means (the server sends no details)."""
    return (f"{target} has no health service {service[:100]!r}: give a model it serves (one a config change "
            "adds has none until the server applies it), or '' for the whole server")
