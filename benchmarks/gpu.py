"""The GPU path, measured in one prepared run of at most 8 minutes: ONNX Runtime CUDA behind ``inpaint-serve``,
in process, on 12 MP photos, TensorFlow on the same SavedModel, and a short training burst.

On a lent GPU machine (the ``device`` tool), from the repository root::

    run(command="bash benchmarks/gpu.sh", timeout_s=540)

``gpu.sh`` finds a Python that imports ``inpaint`` (the checkout's ``.venv``, else ``python3`` with the
checkout linked in), installs wheels carried in ``.whl/`` if there are any, and writes the report to ``$OUT``
(where the tool returns files from) or ``reports/gpu``. Anywhere else::

    python benchmarks/gpu.py [--out reports/gpu] [--model models/pretrained/inpaint] [--dry-run]
                             [--sections server_device,load_sweep,...] [--budget 480]

Sections, each in a child process with its own time budget (the sum stays under ``--budget``; a section that
runs over is killed and keeps the rows it had written):

* ``server_device``: ``inpaint-serve --device cuda`` on free loopback ports, its log read for the provider
  ONNX Runtime really started ("ONNX Runtime runs on CUDAExecutionProvider"), one request, and whether
  its process holds GPU memory. Anything but CUDA fails the section loudly.
* ``load_sweep``: 64 and 512 px, 1/8/32/128 single-image clients (``client/loadtest.py`` through
  ``benchmarks/serving.py``'s helpers), batching off and on: images/s, p50/p99, the server's mean batch,
  the GPU's peak memory during the cell.
* ``in_process_ort``: ``OnnxModel`` on CUDA at batch 1/8/32 at the same sizes, and where ORT placed each
  node (a profiled run: nodes left on the CPU are CUDA fallbacks).
* ``large_photos``: a 12 MP photo (``benchmarks/large_photos.py``'s mosaic) with a 12 px scratch and with
  thick strokes (18-22 % holes) through ``inpaint-client predict``: windows cut by the client, the whole
  photo tiled by the server, the whole photo in one model run; wall time of the command and of the client
  library's round trip.
* ``tensorflow``: the SavedModel's ``serving_default`` in process on the GPU (what TF Serving runs) at the
  same sizes and batches.
* ``training``: ``inpaint-train --strategy mirrored --precision bfloat16`` for a few steps (step time of
  the last epoch) and ``benchmarks/input_pipeline.py``'s rows: whether the tf.data stream keeps up.

Where CUDA is not there (no CUDA provider in onnxruntime, no GPU, ``--dry-run``), each CUDA part is recorded
as skipped with what is missing, and the sections run on the CPU at tiny sizes so the plumbing is exercised
(about 70 CPU-seconds, in two lanes: TensorFlow's sections beside the others). Writes ``gpu.json`` and
``gpu.md`` to ``--out`` and prints the Markdown; exits 1 if a section failed or ran out of time.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# benchmarks/serving.py and large_photos.py, tests/helpers.py; appended: nothing of the importer's is shadowed
sys.path += [str(path) for path in (ROOT / "benchmarks", ROOT / "tests") if str(path) not in sys.path]

logger = logging.getLogger("benchmarks.gpu")

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
BUDGET_S = 480  # the 8 minutes
GRACE_S = 15    # past its budget a section is killed
PROVIDER_LOG = re.compile(r"ONNX Runtime runs on (\w+) \(--device (\w+)\)")
EPOCH_LINE = re.compile(r"^\s*(\d+)/(\d+) - (\d+)s - ([\d.]+)(s|ms|us)/step", re.M)
STRATEGY_LINE = re.compile(r"Using MirroredStrategy with devices \((.*)\)")


@dataclass(frozen=True)
class Plan:
    """Sizes and durations: the GPU run, or the CPU dry run's tiny ones."""

    sizes: tuple[int, ...]
    clients: tuple[int, ...]
    batches: tuple[int, ...]
    cell_seconds: float
    photo_megapixels: float
    holes: tuple[str, ...]
    repeats: int
    tile_above_pixels: int | None  # windows above this many pixels (None: the client's and server's defaults)
    train: tuple[str, ...]         # inpaint-train options beyond --strategy and --precision
    pipeline: tuple[str, ...] | None  # benchmarks/input_pipeline.py options; None: not run


GPU_PLAN = Plan(sizes=(64, 512), clients=(1, 8, 32, 128), batches=(1, 8, 32), cell_seconds=2.0,
                photo_megapixels=12, holes=("scratch", "strokes20"), repeats=2, tile_above_pixels=None,
                train=("--epochs", "3", "--steps-per-epoch", "20", "--batch-size", "16", "--image-size", "96",
                       "--validation-size", "16", "--loader", "stream", "--max-minutes", "1.5"),
                pipeline=("--batch-size", "16", "--image-size", "96", "--steps", "20", "--warmup", "4",
                          "--skip-memory"))
CPU_PLAN = Plan(sizes=(64,), clients=(1, 8), batches=(1, 8), cell_seconds=1.0, photo_megapixels=0.02,
                holes=("scratch", "strokes20"), repeats=1, tile_above_pixels=4096,
                train=("--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "2", "--image-size", "32",
                       "--depth", "2", "--base-filters", "4", "--init-weights", "none", "--validation-size", "2",
                       "--data", "samples", "--max-minutes", "0"),
                pipeline=None)


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    gpu_budget_s: float
    cpu_budget_s: float
    tensorflow: bool = False  # needs TensorFlow (in the CPU dry run it runs beside the others)


