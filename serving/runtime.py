"""ONNX Runtime execution providers: CUDA when it really works, otherwise CPU."""

from __future__ import annotations

import ctypes
import gc
import logging
from pathlib import Path

from inpaint.core.onnx_model import OnnxModel

logger = logging.getLogger(__name__)

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")
# Runs up to this many pixels (N x H x W as the graph pads them, contract.padded_pixels) keep ONNX Runtime's
# memory arena: a batch of 32 64-px images, about 80 MiB (640 bytes a padded pixel, measured); larger runs
# give it back when they end, so a pod's memory returns to its idle level after a burst. At 2^19 (8 windows
# of 256 x 256) windows ran 15 % faster but the arena kept 314 MiB per concurrent run for good, and a
# 1 x 65,536 strip (a 16 x 65,536 run) kept 640 MiB.
ARENA_KEEPS_PIXELS = 2**17


def providers_for(device: str) -> list[str]:
    """The provider list to ask for; ``auto`` asks for CUDA only where this build has it."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if CUDA not in available:
            raise RuntimeError(f"--device cuda, but this onnxruntime has no CUDA provider (has {available})")
        return [CUDA, CPU]
    return [CUDA, CPU] if CUDA in available else [CPU]


class ModelLoader:
    """Loads model.onnx files; checks once that the provider asked for is the one ORT really used.

    onnxruntime-gpu lists CUDA even on machines without a GPU or CUDA libraries,
    and then silently falls back to CPU per session: the first load tells.
    """

    def __init__(self, device: str = "auto", intra_op_threads: int = 0):
        self.device, self.intra_op_threads = device, intra_op_threads
        self.provider: str | None = None

    def __call__(self, path: Path) -> OnnxModel:
        if self.provider is None and self.device == "auto":
            import onnxruntime as ort

            # Probing CUDA on a machine without it makes ORT log errors; we log the outcome ourselves.
            ort.set_default_logger_severity(4)
        providers = [self.provider] if self.provider == CPU else providers_for(self.device)
        model = OnnxModel(path, providers=providers, intra_op_threads=self.intra_op_threads,
                          shrink_above_pixels=ARENA_KEEPS_PIXELS)
        if self.provider is None:
            self.provider = model.provider
            if self.device == "cuda" and self.provider != CUDA:
                raise RuntimeError("--device cuda, but ONNX Runtime could not start its CUDA provider")
            logger.info("ONNX Runtime runs on %s (--device %s)", self.provider, self.device)
        return model



def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim, or no way to
        return None


_MALLOC_TRIM = _malloc_trim()


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
