"""Inpaint photos of any size: run the network only where the holes are, in memory bounded by the window batch.

``inpaint_tiled`` is what the server and the client call for one image:

* at most ``tile_above_pixels`` pixels: the whole image in one model run;
* above it, holes are split by width. **Thin holes** (every hole pixel within
  ``wide_hole`` pixels of a known one) are filled window by window: cores of
  ``core_cells`` x ``core_cells`` blocks of ``cell`` pixels are laid along the
  holes, each inside a window ``margin`` pixels wider on every side, or
  ``thin_margin`` where every hole pixel of the core lies within ``thin_hole``
  pixels of a known one (a scratch needs less context). Windows are shifted
  inside the image at its edges, so windows of one margin have one size and
  batch together, ``batch`` per model run. A diagonal scratch costs a chain of
  windows along it, not its bounding box. Each window's fill fades into its
  neighbours' over ``feather`` pixels, so a hole crossing cores shows no seam.
  **Wide holes** (a component holding a pixel ``wide_hole`` pixels away from
  any known pixel in every direction) are filled by one run on the image downscaled to
  ``tile_above_pixels``, up-sampled back: a window would hold too little
  context around them (IOPaint's "Resize" strategy).

Known pixels come back bit-exact in every mode: only hole pixels are written.
Plain numpy and OpenCV; the model is any ``Run`` callable, in process or remote.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from .contract import padded_pixels

logger = logging.getLogger(__name__)

# (N, h, w, 3) uint8 images and (N, h, w, 1) uint8 masks (nonzero = hole) -> (N, h, w, 3) uint8 fills.
Run = Callable[[np.ndarray, np.ndarray], np.ndarray]


TILING_MODES = ("auto", "always", "off")


@dataclass(frozen=True)
class TilingOptions:
    """How a large image is cut; the defaults suit the shipped model and photos up to 50 MP."""

    mode: str = "auto"    # auto: tile images over tile_above_pixels; always: tile every image; off: never
    tile_above_pixels: int = 2**20  # images up to this size run whole (and wide holes run at this size)
    cell: int = 32        # holes are located to blocks of this side
    core_cells: int = 4   # a window fills a core of core_cells x core_cells blocks (128 px)
    margin: int = 64      # context around the core: windows of 256 x 256 (docs/large-photos.md: why 64)
    thin_hole: int = 8    # a core whose hole pixels are all this close to a known pixel (holes up to 16 px wide)...
    thin_margin: int = 32 # ...takes this much context (192 x 192 windows): as good for scratches, half the cost
    feather: int = 16     # blend band around a core
    batch: int = 8        # windows per model run: bounds its memory (8 x 256 x 256 = 0.5 MP)
    wide_hole: int = 128  # holes holding a square this far around a pixel (257 px) take the downscaled pass
                          # (0: never; every hole is tiled)

    def __post_init__(self):
        if self.mode not in TILING_MODES:
            raise ValueError(f"tiling mode must be one of {', '.join(TILING_MODES)}, got {self.mode!r}")
        for name in ("tile_above_pixels", "cell", "core_cells", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"tiling option {name} must be at least 1, got {getattr(self, name)}")
        for name in ("margin", "thin_hole", "thin_margin", "feather", "wide_hole"):
            if getattr(self, name) < 0:
                raise ValueError(f"tiling option {name} must not be negative, got {getattr(self, name)}")
        if self.thin_margin > self.margin:
            raise ValueError(f"tiling thin_margin ({self.thin_margin}) must not exceed the margin ({self.margin})")
        if self.feather > min(self.margin, self.thin_margin):
            raise ValueError(f"tiling feather ({self.feather}) must not exceed the margins "
                             f"({self.thin_margin}, {self.margin})")

    @property
    def core(self) -> int:
        return self.cell * self.core_cells

    @property
    def window(self) -> int:
        """The side of the largest window."""
        return self.core + 2 * self.margin

    def window_shape(self, height: int, width: int, margin: int | None = None) -> tuple[int, int]:
        """A window's (height, width) in an image of this size: the window, or the image if smaller."""
        side = self.window if margin is None else self.core + 2 * margin
        return min(side, height), min(side, width)

    def is_tiled(self, height: int, width: int) -> bool:
        """Whether the image runs in windows: by its size as the graph pads it (``contract.padded_pixels``),
        so a 1 x 262,144 strip, a 16 x 262,144 run whole, is tiled."""
        return self.mode == "always" or (self.mode == "auto" and padded_pixels(1, height, width) > self.tile_above_pixels)

    def run_pixels(self, height: int, width: int) -> int:
        """The most pixels one model run holds for an image of this size, padded as the graph pads them:
        what bounds its memory."""
        if not self.is_tiled(height, width):
            return padded_pixels(1, height, width)
        windows = self.batch * padded_pixels(1, *self.window_shape(height, width))
        return max(windows, min(self.tile_above_pixels, padded_pixels(1, height, width)))


