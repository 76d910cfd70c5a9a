"""The shipped int8 graph keeps float32's quality (issue 23): ``benchmarks/int8.py --install`` wrote
``model.int8.onnx`` only once hole-MAE and texture were within 1 % of float32's on every row of the
held-out photos; this checks the same bar, on a small set that every clone has (scikit-image's photos,
never trained on), as users see the fills: the model, then the detail pass the version declares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inpaint.core.contract import check_signature
from inpaint.core.detail import finish_fills
from inpaint.core.masks import stroke_mask_in_bucket
from inpaint.core.onnx_model import OnnxModel
from inpaint.core.repository import INT8_FILENAME, ONNX_FILENAME

VERSION = Path(__file__).resolve().parents[1] / "models" / "pretrained" / "inpaint" / "1"
BAR = 0.01  # the project's bar for a reduced precision
CROP = 256


@pytest.fixture(scope="module")
def fills():
    """{bucket: (photos, masks, float32's fills, int8's fills, OpenVINO's int8 fills)} for stroke masks over
    10-30 % and 30-50 %."""
    pytest.importorskip("skimage", reason="the small set is scikit-image's photos: pip install 'inpaint[train]'")
    pytest.importorskip("openvino", reason="inpaint-serve --runtime openvino: pip install 'inpaint[openvino]'")
    from inpaint.core.openvino_model import OpenVinoModel
    from inpaint.trainer.data import load_samples

    samples = load_samples()
    photos = np.stack([photo[:CROP, :CROP] for photo in samples.train + samples.validation + samples.test])
    float32, int8 = OnnxModel(VERSION / ONNX_FILENAME), OnnxModel(VERSION / INT8_FILENAME)
    openvino = OpenVinoModel(VERSION / INT8_FILENAME)  # as inpaint-serve --runtime openvino runs it
    rng = np.random.default_rng(0)
    result = {}
    for low, high in ((0.1, 0.3), (0.3, 0.5)):
        masks = np.stack([stroke_mask_in_bucket(CROP, CROP, low, high, rng) for _ in photos])[..., None]
        masks = masks.astype(np.uint8)
        outputs = []
        for model in (float32, int8, openvino):
            output = np.concatenate([model.inpaint(photos[i : i + 1], masks[i : i + 1]) for i in range(len(photos))])
            finish_fills(output, masks, model.detail, tiled=False)
            outputs.append(output)
        result[f"strokes {low:.0%}-{high:.0%}"] = (photos, masks, *outputs)
    return result


def test_the_int8_graph_has_the_signature_and_keeps_known_pixels(fills):
    from inpaint.core.openvino_model import OpenVinoModel

    check_signature(OnnxModel(VERSION / INT8_FILENAME).signature())
    assert OpenVinoModel(VERSION / INT8_FILENAME).signature() == OnnxModel(VERSION / INT8_FILENAME).signature()
    for photos, masks, _, *reduced in fills.values():
        known = masks[..., 0] == 0
        for fill in reduced:
            np.testing.assert_array_equal(fill[known], photos[known])


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_int8_hole_error_and_texture_are_within_one_percent_of_float32(fills, runtime):
    """OpenVINO computes in its own precision for the CPU (bf16 where the CPU has it natively): checked too."""
    from inpaint.trainer.metrics import hole_mae, texture

    for bucket, (photos, masks, float32, *reduced) in fills.items():
        int8 = reduced[("onnxruntime", "openvino").index(runtime)]
        holes = masks[..., 0]
        error = hole_mae(photos, int8, holes) / hole_mae(photos, float32, holes)
        carried = texture(photos, int8, holes) / texture(photos, float32, holes)
        assert error <= 1 + BAR, f"{bucket}: {runtime} int8's hole-MAE is {error:.4f} x float32's"
        assert abs(carried - 1) <= BAR, f"{bucket}: {runtime} int8's fills carry {carried:.4f} x float32's texture"
