"""How a photo travels: JSON pixels, PNG or JPEG files (``serving_bytes``), or binary tensors, REST and gRPC.

    python benchmarks/encodings.py [--megapixels 12] [--repeats 2]

One photo (a mosaic of the bundled photos, 4000x3000 at 12 MP) with a 12-px diagonal scratch goes to one
``inpaint-serve`` (default flags, but ``--max-request-bytes`` high enough for the JSON body) six ways:

* REST ``serving_default`` with JSON arrays of pixels (what a TF Serving REST caller sends today);
* REST ``serving_bytes`` with the photo as PNG, then as JPEG (quality 95), base64 in JSON;
* gRPC ``serving_default`` with uint8 tensors, and gRPC ``serving_bytes`` with PNG, then JPEG.

For each: the request's and the reply's size, the time to build the request from the decoded photo (JSON
or PNG/JPEG encoding; the ``files`` cases can skip it by sending a file as it is), the round trip (request
sent, reply received and parsed to pixels), and the server's peak RSS. One run; medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from large_photos import ROOT, ServeProcess, diagonal_scratch, photo_files, photo_size, synthesize_photo  # noqa: E402

logger = logging.getLogger("benchmarks.encodings")
JPEG_QUALITY = 95
CASES = ("rest-json-pixels", "rest-png", "rest-jpeg", "grpc-tensor", "grpc-png", "grpc-jpeg")


def encode_file(image: np.ndarray, kind: str) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if kind == "jpeg" else []
    ok, data = cv2.imencode(".jpg" if kind == "jpeg" else ".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    assert ok
    return data.tobytes()


def build_request(case: str, image: np.ndarray, mask: np.ndarray):
    """The request body (bytes for REST, a PredictRequest for gRPC), built from the decoded photo."""
    from inpaint.core.tensors import predict_bytes_request, predict_request

    protocol, form = case.split("-", 1)
    mask_png = encode_file(mask * np.uint8(255), "png") if form in ("png", "jpeg") else None
    if form == "json-pixels":
        return json.dumps({"instances": [{"image": image.tolist(), "mask": mask[..., None].tolist()}]}).encode()
    if form == "tensor":
        return predict_request(image[None], mask[None], "inpaint")
    photo = encode_file(image, form)
    if protocol == "rest":
        return json.dumps({"signature_name": "serving_bytes", "instances": [
            {"image_bytes": {"b64": base64.b64encode(photo).decode()},
             "mask_bytes": {"b64": base64.b64encode(mask_png).decode()}}]}).encode()
    return predict_bytes_request([photo], [mask_png], "inpaint")


def send(case: str, request, rest_url: str, stub, timeout: float) -> tuple[np.ndarray, int]:
    """The inpainted pixels and the reply's size in bytes."""
    from inpaint.core.images import decode_image
    from inpaint.core.tensors import bytes_output_of, output_of

    if case.startswith("rest"):
        http = urllib.request.Request(f"{rest_url}/v1/models/inpaint:predict", data=request,
                                      headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(http, timeout=timeout) as reply:
            body = reply.read()
        [prediction] = json.loads(body)["predictions"]
        if isinstance(prediction, dict):
            return decode_image(base64.b64decode(prediction["b64"]), 2**40), len(body)
        return np.asarray(prediction, np.uint8), len(body)
    response = stub.Predict(request, timeout=timeout)
    size = response.ByteSize()
    if case == "grpc-tensor":
        shape = tuple(d.size for d in request.inputs["image"].tensor_shape.dim)
        return output_of(response, shape)[0], size
    return decode_image(bytes_output_of(response, 1)[0], 2**40), size


def request_size(request) -> int:
    return len(request) if isinstance(request, bytes) else request.ByteSize()


def measure(case: str, image: np.ndarray, mask: np.ndarray, server: ServeProcess, rest_url: str, stub,
            repeats: int, timeout: float) -> dict:
    build, trips = [], []
    for _ in range(repeats):
        began = time.perf_counter()
        request = build_request(case, image, mask)
        built = time.perf_counter()
        output, reply_bytes = send(case, request, rest_url, stub, timeout)
        trips.append(time.perf_counter() - built)
        build.append(built - began)
        if output.shape != image.shape:
            raise RuntimeError(f"{case}: reply is {output.shape}, sent {image.shape}")
    known = mask == 0
    exact = bool(np.array_equal(output[known], image[known])) if case.endswith(("pixels", "tensor", "png")) else None
    return {"case": case, "request_mb": request_size(request) / 1e6, "reply_mb": reply_bytes / 1e6,
            "build_s": statistics.median(build), "round_trip_s": statistics.median(trips),
            "known_pixels_exact": exact, "server_peak_mib": server.memory()["VmHWM"]}


def markdown(rows: list[dict], width: int, height: int) -> str:
    lines = [f"{width}x{height} photo ({width * height / 1e6:.1f} MP), 12-px diagonal scratch, one inpaint-serve:",
             "", "| how | request | reply | build request | round trip | total | server peak RSS |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        total = row["build_s"] + row["round_trip_s"]
        lines.append(f"| {row['case']} | {row['request_mb']:.1f} MB | {row['reply_mb']:.1f} MB | "
                     f"{row['build_s']:.2f} s | {row['round_trip_s']:.2f} s | {total:.2f} s | "
                     f"{row['server_peak_mib']:,} MiB |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "pretrained" / "inpaint", help="model base path")
    parser.add_argument("--megapixels", type=float, default=12, help="photo size (1, 4, 12 or 24, or any MP)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, of: " + ", ".join(CASES))
    parser.add_argument("--repeats", type=int, default=2, help="round trips per case (the median is reported)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per request")
    parser.add_argument("--photos", type=Path, default=ROOT / "data" / "photos", help="folder of photos")
    parser.add_argument("--out", type=Path, default=Path("reports/bench-encodings"), help="where results go")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    import grpc

    from inpaint.core.protos import prediction_service_pb2_grpc

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cases = [case for case in args.cases.split(",") if case]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown cases {unknown}: choose from {', '.join(CASES)}")
    width, height = photo_size(args.megapixels)
    image = synthesize_photo(width, height, photo_files(args.photos if args.photos.is_dir() else None))
    mask = diagonal_scratch(width, height)
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import free_port

    rest_port = free_port()
    extra = ["--rest-port", str(rest_port), "--max-request-bytes", str(2**31 - 1)]
    rows = []
    with ServeProcess(args.model, extra, args.out / "server.log") as server, \
            grpc.insecure_channel(server.target, [("grpc.max_send_message_length", 2**31 - 1),
                                                  ("grpc.max_receive_message_length", 2**31 - 1)]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for case in cases:
            rows.append(measure(case, image, mask, server, f"http://127.0.0.1:{rest_port}", stub, args.repeats,
                                args.timeout))
            logger.info("%s", rows[-1])
    (args.out / "encodings.json").write_text(json.dumps({"width": width, "height": height, "rows": rows}, indent=1))
    print(markdown(rows, width, height))


if __name__ == "__main__":
    main()
