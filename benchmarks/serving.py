"""Server throughput against in-process ONNX Runtime, measured in one run on one machine.

    python benchmarks/serving.py [--model models/inpaint] [--seconds 5] [--out reports/bench]
                                 [--sizes 64 256] [--batching-target-only]

(a) ``InferenceSession.run`` in this process; (b) ``inpaint-serve`` over
loopback gRPC, batching off; (c) the same with batching on. Image sizes 64 and
256, batch sizes 1 and 32, concurrency 1, 8 and 64. The server runs as its own
process; the load comes from the client library's load tester (one asyncio
event loop, pre-built requests).
Prints a Markdown table and writes ``serving.json``. ``--batching-target-only``
measures just the cells of one target (64 single-image clients with batching
against in-process batch 32), for quick iterations on the request path.

Each in-process cell is measured twice, before and after the server cells, and
the two passes are pooled: on a shared machine whose speed drifts, a reference
taken only before would make the ratios depend on when they were measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inpaint.client.loadtest import LoadConfig
from inpaint.client.loadtest import run as run_load
from inpaint.core.masks import mask_batch
from inpaint.core.onnx_model import OnnxModel
from inpaint.core.repository import ONNX_FILENAME, version_dir

SIZES = (64, 256)
CASES = ((1, 1), (1, 8), (1, 64), (32, 1))  # (images per request, concurrent clients)
BATCHING_TARGET_CASES = ((1, 64),)


def inputs(batch: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    return images, mask_batch("strokes", batch, size, size, seed=0)[..., None]


def summarize(latencies: list[float], images: int, seconds: float) -> dict:
    ms = np.array(latencies) * 1000
    return {"images_per_s": images / seconds, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "requests": len(latencies)}


@dataclass
class InProcessCell:
    """``model.inpaint`` back to back at one size and batch, over one or more passes that are pooled."""

    size: int
    batch: int
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    passes: list[float] = field(default_factory=list)  # images/s of each pass

    def measure(self, model: OnnxModel, seconds: float) -> None:
        images, masks = inputs(self.batch, self.size)
        model.inpaint(images, masks)  # warm up
        runs, start = len(self.latencies), time.perf_counter()
        while time.perf_counter() - start < seconds:
            began = time.perf_counter()
            model.inpaint(images, masks)
            self.latencies.append(time.perf_counter() - began)
        elapsed = time.perf_counter() - start
        self.seconds += elapsed
        self.passes.append(self.batch * (len(self.latencies) - runs) / elapsed)

    def result(self) -> dict:
        return {"size": self.size, "mode": "a_in_process", "batch": self.batch, "concurrency": 1,
                **summarize(self.latencies, self.batch * len(self.latencies), self.seconds),
                "images_per_s_each_pass": self.passes}



def over_grpc(server: "Server", batch: int, size: int, concurrency: int, seconds: float) -> dict:
    """The client library's load tester, closed loop at ``concurrency``: the request path users have."""
    config = LoadConfig(target=server.target, concurrency=(concurrency,), duration=seconds,
                        warmup=min(1.0, seconds / 4), batch_size=batch, image_size=size, mask_kind="strokes",
                        timeout=60, metrics_url=server.metrics_url)
    level = asyncio.run(run_load(config))[0]
    return {"images_per_s": level.images_per_s, "p50_ms": level.latency_ms.get("p50", float("nan")),
            "p99_ms": level.latency_ms.get("p99", float("nan")), "requests": level.ok,
            "errors": sum(level.errors.values()), "server_batch_size": level.server_batch_size}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``inpaint-serve`` in its own process, as it would run in production."""

    def __init__(self, base: Path, batching: bool, extra_args: tuple[str, ...] = ()):
        self.port, self.rest_port = free_port(), free_port()
        command = [sys.executable, "-m", "inpaint.serving.cli", "--model-base-path", str(base),
                   "--host", "127.0.0.1", "--port", str(self.port), "--rest-port", str(self.rest_port),
                   "--log-level", "WARNING", *extra_args]
        if batching:
            command += ["--enable-batching", "--max-batch-size", "32", "--batch-timeout-micros", "5000",
                        "--num-batch-threads", "1", "--max-enqueued-batches", "64"]
        self.process = subprocess.Popen(command)
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(self.target))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
        raise RuntimeError("server did not become SERVING")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        """Read before and after each cell, off the clock: the batch sizes the server really ran."""
        return f"http://127.0.0.1:{self.rest_port}/metrics"

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/inpaint"), help="model base path")
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per cell")
    parser.add_argument("--out", type=Path, default=Path("reports/bench"), help="where serving.json goes")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="image sizes to measure")
    parser.add_argument("--batching-target-only", action="store_true",
                        help="only in-process batch 32 and 64 single-image clients with batching")
    args = parser.parse_args()
    version = version_dir(args.model)
    model = OnnxModel(version / ONNX_FILENAME)
    results: dict = {"model": str(version), "cpu_count": os.cpu_count()}
    in_process_batches = (32,) if args.batching_target_only else (1, 32)
    server_modes = ((("c_server_batching", True),) if args.batching_target_only
                    else (("b_server", False), ("c_server_batching", True)))
    cases = BATCHING_TARGET_CASES if args.batching_target_only else CASES

    in_process_cells = [InProcessCell(size, batch) for size in args.sizes for batch in in_process_batches]

    measure_in_process(model, in_process_cells, args.seconds)
    server_cells = measure_servers(args.model, server_modes, args.sizes, cases, args.seconds)
    measure_in_process(model, in_process_cells, args.seconds)  # the reference brackets the server cells
    results["cells"] = [cell.result() for cell in in_process_cells] + server_cells

    add_ratios(results, args.sizes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return 0


def measure_servers(base: Path, modes, sizes, cases, seconds: float) -> list[dict]:
    """Each mode's server in turn, every case at every size."""
    cells = []
    for mode, batching in modes:
        server = Server(base, batching)
        try:
            for size in sizes:
                for batch, concurrency in cases:
                    cell = {"size": size, "mode": mode, "batch": batch, "concurrency": concurrency,
                            **over_grpc(server, batch, size, concurrency, seconds)}
                    cells.append(cell)
                    print(cell, flush=True)
        finally:
            server.stop()
    return cells


