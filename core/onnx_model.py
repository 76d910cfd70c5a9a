"""An exported ``model.onnx`` run in process with ONNX Runtime, behind the contract's interface.

The exporter's parity check, the evaluation, the server and the benchmarks all
run the model through this class. ONNX Runtime is an optional dependency (the
``serve`` and ``train`` extras): it is imported when a model is opened, never
when this module is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .contract import IMAGE, MASK, OUTPUT, padded_pixels

# ONNX Runtime's tensor type strings, as numpy dtype names.
_ORT_TYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32", "tensor(int64)": "int64"}

Signature = dict[str, dict[str, tuple[str, list[int]]]]


class OnnxModel:
    """An ONNX Runtime session: uint8 images and masks in, uint8 inpainted images out."""

    def __init__(self, path: Path, providers: list[str] | None = None, intra_op_threads: int = 0,
                 memory_arena: bool = True, shrink_above_pixels: int | None = None):
        """ORT's memory arena makes repeated runs faster (no page faults) but keeps the peak of the largest
        run for good; ``shrink_above_pixels`` gives a run's memory back when it holds more pixels (N x H x W,
        counted as the graph pads them: ``contract.padded_pixels``) than that (a server's choice),
        ``memory_arena=False`` after every run."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.enable_cpu_mem_arena = memory_arena
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        options.log_severity_level = 4  # callers report failures themselves, once
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        self.shrink_above_pixels = shrink_above_pixels if memory_arena else None
        self._shrinking_run = ort.RunOptions()
        self._shrinking_run.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def inpaint(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 images and ``(N, H, W)`` or ``(N, H, W, 1)`` masks (nonzero = hole)."""
        if masks.ndim == 3:
            masks = masks[..., None]
        feeds = {IMAGE: np.ascontiguousarray(images, np.uint8), MASK: np.ascontiguousarray(masks, np.uint8)}
        pixels = padded_pixels(*images.shape[:3])  # what the run holds, after the graph's padding
        shrink = self.shrink_above_pixels is not None and pixels > self.shrink_above_pixels
        return self.session.run([OUTPUT], feeds, self._shrinking_run if shrink else None)[0]

    def signature(self) -> Signature:
        """``{"inputs"|"outputs": {name: (numpy dtype name, shape with -1 for dynamic)}}``."""
        def describe(args):
            return {a.name: (_ORT_TYPES.get(a.type, a.type), [d if isinstance(d, int) else -1 for d in a.shape])
                    for a in args}

        return {"inputs": describe(self.session.get_inputs()), "outputs": describe(self.session.get_outputs())}

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]
