"""What OpenVINO keeps after runs of growing size, as ``inpaint-serve --runtime openvino`` runs it.

    python benchmarks/openvino_memory.py [--model models/pretrained/inpaint/1] [--graph model.int8.onnx]

Opens the graph as the server does (``core.openvino_model.OpenVinoModel``: latency hint, its per-shape cache
off, buffers given back after each run) in this process, with the server's allocator tuning
(``serving/runtime.py``: large blocks mapped on their own, freed memory given back after each run), then runs 1 x 64², 4 x 256², 1 x 1024², 1 x 2048 x 1024, 1 x 512², and
1 x 64² again, and prints after each run the process's resident memory over what the compiled graph took,
and its peak. What stays is state sized to the last run's shape, let go by the next run
(``tests/test_openvino.py``); a pod's memory limit has to hold whatever a runtime keeps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUNS = ((1, 64, 64), (4, 256, 256), (1, 1024, 1024), (1, 2048, 1024), (1, 512, 512), (1, 64, 64))
MiB = 2**20


def status_mib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    raise KeyError(field)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "pretrained" / "inpaint" / "1")
    parser.add_argument("--graph", default="model.int8.onnx", help="the graph in the version folder")
    args = parser.parse_args()

    from inpaint.serving.runtime import hand_large_buffers_back_when_freed, return_freed_memory

    hand_large_buffers_back_when_freed()
    from inpaint.core.openvino_model import OpenVinoModel

    before = status_mib("VmRSS")
    model = OpenVinoModel(args.model / args.graph)
    loaded = status_mib("VmRSS")
    print(f"| run | resident over the compiled graph (MiB) | peak over it (MiB) |\n|---|---|---|"
          f"\n| compiled ({args.graph}, {model.precision}) | {loaded - before} over the process before | |")
    rng = np.random.default_rng(0)
    for count, height, width in RUNS:
        images = rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)
        masks = np.zeros((count, height, width, 1), np.uint8)
        masks[:, height // 4 : height // 2, width // 4 : width // 2] = 1
        model.inpaint(images, masks)
        return_freed_memory()
        print(f"| {count} x {height} x {width} | {status_mib('VmRSS') - loaded} | {status_mib('VmHWM') - loaded} |",
              flush=True)


if __name__ == "__main__":
    main()