def measure_in_process(model: OnnxModel, cells: list[InProcessCell], seconds: float) -> None:
    for cell in cells:
        cell.measure(model, seconds)
        print({"size": cell.size, "mode": "a_in_process", "batch": cell.batch, "pass": len(cell.passes),
               "images_per_s": cell.passes[-1]}, flush=True)


def _find(results, size, mode, batch, concurrency):
    return next((c for c in results["cells"] if (c["size"], c["mode"], c["batch"], c["concurrency"]) ==
                 (size, mode, batch, concurrency)), None)


def _images_per_s(results, size, mode, batch, concurrency) -> float | None:
    cell = _find(results, size, mode, batch, concurrency)
    return None if cell is None else cell["images_per_s"]


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or denominator is None else numerator / denominator


def add_ratios(results: dict, sizes=SIZES) -> None:
    """Each server cell over in-process at the same batch size; plus the issue's targets whose cells ran."""
    targets = {}
    for cell in results["cells"]:
        cell["ratio_to_in_process"] = _ratio(cell["images_per_s"],
                                             _images_per_s(results, cell["size"], "a_in_process", cell["batch"], 1))
    for size in sizes:
        in_process_32 = _images_per_s(results, size, "a_in_process", 32, 1)
        batching_64 = _images_per_s(results, size, "c_server_batching", 1, 64)
        ratios = {
            "server_batch32_over_in_process (target >= 0.9)":
                _ratio(_images_per_s(results, size, "b_server", 32, 1), in_process_32),
            "batching_64_clients_over_in_process_batch32 (target >= 0.8)": _ratio(batching_64, in_process_32),
            "batching_64_clients_over_unbatched_64_clients (target >= 3)":
                _ratio(batching_64, _images_per_s(results, size, "b_server", 1, 64)),
        }
        targets[size] = {name: value for name, value in ratios.items() if value is not None}
    results["targets"] = targets


def markdown(results: dict) -> str:
    lines = ["| size | mode | batch | clients | images/s | p50 ms | p99 ms | server batch | x in-process |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in results["cells"]:
        lines.append(f"| {c['size']} | {c['mode']} | {c['batch']} | {c['concurrency']} | {c['images_per_s']:.1f} "
                     f"| {c['p50_ms']:.1f} | {c['p99_ms']:.1f} | {_format(c.get('server_batch_size'), '.1f')} "
                     f"| {_format(c['ratio_to_in_process'], '.2f')} |")
    lines.append("")
    for size, ratios in results["targets"].items():
        for name, value in ratios.items():
            lines.append(f"- {size}x{size}: {name}: **{value:.2f}**")
    return "\n".join(lines)


def _format(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


if __name__ == "__main__":
    sys.exit(main())
