"""Train -> SavedModel -> ONNX -> parity -> inpaint, on a real tiny model."""

import json

import numpy as np
import pytest

from conftest import random_image, write_png
from inpaint.core.masks import mask_batch


def _inputs(n, h, w, seed=0):
    images = np.stack([random_image(h, w, seed + i) for i in range(n)])
    masks = mask_batch("strokes", n, h, w, seed)[..., None]
    return images, masks


def test_version_folder_is_tf_serving_layout(tiny_version):
    assert tiny_version.name == "1"
    for name in ("saved_model.pb", "variables/variables.index", "model.onnx",
                 "assets.extra/run.json", "assets.extra/tf_serving_warmup_requests"):
        assert (tiny_version / name).is_file(), name
    assert not [p for p in tiny_version.parent.iterdir() if p.name.startswith(".")], "no staging left"


def test_run_record_holds_config_data_and_metrics(tiny_version, tiny_config):
    record = json.loads((tiny_version / "assets.extra/run.json").read_text())
    assert record["config"]["depth"] == 2 and record["config"]["seed"] == tiny_config.seed
    assert record["dataset"]["files"]["test"] == ["astronaut.png", "coffee.png"]
    final = record["final_metrics"]
    for name in ("loss", "val_mae", "val_hole_mae", "val_psnr", "val_ssim", "val_dice"):
        assert np.isfinite(final[name]), name
    assert len(record["history"]["val_hole_mae"]) == tiny_config.epochs
    assert 0 < final["val_mae"] < final["val_hole_mae"] < 1, "holes are harder than the whole image"
    from inpaint.trainer.train import resolve_precision

    assert record["precision"] == resolve_precision("auto") and record["config"]["precision"] == "auto"


def test_saved_model_signature(tiny_version):
    import tensorflow as tf

    signature = tf.saved_model.load(str(tiny_version)).signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    assert inputs["image"].dtype == tf.uint8 and inputs["image"].shape.as_list() == [None, None, None, 3]
    assert inputs["mask"].dtype == tf.uint8 and inputs["mask"].shape.as_list() == [None, None, None, 1]
    output = signature.structured_outputs["inpainted"]
    assert output.dtype == tf.uint8 and output.shape.as_list() == [None, None, None, 3]


def test_warmup_file_is_a_prediction_log(tiny_version):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    records = list(tf.data.TFRecordDataset(str(tiny_version / "assets.extra/tf_serving_warmup_requests")))
    assert 1 <= len(records) <= 1000
    log = prediction_log_pb2.PredictionLog.FromString(records[0].numpy())
    request = log.predict_log.request
    assert request.model_spec.signature_name == "serving_default"
    image = tf.make_ndarray(request.inputs["image"])
    mask = tf.make_ndarray(request.inputs["mask"])
    assert image.dtype == np.uint8 and image.shape[-1] == 3 and mask.shape == image.shape[:3] + (1,)


def test_onnx_interface(tiny_version):
    import onnx

    model = onnx.load(str(tiny_version / "model.onnx"))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    by_name = {i.name: i for i in model.graph.input}
    assert set(by_name) == {"image", "mask"} and [o.name for o in model.graph.output] == ["inpainted"]
    dims = [d for d in by_name["image"].type.tensor_type.shape.dim]
    assert [d.HasField("dim_value") for d in dims] == [False, False, False, True], "N, H, W are dynamic"


@pytest.mark.parametrize("shape", [(1, 32, 32), (2, 37, 53), (1, 1, 1), (3, 61, 20)])
def test_known_pixels_are_bit_exact_and_sizes_are_free(tiny_version, shape):
    from inpaint.core.onnx_model import OnnxModel
    from inpaint.trainer.savedmodel import load_serving_signature

    images, masks = _inputs(*shape, seed=sum(shape))
    onnx_out = OnnxModel(tiny_version / "model.onnx").inpaint(images, masks)
    tf_out = load_serving_signature(tiny_version)(image=images, mask=masks)["inpainted"].numpy()
    known = masks[..., 0] == 0
    assert onnx_out.shape == images.shape and onnx_out.dtype == np.uint8
    np.testing.assert_array_equal(onnx_out[known], images[known])
    np.testing.assert_array_equal(tf_out[known], images[known])
    assert np.abs(onnx_out.astype(int) - tf_out.astype(int)).max() <= 1


def test_holes_are_filled_not_left_black(tiny_version):
    from inpaint.core.onnx_model import OnnxModel

    images, masks = _inputs(2, 48, 48, seed=5)
    images[masks[..., 0] > 0] = 0  # what the client sends does not matter under the hole
    out = OnnxModel(tiny_version / "model.onnx").inpaint(images, masks)
    assert out[masks[..., 0] > 0].mean() > 5


def test_parity_check_fails_loudly():
    from inpaint.export.onnx_export import ExportError, check_parity

    def reference(images, masks):
        return images

    def off_by_two(images, masks):
        return np.clip(images.astype(int) + 2, 0, 255).astype(np.uint8)

    assert check_parity(reference, reference) == 0
    with pytest.raises(ExportError, match="differ by 2 levels"):
        check_parity(reference, off_by_two)


def test_evaluation_report(tiny_version, tmp_path):
    """The trained model at all three sizes, on photos of its own (the training source may be large)."""
    from click.testing import CliRunner

    from inpaint.export.evaluate import MASK_SETS, main

    for name, (height, width) in {"a.png": (272, 300), "b.png": (320, 260)}.items():
        write_png(tmp_path / "photos" / name, random_image(height, width, seed=height))
    result = CliRunner().invoke(main, [str(tiny_version.parent), "--data", str(tmp_path / "photos"),
                                       "--report", str(tmp_path / "report"), "--count-64", "3", "--count-256", "2"])
    assert result.exit_code == 0, result.output
    assert "| 64 | lines |" in result.output and "| whole | strokes 30%-50% |" in result.output
    report = json.loads((tmp_path / "report" / "eval.json").read_text())
    assert list(report["sizes"]) == ["64", "256", "whole"]
    for by_set in report["sizes"].values():
        assert list(by_set) == list(MASK_SETS)
        for row in by_set.values():
            assert set(row["metrics"]) == {"model", "telea", "ns", "no_fill"}
            assert row["metrics"]["no_fill"]["hole_mae"] > row["metrics"]["ns"]["hole_mae"], "NS beats black holes"
    whole = report["sizes"]["whole"]["lines"]["images"]
    assert [(i["name"], i["width"], i["height"]) for i in whole] == [("a.png", 300, 272), ("b.png", 260, 320)]
    assert len(report["model_hole_mae_over_ns"]) == 9 and report["worst_ratio"] > 0
    png = (tmp_path / "report" / "examples.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert (tmp_path / "report" / "examples_full" / "lines_model.png").is_file()