# Budgets: on a GPU they add up to 435 s of the 480; the CPU dry run's cells are tiny and end long before
# theirs, which only stop a run that hangs (on a shared 2-core machine a section can take 3 times longer).
SECTIONS = (
    Section("server_device", "inpaint-serve --device cuda: the provider it really runs on", 30, 60),
    Section("load_sweep", "Load sweeps over loopback gRPC, batching off and on", 110, 90),
    Section("in_process_ort", "ONNX Runtime in process", 45, 60),
    Section("large_photos", "Large photos through inpaint-client predict", 90, 120),
    Section("tensorflow", "TensorFlow on the same SavedModel, in process (what TF Serving runs)", 60, 120, True),
    Section("training", "Training burst: inpaint-train --strategy mirrored --precision bfloat16", 100, 150, True),
)
SECTION_NAMES = tuple(section.name for section in SECTIONS)


# -- GPU memory ---------------------------------------------------------------------------------------------

@functools.cache
def _nvml():
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        return pynvml
    except Exception:  # noqa: BLE001 - the library is there, the driver is not
        return None


def gpu_info() -> tuple[dict | None, str]:
    """GPU 0's name, driver and memory (MiB), and the tool that read them; None and why when nothing can."""
    nvml = _nvml()
    if nvml is not None:
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(0)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            name = nvml.nvmlDeviceGetName(handle)
            return {"name": name.decode() if isinstance(name, bytes) else name,
                    "driver": _text(nvml.nvmlSystemGetDriverVersion()), "memory_total_mib": memory.total // 2**20,
                    "memory_used_mib": memory.used // 2**20, "count": nvml.nvmlDeviceGetCount()}, "pynvml"
        except Exception as error:  # noqa: BLE001
            return None, f"pynvml sees no GPU ({error})"
    if shutil.which("nvidia-smi") is None:
        return None, "no GPU memory reading: nvidia-smi not found and pynvml not installed"
    try:
        lines = _smi("--query-gpu=name,driver_version,memory.total,memory.used")
    except (OSError, subprocess.SubprocessError) as error:
        return None, f"nvidia-smi failed: {error}"
    if not lines:
        return None, "nvidia-smi lists no GPU"
    name, driver, total, used = lines[0]
    return {"name": name, "driver": driver, "memory_total_mib": int(total), "memory_used_mib": int(used),
            "count": len(lines)}, "nvidia-smi"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _smi(query: str) -> list[list[str]]:
    output = subprocess.run(["nvidia-smi", query, "--format=csv,noheader,nounits"], capture_output=True,
                            text=True, timeout=10, check=True).stdout
    return [[field.strip() for field in line.split(",")] for line in output.splitlines() if line.strip()]


def gpu_used_mib() -> int | None:
    """Memory in use on GPU 0, all processes, MiB; None where it cannot be read."""
    nvml = _nvml()
    if nvml is not None:
        try:
            return nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(0)).used // 2**20
        except Exception:  # noqa: BLE001
            return None
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        return int(_smi("--query-gpu=memory.used")[0][0])
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None


def gpu_pids() -> set[int] | None:
    """Processes holding GPU memory (as the driver sees their ids), or None where it cannot be read."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        return {int(row[0]) for row in _smi("--query-compute-apps=pid") if row and row[0].isdigit()}
    except (OSError, subprocess.SubprocessError):
        return None


class GpuMemoryPeak:
    """The peak of GPU 0's used memory while the block runs, sampled every ``interval`` seconds."""

    def __init__(self, enabled: bool, interval: float = 0.2):
        self.enabled, self.interval = enabled, interval
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            used = gpu_used_mib()
            if used is not None:
                self.peak = used if self.peak is None else max(self.peak, used)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "GpuMemoryPeak":
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
            used = gpu_used_mib()
            if used is not None:
                self.peak = used if self.peak is None else max(self.peak, used)


# -- what is there --------------------------------------------------------------------------------------------

def probe(model_file: Path) -> dict:
    """Versions, providers and the GPU; ``cuda_reason`` is None when an ORT session really starts on CUDA."""
    found = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "cpu": _cpu_name(),
             "tensorflow": _version_of("tensorflow")}
    found["gpu"], found["gpu_memory_tool"] = gpu_info()
    try:
        import onnxruntime as ort
    except ImportError:
        found["onnxruntime"] = None
        found["cuda_reason"] = "onnxruntime is not installed (pip install onnxruntime-gpu)"
        return found
    found["onnxruntime"], found["providers"] = ort.__version__, ort.get_available_providers()
    if CUDA not in found["providers"]:
        found["cuda_reason"] = (f"onnxruntime {ort.__version__} has no {CUDA} (it has {', '.join(found['providers'])}):"
                                " install onnxruntime-gpu")
        return found
    from inpaint.core.onnx_model import OnnxModel

    def start() -> str:
        try:
            return OnnxModel(model_file, providers=[CUDA, CPU]).provider
        except Exception as error:  # noqa: BLE001 - any failure to start is the reason
            return f"an error ({error})"

    started, logged = _with_stderr_captured(start)
    found["cuda_session_provider"] = started
    if started == CUDA:
        found["cuda_reason"] = None
        return found
    why = [match.group(1).strip() for pattern in (r"Failed to load library \S+ with error: ([^\n]+)",
                                                  r"(Require [^\n]*?)\. Please")
           if (match := re.search(pattern, logged))]
    gpu = f"GPU {found['gpu']['name']}" if found["gpu"] else f"no GPU ({found['gpu_memory_tool']})"
    found["cuda_reason"] = (f"onnxruntime {ort.__version__} lists {CUDA}, but a session started on {started}: "
                            f"{'; '.join(why + [gpu])}")
    return found


