"""Image-quality metrics, shared by training-time validation and evaluation.

All functions take uint8 batches ``(N, H, W, 3)`` of the truth and the
composited output, plus the ``(N, H, W)`` hole mask, and work on the [0, 1]
scale, as the founding report's tables do.

Two of them see blur, which hole-MAE rewards (the mean of all plausible fills
is a blur): ``texture`` (how much of the photo's gradient the fill carries)
and ``hole_box_ssim`` (SSIM where the holes are, not over the whole image).
"""

from __future__ import annotations

import cv2
import numpy as np

METRIC_NAMES = ("mae", "hole_mae", "psnr", "ssim", "dice")
PSNR_CAP_DB = 100.0  # identical images would give infinity
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, on RGB
SOBEL_REACH = 1  # the 3x3 Sobel kernel sees one pixel on each side
TEXTURE_CAP = 10.0  # a fill with gradient where the truth has none would give infinity
HOLE_BOX_MARGIN = 6  # px around a hole's bounding box: every 7x7 SSIM window that touches a hole pixel


def composite(image: np.ndarray, mask: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Known pixels from ``image``, hole pixels from ``prediction`` (float in [0, 1] or uint8)."""
    if prediction.dtype != np.uint8:
        prediction = np.round(np.clip(prediction, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.where(mask[..., None] > 0, prediction, image)


def _unit(batch: np.ndarray) -> np.ndarray:
    return batch.astype(np.float64) / 255.0


def mae(truth: np.ndarray, output: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute error over the whole image (the report's figure)."""
    return float(np.abs(_unit(truth) - _unit(output)).mean())


def hole_mae(truth: np.ndarray, output: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute error over hole pixels only: the number that shows the real gap."""
    holes = np.broadcast_to(mask[..., None] > 0, truth.shape)
    if not holes.any():
        return 0.0
    return float(np.abs(_unit(truth) - _unit(output))[holes].mean())


def psnr(truth: np.ndarray, output: np.ndarray, mask: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, averaged over images."""
    mse = ((_unit(truth) - _unit(output)) ** 2).reshape(len(truth), -1).mean(axis=1)
    values = np.where(mse > 0, 10 * np.log10(1.0 / np.maximum(mse, 1e-20)), PSNR_CAP_DB)
    return float(np.minimum(values, PSNR_CAP_DB).mean())


def _ssim_one(truth: np.ndarray, output: np.ndarray, win: int) -> float:
    """scikit-image's ``structural_similarity`` (uniform window, sample covariance, data range 255,
    borders cropped, channels averaged), computed with OpenCV box filters: the same number, and fast
    enough for whole photos."""
    x, y = truth.astype(np.float32), output.astype(np.float32)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    cov_norm = win * win / (win * win - 1.0)

    def mean(image):
        return cv2.boxFilter(image, -1, (win, win), borderType=cv2.BORDER_REFLECT)

    ux, uy = mean(x), mean(y)
    vx, vy, vxy = (cov_norm * (mean(a * b) - ua * ub) for a, b, ua, ub in ((x, x, ux, ux), (y, y, uy, uy),
                                                                             (x, y, ux, uy)))
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return float(s[pad:s.shape[0] - pad, pad:s.shape[1] - pad].mean())


def ssim(truth: np.ndarray, output: np.ndarray, mask: np.ndarray) -> float:
    """Structural similarity (scikit-image's definition, 7x7 window), averaged over images."""
    win = min(7, *truth.shape[1:3]) | 1  # odd and no larger than the image
    return float(np.mean([_ssim_one(t, o, win) for t, o in zip(truth, output)]))


def hole_box(mask: np.ndarray, margin: int = HOLE_BOX_MARGIN) -> tuple[slice, slice] | None:
    """The bounding box of one ``(H, W)`` mask's hole pixels grown by ``margin`` and clipped to the
    image, as ``(rows, columns)`` slices; None if the mask has no hole."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    height, width = mask.shape
    return (slice(max(0, rows[0] - margin), min(height, rows[-1] + 1 + margin)),
            slice(max(0, columns[0] - margin), min(width, columns[-1] + 1 + margin)))


def hole_box_ssim(truth: np.ndarray, output: np.ndarray, mask: np.ndarray) -> float:
    """SSIM (as ``ssim``) over each image's hole box, averaged over the images that have a hole.

    An image's hole box is the bounding box of all its hole pixels (one box, even for several
    strokes), grown by ``HOLE_BOX_MARGIN`` = 6 px so that every 7x7 window touching a hole pixel
    is scored, and clipped to the image. Unlike whole-image SSIM, which the known pixels pull
    towards 1, it drops when the fill is blurred. No hole anywhere: 1.0 (output = truth).
    """
    values = []
    for image_truth, image_output, image_mask in zip(truth, output, mask):
        box = hole_box(image_mask > 0)
        if box is not None:
            win = min(7, *image_truth[box].shape[:2]) | 1
            values.append(_ssim_one(image_truth[box], image_output[box], win))
    return float(np.mean(values)) if values else 1.0


def gradient_magnitude(images: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` float32: the 3x3 Sobel gradient magnitude of each image's luma on the [0, 1] scale
    (BT.601 weights on RGB; the image's edges reflected, OpenCV's default)."""
    out = np.empty(images.shape[:3], np.float32)
    for index, image in enumerate(images):
        grey = image.astype(np.float32) @ (LUMA_WEIGHTS / 255.0)
        dx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
        dy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
        out[index] = cv2.magnitude(dx, dy)
    return out


def texture_region(mask: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` bool: the hole pixels whose texture is scored.

    Each image's hole eroded by the Sobel kernel's reach (a 3x3 square, once): what remains are the
    hole pixels whose whole 3x3 neighbourhood is hole, so every gradient scored is computed from
    fill pixels only, never across the seam with the known pixels. (Pixels outside the image count
    as hole: a hole at the image's edge is not eroded there, and Sobel reflects fill pixels there.)

    Thin holes: an image whose hole has no interior (lines 1-2 px wide everywhere) is scored on its
    hole pixels themselves, seam included, so that it still counts; there a flat fill scores above 0
    by the step at the seam. An image with a thick part keeps only that part's interior.
    """
    holes = (mask > 0).astype(np.uint8)
    kernel = np.ones((2 * SOBEL_REACH + 1,) * 2, np.uint8)
    region = np.empty(holes.shape, bool)
    for index, hole in enumerate(holes):
        interior = cv2.erode(hole, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=1) > 0
        region[index] = interior if interior.any() else hole > 0
    return region


def texture_sums(truth: np.ndarray, output: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """The sum of the output's and of the truth's gradient magnitude over ``texture_region``:
    the numerator and denominator of ``texture``, so that batches pool by adding them."""
    region = texture_region(mask)
    if not region.any():
        return 0.0, 0.0
    return (float(gradient_magnitude(output)[region].sum(dtype=np.float64)),
            float(gradient_magnitude(truth)[region].sum(dtype=np.float64)))


def texture_from_sums(fill: float, truth: float) -> float:
    """``fill / truth``, capped at ``TEXTURE_CAP``; where the truth has no gradient at all, 1.0 for a
    flat fill (as much texture as the photo: none) and the cap otherwise."""
    if truth <= 0.0:
        return 1.0 if fill <= 0.0 else TEXTURE_CAP
    return min(fill / truth, TEXTURE_CAP)


def texture(truth: np.ndarray, output: np.ndarray, mask: np.ndarray) -> float:
    """How much of the photo's texture the fill carries: 1.0 as much as the photo, 0 for a flat fill.

    The Sobel gradient magnitude of the output's luma summed over the batch's ``texture_region``
    (the holes without their 1-px border), divided by the same sum on the truth. Pooled over the
    batch as one sum over all its scored pixels (not a mean of per-image ratios), so images with
    more hole and more texture weigh more. Above 1: more gradient than the photo (noise, streaks).
    """
    return texture_from_sums(*texture_sums(truth, output, mask))


def dice(truth: np.ndarray, output: np.ndarray, mask: np.ndarray) -> float:
    """The founding report's soft Dice coefficient, kept only to compare with it.

    It carries no signal: a perfect reconstruction scores sum(y^2)/sum(y),
    about 0.6 on natural images, not 1.
    """
    y, p = _unit(truth), _unit(output)
    return float(2 * (y * p).sum() / max(y.sum() + p.sum(), 1e-12))


def all_metrics(truth: np.ndarray, output: np.ndarray, mask: np.ndarray,
                names: tuple[str, ...] = METRIC_NAMES) -> dict[str, float]:
    functions = {"mae": mae, "hole_mae": hole_mae, "psnr": psnr, "ssim": ssim, "dice": dice,
                 "texture": texture, "hole_box_ssim": hole_box_ssim}
    return {name: functions[name](truth, output, mask) for name in names}
