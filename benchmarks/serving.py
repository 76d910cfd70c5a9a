"""Server throughput against in-process ONNX Runtime, measured in one run on one machine.

    python benchmarks/serving.py [--model models/inpaint] [--seconds 5] [--out reports/bench]

(a) ``InferenceSession.run`` in this process; (b) ``inpaint-serve`` over
loopback gRPC, batching off; (c) the same with batching on. Image sizes 64 and
256, batch sizes 1 and 32, concurrency 1, 8 and 64. The server runs as its own
process; the load comes from the client library's load tester (one asyncio
event loop, pre-built requests).
Prints a Markdown table and writes ``serving.json``.
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


def inputs(batch: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    return images, mask_batch("strokes", batch, size, size, seed=0)[..., None]


def summarize(latencies: list[float], images: int, seconds: float) -> dict:
    ms = np.array(latencies) * 1000
    return {"images_per_s": images / seconds, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "requests": len(latencies)}


def in_process(model: OnnxModel, batch: int, size: int, seconds: float) -> dict:
    images, masks = inputs(batch, size)
    model.inpaint(images, masks)  # warm up
    latencies, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        began = time.perf_counter()
        model.inpaint(images, masks)
        latencies.append(time.perf_counter() - began)
    return summarize(latencies, batch * len(latencies), time.perf_counter() - start)


def over_grpc(target: str, batch: int, size: int, concurrency: int, seconds: float) -> dict:
    """The client library's load tester, closed loop at ``concurrency``: the request path users have."""
    config = LoadConfig(target=target, concurrency=(concurrency,), duration=seconds, warmup=min(1.0, seconds / 4),
                        batch_size=batch, image_size=size, mask_kind="strokes", timeout=60)
    level = asyncio.run(run_load(config))[0]
    return {"images_per_s": level.images_per_s, "p50_ms": level.latency_ms.get("p50", float("nan")),
            "p99_ms": level.latency_ms.get("p99", float("nan")), "requests": level.ok,
            "errors": sum(level.errors.values())}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``inpaint-serve`` in its own process, as it would run in production."""

    def __init__(self, base: Path, batching: bool):
        self.port = free_port()
        command = [sys.executable, "-m", "inpaint.serving.cli", "--model-base-path", str(base),
                   "--host", "127.0.0.1", "--port", str(self.port), "--rest-port", "-1", "--log-level", "WARNING"]
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

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/inpaint"), help="model base path")
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per cell")
    parser.add_argument("--out", type=Path, default=Path("reports/bench"), help="where serving.json goes")
    args = parser.parse_args()
    version = version_dir(args.model)
    model = OnnxModel(version / ONNX_FILENAME)
    results: dict = {"model": str(version), "cpu_count": os.cpu_count(), "cells": []}

    for size in SIZES:
        for batch in (1, 32):
            cell = {"size": size, "mode": "a_in_process", "batch": batch, "concurrency": 1,
                    **in_process(model, batch, size, args.seconds)}
            results["cells"].append(cell)
            print(cell, flush=True)
    for mode, batching in (("b_server", False), ("c_server_batching", True)):
        server = Server(args.model, batching)
        try:
            for size in SIZES:
                for batch, concurrency in CASES:
                    cell = {"size": size, "mode": mode, "batch": batch, "concurrency": concurrency,
                            **over_grpc(server.target, batch, size, concurrency, args.seconds)}
                    results["cells"].append(cell)
                    print(cell, flush=True)
        finally:
            server.stop()

    add_ratios(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return 0


def _find(results, size, mode, batch, concurrency):
    return next(c for c in results["cells"] if (c["size"], c["mode"], c["batch"], c["concurrency"]) ==
                (size, mode, batch, concurrency))


def add_ratios(results: dict) -> None:
    """Each server cell over in-process at the same batch size; plus the issue's two targets."""
    targets = {}
    for cell in results["cells"]:
        reference = _find(results, cell["size"], "a_in_process", cell["batch"], 1)
        cell["ratio_to_in_process"] = cell["images_per_s"] / reference["images_per_s"]
    for size in SIZES:
        in_process_32 = _find(results, size, "a_in_process", 32, 1)["images_per_s"]
        targets[size] = {
            "server_batch32_over_in_process (target >= 0.9)":
                _find(results, size, "b_server", 32, 1)["images_per_s"] / in_process_32,
            "batching_64_clients_over_in_process_batch32 (target >= 0.8)":
                _find(results, size, "c_server_batching", 1, 64)["images_per_s"] / in_process_32,
            "batching_64_clients_over_unbatched_64_clients (target >= 3)":
                _find(results, size, "c_server_batching", 1, 64)["images_per_s"]
                / _find(results, size, "b_server", 1, 64)["images_per_s"],
        }
    results["targets"] = targets


def markdown(results: dict) -> str:
    lines = ["| size | mode | batch | clients | images/s | p50 ms | p99 ms | x in-process |",
             "|---|---|---|---|---|---|---|---|"]
    for c in results["cells"]:
        lines.append(f"| {c['size']} | {c['mode']} | {c['batch']} | {c['concurrency']} | {c['images_per_s']:.1f} "
                     f"| {c['p50_ms']:.1f} | {c['p99_ms']:.1f} | {c['ratio_to_in_process']:.2f} |")
    lines.append("")
    for size, ratios in results["targets"].items():
        for name, value in ratios.items():
            lines.append(f"- {size}x{size}: {name}: **{value:.2f}**")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
