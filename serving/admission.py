"""Memory admitted before it is spent: one budget per server, and what each request will cost.

Every predict, on every path (TF Serving's gRPC and REST APIs, the Open Inference Protocol's, arrays or
encoded files), reserves its cost from the server's one ``MemoryBudget`` before it allocates it, and gives it
back when its answer has been written:

1. **the message**, before it arrives (gRPC predicts: twice gRPC's message cap, what gRPC's buffer and its copy
   handed over may take, held before the handler reads the message, then brought down to the bytes and their
   parsed copy; REST: the body, reserved chunk by chunk as it is read and inflated, so a gzip bomb stops at
   what the budget holds);
2. **the rest**, once the declared shapes and dtypes are known and before any array is built
   (``predict_cost``): the decoded tensors at their dtype, the uint8 copies, the model runs padded as the
   graph pads them (``contract.padded_pixels``), the tiled path's own arrays (windows, hole maps),
   decoded files, and the encoded reply.

What does not fit waits, in arrival order, for at most ``wait_seconds`` (or the request's deadline), then
is refused with RESOURCE_EXHAUSTED (HTTP 429). No request may hold more than ``share`` of the budget: one
costing more is refused at once (RESOURCE_EXHAUSTED, HTTP 413), so whatever runs, the rest of the budget
stays for the others (a 49 MP photo that runs for minutes cannot lock small requests out).

The coefficients are measured with the shipped model (``benchmarks/soak.py`` and ``tests/test_memory_admission.py``
check them under a memory cgroup). The Deployment's arithmetic, under its 3,072 MiB limit:

    the idle processes (server ~205 MiB, REST codec worker ~130, fork server and resource tracker 25)  ~360 MiB
    ONNX Runtime's arena kept for small runs (runtime.ARENA_KEEPS_PIXELS: ~10 MiB a run, two at once)    32 MiB
    the budget (--memory-budget-mib): OpenVINO's kept buffers, held at start (964 MiB at batches of 32),
    and gRPC messages arriving (2 x 92.5 MiB each until read) included                                1,920 MiB
                                                                                                   = 2,312 MiB

leaving 760 MiB (a quarter) for what is not admitted: what a gRPC stream still waiting for room may send
before its handler reads (HTTP/2 flow control: its window, 64 KiB; the server does not grow it), the message
of a method that is not a predict (metadata, status, reload, health, reflection: bytes in practice; they
arrive one at a time, about three copies of gRPC's cap at most while it is handed over, 280 MiB, and one
over 1 MiB is dropped unparsed: ``grpc_transport.SMALL_ARRIVALS``), the allocators' slack and the cost
model's error.
Measured: the soak's burst beside its mix peaks at 1,388-1,695 MiB of the cgroup (whose idle does not count
the shared libraries' pages), and memory returns to idle after it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from dataclasses import dataclass

from inpaint.core.contract import padded_pixels
from inpaint.core.detail import MAX_SOURCES, DetailOptions
from inpaint.core.tiling import TilingOptions

from .errors import QueueFull, RequestTooLarge

logger = logging.getLogger(__name__)

MiB = 2**20



@dataclass(frozen=True)
class RunCost:
    """What one model run holds at its peak: per pixel of the run as the graph pads it, and per image.

    A runtime that keeps its buffers for runs of up to ``kept_pixels`` (OpenVINO, ``--openvino-keep-pixels``)
    has ``held`` bytes (``keeping``) taken from the budget once, at the server's start (``MemoryBudget.hold``):
    such runs cost a request nothing more, and a larger run, which grows the same buffers (measured: a 1 MP
    run after 8 x 256² ones peaked where it peaks alone), costs its request only what it holds over them.
    """

    bytes_per_pixel: int
    bytes_per_image: int = 0
    kept_pixels: int = 0
    held: int = 0

    def keeping(self, pixels: int, max_images: int) -> "RunCost":
        """This cost with runs of up to ``pixels`` kept: ``held`` is what those buffers may grow to, the
        largest kept run of at most ``max_images`` images (nothing for ``pixels`` 0)."""
        held = self.peak_of_pixels(pixels, max_images) if pixels else 0
        return dataclasses.replace(self, kept_pixels=pixels, held=held)

    def peak(self, count: int, height: int, width: int) -> int:
        """What the run holds at its peak."""
        return self.peak_of_pixels(padded_pixels(count, height, width), count)

    def peak_of_pixels(self, pixels: int, images: int) -> int:
        return self.bytes_per_pixel * pixels + self.bytes_per_image * images

    def of(self, count: int, height: int, width: int) -> int:
        """What the run costs the request that makes it."""
        return self.of_pixels(padded_pixels(count, height, width), count)

    def of_pixels(self, pixels: int, images: int) -> int:
        """What a run of ``pixels`` padded pixels in ``images`` images costs the request that makes it."""
        if pixels <= self.kept_pixels:
            return 0
        return max(0, self.peak_of_pixels(pixels, images) - self.held)


# ONNX Runtime (measured: 640 B a pixel for 1 x 1024 x 1024, 628 for 8 x 256 x 256, 640 for 16 x 65,536, 520
# for 32 x 64 x 64).
ONNXRUNTIME_RUN = RunCost(640)
# ONNX Runtime on the int8 graph: two 1 MP runs at once peaked at up to 747 B a padded pixel each (one at a
# time 624-651; docs/serving.md).
ONNXRUNTIME_INT8_RUN = RunCost(768)
# OpenVINO, int8 and float32 graphs (peak over the process before the run, fresh process each: 864-875 B a
# pixel for 1 x 1024², 835-846 for 8 x 256², 897-922 for 4 x 256², 702 for 16 x 65,536, and 1,280-1,393 for
# 32 x 64²: 1.5 MiB an image more, charged 2). With ``--openvino-keep-pixels``, ``kept_pixels`` of it.
OPENVINO_RUN = RunCost(900, 2 * MiB)
# What OpenVINO keeps after a run, its buffers given back: state sized to the last run's shape (152-158 MiB after
# 1 x 1024², 32 after 4 x 256², 21 after 1 x 64², measured), replaced by the next run's. Runs are at most
# --tile-above-pixels, so with --runtime openvino the idle server holds up to this per pixel of it more.
OPENVINO_KEPT_BYTES_PER_PIXEL = 192
# inpaint_tiled's own arrays per pixel of the photo: the output copy, the hole map, the erosions (measured on
# 50 MP: 5.2 B/px for a scratch or stripes) and, for wide holes, the component labels (13.0 B/px in all).
TILED_BYTES_PER_PIXEL = 6
WIDE_HOLES_BYTES_PER_PIXEL = 8
# A decoded pair of files, per pixel: the decoder's BGR image and its RGB copy (one at a time), the mask's
# pixels (up to RGBA) and its hole map.
DECODED_FILE_BYTES_PER_PIXEL = 10
# A PNG answer per pixel: the RGB->BGR copy and the encoded file (at most the raw size at level 1).
PNG_OUT_BYTES_PER_PIXEL = 6
# The parse of a REST JSON array body in the codec process, per value: the Python list slot and number
# object, the body's copy sent to it, the float32 array and the arrays sent back.
JSON_BYTES_PER_VALUE = 48
# A JSON answer per value of the output: list slots, the JSON text and its copies between processes.
JSON_OUT_BYTES_PER_VALUE = 24
# gRPC value lists (int_val, float_val, typed contents) per value: the parsed repeated field and the numpy
# arrays built from it.
LIST_BYTES_PER_VALUE = 24

DEFAULT_BUDGET_MIB = 2304
DETAIL_WORST = DetailOptions(sources=MAX_SOURCES)  # the most a version's detail pass may hold
DEFAULT_SHARE = 0.75
DEFAULT_WAIT_SECONDS = 2.0

# The Deployment's arithmetic (above), which tests/test_settings.py checks for every manifest that runs the
# server: besides the budget, the idle processes and ORT's arena for small runs, and at least this share of
# the pod's memory limit left for what is not admitted (760 of 3,072 MiB), which holds at least what the
# small methods' one message arriving may take (SMALL_ARRIVAL_COPIES x gRPC's cap).
IDLE_PROCESSES_MIB = 360
SMALL_RUNS_ARENA_MIB = 32
UNADMITTED_SHARE = 0.24
SMALL_ARRIVAL_COPIES = 3  # measured: a 90 MB status request peaked at 258 MiB over idle as it arrived


def unadmitted_mib(memory_limit_mib: int, budget_mib: int) -> int:
    """What a memory limit leaves for what is not admitted, once the idle processes, the small runs' arena and
    the budget are taken."""
    return memory_limit_mib - IDLE_PROCESSES_MIB - SMALL_RUNS_ARENA_MIB - budget_mib


def mib(nbytes: int) -> str:
    return f"{nbytes / MiB:,.0f} MiB"


@dataclass(frozen=True)
class Cost:
    """What one request will hold at most, by part, in bytes."""

    message: int = 0   # the request as it arrived and as parsed
    tensors: int = 0   # decoded arrays at their dtype and the uint8 copies the model takes
    runs: int = 0      # the largest model run the request makes (runs of one request are sequential)
    work: int = 0      # the tiled path's arrays, decoded files, outputs
    reply: int = 0     # the encoded answer

    @property
    def total(self) -> int:
        return self.message + self.tensors + self.runs + self.work + self.reply

    def describe(self) -> str:
        parts = ", ".join(f"{name} {mib(getattr(self, name))}" for name in ("message", "tensors", "runs", "work",
                                                                              "reply") if getattr(self, name))
        return f"{mib(self.total)} ({parts})"


def inpaint_cost(count: int, height: int, width: int, tiling: TilingOptions,
                 run_cost: RunCost = ONNXRUNTIME_RUN) -> tuple[int, int]:
    """``(runs, work)`` bytes of inpainting ``count`` uint8 images of ``height`` x ``width``, as the data plane
    runs them: whole in runs of at most ``tiling.tile_above_pixels`` padded pixels, or one at a time in
    windows (and the downscaled pass for wide holes), each run costing ``run_cost``."""
    pixels = count * height * width
    detail = DETAIL_WORST.work_bytes(height, width)  # the detail pass, one image at a time, after the fills
    if tiling.is_tiled(height, width):
        stacked = 3 * pixels if count > 1 else 0  # several photos' outputs are stacked into one array
        return (run_cost.of(tiling.batch, *tiling.window_shape(height, width)),
                TILED_BYTES_PER_PIXEL * height * width + stacked + detail)
    per_run = max(1, tiling.tile_above_pixels // padded_pixels(1, height, width))
    outputs = 3 * pixels * (2 if count > per_run else 1)  # split runs are concatenated
    return run_cost.of(min(count, per_run), height, width), outputs + detail


def window_run_pixels(height: int, width: int, tiling: TilingOptions) -> int:
    """The largest run of windows of a tiled photo, padded as the graph pads them."""
    return tiling.batch * padded_pixels(1, *tiling.window_shape(height, width))


def wide_holes_cost(height: int, width: int, tiling: TilingOptions, run_cost: RunCost = ONNXRUNTIME_RUN) -> Cost:
    """What a tiled photo with wide holes costs on top of ``inpaint_cost``: the downscaled pass's larger run and
    the hole components' labels. Reserved once the mask shows wide holes, before that pass runs."""
    extra_run = max(0, run_cost.of_pixels(tiling.run_pixels(height, width), 1)
                    - run_cost.of_pixels(window_run_pixels(height, width, tiling), tiling.batch))
    return Cost(runs=extra_run, work=WIDE_HOLES_BYTES_PER_PIXEL * height * width)


