"""SavedModel -> ONNX with tf2onnx, then prove the two agree.

The ONNX file is written beside the SavedModel, in the same version folder, as
``model.onnx``. It is renamed into place only after ``onnx.checker`` and the
parity check pass, so a server polling the repository never sees a broken one.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from inpaint.trainer.masks import mask_batch

from .repository import ONNX_FILENAME

logger = logging.getLogger(__name__)

OPSET = 17
PARITY_SHAPES = ((1, 64, 64), (2, 37, 53), (3, 96, 128), (1, 17, 9))  # odd sizes on purpose
PARITY_TOLERANCE = 1  # uint8 levels: TF and ORT may round a float differently

InpaintFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class ExportError(RuntimeError):
    """Conversion failed, or the ONNX model does not match the SavedModel."""


@dataclass
class ExportReport:
    onnx_path: Path
    size_bytes: int
    parameters: int
    max_difference: int
    shapes_checked: tuple[tuple[int, int, int], ...]


def convert(saved_model: Path, output: Path, opset: int = OPSET) -> None:
    """Run tf2onnx's converter on the ``serving_default`` signature."""
    command = [
        sys.executable, "-m", "tf2onnx.convert",
        "--saved-model", str(saved_model),
        "--signature_def", "serving_default",
        "--opset", str(opset),
        "--output", str(output),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0 or not output.is_file():
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        raise ExportError(f"tf2onnx failed on {saved_model}: {lines[-1] if lines else 'no output'}")
    logger.debug("tf2onnx: %s", result.stderr)


def check_onnx(path: Path) -> int:
    """``onnx.checker`` plus the interface we promise; returns the parameter count."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    uint8 = onnx.TensorProto.UINT8
    if inputs != {"image": uint8, "mask": uint8} or outputs != {"inpainted": uint8}:
        raise ExportError(f"ONNX interface is inputs {inputs}, outputs {outputs}; "
                          "expected uint8 image and mask in, uint8 inpainted out")
    return int(sum(np.prod(t.dims, dtype=np.int64) for t in model.graph.initializer))


def parity_inputs(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    batch, height, width = shape
    images = np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    masks = mask_batch("strokes", batch, height, width, seed)[..., None]
    return images, masks


def check_parity(reference: InpaintFn, candidate: InpaintFn,
                 shapes=PARITY_SHAPES, tolerance: int = PARITY_TOLERANCE) -> int:
    """Largest per-pixel difference over ``shapes``; raises ExportError above ``tolerance``."""
    worst = 0
    for seed, shape in enumerate(shapes):
        images, masks = parity_inputs(shape, seed)
        expected = reference(images, masks)
        try:
            actual = candidate(images, masks)
        except Exception as error:  # ONNX Runtime raises its own classes; report them as a failed export
            message = str(error).strip().splitlines()[0]
            raise ExportError(f"ONNX model fails at input {shape} where the SavedModel works: {message}") from error
        if expected.shape != actual.shape:
            raise ExportError(f"shape mismatch at input {shape}: SavedModel {expected.shape}, ONNX {actual.shape}")
        difference = int(np.abs(expected.astype(np.int16) - actual.astype(np.int16)).max())
        if difference > tolerance:
            raise ExportError(f"ONNX and SavedModel differ by {difference} levels at input {shape} "
                              f"(tolerance {tolerance})")
        worst = max(worst, difference)
    return worst


def export_version(version_path: Path, opset: int = OPSET) -> ExportReport:
    """Convert, check and publish ``model.onnx`` for one version folder."""
    from inpaint.trainer.savedmodel import load_serving_signature

    from .onnx_runtime import InferenceModel

    signature = load_serving_signature(version_path)  # fails early on a SavedModel without it

    def run_tensorflow(images, masks):
        return signature(image=images, mask=masks)["inpainted"].numpy()

    handle, temporary = tempfile.mkstemp(prefix=f".{ONNX_FILENAME}.", suffix=".tmp", dir=version_path)
    os.close(handle)
    temporary = Path(temporary)
    try:
        convert(version_path, temporary, opset)
        parameters = check_onnx(temporary)
        difference = check_parity(run_tensorflow, InferenceModel(temporary).inpaint)
        target = version_path / ONNX_FILENAME
        temporary.chmod(0o644)  # mkstemp makes it private; servers may run as another user
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return ExportReport(target, target.stat().st_size, parameters, difference, PARITY_SHAPES)
