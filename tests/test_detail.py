"""The detail pass (core/detail.py): texture borrowed from the photo's known pixels, only in the holes."""

from __future__ import annotations

import json
import tracemalloc

import cv2
import numpy as np
import pytest

from inpaint.core.detail import DetailOptions, add_detail, finish_fills, load_detail
from inpaint.core.repository import DETAIL_RECORD
from inpaint.trainer import metrics


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like texture: smoothed noise (grain of a few pixels) on a colour gradient."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0, 40, (height, width, 3)).astype(np.float32), (0, 0), 1.0)
    ramp = np.linspace(80, 160, width, dtype=np.float32)[None, :, None]
    return np.clip(ramp + noise, 0, 255).astype(np.uint8)


def stroke(height: int, width: int, thickness: int) -> np.ndarray:
    holes = np.zeros((height, width), np.uint8)
    cv2.line(holes, (width // 8, height // 3), (7 * width // 8, 2 * height // 3), 1, thickness)
    return holes > 0


def blurred_fill(truth: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """What an L1 network does to a textured hole: the right colours, no grain."""
    smooth = cv2.GaussianBlur(truth, (0, 0), 6)
    return np.where(holes[..., None], smooth, truth)


def texture_of(truth: np.ndarray, output: np.ndarray, holes: np.ndarray) -> float:
    return metrics.texture(truth[None], output[None], holes[None].astype(np.uint8))


def test_a_blurred_fill_gets_the_photos_texture_back_in_proportion_to_the_amount():
    truth, holes = textured(256, 256), stroke(256, 256, 40)
    fill = blurred_fill(truth, holes)
    before = texture_of(truth, fill, holes)
    after = {}
    for amount in (0.5, 1.0):
        output = fill.copy()
        add_detail(output, holes, DetailOptions(amount=amount))
        after[amount] = texture_of(truth, output, holes)
    assert before < 0.2
    assert 0.8 <= after[1.0] <= 1.25  # the sources carry the same grain as the truth
    assert 0.35 <= after[0.5] <= 0.7


def test_only_hole_pixels_change_and_one_input_gives_one_output():
    truth, holes = textured(200, 300, seed=1), stroke(200, 300, 30)
    fill = blurred_fill(truth, holes)
    first, second = fill.copy(), fill.copy()
    add_detail(first, holes, DetailOptions(amount=1.0))
    add_detail(second, holes, DetailOptions(amount=1.0))
    np.testing.assert_array_equal(first[~holes], fill[~holes])
    np.testing.assert_array_equal(first, second)
    assert np.count_nonzero(first[holes] != fill[holes]) > 0.5 * first[holes].size


def test_off_flat_photos_and_holes_without_known_sources_change_nothing():
    truth, holes = textured(128, 128), stroke(128, 128, 20)
    fill = blurred_fill(truth, holes)
    output = fill.copy()
    add_detail(output, holes, DetailOptions())  # amount 0: off
    np.testing.assert_array_equal(output, fill)
    flat = np.full((128, 128, 3), 90, np.uint8)
    output = flat.copy()
    add_detail(output, holes, DetailOptions(amount=1.0))  # no texture to borrow
    np.testing.assert_array_equal(output, flat)
    output = fill.copy()
    add_detail(output, np.ones((128, 128), bool), DetailOptions(amount=1.0))  # nothing known
    np.testing.assert_array_equal(output, fill)


def test_photos_over_the_threshold_take_the_tiled_amount():
    truth, holes = textured(160, 160), stroke(160, 160, 24)
    fill = blurred_fill(truth, holes)
    options = DetailOptions(amount=0.0, amount_tiled=1.0)
    whole, tiled = fill[None].copy(), fill[None].copy()
    finish_fills(whole, holes[None], options, False)
    finish_fills(tiled, holes[None, ..., None].astype(np.uint8), options, True)
    np.testing.assert_array_equal(whole[0], fill)
    assert texture_of(truth, tiled[0], holes) > 0.7


def test_odd_sizes_and_holes_at_the_edges_are_filled_everywhere():
    truth = textured(101, 133, seed=2)
    holes = np.zeros((101, 133), bool)
    holes[90:, :] = True  # the partial last cell row
    holes[:, 128:] = True  # and column
    fill = blurred_fill(truth, holes)
    output = fill.copy()
    add_detail(output, holes, DetailOptions(amount=1.0))
    changed = output != fill
    assert changed[95:, :120].any() and changed[:80, 130:].any()
    np.testing.assert_array_equal(output[~holes], fill[~holes])


def test_memory_is_bounded_by_what_the_server_reserves():
    """The pass's own allocations stay under ``work_bytes``, and do not grow with the photo like a float copy."""
    options = DetailOptions(amount=1.0)
    peaks = {}
    for height, width in ((600, 800), (1800, 2400)):
        truth, holes = textured(height, width), stroke(height, width, height // 6)
        output = blurred_fill(truth, holes)
        tracemalloc.start()
        add_detail(output, holes, options)
        peaks[height] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peaks[height] <= options.work_bytes(height, width), (height, peaks[height])
    # 9x the pixels: a float32 copy of the photo alone would be 9x (and 52 MB); the pass grows far less.
    assert peaks[1800] < 4 * peaks[600]
    assert peaks[1800] < 4 * 1800 * 2400 * 3


def test_a_version_declares_its_pass_and_a_malformed_declaration_names_the_file(tmp_path):
    assert load_detail(tmp_path) == DetailOptions()  # none declared: off
    record = tmp_path / DETAIL_RECORD
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"amount": 0.4, "amount_tiled": 1.0}))
    assert load_detail(tmp_path) == DetailOptions(amount=0.4, amount_tiled=1.0)
    for text, problem in (("{", "not JSON"), ('{"amuont": 1}', "amuont"), ('{"amount": 5}', "within 0-2"),
                          ("[1]", "JSON object"), ('{"sources": 100000}', "sources")):
        record.write_text(text)
        with pytest.raises(ValueError, match=problem) as error:
            load_detail(tmp_path)
        assert str(record) in str(error.value)


def test_the_exporter_declares_the_pass_keeping_what_it_is_not_told(tmp_path):
    from inpaint.export.cli import _declare_detail

    _declare_detail(tmp_path, None, None)
    assert not (tmp_path / DETAIL_RECORD).exists()  # nothing asked: nothing written
    _declare_detail(tmp_path, 0.5, None)
    assert load_detail(tmp_path) == DetailOptions(amount=0.5)
    _declare_detail(tmp_path, None, 1.2)
    assert load_detail(tmp_path) == DetailOptions(amount=0.5, amount_tiled=1.2)
