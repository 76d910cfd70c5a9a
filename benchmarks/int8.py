"""int8 for the CPU: quantize a version's model.onnx statically and score it against the float32 original.

    python benchmarks/int8.py [--model models/pretrained/inpaint/1] [--photos data/photos]
                              [--calibration 24] [--keep-float-convs 12] [--out reports/int8] [--install]

ONNX Runtime's static quantization (QDQ, int8 weights per channel, uint8 activations, percentile ranges) of
the network's convolutions, calibrated on 256 px crops of the *training* split of ``--photos`` with stroke
masks. The ``--keep-float-convs`` convolutions that matter most stay float32: each convolution is quantized
alone and ranked by how far the fills move from float32's on other training crops (``sensitivity``; the
first convolutions at full resolution lead). The quantized version is written to ``OUT/base/inpaint/1`` (a
copy of the version, its ``model.onnx`` replaced), then ``inpaint-eval`` scores both on the held-out photos
at 64 and 256 px and the table gives int8 / float32 for hole-MAE and texture per row. The project's bar for
a reduced precision (issue 23): hole-MAE within 1 % of float32 on every row. Its speed: ``python
benchmarks/cpu_runtimes.py --model OUT/base/inpaint/1`` (ONNX Runtime and OpenVINO on the int8 graph,
TensorFlow on the float SavedModel). With ``--install``, a graph within the bar on every row (hole-MAE and
texture) is written to the version as ``model.int8.onnx``, which ``inpaint-serve --precision int8`` serves.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CROP = 256
QUALITY_BAR = 0.01  # a reduced precision ships only within 1 % of float32 (issue 23)


def training_crops(photos: Path, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` random 256 px RGB crops of the training split's photos (never the held-out ones)."""
    from inpaint.trainer.data import image_files, read_image, split_of_name

    rng = np.random.default_rng(seed)
    names = [path for path in image_files(photos) if split_of_name(str(path.relative_to(photos))) == "train"]
    crops = []
    while len(crops) < count:
        image = read_image(names[rng.integers(len(names))])
        if min(image.shape[:2]) < CROP:
            continue
        top, left = rng.integers(image.shape[0] - CROP + 1), rng.integers(image.shape[1] - CROP + 1)
        crops.append(image[top : top + CROP, left : left + CROP])
    return crops


