"""Peak memory of ``inpaint-serve`` for the largest requests its limits accept, alone and at once.

    python benchmarks/memory.py [--model models/pretrained/inpaint] [--cases all] [--out reports/memory]

Starts the server as its own process with the Deployment's own args (read from
``k8s/base/deployment.yaml``: batching on, its pixel limits), once per case, and
sends the case's requests at once from the client library with its tiling off
(the whole photo travels, as from any TF Serving client). Reports the server's
idle RSS, its peak (VmHWM, the lifetime peak of the process) and what it holds
afterwards, plus the REST codec process's peak. This is what the Deployment's
memory request and limit are set from (docs/serving.md, "Memory").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from inpaint.client import InpaintClient
from inpaint.core.tiling import TilingOptions

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import free_port, wait_for, wait_serving  # noqa: E402 - the tests' process helpers

DEPLOYMENT = ROOT / "k8s" / "base" / "deployment.yaml"
SERVER_CONTAINER = "server"
OWN_FLAGS = ("--model-base-path", "--port", "--rest-port", "--host")  # set here for a local run


@dataclass(frozen=True)
class Case:
    name: str
    width: int
    height: int
    holes: str        # scratch: one 12 px diagonal; strokes: about a fifth of the photo
    concurrent: int


CASES = {
    "50mp": Case("one 50 MP photo (the largest --max-pixels accepts)", 8660, 5773, "scratch", 1),
    "12mp-x3": Case("three 12 MP photos at once", 4000, 3000, "scratch", 3),
    "12mp-strokes-x3": Case("three 12 MP photos with 20 % strokes at once", 4000, 3000, "strokes", 3),
    "1mp-x36": Case("36 photos of 1 MiP at once (run whole, batched)", 1024, 1024, "strokes", 36),
}


def deployment_args() -> list[str]:
    """The server container's args in the Deployment, less the paths and ports a local run sets itself."""
    for document in yaml.safe_load_all(DEPLOYMENT.read_text()):
        for container in document["spec"]["template"]["spec"]["containers"]:
            if container["name"] == SERVER_CONTAINER:
                return [arg for arg in container["args"] if not arg.startswith(OWN_FLAGS)]
    raise SystemExit(f"no '{SERVER_CONTAINER}' container in {DEPLOYMENT}")


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


def rss_once_idle(pid: int, idle_mib: int) -> dict[str, int]:
    """The server gives freed pages back once idle (within a second): wait for that, at most 10 s."""
    try:
        wait_for(lambda: memory_of(pid)["VmRSS"] < idle_mib + 100, timeout=10, what="RSS back near idle")
    except AssertionError:  # it kept more: that is a result to report, not a failure
        pass
    return memory_of(pid)


def photo_and_mask(case: Case) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), (case.width, case.height))
    mask = np.zeros((case.height, case.width), np.uint8)
    if case.holes == "scratch":
        cv2.line(mask, (0, 0), (case.width - 1, case.height - 1), 1, 12)
    else:
        width = max(3, case.width // 60)
        for _ in range(12):
            points = rng.integers(0, (case.width, case.height), (4, 2)).astype(np.int32)
            cv2.polylines(mask, [points], False, 1, width)
    return image, mask


def measure(model: Path, case: Case, server_args: list[str]) -> dict:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "inpaint.serving.cli", "--model-base-path", str(model),
                                "--host", "127.0.0.1", "--port", str(port), "--rest-port", "0",
                                "--log-level", "WARNING", *server_args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        wait_serving(f"127.0.0.1:{port}", process)
        idle = memory_of(process.pid)
        image, mask = photo_and_mask(case)
        started = time.monotonic()
        with InpaintClient(f"127.0.0.1:{port}", timeout=1200, tiling=TilingOptions(mode="off")) as client, \
                ThreadPoolExecutor(case.concurrent) as pool:
            outputs = list(pool.map(lambda _: client.inpaint(image, mask), range(case.concurrent)))
        seconds = time.monotonic() - started
        assert all((output[mask == 0] == image[mask == 0]).all() for output in outputs)
        peak = memory_of(process.pid)["VmHWM"]
        settled = rss_once_idle(process.pid, idle["VmRSS"])
        codec = sum(memory_of(child)["VmHWM"] for child in children_of(process.pid))
        return {"case": case.name, "size": f"{case.width}x{case.height}", "holes": case.holes,
                "concurrent": case.concurrent, "seconds": round(seconds, 1), "idle_rss_mib": idle["VmRSS"],
                "peak_rss_mib": peak, "rss_after_mib": settled["VmRSS"], "codec_peak_mib": codec}
    finally:
        process.terminate()
        process.wait(timeout=60)


def markdown(rows: list[dict]) -> str:
    lines = ["| case | size | requests at once | seconds | idle | peak RSS | RSS after | codec process |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['size']} | {r['concurrent']} | {r['seconds']} | {r['idle_rss_mib']} MiB | "
              f"{r['peak_rss_mib']:,} MiB | {r['rss_after_mib']} MiB | {r['codec_peak_mib']} MiB |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/pretrained/inpaint"), help="model base path")
    parser.add_argument("--cases", default="all", help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--server-args", default=None,
                        help="inpaint-serve flags, space-separated [default: the Deployment's args]")
    parser.add_argument("--out", type=Path, default=Path("reports/memory"), help="folder for memory.json")
    args = parser.parse_args()
    names = list(CASES) if args.cases == "all" else args.cases.split(",")
    server_args = deployment_args() if args.server_args is None else args.server_args.split()
    print(f"server args: {' '.join(server_args)}", file=sys.stderr)
    rows = [measure(args.model, CASES[name], server_args) for name in names]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps({"server_args": server_args, "rows": rows}, indent=2) + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