def probe_in_child(model_base: Path) -> dict:
    """``probe`` in a child process: a CUDA session started here would hold GPU memory for the whole run."""
    run = subprocess.run([sys.executable, __file__, "--probe", "--model", str(model_base)],
                         capture_output=True, text=True, check=False, cwd=ROOT, timeout=120)
    if run.returncode != 0:
        raise SystemExit(f"the probe failed ({run.returncode}): {run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _with_stderr_captured(function):
    """``function()`` and what was written to file descriptor 2 meanwhile: ONNX Runtime's C++ logs say there
    why a provider did not start (a missing libcublasLt.so.13, say)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            result = function()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = re.sub(r"\x1b\[[0-9;]*m", "", capture.read().decode(errors="replace"))
    return result, text


def _version_of(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    for distribution in (module, f"{module}-gpu", f"{module}-cpu"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return "installed"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# -- the sections, each in a child process ------------------------------------------------------------------

class Events:
    """What a section found, one JSON line each, flushed at once: a killed section keeps its rows."""

    def __init__(self, path: Path):
        self.handle = path.open("a")

    def _write(self, kind: str, value) -> None:
        self.handle.write(json.dumps({kind: value}) + "\n")
        self.handle.flush()

    def row(self, row: dict) -> None:
        self._write("row", row)
        logger.info("%s", row)

    def skip(self, part: str, reason: str) -> None:
        self._write("skipped", {"part": part, "reason": reason})
        logger.info("skipped %s: %s", part, reason)

    def info(self, **values) -> None:
        self._write("info", values)


class Worker:
    """One section's context: its spec, plan, deadline and events."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.gpu = spec["gpu"]
        self.plan = Plan(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["plan"].items()})
        self.device = "cuda" if self.gpu else "cpu"
        self.model_base, self.model_file = Path(spec["model_base"]), Path(spec["model_file"])
        self.work = Path(spec["work"])
        self.events = Events(Path(spec["events"]))
        self.deadline = spec["deadline"]
        self.cuda_reason = spec["cuda_reason"]

    def left(self) -> float:
        return self.deadline - time.time()

    def has_time(self, part: str, needs: float) -> bool:
        if self.left() >= needs:
            return True
        self.events.skip(part, f"section budget spent ({self.left():.0f} s left, needs about {needs:.0f} s)")
        return False

    def skip_cuda(self, part: str, reason: str | None = None) -> None:
        self.events.skip(part, reason or self.cuda_reason)

    def memory(self) -> GpuMemoryPeak:
        return GpuMemoryPeak(self.gpu)


def _server_flags(worker: Worker) -> list[str]:
    """``large_photos.ServeProcess``'s flags are followed by these, which win: gRPC only (no REST codec process
    to start), ONNX Runtime (what ``--runtime auto`` runs with CUDA; on a CPU it would run OpenVINO), and the
    log line that names the provider ONNX Runtime really started."""
    return ["--device", worker.device, "--runtime", "onnxruntime", "--log-level", "INFO", "--rest-port", "-1"]


def _wait_ready(server, timeout: float) -> None:
    """SERVING, or a loud failure as soon as the log says the model failed to load (say, CUDA did not start)."""
    from helpers import health_status

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"inpaint-serve exited with {server.process.returncode}: {_tail(server.log)}")
        if "failed to load" in server.log.read_text(errors="replace"):
            raise RuntimeError(f"inpaint-serve could not load the model: {_tail(server.log)}")
        if health_status(server.target) == 1:
            return
        time.sleep(0.1)
    raise RuntimeError(f"inpaint-serve not SERVING after {timeout:.0f} s: {_tail(server.log)}")


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _provider_in_log(log: Path) -> str | None:
    match = PROVIDER_LOG.search(log.read_text(errors="replace"))
    return match.group(1) if match else None


def section_server_device(worker: Worker) -> None:
    import numpy as np
    from large_photos import ServeProcess, round_trip

    from inpaint.client import InpaintClient

    if not worker.gpu:
        worker.skip_cuda("inpaint-serve --device cuda")
    log = worker.work / "server_device.log"
    server = ServeProcess(worker.model_base, _server_flags(worker), log)
    try:
        began = time.perf_counter()
        _wait_ready(server, max(5.0, worker.left() - 5))
        ready_s = time.perf_counter() - began
        provider = _provider_in_log(log)
        holders = gpu_pids() if worker.gpu else None
        side = 64
        image = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
        mask = np.zeros((side, side), np.uint8)
        mask[16:48, 16:48] = 1
        with InpaintClient(server.target, timeout=60) as client:
            first = round_trip(client, image, mask, 60)
            second = round_trip(client, image, mask, 60)
    finally:
        server.stop()
    expected = CUDA if worker.gpu else CPU
    worker.events.row({"device_flag": worker.device, "provider": provider, "expected": expected,
                       "serving_after_s": ready_s, "first_request_ms": first * 1000, "second_request_ms": second * 1000,
                       "server_pid_holds_gpu_memory": None if holders is None else server.process.pid in holders,
                       "device": worker.device})
    worker.events.info(log_line=next((line for line in log.read_text().splitlines() if PROVIDER_LOG.search(line)),
                                     None))
    if provider != expected:
        raise SystemExit(f"inpaint-serve --device {worker.device} runs on {provider}, not {expected}: "
                         f"{_tail(log)}")


def section_load_sweep(worker: Worker) -> None:
    import serving as bench  # benchmarks/serving.py

    plan = worker.plan
    if not worker.gpu:
        worker.skip_cuda(f"CUDA server sweeps: {'/'.join(map(str, GPU_PLAN.sizes))} px, "
                         f"{'/'.join(map(str, GPU_PLAN.clients))} clients, batching off and on")
    os.environ["INPAINT_SERVE_DEVICE"] = worker.device  # the server's --device (benchmarks/serving.Server's flags)
    worker.events.info(server_device=worker.device, note="--device cuda refuses to serve on anything but CUDA")
    for mode, batching in (("server", False), ("server_batching", True)):
        if not worker.has_time(f"{mode} (server start)", 10):
            continue
        server = bench.Server(worker.model_base, batching)
        try:
            for size in plan.sizes:
                for clients in plan.clients:
                    part = f"{mode} {size} px, {clients} clients"
                    if not worker.has_time(part, plan.cell_seconds * 1.5 + 2):
                        continue
                    with worker.memory() as memory:
                        cell = bench.over_grpc(server, 1, size, clients, plan.cell_seconds)
                    worker.events.row({"mode": mode, "size": size, "batch": 1, "clients": clients, **cell,
                                       "gpu_mem_peak_mib": memory.peak, "device": worker.device})
        finally:
            server.stop()


