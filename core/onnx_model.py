"""An exported ``model.onnx`` run in process with ONNX Runtime, behind the contract's interface.

The exporter's parity check, the evaluation, the server and the benchmarks all
run the model through this class. ONNX Runtime is an optional dependency (the
``serve`` and ``train`` extras): it is imported when a model is opened, never
when this module is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .contract import IMAGE, MASK, OUTPUT, OUTPUT_CHANNELS, padded_pixels
from .detail import load_detail

# ONNX Runtime's tensor type strings, as numpy dtype names.
_ORT_TYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32", "tensor(int64)": "int64"}

Signature = dict[str, dict[str, tuple[str, list[int]]]]


class OnnxModel:
    """An ONNX Runtime session: uint8 images and masks in, uint8 inpainted images out."""

    def __init__(self, path: Path, providers: list[str] | None = None, intra_op_threads: int = 0,
                 memory_arena: bool = True, shrink_above_pixels: int | None = None):
        """ORT's memory arena makes repeated runs faster (no page faults) but keeps the peak of the largest
        run for good; ``memory_arena=False`` gives a run's memory back after every run.

        ``shrink_above_pixels`` (a server's choice) keeps the arena only for runs of up to that many pixels
        (N x H x W, counted as the graph pads them: ``contract.padded_pixels``): larger runs go to a second
        session of the model whose arena is given back after every run. One session cannot do both: a small
        run that allocates while a large one runs may take a piece of one of the large run's arena regions,
        which then stays (with the small runs that do not shrink) until the next large run ends. On a GPU
        there is one session, whose CPU arena is given back after the large runs.
        """
        import onnxruntime as ort

        self.path = Path(path)
        self.detail = load_detail(self.path.parent)  # the pass its version declares; applied by its callers
        self.session = self._open(ort, providers, intra_op_threads, memory_arena)
        self.shrink_above_pixels = shrink_above_pixels if memory_arena else None
        on_cpu = self.provider == "CPUExecutionProvider"  # a GPU's arena is not shrunk: one session there
        self._shrinking_session = (self._open(ort, providers, intra_op_threads, memory_arena)
                                   if self.shrink_above_pixels is not None and on_cpu else None)
        self._shrinking_run = ort.RunOptions()
        self._shrinking_run.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def _open(self, ort, providers: list[str] | None, intra_op_threads: int, memory_arena: bool):
        options = ort.SessionOptions()
        options.enable_cpu_mem_arena = memory_arena
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads
        options.log_severity_level = 4  # callers report failures themselves, once
        return ort.InferenceSession(str(self.path), options, providers=providers or ["CPUExecutionProvider"])

    def inpaint(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 images and ``(N, H, W)`` or ``(N, H, W, 1)`` masks (nonzero = hole)."""
        if masks.ndim == 3:
            masks = masks[..., None]
        feeds = {IMAGE: np.ascontiguousarray(images, np.uint8), MASK: np.ascontiguousarray(masks, np.uint8)}
        pixels = padded_pixels(*images.shape[:3])  # what the run holds, after the graph's padding
        if self.shrink_above_pixels is not None and pixels > self.shrink_above_pixels:
            if self._shrinking_session is None:  # on a GPU: its one session gives its CPU arena back
                return self.session.run([OUTPUT], feeds, self._shrinking_run)[0]
            return self._run_and_shrink(feeds)
        return self.session.run([OUTPUT], feeds)[0]

    def _run_and_shrink(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """A run whose arena is given back when it ends. Its output is written to an array of ours: left in
        the arena (as ``run`` leaves it, for numpy to use in place), it keeps the region it lies in, up to
        1 GiB of which 285 MiB were resident after a burst (measured), from being given back."""
        output = np.empty((*feeds[IMAGE].shape[:3], OUTPUT_CHANNELS), np.uint8)
        binding = self._shrinking_session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        binding.bind_output(OUTPUT, "cpu", 0, np.uint8, output.shape, output.ctypes.data)
        self._shrinking_session.run_with_iobinding(binding, self._shrinking_run)
        return output

    def signature(self) -> Signature:
        """``{"inputs"|"outputs": {name: (numpy dtype name, shape with -1 for dynamic)}}``."""
        def describe(args):
            return {a.name: (_ORT_TYPES.get(a.type, a.type), [d if isinstance(d, int) else -1 for d in a.shape])
                    for a in args}

        return {"inputs": describe(self.session.get_inputs()), "outputs": describe(self.session.get_outputs())}

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]