def inpaint_tiled(image: np.ndarray, mask: np.ndarray, run: Run, options: TilingOptions = TilingOptions()
                  ) -> np.ndarray:
    """One ``(H, W, 3)`` uint8 image with its ``(H, W)`` or ``(H, W, 1)`` mask, inpainted: tiled where
    ``options.is_tiled`` says so, else whole in one run."""
    holes = _holes(mask)
    height, width = holes.shape
    if not options.is_tiled(height, width):
        return run(image[None], holes[None, ..., None].view(np.uint8))[0]
    output = image.copy()
    if not holes.any():
        return output
    wide = wide_holes(holes, options.wide_hole)
    if wide is not None:
        thin = holes & ~wide
        fill_downscaled(output, image, holes, wide, run, options.tile_above_pixels)
    else:
        thin = holes
    fill_tiles(output, image, holes, thin, run, options)
    return output


def _holes(mask: np.ndarray) -> np.ndarray:
    return (mask[..., 0] if mask.ndim == 3 else mask) != 0


def has_wide_holes(mask: np.ndarray, options: TilingOptions) -> bool:
    """Whether ``inpaint_tiled`` would take the downscaled pass (a run of ``tile_above_pixels``) for this mask:
    it is tiled and holds a hole ``wide_hole`` pixels deep. What a server reserves for it before it runs."""
    holes = _holes(mask)
    if not options.is_tiled(*holes.shape) or options.wide_hole == 0:
        return False
    deep = _deep_inside(holes, options.wide_hole)
    return bool(deep is not None and deep.any())


def wide_holes(holes: np.ndarray, wide_hole: int) -> np.ndarray | None:
    """The hole components holding a square of side ``2 * wide_hole + 1`` of hole pixels; None if none."""
    if wide_hole == 0:
        return None
    deep = _deep_inside(holes, wide_hole)
    if not deep.any():
        return None
    count, labels = cv2.connectedComponents(holes.view(np.uint8), connectivity=8)
    return np.isin(labels, np.unique(labels[deep]))


# -- wide holes: one run at reduced size ------------------------------------------------------------

def fill_downscaled(output: np.ndarray, image: np.ndarray, holes: np.ndarray, region: np.ndarray, run: Run,
                    max_pixels: int) -> None:
    """Fill ``region``'s pixels of ``output`` from a run on the whole image shrunk to ``max_pixels``."""
    height, width = holes.shape
    small_size = downscaled_size(height, width, max_pixels)
    small_image = cv2.resize(image, small_size, interpolation=cv2.INTER_AREA)
    # A small pixel is a hole if any of its full-size pixels is: no hole colour leaks into the known ones.
    small_holes = cv2.resize(holes.view(np.uint8) * np.uint8(255), small_size, interpolation=cv2.INTER_AREA) > 0
    small_fill = run(small_image[None], small_holes[None, ..., None].view(np.uint8))[0]
    top, bottom, left, right = _bounding_box(region)
    upsampled = _upsample_crop(small_fill, (height, width), (top, bottom, left, right))
    target = region[top:bottom, left:right]
    output[top:bottom, left:right][target] = upsampled[target]
    logger.debug("wide holes in %dx%d filled from a %dx%d run", width, height, *small_size)