def node_placement(model_file: Path, providers: list[str], work: Path) -> dict:
    """Nodes per execution provider in one profiled run at 64 px (nodes on the CPU under CUDA: fallbacks)."""
    import numpy as np
    import onnxruntime as ort

    from inpaint.core.contract import IMAGE, MASK, OUTPUT

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(work / "ort_profile")
    options.log_severity_level = 4
    session = ort.InferenceSession(str(model_file), options, providers=providers)
    images = np.zeros((1, 64, 64, 3), np.uint8)
    session.run([OUTPUT], {IMAGE: images, MASK: np.ones((1, 64, 64, 1), np.uint8)})
    events = json.loads(Path(session.end_profiling()).read_text())
    placed: dict[str, dict[str, str]] = {}
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and "provider" in args:
            node = event["name"].removesuffix("_kernel_time")
            placed.setdefault(args["provider"], {})[node] = args.get("op_name", "")
    return {"nodes": {provider: len(nodes) for provider, nodes in placed.items()},
            "cpu_ops": sorted(set(placed.get(CPU, {}).values())) if CUDA in placed else [],
            "memcpy_nodes": sum(1 for nodes in placed.values() for op in nodes.values() if op.startswith("Memcpy"))}


def section_in_process_ort(worker: Worker) -> None:
    import serving as bench

    from inpaint.core.onnx_model import OnnxModel

    plan = worker.plan
    if not worker.gpu:
        worker.skip_cuda(f"ONNX Runtime CUDA in process: batch {'/'.join(map(str, GPU_PLAN.batches))} at "
                         f"{'/'.join(map(str, GPU_PLAN.sizes))} px")
    providers = [CUDA, CPU] if worker.gpu else [CPU]
    model = OnnxModel(worker.model_file, providers=providers)
    if model.provider != providers[0]:
        raise SystemExit(f"ONNX Runtime started {model.provider}, not {providers[0]}")
    worker.events.info(provider=model.provider, placement=node_placement(worker.model_file, providers, worker.work))
    for size in plan.sizes:
        for batch in plan.batches:
            if not worker.has_time(f"in process {size} px batch {batch}", plan.cell_seconds + 2):
                continue
            cell = bench.InProcessCell(size, batch)
            with worker.memory() as memory:
                cell.measure(model, plan.cell_seconds)
            result = cell.result()
            worker.events.row({**result, "mode": "in_process", "clients": 1, "gpu_mem_peak_mib": memory.peak,
                               "device": worker.device})


def _client_command() -> list[str]:
    script = Path(sys.executable).parent / "inpaint-client"
    return [str(script)] if script.exists() else [sys.executable, "-m", "inpaint.client.cli"]


def section_large_photos(worker: Worker) -> None:
    import cv2
    import large_photos as lp
    import numpy as np

    from inpaint.client import InpaintClient
    from inpaint.core.images import write_image
    from inpaint.core.tiling import TilingOptions

    plan = worker.plan
    if not worker.gpu:
        worker.skip_cuda(f"{GPU_PLAN.photo_megapixels:g} MP photos on the CUDA server")
    width, height = lp.photo_size(plan.photo_megapixels)
    photo = lp.synthesize_photo(width, height, lp.photo_files(ROOT / "data" / "photos"))
    image_file = worker.work / "photo.jpg"
    write_image(image_file, photo)
    masks = {}
    for kind in plan.holes:
        mask = lp.hole_mask(kind, width, height)
        masks[kind] = (worker.work / f"photo-{kind}.png", mask, float(mask.mean()))
        write_image(masks[kind][0], mask * np.uint8(255))
    began = time.perf_counter()
    subprocess.run([*_client_command(), "--help"], capture_output=True, check=True)
    worker.events.info(photo=f"{width}x{height}", cli_startup_s=time.perf_counter() - began,
                       cli=" ".join(Path(part).name for part in _client_command()))
    windows = [] if plan.tile_above_pixels is None else ["--tile-above-pixels", str(plan.tile_above_pixels)]
    whole_run = ["--tiling", "off", "--max-pixels", str(width * height),
                 "--tile-above-pixels", str(max(width * height, 4096))]
    # (mode, server flags, inpaint-client predict flags, the client library's tiling)
    servers = (
        (windows, (("windows", ["--tiling", "auto", *windows], TilingOptions(
                        "auto", plan.tile_above_pixels or TilingOptions.tile_above_pixels)),
                   ("whole_server_tiles", ["--tiling", "off"], TilingOptions("off")))),
        (whole_run, (("whole_one_run", ["--tiling", "off"], TilingOptions("off")),)),
    )
    for extra, modes in servers:
        if not worker.has_time(f"{', '.join(mode for mode, _, _ in modes)} (server start)", 15):
            continue
        log = worker.work / f"large-{modes[0][0]}.log"
        server = lp.ServeProcess(worker.model_base, [*_server_flags(worker), *extra], log)
        try:
            _wait_ready(server, max(5.0, worker.left() - 5))
            provider = _provider_in_log(log)
            warm = set()
            for kind, (mask_file, mask, ratio) in masks.items():
                for mode, flags, tiling in modes:
                    if not worker.has_time(f"{mode}, {kind}", 8):
                        continue
                    cli, library = [], []
                    output = worker.work / f"out-{mode}-{kind}.png"
                    command = [*_client_command(), "--target", server.target, "--timeout", "300", "predict",
                               str(image_file), str(mask_file), "-o", str(output), *flags]
                    with InpaintClient(server.target, timeout=300, tiling=tiling) as client:
                        if worker.gpu and mode not in warm:  # a shape's first run picks its kernels (cuDNN)
                            lp.round_trip(client, photo, mask, 300)
                            warm.add(mode)
                        with worker.memory() as memory:
                            for _ in range(plan.repeats):
                                began = time.perf_counter()
                                run = subprocess.run(command, capture_output=True, text=True, check=False)
                                cli.append(time.perf_counter() - began)
                                if run.returncode != 0:
                                    raise SystemExit(f"{' '.join(command)} exited with {run.returncode}: "
                                                     f"{run.stderr[-1500:]}")
                                library.append(lp.round_trip(client, photo, mask, 300))
                    written = cv2.imread(str(output))
                    if written is None or written.shape[:2] != (height, width):
                        raise SystemExit(f"inpaint-client predict wrote no {width}x{height} image to {output}")
                    worker.events.row({"mode": mode, "holes": kind, "hole_ratio": ratio,
                                       "megapixels": width * height / 1e6, "size": f"{width}x{height}",
                                       "cli_s": statistics.median(cli), "cli_s_all": cli,
                                       "library_s": statistics.median(library), "library_s_all": library,
                                       "gpu_mem_peak_mib": memory.peak, "provider": provider,
                                       "device": worker.device})
        finally:
            server.stop()


