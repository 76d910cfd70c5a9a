"""The load tester: closed-loop concurrency sweeps and open-loop request rates, perf_analyzer style.

Requests are built and serialised before the clock starts, and every client
shares one asyncio event loop and one channel, so the generator is not the
bottleneck. Each level has a warmup that is not measured, and is bounded by
``duration`` and ``max_requests``.

With ``split_labels`` (two version labels, say ``stable,canary``) the requests alternate between them: a
canary check, with the latency and errors of each label in the report (``LevelResult.by_label``).

Throughput is counted over whole request cycles: the requests sent from the
first one after the warmup until ``duration`` ends, over the time from that
first one to the first request that would have been sent next. A batching
server answers a closed loop in bursts (a whole batch at once); a window that
merely cut ``duration`` out of the stream would count one burst more or less
depending on where it fell, up to 1/(number of bursts) off.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import re
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import grpc
import numpy as np

from inpaint.core.contract import MAX_MESSAGE_BYTES
from inpaint.core.images import IMAGE_SUFFIXES, ImageError, as_image, find_images
from inpaint.core.masks import generate_mask
from inpaint.core.protos import grpc_predict_v2_pb2, predict_pb2
from inpaint.core.tensors import infer_request, predict_request

from ._client import channel_options
from ._errors import InvalidInput

logger = logging.getLogger(__name__)

PERCENTILES = (50, 90, 95, 99)
# The gRPC method each protocol infers with: its path, and how its request and reply are built and read.
PROTOCOLS = {
    "tfserving": ("/tensorflow.serving.PredictionService/Predict", predict_request,
                  predict_pb2.PredictResponse.FromString),
    "v2": ("/inference.GRPCInferenceService/ModelInfer", infer_request,
           grpc_predict_v2_pb2.ModelInferResponse.FromString),
}


@dataclass
class LoadConfig:
    target: str = "localhost:8500"
    model: str = "inpaint"
    version: int | str | None = None       # a version number or label for every request; None: the latest
    split_labels: tuple[str, ...] = ()     # two version labels the requests alternate between (a canary check)
    protocol: str = "tfserving"            # tfserving: TF Serving's Predict; v2: the Open Inference Protocol
    concurrency: tuple[int, ...] = (1, 8, 32)
    rates: tuple[float, ...] = ()          # requests/s; when given, open loop instead of concurrency
    arrival: str = "constant"              # constant | poisson
    duration: float = 10.0                 # measured seconds per level
    warmup: float = 2.0                    # unmeasured seconds per level
    max_requests: int = 100_000            # per level, warmup included
    batch_size: int = 1
    image_size: int = 64
    mask_kind: str = "strokes"
    images: Path | None = None             # real photos instead of generated noise
    variants: int = 8                      # distinct pre-built requests, cycled
    timeout: float = 30.0
    metrics_url: str | None = None         # the server's Prometheus endpoint
    seed: int = 0


@dataclass
class LevelResult:
    mode: str                              # concurrency | rate
    level: float
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    requests_per_s: float = 0.0
    images_per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    server_queue_us: float | None = None
    server_batch_size: float | None = None
    by_label: dict[str, dict] = field(default_factory=dict)  # with split_labels: ok, errors, latency_ms of each


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """Percentiles, max and mean in milliseconds ({} for no latencies)."""
    if not seconds:
        return {}
    latencies = np.array(seconds) * 1000
    return {**{f"p{p}": float(np.percentile(latencies, p)) for p in PERCENTILES},
            "max": float(latencies.max()), "mean": float(latencies.mean())}


def _photo_crops(folder: Path, size: int, count: int, rng) -> list[np.ndarray]:
    files = find_images(folder)
    if not files:
        raise InvalidInput(f"--images {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}), in subfolders "
                           "neither")
    crops = []
    for index in range(count):
        try:
            image = as_image(files[index % len(files)])
        except ImageError as error:
            raise InvalidInput(str(error)) from None
        if min(image.shape[:2]) < size:
            raise InvalidInput(f"{files[index % len(files)]} is smaller than --image-size {size}")
        top = int(rng.integers(0, image.shape[0] - size + 1))
        left = int(rng.integers(0, image.shape[1] - size + 1))
        crops.append(image[top : top + size, left : left + size])
    return crops


def build_requests(config: LoadConfig) -> list[tuple[str | None, object]]:
    """``variants`` ready requests of ``batch_size`` images in ``config.protocol``, masks from the shared
    generators, each with the label it asks for: with ``split_labels``, one request per label for each
    variant, alternating, else ``(None, request)``."""
    rng = np.random.default_rng(config.seed)
    size, count = config.image_size, config.variants * config.batch_size
    if config.images is not None:
        images = _photo_crops(Path(config.images), size, count, rng)
    else:
        images = list(rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8))
    masks = [generate_mask(config.mask_kind, size, size, rng) for _ in range(count)]
    requests = []
    build = PROTOCOLS[config.protocol][1]
    for v in range(config.variants):
        chunk = slice(v * config.batch_size, (v + 1) * config.batch_size)
        for label in config.split_labels or (None,):
            version = label if label is not None else config.version
            requests.append((label, build(np.stack(images[chunk]), np.stack(masks[chunk]), config.model, version)))
    return requests


class _Recorder:
    def __init__(self, measure_from: float, stop_at: float, max_requests: int):
        self.measure_from, self.stop_at, self.max_requests = measure_from, stop_at, max_requests
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.by_label: dict[str, tuple[list[float], dict[str, int]]] = {}  # each label's latencies and errors
        self.sent = 0
        self.window_start: float | None = None  # the first measured request's start
        self.window_end: float | None = None    # the first send refused because duration was over

    def may_send(self) -> bool:
        now = time.perf_counter()
        if now >= self.stop_at:
            if self.window_end is None:
                self.window_end = now
            return False
        return self.sent < self.max_requests

    def start(self) -> float:
        """A request's start time; the first one after the warmup opens the measured window."""
        now = time.perf_counter()
        if self.window_start is None and now >= self.measure_from:
            self.window_start = now
        return now

    def measured_seconds(self) -> float:
        """From the first measured request to the next cycle after the last (or the end, at max_requests)."""
        start = self.measure_from if self.window_start is None else self.window_start
        end = min(time.perf_counter(), self.stop_at) if self.window_end is None else self.window_end
        return max(end - start, 1e-9)

    def record(self, started: float, code: str | None, label: str | None = None) -> None:
        if started < self.measure_from:
            return  # warmup
        seconds = time.perf_counter() - started
        kept = [(self.latencies, self.errors)]
        if label is not None:
            kept.append(self.by_label.setdefault(label, ([], {})))
        for latencies, errors in kept:
            if code is None:
                latencies.append(seconds)
            else:
                errors[code] = errors.get(code, 0) + 1

    def label_results(self) -> dict[str, dict]:
        return {label: {"ok": len(latencies), "errors": errors, "latency_ms": latency_summary(latencies)}
                for label, (latencies, errors) in sorted(self.by_label.items())}


