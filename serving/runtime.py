"""ONNX Runtime execution providers: CUDA when it really works, otherwise CPU."""

from __future__ import annotations

import ctypes
import gc
import logging
import os
from pathlib import Path

from inpaint.core.onnx_model import OnnxModel
from inpaint.core.openvino_model import OpenVinoModel
from inpaint.core.repository import INT8_FILENAME, ONNX_FILENAME

from .admission import ONNXRUNTIME_INT8_RUN, ONNXRUNTIME_RUN, OPENVINO_RUN, RunCost
from .errors import InvalidConfig

logger = logging.getLogger(__name__)

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "float32", "int8")
RUNTIMES = ("auto", "onnxruntime", "openvino")
# Runs up to this many pixels (N x H x W as the graph pads them, contract.padded_pixels) keep ONNX Runtime's
# memory arena: a 128 x 128 image or four of 64 x 64, about 10 MiB (640 bytes a padded pixel, measured);
# larger runs go to a session of their own that gives its arena back when they end (OnnxModel), so a pod's
# memory returns to its idle level after a burst. At 2^19 (8 windows of 256 x 256) windows ran 15 % faster
# but the arena kept 314 MiB per concurrent run for good, and a 1 x 65,536 strip (a 16 x 65,536 run) kept
# 640 MiB; at 2^17 the last, partial window batches of large photos (one or two 256 x 256 windows) kept
# 138 MiB after a burst (two runs at once). Keeping it costs a small run less CPU (64 x 64: 40 ms, not 56).
ARENA_KEEPS_PIXELS = 2**14


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def providers_for(device: str) -> list[str]:
    """The provider list to ask for; ``auto`` asks for CUDA only where this build has it."""
    available = available_providers()
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if CUDA not in available:
            raise RuntimeError(f"--device cuda, but this onnxruntime has no CUDA provider (has {available})")
        return [CUDA, CPU]
    return [CUDA, CPU] if CUDA in available else [CPU]


def cuda_device_present() -> bool:
    """Whether the CUDA driver is installed and sees a GPU (asked without ONNX Runtime, which lists its CUDA
    provider wherever onnxruntime-gpu is installed)."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return driver.cuInit(0) == 0 and driver.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


class ModelLoader:
    """Loads a version's graph (``graph_file``); checks once that the provider asked for is the one ORT really
    used.

    onnxruntime-gpu lists CUDA even on machines without a GPU or CUDA libraries,
    and then silently falls back to CPU per session: the first load tells.
    """

    def __init__(self, device: str = "auto", intra_op_threads: int = 0, precision: str = "float32",
                 runtime: str = "onnxruntime", openvino_keep_pixels: int = 0):
        self.device, self.intra_op_threads, self.precision = device, intra_op_threads, precision
        self.openvino_keep_pixels = openvino_keep_pixels
        self.provider: str | None = None
        # Decided once, before any load, so that every version's runtime and choice of graph stay the same.
        on_cpu = device == "cpu" or (device == "auto" and (CUDA not in available_providers()
                                                           or not cuda_device_present()))
        self.runtime = resolve_runtime(runtime, device, on_cpu)
        self.int8_if_present = precision == "auto" and (self.runtime == "openvino" or on_cpu)

    @classmethod
    def for_config(cls, config) -> "ModelLoader":
        """The loader a server with ``config`` (a ``ServerConfig``) uses."""
        return cls(config.device, config.intra_op_threads, config.precision, config.runtime,
                   config.openvino_keep_pixels)

    def graph_file(self, version_path: Path) -> str:
        """The graph a version serves: float32 its model.onnx, int8 its int8 graph, auto its int8 graph when
        runs go to the CPU and the version has one, else model.onnx."""
        if self.precision == "int8" or (self.int8_if_present and (version_path / INT8_FILENAME).is_file()):
            return INT8_FILENAME
        return ONNX_FILENAME

    def __call__(self, version_path: Path) -> OnnxModel | OpenVinoModel:
        if self.runtime == "openvino":
            return self._open_openvino(version_path)
        if self.provider is None and self.device == "auto":
            import onnxruntime as ort

            # Probing CUDA on a machine without it makes ORT log errors; we log the outcome ourselves.
            ort.set_default_logger_severity(4)
        providers = [self.provider] if self.provider == CPU else providers_for(self.device)
        model = OnnxModel(version_path / self.graph_file(version_path), providers=providers,
                          intra_op_threads=self.intra_op_threads, shrink_above_pixels=ARENA_KEEPS_PIXELS)
        if self.provider is None:
            self.provider = model.provider
            if self.device == "cuda" and self.provider != CUDA:
                raise RuntimeError("--device cuda, but ONNX Runtime could not start its CUDA provider")
            logger.info("ONNX Runtime runs on %s (--device %s); --precision %s runs %s", self.provider, self.device,
                        self.precision, model.path.name)
        return model

    def _open_openvino(self, version_path: Path) -> OpenVinoModel:
        model = OpenVinoModel(version_path / self.graph_file(version_path), threads=self.intra_op_threads,
                              keep_pixels=self.openvino_keep_pixels)
        if self.provider is None:
            self.provider = model.provider
            logger.info("OpenVINO runs on the CPU at %s (its choice for this CPU); --precision %s runs %s",
                        model.precision, self.precision, model.path.name)
        return model

    def run_cost(self, max_images: int) -> RunCost:
        """What one model run costs (serving/admission.py reserves it before the run), runs holding at most
        ``max_images`` images; with OpenVINO's kept buffers, what the server holds for them at start."""
        if self.runtime == "openvino":
            return OPENVINO_RUN.keeping(self.openvino_keep_pixels, max_images)
        return ONNXRUNTIME_INT8_RUN if self.precision == "int8" or self.int8_if_present else ONNXRUNTIME_RUN


