"""The ONNX Runtime model server: gRPC (TF Serving API, Open Inference Protocol, health, reflection) and REST
on one event loop.

``create_server`` builds the gRPC server and returns its bound port;
``InpaintServer`` owns the whole lifecycle (models, scheduling, REST, drain);
``serve`` runs one until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2

from inpaint.core.contract import VersionState
from inpaint.core.protos import model_service_pb2, prediction_service_pb2
from inpaint.core.protos._pool import POOL
from inpaint.core.tiling import TILING_MODES, TilingOptions

from .admission import DEFAULT_BUDGET_MIB, DEFAULT_SHARE, MiB, MemoryBudget
from .batching import BatchingOptions, BatchScheduler, DirectScheduler, PerModelScheduler
from .dataplane import DataPlane
from .grpc_api import Reloader, add_tf_serving_services
from .grpc_transport import ARRIVAL_COPIES, SMALL_ARRIVALS, add_health_service, add_reflection_service
from .inputs import Limits
from .errors import FailedPrecondition, InvalidConfig
from .metrics import ServerMetrics
from .model_config import ModelEntry, entries_from_proto, parse_config_text, read_config_file, read_config_text
from .models import ModelManager, ModelVersion, VersionPolicy
from .registry import ModelRegistry
from .rest import RestApi
from . import early_signals
from .runtime import DEVICES, PRECISIONS, RUNTIMES, ModelLoader, hand_large_buffers_back_when_freed, return_freed_memory
from .settings import check_origin, check_port, setting
from .shutdown import RUNNER_SHUTDOWN_SECONDS, STOP_SIGNALS, check_ports_free, close_rest
from .v2_api import SERVICE_NAME as V2_SERVICE_NAME, add_v2_service
from .v2_rest import add_v2_routes

logger = logging.getLogger(__name__)

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
OVERALL_HEALTH = ""  # grpc.health.v1's name for the server as a whole


@dataclass
class ServerConfig:
    """What ``inpaint-serve`` is told. Each field set by a flag carries its ``Setting`` (serving/settings.py): the
    flag, its help and its bounds are written here once, and serving/cli.py builds the option from them."""

    model_base_path: Path | None = field(default=None, metadata=setting(
        "Model repository: BASE/<version>/model.onnx (one model; or --model-config-file).", tf_serving=True,
        path="folder"))
    model_name: str = field(default="inpaint", metadata=setting("Name clients ask for.", tf_serving=True))
    model_config_file: Path | None = field(default=None, metadata=setting(
        "TF Serving's model server config (ModelServerConfig text format): several models, their version "
        "policies and version labels, in place of --model-base-path.", tf_serving=True, path="file"))
    config_poll_seconds: float = field(default=0.0, metadata=setting(
        "How often to re-read --model-config-file and apply its changes (0: read it once).",
        flag="--model-config-file-poll-wait-seconds", tf_serving=True, min=0))
    allow_unavailable_labels: bool = field(default=False, metadata=setting(
        "Let a new version label point at a version that is not AVAILABLE yet (as TF Serving's flag).",
        flag="--allow-version-labels-for-unavailable-models", tf_serving=True))
    host: str = field(default="0.0.0.0", metadata=setting("Address to listen on."))
    port: int = field(default=8500, metadata=setting("gRPC port (0: any free port).", check=check_port))
    rest_port: int | None = field(default=8501, metadata=setting(  # None: no REST server; 0: any free port
        "REST and metrics port (0: any free port, -1: no REST).", check=check_port))
    version_policy: str = field(default="latest:1", metadata=setting(
        "Versions to serve: latest:N, all or specific:1,3.", flag="--model-version-policy",
        check=VersionPolicy.parse))
    poll_seconds: float = field(default=2.0, metadata=setting(
        "How often to look for new or removed versions.", flag="--file-system-poll-wait-seconds", tf_serving=True,
        min=0.05))
    enable_batching: bool = field(default=False, metadata=setting(
        "Merge concurrent same-size requests into one model run."))
    batching: BatchingOptions = field(default_factory=BatchingOptions)  # its fields carry their own settings
    # Memory (docs/serving.md, "Memory"; serving/admission.py): every request reserves what it will cost
    # (its message, before a gRPC one is received, tensors by dtype, model runs padded to multiples of 16 at
    # 640 bytes a pixel with ONNX Runtime, the tiled path's arrays, its reply) from one budget of
    # memory_budget_mib before it spends it, and no request may hold more than memory_share of it; the rest
    # waits up to 2 s, then gets RESOURCE_EXHAUSTED (429). OpenVINO's kept buffers are held from it at start.
    # The default budget holds them, a 24 MP photo and a small request's message arriving at the default caps
    # (tests/test_settings.py); the Deployment's (1,920 MiB, under its 3 GiB limit) does the same at its caps:
    # the arithmetic is in admission.py.
    max_pixels: int = field(default=50_000_000, metadata=setting("Largest H x W per image.", min=1))
    max_images_per_request: int = field(default=64, metadata=setting("Most images (N) in one request.", min=1))
    max_request_pixels: int = field(default=50_000_000, metadata=setting(
        "Most pixels (N x H x W) in one request.", min=1))
    memory_budget_mib: int = field(default=DEFAULT_BUDGET_MIB, metadata=setting(
        "Memory all requests in flight may hold together; each reserves its cost before spending it, and what "
        "does not fit waits up to 2 s, then gets RESOURCE_EXHAUSTED (429). Size it with the pod's memory limit "
        "(docs/serving.md, Memory).", min=64))
    memory_share: float = field(default=DEFAULT_SHARE, metadata=setting(
        "The most of the budget one request may hold; a request costing more gets RESOURCE_EXHAUSTED (413), and "
        "the rest stays for the others.", min=0.05, max=1.0))
    max_request_bytes: int | None = field(default=None, metadata=setting(  # None: from the pixel limits
        "Largest message, gRPC and REST [default: gRPC 4 bytes per --max-request-pixels (uint8; float32 up to "
        "--tile-above-pixels), REST 40 bytes per --tile-above-pixels (JSON is for small images), + 1 MiB]. A "
        "gRPC predict holds twice this from the memory budget while its message arrives, so gRPC's is at most "
        "half of what one request may hold.", min=1024))
    tiling: str = field(default="auto", metadata=setting(
        "auto: images over --tile-above-pixels run in windows around their holes (memory bounded by the window "
        "batch); always; off: every image whole.", choices=TILING_MODES))
    tile_above_pixels: int = field(default=TilingOptions.tile_above_pixels, metadata=setting(
        "Images up to this size run whole; the most pixels in one model run.", min=4096))
    tile_batch: int = field(default=8, metadata=setting("Windows (256 x 256) per model run.", min=1))
    device: str = field(default="auto", metadata=setting(
        "auto: CUDA when it really works, else CPU.", choices=DEVICES))
    precision: str = field(default="auto", metadata=setting(
        "auto: where runs go to the CPU, each version's model.int8.onnx where it has one, else its model.onnx; "
        "float32: model.onnx; int8: model.int8.onnx, and a version without one is not served. "
        "benchmarks/int8.py --install writes the int8 graph once its quality is within 1 % of float32's; on "
        "CPUs it runs faster than model.onnx (docs/serving.md).", choices=PRECISIONS))
    runtime: str = field(default="auto", metadata=setting(
        "auto: OpenVINO where runs go to the CPU and it is installed, else ONNX Runtime; onnxruntime: ONNX "
        "Runtime (CUDA or CPU, per --device); openvino: OpenVINO on the CPU (pip install 'inpaint[openvino]'), "
        "faster on x86 CPUs, runs one at a time, keeping its buffers (docs/serving.md).", choices=RUNTIMES))
    openvino_keep_pixels: int = field(default=2**20, metadata=setting(
        "With OpenVINO: runs of up to this many pixels (N x H x W as the graph pads them) keep OpenVINO's "
        "buffers between runs (no page faults: 1.3-1.9x faster on 2 cores), held from --memory-budget-mib once, "
        "at start (900 bytes a pixel + 2 MiB an image); larger runs give theirs back. The default covers every "
        "run at the default --tile-above-pixels (whole images up to 1 MP, batches of windows); 0: every run "
        "gives them back.", min=0))
    intra_op_threads: int = field(default=0, metadata=setting(
        "Threads per model run (0: the runtime's choice).", min=0))
    compute_threads: int = field(default=2, metadata=setting(
        "Model runs at once when batching is off (each holds at most --tile-above-pixels).", min=1))
    tiled_threads: int = field(default=1, metadata=setting(
        "Photos over --tile-above-pixels running in windows at once, on threads of their own (not the compute "
        "threads, which whole images and batches keep).", min=1))
    drain_seconds: float = field(default=20.0, metadata=setting(
        "On SIGTERM (or SIGINT, SIGHUP), how long queued and in-flight requests get to finish.", min=0))
    # The stop's bounds (serving/shutdown.py): drain_seconds + close_seconds + shutdown.EXIT_SECONDS must fit in
    # the pod's terminationGracePeriodSeconds (30 s in the Deployment: 20 + 5 + 2).
    close_seconds: float = field(default=5.0, metadata=setting(
        "After the drain, how long replies still being written and gRPC calls still open get before their "
        "connections are cut (a cut REST request gets 503 or a reset, never a short 200).", min=0))
    rest_idle_seconds: float = field(default=75.0, metadata=setting(
        "A REST connection without a request in progress (silent, still sending its headers, or idle between "
        "requests) is closed after this long.", min=0.1))
    rest_body_seconds: float = field(default=60.0, metadata=setting(
        "The longest a REST request body may take to arrive, as for gRPC messages; a slower one gets 408 and its "
        "connection closed.", min=0.1))
    cors_origin: str | None = field(default=None, metadata=setting(
        "Let web pages from this origin (https://app.example.com, or *) call the REST API.", check=check_origin))
    rest_timeout_seconds: float | None = None  # deadline of a REST predict (TF Serving's --rest_api_timeout_in_ms)

JSON_BYTES_PER_PIXEL = 40    # room for the widest encoding: REST JSON of float pixels
TENSOR_BYTES_PER_PIXEL = 4   # binary tensors (gRPC): uint8 image and mask
FLOAT_TENSOR_BYTES_PER_PIXEL = 16  # float32 image and mask, for images that run whole
B64_FILE_BYTES_PER_PIXEL = 4  # serving_bytes over REST: base64 of an RGB PNG at its largest (3 B/px) and a mask


def request_bytes_for(max_request_pixels: int, tile_above_pixels: int) -> tuple[int, int, int]:
    """The message caps, gRPC and REST, that admit every request the pixel limits admit, and the most
    values a REST body may hold as JSON arrays.

    JSON arrays are parsed into Python lists (8 bytes per value and more), so REST carries pixel arrays
    for the images that run whole, up to ``tile_above_pixels``; larger photos travel as files
    (``serving_bytes``) or as binary tensors over gRPC. gRPC's cap is what uint8 tensors take at
    ``max_request_pixels``, and float32 ones up to ``tile_above_pixels`` (images that run whole): every
    predict holds twice the cap from the memory budget while its message arrives
    (``grpc_transport.receive``), so a cap sized for float32 photos would let few arrive at once.
    """
    grpc_bytes = max(TENSOR_BYTES_PER_PIXEL * max_request_pixels,
                     FLOAT_TENSOR_BYTES_PER_PIXEL * min(tile_above_pixels, max_request_pixels)) + 2**20
    json_bytes = JSON_BYTES_PER_PIXEL * min(tile_above_pixels, max_request_pixels)
    rest_bytes = max(json_bytes, B64_FILE_BYTES_PER_PIXEL * max_request_pixels) + 2**20
    return min(grpc_bytes, 2**31 - 1), rest_bytes, json_bytes // 2  # a JSON value takes 2 bytes at least


def create_server(address: str, dataplane: DataPlane, health: health_aio.HealthServicer,
                  max_message_bytes: int, reload: Reloader | None = None) -> tuple[grpc.aio.Server, int]:
    """The gRPC server with every service registered, bound to ``address``; not started."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
        # A large photo's call can run for a minute without data: accept the clients' keepalive pings (every
        # 30 s from ours) instead of answering the third one with GOAWAY "too_many_pings" (the default
        # allows one per 5 minutes), which cuts the call.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        # A stream whose message is not read yet (waiting for room in the budget or for the small methods'
        # gate) keeps HTTP/2's 64 KiB window instead of one that bandwidth probing grows to tens of MiB on a
        # fast link: sixteen 90 MB status requests at once peaked at 369-633 MiB over idle with probing and
        # 284-320 without. A message being read opens its stream's window to its size (90 MB in 0.4 s either way).
        ("grpc.http2.bdp_probe", 0),
    ]
    server = grpc.aio.server(options=options)
    small_messages = asyncio.Semaphore(SMALL_ARRIVALS)  # the gate of every method other than the predicts
    add_tf_serving_services(server, dataplane, max_message_bytes, small_messages, reload)
    # the Open Inference Protocol (KServe v2, tritonclient) on the same port
    add_v2_service(server, dataplane, max_message_bytes, small_messages)
    add_health_service(server, health, max_message_bytes, small_messages)
    for descriptor_file in (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
        try:
            POOL.AddSerializedFile(descriptor_file.serialized_pb)
        except TypeError:
            pass  # already in the pool from an earlier server in this process
    names = (
        prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
        model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
        V2_SERVICE_NAME,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    add_reflection_service(server, names, POOL, small_messages)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as error:  # gRPC's "Failed to bind": taken since check_ports_free looked
        raise OSError(f"cannot listen for gRPC on {address}: {error}") from None
    if port == 0:
        raise OSError(f"cannot bind gRPC address {address}")
    return server, port


def initial_models(config: ServerConfig) -> list[ModelEntry]:
    """The models to start with: ``model_config_file``'s (InvalidConfig if it is not usable), or the one model
    at ``model_base_path``."""
    if config.model_config_file is not None:
        return read_config_file(config.model_config_file)
    if config.model_base_path is None:
        raise InvalidConfig("give a model base path or a model config file")
    return [ModelEntry(config.model_name, Path(config.model_base_path), VersionPolicy.parse(config.version_policy))]


class InpaintServer:
    """Models served over gRPC and REST, from start to a clean drain: one (``model_base_path``) or those of a
    model config file, which may change while the server runs (``registry``)."""

    def __init__(self, config: ServerConfig):
        self.config = config
        entries = initial_models(config)
        self.metrics = ServerMetrics([entry.name for entry in entries])
        threads = config.batching.num_batch_threads if config.enable_batching else config.compute_threads
        self.compute = ThreadPoolExecutor(threads, thread_name_prefix="inference")
        self.loading = ThreadPoolExecutor(1, thread_name_prefix="model-loader")
        self.loader = ModelLoader.for_config(config)
        self.scheduler = PerModelScheduler(self._make_scheduler)
        self.models = ModelRegistry(self._make_manager, self.scheduler, config.poll_seconds,
                                    config.allow_unavailable_labels)
        for entry in entries:
            self.models.add(entry)
        self.models.on_change.append(self._on_versions_changed)
        self._health_names: set[str] = set()
        self._config_text: str | None = None  # the model config file's text last read (applied or not)
        self._config_unreadable: str | None = None  # why the model config file could not be read at the last poll
        tiling = TilingOptions(config.tiling, config.tile_above_pixels, batch=config.tile_batch)
        max_images = (min(config.max_images_per_request, config.batching.max_batch_size) if config.enable_batching
                      else config.max_images_per_request)
        limits = Limits(config.max_pixels, max_images, config.max_request_pixels)
        self.budget = MemoryBudget(config.memory_budget_mib * MiB, config.memory_share)
        run_cost = self.loader.run_cost(max_images)
        if run_cost.held:
            try:
                self.budget.hold(run_cost.held, f"OpenVINO (--runtime {config.runtime}) with --openvino-keep-pixels "
                                                f"{config.openvino_keep_pixels}")
            except ValueError as error:
                raise InvalidConfig(str(error)) from None
        hand_large_buffers_back_when_freed()
        self.dataplane = DataPlane(self.models, self.scheduler, limits, self.metrics, tiling, self.compute,
                                   self.budget, tiled_threads=config.tiled_threads, run_cost=run_cost)
        self.health = health_aio.HealthServicer()
        grpc_bytes, rest_bytes, json_values = request_bytes_for(config.max_request_pixels, config.tile_above_pixels)
        # gRPC's cap, within what one request may hold while its message arrives (ARRIVAL_COPIES x the cap)
        self.max_request_bytes = min(config.max_request_bytes or grpc_bytes,
                                     self.budget.per_request // ARRIVAL_COPIES)
        if config.max_request_bytes and config.max_request_bytes > self.max_request_bytes:
            logger.warning("gRPC messages are capped at %d bytes, not --max-request-bytes %d: a predict holds "
                           "%d times the cap while its message arrives, and one request at most %d MiB "
                           "(--memory-share of --memory-budget-mib)", self.max_request_bytes,
                           config.max_request_bytes, ARRIVAL_COPIES, self.budget.per_request // MiB)
        self.max_rest_bytes = config.max_request_bytes or rest_bytes
        if config.max_request_bytes:  # an operator who admits that many bytes admits them as JSON values too
            json_values = config.max_request_bytes // 2
        self.rest = (RestApi(self.dataplane, self.max_rest_bytes, json_values, config.model_name,
                             config.cors_origin, config.rest_timeout_seconds, config.rest_body_seconds)
                     if config.rest_port is not None else None)
        if self.rest is not None:
            add_v2_routes(self.rest.app, self.rest)  # the Open Inference Protocol (KServe v2) on the same port
        self.rest_app_runner: web.AppRunner | None = None
        self.grpc_server: grpc.aio.Server | None = None
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self.config_poller: asyncio.Task | None = None
        self.trimmer: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()  # every task the server starts; cancelled and awaited on stop
        self.stopped = asyncio.Event()

    @property
    def manager(self) -> ModelManager:
        """The model's manager (with a config file: the manager of ``model_name``, else of the first model)."""
        managers = self.models.managers
        return managers.get(self.config.model_name) or next(iter(managers.values()))

    def _make_manager(self, entry: ModelEntry) -> ModelManager:
        return ModelManager(entry.name, entry.base_path, entry.policy, self.loader, self.loading)

    def _make_scheduler(self) -> BatchScheduler | DirectScheduler:
        config = self.config
        if config.enable_batching:
            return BatchScheduler(config.batching, self.compute, self._observe, config.tile_above_pixels)
        return DirectScheduler(self.compute, self._observe)

    async def start(self) -> None:
        config = self.config
        self.scheduler.start()
        for service_name in (OVERALL_HEALTH, *self.models.managers):
            await self.health.set(service_name, NOT_SERVING)
        address = f"{config.host}:{config.port}"
        self.grpc_server, self.grpc_port = create_server(address, self.dataplane, self.health,
                                                         self.max_request_bytes, self.reload_config)
        await self.grpc_server.start()
        if self.rest is not None:
            await self.rest.start_codec()
            # Bodies are inflated by RestApi.read_body, with a cap and held from the memory budget.
            self.rest_app_runner = web.AppRunner(self.rest.app, access_log=None, auto_decompress=False,
                                                 keepalive_timeout=config.rest_idle_seconds,
                                                 shutdown_timeout=RUNNER_SHUTDOWN_SECONDS)
            await self.rest_app_runner.setup()
            await web.TCPSite(self.rest_app_runner, config.host, config.rest_port).start()
            self.rest_port = self.rest_app_runner.addresses[0][1]  # what port 0 resolved to
        logger.info("serving %s: gRPC on %s:%s, REST on %s, batching %s", self._serving_what(), config.host,
                    self.grpc_port,
                    f"{config.host}:{self.rest_port}" if self.rest_port else "off",
                    config.batching if config.enable_batching else "off")
        logger.info("limits: %d pixels per image, %d images and %d pixels per request; memory budget %d MiB "
                    "(at most %d MiB a request); %d bytes per gRPC message, %d per REST body; tiling %s above "
                    "%d pixels", config.max_pixels, self.dataplane.limits.max_images, config.max_request_pixels,
                    config.memory_budget_mib, self.budget.per_request // MiB, self.max_request_bytes,
                    self.max_rest_bytes, config.tiling, config.tile_above_pixels)
        self.trimmer = self._in_background(self._return_memory_when_idle())
        await self.models.start()
        if config.model_config_file is not None and config.config_poll_seconds > 0:
            self._config_text = read_config_text(config.model_config_file)
            self.config_poller = self._in_background(self._poll_config_file())

    def _in_background(self, coroutine) -> asyncio.Task:
        """Run ``coroutine`` as a task the server keeps until it ends (``_stop_background`` on stop)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _stop_background(self) -> None:
        """Cancel every task still running in the background (pollers, health updates), and await it."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _serving_what(self) -> str:
        if self.config.model_config_file is None:
            return f"model '{self.config.model_name}' from {self.config.model_base_path}"
        return f"{len(self.models.managers)} model(s) of {self.config.model_config_file}"

    async def reload_config(self, config) -> None:
        """HandleReloadConfigRequest: serve the models of ``config`` (a ModelServerConfig) from now on."""
        await self.models.apply(entries_from_proto(config))

    async def _poll_config_file(self) -> None:
        """Re-read the model config file every ``config_poll_seconds``; apply it when its text changed. A file
        that cannot be read or used is logged once and changes nothing: the models served go on, and so does
        the poll."""
        path = self.config.model_config_file
        while True:
            await asyncio.sleep(self.config.config_poll_seconds)
            try:
                await self._apply_config_file(path)
            except Exception:  # noqa: BLE001 - a bad poll must not stop future polls
                logger.exception("applying model config file %s failed", path)

    async def _apply_config_file(self, path: Path) -> None:
        text = self._read_config_file(path)
        if text is None or text == self._config_text:
            return
        self._config_text = text
        try:
            await self.models.apply(entries_from_proto(parse_config_text(text, str(path))))
        except (InvalidConfig, FailedPrecondition) as error:
            logger.error("model config file %s changed but is not applied (the models served are "
                         "unchanged): %s", path, error)

    def _read_config_file(self, path: Path) -> str | None:
        """The file's text, or None when it cannot be read: logged once (until the problem changes), and
        once more when it can be read again."""
        try:
            text = read_config_text(path)
        except InvalidConfig as error:
            if str(error) != self._config_unreadable:
                logger.warning("%s (the models served are unchanged; read again every %g s)", error,
                               self.config.config_poll_seconds)
            self._config_unreadable = str(error)
            return None
        if self._config_unreadable is not None:
            logger.info("model config file %s can be read again", path)
            self._config_unreadable = None
        return text

    async def _return_memory_when_idle(self, every: float = 1.0) -> None:
        """Once no request runs, give the heap pages that requests' buffers held back to the system."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every)
            if self.dataplane.finished_since_trim and not self.dataplane.active:
                self.dataplane.finished_since_trim = False
                await loop.run_in_executor(self.loading, return_freed_memory)

    def _observe(self, model_version: ModelVersion, batch_size: int, queued: list[float], ran: float) -> None:
        name = model_version.model
        self.metrics.batch_size.labels(name).observe(batch_size)
        self.metrics.runtime_latency.labels(name).observe(ran * 1e6)
        for seconds in queued:
            self.metrics.queuing_latency.labels(name).observe(seconds * 1e6)

    def _on_versions_changed(self) -> None:
        """Each model's health and loaded-versions gauge, the server's health, and the model names that the
        metrics' labels record (a removed model's series go)."""
        managers = self.models.managers
        self.metrics.set_models(managers)
        for name, manager in managers.items():
            loaded = sum(1 for v in manager.versions.values() if v.state == VersionState.AVAILABLE)
            self.metrics.versions_loaded.labels(name).set(loaded)
            self._in_background(self.health.set(name, SERVING if manager.is_available() else NOT_SERVING))
        for name in self._health_names - set(managers):
            self._in_background(self.health.set(name, NOT_SERVING))
        self._health_names = set(managers)
        self._in_background(self.health.set(OVERALL_HEALTH, SERVING if self.models.is_available() else NOT_SERVING))

    async def close_connections(self) -> None:
        """Within ``close_seconds``: gRPC calls still open get the time as grace, REST replies being written
        finish; then both servers stop and what is left is cut."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.close_seconds
        closing = []
        if self.grpc_server is not None:
            closing.append(self.grpc_server.stop(grace=max(0.0, self.config.close_seconds - RUNNER_SHUTDOWN_SECONDS)))
        if self.rest_app_runner is not None:
            closing.append(close_rest(self.rest_app_runner, self.rest.replies, deadline))
        await asyncio.gather(*closing)

    async def drain_and_stop(self) -> bool:
        """Health NOT_SERVING, refuse new requests, finish queued and in-flight ones, stop. True if none cut."""
        logger.info("draining: health NOT_SERVING, new requests refused, up to %.0f s for in-flight ones",
                    self.config.drain_seconds)
        await self.health.enter_graceful_shutdown()
        finished = await self.dataplane.drain(self.config.drain_seconds)
        if not finished:
            logger.warning("drain period over with requests still running; stopping anyway")
        await self._stop_background()
        await self.models.stop()
        await self._stop_background()  # health updates of the versions the stop unloaded
        await self.close_connections()
        if self.rest is not None:
            self.rest.close()
        await self.scheduler.stop()
        self.dataplane.close()
        self.compute.shutdown(wait=False, cancel_futures=True)
        self.loading.shutdown(wait=False, cancel_futures=True)
        self.stopped.set()
        logger.info("stopped")
        return finished


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM, SIGINT or SIGHUP, then drain and return.

    The signals are handled before anything starts, so a server stopped while it starts (its codec process
    half-spawned, say) still stops its children: none is left behind. A port already taken is reported
    (``PortInUse``) before anything starts.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, _stop_on, signum, stop)
    for signum in early_signals.received[:1]:  # one that came before the loop's handlers
        _stop_on(signum, stop)
    check_ports_free(config.host, {"--port": config.port, "--rest-port": config.rest_port})
    server = InpaintServer(config)
    try:
        if await started_unless_stopped(server, stop):
            await stop.wait()
    finally:
        await server.drain_and_stop()


def _stop_on(signum: int, stop: asyncio.Event) -> None:
    if not stop.is_set():
        logger.info("%s: stopping", signal.Signals(signum).name)
    stop.set()


async def started_unless_stopped(server: InpaintServer, stop: asyncio.Event) -> bool:
    """Start ``server``; False if ``stop`` is set first (the start is cancelled, what it started is kept)."""
    starting = asyncio.ensure_future(server.start())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if starting.done():
        starting.result()  # a failed start raises here
        return True
    logger.info("stopped while starting")
    starting.cancel()
    await asyncio.gather(starting, return_exceptions=True)
    return False
