"""Image-quality metrics, shared by training-time validation and evaluation.

All functions take uint8 batches ``(N, H, W, 3)`` of the truth and the
composited output, plus the ``(N, H, W)`` hole mask, and work on the [0, 1]
scale, as the founding report's tables do.
"""

from __future__ import annotations

import cv2
import numpy as np

METRIC_NAMES = ("mae", "hole_mae", "psnr", "ssim", "dice")
PSNR_CAP_DB = 100.0  # identical images would give infinity


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


def dice(truth: np.ndarray, output: np.ndarray, mask: np.ndarray) -> float:
    """The founding report's soft Dice coefficient, kept only to compare with it.

    It carries no signal: a perfect reconstruction scores sum(y^2)/sum(y),
    about 0.6 on natural images, not 1.
    """
    y, p = _unit(truth), _unit(output)
    return float(2 * (y * p).sum() / max(y.sum() + p.sum(), 1e-12))


def all_metrics(truth: np.ndarray, output: np.ndarray, mask: np.ndarray,
                names: tuple[str, ...] = METRIC_NAMES) -> dict[str, float]:
    functions = {"mae": mae, "hole_mae": hole_mae, "psnr": psnr, "ssim": ssim, "dice": dice}
    return {name: functions[name](truth, output, mask) for name in names}
