"""An exported graph run in process with OpenVINO on the CPU, behind the same interface as ``OnnxModel``.

OpenVINO (an optional dependency: ``pip install 'inpaint[openvino]'``) is imported when a model is opened,
never when this module is. It reads the same ``model.onnx`` / ``model.int8.onnx`` the other runtimes run.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import numpy as np

from .contract import IMAGE, MASK, OUTPUT, padded_pixels
from .detail import load_detail
from .onnx_model import Signature

# OpenVINO's element types, as numpy dtype names.
_OV_TYPES = {"u8": "uint8", "f32": "float32", "i64": "int64"}
# OpenVINO keeps, per input shape it has seen, kernels and scratch memory sized to that shape (hundreds of
# MiB after a 1 MP run, measured) in a cache of 5,000 shapes by default: every client-chosen size would stay.
# Off, the same runs took the same time (4 x 256²: 335 ms, 1 x 1024²: 1,277 ms; with the cache 378, 1,231).
_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "CPU_RUNTIME_CACHE_CAPACITY": "0"}


# Every OpenVINO run in this process goes through this lock, one at a time (the latency hint's one stream runs
# each on every core anyway), and at most one model keeps its buffers between runs: what several versions or
# models keep together is bounded by one model's ``keep_pixels``. Not handed over in arrival order: with a
# FIFO hand-over a stream of small requests took two runs in three, and a strip's windows ran 6x slower
# (tests/test_memory_admission.py's burst: 100 s, not 17); between a large photo's batches of windows the
# lock is free while the next batch is cut, and waiters take it then (tests/test_executors.py).
_RUNS = threading.Lock()
_keeper: "weakref.ref[OpenVinoModel] | None" = None  # weak: an unloaded version's model is freed all the same


class OpenVinoModel:
    """An OpenVINO compiled model on the CPU: uint8 images and masks in, uint8 inpainted images out.

    After a run of more than ``keep_pixels`` (N x H x W as the graph pads them) the compiled model gives its
    intermediate buffers back (``release_memory``, which OpenVINO refuses while a run is in flight); runs of up
    to that many keep them for the next run, which then needs no new pages: under the server's allocator
    settings, releasing after every run made 4 x 256² runs 1.3-1.6x slower on 2 cores (measured). Whatever is
    kept, it is the buffers of one model: a run of another model first makes the keeper give its back.
    """

    provider = "OpenVINO CPU"

    def __init__(self, path: Path, threads: int = 0, keep_pixels: int = 0):
        import openvino as ov

        self.path = Path(path)
        self.detail = load_detail(self.path.parent)  # the pass its version declares; applied by its callers
        config = dict(_CONFIG, **({"INFERENCE_NUM_THREADS": str(threads)} if threads else {}))
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
        # OpenVINO's choice: bf16 on CPUs that compute it natively, else f32.
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self._request = self.compiled.create_infer_request()
        self.keep_pixels = keep_pixels

    def inpaint(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 images and ``(N, H, W)`` or ``(N, H, W, 1)`` masks (nonzero = hole)."""
        if masks.ndim == 3:
            masks = masks[..., None]
        feeds = {IMAGE: np.ascontiguousarray(images, np.uint8), MASK: np.ascontiguousarray(masks, np.uint8)}
        global _keeper
        with _RUNS:
            keeper = _keeper() if _keeper is not None else None
            if keeper is not None and keeper is not self:
                keeper.compiled.release_memory()
            _keeper = weakref.ref(self)
            try:
                self._request.infer(feeds)
                return self._request.get_tensor(self.compiled.output(OUTPUT)).data.copy()
            finally:
                if padded_pixels(*images.shape[:3]) > self.keep_pixels:
                    self.compiled.release_memory()
                    _keeper = None

    def signature(self) -> Signature:
        """``{"inputs"|"outputs": {name: (numpy dtype name, shape with -1 for dynamic)}}``."""
        def describe(ports):
            return {port.any_name: (_OV_TYPES.get(port.element_type.get_type_name(), port.element_type.get_type_name()),
                                    [dim.get_length() if dim.is_static else -1 for dim in port.partial_shape])
                    for port in ports}

        return {"inputs": describe(self.compiled.inputs), "outputs": describe(self.compiled.outputs)}