def tensors_cost(count: int, height: int, width: int, itemsize: int) -> int:
    """The image and mask arrays at their dtype, and their uint8 copies when they are float."""
    values = count * height * width * 4
    return values * itemsize + (values if itemsize > 1 else 0)


def array_predict_cost(count: int, height: int, width: int, itemsize: int, tiling: TilingOptions,
                       reply_bytes_per_value: int, list_values: int = 0, run_cost: RunCost = ONNXRUNTIME_RUN) -> Cost:
    """A ``serving_default`` request once its message is held: tensors, runs, work and the reply."""
    runs, work = inpaint_cost(count, height, width, tiling, run_cost)
    reply = reply_bytes_per_value * count * height * width * 3
    return Cost(tensors=tensors_cost(count, height, width, itemsize) + LIST_BYTES_PER_VALUE * list_values,
                runs=runs, work=work, reply=reply)


def bytes_predict_cost(sizes: list[tuple[int, int]], tiling: TilingOptions, reply_factor: float,
                       run_cost: RunCost = ONNXRUNTIME_RUN) -> Cost:
    """A ``serving_bytes`` request: its pairs are decoded, inpainted and encoded one at a time, and the PNG
    answers (at most ``PNG_OUT_BYTES_PER_PIXEL / 2`` bytes a pixel each) are kept until the reply."""
    largest = max(height * width for height, width in sizes)
    runs = max(inpaint_cost(1, height, width, tiling, run_cost)[0] for height, width in sizes)
    work = max(inpaint_cost(1, height, width, tiling, run_cost)[1] for height, width in sizes)
    pngs = sum(3 * height * width for height, width in sizes)
    return Cost(tensors=DECODED_FILE_BYTES_PER_PIXEL * largest, runs=runs,
                work=work + PNG_OUT_BYTES_PER_PIXEL * largest, reply=int(pngs * reply_factor))