def downscaled_size(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    """``(width, height)`` (cv2's order) of the image shrunk until its run, padded as the graph pads it, holds
    at most ``max_pixels``."""
    scale = min(1.0, math.sqrt(max_pixels / (height * width)))
    while True:
        size = (max(1, int(width * scale)), max(1, int(height * scale)))
        if padded_pixels(1, size[1], size[0]) <= max_pixels or size == (1, 1):
            return size
        scale *= 0.97


def _bounding_box(region: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _upsample_crop(small: np.ndarray, full_size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """The crop ``box`` of ``small`` resized to ``full_size``, without up-sampling all of it."""
    top, bottom, left, right = box
    scale_y, scale_x = small.shape[0] / full_size[0], small.shape[1] / full_size[1]
    # Pixel centres map as (x + 0.5) * scale - 0.5, as cv2.resize maps them.
    to_small = np.array([[scale_x, 0, (left + 0.5) * scale_x - 0.5],
                         [0, scale_y, (top + 0.5) * scale_y - 0.5]], np.float64)
    return cv2.warpAffine(small, to_small, (right - left, bottom - top),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


# -- thin holes: windows that follow them ------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    top: int      # the core it fills, in image coordinates
    bottom: int
    left: int
    right: int
    win_top: int  # the window around it, inside the image
    win_left: int
    win_height: int
    win_width: int

    def crop(self, array: np.ndarray) -> np.ndarray:
        return array[self.win_top : self.win_top + self.win_height, self.win_left : self.win_left + self.win_width]


def plan_windows(targets: np.ndarray, options: TilingOptions, holes: np.ndarray | None = None) -> list[Window]:
    """Windows whose cores cover every target pixel, following the holes, in raster order of their cores.

    The image is seen as ``cell`` x ``cell`` blocks; cores are ``core_cells`` blocks square. Greedily, the
    first uncovered hole block (raster order) starts a core's top row, and the core is slid sideways to cover
    the most uncovered hole blocks: a diagonal scratch gets a chain of windows along it. A core takes the
    thin margin unless one of its pixels lies deeper than ``thin_hole`` inside ``holes`` (default: targets).
    """
    height, width = targets.shape
    cell, span = options.cell, options.core_cells
    blocks = _blocks_touching(targets, cell)
    deep = _deep_inside(targets if holes is None else holes, options.thin_hole)
    windows = []
    while True:
        flat = int(np.argmax(blocks))
        if not blocks.flat[flat]:
            return windows
        row, col = divmod(flat, blocks.shape[1])
        left_col = _best_left(blocks[row : row + span].sum(axis=0), col, span)
        blocks[row : row + span, left_col : left_col + span] = False
        top, left = row * cell, left_col * cell
        bottom, right = min(top + span * cell, height), min(left + span * cell, width)
        thick = deep is None or deep[top:bottom, left:right].any()
        margin = options.margin if thick else options.thin_margin
        window_height, window_width = options.window_shape(height, width, margin)
        windows.append(Window(top, bottom, left, right,
                              _clamp(top - margin, 0, height - window_height),
                              _clamp(left - margin, 0, width - window_width), window_height, window_width))


def _deep_inside(holes: np.ndarray, depth: int) -> np.ndarray | None:
    """The hole pixels whose ``(2 * depth + 1)``-px square is all hole (None: depth 0, every pixel is deep)."""
    if depth == 0:
        return None
    square = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * depth + 1, 2 * depth + 1))
    return cv2.erode(holes.view(np.uint8), square, borderType=cv2.BORDER_CONSTANT, borderValue=0).view(bool)


def _blocks_touching(holes: np.ndarray, cell: int) -> np.ndarray:
    """``(ceil(H / cell), ceil(W / cell))`` bool: the blocks holding a hole pixel."""
    height, width = holes.shape
    rows, cols = -(-height // cell), -(-width // cell)
    padded = np.zeros((rows * cell, cols * cell), bool)
    padded[:height, :width] = holes
    return padded.reshape(rows, cell, cols, cell).any(axis=(1, 3))


def _best_left(column_counts: np.ndarray, col: int, span: int) -> int:
    """The first column of a ``span``-wide core that holds block ``col`` and the most uncovered blocks."""
    lowest, highest = max(col - span + 1, 0), max(min(col, len(column_counts) - span), 0)
    sums = np.convolve(column_counts, np.ones(span, int), mode="valid") if len(column_counts) >= span else \
        np.array([column_counts.sum()])
    return lowest + int(np.argmax(sums[lowest : highest + 1]))


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(value, high))


def fill_tiles(output: np.ndarray, image: np.ndarray, holes: np.ndarray, targets: np.ndarray, run: Run,
               options: TilingOptions) -> None:
    """Fill ``targets`` (thin hole pixels) of ``output`` window by window; windows see every hole as a hole.

    Windows are composited in order, each over what came before with an alpha that is 1 on its core and
    falls to 0 across ``feather`` pixels around it: where a hole crosses from one core into the next, the
    fill fades from one window's to the other's, without a seam.
    """
    windows = plan_windows(targets, options, holes)
    height, width = holes.shape
    logger.debug("%dx%d image: %d windows (%.1f%% of its pixels)", width, height, len(windows),
                 100 * sum(w.win_height * w.win_width for w in windows) / (height * width))
    written = np.zeros_like(targets)
    for shape in dict.fromkeys((w.win_height, w.win_width) for w in windows):
        same_size = [w for w in windows if (w.win_height, w.win_width) == shape]
        for start in range(0, len(same_size), options.batch):
            group = same_size[start : start + options.batch]
            images = np.stack([window.crop(image) for window in group])
            masks = np.stack([window.crop(holes) for window in group])
            fills = run(images, masks[..., None].view(np.uint8))
            for window, fill in zip(group, fills):
                _composite(output, written, targets, window, fill, options.feather)


def _composite(output: np.ndarray, written: np.ndarray, targets: np.ndarray, window: Window, fill: np.ndarray,
               feather: int) -> None:
    """Blend the window's fill into ``output``'s target pixels over its core and the feather around it."""
    height, width = targets.shape
    top, bottom = max(window.top - feather, 0), min(window.bottom + feather, height)
    left, right = max(window.left - feather, 0), min(window.right + feather, width)
    region = targets[top:bottom, left:right]
    if not region.any():
        return
    alpha = _alpha(window, top, bottom, left, right, feather)[region]
    alpha[~written[top:bottom, left:right][region]] = 1.0  # nothing to blend with yet
    source = fill[top - window.win_top : bottom - window.win_top, left - window.win_left : right - window.win_left]
    current = output[top:bottom, left:right][region].astype(np.float32)
    blended = current + alpha[:, None] * (source[region].astype(np.float32) - current)
    output[top:bottom, left:right][region] = np.rint(blended).astype(np.uint8)
    written[top:bottom, left:right] |= region


def _alpha(window: Window, top: int, bottom: int, left: int, right: int, feather: int) -> np.ndarray:
    """1 on the core, falling linearly to 0 at ``feather + 1`` pixels outside it."""
    rows = 1.0 - _distance_to(np.arange(top, bottom), window.top, window.bottom) / (feather + 1)
    cols = 1.0 - _distance_to(np.arange(left, right), window.left, window.right) / (feather + 1)
    return np.outer(np.clip(rows, 0, 1), np.clip(cols, 0, 1)).astype(np.float32)


def _distance_to(coords: np.ndarray, start: int, stop: int) -> np.ndarray:
    return np.maximum(np.maximum(start - coords, coords - (stop - 1)), 0).astype(np.float32)