def section_tensorflow(worker: Worker) -> None:
    if importlib.util.find_spec("tensorflow") is None:
        worker.events.skip("TensorFlow on the SavedModel", "tensorflow is not installed (pip install '.[train]')")
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import serving as bench
    import tensorflow as tf

    from inpaint.core.contract import IMAGE, MASK, OUTPUT
    from inpaint.core.repository import version_dir
    from inpaint.trainer.savedmodel import load_serving_signature

    gpus = tf.config.list_physical_devices("GPU")
    on_gpu = worker.gpu and bool(gpus)
    if not on_gpu:
        tf.config.set_visible_devices([], "GPU")
        reason = worker.cuda_reason if gpus else (
            f"TensorFlow {tf.__version__} sees no GPU (built with CUDA: {tf.test.is_built_with_cuda()})")
        worker.skip_cuda(f"TensorFlow on the GPU: batch {'/'.join(map(str, GPU_PLAN.batches))} at "
                         f"{'/'.join(map(str, GPU_PLAN.sizes))} px", reason)
    else:
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
    plan = worker.plan if on_gpu else CPU_PLAN
    device = "cuda" if on_gpu else "cpu"
    serve = load_serving_signature(version_dir(worker.model_base))
    worker.events.info(tensorflow=tf.__version__, gpus=[gpu.name for gpu in gpus], device=device)
    for size in plan.sizes:
        for batch in plan.batches:
            if not worker.has_time(f"TensorFlow {size} px batch {batch}", plan.cell_seconds + 3):
                continue
            images, masks = bench.inputs(batch, size)
            feeds = {IMAGE: tf.constant(images), MASK: tf.constant(masks)}
            serve(**feeds)[OUTPUT].numpy()  # warm up: the first call of a shape builds its kernels
            if on_gpu:
                tf.config.experimental.reset_memory_stats("GPU:0")
            latencies, start = [], time.perf_counter()
            while time.perf_counter() - start < plan.cell_seconds:
                began = time.perf_counter()
                serve(**feeds)[OUTPUT].numpy()  # back on the host, as TF Serving answers
                latencies.append(time.perf_counter() - began)
            seconds = time.perf_counter() - start
            peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] // 2**20 if on_gpu else None
            worker.events.row({"mode": "tensorflow", "size": size, "batch": batch, "clients": 1,
                               **bench.summarize(latencies, batch * len(latencies), seconds),
                               "gpu_mem_peak_mib": peak, "device": device})


def parse_training_log(text: str) -> dict:
    """Epoch lines of ``inpaint-train`` (Keras' verbose=2) -> milliseconds per step, and its strategy's devices."""
    scale = {"s": 1000.0, "ms": 1.0, "us": 0.001}
    steps = [float(value) * scale[unit] for *_, value, unit in EPOCH_LINE.findall(text)]
    devices = STRATEGY_LINE.search(text)
    return {"epochs_done": len(steps), "step_ms_by_epoch": steps,
            "devices": [d.strip(" '") for d in devices.group(1).split(",") if d.strip(" '")] if devices else None}


