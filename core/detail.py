"""Carry the photo's own fine texture into the holes: a detail pass after the network's fill.

The network's fill gets the colours and the large shapes right, but an L1-trained network cannot know
*which* grain of pebbles or ripples belongs in a hole, so it predicts their average: a blur. Like
DeepFill's contextual attention and HiFill's contextual residual aggregation, this pass borrows the texture
from the photo itself: it cuts the photo's known pixels into blocks, keeps each block's **detail** (the
block minus its Gaussian blur of ``sigma``), and gives every block of the fill the detail of the known
block whose colours (the means of its four cells' known pixels, the cells with none interpolated from their
neighbours) are nearest. Overlapping blocks are blended with sine
windows normalised by the root of their summed squares, so the texture keeps its strength across block
edges, and ``amount`` scales what is added (1 = the source's full strength; less trades texture for a lower
hole error, docs/sharp-fills.md).

It works on ``cell`` x ``cell`` cells (a block is 2 x 2 cells, blocks overlap by half), in bands of cell
rows, so its memory is bounded by the source pool and one band, whatever the photo's size: what
``DETAIL_WORK_BYTES`` reserves. Only hole pixels change, and the same input gives the same output.
"""

from __future__ import annotations

import logging
import json
import math
from dataclasses import asdict, dataclass, fields, replace

from pathlib import Path

import cv2
import numpy as np

from .repository import DETAIL_RECORD

logger = logging.getLogger(__name__)

BAND_BLOCKS = 8         # cell rows per band
MATCH_CHUNK = 256       # target blocks matched at once: a MATCH_CHUNK x sources cost matrix
CONTEXT = 0.5           # sources come from the holes' bounding box grown by this much of its larger side...
MIN_CONTEXT = 128       # ...and at least this many pixels
EDGE_ENERGY = 3.0       # sources with more detail than this many times the pool's median are left out
MAX_SOURCES = 4096      # what a server reserves for (DetailOptions.work_bytes) bounds a version's declaration


