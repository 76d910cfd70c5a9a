"""``inpaint-eval``: the exported model next to OpenCV's classical inpainting, at three sizes.

It lives with the exporter because it runs what the exporter produced (the ONNX
model, in process) on the trainer's held-out photos (or on every image in a
folder given with ``--data``).

Sizes (``--sizes``): fixed-seed 64 px and 256 px crops (``sample_crops``: a
random square of 1-8 times the side, resized to it), and every photo whole, at
its own resolution with no resizing, one photo at a time. Mask sets per size:
the founding report's ``lines`` and free-form strokes in the hole-ratio buckets
of ``STROKE_BUCKETS``; both generators scale with the image, so each size's
masks are drawn at that size's own scale. Every (size, mask set) draws its
crops and masks from its own seed stream, so picking a subset of sizes changes
no number.

Methods: the model, ``cv2.inpaint`` Telea and NS (radius 3), and no fill. Each
gets the masked input (holes black, so no method can see the truth), and every
output is composited the same way before scoring. Metrics: MAE, PSNR, SSIM on
the whole image; hole-MAE; and two that see blur (``trainer/metrics.py``):
texture (the fill's Sobel gradient over the photo's, in the holes without their
border: 1 = as much texture as the photo, 0 = flat) and hole-box SSIM (SSIM over
each image's hole bounding box). Sets are scored in batches (crops) or photo by
photo (whole) and the scores pooled as one batch would be: MAE and hole-MAE over
pixels, texture as one sum of gradients over all the set's scored pixels, PSNR,
SSIM and hole-box SSIM averaged over images.

Writes ``eval.json`` (every metric, the model/NS hole-MAE ratio per row and the
worst one), ``examples.png`` (one row per size and mask set) and
``examples_full/``: the first whole photo of each mask set at full resolution,
and ``closeup_<mask set>.png``, a 1:1 crop (input, model, NS, truth) of the
whole photo and window where the hole covers the most texture (and at most
half the window, so the photo around the fill shows).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterator

import click
import cv2
import numpy as np

from inpaint.core.envvars import Command, ToolVariables
from inpaint.core.detail import DetailOptions, finish_fills
from inpaint.core.masks import line_mask, stroke_mask_in_bucket
from inpaint.core.repository import ONNX_FILENAME, RUN_RECORD, RepositoryError, version_dir
from inpaint.core.tiling import TILING_MODES, TilingOptions, inpaint_tiled
from inpaint.trainer import metrics
from inpaint.trainer.data import image_files, read_image, sample_crops, write_image
from inpaint.trainer.errors import DataError
from inpaint.trainer.sources import load_dataset

logger = logging.getLogger(__name__)

SIZES = ("64", "256", "whole")
CROP_SIDES = {"64": 64, "256": 256}
DEFAULT_COUNTS = {"64": 200, "256": 40}
# Fixed per size rather than by position in --sizes, so a subset of sizes draws the same sets.
SIZE_SEED_KEYS = {"64": 64, "256": 256, "whole": 0}
STROKE_BUCKETS: tuple[tuple[float, float], ...] = ((0.1, 0.3), (0.3, 0.5))
MASK_SETS = ("lines",) + tuple(f"strokes {low:.0%}-{high:.0%}" for low, high in STROKE_BUCKETS)
EVAL_METRICS = ("mae", "hole_mae", "psnr", "ssim", "texture", "hole_box_ssim")
METHODS = ("model", "telea", "ns", "no_fill")
CROP_BATCH = 20  # crops per model run: bounds memory at 256 px

EXAMPLE_COLUMNS = ("input", "model", "telea", "ns", "truth")
FULL_EXAMPLE_COLUMNS = ("input", "model", "ns", "truth")
EXAMPLE_TILE_HEIGHT = 192
EXAMPLE_HEADER_HEIGHT = 24
EXAMPLE_LABEL_WIDTH = 200
EXAMPLE_GAP = 6  # white space between tiles and between rows
CLOSEUP_SIDE = 320  # px of each close-up panel, at 1:1
CLOSEUP_MAX_HOLE = 0.5  # of the close-up window, so that the known pixels around the fill show

Method = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Photo:
    name: str
    pixels: np.ndarray  # (H, W, 3) uint8


@dataclass
class MaskSet:
    """One row of the report: truth images and their masks at one size."""

    size: str  # one of SIZES
    name: str  # one of MASK_SETS
    images: list[np.ndarray]  # (H, W, 3) uint8 truth; crops share one shape, whole photos don't
    masks: list[np.ndarray]  # (H, W) uint8, 1 = hole, each at its image's resolution
    names: list[str] = field(default_factory=list)  # the photo of each image; whole photos only

    @property
    def label(self) -> str:
        return f"{self.size} {self.name}"

    @property
    def batch_size(self) -> int:
        return 1 if self.size == "whole" else CROP_BATCH

    def batches(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(first index, images, masks)`` stacked in batches of ``batch_size``."""
        for start in range(0, len(self.images), self.batch_size):
            stop = start + self.batch_size
            yield start, np.stack(self.images[start:stop]), np.stack(self.masks[start:stop])