def parse_pipeline_table(text: str) -> dict[str, float]:
    """``benchmarks/input_pipeline.py``'s table -> {row name: examples/s}."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^\| (.+?) \| ([\d,.]+) \|$", line.strip())
        if match:
            rows[match.group(1)] = float(match.group(2).replace(",", ""))
    return rows


def _run_within(command: list[str], seconds: float, env: dict) -> subprocess.CompletedProcess | None:
    """The command's result, or None once it has run ``seconds`` (it is killed)."""
    try:
        return subprocess.run(command, capture_output=True, text=True, env=env, check=False, cwd=ROOT,
                              timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def section_training(worker: Worker) -> None:
    if importlib.util.find_spec("tensorflow") is None:
        worker.events.skip("inpaint-train burst", "tensorflow is not installed (pip install '.[train]')")
        return
    plan = worker.plan
    env = {**os.environ, "TF_FORCE_GPU_ALLOW_GROWTH": "true", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if not worker.gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    train = list(plan.train)
    if "--data" not in train:
        train += ["--data", "photos" if (ROOT / "data" / "photos").is_dir() else "samples"]
    command = [sys.executable, "-m", "inpaint.trainer.train", "--strategy", "mirrored", "--precision", "bfloat16",
               "--model-base-path", str(worker.work / "trained"), *train]
    reserve = 45 if plan.pipeline is not None else 0
    with worker.memory() as memory:
        began = time.perf_counter()
        run = _run_within(command, max(10.0, worker.left() - reserve), env)
        seconds = time.perf_counter() - began
    if run is None:
        worker.events.skip("inpaint-train burst", f"section budget spent: inpaint-train ran past {seconds:.0f} s")
        return
    (worker.work / "train.log").write_text(run.stdout + run.stderr)
    if run.returncode != 0:
        raise SystemExit(f"inpaint-train exited with {run.returncode}: {(run.stdout + run.stderr)[-1500:]}")
    parsed = parse_training_log(run.stdout + run.stderr)
    records = sorted((worker.work / "trained").glob("*/assets.extra/run.json"))
    record = json.loads(records[-1].read_text()) if records else {}
    distribution = record.get("distribution", {})
    global_batch = distribution.get("global_batch")
    steady_ms = parsed["step_ms_by_epoch"][-1] if parsed["step_ms_by_epoch"] else None
    on_gpu = bool(parsed["devices"]) and any("GPU" in device for device in parsed["devices"])
    worker.events.row({"what": "inpaint-train", "devices": parsed["devices"], "precision": record.get("precision"),
                       "global_batch": global_batch, "epochs_done": parsed["epochs_done"],
                       "step_ms_first_epoch": parsed["step_ms_by_epoch"][0] if parsed["step_ms_by_epoch"] else None,
                       "step_ms": steady_ms,
                       "examples_per_s": global_batch * 1000 / steady_ms if global_batch and steady_ms else None,
                       "wall_s": seconds, "gpu_mem_peak_mib": memory.peak, "device": "cuda" if on_gpu else "cpu"})
    if worker.gpu and not on_gpu:
        raise SystemExit(f"inpaint-train ran on {parsed['devices']}, not a GPU: TensorFlow sees none")
    if not on_gpu:
        worker.skip_cuda("inpaint-train on the GPU (mirrored, bf16): step time",
                         f"{worker.cuda_reason}; MirroredStrategy ran over {', '.join(parsed['devices'] or ['?'])}")
    if plan.pipeline is None:
        worker.events.skip("input pipeline against the step (benchmarks/input_pipeline.py)",
                           "CPU mode: the stream and the training step share the same cores, so whether one keeps "
                           "up with the other is measured beside a GPU only")
        return
    if not worker.has_time("input pipeline against the step", 20):
        return
    data = train[train.index("--data") + 1]
    run = _run_within([sys.executable, str(ROOT / "benchmarks" / "input_pipeline.py"), "--data", data,
                       *plan.pipeline], max(10.0, worker.left()), env)
    if run is None:
        worker.events.skip("input pipeline against the step", "section budget spent: input_pipeline.py ran past it")
        return
    if run.returncode != 0:
        raise SystemExit(f"input_pipeline.py exited with {run.returncode}: {(run.stdout + run.stderr)[-1500:]}")
    rows = parse_pipeline_table(run.stdout)
    stream = next((value for name, value in rows.items() if name.startswith("input pipeline alone")), None)
    step = next((value for name, value in rows.items() if name.startswith("train step alone")), None)
    fed = next((value for name, value in rows.items() if name.startswith("training fed by the stream")), None)
    burst = global_batch * 1000 / steady_ms if global_batch and steady_ms else None
    worker.events.row({"what": "input pipeline", "stream_examples_per_s": stream, "step_alone_examples_per_s": step,
                       "fed_by_stream_examples_per_s": fed, "burst_examples_per_s": burst,
                       "keeps_up": None if stream is None or burst is None else stream >= 1.2 * burst,
                       "device": "cuda"})


SECTION_RUNNERS = {"server_device": section_server_device, "load_sweep": section_load_sweep,
                   "in_process_ort": section_in_process_ort, "large_photos": section_large_photos,
                   "tensorflow": section_tensorflow, "training": section_training}


def worker_main(name: str, spec: dict) -> int:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name}: %(message)s", stream=sys.stderr)
    SECTION_RUNNERS[name](Worker(spec))
    return 0


# -- the run ---------------------------------------------------------------------------------------------------

class Child:
    """A section's child process, in a process group of its own so that a kill takes its servers too."""

    def __init__(self, section: Section, spec: dict, budget: float):
        self.section, self.spec, self.budget = section, spec, budget
        self.work = Path(spec["work"])
        self.stderr = (self.work / "stderr.log").open("w")
        self.started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, __file__, "--worker", section.name, "--spec",
                                         json.dumps(spec)], stdout=self.stderr, stderr=subprocess.STDOUT,
                                        start_new_session=True, cwd=ROOT)

    def wait(self) -> dict:
        timed_out = False
        try:
            self.process.wait(timeout=max(1.0, self.budget + GRACE_S - (time.perf_counter() - self.started)))
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill()
        except BaseException:  # interrupted: no server of ours outlives the run
            self.kill()
            raise
        seconds = time.perf_counter() - self.started
        self.stderr.close()
        return self.result(timed_out, seconds)

    def kill(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=5)
                if sig == signal.SIGTERM:
                    time.sleep(0.5)  # the group's servers get their own SIGTERM
            except subprocess.TimeoutExpired:
                continue

    def result(self, timed_out: bool, seconds: float) -> dict:
        rows, skipped, info = [], [], {}
        events = Path(self.spec["events"])
        for line in events.read_text().splitlines() if events.exists() else []:
            event = json.loads(line)
            rows += [event["row"]] if "row" in event else []
            skipped += [event["skipped"]] if "skipped" in event else []
            info.update(event.get("info", {}))
        section = {"name": self.section.name, "title": self.section.title, "budget_s": round(self.budget, 1),
                   "seconds": round(seconds, 1), "rows": rows, "skipped": skipped, "info": info}
        if timed_out:
            section["status"] = "timeout"
            section["error"] = f"killed after {seconds:.0f} s (budget {self.budget:.0f} s): " + self._logs()
        elif self.process.returncode != 0:
            section["status"] = "failed"
            section["error"] = self._logs()
        elif any(s["reason"].startswith("section budget spent") for s in skipped):
            section["status"] = "partial"
        else:
            section["status"] = "ok" if rows else "skipped"
        return section

    def _logs(self) -> str:
        """The last lines of the section's output and of its servers' logs."""
        tails = [_tail(self.work / "stderr.log", 2500)]
        tails += [f"[{log.name}] {_tail(log, 800)}" for log in sorted(self.work.glob("*.log"))
                  if log.name != "stderr.log"]
        return "\n".join(tail for tail in tails if tail.strip())


