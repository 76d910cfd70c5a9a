"""Image and mask files and arrays: the one place image files are read and written.

The client checks what it sends with it, the trainer reads its photos with it,
and the server decodes ``serving_bytes`` requests with it.

**The mask rule**, for files, encoded bytes and arrays alike (``holes_of``), read
at 8 bits (16-bit levels // 257, floats in [0, 1] times 255): a pixel is a hole
where its level is at least half the scale, 128 of 255, in any colour channel;
in a mask with transparency (an alpha channel below 255 somewhere) where its
alpha is below 128. A mask holding only 0 and 1 marks holes with its 1s. So JPEG
noise and a brush's anti-aliased edges do not become holes, a black mask with
white strokes and a photo with the damage erased to transparency both work, and
two mistakes are refused instead of answered with a useless image: a photo given
as the mask (over a quarter of its pixels shades of grey, levels 16-239 besides
the 4 most common ones, which flat-coloured strokes may use) and a mask whose
holes cover over 90 % of the image (IMAGE and MASK swapped, or an inverted mask).

Encoded images (PNG, JPEG, WebP, BMP) are measured from their headers before
anything is decoded: a 40-byte file claiming 100,000 x 100,000 pixels is refused
without allocating them. Pixels are taken as stored: EXIF orientation is
ignored, as TensorFlow's decoders ignore it.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Union

import cv2
import numpy as np

ImageLike = Union[np.ndarray, str, Path]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageError(ValueError):
    """An image or mask that cannot be read, written or used as given."""


class ImageTooLarge(ImageError):
    """An encoded image whose header declares more pixels than allowed."""


def find_images(folder: Path) -> list[Path]:
    """Every image file under ``folder``, subfolders too, sorted: how a folder of photos is read everywhere."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


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


def as_mask(value: ImageLike, what: str = "mask") -> np.ndarray:
    """A mask as uint8 HxW {0, 1}, by the module's mask rule; MaskError for a photo or an all-hole mask."""
    if isinstance(value, (str, Path)):
        return holes_of(_decode(Path(value), what), f"{what} {value}")
    return holes_of(np.asarray(value), what)


# The mask rule's levels, at 8 bits.
HOLE_LEVEL = 128                 # a hole at or above this level, or with alpha below it where there is transparency
GREY_LEVELS = (16, 239)          # neither black nor white: JPEG noise and brush edges put few pixels here
FLAT_SHADES = 4                  # the most common grey levels do not count: a mask may be drawn in flat colours
PHOTO_GREY_FRACTION = 0.25       # more grey pixels than this, of other levels: a photo, not a mask
MOST_HOLES = 0.9                 # holes over this fraction of the image leave nothing to fill them from


class MaskError(ImageError):
    """A readable mask that cannot be what was meant: a photo, or holes over (nearly) the whole image."""