def resolve_runtime(runtime: str, device: str, on_cpu: bool) -> str:
    """The runtime ``--runtime`` names; ``auto``: OpenVINO where runs go to the CPU and it is installed (faster
    on x86 CPUs, docs/serving.md), else ONNX Runtime."""
    if runtime == "openvino":
        check_openvino(device)
    if runtime != "auto":
        return runtime
    if on_cpu and openvino_installed():
        return "openvino"
    if on_cpu:
        logger.info("--runtime auto runs ONNX Runtime on the CPU: OpenVINO, faster there, is not installed "
                    "(pip install 'inpaint[openvino]')")
    return "onnxruntime"


def openvino_installed() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def check_openvino(device: str) -> None:
    """InvalidConfig naming the fix unless OpenVINO can run this server's models."""
    if device == "cuda":
        raise InvalidConfig("--runtime openvino runs on the CPU: use --device cpu or auto, or --runtime onnxruntime "
                            "for CUDA")
    if not openvino_installed():
        raise InvalidConfig("--runtime openvino, but OpenVINO is not installed: pip install 'inpaint[openvino]' "
                            "(or openvino), or --runtime onnxruntime")


def _libc_function(name: str):
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):  # not glibc: nothing to tune, or no way to
        return None


_MALLOC_TRIM = _libc_function("malloc_trim")
_MALLOPT = _libc_function("mallopt")
_PRCTL = _libc_function("prctl")
PR_SET_THP_DISABLE = 41  # linux/prctl.h
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters
M_ARENA_MAX = -8
# glibc gives each thread that allocates an arena of its own (up to 8 per core), and each keeps its free
# pieces: two arenas for the event loop, the compute, tiled, decoding and loading threads.
ARENAS = 2
# Blocks from this size on are mapped on their own and unmapped when freed (glibc's default starts at 128 KiB).
MMAP_THRESHOLD_BYTES = 2**20


def hand_large_buffers_back_when_freed() -> None:
    """Make glibc give every block of ``MMAP_THRESHOLD_BYTES`` or more back to the system when it is freed.

    By default glibc raises its threshold for that to the largest block freed so far (up to 32 MiB) and its
    trim threshold to twice that, so after a burst of large photos, blocks of up to 32 MiB are carved from
    its per-thread heaps, whose free tops of up to 64 MiB are never given back: malloc_trim does not shrink
    them. After bursts of eight 24 MP and twice eight 12 MP requests the server kept 146 MiB over idle
    (measured: 281 MiB of the cgroup, idle 135); with this threshold 71 MiB, and with ONNX Runtime's arena
    given back as well (``OnnxModel``), 10 MiB.
    """
    if _MALLOPT is not None and not _MALLOPT(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        logger.warning("mallopt(M_MMAP_THRESHOLD) failed: memory may stay high after bursts")
    if _MALLOPT is not None and not _MALLOPT(M_ARENA_MAX, ARENAS):
        logger.warning("mallopt(M_ARENA_MAX) failed: memory may stay high after bursts")
    keep_off_huge_pages()


def keep_off_huge_pages() -> None:
    """Keep this process and those it starts off transparent huge pages: the kernel's switch for the process
    (prctl PR_SET_THP_DISABLE, inherited by children, whatever the host's THP mode), and NumPy's own, which
    asks for huge pages for every array of 4 MiB or more (``NUMPY_MADVISE_HUGEPAGE=0`` for processes started
    from here, which NumPy reads when it is imported).

    When glibc gives part of a 2 MiB huge page back (malloc_trim, a heap's shrinking top), the kernel unmaps
    that part but splits and frees the page only under memory pressure: the whole page stays charged to the
    pod's cgroup, counted in its usage but not in its RSS. After 10 minutes of soak bursts that was 30 to 50
    MiB over idle (anonymous memory beyond RSS, freed when the cgroup's limit was squeezed); without, none.
    """
    if _PRCTL is not None and _PRCTL(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0:
        logger.warning("prctl(PR_SET_THP_DISABLE) failed: memory may stay high after bursts")
    os.environ["NUMPY_MADVISE_HUGEPAGE"] = "0"
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy 1
        from numpy.core import multiarray

    set_madvise_hugepage = getattr(multiarray, "_set_madvise_hugepage", None)
    if set_madvise_hugepage is None:
        logger.warning("this NumPy has no switch for huge pages: memory may stay high after bursts")
    else:
        set_madvise_hugepage(False)


def return_freed_memory() -> None:
    """Free what only reference cycles still hold, then give freed heap pages back to the system now.

    A failed or refused request's exception keeps its frames, and with them its message and arrays, in a
    cycle that only the cyclic collector frees, and it runs by object counts, not bytes: after two bursts of
    eight 12 MP requests the server held 1.3 GB until it ran. glibc keeps what a large photo's buffers freed
    (300 MiB more RSS after one 12 MP request, measured) and a pod's memory usage is its RSS.
    """
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
