"""Large photos in windows (core/tiling.py): coverage, bit-exact known pixels, seams, cost and memory bounds."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from inpaint.core.onnx_model import OnnxModel
from inpaint.core.tiling import TilingOptions, inpaint_tiled, plan_windows, wide_holes
from inpaint.trainer.data import read_image, samples_dir


PRETRAINED = Path(__file__).resolve().parents[1] / "models" / "pretrained" / "inpaint" / "1"
ALWAYS = TilingOptions(mode="always")


class RecordingRun:
    """Wraps a model run and records the batch shapes it was called with."""

    def __init__(self, run):
        self.run, self.shapes = run, []

    def __call__(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        assert images.dtype == np.uint8 and masks.dtype == np.uint8 and masks.shape == images.shape[:3] + (1,)
        self.shapes.append(images.shape)
        return self.run(images, masks)


def telea(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """A real, local inpainting method: its fill depends on a few pixels around each hole."""
    return np.stack([cv2.inpaint(image, mask[..., 0], 3, cv2.INPAINT_TELEA) for image, mask in zip(images, masks)])


def constant(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    return np.full_like(images, 200)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photo at an odd size over a megapixel."""
    return cv2.resize(read_image(samples_dir() / "coffee.png"), (1283, 857), interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def shipped() -> OnnxModel:
    return OnnxModel(PRETRAINED / "model.onnx")


def scratches(height: int, width: int) -> np.ndarray:
    """Thin holes everywhere the geometry is awkward: corners, borders, a long diagonal, a small blob."""
    mask = np.zeros((height, width), np.uint8)
    cv2.line(mask, (0, 0), (width - 1, height - 1), 1, 7)
    cv2.line(mask, (width - 1, 0), (0, height - 1), 1, 3)
    cv2.line(mask, (0, height // 3), (width - 1, height // 3 + 5), 1, 12)  # along a whole row of cores
    mask[:, -2:] = 1  # the right border
    mask[-1, :] = 1   # the bottom border
    cv2.circle(mask, (width // 3, 2 * height // 3), 15, 1, -1)
    return mask


@pytest.mark.parametrize("size", [(857, 1283), (300, 1001), (130, 97), (4000, 45)])
def test_every_hole_pixel_is_filled_and_no_known_pixel_changes(size):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*size, 3), np.uint8)
    mask = scratches(*size)
    output = inpaint_tiled(image, mask, constant, ALWAYS)
    holes = mask > 0
    np.testing.assert_array_equal(output[~holes], image[~holes])
    assert (output[holes] == 200).all()


def test_windows_lie_inside_the_image_around_their_cores_and_cover_every_hole():
    mask = scratches(857, 1283) > 0
    windows = plan_windows(mask, ALWAYS)
    covered = np.zeros_like(mask)
    for window in windows:
        sides = {ALWAYS.window, ALWAYS.core + 2 * ALWAYS.thin_margin}
        assert window.win_height == window.win_width and window.win_height in sides
        assert 0 <= window.win_top <= 857 - window.win_height and 0 <= window.win_left <= 1283 - window.win_width
        assert window.win_top <= window.top and window.bottom <= window.win_top + window.win_height
        assert window.win_left <= window.left and window.right <= window.win_left + window.win_width
        covered[window.top : window.bottom, window.left : window.right] = True
    assert covered[mask].all()
    assert [w.top for w in windows] == sorted(w.top for w in windows)


def test_scratches_take_the_thin_margin_and_wider_holes_the_full_one():
    mask = np.zeros((1024, 1024), bool)
    mask[100:116, 40:1000] = True   # 16 px wide: every pixel within 8 px of a known one
    mask[600:617, 40:1000] = True   # 17 px wide: its middle row is 9 px from the nearest known pixel
    windows = plan_windows(mask, ALWAYS)
    sides = {w.top: w.win_height for w in windows}
    thin, full = ALWAYS.core + 2 * ALWAYS.thin_margin, ALWAYS.window
    assert set(sides.values()) == {thin, full}
    assert all(side == (thin if top < 512 else full) for top, side in sides.items())
    one_margin = TilingOptions(mode="always", thin_margin=ALWAYS.margin)
    assert {w.win_height for w in plan_windows(mask, one_margin)} == {full}


def test_a_diagonal_scratch_costs_a_strip_of_windows_not_its_bounding_box():
    height, width = 3000, 4000
    mask = np.zeros((height, width), np.uint8)
    cv2.line(mask, (0, 0), (width - 1, height - 1), 1, 12)
    windows = plan_windows(mask > 0, TilingOptions())
    area = sum(w.win_height * w.win_width for w in windows)
    # The scratch's bounding box is the whole photo; its windows cover a tenth of it at most.
    assert area < 0.1 * height * width, f"{len(windows)} windows, {area / (height * width):.2f} of the photo"


def test_every_model_run_is_bounded_by_the_window_batch():
    options = TilingOptions(mode="auto", tile_above_pixels=200_000, batch=3)
    image = np.random.default_rng(1).integers(0, 256, (1500, 1700, 3), np.uint8)
    mask = scratches(1500, 1700)
    cv2.circle(mask, (850, 750), 200, 1, -1)  # a wide hole: the downscaled pass runs too
    run = RecordingRun(constant)
    inpaint_tiled(image, mask, run, options)
    pixels = [n * h * w for n, h, w, _ in run.shapes]
    assert max(pixels) <= options.run_pixels(1500, 1700) == max(3 * options.window ** 2, 200_000)
    assert any(n == 1 and h * w <= 200_000 for n, h, w, _ in run.shapes), "the downscaled pass did not run"


def test_small_images_run_whole_under_auto():
    run = RecordingRun(constant)
    image = np.zeros((300, 400, 3), np.uint8)
    # 300 x 400 runs as 304 x 400 (the graph pads H and W to multiples of 16): that is its size for the rule
    inpaint_tiled(image, scratches(300, 400), run, TilingOptions(tile_above_pixels=304 * 400))
    assert run.shapes == [(1, 300, 400, 3)]


def test_wide_holes_are_told_apart_from_thin_ones():
    mask = np.zeros((600, 800), bool)
    mask[100:110, 50:750] = True                              # 10 px wide scratch
    disc = np.zeros((600, 800), np.uint8)
    cv2.circle(disc, (400, 400), 120, 1, -1)
    mask |= disc > 0
    wide = wide_holes(mask, 64)
    assert wide[400, 400] and wide[400, 285] and not wide[105, 60]
    assert wide_holes(mask, 0) is None and wide_holes(mask, 200) is None


def test_local_fill_in_windows_equals_the_whole_image_fill(photo):
    """Telea fills from a few pixels around each hole: windows with the same context give the same fill."""
    mask = scratches(*photo.shape[:2])
    whole = inpaint_tiled(photo, mask, telea, TilingOptions(mode="off"))
    tiled = inpaint_tiled(photo, mask, telea, TilingOptions(mode="always", wide_hole=0))
    holes = mask > 0
    difference = np.abs(whole.astype(int) - tiled.astype(int))[holes]
    assert difference.mean() < 0.5 and np.percentile(difference, 99) <= 8


def small_holes(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Blobs and short scratches, each smaller than a window's core."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    for _ in range(25):
        y, x = int(rng.integers(0, height)), int(rng.integers(0, width))
        if rng.random() < 0.5:
            cv2.circle(mask, (x, y), int(rng.integers(3, 20)), 1, -1)
        else:
            angle, length = rng.uniform(0, np.pi), rng.integers(20, 90)
            end = (int(x + length * np.cos(angle)), int(y + length * np.sin(angle)))
            cv2.line(mask, (x, y), end, 1, int(rng.integers(2, 10)))
    return mask


@pytest.mark.slow  # over 5 s
def test_the_shipped_model_in_windows_matches_the_whole_image_for_holes_smaller_than_a_core(photo, shipped):
    mask = small_holes(*photo.shape[:2])
    holes = mask > 0
    whole = shipped.inpaint(photo[None], mask[None, ..., None])[0].astype(int)
    tiled = inpaint_tiled(photo, mask, shipped.inpaint, ALWAYS)
    np.testing.assert_array_equal(tiled[~holes], photo[~holes])
    tiled = tiled.astype(int)
    difference = np.abs(whole - tiled)[holes]
    # Not identical: the model's coarse pass sees the window instead of the whole photo.
    assert np.median(difference) <= 2 and difference.mean() <= 2.5, f"mean difference {difference.mean():.2f}"
    # ... and no worse for it: the windows' fill is at least as close to the truth.
    assert np.abs(tiled - photo)[holes].mean() <= np.abs(whole - photo)[holes].mean()


@pytest.mark.slow  # over 5 s
def test_long_scratches_in_windows_are_filled_as_well_as_whole(photo, shipped):
    mask = scratches(*photo.shape[:2])
    holes = mask > 0
    whole = shipped.inpaint(photo[None], mask[None, ..., None])[0].astype(int)
    tiled = inpaint_tiled(photo, mask, shipped.inpaint, ALWAYS).astype(int)
    assert np.abs(tiled - photo)[holes].mean() <= np.abs(whole - photo)[holes].mean()


def test_no_seam_where_a_scratch_crosses_from_one_core_into_the_next(photo, shipped):
    """Across a core edge the fill changes no more than it does between neighbouring pixels inside cores."""
    height, width = photo.shape[:2]
    mask = np.zeros((height, width), np.uint8)
    row = 300
    mask[row - 5 : row + 6, :] = 1  # a horizontal scratch through a row of cores
    tiled = inpaint_tiled(photo, mask, shipped.inpaint, ALWAYS).astype(int)
    steps = np.abs(np.diff(tiled[row - 5 : row + 6], axis=1)).mean(axis=(0, 2))  # column-to-column change
    windows = plan_windows(mask > 0, ALWAYS)
    edges = sorted({w.right - 1 for w in windows if w.right < width})
    assert edges, "the scratch should span several cores"
    inside = np.delete(steps, edges)
    assert steps[edges].mean() <= 2 * inside.mean() + 1, (steps[edges], inside.mean())


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="mode"):
        TilingOptions(mode="sometimes")
    with pytest.raises(ValueError, match="feather"):
        TilingOptions(margin=8, thin_margin=8, feather=16)
    with pytest.raises(ValueError, match="thin_margin"):
        TilingOptions(margin=32, thin_margin=64)
    with pytest.raises(ValueError, match="batch"):
        TilingOptions(batch=0)


def test_a_strip_counts_as_the_run_the_graph_pads_it_to():
    """1 x 262,144 holds 0.25 MP but runs as 16 x 262,144 = 4 MP: it is tiled, and no run holds more than the
    window batch once padded."""
    from inpaint.core.contract import padded_pixels

    options = TilingOptions()
    assert options.is_tiled(1, 262_144) and options.is_tiled(1, 131_072) and not options.is_tiled(16, 65_536)
    image = np.zeros((1, 262_144, 3), np.uint8)
    mask = np.zeros((1, 262_144), np.uint8)
    mask[0, 1000:1010] = 1
    mask[0, 200_000:200_300] = 1
    run = RecordingRun(constant)
    output = inpaint_tiled(image, mask, run, options)
    assert (output[0, 1000:1010] == 200).all() and (output[mask == 0] == 0).all()
    assert max(padded_pixels(n, h, w) for n, h, w, _ in run.shapes) <= options.batch * 16 * options.window
