"""Image and mask files and arrays: the one place image files are read and written.

The client checks what it sends with it, the trainer reads its photos with it.
A mask is any image whose nonzero pixels (in any colour channel) mark holes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import cv2
import numpy as np

ImageLike = Union[np.ndarray, str, Path]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageError(ValueError):
    """An image or mask that cannot be read, written or used as given."""


def _decode(path: Path, what: str) -> np.ndarray:
    """The file's pixels as OpenCV reads them (BGR[A]); ImageError naming ``what`` if it can't."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{what} {path} does not exist")
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ImageError(f"cannot read {what} {path}: not an image file OpenCV can decode")
    return pixels


def read_image(path: Path) -> np.ndarray:
    """A file as RGB uint8; alpha dropped, grey expanded. ImageError if unreadable."""
    return to_rgb(_decode(path, "image"), bgr=True)


def to_rgb(image: np.ndarray, bgr: bool = False) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` from grey, RGB, RGBA, 16-bit or [0, 1] float arrays."""
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and image.size and image.min() >= 0 and image.max() <= 1:
            image = np.round(image * 255).astype(np.uint8)
        else:
            raise ImageError(f"image must be uint8 (or float in [0, 1]), got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ImageError(f"image must be HxW, HxWx3 or HxWx4, got shape {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    image = image[..., :3]
    return np.ascontiguousarray(image[..., ::-1] if bgr else image)


def as_image(value: ImageLike) -> np.ndarray:
    return read_image(Path(value)) if isinstance(value, (str, Path)) else to_rgb(np.asarray(value))


def as_mask(value: ImageLike) -> np.ndarray:
    """A mask as uint8 HxW {0, 1}: any nonzero pixel (in any channel) is a hole."""
    if isinstance(value, (str, Path)):
        mask = _decode(Path(value), "mask")
        if mask.ndim == 3 and mask.shape[2] == 4:
            mask = mask[..., :3]  # alpha is transparency, not damage
    else:
        mask = np.asarray(value)
    if mask.ndim == 3:
        mask = mask.any(axis=2)
    if mask.ndim != 2:
        raise ImageError(f"mask must be HxW or HxWxC, got shape {mask.shape}")
    return (mask != 0).astype(np.uint8)


def check_pair(image: np.ndarray, mask: np.ndarray, name: str = "image") -> None:
    if image.shape[:2] != mask.shape:
        raise ImageError(f"mask is {mask.shape[1]}x{mask.shape[0]} but {name} is "
                           f"{image.shape[1]}x{image.shape[0]}; they must match (no resizing is done)")


def write_image(path: Path, image: np.ndarray) -> None:
    """An RGB (or grey) uint8 array to a file whose suffix names the format (one of IMAGE_SUFFIXES)."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ImageError(f"cannot write {path}: unknown image format '{path.suffix}' "
                         f"(use one of {', '.join(IMAGE_SUFFIXES)})")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        written = cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image)
    except (OSError, cv2.error) as error:
        raise ImageError(f"cannot write {path}: {str(error).strip().splitlines()[-1]}") from None
    if not written:
        raise ImageError(f"cannot write {path}: unwritable folder or file")