class Reservation:
    """Bytes held from a ``MemoryBudget`` until ``release``; ``grow`` adds to them."""

    def __init__(self, budget: "MemoryBudget"):
        self.budget, self.nbytes = budget, 0

    async def grow(self, nbytes: int, what: str, deadline: float | None = None) -> None:
        """Hold ``nbytes`` more, waiting for them as ``MemoryBudget.reserve`` does."""
        await self.budget.acquire(self, nbytes, what, deadline)

    def grow_now(self, nbytes: int, what: str) -> None:
        """Hold ``nbytes`` more now, or QueueFull (nothing waits: a body being read holds its connection)."""
        self.budget.acquire_now(self, nbytes, what)

    def shrink_to(self, nbytes: int) -> None:
        """Hold only ``nbytes`` of what is held: an estimate's excess goes back once the real size is known."""
        self.budget.give_back(self, max(0, self.nbytes - nbytes))

    def release(self) -> None:
        self.budget.give_back(self)


class MemoryBudget:
    """The bytes every request in flight may hold together; first come, first served, with a bounded wait."""

    def __init__(self, total: int, share: float = DEFAULT_SHARE, wait_seconds: float = DEFAULT_WAIT_SECONDS):
        if total < 1 or not 0 < share <= 1:
            raise ValueError(f"memory budget {total} bytes with share {share}: need a positive budget and a "
                             "share in (0, 1]")
        self.total, self.share, self.wait_seconds = total, share, wait_seconds
        self.held = 0
        self.peak = 0
        self.standing = 0  # held for good by the server itself (``hold``), not by requests
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    @property
    def per_request(self) -> int:
        """The most one request may hold: ``share`` of the budget, within what the server holds for good."""
        return min(int(self.total * self.share), self.total - self.standing)

    def hold(self, nbytes: int, what: str) -> None:
        """Hold ``nbytes`` for good, before any request (a runtime's kept buffers); ValueError naming the
        budget if that would leave requests less than a quarter of it."""
        if self.total - self.standing - nbytes < self.total // 4:
            raise ValueError(f"{what} needs {mib(nbytes)} of the {mib(self.total)} memory budget for good, leaving "
                             f"requests less than a quarter of it: raise --memory-budget-mib (and the pod's memory "
                             "limit with it) or keep fewer pixels")
        self.standing += nbytes
        self.held += nbytes
        self.peak = max(self.peak, self.held)

    def reservation(self) -> Reservation:
        return Reservation(self)

    def _check_share(self, reservation: Reservation, nbytes: int, what: str) -> None:
        if reservation.nbytes + nbytes > self.per_request:
            raise RequestTooLarge(f"{what} needs {mib(reservation.nbytes + nbytes)} of memory, over the "
                                  f"{mib(self.per_request)} one request may hold ({self.share:.0%} of "
                                  f"--memory-budget-mib {self.total // MiB}); send a smaller image, uint8 "
                                  "rather than float, or fewer images at once")

    def _fits(self, nbytes: int) -> bool:
        return self.held + nbytes <= self.total

    def _take(self, reservation: Reservation, nbytes: int) -> None:
        self.held += nbytes
        self.peak = max(self.peak, self.held)
        reservation.nbytes += nbytes

    def _busy(self, nbytes: int, what: str) -> QueueFull:
        return QueueFull(f"server is busy: {what} needs {mib(nbytes)} of memory and requests in flight hold "
                         f"{mib(self.held)} of the {mib(self.total)} budget (--memory-budget-mib); retry later")

    def acquire_now(self, reservation: Reservation, nbytes: int, what: str) -> None:
        self._check_share(reservation, nbytes, what)
        if not self._fits(nbytes):
            raise self._busy(nbytes, what)
        self._take(reservation, nbytes)

    async def acquire(self, reservation: Reservation, nbytes: int, what: str, deadline: float | None) -> None:
        self._check_share(reservation, nbytes, what)
        if not self._waiters and self._fits(nbytes):
            self._take(reservation, nbytes)
            return
        loop = asyncio.get_running_loop()
        timeout = self.wait_seconds if deadline is None else min(self.wait_seconds, deadline - loop.time())
        waiter = loop.create_future()
        entry = (nbytes, waiter)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(waiter, max(timeout, 0.0))
        except asyncio.TimeoutError:
            raise self._busy(nbytes, what) from None
        finally:
            if waiter.done() and not waiter.cancelled():
                reservation.nbytes += nbytes  # _wake took them for us
            else:
                if entry in self._waiters:
                    self._waiters.remove(entry)
                self._wake()  # the first in line left: those behind it may fit

    def _wake(self) -> None:
        """Let waiters in, in arrival order, while the first one fits."""
        while self._waiters and self._fits(self._waiters[0][0]):
            nbytes, waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self.held += nbytes
            self.peak = max(self.peak, self.held)
            waiter.set_result(None)

    def give_back(self, reservation: Reservation, nbytes: int | None = None) -> None:
        """Return ``nbytes`` of what ``reservation`` holds (all of it by default) and let waiters in."""
        nbytes = reservation.nbytes if nbytes is None else min(nbytes, reservation.nbytes)
        self.held -= nbytes
        reservation.nbytes -= nbytes
        self._wake()
