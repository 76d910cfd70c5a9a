"""``benchmarks/silent_layers.py``: a ReLU layer's channels that never fire are counted as silent."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import silent_layers  # noqa: E402
from inpaint.core.contract import IMAGE, MASK, OUTPUT  # noqa: E402


def two_channel_relu_model() -> onnx.ModelProto:
    """image -> float -> x @ W + b -> NCHW -> Relu over 2 channels: the first fires on any bright pixel, the second
    (negative weights, bias -1) never can; the fill is the image itself."""
    weights = numpy_helper.from_array(np.array([[1, -1], [1, -1], [1, -1]], np.float32), "w")
    bias = numpy_helper.from_array(np.array([0, -1], np.float32), "b")
    nodes = [helper.make_node("Cast", [IMAGE], ["x"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["pre"]),
             helper.make_node("Transpose", ["pre"], ["nchw"], perm=[0, 3, 1, 2]),  # as ONNX's Conv writes
             helper.make_node("Relu", ["nchw"], ["activation"], name="net/layer_1/Relu"),
             helper.make_node("Identity", [IMAGE], [OUTPUT])]
    graph = helper.make_graph(
        nodes, "two_channels",
        [helper.make_tensor_value_info(IMAGE, TensorProto.UINT8, [None, None, None, 3]),
         helper.make_tensor_value_info(MASK, TensorProto.UINT8, [None, None, None, 1])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.UINT8, [None, None, None, 3])], [weights, bias])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_the_channel_that_never_fires_is_counted_and_the_share_above_zero_is_measured(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(two_channel_relu_model(), str(path))
    image = np.zeros((1, 8, 8, 3), np.uint8)
    image[:, :4] = 200  # half the pixels bright: the first channel fires there, the second nowhere
    activity = silent_layers.relu_activity(path, [{IMAGE: image, MASK: np.zeros((1, 8, 8, 1), np.uint8)}])
    assert activity == {"net/layer_1/Relu": {"active": 0.25, "channels": 2, "channels_fired": 1}}
    assert "| net/layer_1 | 25.0% | 1 of 2 |" in silent_layers.table(activity)