# --- test sets -------------------------------------------------------------------------------------


def parse_sizes(ctx: click.Context | None, param: click.Parameter | None, value: str) -> tuple[str, ...]:
    """``--sizes``: a comma-separated subset of SIZES, returned in SIZES order."""
    picked = {item.strip().lower() for item in value.split(",") if item.strip()}
    unknown = sorted(picked - set(SIZES))
    if unknown:
        raise click.BadParameter(f"unknown size {', '.join(map(repr, unknown))}; pick from {','.join(SIZES)}")
    if not picked:
        raise click.BadParameter(f"no size given; pick from {','.join(SIZES)}")
    return tuple(size for size in SIZES if size in picked)


def seed_stream(seed: int, size: str, set_index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SIZE_SEED_KEYS[size], set_index])


def draw_mask(set_index: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A mask of ``MASK_SETS[set_index]`` at ``height`` x ``width``."""
    if set_index == 0:
        return line_mask(height, width, rng)
    low, high = STROKE_BUCKETS[set_index - 1]
    return stroke_mask_in_bucket(height, width, low, high, rng)


def usable_photos(photos: list[Photo], size: str) -> list[Photo]:
    """The photos that hold a crop of ``size``; the others are skipped with a warning."""
    side = CROP_SIDES[size]
    usable = [photo for photo in photos if min(photo.pixels.shape[:2]) >= side]
    skipped = [photo for photo in photos if min(photo.pixels.shape[:2]) < side]
    if skipped:
        logger.warning("%s px crops: skipping %d photo(s) smaller than %d px: %s", size, len(skipped), side,
                       ", ".join(f"{p.name} ({p.pixels.shape[1]}x{p.pixels.shape[0]})" for p in skipped))
    if not usable:
        raise DataError(f"no test photo is at least {side} px on its short side; leave {size} out of --sizes")
    return usable


def build_crop_set(photos: list[Photo], size: str, set_index: int, count: int, seed: int) -> MaskSet:
    rng = seed_stream(seed, size, set_index)
    side = CROP_SIDES[size]
    crops = sample_crops([photo.pixels for photo in photos], count, side, rng, flip=False)
    masks = [draw_mask(set_index, side, side, rng) for _ in range(count)]
    return MaskSet(size, MASK_SETS[set_index], list(crops), masks)


def build_whole_set(photos: list[Photo], set_index: int, seed: int) -> MaskSet:
    """Every photo once, with a mask drawn at the photo's own resolution."""
    rng = seed_stream(seed, "whole", set_index)
    masks = [draw_mask(set_index, *photo.pixels.shape[:2], rng) for photo in photos]
    return MaskSet("whole", MASK_SETS[set_index], [photo.pixels for photo in photos], masks,
                   [photo.name for photo in photos])


def build_test_sets(photos: list[Photo], sizes: tuple[str, ...], counts: dict[str, int], seed: int,
                    max_whole_photos: int | None = None) -> list[MaskSet]:
    """One MaskSet per (size, mask set), sizes in order; DataError if a size has no usable photo."""
    usable = {size: photos[:max_whole_photos] if size == "whole" else usable_photos(photos, size)
              for size in sizes}
    sets = []
    for size in sizes:
        for set_index in range(len(MASK_SETS)):
            if size == "whole":
                sets.append(build_whole_set(usable[size], set_index, seed))
            else:
                sets.append(build_crop_set(usable[size], size, set_index, counts[size], seed))
    return sets


# --- methods and scoring ---------------------------------------------------------------------------


def opencv_method(flag: int) -> Method:
    def run(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return np.stack([cv2.inpaint(img, (m > 0).astype(np.uint8), 3, flag) for img, m in zip(images, masks)])

    return run


def tiled_method(run: Method, options: TilingOptions, detail: DetailOptions = DetailOptions()) -> Method:
    """The model as the server runs it: whole, or in windows for photos over the size threshold, then the
    detail pass its version declares."""

    def each_image(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        outputs = (run(images, masks) if options.mode == "off" else
                   np.stack([inpaint_tiled(image, mask, run, options) for image, mask in zip(images, masks)]))
        finish_fills(outputs, masks, detail, options.is_tiled(*images.shape[1:3]))
        return outputs

    return each_image


def no_fill(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Holes left black: the baseline row, and the input every method is given."""
    return np.where(masks[..., None] > 0, 0, images).astype(np.uint8)


@dataclass
class PooledMetrics:
    """Scores of a set's batches, pooled as if the set had been scored as one batch.

    Each metric is a weighted mean of its batch scores (weights: pixels, hole pixels or images),
    except texture, a ratio of sums: its fill and truth gradient sums are added up over the batches.
    """

    names: tuple[str, ...] = EVAL_METRICS
    sums: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    texture_sums: list[float] = field(default_factory=lambda: [0.0, 0.0])  # fill, truth

    def add(self, truth: np.ndarray, output: np.ndarray, masks: np.ndarray) -> None:
        """Score one batch of truth and composited output."""
        scores = metrics.all_metrics(truth, output, masks, tuple(name for name in self.names if name != "texture"))
        with_hole = int(np.count_nonzero(masks.reshape(len(masks), -1).any(axis=1)))
        weights = {"mae": masks.size, "hole_mae": int(np.count_nonzero(masks)), "psnr": len(masks),
                   "ssim": len(masks), "hole_box_ssim": with_hole}
        for name, value in scores.items():
            self.sums[name] = self.sums.get(name, 0.0) + value * weights[name]
            self.weights[name] = self.weights.get(name, 0) + weights[name]
        if "texture" in self.names:
            fill, true = metrics.texture_sums(truth, output, masks)
            self.texture_sums[0] += fill
            self.texture_sums[1] += true

    def result(self) -> dict[str, float]:
        def pooled(name: str) -> float:
            if name == "texture":
                return metrics.texture_from_sums(*self.texture_sums)
            weight = self.weights.get(name, 0)
            if name == "hole_box_ssim" and not weight:
                return 1.0  # no hole anywhere, as metrics.hole_box_ssim
            return self.sums[name] / weight if weight else 0.0

        return {name: pooled(name) for name in self.names}


def set_summary(mask_set: MaskSet, pooled: dict[str, PooledMetrics]) -> dict:
    summary = {"count": len(mask_set.images),
               "hole_ratio": float(np.mean([mask.mean() for mask in mask_set.masks])),
               "metrics": {name: scores.result() for name, scores in pooled.items()}}
    if mask_set.names:
        summary["images"] = [{"name": name, "width": mask.shape[1], "height": mask.shape[0],
                              "hole_ratio": round(float(mask.mean()), 4)}
                             for name, mask in zip(mask_set.names, mask_set.masks)]
    return summary


@dataclass
class Closeup:
    """Where a whole-photo set's close-up is cut: photo ``index``, window ``(top, left, height, width)``."""

    index: int
    top: int
    left: int
    height: int
    width: int
    texture: float  # the truth's gradient summed over the window's scored hole pixels

    def cut(self, image: np.ndarray) -> np.ndarray:
        return image[self.top : self.top + self.height, self.left : self.left + self.width]


def window_sums(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """The sum of ``values`` over every ``height`` x ``width`` window, indexed by its top-left corner."""
    total = cv2.integral(values.astype(np.float64), sdepth=cv2.CV_64F)
    return total[height:, width:] - total[:-height, width:] - total[height:, :-width] + total[:-height, :-width]


def closeup_window(image: np.ndarray, mask: np.ndarray, index: int = 0, side: int = CLOSEUP_SIDE) -> Closeup:
    """The ``side`` x ``side`` window (smaller on a smaller photo) where the truth's gradient, summed
    over the hole pixels that texture scores, is highest: a thick stroke over the most structure.
    Only windows whose hole covers at most ``CLOSEUP_MAX_HOLE`` of them compete (all windows if none
    does), so the fill is seen beside the photo it continues. Ties go to the top-left-most window,
    so it is deterministic."""
    region = metrics.texture_region(mask[None])[0]
    gradient = np.where(region, metrics.gradient_magnitude(image[None])[0], 0.0)
    height, width = min(side, mask.shape[0]), min(side, mask.shape[1])
    sums = window_sums(gradient, height, width)
    framed = window_sums(mask > 0, height, width) <= CLOSEUP_MAX_HOLE * height * width
    if framed.any():
        sums = np.where(framed, sums, -1.0)
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return Closeup(index, int(top), int(left), height, width, float(sums[top, left]))


def pick_closeup(mask_set: MaskSet) -> Closeup:
    """The whole photo, and window, whose holes cover the most texture (the first such on a tie)."""
    windows = [closeup_window(image, mask, index) for index, (image, mask) in
               enumerate(zip(mask_set.images, mask_set.masks))]
    return max(windows, key=lambda window: window.texture)  # max keeps the first of equals


def score_set(methods: dict[str, Method], mask_set: MaskSet) -> tuple[dict, dict[str, np.ndarray]]:
    """The set's summary, and its first image as each example column shows it; whole-photo sets
    also get ``closeup``, a 1:1 close-up picture (``FULL_EXAMPLE_COLUMNS`` of the methods run)."""
    pooled = {name: PooledMetrics() for name in methods}
    example: dict[str, np.ndarray] = {}
    closeup = pick_closeup(mask_set) if mask_set.size == "whole" else None
    for start, images, masks in mask_set.batches():
        if mask_set.names:
            logger.info("%s: photo %d/%d, %s (%dx%d)", mask_set.label, start + 1, len(mask_set.images),
                        mask_set.names[start], images.shape[2], images.shape[1])
        masked = no_fill(images, masks)
        outputs = {"input": masked, "truth": images}
        for name, method in methods.items():
            outputs[name] = metrics.composite(images, masks, method(masked, masks))
            pooled[name].add(images, outputs[name], masks)
        if start == 0:
            example.update({name: output[0] for name, output in outputs.items()})
        if closeup is not None and start <= closeup.index < start + len(images):
            example["closeup"] = closeup_picture({column: closeup.cut(outputs[column][closeup.index - start])
                                                  for column in FULL_EXAMPLE_COLUMNS if column in outputs})
    summary = set_summary(mask_set, pooled)
    if closeup is not None:
        summary["closeup"] = {"image": mask_set.names[closeup.index], "top": closeup.top, "left": closeup.left,
                              "height": closeup.height, "width": closeup.width}
        logger.info("%s: close-up of %s at (%d, %d), %dx%d", mask_set.label, mask_set.names[closeup.index],
                    closeup.left, closeup.top, closeup.width, closeup.height)
    return summary, example


def evaluate(methods: dict[str, Method], sets: list[MaskSet]) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """``results[size][mask set]`` summaries, and each set's example images keyed by its label."""
    results: dict[str, dict[str, dict]] = {}
    examples: dict[str, dict[str, np.ndarray]] = {}
    for index, mask_set in enumerate(sets, start=1):
        started = time.monotonic()
        logger.info("%s (%d/%d): scoring %d images", mask_set.label, index, len(sets), len(mask_set.images))
        summary, examples[mask_set.label] = score_set(methods, mask_set)
        results.setdefault(mask_set.size, {})[mask_set.name] = summary
        logger.info("%s: done in %.1f s", mask_set.label, time.monotonic() - started)
    return results, examples


def hole_mae_ratio(summary: dict) -> float:
    """Model hole-MAE over NS's: below 1 means the model wins."""
    scores = summary["metrics"]
    return scores["model"]["hole_mae"] / max(scores["ns"]["hole_mae"], 1e-12)


def model_vs_ns(results: dict) -> dict[str, float]:
    return {f"{size} {name}": hole_mae_ratio(summary)
            for size, by_set in results.items() for name, summary in by_set.items()}


def markdown_table(results: dict) -> str:
    """Hole-MAE, texture and hole-box SSIM per method, one row per size and mask set."""
    methods = " | ".join(method.replace("_", " ") for method in METHODS[1:])
    lines = [f"| size | masks | hole % | model | {methods} | model / NS "
             f"| texture model | {methods} | box SSIM model | {methods} |",
             "|---" * (4 + 3 * len(METHODS)) + "|"]
    for size, by_set in results.items():
        for name, summary in by_set.items():
            scores = summary["metrics"]
            hole_maes = " | ".join(f"{scores[method]['hole_mae']:.4f}" for method in METHODS)
            textures = " | ".join(f"{scores[method]['texture']:.2f}" for method in METHODS)
            box_ssims = " | ".join(f"{scores[method]['hole_box_ssim']:.3f}" for method in METHODS)
            lines.append(f"| {size} | {name} | {summary['hole_ratio']:.1%} | {hole_maes} "
                         f"| {hole_mae_ratio(summary):.2f} | {textures} | {box_ssims} |")
    return "\n".join(lines)


# --- example pictures ------------------------------------------------------------------------------


def scaled_to_height(image: np.ndarray, height: int) -> np.ndarray:
    """Aspect kept; crops are enlarged with visible pixels, photos reduced smoothly."""
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    interpolation = cv2.INTER_NEAREST if height >= image.shape[0] else cv2.INTER_AREA
    return cv2.resize(image, (width, height), interpolation=interpolation)


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int]) -> None:
    cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)


def example_grid(examples: dict[str, dict[str, np.ndarray]], tile_height: int = EXAMPLE_TILE_HEIGHT) -> np.ndarray:
    """One row per (size, mask set): masked input, model, Telea, NS, truth, each scaled to ``tile_height``.

    Every column is as wide as its widest tile, so whole photos of any aspect line up under the header.
    """
    tiles = {label: [scaled_to_height(example[column], tile_height) for column in EXAMPLE_COLUMNS]
             for label, example in examples.items()}
    slot = max(tile.shape[1] for row in tiles.values() for tile in row) + EXAMPLE_GAP
    width = EXAMPLE_LABEL_WIDTH + slot * len(EXAMPLE_COLUMNS)
    header = np.full((EXAMPLE_HEADER_HEIGHT, width, 3), 255, np.uint8)
    for index, column in enumerate(EXAMPLE_COLUMNS):
        _text(header, column, (EXAMPLE_LABEL_WIDTH + index * slot, 17))
    rows = [header]
    for label, row_tiles in tiles.items():
        row = np.full((tile_height + EXAMPLE_GAP, width, 3), 255, np.uint8)
        _text(row, label, (6, tile_height // 2))
        for index, tile in enumerate(row_tiles):
            left = EXAMPLE_LABEL_WIDTH + index * slot
            row[:tile_height, left : left + tile.shape[1]] = tile
        rows.append(row)
    return np.concatenate(rows, 0)


def closeup_picture(panels: dict[str, np.ndarray]) -> np.ndarray:
    """The panels side by side at 1:1 under a header naming them, ``EXAMPLE_GAP`` white between."""
    height = max(panel.shape[0] for panel in panels.values())
    width = sum(panel.shape[1] + EXAMPLE_GAP for panel in panels.values()) - EXAMPLE_GAP
    canvas = np.full((EXAMPLE_HEADER_HEIGHT + height, width, 3), 255, np.uint8)
    left = 0
    for column, panel in panels.items():
        _text(canvas, column, (left, 17))
        canvas[EXAMPLE_HEADER_HEIGHT : EXAMPLE_HEADER_HEIGHT + panel.shape[0], left : left + panel.shape[1]] = panel
        left += panel.shape[1] + EXAMPLE_GAP
    return canvas


def slug(name: str) -> str:
    """``strokes 10%-30%`` -> ``strokes-10-30``: a file-name-safe mask set name."""
    return "-".join(name.replace("%", "").replace("-", " ").split())


def write_full_examples(folder: Path, sets: list[MaskSet], examples: dict[str, dict[str, np.ndarray]]) -> list[Path]:
    """For each whole-photo set, its first photo at full resolution, ``<mask set>_<column>.png``, and
    its close-up, ``closeup_<mask set>.png``."""
    written = []
    for mask_set in sets:
        if mask_set.size != "whole":
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for column in FULL_EXAMPLE_COLUMNS:
            path = folder / f"{slug(mask_set.name)}_{column}.png"
            write_image(path, examples[mask_set.label][column])
            written.append(path)
        logger.info("full-size examples of %s: %s", mask_set.label, mask_set.names[0])
        if "closeup" in examples[mask_set.label]:
            path = folder / f"closeup_{slug(mask_set.name)}.png"
            write_image(path, examples[mask_set.label]["closeup"])
            written.append(path)
    return written


# --- command line ----------------------------------------------------------------------------------


def read_run_record(path: Path) -> dict:
    record = path / RUN_RECORD
    return json.loads(record.read_text()) if record.is_file() else {}


def evaluation_photos(data: str | None, run: dict) -> tuple[str, list[Photo]]:
    """A folder given with --data is used whole; otherwise the training source's held-out split."""
    if data is not None:
        folder = Path(data)
        return data, [Photo(str(path.relative_to(folder)), read_image(path)) for path in image_files(folder)]
    source = run.get("config", {}).get("data", "samples")
    dataset = load_dataset(source, splits=("test",))
    names = dataset.names.get("test", [])
    if len(names) != len(dataset.test):
        names = [f"#{index}" for index in range(len(dataset.test))]
    return f"{source} (held out)", [Photo(name, image) for name, image in zip(names, dataset.test)]


def describe_sets(sets: list[MaskSet]) -> str:
    per_size = {mask_set.size: len(mask_set.images) for mask_set in sets}
    parts = [f"{count} whole photos at their own resolution" if size == "whole"
             else f"{count} crops of {size}x{size}" for size, count in per_size.items()]
    return ", ".join(parts) + " per mask set"


def renamed_flag(tile_above_pixels: int, whole_max_pixels: int | None) -> int:
    """--tile-above-pixels, or its old name --whole-max-pixels with a warning (not both)."""
    if whole_max_pixels is None:
        return tile_above_pixels
    if click.get_current_context().get_parameter_source("tile_above_pixels") != click.core.ParameterSource.DEFAULT:
        raise click.UsageError("give --tile-above-pixels, not its old name --whole-max-pixels too")
    logger.warning("--whole-max-pixels is now --tile-above-pixels, as inpaint-serve and inpaint-client name it")
    return whole_max_pixels


# INPAINT_EVAL_<OPTION> (--sizes: INPAINT_EVAL_SIZES; the argument: INPAINT_EVAL_MODEL_BASE_PATH); the unprefixed
# names read before issue 24 are refused when set.
VARIABLES = ToolVariables("inpaint-eval", "INPAINT_EVAL_")
VARIABLES.rename({"INPAINT_MODEL_BASE_PATH": "--model-base-path", "INPAINT_VERSION": "--version",
                  "INPAINT_REPORT": "--report", "INPAINT_EVAL_WHOLE_MAX_PIXELS": "--tile-above-pixels"})
option = VARIABLES.option


@click.command(cls=Command, variables=VARIABLES, context_settings={"show_default": True})
@click.argument("model_base_path", type=click.Path(path_type=Path), envvar=VARIABLES.envvar("--model-base-path"))
@option("--version", type=click.IntRange(min=1), default=None,
        help="Version to evaluate [default: the latest].")
@option("--data", type=str, default=None,
        help="Folder of test images [default: the training source's held-out photos].")
@option("--report", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/eval"),
        help="Folder for eval.json, examples.png and examples_full/.")
@option("--sizes", default=",".join(SIZES), callback=parse_sizes,
        help="Comma-separated sizes to score: 64 and 256 px crops, whole photos.")
@option("--count-64", type=click.IntRange(min=1), default=DEFAULT_COUNTS["64"],
        help="64 px crops per mask set.")
@option("--count-256", type=click.IntRange(min=1), default=DEFAULT_COUNTS["256"],
        help="256 px crops per mask set.")
@option("--max-whole-photos", type=click.IntRange(min=1), default=None,
        help="Score only the first N photos whole [default: all].")
@option("--seed", type=click.IntRange(min=0), default=1234,
        help="Seed of the test crops and masks.")
@option("--tiling", type=click.Choice(TILING_MODES), default="auto",
        help="How the model sees photos over --tile-above-pixels, as the server does (core/tiling.py).")
@option("--tile-above-pixels", type=click.IntRange(min=1), default=TilingOptions.tile_above_pixels,
        help="Photos up to this size run whole under --tiling auto (inpaint-serve's --tile-above-pixels); wide "
             "holes run at this size.")
@click.option("--whole-max-pixels", "renamed_whole_max_pixels", type=click.IntRange(min=1), default=None,
              hidden=True, help="The old name of --tile-above-pixels: still read, with a warning.")
@option("--wide-hole", type=click.IntRange(min=0), default=TilingOptions.wide_hole,
        help="Holes reaching farther than this from known pixels take the downscaled pass (0: never).")
@option("--detail-amount", type=click.FloatRange(0, 2), default=None,
        help="Strength of the detail pass on images run whole (0: off) [default: what the version declares in "
             "assets.extra/detail.json].")
@option("--detail-amount-tiled", type=click.FloatRange(0, 2), default=None,
        help="The same on photos over --tile-above-pixels [default: what the version declares].")
@option("-v", "--verbose", is_flag=True, help="Show debug logs and tracebacks.")
def main(model_base_path: Path, version: int | None, data: str | None, report: Path, sizes: tuple[str, ...],
         count_64: int, count_256: int, max_whole_photos: int | None, seed: int, tiling: str,
         tile_above_pixels: int, renamed_whole_max_pixels: int | None,
         wide_hole: int, detail_amount: float | None, detail_amount_tiled: float | None,
         verbose: bool) -> None:
    """Score the exported ONNX model against cv2.inpaint (Telea, NS) and no fill, at three sizes."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    tile_above_pixels = renamed_flag(tile_above_pixels, renamed_whole_max_pixels)
    try:
        path = version_dir(model_base_path, version)
        if not (path / ONNX_FILENAME).is_file():
            raise RepositoryError(f"{path} has no {ONNX_FILENAME}; run inpaint-export {model_base_path} first")
        source, photos = evaluation_photos(data, read_run_record(path))
        sets = build_test_sets(photos, sizes, {"64": count_64, "256": count_256}, seed, max_whole_photos)
        from inpaint.core.onnx_model import OnnxModel

        # ORT's arena keeps the largest whole photo's peak (about 2.7 GB for 2048 px photos and the
        # default model, against 1.2 GB without), but makes whole photos 1.4x faster.
        model = OnnxModel(path / ONNX_FILENAME)
        detail = model.detail.with_amounts(detail_amount, detail_amount_tiled)
        methods: dict[str, Method] = {
            "model": tiled_method(model.inpaint, TilingOptions(tiling, tile_above_pixels, wide_hole=wide_hole),
                                        detail),
            "telea": opencv_method(cv2.INPAINT_TELEA),
            "ns": opencv_method(cv2.INPAINT_NS),
            "no_fill": no_fill,
        }
        results, examples = evaluate(methods, sets)
        ratios = model_vs_ns(results)
        summary = {"model": str(path), "test_data": source, "seed": seed, "sizes": results,
                   "tiling": {"mode": tiling, "tile_above_pixels": tile_above_pixels, "wide_hole": wide_hole},
                   "detail": asdict(detail),
                   "model_hole_mae_over_ns": ratios, "worst_ratio": max(ratios.values())}
        report.mkdir(parents=True, exist_ok=True)
        (report / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
        write_image(report / "examples.png", example_grid(examples))
        full = write_full_examples(report / "examples_full", sets, examples)
    except (RepositoryError, DataError, ValueError, OSError) as error:
        if verbose:
            raise
        raise click.ClickException(str(error)) from None
    click.echo(f"model {path} on {source}: {describe_sets(sets)}\n")
    click.echo("hole-MAE (lower is better); model / NS below 1 = model better; texture: the fill's luma "
               "gradient over the photo's in the holes (1 = as much as the photo, 0 = flat); box SSIM: SSIM over "
               "each image's hole bounding box (1 = identical)\n")
    click.echo(markdown_table(results))
    worst = max(ratios, key=ratios.get)
    click.echo(f"\nworst model / NS: {ratios[worst]:.2f} ({worst})")
    written = [report / "eval.json", report / "examples.png"] + ([report / "examples_full"] if full else [])
    click.echo("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
