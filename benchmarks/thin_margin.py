"""How much context a scratch needs: hole-MAE of windows with 64, 48 and 32-px margins against the whole
photo in one run and cv2.inpaint NS, on the held-out photos with thin lines (2-16 px wide).

    python benchmarks/thin_margin.py [--model models/pretrained/inpaint] [--photos data/photos]

Every line is thin enough (within 8 px of a known pixel) for ``TilingOptions.thin_margin`` to apply; the
windows are forced on every photo (``mode="always"``, no downscaled pass) so the margin is all that differs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from inpaint.core.onnx_model import OnnxModel
from inpaint.core.tiling import TilingOptions, inpaint_tiled
from inpaint.trainer.data import load_folder

MARGINS = (64, 48, 32)
LINE_WIDTHS = (2, 4, 8, 12, 16)


def thin_lines(height: int, width: int, rng: np.random.Generator, count: int = 4) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    for _ in range(count):
        start, end = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(2)]
        cv2.line(mask, start, end, 1, int(rng.choice(LINE_WIDTHS)))
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/pretrained/inpaint"), help="model base path")
    parser.add_argument("--photos", type=Path, default=Path("data/photos"), help="photo folder (its test split)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    version = max((p for p in args.model.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    model = OnnxModel(version / "model.onnx")
    rng = np.random.default_rng(args.seed)
    scores: dict[str, list[float]] = {}
    photos = load_folder(args.photos, splits=("test",)).test
    for photo in photos:
        mask = thin_lines(*photo.shape[:2], rng)
        holes = mask > 0
        outputs = {"whole photo": inpaint_tiled(photo, mask, model.inpaint, TilingOptions(mode="off")),
                   "NS": cv2.inpaint(photo, mask, 3, cv2.INPAINT_NS)}
        for margin in MARGINS:
            options = TilingOptions(mode="always", margin=margin, thin_margin=margin, wide_hole=0)
            outputs[f"windows, {margin}-px margin"] = inpaint_tiled(photo, mask, model.inpaint, options)
        for name, output in outputs.items():
            scores.setdefault(name, []).append(float(np.abs(output.astype(int) - photo)[holes].mean() / 255))
    print(f"{len(photos)} held-out photos, 4 lines of {', '.join(map(str, LINE_WIDTHS))} px each:\n")
    print("| how | hole-MAE |\n|---|---|")
    for name, values in scores.items():
        print(f"| {name} | {np.mean(values):.4f} |")


if __name__ == "__main__":
    main()
