"""Check a request's inputs against the model's signature and bring them to uint8."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inpaint.core.contract import IMAGE, INPUT_CHANNELS, MASK

from .errors import InvalidInput


@dataclass(frozen=True)
class Limits:
    max_pixels: int                 # per image, H x W
    max_batch: int | None = None    # images per request, when batching caps it


def _to_uint8(name: str, array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if not np.isfinite(array).all() or array.min(initial=0.0) < 0.0 or array.max(initial=0.0) > 1.0:
        raise InvalidInput(f"input '{name}' is float and must lie in [0, 1]")
    return np.round(array * 255.0).astype(np.uint8)  # the one conversion; the model takes uint8


def prepare_inputs(arrays: dict[str, np.ndarray], limits: Limits) -> tuple[np.ndarray, np.ndarray]:
    """``(image, mask)`` as uint8 ``[N,H,W,3]`` and ``[N,H,W,1]``, or InvalidInput naming the problem."""
    missing = sorted(set(INPUT_CHANNELS) - set(arrays))
    extra = sorted(set(arrays) - set(INPUT_CHANNELS))
    if missing or extra:
        parts = [f"missing {', '.join(missing)}" if missing else "", f"unexpected {', '.join(extra)}" if extra else ""]
        raise InvalidInput(f"inputs do not match signature (image, mask): {'; '.join(p for p in parts if p)}")
    for name, channels in INPUT_CHANNELS.items():
        shape = arrays[name].shape
        if len(shape) != 4:
            raise InvalidInput(f"input '{name}' must have rank 4 [N,H,W,{channels}], got shape {list(shape)}")
        if shape[3] != channels:
            raise InvalidInput(f"input '{name}' must have {channels} channel(s), got shape {list(shape)}")
    image, mask = arrays[IMAGE], arrays[MASK]
    if image.shape[:3] != mask.shape[:3]:
        raise InvalidInput(f"image and mask differ in N, H or W: image {list(image.shape)}, mask {list(mask.shape)}")
    batch, height, width = image.shape[:3]
    if batch == 0 or height == 0 or width == 0:
        raise InvalidInput(f"empty input: shape {list(image.shape)}")
    if height * width > limits.max_pixels:
        raise InvalidInput(f"image is {width}x{height} = {height * width} pixels, over the limit of {limits.max_pixels}")
    if limits.max_batch is not None and batch > limits.max_batch:
        raise InvalidInput(f"request holds {batch} images, over the maximum batch size {limits.max_batch}")
    return _to_uint8(IMAGE, image), _to_uint8(MASK, mask)