@dataclass(frozen=True)
class DetailOptions:
    """The detail pass's settings; ``amount`` 0 turns it off."""

    amount: float = 0.0   # strength of the added texture (1: the source blocks' own) on images run whole
    amount_tiled: float = 0.0  # ...and on photos over the whole-image threshold, whose wide holes are filled
                               # from a downscaled run: they miss more texture, and adding it costs less error
    sigma: float = 2.0    # detail = photo - its Gaussian blur of this sigma (px)
    cell: int = 8         # blocks are 2 x 2 cells, laid every cell
    sources: int = 2048   # known blocks sampled as the texture's sources
    choices: int = 8      # each hole block takes one of this many sources nearest its colours, at random
    seed: int = 0         # of the sample, so one input always gives one output

    def __post_init__(self):
        for name in ("amount", "amount_tiled"):
            if not 0.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"detail {name} must be within 0-2, got {getattr(self, name)}")
        if not 0.3 <= self.sigma <= 8.0:
            raise ValueError(f"detail sigma must be within 0.3-8 px, got {self.sigma}")
        if not 2 <= self.cell <= 32 or not 1 <= self.sources <= MAX_SOURCES or not 1 <= self.choices <= 64:
            raise ValueError(f"detail cell must be within 2-32 px, sources within 1-{MAX_SOURCES} and choices "
                             "within 1-64")

    @property
    def enabled(self) -> bool:
        return self.amount > 0 or self.amount_tiled > 0

    @classmethod
    def from_json(cls, text: str) -> "DetailOptions":
        """The options a model version declares (``core.repository.DETAIL_RECORD``); ValueError if malformed."""
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"not JSON: {error}") from None
        if not isinstance(record, dict):
            raise ValueError("must be a JSON object")
        unknown = sorted(set(record) - {field.name for field in fields(cls)})
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}")
        try:
            return cls(**record)
        except TypeError as error:
            raise ValueError(str(error)) from None

    def with_amounts(self, amount: float | None = None, amount_tiled: float | None = None) -> "DetailOptions":
        """These options with the amounts that are given (not None) in place of their own."""
        given = {name: value for name, value in (("amount", amount), ("amount_tiled", amount_tiled))
                 if value is not None}
        return replace(self, **given)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @property
    def margin(self) -> int:
        """Pixels around a source block that its blur reads."""
        return int(math.ceil(3 * self.sigma))

    def work_bytes(self, height: int, width: int) -> int:
        """The most the pass holds at once for one (height, width) image, besides the image and its mask:
        the source pool, one chunk of the matching, one band, and a few bytes a pixel of cell grids."""
        block = 2 * self.cell
        blocks = (-(-height // self.cell) + 1) * (-(-width // self.cell) + 1)
        sources = min(self.sources, blocks)
        pool = sources * (block * block * 3 * 4 + 12 * 4 + 16)
        match = min(MATCH_CHUNK, blocks) * sources * 4 * 3
        band_height = min(BAND_BLOCKS, -(-height // self.cell)) * self.cell
        band = band_height * (width + block) * 4 * 24  # sums, weights, patches and temporaries
        grids = blocks * (12 * 4 * 2 + 16)
        return pool + match + band + grids + height * width  # + the holes' view as bytes


def load_detail(version_path: Path) -> DetailOptions:
    """The detail pass ``version_path`` declares in ``DETAIL_RECORD``; off if it declares none.
    ValueError naming the file if the declaration is malformed."""
    record = Path(version_path) / DETAIL_RECORD
    if not record.is_file():
        return DetailOptions()
    try:
        return DetailOptions.from_json(record.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{record}: {error}") from None


def finish_fills(outputs: np.ndarray, masks: np.ndarray, options: DetailOptions, tiled: bool) -> None:
    """The detail pass on a batch of composited ``(N, H, W, 3)`` outputs and their masks, in place."""
    if not options.enabled:
        return
    for output, mask in zip(outputs, masks):
        add_detail(output, (mask[..., 0] if mask.ndim == 3 else mask) != 0, options, tiled=tiled)


def add_detail(output: np.ndarray, holes: np.ndarray, options: DetailOptions, *, tiled: bool = False) -> None:
    """Add texture borrowed from ``output``'s known pixels to its ``holes`` pixels, in place.

    ``output``: (H, W, 3) uint8, the composite (photo with the network's fill in the holes);
    ``holes``: (H, W) bool; ``tiled``: the photo went through the tiled path (``amount_tiled``).
    Does nothing if the pass is off or no known block is far enough from the holes.
    """
    amount = options.amount_tiled if tiled else options.amount
    if amount <= 0 or not holes.any():
        return
    top, bottom, left, right = _around_holes(holes)
    _add_detail(output[top:bottom, left:right], holes[top:bottom, left:right], options, amount)


def _around_holes(holes: np.ndarray) -> tuple[int, int, int, int]:
    """The holes' bounding box grown by ``CONTEXT`` of its larger side (at least ``MIN_CONTEXT`` px), within the
    image: where the sources are drawn from. A scratch in a 24 MP photo costs its neighbourhood, not the photo."""
    rows, cols = np.flatnonzero(holes.any(axis=1)), np.flatnonzero(holes.any(axis=0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    grow = max(MIN_CONTEXT, int(CONTEXT * max(bottom - top, right - left)))
    height, width = holes.shape
    return max(0, top - grow), min(height, bottom + grow), max(0, left - grow), min(width, right + grow)


def _add_detail(output: np.ndarray, holes: np.ndarray, options: DetailOptions, amount: float) -> None:
    cell = options.cell
    hole_cells = _cells_any(holes, cell)
    means = _cell_means(output, holes, cell)
    features = _block_features(means)
    pool = _source_pool(output, hole_cells, features, options)
    if pool is None:
        logger.debug("detail pass skipped: no known block clear of the holes in %dx%d", *output.shape[1::-1])
        return
    residuals, pool_features = pool
    targets = _block_any(hole_cells)
    best = np.full(targets.shape, -1, np.int32)
    best[targets] = _nearest(features[targets], pool_features, options.choices,
                             np.random.default_rng([options.seed, 1]))
    for start in range(0, hole_cells.shape[0], BAND_BLOCKS):
        _synthesise_band(output, holes, best, residuals, start, min(start + BAND_BLOCKS, hole_cells.shape[0]),
                         options.cell, amount)


def _cells_any(holes: np.ndarray, cell: int) -> np.ndarray:
    """(ceil(H/cell), ceil(W/cell)) bool: whether each cell holds a hole pixel."""
    height, width = holes.shape
    rows, cols = -(-height // cell), -(-width // cell)
    padded = np.zeros((rows * cell, cols * cell), bool)
    padded[:height, :width] = holes
    return padded.reshape(rows, cell, cols, cell).any(axis=(1, 3))


def _cell_means(image: np.ndarray, holes: np.ndarray, cell: int) -> np.ndarray:
    """(rows, cols, 3) mean colour of each cell's *known* pixels, in 0-1; cells with none get the colours of
    the known cells around them (Telea on the small grid). Only exact inputs count, never the network's fill:
    a fill that differs by a level (another batch, another machine) picks the same sources."""
    height, width = holes.shape
    rows, cols = -(-height // cell), -(-width // cell)
    sums = np.zeros((rows, cols, 3), np.float32)
    counts = np.zeros((rows, cols), np.float32)
    band = BAND_BLOCKS * cell
    for top in range(0, height, band):
        bottom = min(top + band, height)
        known = ~holes[top:bottom]
        pixels = np.where(known[..., None], image[top:bottom], 0).astype(np.float32)
        band_rows = -(-(bottom - top) // cell)
        padded = np.zeros((band_rows * cell, cols * cell, 3), np.float32)
        padded[:bottom - top, :width] = pixels
        weights = np.zeros((band_rows * cell, cols * cell), np.float32)
        weights[:bottom - top, :width] = known
        first = top // cell
        sums[first:first + band_rows] = padded.reshape(band_rows, cell, cols, cell, 3).sum(axis=(1, 3))
        counts[first:first + band_rows] = weights.reshape(band_rows, cell, cols, cell).sum(axis=(1, 3))
    means = np.clip(np.rint(sums / np.maximum(counts, 1)[..., None]), 0, 255).astype(np.uint8)
    empty = counts == 0
    if empty.any() and not empty.all():
        means = cv2.inpaint(means, empty.view(np.uint8), 3, cv2.INPAINT_TELEA)
    return means.astype(np.float32) / 255.0


def _block_features(means: np.ndarray) -> np.ndarray:
    """(rows-1, cols-1, 12): each block's four cell means, top-left, top-right, bottom-left, bottom-right."""
    return np.concatenate([means[:-1, :-1], means[:-1, 1:], means[1:, :-1], means[1:, 1:]], axis=-1)


def _block_any(cells: np.ndarray) -> np.ndarray:
    """(rows-1, cols-1) bool: whether any of a block's four cells is set."""
    return cells[:-1, :-1] | cells[:-1, 1:] | cells[1:, :-1] | cells[1:, 1:]


def _source_pool(image: np.ndarray, hole_cells: np.ndarray, features: np.ndarray, options: DetailOptions
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Known blocks far enough from every hole and from the image's edge that their blur reads only photo:
    ``(detail patches (k, 2cell, 2cell, 3) float32, features (k, 12))``."""
    cell, margin = options.cell, options.margin
    reach = 1 + -(-margin // cell)  # cells around a block that its blur touches
    near = cv2.dilate(hole_cells.view(np.uint8), np.ones((2 * reach + 2, 2 * reach + 2), np.uint8),
                      anchor=(reach, reach)) > 0
    height, width = image.shape[:2]
    rows, cols = features.shape[:2]
    ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    inside = ((ys * cell - margin >= 0) & ((ys + 2) * cell + margin <= height)
              & (xs * cell - margin >= 0) & ((xs + 2) * cell + margin <= width))
    eligible = np.argwhere(inside & ~near[:rows, :cols])
    if len(eligible) == 0:
        return None
    rng = np.random.default_rng(options.seed)
    if len(eligible) > options.sources:
        eligible = eligible[np.sort(rng.choice(len(eligible), options.sources, replace=False))]
    residuals = _source_details(image, eligible, options)
    # A block across a strong edge (a window frame, a can's rim) would paste a stray bright stroke into the
    # fill: such outliers are left out of the pool.
    energy = np.abs(residuals).mean(axis=(1, 2, 3))
    calm = energy <= EDGE_ENERGY * max(float(np.median(energy)), 1e-3)
    eligible, residuals = eligible[calm], residuals[calm]
    return residuals, features[eligible[:, 0], eligible[:, 1]]


def _source_details(image: np.ndarray, blocks: np.ndarray, options: DetailOptions) -> np.ndarray:
    """(k, 2cell, 2cell, 3) float32: the detail (pixels minus their Gaussian blur) of the blocks at ``blocks``'
    (row, col) cells. The blur runs once per band of ``BAND_BLOCKS`` block rows over the
    image's width, not once per block: a block's blur reads ``margin`` pixels around it, as before."""
    cell, margin, block = options.cell, options.margin, 2 * options.cell
    residuals = np.empty((len(blocks), block, block, 3), np.float32)
    height = image.shape[0]
    bands = blocks[:, 0] // BAND_BLOCKS
    for band in np.unique(bands):
        members = np.flatnonzero(bands == band)
        first_row, last_row = blocks[members, 0].min(), blocks[members, 0].max()
        top = max(0, first_row * cell - margin)
        bottom = min(height, last_row * cell + block + margin)
        pixels = image[top:bottom].astype(np.float32)
        detail = pixels - cv2.GaussianBlur(pixels, (0, 0), options.sigma)
        for index in members:
            row, col = blocks[index]
            y, x = row * cell - top, col * cell
            residuals[index] = detail[y:y + block, x:x + block]
    return residuals


def _nearest(queries: np.ndarray, pool: np.ndarray, choices: int, rng: np.random.Generator) -> np.ndarray:
    """For each query, one of the ``choices`` pool features nearest it (squared distance), drawn at random:
    where the colours barely change, the single nearest would be one source for every block, a repeated
    patch whose lattice shows; a draw among the nearest few varies the grain. In chunks of MATCH_CHUNK."""
    pool_norms = (pool ** 2).sum(axis=1)
    choices = min(choices, len(pool))
    best = np.empty(len(queries), np.int32)
    for start in range(0, len(queries), MATCH_CHUNK):
        chunk = queries[start:start + MATCH_CHUNK]
        distances = pool_norms[None, :] - 2 * chunk @ pool.T
        nearest = np.argpartition(distances, choices - 1, axis=1)[:, :choices]
        picks = rng.integers(0, choices, len(chunk))
        best[start:start + MATCH_CHUNK] = nearest[np.arange(len(chunk)), picks]
    return best


def _window(cell: int) -> np.ndarray:
    """A block's (2cell, 2cell) sine-squared window: overlapping by half, the windows sum to 1."""
    side = 2 * cell
    ramp = np.sin(np.pi * (np.arange(side) + 0.5) / side) ** 2
    return np.outer(ramp, ramp).astype(np.float32)


def _synthesise_band(output: np.ndarray, holes: np.ndarray, best: np.ndarray, residuals: np.ndarray,
                     first_row: int, stop_row: int, cell: int, amount: float) -> None:
    """Add the detail of cell rows [first_row, stop_row) to their hole pixels. Blocks starting one row above
    reach into the band; each band sums its own cells, so bands are independent."""
    cols = best.shape[1] + 1
    band_rows = stop_row - first_row
    window = _window(cell)
    detail = np.zeros((band_rows, cell, cols, cell, 3), np.float32)
    weight = np.zeros((band_rows, cell, cols, cell), np.float32)
    for row_offset in (0, 1):  # a block's top and bottom cells
        block_rows = np.arange(first_row - row_offset, stop_row - row_offset)
        block_rows = block_rows[(block_rows >= 0) & (block_rows < best.shape[0])]
        if len(block_rows) == 0:
            continue
        for col_offset in (0, 1):
            picks = best[block_rows]  # (n, cols-1)
            used = picks >= 0
            if not used.any():
                continue
            block_row, block_col = np.nonzero(used)
            quarter = (slice(row_offset * cell, (row_offset + 1) * cell), slice(col_offset * cell, (col_offset + 1) * cell))
            patches = residuals[picks[used]][:, quarter[0], quarter[1]]  # (m, cell, cell, 3)
            win = window[quarter]
            band_row = block_rows[block_row] + row_offset - first_row
            col = block_col + col_offset
            detail[band_row, :, col, :] += patches * win[None, ..., None]
            weight[band_row, :, col, :] += win[None] ** 2
    top = first_row * cell
    height, width = holes.shape
    bottom = min(stop_row * cell, height)
    detail = detail.reshape(band_rows * cell, cols * cell, 3)[:bottom - top, :width]
    weight = weight.reshape(band_rows * cell, cols * cell)[:bottom - top, :width]
    band_holes = holes[top:bottom] & (weight > 0)
    if not band_holes.any():
        return
    strength = amount / np.sqrt(weight[band_holes])
    filled = output[top:bottom][band_holes].astype(np.float32) + detail[band_holes] * strength[:, None]
    output[top:bottom][band_holes] = np.clip(np.rint(filled), 0, 255).astype(np.uint8)
