"""Check a request's inputs against the signature and the server's limits, then bring them to uint8.

Shapes are checked first, from what the request *declares* (a TensorProto's
header, a JSON array's nesting), with Python integers that cannot overflow, so
nothing is allocated for a request the server would refuse: an 80-byte request
claiming ``[8, 4096, 4096, 3]`` is answered INVALID_ARGUMENT without touching
memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from inpaint.core.contract import IMAGE, INPUT_CHANNELS, MASK

from .errors import InvalidInput

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Limits:
    """What one request may hold. Together they bound the memory a request can cost (README, Errors)."""

    max_pixels: int          # per image, H x W
    max_images: int          # images per request (N)
    max_request_pixels: int  # N x H x W over the whole request
    max_list_values: int = 2**20  # values sent as gRPC value lists (int_val, contents): a 512 x 512 image and mask

    def __post_init__(self):
        for name in ("max_pixels", "max_images", "max_request_pixels", "max_list_values"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def check_shapes(shapes: dict[str, Shape], limits: Limits) -> None:
    """The declared shapes against the signature and ``limits``; InvalidInput naming the first problem."""
    missing = sorted(set(INPUT_CHANNELS) - set(shapes))
    extra = sorted(set(shapes) - set(INPUT_CHANNELS))
    if missing or extra:
        parts = [f"missing {', '.join(missing)}" if missing else "", f"unexpected {', '.join(extra)}" if extra else ""]
        raise InvalidInput(f"inputs do not match signature (image, mask): {'; '.join(p for p in parts if p)}")
    for name, channels in INPUT_CHANNELS.items():
        shape = shapes[name]
        if len(shape) != 4:
            raise InvalidInput(f"input '{name}' must have rank 4 [N,H,W,{channels}], got shape {list(shape)}")
        if shape[3] != channels:
            raise InvalidInput(f"input '{name}' must have {channels} channel(s), got shape {list(shape)}")
    image, mask = shapes[IMAGE], shapes[MASK]
    if image[:3] != mask[:3]:
        raise InvalidInput(f"image and mask differ in N, H or W: image {list(image)}, mask {list(mask)}")
    batch, height, width = image[:3]
    if batch == 0 or height == 0 or width == 0:
        raise InvalidInput(f"empty input: shape {list(image)}")
    if height * width > limits.max_pixels:
        raise InvalidInput(f"image is {width}x{height} = {height * width} pixels, over the limit of "
                           f"{limits.max_pixels} per image (--max-pixels)")
    if batch > limits.max_images:
        raise InvalidInput(f"request holds {batch} images, over the limit of {limits.max_images} per request "
                           "(--max-images-per-request)")
    if math.prod(image[:3]) > limits.max_request_pixels:
        raise InvalidInput(f"request holds {batch} images of {width}x{height} = {math.prod(image[:3])} pixels, "
                           f"over the limit of {limits.max_request_pixels} per request (--max-request-pixels)")


CONVERT_CHUNK_VALUES = 2**22  # float inputs are converted this many values at a time: no full-size temporaries


def _to_uint8(name: str, array: np.ndarray) -> np.ndarray:
    """uint8 as it is; float in [0, 1] scaled to 0..255, in chunks, so the conversion's own memory is the
    uint8 result (what ``admission.tensors_cost`` counts), not float copies of the whole input."""
    if array.dtype == np.uint8:
        return array
    flat = array.reshape(-1)
    converted = np.empty(flat.shape, np.uint8)
    for start in range(0, flat.size, CONVERT_CHUNK_VALUES):
        chunk = flat[start : start + CONVERT_CHUNK_VALUES]
        if not np.isfinite(chunk).all() or chunk.min(initial=0.0) < 0.0 or chunk.max(initial=0.0) > 1.0:
            raise InvalidInput(f"input '{name}' is float and must lie in [0, 1]")
        converted[start : start + chunk.size] = np.rint(chunk * np.float32(255.0))
    return converted.reshape(array.shape)  # the one conversion; the model takes uint8


def prepare_inputs(arrays: dict[str, np.ndarray], limits: Limits) -> tuple[np.ndarray, np.ndarray]:
    """``(image, mask)`` as uint8 ``[N,H,W,3]`` and ``[N,H,W,1]``, or InvalidInput naming the problem."""
    check_shapes({name: tuple(array.shape) for name, array in arrays.items()}, limits)
    return _to_uint8(IMAGE, arrays[IMAGE]), _to_uint8(MASK, arrays[MASK])
