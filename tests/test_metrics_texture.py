"""The blur-seeing metrics: texture (fill gradient / truth gradient in the holes) and hole-box SSIM."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from inpaint.trainer import metrics


def textured(count: int = 2, side: int = 64, seed: int = 0) -> np.ndarray:
    """Fine noise plus stripes, kept within 40-215 so that shifted fills never clip."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 1.0, (count, side, side, 3)).astype(np.float32)
    noise = np.stack([cv2.GaussianBlur(image, (0, 0), 1.0) for image in noise])
    stripes = np.sin(np.arange(side) / 2.0)[None, None, :, None]
    image = 127.5 + 40 * noise / noise.std() + 30 * stripes
    return np.clip(np.round(image), 40, 215).astype(np.uint8)


def box_hole(count: int = 2, side: int = 64) -> np.ndarray:
    mask = np.zeros((count, side, side), np.uint8)
    mask[:, 16:40, 20:52] = 1
    return mask


def fill(truth: np.ndarray, mask: np.ndarray, values) -> np.ndarray:
    return np.where(mask[..., None] > 0, values, truth).astype(np.uint8)


def test_a_copy_of_the_truth_scores_one():
    truth, mask = textured(), box_hole()
    assert metrics.texture(truth, truth.copy(), mask) == 1.0


def test_a_flat_fill_scores_zero():
    truth, mask = textured(), box_hole()
    assert metrics.texture(truth, fill(truth, mask, 128), mask) == 0.0


def test_a_half_amplitude_copy_scores_a_half():
    truth, mask = textured(), box_hole()
    half = np.round(64 + truth.astype(np.float64) / 2)
    assert metrics.texture(truth, fill(truth, mask, half), mask) == pytest.approx(0.5, abs=0.01)


def test_the_seam_at_the_hole_border_does_not_count():
    """A copy shifted in brightness has a step at the hole's edge but the photo's texture inside."""
    truth, mask = textured(), box_hole()
    brighter = fill(truth, mask, truth.astype(np.int32) + 40)
    assert metrics.texture(truth, brighter, mask) == pytest.approx(1.0, abs=1e-6)
    # With the border counted, the step would add gradient.
    fill_sum = metrics.gradient_magnitude(brighter)[mask > 0].sum()
    assert fill_sum > 1.02 * metrics.gradient_magnitude(truth)[mask > 0].sum()


def test_the_scored_region_is_the_hole_eroded_by_one_pixel_except_at_the_image_edge():
    mask = np.zeros((1, 20, 20), np.uint8)
    mask[0, 5:12, 4:10] = 1
    mask[0, 0:4, 14:20] = 1  # touches the top and right edges
    expected = np.zeros((20, 20), bool)
    expected[6:11, 5:9] = True
    expected[0:3, 15:20] = True
    np.testing.assert_array_equal(metrics.texture_region(mask)[0], expected)


@pytest.mark.parametrize("thickness", [1, 2])
def test_a_thin_line_hole_is_scored_on_its_own_pixels(thickness):
    truth = textured(1)
    mask = np.zeros((1, 64, 64), np.uint8)
    cv2.line(mask[0], (3, 5), (60, 58), 1, 1)
    mask[0, 30 : 30 + thickness, 4:60] = 1
    np.testing.assert_array_equal(metrics.texture_region(mask), mask > 0)
    assert metrics.texture(truth, truth.copy(), mask) == 1.0
    flat = metrics.texture(truth, fill(truth, mask, 128), mask)
    assert math.isfinite(flat) and 0.0 < flat < 2.0, "the seam counts there, and nothing is NaN"


def test_a_thin_line_beside_a_thick_hole_is_left_out():
    mask = box_hole(1)
    cv2.line(mask[0], (0, 60), (63, 60), 1, 1)
    region = metrics.texture_region(mask)[0]
    assert not region[60].any() and region[20, 30]


def test_a_batch_pools_sums_not_ratios():
    truth, mask = textured(), box_hole()
    copy_then_flat = np.stack([truth[0], fill(truth[1:], mask[1:], 128)[0]])
    fill_sum, truth_sum = metrics.texture_sums(truth, copy_then_flat, mask)
    first = metrics.texture_sums(truth[:1], truth[:1], mask[:1])[1]
    assert fill_sum == pytest.approx(first) and truth_sum > first
    assert metrics.texture(truth, copy_then_flat, mask) == pytest.approx(first / truth_sum)
    # An image without holes adds nothing.
    with_empty = np.concatenate([mask, np.zeros_like(mask[:1])])
    more = np.concatenate([truth, textured(1, seed=5)])
    assert metrics.texture_sums(more, more, with_empty) == pytest.approx((truth_sum, truth_sum))


def test_a_flat_truth_is_one_for_a_flat_fill_and_capped_otherwise():
    flat, mask = np.full((1, 32, 32, 3), 90, np.uint8), box_hole(1, 32)
    assert metrics.texture(flat, flat.copy(), mask) == 1.0
    noisy = fill(flat, mask, textured(1, 32))
    assert metrics.texture(flat, noisy, mask) == metrics.TEXTURE_CAP
    assert metrics.texture(flat, flat, np.zeros_like(mask)) == 1.0, "no hole at all"


def test_hole_box_ssim_is_one_for_a_copy_and_lower_for_a_flat_fill():
    truth, mask = textured(), box_hole()
    flat = fill(truth, mask, 128)
    assert metrics.hole_box_ssim(truth, truth.copy(), mask) == pytest.approx(1.0)
    box = metrics.hole_box_ssim(truth, flat, mask)
    assert box < 0.5
    assert box < metrics.ssim(truth, flat, mask), "the known pixels around the box no longer lift it"
    assert metrics.hole_box_ssim(truth, flat, np.zeros_like(mask)) == 1.0


def test_hole_box_is_grown_and_clipped_to_the_image():
    mask = np.zeros((40, 50), bool)
    mask[10:12, 3:30] = True
    rows, columns = metrics.hole_box(mask)
    margin = metrics.HOLE_BOX_MARGIN
    assert (rows, columns) == (slice(10 - margin, 12 + margin), slice(0, 30 + margin))
    assert metrics.hole_box(np.zeros((4, 4), bool)) is None


def test_all_metrics_knows_the_new_names():
    truth, mask = textured(), box_hole()
    scores = metrics.all_metrics(truth, truth.copy(), mask, ("texture", "hole_box_ssim"))
    assert scores == pytest.approx({"texture": 1.0, "hole_box_ssim": 1.0})
    assert set(metrics.all_metrics(truth, truth, mask)) == set(metrics.METRIC_NAMES), "training's set unchanged"
