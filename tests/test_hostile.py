"""Hostile and oversized requests against ``inpaint-serve`` running as a process under a memory cap.

Each case was a measured failure (an OOM kill, a stalled event loop, a 500 for the
caller's mistake). The server runs with ``RLIMIT_AS`` set a little above its idle
address space, so a request that makes it allocate gigabytes fails inside it
instead of slipping through; every test then checks it is alive and serving.
"""

from __future__ import annotations

import gzip
import json
import resource
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

from grpc_helpers import Stubs, code_of, images, predict_request
from helpers import free_port, wait_serving
from inpaint.core.protos import predict_pb2, types_pb2
from inpaint.serving.server import ServerConfig, request_bytes_for
from onnx_models import expected_fill

HEADROOM = 1 * 2**30  # over the idle address space; the old code's hostile allocations needed 3+ GiB
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _address_space_of(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


class CappedServer:
    """``inpaint-serve`` in a subprocess; once SERVING, its address space is capped at idle + HEADROOM."""

    def __init__(self, base, *args):
        self.port, self.rest_port = free_port(), free_port()
        command = [sys.executable, "-m", "inpaint.serving.cli", "--model-base-path", str(base), "--host", "127.0.0.1",
                   "--port", str(self.port), "--rest-port", str(self.rest_port), "--log-level", "WARNING", *args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_serving(self.target, self.process)
        cap = _address_space_of(self.process.pid) + HEADROOM
        resource.prlimit(self.process.pid, resource.RLIMIT_AS, (cap, cap))

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str = "/v1/models/inpaint:predict") -> str:
        return f"http://127.0.0.1:{self.rest_port}{path}"

    def assert_alive_and_serving(self) -> None:
        assert self.process.poll() is None, self.process.stdout.read()[-3000:]
        image, mask = images(1, 8, 8)
        assert Stubs(self.target).predict(predict_request(image, mask)).tolist() == \
            expected_fill(image, mask).tolist()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    """One capped server for the module's probes: each ends by checking that it still serves, so every
    probe also runs against a server the previous ones have hit."""
    from onnx_models import write_version

    base = tmp_path_factory.mktemp("hostile") / "models" / "inpaint"
    write_version(base, 1)
    server = CappedServer(base)
    yield server
    server.stop()


def post_raw(url: str, body: bytes, headers: dict | None = None, timeout: float = 60) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post(url: str, body: bytes, headers: dict | None = None, timeout: float = 60) -> tuple[int, dict]:
    status, answer = post_raw(url, body, headers, timeout)
    return status, json.loads(answer)


def test_an_80_byte_request_claiming_gigabytes_is_refused_before_allocating(capped):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "inpaint"
    for name, channels in (("image", 3), ("mask", 1)):
        tensor = request.inputs[name]
        tensor.dtype = types_pb2.DT_UINT8
        tensor.int_val.append(0)  # TensorProto's fill form: one value for the whole shape
        for size in (8, 4096, 4096, channels):
            tensor.tensor_shape.dim.add().size = size
    assert request.ByteSize() < 100
    code, details = code_of(lambda: Stubs(capped.target).prediction.Predict(request, timeout=30))
    assert code == INVALID and "over the limit" in details, details
    capped.assert_alive_and_serving()


def test_overflowing_and_absurd_shapes_are_invalid_argument(capped):
    stubs = Stubs(capped.target)
    for dims in ((2**62, 2**62, 4, 3), (1, 2**40, 2**40, 3)):
        request = predict_request(*images(1, 2, 2))
        for name in ("image", "mask"):
            shape = request.inputs[name].tensor_shape
            del shape.dim[:]
            for size in (*dims[:3], 3 if name == "image" else 1):
                shape.dim.add().size = size
        code, details = code_of(lambda: stubs.prediction.Predict(request, timeout=30))
        assert code == INVALID, (dims, code, details)
    capped.assert_alive_and_serving()


def test_bytes_that_are_not_a_predict_request_are_invalid_argument(capped):
    with grpc.insecure_channel(capped.target) as channel:
        raw = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                  request_serializer=lambda body: body, response_deserializer=lambda body: body)
        code, details = code_of(lambda: raw(b"\xff\xff\xff\xff not protobuf", timeout=10))
    assert code == INVALID and "not a valid tensorflow.serving.PredictRequest" in details, details
    capped.assert_alive_and_serving()


@pytest.mark.slow  # over 5 s
def test_too_many_images_are_refused_in_both_modes(onnx_repo):
    many = json.dumps({"instances": [{"image": [[[1, 2, 3]]], "mask": [[[1]]]}] * 100_000}).encode()
    for extra in ((), ("--enable-batching",)):
        server = CappedServer(onnx_repo, *extra)
        try:
            status, body = post(server.url(), many)
            assert status == 400 and "over the limit of" in body["error"], body
            code, details = code_of(lambda: Stubs(server.target).predict(predict_request(*images(100, 2, 2))))
            assert code == INVALID and "100 images" in details, details
            server.assert_alive_and_serving()
        finally:
            server.stop()