async def _send(stub, payload: tuple[str | None, bytes], timeout: float, recorder: _Recorder) -> None:
    label, raw = payload
    started = recorder.start()
    try:
        await stub(raw, timeout=timeout)
        recorder.record(started, None, label)
    except grpc.RpcError as error:
        recorder.record(started, error.code().name, label)


async def _closed_loop(stub, payloads, concurrency: int, timeout: float, recorder: _Recorder) -> None:
    async def worker(offset: int) -> None:
        index = offset
        while recorder.may_send():
            recorder.sent += 1
            await _send(stub, payloads[index % len(payloads)], timeout, recorder)
            index += 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))


async def _open_loop(stub, payloads, rate: float, arrival: str, timeout: float, recorder: _Recorder,
                     rng: np.random.Generator) -> None:
    """Requests start on schedule whether or not earlier ones finished: latency shows queueing."""
    pending: set[asyncio.Task] = set()
    next_at, index = time.perf_counter(), 0
    while recorder.may_send():
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        recorder.sent += 1
        task = asyncio.ensure_future(_send(stub, payloads[index % len(payloads)], timeout, recorder))
        pending.add(task)
        task.add_done_callback(pending.discard)
        index += 1
        next_at += rng.exponential(1.0 / rate) if arrival == "poisson" else 1.0 / rate
    if pending:
        await asyncio.gather(*pending)


