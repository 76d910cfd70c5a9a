"""Small ONNX models with the real signature, built with onnx.helper: no TensorFlow needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper


def fill_model(value: int = 128, opset: int = 17) -> onnx.ModelProto:
    """``inpainted = where(mask > 0, value, image)``: uint8 image [N,H,W,3] and mask [N,H,W,1] in."""
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])
    mask = helper.make_tensor_value_info("mask", TensorProto.UINT8, ["N", "H", "W", 1])
    output = helper.make_tensor_value_info("inpainted", TensorProto.UINT8, ["N", "H", "W", 3])
    nodes = [
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.UINT8, [], [0])),
        helper.make_node("Constant", [], ["fill"], value=helper.make_tensor("f", TensorProto.UINT8, [], [value])),
        helper.make_node("Greater", ["mask", "zero"], ["hole"]),
        helper.make_node("Where", ["hole", "fill", "image"], ["inpainted"]),
    ]
    graph = helper.make_graph(nodes, "fill", [image, mask], [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def wrong_signature_model() -> onnx.ModelProto:
    """A valid ONNX model whose inputs are not image and mask."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def write_version(base: Path, version: int, model: onnx.ModelProto | None = None, *, fill: int = 128) -> Path:
    """``base/version/model.onnx``, written whole and then renamed in, as the exporter does."""
    folder = base / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / ".model.onnx.tmp"
    onnx.save(model if model is not None else fill_model(fill), str(staging))
    staging.rename(folder / "model.onnx")
    return folder


def expected_fill(image: np.ndarray, mask: np.ndarray, value: int = 128) -> np.ndarray:
    return np.where(mask > 0, np.uint8(value), image)