def mask_levels(mask: np.ndarray) -> np.ndarray:
    """A mask's pixels as 8-bit levels: uint8 as it is, 16-bit // 257, bool and [0, 1] floats scaled to 255."""
    if mask.dtype == np.uint8:
        return mask
    if mask.dtype == np.bool_:
        return mask.astype(np.uint8)
    if mask.dtype == np.uint16:
        return (mask // 257).astype(np.uint8)
    if np.issubdtype(mask.dtype, np.floating) and (not mask.size or (mask.min() >= 0 and mask.max() <= 1)):
        return np.round(mask * 255).astype(np.uint8)
    if np.issubdtype(mask.dtype, np.integer) and (not mask.size or (mask.min() >= 0 and mask.max() <= 255)):
        return mask.astype(np.uint8)
    raise ImageError(f"mask must be uint8 (0-255 or 0/1), uint16, bool or float in [0, 1], got {mask.dtype} "
                     "values outside that range")


def holes_of(mask: np.ndarray, what: str = "mask") -> np.ndarray:
    """uint8 HxW {0, 1} from a mask's pixels by the module's mask rule; MaskError for a photo or all holes."""
    levels = mask_levels(mask)
    if levels.ndim == 3 and levels.shape[2] in (2, 4) and np.any(levels[..., -1] < 255):
        decisive = levels[..., -1]
        holes = decisive < HOLE_LEVEL
    else:
        if levels.ndim == 3:
            levels = levels[..., :-1] if levels.shape[2] in (2, 4) else levels
            levels = levels.max(axis=2)
        if levels.ndim != 2:
            raise ImageError(f"{what} must be HxW or HxWxC, got shape {mask.shape}")
        decisive = levels
        binary = decisive.size > 0 and decisive.max() == 1
        holes = decisive >= (1 if binary else HOLE_LEVEL)
    check_mask(decisive, holes, what)
    return holes.astype(np.uint8)


def check_mask(levels: np.ndarray, holes: np.ndarray, what: str = "mask") -> None:
    """MaskError where the levels that decided (colour or alpha) are a photo's, or holes cover the image."""
    if not levels.size:
        return
    low, high = GREY_LEVELS
    shades = np.sort(np.bincount(levels.ravel(), minlength=256)[low : high + 1])
    grey = int(shades[:-FLAT_SHADES].sum()) / levels.size
    if grey > PHOTO_GREY_FRACTION:
        raise MaskError(f"{what} looks like a photo, not a mask: {grey:.0%} of its pixels are shades of grey "
                        f"(levels {low}-{high} of 255), where a mask is black with its holes white (or "
                        "transparent); did you swap IMAGE and MASK?")
    covered = np.count_nonzero(holes) / holes.size
    if covered > MOST_HOLES:
        raise MaskError(f"{what} marks {covered:.0%} of the image as holes (white, or transparent), over "
                        f"{MOST_HOLES:.0%}: nothing is left to fill them from; did you swap IMAGE and MASK, or "
                        "invert the mask?")


def check_pair(image: np.ndarray, mask: np.ndarray, name: str = "image") -> None:
    check_sizes(image.shape[1::-1], mask.shape[1::-1], name)


def check_sizes(image_size: tuple[int, int], mask_size: tuple[int, int], name: str = "image") -> None:
    """An image's and its mask's ``(width, height)`` must be equal: masks are never resized."""
    if tuple(image_size) != tuple(mask_size):
        raise ImageError(f"mask is {mask_size[0]}x{mask_size[1]} but {name} is "
                         f"{image_size[0]}x{image_size[1]}; they must match (no resizing is done)")


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


def write_encoded(path: Path, data: bytes) -> None:
    """Encoded image bytes (a PNG a server returned, say) to a file as they are, with write_image's errors."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as error:
        raise ImageError(f"cannot write {path}: {error.strerror or error}") from None


# -- encoded images: PNG, JPEG, WebP and BMP bytes ---------------------------------------------------------

ENCODED_FORMATS = ("PNG", "JPEG", "WebP", "BMP")
# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset(range(0xD0, 0xDA)) | {0x01}


def encoded_size(data: bytes, what: str = "image") -> tuple[str, int, int]:
    """``(format, width, height)`` from an encoded image's header; ImageError if it is not one we read."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return ("PNG", *_png_size(data, what))
        if data.startswith(b"\xff\xd8"):
            return ("JPEG", *_jpeg_size(data))
        if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
            return ("WebP", *_webp_size(data))
        if data.startswith(b"BM"):
            return ("BMP", *_bmp_size(data))
    except (struct.error, IndexError):
        raise ImageError(f"{what} is truncated: its header ends early") from None
    raise ImageError(f"{what} is not a {', '.join(ENCODED_FORMATS[:-1])} or {ENCODED_FORMATS[-1]} image "
                     f"(starts with {data[:8].hex() or 'nothing'})")


def _png_size(data: bytes, what: str) -> tuple[int, int]:
    if len(data) >= 16 and data[12:16] != b"IHDR":
        raise ImageError(f"{what} is a corrupt PNG: its first chunk is {data[12:16]!r}, not IHDR")
    return struct.unpack(">II", data[16:24])


def _jpeg_size(data: bytes) -> tuple[int, int]:
    position = 2
    while True:
        while data[position] != 0xFF:  # tolerate junk between segments, as libjpeg does
            position += 1
        while data[position] == 0xFF:
            position += 1
        marker = data[position]
        position += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker == 0xD9:
            raise IndexError("end of image before a frame header")
        if marker in _JPEG_FRAMES:
            height, width = struct.unpack(">HH", data[position + 3 : position + 7])
            return width, height
        position += struct.unpack(">H", data[position : position + 2])[0]


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8X":
        return (int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1)
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = struct.unpack("<I", data[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise IndexError(f"unknown WebP chunk {chunk!r}")


def _bmp_size(data: bytes) -> tuple[int, int]:
    if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)  # a negative height is a top-down bitmap


def check_encoded_size(data: bytes, max_pixels: int, what: str = "image") -> tuple[int, int]:
    """``(height, width)`` from the header, or ImageError/ImageTooLarge before any pixel is decoded."""
    kind, width, height = encoded_size(data, what)
    if width == 0 or height == 0:
        raise ImageError(f"{what} is an empty {kind} ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(f"{what} is a {kind} of {width}x{height} = {width * height} pixels, over the limit "
                            f"of {max_pixels}")
    return height, width


def _decode_bytes(data: bytes, max_pixels: int, what: str) -> np.ndarray:
    height, width = check_encoded_size(data, max_pixels, what)
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.shape[:2] != (height, width):
        kind = encoded_size(data, what)[0]
        raise ImageError(f"{what} is a corrupt {kind}: its {width}x{height} pixels cannot be decoded")
    return pixels


def decode_image(data: bytes, max_pixels: int, what: str = "image") -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` from PNG, JPEG, WebP or BMP bytes, checked against ``max_pixels`` first."""
    return to_rgb(_decode_bytes(data, max_pixels, what), bgr=True)


def decode_mask(data: bytes, max_pixels: int, what: str = "mask") -> np.ndarray:
    """uint8 ``(H, W)`` {0, 1} from encoded bytes, by the mask rule, checked against ``max_pixels`` first."""
    return holes_of(_decode_bytes(data, max_pixels, what), what)


def encode_png(image: np.ndarray, compression: int = 1) -> bytes:
    """PNG bytes of an RGB uint8 image; level 1 because a 12 MP photo takes seconds at zlib's default."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:
        raise ImageError(f"cannot encode a {image.shape} image as PNG")
    return encoded.tobytes()