# The server's histograms (Prometheus text on its REST port) a load test reads before and after a level.
SERVER_HISTOGRAMS = ("inpaint_batching_session_queuing_latency", "inpaint_batching_session_batch_size",
                     "inpaint_runtime_latency", "inpaint_request_latency")
_HISTOGRAM_LINE = re.compile(rf"^((?:{'|'.join(SERVER_HISTOGRAMS)})_(?:sum|count))\{{[^}}]*\}} (\S+)$")


def scrape(url: str | None) -> dict[str, float]:
    """Sums and counts of the server's ``SERVER_HISTOGRAMS`` (over every label), or {} if unread."""
    if not url:
        return {}
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError as error:
        logger.warning("cannot read metrics from %s: %s", url, error)
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _HISTOGRAM_LINE.match(line)
        if match:
            values[match.group(1)] = values.get(match.group(1), 0.0) + float(match.group(2))
    return values


def histogram_mean(name: str, before: dict, after: dict) -> float | None:
    """The mean of what histogram ``name`` observed between two ``scrape``s (None if nothing)."""
    count = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
    return (after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)) / count if count else None


def _server_means(before: dict, after: dict) -> tuple[float | None, float | None]:
    return (histogram_mean("inpaint_batching_session_queuing_latency", before, after),
            histogram_mean("inpaint_batching_session_batch_size", before, after))


async def run_level(config: LoadConfig, mode: str, level: float, payloads: list[tuple[str | None, bytes]],
                    channel) -> LevelResult:
    path, _, parse_reply = PROTOCOLS[config.protocol]
    stub = channel.unary_unary(path, request_serializer=lambda raw: raw, response_deserializer=parse_reply)
    loop_start = time.perf_counter()
    recorder = _Recorder(loop_start + config.warmup, loop_start + config.warmup + config.duration,
                         config.max_requests)
    before = await asyncio.to_thread(scrape, config.metrics_url)
    if mode == "concurrency":
        await _closed_loop(stub, payloads, int(level), config.timeout, recorder)
    else:
        await _open_loop(stub, payloads, level, config.arrival, config.timeout, recorder,
                         np.random.default_rng(config.seed))
    seconds = recorder.measured_seconds()
    after = await asyncio.to_thread(scrape, config.metrics_url)
    ok = len(recorder.latencies)
    result = LevelResult(mode, level, sent=ok + sum(recorder.errors.values()), ok=ok, errors=recorder.errors,
                         seconds=seconds, requests_per_s=ok / seconds, images_per_s=ok * config.batch_size / seconds)
    result.latency_ms = latency_summary(recorder.latencies)
    result.by_label = recorder.label_results()
    result.server_queue_us, result.server_batch_size = _server_means(before, after)
    return result


async def run(config: LoadConfig, on_level: Callable[[LevelResult], None] | None = None) -> list[LevelResult]:
    """Every level in turn over one channel; ``on_level`` sees each result as it lands."""
    payloads = [(label, request.SerializeToString()) for label, request in build_requests(config)]
    levels = [("rate", r) for r in config.rates] or [("concurrency", c) for c in config.concurrency]
    results = []
    async with grpc.aio.insecure_channel(config.target, options=channel_options(MAX_MESSAGE_BYTES)) as channel:
        for mode, level in levels:
            result = await run_level(config, mode, level, payloads, channel)
            results.append(result)
            if on_level is not None:
                on_level(result)
    return results


