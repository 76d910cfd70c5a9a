"""Peak memory of ``inpaint-serve`` for the largest requests its limits accept.

    python benchmarks/memory.py --model models/inpaint [--side 1448] [--concurrent 1,2,4]

Starts the server as its own process with its default limits (batching off,
2 compute threads), sends ``concurrent`` requests of one ``side``² image each at
once (1448² = 2.1 MP, just under the default --max-pixels), and reports the
server's peak resident memory (VmHWM) and what it holds afterwards, for each
level in a fresh process. This is what the Deployment's memory limit is set from.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from inpaint.client import InpaintClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import free_port, wait_serving  # noqa: E402 - the tests' process helpers


def memory_of(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0]) // 1024  # MiB
    return fields


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def measure(model: Path, side: int, concurrent: int, extra: list[str]) -> dict:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "inpaint.serving.cli", "--model-base-path", str(model),
                                "--host", "127.0.0.1", "--port", str(port), "--rest-port", "0",
                                "--log-level", "WARNING", *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        wait_serving(f"127.0.0.1:{port}", process)
        idle = memory_of(process.pid)
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        mask = np.zeros((side, side), np.uint8)
        mask[side // 4: side // 2, side // 4: 3 * side // 4] = 1
        with InpaintClient(f"127.0.0.1:{port}", timeout=600) as client, ThreadPoolExecutor(concurrent) as pool:
            list(pool.map(lambda _: client.inpaint(image, mask), range(concurrent)))
        after = memory_of(process.pid)
        codec = sum(memory_of(child)["VmHWM"] for child in children_of(process.pid))
        return {"side": side, "megapixels": side * side / 1e6, "concurrent": concurrent,
                "idle_rss_mib": idle["VmRSS"], "peak_rss_mib": after["VmHWM"], "rss_after_mib": after["VmRSS"],
                "helper_processes_peak_mib": codec}
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/inpaint"), help="model base path")
    parser.add_argument("--side", type=int, default=1448, help="square image side (1448² = 2.1 MP)")
    parser.add_argument("--concurrent", default="1,2,4", help="requests at once, comma-separated levels")
    parser.add_argument("--server-args", default="", help="extra inpaint-serve flags, space-separated")
    args = parser.parse_args()
    rows = [measure(args.model, args.side, int(level), args.server_args.split())
            for level in args.concurrent.split(",")]
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
