"""``inpaint-eval`` at three sizes, on a fill-128 ONNX model and small photos written by the test."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import random_image, write_png
from inpaint.export import evaluate
from inpaint.export.evaluate import main
from inpaint.trainer import metrics

# (height, width): the last photo is too small for 256 px crops and must be skipped for them only.
PHOTO_SHAPES = {"a.png": (280, 320), "b.png": (300, 260), "small.png": (150, 200)}
ARGS = ["--count-64", "4", "--count-256", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for index, (name, (height, width)) in enumerate(PHOTO_SHAPES.items()):
        write_png(folder / name, random_image(height, width, seed=index))
    return folder


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    from onnx_models import write_version

    base = tmp_path_factory.mktemp("models") / "inpaint"
    write_version(base, 1)
    return base


@pytest.fixture(scope="module")
def evaluated(model_base, photos_dir, tmp_path_factory):
    """One evaluation at all three sizes: the CLI result and its report folder."""
    report = tmp_path_factory.mktemp("report")
    result = CliRunner().invoke(main, [str(model_base), "--data", str(photos_dir), "--report", str(report), *ARGS])
    return result, report


def test_cli_prints_one_row_per_size_and_mask_set(evaluated):
    result, _ = evaluated
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0] == ("| size | masks | hole % | model | telea | ns | no fill | model / NS "
                       "| texture model | telea | ns | no fill | box SSIM model | telea | ns | no fill |")
    assert all(row.count("|") == rows[0].count("|") for row in rows)
    assert [tuple(cell.strip() for cell in row.split("|")[1:3]) for row in rows[1:]] == [
        (size, name) for size in evaluate.SIZES for name in evaluate.MASK_SETS]
    assert "worst model / NS" in result.output


def test_json_has_nine_rows_and_ratios_are_model_over_ns(evaluated, photos_dir):
    _, report = evaluated
    summary = json.loads((report / "eval.json").read_text())
    assert summary["seed"] == 3 and summary["test_data"] == str(photos_dir)
    assert list(summary["sizes"]) == ["64", "256", "whole"]
    ratios = summary["model_hole_mae_over_ns"]
    assert len(ratios) == 9
    for size, by_set in summary["sizes"].items():
        assert list(by_set) == ["lines", "strokes 10%-30%", "strokes 30%-50%"]
        for name, row in by_set.items():
            scores = row["metrics"]
            assert set(scores) == {"model", "telea", "ns", "no_fill"}
            assert all(list(s) == list(evaluate.EVAL_METRICS) for s in scores.values())
            assert all(math.isfinite(value) for s in scores.values() for value in s.values())
            for method in evaluate.METHODS:
                assert 0.0 <= scores[method]["texture"] <= metrics.TEXTURE_CAP, (size, name, method)
                assert -1.0 <= scores[method]["hole_box_ssim"] < scores[method]["ssim"] <= 1.0, (size, name, method)
            if name != "lines":  # strokes have an interior: black holes and the fill-128 model are flat
                assert scores["no_fill"]["texture"] == scores["model"]["texture"] == 0.0
            ratio = ratios[f"{size} {name}"]
            assert math.isfinite(ratio) and ratio > 0
            assert ratio == pytest.approx(scores["model"]["hole_mae"] / scores["ns"]["hole_mae"])
            assert scores["no_fill"]["hole_mae"] > scores["ns"]["hole_mae"], "NS beats leaving holes black"
    assert summary["worst_ratio"] == max(ratios.values())
    assert {size: summary["sizes"][size]["lines"]["count"] for size in ("64", "256", "whole")} == {
        "64": 4, "256": 2, "whole": 3}


def test_whole_photo_masks_are_at_each_photos_own_resolution(evaluated):
    _, report = evaluated
    whole = json.loads((report / "eval.json").read_text())["sizes"]["whole"]
    for (low, high), name in zip(((0.0, 1.0),) + evaluate.STROKE_BUCKETS, evaluate.MASK_SETS):
        images = whole[name]["images"]
        assert [image["name"] for image in images] == list(PHOTO_SHAPES)
        assert [(image["height"], image["width"]) for image in images] == list(PHOTO_SHAPES.values())
        assert all(low <= image["hole_ratio"] < high for image in images), name


def test_examples_png_has_a_row_per_size_and_mask_set(evaluated):
    from inpaint.core.images import read_image

    _, report = evaluated
    grid = read_image(report / "examples.png")
    assert grid.shape[0] == evaluate.EXAMPLE_HEADER_HEIGHT + 9 * (evaluate.EXAMPLE_TILE_HEIGHT + evaluate.EXAMPLE_GAP)
    assert grid.shape[1] > evaluate.EXAMPLE_LABEL_WIDTH + 5 * evaluate.EXAMPLE_TILE_HEIGHT


def test_full_size_examples_are_the_first_whole_photo(evaluated, photos_dir):
    from inpaint.core.images import read_image

    _, report = evaluated
    truth = read_image(photos_dir / "a.png")
    files = sorted(p.name for p in (report / "examples_full").iterdir())
    assert files == sorted([f"{evaluate.slug(name)}_{column}.png" for name in evaluate.MASK_SETS
                            for column in evaluate.FULL_EXAMPLE_COLUMNS]
                           + [f"closeup_{evaluate.slug(name)}.png" for name in evaluate.MASK_SETS])
    np.testing.assert_array_equal(read_image(report / "examples_full/lines_truth.png"), truth)
    filled = read_image(report / "examples_full/lines_model.png")
    assert filled.shape == truth.shape and (filled == 128).all(axis=-1).any(), "the fill model's holes"


def test_closeups_are_1_to_1_crops_of_the_photo_named_in_the_json(evaluated, photos_dir):
    from inpaint.core.images import read_image

    _, report = evaluated
    whole = json.loads((report / "eval.json").read_text())["sizes"]["whole"]
    for name in evaluate.MASK_SETS:
        window = whole[name]["closeup"]
        truth = read_image(photos_dir / window["image"])
        height, width = window["height"], window["width"]
        side = evaluate.CLOSEUP_SIDE
        assert (height, width) == (min(side, truth.shape[0]), min(side, truth.shape[1]))
        picture = read_image(report / f"examples_full/closeup_{evaluate.slug(name)}.png")
        columns = len(evaluate.FULL_EXAMPLE_COLUMNS)
        assert picture.shape == (evaluate.EXAMPLE_HEADER_HEIGHT + height, columns * (width + evaluate.EXAMPLE_GAP)
                                 - evaluate.EXAMPLE_GAP, 3)
        left = (columns - 1) * (width + evaluate.EXAMPLE_GAP)  # truth is the last panel
        top, left_in_photo = window["top"], window["left"]
        np.testing.assert_array_equal(picture[evaluate.EXAMPLE_HEADER_HEIGHT:, left:],
                                      truth[top : top + height, left_in_photo : left_in_photo + width])


def test_the_closeup_window_is_where_the_hole_covers_the_most_texture():
    image = np.full((200, 300, 3), 120, np.uint8)
    image[:, 200:] = np.random.default_rng(1).integers(0, 256, (200, 100, 3))
    mask = np.zeros((200, 300), np.uint8)
    mask[80:120, 20:280] = 1  # a thick stroke across flat grey and noise
    window = evaluate.closeup_window(image, mask, side=64)
    assert (window.height, window.width) == (64, 64)
    assert window.left >= 200 - 1 and 80 - 64 < window.top < 120, window
    assert mask[window.top : window.top + 64, window.left : window.left + 64].mean() <= evaluate.CLOSEUP_MAX_HOLE
    again = evaluate.closeup_window(image, mask, side=64)
    assert again == window, "deterministic"
    small = evaluate.closeup_window(image, mask, side=1000)
    assert (small.top, small.left, small.height, small.width) == (0, 0, 200, 300)
    flat = evaluate.MaskSet("whole", "lines", [image * 0 + 7, image], [mask, mask], ["flat", "noisy"])
    assert evaluate.pick_closeup(flat).index == 1


@pytest.mark.parametrize("sizes", ["128", "64,huge", " , "])
def test_bad_sizes_is_a_usage_error(model_base, sizes):
    result = CliRunner().invoke(main, [str(model_base), "--sizes", sizes])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--sizes'" in result.output and "pick from 64,256,whole" in result.output


def test_no_photo_large_enough_is_a_one_line_error(model_base, tmp_path):
    write_png(tmp_path / "tiny.png", random_image(100, 120))
    result = CliRunner().invoke(main, [str(model_base), "--data", str(tmp_path), "--sizes", "64,256",
                                       "--report", str(tmp_path / "report")])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "leave 256 out of --sizes" in lines[0]


def _photos():
    return [evaluate.Photo(name, random_image(h, w, seed=i)) for i, (name, (h, w)) in enumerate(PHOTO_SHAPES.items())]


def test_photos_too_small_for_a_crop_size_are_skipped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        usable = evaluate.usable_photos(_photos(), "256")
    assert [photo.name for photo in usable] == ["a.png", "b.png"]
    assert "small.png (200x150)" in caplog.text
    assert len(evaluate.usable_photos(_photos(), "64")) == 3


def test_each_set_has_its_own_seed_stream():
    photos, counts = _photos(), {"64": 3, "256": 1}
    everything = evaluate.build_test_sets(photos, ("64", "whole"), counts, seed=5)
    whole_only = evaluate.build_test_sets(photos, ("whole",), counts, seed=5, max_whole_photos=2)
    assert [s.label for s in everything] == [f"{size} {name}" for size in ("64", "whole")
                                            for name in evaluate.MASK_SETS]
    for mine, again in zip(everything[3:], whole_only):
        assert mine.names[:2] == again.names == ["a.png", "b.png"]
        for mask, other in zip(mine.masks, again.masks):
            np.testing.assert_array_equal(mask, other)
    lines, strokes = everything[0].masks, everything[1].masks
    assert not any(np.array_equal(a, b) for a, b in zip(lines, strokes))


def test_pooled_batches_equal_scoring_one_batch():
    rng = np.random.default_rng(0)
    images = np.stack([random_image(32, 32, seed) for seed in range(5)])
    output = np.clip(images.astype(int) + rng.integers(-30, 30, images.shape), 0, 255).astype(np.uint8)
    masks = np.stack([evaluate.draw_mask(1, 32, 32, rng) for _ in range(5)])
    masks[3] = 0  # an image without a hole: no hole box, no texture
    pooled, per_image = evaluate.PooledMetrics(), evaluate.PooledMetrics()
    for part in (slice(0, 2), slice(2, 5)):
        pooled.add(images[part], output[part], masks[part])
    for index in range(5):  # as whole photos are scored: one at a time
        per_image.add(images[index : index + 1], output[index : index + 1], masks[index : index + 1])
    expected = metrics.all_metrics(images, output, masks, evaluate.EVAL_METRICS)
    assert pooled.result() == pytest.approx(expected)
    assert per_image.result() == pytest.approx(expected)
    assert list(pooled.result()) == list(evaluate.EVAL_METRICS)


def test_without_data_the_run_sources_held_out_photos_are_used_whole():
    source, photos = evaluate.evaluation_photos(None, {"config": {"data": "samples"}})
    assert source == "samples (held out)"
    assert [(p.name, p.pixels.shape) for p in photos] == [("astronaut.png", (512, 512, 3)),
                                                           ("coffee.png", (400, 600, 3))]