def run_sections(args: argparse.Namespace, found: dict, work: Path, started: float) -> list[dict]:
    gpu = found["cuda_reason"] is None
    plan = GPU_PLAN if gpu else CPU_PLAN
    model_file = _model_file(args.model)
    selected = [section for section in SECTIONS if section.name in args.sections]
    results: dict[str, dict] = {}

    def start(section: Section) -> Child | None:
        left = args.budget - (time.perf_counter() - started) - GRACE_S
        budget = min(section.gpu_budget_s if gpu else section.cpu_budget_s, left)
        if budget < 5:
            results[section.name] = {"name": section.name, "title": section.title, "status": "skipped",
                                     "budget_s": 0, "seconds": 0, "rows": [], "info": {},
                                     "skipped": [{"part": section.title, "reason": "the run's budget is spent"}]}
            return None
        folder = work / section.name
        folder.mkdir()
        spec = {"gpu": gpu, "plan": dataclasses.asdict(plan), "model_base": str(args.model),
                "model_file": str(model_file), "work": str(folder), "events": str(folder / "events.jsonl"),
                "deadline": time.time() + budget, "cuda_reason": found["cuda_reason"]}
        logger.info("%s: budget %.0f s", section.name, budget)
        return Child(section, spec, budget)

    def run(lane: list[Section]) -> None:
        for section in lane:
            child = start(section)
            if child is not None:
                results[section.name] = child.wait()
                logger.info("%s: %s in %.0f s", section.name, results[section.name]["status"],
                            results[section.name]["seconds"])

    # In the CPU dry run, TensorFlow's sections (mostly imports and tracing) run in a second lane beside the
    # others: the numbers mean nothing there, the plumbing is what is checked, in half the time. On a GPU, one
    # section at a time.
    tensorflow_lane = [section for section in selected if section.tensorflow and not gpu]
    background = threading.Thread(target=run, args=(tensorflow_lane,), daemon=True)
    background.start()
    run([section for section in selected if section not in tensorflow_lane])
    background.join()
    return [results[section.name] for section in selected if section.name in results]


def _model_file(model_base: Path) -> Path:
    from inpaint.core.repository import ONNX_FILENAME, version_dir

    return version_dir(model_base) / ONNX_FILENAME


# -- targets and the report -------------------------------------------------------------------------------------

def _rows(sections: list[dict], name: str) -> list[dict]:
    return next((section["rows"] for section in sections if section["name"] == name), [])


def targets(sections: list[dict]) -> list[dict]:
    """The issue's goals, from the rows that ran (on whatever device they ran)."""
    found = []
    sweep = _rows(sections, "load_sweep")
    in_process = _rows(sections, "in_process_ort")
    for size in sorted({row["size"] for row in sweep}):
        at_size = [row for row in sweep if row["size"] == size]
        clients = max(row["clients"] for row in at_size)
        batched = next((r for r in at_size if r["mode"] == "server_batching" and r["clients"] == clients), None)
        plain = next((r for r in at_size if r["mode"] == "server" and r["clients"] == clients), None)
        if size == 64 and batched and plain:
            found.append({"name": f"64 px, {clients} clients: batching over the unbatched server",
                          "value": batched["images_per_s"] / plain["images_per_s"], "goal": ">= 3",
                          "met": batched["images_per_s"] >= 3 * plain["images_per_s"], "device": batched["device"]})
        reference = max((r for r in in_process if r["size"] == size), key=lambda r: r["batch"], default=None)
        if batched and reference:
            found.append({"name": f"{size} px: batching server ({clients} clients, mean batch "
                                  f"{_fmt(batched.get('server_batch_size'), '.1f')}) over in-process ORT at batch "
                                  f"{reference['batch']}",
                          "value": batched["images_per_s"] / reference["images_per_s"], "goal": ">= 0.8",
                          "met": batched["images_per_s"] >= 0.8 * reference["images_per_s"],
                          "device": batched["device"]})
    for row in _rows(sections, "large_photos"):
        if row["holes"] == "scratch":
            for key, what in (("cli_s", "inpaint-client predict"), ("library_s", "client library round trip")):
                found.append({"name": f"{row['megapixels']:.2g} MP scratch, {row['mode']}: {what}, s",
                              "value": row[key], "goal": "< 1", "met": row[key] < 1, "device": row["device"]})
    return found


def _fmt(value, spec: str = ".1f") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return format(value, spec)
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


