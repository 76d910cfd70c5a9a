"""The shipped model repository (models/pretrained) and the publish-a-finished-checkpoint path."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from inpaint.core.contract import check_signature
from inpaint.core.masks import stroke_mask_in_bucket

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "models" / "pretrained" / "inpaint" / "1"


def photo_like(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth gradients plus texture, so a fill has structure to continue."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, (x + y) / (width + height)], -1) * 200
    noise = cv2.GaussianBlur(rng.normal(0, 25, (height, width, 3)).astype(np.float32), (0, 0), 2)
    return np.clip(base + noise + 20, 0, 255).astype(np.uint8)


def test_shipped_repository_is_complete_and_small():
    files = {p.relative_to(PRETRAINED).as_posix(): p.stat().st_size for p in PRETRAINED.rglob("*") if p.is_file()}
    assert {"saved_model.pb", "model.onnx", "assets.extra/run.json"} <= set(files)
    assert any(name.startswith("variables/variables.data") for name in files)
    assert sum(files.values()) < 40 * 2**20
    record = json.loads((PRETRAINED / "assets.extra" / "run.json").read_text())
    assert record["dataset"]["counts"]["test"] > 0, "trained with a held-out split"
    held_out = set(record["dataset"]["files"]["test"])
    assert held_out.isdisjoint(record["dataset"]["files"]["train"])


def test_shipped_onnx_has_the_signature_and_keeps_known_pixels():
    from inpaint.core.onnx_model import OnnxModel

    model = OnnxModel(PRETRAINED / "model.onnx")
    check_signature(model.signature())
    image = photo_like(301, 455, seed=1)[None]
    mask = stroke_mask_in_bucket(301, 455, 0.1, 0.3, np.random.default_rng(2))[None]
    out = model.inpaint(image, mask)
    known = mask[0] == 0
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0][known], image[0][known])
    hole_error = np.abs(out[0][~known].astype(int) - image[0][~known]).mean()
    assert hole_error < 0.25 * np.abs(image[0][~known].astype(int)).mean(), "holes are filled, not left black"


def test_shipped_saved_model_agrees_with_onnx():
    from inpaint.core.onnx_model import OnnxModel
    from inpaint.trainer.savedmodel import load_serving_signature

    image = photo_like(96, 130, seed=3)[None]
    mask = stroke_mask_in_bucket(96, 130, 0.3, 0.5, np.random.default_rng(4))[None, ..., None]
    tf_out = load_serving_signature(PRETRAINED)(image=image, mask=mask)["inpainted"].numpy()
    onnx_out = OnnxModel(PRETRAINED / "model.onnx").inpaint(image, mask)
    assert np.abs(tf_out.astype(int) - onnx_out.astype(int)).max() <= 1


@pytest.mark.slow  # trains
def test_a_finished_checkpoint_publishes_as_the_next_version(tmp_path):
    """What a run under another Keras backend (JAX on a GPU) leaves behind, published under TensorFlow."""
    from inpaint.trainer.savedmodel import load_serving_signature
    from inpaint.trainer.train import TrainConfig, build_model, publish_checkpoint, save_checkpoint

    config = TrainConfig(data="samples", init_weights="", image_size=32, depth=2, base_filters=8, coarse_side=16,
                         checkpoint_dir=str(tmp_path / "run"), model_base_path=str(tmp_path / "unused"))
    model = build_model(config)
    image = photo_like(40, 56, seed=5)[None]
    mask = stroke_mask_in_bucket(40, 56, 0.1, 0.3, np.random.default_rng(6))[None, ..., None]
    save_checkpoint(model, config, {"config": dataclasses.asdict(config)})

    version = publish_checkpoint(tmp_path / "run", str(tmp_path / "models"))
    assert version == tmp_path / "models" / "1"
    record = json.loads((version / "assets.extra" / "run.json").read_text())
    assert record["published_from"] == str(tmp_path / "run") and record["config"]["base_filters"] == 8
    out = load_serving_signature(version)(image=image, mask=mask)["inpainted"].numpy()
    pixels = np.concatenate([image / 255.0 * (1 - mask), mask], -1).astype(np.float32)  # 40 x 56: no padding
    expected = np.asarray(model(pixels))
    hole = mask[0, ..., 0] > 0
    reference = np.round(np.clip(expected[0], 0, 1) * 255)
    assert np.abs(out[0][hole].astype(int) - reference[hole]).max() <= 1, "the published weights are the saved ones"


def test_publishing_a_folder_without_a_finished_run_is_an_error(tmp_path):
    from inpaint.trainer.errors import BackupError
    from inpaint.trainer.train import publish_checkpoint

    with pytest.raises(BackupError, match="no finished run"):
        publish_checkpoint(tmp_path, str(tmp_path / "models"))


@pytest.mark.slow  # trains
def test_the_default_starts_from_the_shipped_weights(tmp_path):
    """`make train` fine-tunes the shipped model: its weights load by name into the default architecture."""
    from inpaint.core.onnx_model import OnnxModel
    from inpaint.trainer.savedmodel import load_serving_signature
    from inpaint.trainer.train import TrainConfig, train

    defaults = TrainConfig()
    assert (ROOT / defaults.init_weights).resolve() == PRETRAINED
    # The default's architecture, the shipped fill (smoothing 0), and a learning rate that changes nothing.
    config = TrainConfig(data="samples", init_weights=str(PRETRAINED), model_base_path=str(tmp_path / "m"),
                         smoothing=0, image_size=32, batch_size=2, epochs=1, steps_per_epoch=1,
                         learning_rate=1e-12, validation_size=2)
    version = train(config)
    image = photo_like(64, 80, seed=7)[None]
    mask = stroke_mask_in_bucket(64, 80, 0.1, 0.3, np.random.default_rng(8))[None, ..., None]
    tuned = load_serving_signature(version)(image=image, mask=mask)["inpainted"].numpy()
    shipped = OnnxModel(PRETRAINED / "model.onnx").inpaint(image, mask)
    assert np.abs(tuned.astype(int) - shipped.astype(int)).max() <= 1


def test_init_weights_of_another_architecture_is_a_one_line_error(tmp_path):
    from click.testing import CliRunner

    from inpaint.trainer.train import main

    result = CliRunner().invoke(main, ["--data", "samples", "--init-weights", str(PRETRAINED), "--base-filters", "8",
                                       "--model-base-path", str(tmp_path / "m")])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and "does not match this architecture" in result.output
    assert "Traceback" not in result.output
