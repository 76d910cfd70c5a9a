"""Hole masks, shared by training, evaluation, the CLI and the load test.

Every generator takes a ``numpy.random.Generator`` and returns a ``uint8``
array of shape ``(H, W)`` with 1 for a hole pixel and 0 for a known one, so a
seeded generator always gives the same mask. Only numpy and OpenCV are used:
the light client uses it too.
"""

from __future__ import annotations

import math
from typing import Callable

import cv2
import numpy as np

MaskFn = Callable[[int, int, np.random.Generator], np.ndarray]

# Hole-ratio buckets used by evaluation, as in the inpainting literature.
HOLE_RATIO_BUCKETS: tuple[tuple[float, float], ...] = (
    (0.0, 0.1),
    (0.1, 0.2),
    (0.2, 0.3),
    (0.3, 0.4),
    (0.4, 0.6),
)


def line_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """The founding report's generator: 1-9 straight lines of thickness 1-2 at 32 px.

    Endpoints are uniform in [1, size); the thickness scales with the image.
    """
    mask = np.zeros((height, width), np.uint8)
    scale = math.sqrt(height * width) / 32.0
    for _ in range(int(rng.integers(1, 10))):
        x1, x2 = rng.integers(1, max(2, width), size=2)
        y1, y2 = rng.integers(1, max(2, height), size=2)
        thickness = max(1, round(int(rng.integers(1, 3)) * scale))
        cv2.line(mask, (int(x1), int(y1)), (int(x2), int(y2)), 1, thickness)
    return mask


def scratch_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """1-5 thin scratches, 1-3 px wide at any image size, each a straight or slightly bent line."""
    mask = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(1, 6))):
        points = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(int(rng.integers(2, 4)))]
        thickness = int(rng.integers(1, 4))
        for start, end in zip(points, points[1:]):
            cv2.line(mask, start, end, 1, thickness)
    return mask


def _draw_stroke(mask: np.ndarray, rng: np.random.Generator) -> None:
    """One DeepFill v2 free-form stroke: a polyline of 4-12 vertices with round joints."""
    height, width = mask.shape
    mean_angle, angle_range = 2 * math.pi / 5, 2 * math.pi / 15
    mean_step = math.sqrt(height * height + width * width) / 8
    size_scale = math.sqrt(height * width) / 256.0
    stroke_width = max(1, round(float(rng.uniform(12, 40)) * size_scale))
    n_vertices = int(rng.integers(4, 13))

    angles = rng.uniform(mean_angle - angle_range, mean_angle + angle_range, n_vertices)
    angles[::2] = 2 * math.pi - angles[::2]  # alternate turning direction, as DeepFill does
    x, y = float(rng.integers(0, width)), float(rng.integers(0, height))
    points = [(int(x), int(y))]
    for angle in angles:
        step = float(np.clip(rng.normal(mean_step, mean_step / 2), 0, 2 * mean_step))
        x = float(np.clip(x + step * math.cos(angle), 0, width - 1))
        y = float(np.clip(y + step * math.sin(angle), 0, height - 1))
        points.append((int(x), int(y)))
    for start, end in zip(points, points[1:]):
        cv2.line(mask, start, end, 1, stroke_width)
    for point in points:
        cv2.circle(mask, point, stroke_width // 2, 1, -1)


def stroke_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """DeepFill v2 free-form brush strokes: 1-3 strokes, randomly flipped."""
    mask = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        _draw_stroke(mask, rng)
    if rng.random() < 0.5:
        mask = mask[:, ::-1]
    if rng.random() < 0.5:
        mask = mask[::-1, :]
    return np.ascontiguousarray(mask)


def box_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """1-3 axis-aligned rectangles, each 10-50 % of the image side."""
    mask = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        box_h = max(1, int(height * rng.uniform(0.1, 0.5)))
        box_w = max(1, int(width * rng.uniform(0.1, 0.5)))
        top = int(rng.integers(0, height - box_h + 1))
        left = int(rng.integers(0, width - box_w + 1))
        mask[top : top + box_h, left : left + box_w] = 1
    return mask


def mixed_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """The training default: 50 % strokes, 25 % the report's lines, 15 % thin scratches, 10 % boxes."""
    kind = rng.choice(("strokes", "lines", "scratches", "boxes"), p=(0.5, 0.25, 0.15, 0.1))
    return MASK_GENERATORS[str(kind)](height, width, rng)


MASK_GENERATORS: dict[str, MaskFn] = {
    "lines": line_mask,
    "scratches": scratch_mask,
    "strokes": stroke_mask,
    "boxes": box_mask,
    "mixed": mixed_mask,
}
MASK_KINDS: tuple[str, ...] = tuple(MASK_GENERATORS)


def generate_mask(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A mask of ``kind`` (one of ``MASK_KINDS``)."""
    try:
        generator = MASK_GENERATORS[kind]
    except KeyError:
        raise ValueError(f"unknown mask kind {kind!r}; choose one of {', '.join(MASK_KINDS)}") from None
    return generator(height, width, rng)


def stroke_mask_in_bucket(
    height: int,
    width: int,
    low: float,
    high: float,
    rng: np.random.Generator,
    max_tries: int = 1000,
) -> np.ndarray:
    """Free-form strokes whose hole ratio lies in ``[low, high)``.

    Strokes are added one at a time until the ratio reaches ``low``; a mask that
    overshoots ``high`` is thrown away and started again (rejection sampling).
    """
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"bad hole-ratio bucket [{low}, {high})")
    for _ in range(max_tries):
        mask = np.zeros((height, width), np.uint8)
        while mask.mean() < low or (low == 0.0 and not mask.any()):
            _draw_stroke(mask, rng)
        if mask.mean() < high:
            return mask
    raise RuntimeError(f"no stroke mask with hole ratio in [{low}, {high}) after {max_tries} tries")


def mask_batch(kind: str, count: int, height: int, width: int, seed: int) -> np.ndarray:
    """``count`` masks of one kind, ``(count, H, W)`` uint8, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return np.stack([generate_mask(kind, height, width, rng) for _ in range(count)])