COLUMNS = {  # per section: (header, key, format)
    "server_device": (("--device", "device_flag", ""), ("provider", "provider", ""),
                      ("SERVING after s", "serving_after_s", ".1f"), ("1st request ms", "first_request_ms", ".1f"),
                      ("2nd request ms", "second_request_ms", ".1f"),
                      ("server holds GPU memory", "server_pid_holds_gpu_memory", "")),
    "load_sweep": (("mode", "mode", ""), ("px", "size", ""), ("clients", "clients", ""),
                   ("images/s", "images_per_s", ".1f"), ("p50 ms", "p50_ms", ".1f"), ("p99 ms", "p99_ms", ".1f"),
                   ("server batch", "server_batch_size", ".1f"), ("errors", "errors", ""),
                   ("GPU MiB", "gpu_mem_peak_mib", ""), ("device", "device", "")),
    "in_process_ort": (("px", "size", ""), ("batch", "batch", ""), ("images/s", "images_per_s", ".1f"),
                       ("p50 ms", "p50_ms", ".1f"), ("p99 ms", "p99_ms", ".1f"),
                       ("GPU MiB", "gpu_mem_peak_mib", ""), ("device", "device", "")),
    "large_photos": (("photo", "size", ""), ("holes", "holes", ""), ("mode", "mode", ""),
                     ("inpaint-client predict s", "cli_s", ".2f"), ("library round trip s", "library_s", ".2f"),
                     ("GPU MiB", "gpu_mem_peak_mib", ""), ("provider", "provider", ""), ("device", "device", "")),
    "tensorflow": (("px", "size", ""), ("batch", "batch", ""), ("images/s", "images_per_s", ".1f"),
                   ("p50 ms", "p50_ms", ".1f"), ("p99 ms", "p99_ms", ".1f"), ("GPU MiB", "gpu_mem_peak_mib", ""),
                   ("device", "device", "")),
    "training": (("what", "what", ""), ("devices", "devices", ""), ("global batch", "global_batch", ""),
                 ("step ms (last epoch)", "step_ms", ".1f"), ("step ms (first)", "step_ms_first_epoch", ".0f"),
                 ("examples/s", "examples_per_s", ".1f"), ("stream alone ex/s", "stream_examples_per_s", ".1f"),
                 ("step alone ex/s", "step_alone_examples_per_s", ".1f"),
                 ("fed by stream ex/s", "fed_by_stream_examples_per_s", ".1f"), ("keeps up", "keeps_up", ""),
                 ("GPU MiB", "gpu_mem_peak_mib", ""), ("device", "device", "")),
}


def device_name(found: dict) -> str:
    gpu = found.get("gpu")
    if gpu:
        return f"{gpu['name']} ({gpu['memory_total_mib']:,} MiB, driver {gpu['driver']})"
    return f"no GPU: {found['cpu']} ({found['cpu_count']} CPUs)"


def markdown(report: dict) -> str:
    found = report["device"]
    mode = "GPU" if report["mode"] == "gpu" else f"CPU dry run: {found['cuda_reason']}"
    lines = [f"# GPU benchmark: {found['name']}", "",
             f"- mode: {mode}",
             f"- onnxruntime {found.get('onnxruntime') or 'missing'} ({', '.join(found.get('providers', [])) or '-'}),"
             f" tensorflow {found.get('tensorflow') or 'missing'}, Python {found['python']}, {found['cpu_count']} CPUs",
             f"- GPU memory: {found['gpu_memory_tool']}",
             f"- {report['seconds']:.0f} s in all (budget {report['budget_s']:.0f} s), started {report['started']}", ""]
    if report["targets"]:
        lines += ["| goal | value | target | met | device |", "|---|---|---|---|---|"]
        lines += [f"| {t['name']} | {t['value']:.2f} | {t['goal']} | {_fmt(t['met'])} | {t['device']} |"
                  for t in report["targets"]]
        lines.append("")
    for section in report["sections"]:
        lines += [f"## {section['title']}", "",
                  f"{section['status']}, {section['seconds']:.0f} s of {section['budget_s']:.0f} s", ""]
        columns = COLUMNS[section["name"]]
        if section["rows"]:
            lines += ["| " + " | ".join(header for header, _, _ in columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_fmt(row.get(key), spec) for _, key, spec in columns) + " |"
                      for row in section["rows"]]
            lines.append("")
        placement = section["info"].get("placement")
        if placement:
            lines += [f"ORT node placement at 64 px: {placement['nodes']}; memcpy nodes {placement['memcpy_nodes']}; "
                      f"ops left on the CPU: {', '.join(placement['cpu_ops']) or 'none'}", ""]
        lines += [f"- skipped: {s['part']}: {s['reason']}" for s in section["skipped"]]
        if section.get("error"):
            lines += ["", "```", section["error"].strip()[-1500:], "```"]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "pretrained" / "inpaint",
                        help="model base path (ONNX for the servers, the SavedModel for TensorFlow)")
    parser.add_argument("--out", type=Path, default=Path("reports/gpu"), help="where gpu.json and gpu.md go")
    parser.add_argument("--dry-run", action="store_true",
                        help="skip every CUDA part even where CUDA works: the CPU plumbing at tiny sizes")
    parser.add_argument("--sections", default=",".join(SECTION_NAMES), help="comma-separated subset to run")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one section, in a child
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # internal: probe() in a child
    args = parser.parse_args(argv)
    args.sections = [name for name in args.sections.split(",") if name]
    unknown = set(args.sections) - set(SECTION_NAMES)
    if unknown:
        parser.error(f"unknown sections {', '.join(sorted(unknown))}: choose from {', '.join(SECTION_NAMES)}")
    args.model = args.model.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe:
        print(json.dumps(probe(_model_file(args.model))))
        return 0
    if args.worker:
        return worker_main(args.worker, json.loads(args.spec))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    started, started_at = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M:%S %Z")
    found = probe_in_child(args.model)
    if args.dry_run and found["cuda_reason"] is None:
        found["cuda_reason"] = "--dry-run: CUDA parts not run"
    found["name"] = device_name(found)
    logger.info("device: %s; CUDA: %s", found["name"], found["cuda_reason"] or "yes")
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as folder:
        sections = run_sections(args, found, Path(folder), started)
    report = {"benchmark": "benchmarks/gpu.py", "started": started_at,
              "mode": "gpu" if found["cuda_reason"] is None else "cpu", "dry_run": args.dry_run, "device": found,
              "budget_s": args.budget, "sections": sections, "targets": targets(sections),
              "seconds": time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / "gpu.md").write_text(table)
    print(table)
    failed = [section["name"] for section in sections if section["status"] in ("failed", "timeout")]
    if failed:
        logger.error("sections that failed or ran out of time: %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
