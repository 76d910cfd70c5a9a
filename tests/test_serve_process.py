"""``inpaint-serve`` as a real process: SIGTERM under load drains cleanly and exits 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_helpers import Stubs, images, predict_request


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(base, port, *extra):
    command = [sys.executable, "-m", "inpaint.serving.cli", "--model-base-path", str(base), "--host", "127.0.0.1",
               "--port", str(port), "--rest-port", "-1", "--file-system-poll-wait-seconds", "0.2", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_serving(port, process, timeout=60):
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                return health
        except grpc.RpcError:
            pass
        time.sleep(0.05)
    pytest.fail("server never became SERVING")


def test_sigterm_under_load_finishes_in_flight_requests(onnx_repo):
    port = _free_port()
    # A long batch timeout keeps requests queued when SIGTERM arrives: they must still be answered.
    process = _serve(onnx_repo, port, "--enable-batching", "--batch-timeout-micros", "300000",
                     "--max-batch-size", "64", "--drain-seconds", "10")
    try:
        health = _wait_serving(port, process)
        stubs = Stubs(f"127.0.0.1:{port}")
        request = predict_request(*images(1, 16, 16))
        results, stop, sigterm_at = [], threading.Event(), []

        def client():
            while not stop.is_set():
                started = time.monotonic()
                try:
                    stubs.prediction.Predict(request, timeout=20)
                    results.append((started, grpc.StatusCode.OK))
                except grpc.RpcError as error:
                    results.append((started, error.code()))
                    if error.code() == grpc.StatusCode.UNAVAILABLE:
                        return

        threads = [threading.Thread(target=client) for _ in range(16)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        sigterm_at.append(time.monotonic())
        os.kill(process.pid, signal.SIGTERM)
        time.sleep(0.05)
        try:
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
        except grpc.RpcError:
            status = None  # already gone: also not serving
        assert status != health_pb2.HealthCheckResponse.SERVING
        assert process.wait(timeout=30) == 0
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    output = process.stdout.read()
    in_flight = [code for started, code in results if started < sigterm_at[0]]
    refused = [code for started, code in results if started >= sigterm_at[0]]
    assert len(in_flight) >= 16 and set(in_flight) == {grpc.StatusCode.OK}, (in_flight, output[-2000:])
    assert set(refused) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, (refused, output[-2000:])
    assert "draining" in output and "stopped" in output


def test_serve_cli_rejects_bad_flags(tmp_path):
    result = subprocess.run([sys.executable, "-m", "inpaint.serving.cli", "--model-base-path", str(tmp_path),
                             "--model-version-policy", "newest"], capture_output=True, text=True)
    assert result.returncode == 2 and "bad version policy 'newest'" in result.stderr
    bad = tmp_path / "batching.txt"
    bad.write_text("max_batch_size { value: 0 }\n")
    result = subprocess.run([sys.executable, "-m", "inpaint.serving.cli", "--model-base-path", str(tmp_path),
                             "--batching-parameters-file", str(bad)], capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert "Traceback" not in result.stderr
