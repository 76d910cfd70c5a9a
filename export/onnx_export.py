"""SavedModel -> ONNX with tf2onnx, then prove the two agree.

The ONNX file is written beside the SavedModel, in the same version folder, as
``model.onnx``. It is renamed into place only after ``onnx.checker`` and the
parity check pass, so a server polling the repository never sees a broken one.
tf2onnx runs as a child process that dies with the exporter, and temporaries a
killed export left behind are removed by the next one.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from inpaint.core.contract import OUTPUT, SIGNATURE_NAME, check_signature
from inpaint.core.masks import mask_batch
from inpaint.core.repository import ONNX_FILENAME, atomic_file, remove_stale_temporaries

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
        "--signature_def", SIGNATURE_NAME,
        "--opset", str(opset),
        "--output", str(output),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False,
                            preexec_fn=functools.partial(_die_with_parent, os.getpid()))
    if result.returncode != 0 or not output.is_file():
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        raise ExportError(f"tf2onnx failed on {saved_model}: {lines[-1] if lines else 'no output'}")
    logger.debug("tf2onnx: %s", result.stderr)


def check_onnx(path: Path) -> int:
    """``onnx.checker`` plus the contract's interface; returns the parameter count."""
    import onnx

    from inpaint.core.contract import ContractError
    from inpaint.core.onnx_model import OnnxModel

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    try:
        check_signature(OnnxModel(path).signature())
    except ContractError as error:
        raise ExportError(f"ONNX interface: {error}") from None
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
    from inpaint.core.onnx_model import OnnxModel
    from inpaint.trainer.savedmodel import load_serving_signature

    signature = load_serving_signature(version_path)  # fails early on a SavedModel without it

    def run_tensorflow(images, masks):
        return signature(image=images, mask=masks)[OUTPUT].numpy()

    for stale in remove_stale_temporaries(version_path, ONNX_FILENAME):
        logger.info("removed %s, left by an export that did not finish", stale)
    target = version_path / ONNX_FILENAME
    with atomic_file(target) as temporary:
        convert(version_path, temporary, opset)
        parameters = check_onnx(temporary)
        difference = check_parity(run_tensorflow, OnnxModel(temporary).inpaint)
    return ExportReport(target, target.stat().st_size, parameters, difference, PARITY_SHAPES)


def _die_with_parent(parent: int) -> None:
    """In the tf2onnx child: ask Linux to SIGKILL it when the exporter dies, even by SIGKILL.

    An exporter that died between the fork and this call is caught by the parent check.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)


def _libc_prctl():
    """prctl, looked up before any fork: the child then only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl


_PR_SET_PDEATHSIG = 1
_PRCTL = _libc_prctl()
