"""``inpaint-eval``: the exported model next to OpenCV's classical inpainting.

It lives with the exporter because it runs what the exporter produced (the ONNX
model, in process) on the trainer's held-out photos.

The test set is fixed-seed crops of held-out photos (or of every image in a
folder given with ``--data``), with two families of masks: the founding
report's thin lines, and free-form strokes in hole-ratio buckets. Every method
is composited the same way, and scored on the whole image and on the holes.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click
import cv2
import numpy as np

from inpaint.core.masks import HOLE_RATIO_BUCKETS, line_mask, stroke_mask_in_bucket
from inpaint.core.repository import ONNX_FILENAME, RUN_RECORD, RepositoryError, version_dir
from inpaint.trainer import metrics
from inpaint.trainer.data import DataError, check_image_size, image_files, load_dataset, read_image, sample_crops

logger = logging.getLogger(__name__)

EVAL_METRICS = ("mae", "hole_mae", "psnr", "ssim")
METHODS = ("model", "telea", "ns", "no_fill")
Method = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class MaskSet:
    name: str
    images: np.ndarray  # (N, S, S, 3) uint8 truth
    masks: np.ndarray   # (N, S, S) uint8, 1 = hole


def build_test_sets(photos: list[np.ndarray], size: int, count: int, seed: int) -> list[MaskSet]:
    """Lines, then one stroke set per hole-ratio bucket; each set from its own seed."""
    sets = []
    rng = np.random.default_rng([seed, 0])
    crops = sample_crops(photos, count, size, rng, flip=False)
    sets.append(MaskSet("lines", crops, np.stack([line_mask(size, size, rng) for _ in range(count)])))
    for index, (low, high) in enumerate(HOLE_RATIO_BUCKETS, start=1):
        rng = np.random.default_rng([seed, index])
        crops = sample_crops(photos, count, size, rng, flip=False)
        masks = np.stack([stroke_mask_in_bucket(size, size, low, high, rng) for _ in range(count)])
        sets.append(MaskSet(f"strokes {low:.0%}-{high:.0%}", crops, masks))
    return sets


def opencv_method(flag: int) -> Method:
    def run(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return np.stack([cv2.inpaint(img, (m > 0).astype(np.uint8), 3, flag) for img, m in zip(images, masks)])

    return run


def no_fill(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Holes left black: the baseline row, and the input column of the examples picture."""
    return np.where(masks[..., None] > 0, 0, images).astype(np.uint8)


def evaluate(methods: dict[str, Method], sets: list[MaskSet]) -> dict[str, dict[str, dict[str, float]]]:
    """``results[mask_set][method][metric]``; every output is composited before scoring."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    for mask_set in sets:
        results[mask_set.name] = {}
        for name, method in methods.items():
            output = metrics.composite(mask_set.images, mask_set.masks, method(mask_set.images, mask_set.masks))
            results[mask_set.name][name] = metrics.all_metrics(mask_set.images, output, mask_set.masks, EVAL_METRICS)
        results[mask_set.name]["hole_ratio"] = {"mean": float(mask_set.masks.mean())}
    return results


def markdown_table(results: dict) -> str:
    lines = ["| masks | hole % | method | MAE | hole-MAE | PSNR (dB) | SSIM |", "|---|---|---|---|---|---|---|"]
    for set_name, by_method in results.items():
        ratio = by_method["hole_ratio"]["mean"]
        for method in METHODS:
            if method not in by_method:
                continue
            m = by_method[method]
            lines.append(f"| {set_name} | {ratio:.1%} | {method} | {m['mae']:.4f} | {m['hole_mae']:.4f} "
                         f"| {m['psnr']:.2f} | {m['ssim']:.3f} |")
    return "\n".join(lines)


def model_vs_ns(results: dict) -> dict[str, float]:
    """Hole-MAE of the model divided by NS's, per mask set: below 1 means the model wins."""
    return {name: r["model"]["hole_mae"] / max(r["ns"]["hole_mae"], 1e-12) for name, r in results.items()}