def calibration_feeds(photos: Path, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Model inputs: ``count`` training crops, each with a stroke mask over 10-40 % of it."""
    from inpaint.core.contract import IMAGE, MASK
    from inpaint.core.masks import stroke_mask_in_bucket

    rng = np.random.default_rng(seed + 1)
    return [{IMAGE: crop[None], MASK: stroke_mask_in_bucket(CROP, CROP, 0.1, 0.4, rng)[None, ..., None]
             .astype(np.uint8)} for crop in training_crops(photos, count, seed)]


def quantized_copy(model: Path, out: Path, feeds: list[dict], *, include=None, exclude=()) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    remaining = iter(feeds)

    class Feeds(CalibrationDataReader):
        def get_next(self):
            return next(remaining, None)

    # Percentile ranges (99.999 %) rather than min-max: a few extreme activations no longer stretch the
    # scale of every other value (1.0060 against 1.0087 of float32's hole error, measured).
    quantize_static(str(model), str(out), Feeds(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.Percentile, nodes_to_quantize=include,
                    nodes_to_exclude=list(exclude))


def fills(model: Path, feeds: list[dict]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return [session.run(None, feed)[0].astype(np.float32) for feed in feeds]


def sensitivity(model: Path, convs: list[str], calibration: list[dict], probes: list[dict],
                scratch: Path) -> dict[str, float]:
    """For each convolution, quantized alone: the mean absolute change of the fills (levels, hole pixels)."""
    from inpaint.core.contract import MASK

    reference = fills(model, probes)
    holes = [np.repeat(feed[MASK].astype(bool), 3, -1) for feed in probes]
    moved = {}
    for conv in convs:
        quantized_copy(model, scratch, calibration, include=[conv])
        moved[conv] = float(np.mean([np.abs(fill - ref)[hole].mean() for fill, ref, hole
                                     in zip(fills(scratch, probes), reference, holes)]))
    return moved


def quantize(version: Path, out: Path, photos: Path, count: int, keep_float: int) -> Path:
    import onnx

    model = version / "model.onnx"
    calibration = calibration_feeds(photos, count, seed=0)
    convs = [node.name for node in onnx.load(str(model)).graph.node if node.op_type == "Conv"]
    kept = []
    if keep_float:
        out.mkdir(parents=True, exist_ok=True)
        moved = sensitivity(model, convs, calibration, calibration_feeds(photos, 12, seed=7), out / "one-conv.onnx")
        (out / "sensitivity.json").write_text(json.dumps(moved, indent=1) + "\n")
        kept = sorted(convs, key=moved.get, reverse=True)[:keep_float]
    quantized = out / "base" / "inpaint" / "1"
    shutil.rmtree(out / "base", ignore_errors=True)
    shutil.copytree(version, quantized)
    quantized_copy(model, quantized / "model.onnx", calibration, exclude=kept)
    return quantized


def evaluate(version: Path, report: Path) -> dict:
    subprocess.run([sys.executable, "-m", "inpaint.export.evaluate", str(version.parent), "--version",
                    version.name, "--sizes", "64,256", "--report", str(report)], check=True,
                   stdout=subprocess.DEVNULL)
    return json.loads((report / "eval.json").read_text())["sizes"]


def ratio_table(base: dict, int8: dict) -> str:
    lines = ["| size | row | hole-MAE int8 / f32 | texture int8 / f32 | int8 hole-MAE / NS |", "|---|---|---|---|---|"]
    for size, rows in base.items():
        for row, scores in rows.items():
            float32, quantized = scores["metrics"]["model"], int8[size][row]["metrics"]["model"]
            ns = scores["metrics"]["ns"]["hole_mae"]
            lines.append(f"| {size} | {row} | {quantized['hole_mae'] / float32['hole_mae']:.3f} | "
                         f"{quantized['texture'] / float32['texture']:.3f} | {quantized['hole_mae'] / ns:.3f} |")
    return "\n".join(lines)


def within_bar(base: dict, int8: dict, bar: float = QUALITY_BAR) -> bool:
    """Whether hole-MAE and texture are within ``bar`` of float32's on every row."""
    for size, rows in base.items():
        for row, scores in rows.items():
            float32, quantized = scores["metrics"]["model"], int8[size][row]["metrics"]["model"]
            if quantized["hole_mae"] > float32["hole_mae"] * (1 + bar):
                return False
            if abs(quantized["texture"] / float32["texture"] - 1) > bar:
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "pretrained" / "inpaint" / "1",
                        help="the version folder to quantize")
    parser.add_argument("--photos", type=Path, default=ROOT / "data" / "photos",
                        help="calibration photos (their training split; make photos)")
    parser.add_argument("--calibration", type=int, default=24, help="calibration crops")
    # With 8 the fills of scikit-image's photos (tests/test_int8.py) carried 1.0-1.3 % more texture than
    # float32's (quantization noise in smooth fills); with 12, 0.3 %, for ~10 % of int8's speed at 1024 px.
    parser.add_argument("--keep-float-convs", type=int, default=12,
                        help="the convolutions most sensitive to int8 left in float32")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "int8")
    parser.add_argument("--install", action="store_true",
                        help="if every row is within 1 %% of float32, write the graph to the version as "
                             "model.int8.onnx (what inpaint-serve --precision int8 serves)")
    args = parser.parse_args()
    quantized = quantize(args.model, args.out, args.photos, args.calibration, args.keep_float_convs)
    base, int8 = evaluate(args.model, args.out / "eval-float32"), evaluate(quantized, args.out / "eval-int8")
    table = ratio_table(base, int8)
    (args.out / "int8.md").write_text(table + "\n")
    print(table)
    if args.install:
        from inpaint.core.repository import INT8_FILENAME

        if not within_bar(base, int8):
            raise SystemExit(f"not installed: a row is more than {QUALITY_BAR:.0%} from float32 (above)")
        shutil.copyfile(quantized / "model.onnx", args.model / INT8_FILENAME)
        print(f"installed: {args.model / INT8_FILENAME}")


if __name__ == "__main__":
    main()
