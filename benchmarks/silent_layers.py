"""Which of a version's ReLU layers never fire: a layer whose outputs are all zero passes nothing on, and no
gradient back, so what lies behind it (a deeper U-Net level, a Fourier unit at the bottleneck) neither
reaches the fill nor learns.

    python benchmarks/silent_layers.py [--model models/pretrained/inpaint/1] [--photos data/photos]
                                       [--crops 12] [--size 256] [--out reports/silent]

Runs the version's ``model.onnx`` (ONNX Runtime, every ReLU's output made a graph output) on ``--crops``
crops of the held-out photos with stroke masks over 10-50 % of each, and prints, per ReLU layer, the share
of its outputs above zero and how many of its channels fired at all. ``silent.json`` in ``--out`` keeps
the numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def held_out_feeds(photos: Path, count: int, size: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` crops of the held-out (test) split's photos, each with a stroke mask over 10-50 % of it."""
    from inpaint.core.contract import IMAGE, MASK
    from inpaint.core.masks import stroke_mask_in_bucket
    from inpaint.trainer.data import image_files, read_image, split_of_name

    rng = np.random.default_rng(seed)
    names = [path for path in image_files(photos) if split_of_name(str(path.relative_to(photos))) == "test"]
    if not names:
        raise SystemExit(f"no held-out photos under {photos}: run `make photos` first, or pass --photos")
    feeds = []
    while len(feeds) < count:
        image = read_image(names[rng.integers(len(names))])
        if min(image.shape[:2]) < size:
            continue
        top, left = rng.integers(image.shape[0] - size + 1), rng.integers(image.shape[1] - size + 1)
        mask = stroke_mask_in_bucket(size, size, 0.1, 0.5, rng)
        feeds.append({IMAGE: image[None, top : top + size, left : left + size],
                      MASK: mask[None, ..., None].astype(np.uint8)})
    return feeds


def relu_activity(model: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Per ReLU node: the share of its outputs above zero and the channels that fired, over ``feeds``."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(model))
    relus = [node for node in graph.graph.node if node.op_type == "Relu"]
    for node in relus:
        graph.graph.output.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [node.output[0] for node in relus]
    positive = np.zeros(len(names))
    total = np.zeros(len(names))
    fired: list[np.ndarray | None] = [None] * len(names)
    for feed in feeds:
        for index, values in enumerate(session.run(names, feed)):
            channels = np.moveaxis(values > 0, 1, -1).reshape(-1, values.shape[1]).any(axis=0)  # ONNX's NCHW
            positive[index] += np.count_nonzero(values > 0)
            total[index] += values.size
            fired[index] = channels if fired[index] is None else fired[index] | channels
    return {node.name: {"active": float(positive[index] / total[index]), "channels": int(fired[index].size),
                        "channels_fired": int(fired[index].sum())} for index, node in enumerate(relus)}


def table(activity: dict[str, dict[str, float]]) -> str:
    lines = ["| layer | outputs above zero | channels that fired |", "|---|---|---|"]
    for name, row in activity.items():
        layer = "/".join(name.split("/")[-3:-1])  # e.g. refiner_3/up2_conv1_1
        share = f"{row['active']:.1%}" if row["active"] == 0 or row["active"] >= 0.001 else "< 0.1%"
        lines.append(f"| {layer} | {share} | {row['channels_fired']} of {row['channels']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "pretrained" / "inpaint" / "1",
                        help="the version folder (its model.onnx)")
    parser.add_argument("--photos", type=Path, default=ROOT / "data" / "photos",
                        help="photos whose held-out split gives the crops (make photos)")
    parser.add_argument("--crops", type=int, default=12, help="crops to run")
    parser.add_argument("--size", type=int, default=256, help="crop side, px")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "silent")
    args = parser.parse_args()
    activity = relu_activity(args.model / "model.onnx", held_out_feeds(args.photos, args.crops, args.size))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "silent.json").write_text(json.dumps(activity, indent=1) + "\n")
    print(table(activity))


if __name__ == "__main__":
    main()
