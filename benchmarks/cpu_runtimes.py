"""The CPU runtimes side by side, in one run: TensorFlow on the SavedModel (what TF Serving runs), ONNX Runtime
as ``inpaint-serve`` opens it, and OpenVINO (if installed) on the same ``model.onnx`` as
``inpaint-serve --runtime openvino`` opens it (its precision is OpenVINO's choice for the CPU: bf16 where the
CPU computes it natively, else f32).

    python benchmarks/cpu_runtimes.py [--model models/pretrained/inpaint/1] [--seconds 4] [--out reports/cpu]
                                      [--server] [--server-precision P] [--server-runtime R]
                                      [--server-args '--openvino-keep-pixels 1048576 ...']

For each batch x size (32 x 64², 4 x 256², 1 x 1024²) every runtime gets the same uint8 photos and masks,
two warm-up runs, then runs until ``--seconds`` have passed; the table gives images/s and each runtime's ratio
to TensorFlow, and how far its fills are from TensorFlow's (mean and max absolute difference in levels over
the hole pixels; known pixels are the graph's own composite). Only ratios measured in this one run compare.
A version with an int8 graph (``model.int8.onnx``) gets "onnxruntime int8" and "openvino int8" rows too. With ``--server``,
``inpaint-serve`` with its default flags (or ``--server-precision``; ``auto``: on a CPU the int8 graph)
serves the version's folder in its own process and one gRPC client sends it the same uint8 tensors (its fills
include the server's detail pass).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ((32, 64), (4, 256), (1, 1024))


def inputs(batch: int, side: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from inpaint.core.masks import stroke_mask_in_bucket
    from inpaint.trainer.data import read_image, samples_dir

    rng = np.random.default_rng(seed)
    photo = read_image(samples_dir() / "coffee.png")
    images = np.stack([cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)] * batch)
    masks = np.stack([stroke_mask_in_bucket(side, side, 0.1, 0.3, rng) for _ in range(batch)])[..., None]
    return images, masks.astype(np.uint8)


def tensorflow_runner(version: Path):
    import tensorflow as tf

    from inpaint.core.contract import IMAGE, MASK, OUTPUT

    function = tf.saved_model.load(str(version)).signatures["serving_default"]
    return lambda images, masks: function(**{IMAGE: tf.constant(images), MASK: tf.constant(masks)})[OUTPUT].numpy()


def onnxruntime_runner(version: Path, graph: str = "model.onnx"):
    from inpaint.core.onnx_model import OnnxModel
    from inpaint.serving.runtime import ARENA_KEEPS_PIXELS

    model = OnnxModel(version / graph, shrink_above_pixels=ARENA_KEEPS_PIXELS)  # as the server opens it
    return model.inpaint


def openvino_runner(version: Path, graph: str = "model.onnx"):
    from inpaint.core.openvino_model import OpenVinoModel
    from inpaint.serving.server import ServerConfig

    # As inpaint-serve --runtime openvino opens it (but without the server's allocator settings).
    return OpenVinoModel(version / graph, keep_pixels=ServerConfig().openvino_keep_pixels).inpaint


def server_runner(version: Path, precision: str | None = None, runtime: str | None = None,
                  more_args: tuple[str, ...] = ()):
    """``inpaint-serve`` with its default flags (and ``--precision``, ``--runtime``, if given) on the version's
    model folder, in its own process, and one gRPC client sending uint8 tensors (the issue's end-to-end
    figure); ``run.stop`` ends the server."""
    import importlib.util

    import grpc

    from inpaint.core.contract import OUTPUT
    from inpaint.core.protos import prediction_service_pb2_grpc
    from inpaint.core.tensors import predict_request, to_numpy

    spec = importlib.util.spec_from_file_location("serving_benchmark", ROOT / "benchmarks" / "serving.py")
    serving_benchmark = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serving_benchmark)
    extra_args = ((("--precision", precision) if precision else ()) + (("--runtime", runtime) if runtime else ())
                  + tuple(more_args))
    server = serving_benchmark.Server(version.parent, batching=False, extra_args=extra_args)
    channel = grpc.insecure_channel(server.target, options=[("grpc.max_receive_message_length", -1),
                                                            ("grpc.max_send_message_length", -1)])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def run(images, masks):
        reply = stub.Predict(predict_request(images, masks, "inpaint"), timeout=600)
        return to_numpy(OUTPUT, reply.outputs[OUTPUT])

    run.stop, run.metrics_url = server.stop, server.metrics_url
    return run


def throughput(run, images, masks, seconds: float) -> tuple[float, dict]:
    """Images per second, and for a server where a request's time went (ms: the client's whole request, the
    server's request, its model run), from the server's histograms over the same runs."""
    from inpaint.client.loadtest import histogram_mean, scrape

    for _ in range(2):
        run(images, masks)
    before = scrape(getattr(run, "metrics_url", None))
    started, runs = time.perf_counter(), 0
    while time.perf_counter() - started < seconds or runs < 2:
        run(images, masks)
        runs += 1
    elapsed = time.perf_counter() - started
    after = scrape(getattr(run, "metrics_url", None))
    split = {}
    if after:
        split = {"client_ms": 1000 * elapsed / runs,
                 "server_request_ms": histogram_mean("inpaint_request_latency", before, after) / 1000,
                 "model_run_ms": histogram_mean("inpaint_runtime_latency", before, after) / 1000}
    return runs * len(images) / elapsed, split


def runners(version: Path, server: bool, server_precision: str | None = None,
            server_runtime: str | None = None, server_args: tuple[str, ...] = ()) -> dict:
    from inpaint.core.repository import INT8_FILENAME

    has_int8 = (version / INT8_FILENAME).is_file()  # what inpaint-serve --precision auto runs on a CPU
    found = {"tensorflow": tensorflow_runner(version), "onnxruntime": onnxruntime_runner(version)}
    if has_int8:
        found["onnxruntime int8"] = onnxruntime_runner(version, INT8_FILENAME)
    try:
        found["openvino"] = openvino_runner(version)
        if has_int8:
            found["openvino int8"] = openvino_runner(version, graph=INT8_FILENAME)
    except ImportError:
        pass
    if server:
        found["inpaint-serve, gRPC uint8"] = server_runner(version, server_precision, server_runtime, server_args)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "pretrained" / "inpaint" / "1")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "cpu")
    from inpaint.serving.runtime import PRECISIONS, RUNTIMES

    parser.add_argument("--server-precision", choices=PRECISIONS, default=None,
                        help="the server's --precision [default: the server's default]")
    parser.add_argument("--server-runtime", choices=RUNTIMES, default=None,
                        help="the server's --runtime [default: the server's default]")
    parser.add_argument("--server-args", default="",
                        help="more inpaint-serve flags, one string (e.g. '--openvino-keep-pixels 1048576')")
    parser.add_argument("--server", action="store_true",
                        help="also time inpaint-serve (default flags) on the version's folder through gRPC")
    args = parser.parse_args()
    found = runners(args.model, args.server, args.server_precision, args.server_runtime,
                    tuple(shlex.split(args.server_args)))
    rows = []
    for batch, side in SHAPES:
        images, masks = inputs(batch, side)
        reference = found["tensorflow"](images, masks).astype(np.int16)
        holes = np.broadcast_to(masks > 0, reference.shape)
        for name, run in found.items():
            output = run(images, masks).astype(np.int16)
            difference = np.abs(output - reference)[holes]
            images_per_s, split = throughput(run, images, masks, args.seconds)
            rows.append({"shape": f"{batch} x {side}²", "runtime": name, "images_per_s": images_per_s,
                         "mean_diff": float(difference.mean()), "max_diff": int(difference.max()), **split})
    tf_speed = {row["shape"]: row["images_per_s"] for row in rows if row["runtime"] == "tensorflow"}
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n")
    print("| batch x size | runtime | images/s | / TensorFlow | hole diff to TF, mean / max levels |")
    print("|---|---|---|---|---|")
    for row in rows:
        row["over_tensorflow"] = row["images_per_s"] / tf_speed[row["shape"]]
        print(f"| {row['shape']} | {row['runtime']} | {row['images_per_s']:.2f} | {row['over_tensorflow']:.2f} | "
              f"{row['mean_diff']:.2f} / {row['max_diff']} |")
    split_rows = [row for row in rows if "model_run_ms" in row]
    if split_rows:
        print("\nWhere an inpaint-serve request's time goes (ms per request; the server's own histograms):\n")
        print("| batch x size | client's request | server's request | model run | server's own work | gRPC and client |")
        print("|---|---|---|---|---|---|")
        for row in split_rows:
            print(f"| {row['shape']} | {row['client_ms']:.0f} | {row['server_request_ms']:.0f} | "
                  f"{row['model_run_ms']:.0f} | {row['server_request_ms'] - row['model_run_ms']:.0f} | "
                  f"{row['client_ms'] - row['server_request_ms']:.0f} |")
    for run in found.values():
        if hasattr(run, "stop"):
            run.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_runtimes.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