def test_rest_client_mistakes_are_4xx_not_500(capped):
    status, body = post(capped.url(), b"[" * 100_000)
    assert status == 400 and "nested too deeply" in body["error"], body
    status, body = post(capped.url(), b"this is not gzip", headers={"Content-Encoding": "gzip"})
    assert status == 400 and "cannot read the request body" in body["error"], body
    status, body = post(capped.url(), gzip.compress(b" " * (200 * 2**20)), headers={"Content-Encoding": "gzip"})
    assert status == 413 and "--max-request-bytes" in body["error"], body
    _, rest_limit, _ = request_bytes_for(ServerConfig.max_request_pixels, ServerConfig.tile_above_pixels)
    status, body = post(capped.url(), b" " * (rest_limit + 1))
    assert status == 413 and "larger than the limit" in body["error"], body
    capped.assert_alive_and_serving()


def test_json_arrays_are_refused_by_their_count_before_parsing(capped):
    """A body within the byte limit (which admits PNG files in base64) but holding more JSON values than the
    REST array limit would cost gigabytes as Python lists: refused from a count of its separators."""
    values = b"[" + b"0," * (30 * 2**20) + b"0]"  # 60 MiB: 31 M values
    status, body = post(capped.url(), b'{"inputs": {"image": ' + values + b', "mask": [0]}}')
    assert status == 413 and "send the image files (signature 'serving_bytes')" in body["error"], body
    capped.assert_alive_and_serving()


@pytest.fixture
def roomy(onnx_repo):
    """A capped server whose memory budget admits a 2 MP JSON body (parsed as Python lists: ~1 GB)."""
    server = CappedServer(onnx_repo, "--memory-budget-mib", "4096")
    yield server
    server.stop()


@pytest.mark.slow  # over 5 s
def test_health_answers_quickly_while_a_large_json_body_is_parsed(roomy):
    capped = roomy
    image = np.random.default_rng(0).integers(0, 256, (1, 1400, 1400, 3), dtype=np.uint8)
    mask = np.zeros((1, 1400, 1400, 1), np.uint8)
    mask[:, 100:200, 100:900] = 1
    body = json.dumps({"inputs": {"image": image.tolist(), "mask": mask.tolist()}}).encode()
    assert len(body) > 15 * 2**20
    result, latencies = {}, []

    def big_request():  # parsing the answer would hold this process's GIL and slow our own health calls
        result["answer"] = post_raw(capped.url(), body, timeout=120)

    caller = threading.Thread(target=big_request)
    request_started = time.perf_counter()
    caller.start()
    while caller.is_alive():
        started = time.perf_counter()
        with urllib.request.urlopen(capped.url("/healthz"), timeout=10) as response:
            assert response.status == 200
        latencies.append(time.perf_counter() - started)
    caller.join()
    request_seconds = time.perf_counter() - request_started
    status, answer = result["answer"][0], json.loads(result["answer"][1])
    assert status == 200 and np.array_equal(np.asarray(answer["outputs"], np.uint8), expected_fill(image, mask))
    assert len(latencies) >= 5, "the request was too quick to show anything"
    # Relative, not absolute (a loaded CI machine slows everything): a health call that waited for the
    # decode would take a large part of the request's own time.
    assert max(latencies) < 0.2 * request_seconds, \
        f"/healthz took up to {max(latencies):.3f} s during a {request_seconds:.2f} s request"
    capped.assert_alive_and_serving()


@pytest.mark.slow  # over 5 s
def test_message_size_and_pixel_limits_are_coherent(onnx_repo):
    """Every request the pixel limits admit fits the message cap, and the CLI names the cap it hits."""
    from click.testing import CliRunner

    from conftest import random_image, write_png
    from inpaint.client.cli import main

    server = CappedServer(onnx_repo, "--max-pixels", "65536", "--max-request-pixels", "65536")
    try:
        stubs = Stubs(server.target)
        image, mask = images(1, 256, 256)
        as_float = predict_request(image.astype(np.float32) / 255, mask.astype(np.float32))
        assert stubs.predict(as_float).shape == (1, 256, 256, 3), "the largest request fits even as float32"
        image, mask = images(1, 257, 256)
        code, details = code_of(lambda: stubs.predict(predict_request(image, mask)))
        assert code == INVALID and "--max-pixels" in details
    finally:
        server.stop()
    server = CappedServer(onnx_repo, "--max-request-bytes", "4096")
    try:
        folder = onnx_repo.parent
        photo = write_png(folder / "big.png", random_image(64, 64))
        holes = write_png(folder / "big_mask.png", (random_image(64, 64)[..., 0] > 128).astype(np.uint8) * 255)
        result = CliRunner().invoke(main, ["--target", server.target, "predict", str(photo), str(holes)])
        assert result.exit_code == 1 and "request too large" in result.output and "max-request-bytes" in \
            result.output, result.output
        assert "overloaded" not in result.output
    finally:
        server.stop()