def example_grid(methods: dict[str, Method], sets: list[MaskSet], tile: int = 128) -> np.ndarray:
    """One row per mask set: masked input, model, Telea, NS, truth."""
    columns = [("input", no_fill), ("model", methods["model"]), ("telea", methods["telea"]),
               ("ns", methods["ns"]), ("truth", lambda images, masks: images)]
    header = np.full((24, tile * len(columns), 3), 255, np.uint8)
    for index, (title, _) in enumerate(columns):
        cv2.putText(header, title, (index * tile + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    rows = [header]
    for mask_set in sets:
        image, mask = mask_set.images[:1], mask_set.masks[:1]
        tiles = [metrics.composite(image, mask, fill(image, mask))[0] if title not in ("input", "truth")
                 else fill(image, mask)[0] for title, fill in columns]
        rows.append(np.concatenate([cv2.resize(t, (tile, tile), interpolation=cv2.INTER_NEAREST) for t in tiles], 1))
    return np.concatenate(rows, 0)


def read_run_record(path: Path) -> dict:
    record = path / RUN_RECORD
    return json.loads(record.read_text()) if record.is_file() else {}


def evaluation_photos(data: str | None, run: dict) -> tuple[str, list[np.ndarray], list[str]]:
    """A folder given with --data is used whole; otherwise the training source's held-out split."""
    if data is not None:
        files = image_files(Path(data))
        return data, [read_image(path) for path in files], [str(path) for path in files]
    source = run.get("config", {}).get("data", "samples")
    dataset = load_dataset(source)
    return f"{source} (held out)", dataset.test, dataset.names.get("test", [])


@click.command(context_settings={"show_default": True})
@click.argument("model_base_path", type=click.Path(path_type=Path), envvar="INPAINT_MODEL_BASE_PATH")
@click.option("--version", type=click.IntRange(min=1), default=None, envvar="INPAINT_VERSION",
              help="Version to evaluate [default: the latest].")
@click.option("--data", type=str, default=None, envvar="INPAINT_EVAL_DATA",
              help="Folder of test images [default: the training source's held-out photos].")
@click.option("--report", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/eval"),
              envvar="INPAINT_REPORT", help="Folder for eval.json and examples.png.")
@click.option("--image-size", type=click.IntRange(min=8), default=None, envvar="INPAINT_IMAGE_SIZE",
              help="Test crop side [default: the model's training crop size].")
@click.option("--count", type=click.IntRange(min=1), default=100, envvar="INPAINT_EVAL_COUNT",
              help="Test crops per mask set.")
@click.option("--seed", type=int, default=1234, envvar="INPAINT_EVAL_SEED", help="Seed of the test crops and masks.")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs and tracebacks.")
def main(model_base_path: Path, version: int | None, data: str | None, report: Path, image_size: int | None,
         count: int, seed: int, verbose: bool) -> None:
    """Score the exported ONNX model against cv2.inpaint (Telea, NS) and no fill."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        path = version_dir(model_base_path, version)
        if not (path / ONNX_FILENAME).is_file():
            raise RepositoryError(f"{path} has no {ONNX_FILENAME}; run inpaint-export {model_base_path} first")
        run = read_run_record(path)
        size = image_size or run.get("config", {}).get("image_size", 64)
        source, photos, names = evaluation_photos(data, run)
        check_image_size(photos, size, names)
        from inpaint.core.onnx_model import OnnxModel

        methods: dict[str, Method] = {
            "model": OnnxModel(path / ONNX_FILENAME).inpaint,
            "telea": opencv_method(cv2.INPAINT_TELEA),
            "ns": opencv_method(cv2.INPAINT_NS),
            "no_fill": no_fill,
        }
        sets = build_test_sets(photos, size, count, seed)
        results = evaluate(methods, sets)
        report.mkdir(parents=True, exist_ok=True)
        ratios = model_vs_ns(results)
        summary = {"model": str(path), "test_data": source, "image_size": size, "count_per_set": count,
                   "seed": seed, "results": results, "model_hole_mae_over_ns": ratios}
        (report / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
        cv2.imwrite(str(report / "examples.png"), cv2.cvtColor(example_grid(methods, sets), cv2.COLOR_RGB2BGR))
    except (RepositoryError, DataError, ValueError, OSError) as error:
        if verbose:
            raise
        raise click.ClickException(str(error)) from None
    click.echo(f"model {path} on {source}, {count} crops of {size}x{size} per mask set\n")
    click.echo(markdown_table(results))
    click.echo("\nhole-MAE, model / NS (below 1 = model better): "
               + ", ".join(f"{name} {ratio:.2f}" for name, ratio in ratios.items()))
    click.echo(f"wrote {report / 'eval.json'} and {report / 'examples.png'}")


if __name__ == "__main__":
    main()
