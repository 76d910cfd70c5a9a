import numpy as np
import pytest

from inpaint.core import masks


@pytest.mark.parametrize("kind", masks.MASK_KINDS)
def test_generators_are_seeded_and_binary(kind):
    first = masks.mask_batch(kind, 8, 48, 40, seed=3)
    again = masks.mask_batch(kind, 8, 48, 40, seed=3)
    other = masks.mask_batch(kind, 8, 48, 40, seed=4)
    assert first.shape == (8, 48, 40) and first.dtype == np.uint8
    assert set(np.unique(first)) <= {0, 1}
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert all(m.any() for m in first), "every mask has at least one hole pixel"


def test_lines_follow_the_report_at_32_pixels():
    rng = np.random.default_rng(0)
    ratios = np.array([masks.line_mask(32, 32, rng).mean() for _ in range(500)])
    # The report: about 14 % hole on average, between 0.2 % and 39 %.
    assert 0.08 < ratios.mean() < 0.2
    assert ratios.min() > 0.0 and ratios.max() < 0.45


def test_lines_scale_with_the_image():
    small = np.mean([masks.line_mask(32, 32, np.random.default_rng(s)).mean() for s in range(200)])
    large = np.mean([masks.line_mask(128, 128, np.random.default_rng(s)).mean() for s in range(200)])
    assert abs(small - large) < 0.05, "the same fraction of the image is covered at any size"


@pytest.mark.parametrize("low,high", masks.HOLE_RATIO_BUCKETS)
def test_stroke_buckets_hit_their_hole_ratio(low, high):
    rng = np.random.default_rng(1)
    for _ in range(10):
        ratio = masks.stroke_mask_in_bucket(64, 64, low, high, rng).mean()
        assert low <= ratio < high


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown mask kind 'circles'"):
        masks.generate_mask("circles", 8, 8, np.random.default_rng(0))


def test_light_modules_import_without_tensorflow():
    import subprocess
    import sys

    code = ("import sys, inpaint.core.masks, inpaint.trainer.data, inpaint.trainer.metrics, "
            "inpaint.core.repository; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)