def format_table(results: list[LevelResult]) -> str:
    lines = ["| level | sent | ok | errors | req/s | img/s | p50 ms | p90 ms | p95 ms | p99 ms | max ms "
             "| server queue ms | server batch |", "|" + "---|" * 13]
    for r in results:
        lat = r.latency_ms or {k: float("nan") for k in ("p50", "p90", "p95", "p99", "max")}
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items())) or "0"
        queue = f"{r.server_queue_us / 1000:.2f}" if r.server_queue_us is not None else "-"
        batch = f"{r.server_batch_size:.1f}" if r.server_batch_size is not None else "-"
        label = f"{int(r.level)} clients" if r.mode == "concurrency" else f"{r.level:g}/s"
        lines.append(f"| {label} | {r.sent} | {r.ok} | {errors} | {r.requests_per_s:.1f} | {r.images_per_s:.1f} "
                     f"| {lat['p50']:.1f} | {lat['p90']:.1f} | {lat['p95']:.1f} | {lat['p99']:.1f} | {lat['max']:.1f} "
                     f"| {queue} | {batch} |")
        lines.extend(label_rows(label, r))
    return "\n".join(lines)


def label_rows(level: str, result: LevelResult) -> list[str]:
    """One row per version label of a split level: its requests, errors and latencies."""
    rows = []
    for name, part in result.by_label.items():
        lat = part["latency_ms"] or {k: float("nan") for k in ("p50", "p90", "p95", "p99", "max")}
        errors = ", ".join(f"{k} {v}" for k, v in sorted(part["errors"].items())) or "0"
        sent = part["ok"] + sum(part["errors"].values())
        rows.append(f"| {level}, label {name} | {sent} | {part['ok']} | {errors} | - | - | {lat['p50']:.1f} "
                    f"| {lat['p90']:.1f} | {lat['p95']:.1f} | {lat['p99']:.1f} | {lat['max']:.1f} | - | - |")
    return rows


CSV_COLUMNS = ("Concurrency", "Request Rate", "Inferences/Second", "Requests/Second", "Server Queue",
               "p50 latency", "p90 latency", "p95 latency", "p99 latency", "Max latency", "Sent", "Succeeded",
               "Errors", "Avg Batch Size")


def write_report(results: list[LevelResult], config: LoadConfig, folder: Path) -> list[Path]:
    """``load.json``, ``load.csv`` (perf_analyzer's columns, latencies in µs) and, with matplotlib, ``load.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    config_dict = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    (folder / "load.json").write_text(json.dumps({"config": config_dict,
                                                  "levels": [asdict(r) for r in results]}, indent=2) + "\n")
    with (folder / "load.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for r in results:
            lat = {k: round(v * 1000) for k, v in r.latency_ms.items()}
            writer.writerow([int(r.level) if r.mode == "concurrency" else "", r.level if r.mode == "rate" else "",
                             round(r.images_per_s, 2), round(r.requests_per_s, 2),
                             "" if r.server_queue_us is None else round(r.server_queue_us),
                             lat.get("p50", ""), lat.get("p90", ""), lat.get("p95", ""), lat.get("p99", ""),
                             lat.get("max", ""), r.sent, r.ok, sum(r.errors.values()),
                             "" if r.server_batch_size is None else round(r.server_batch_size, 2)])
    written = [folder / "load.json", folder / "load.csv"]
    try:
        written.append(plot(results, folder / "load.png"))
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'inpaint[plot]'): no load.png")
    return written


def plot(results: list[LevelResult], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in results if r.latency_ms]
    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=100)
    throughput = [r.images_per_s for r in done]
    axis.plot(throughput, [r.latency_ms["p50"] for r in done], "o-", label="p50")
    axis.plot(throughput, [r.latency_ms["p99"] for r in done], "s--", label="p99")
    for r, x in zip(done, throughput):
        axis.annotate(f"{int(r.level)}" if r.mode == "concurrency" else f"{r.level:g}/s",
                      (x, r.latency_ms["p99"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axis.set_xlabel("throughput (images/s)")
    axis.set_ylabel("latency (ms)")
    axis.set_title("inpaint load test: latency against throughput")
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
