"""``inpaint-serve`` as a real process: SIGTERM under load drains cleanly and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2

from grpc_helpers import Stubs, images, predict_request
from helpers import free_port as another_free_port
from helpers import health_status, requests_in_flight, wait_for, wait_serving


def _serve(base, port, *extra):
    command = [sys.executable, "-m", "inpaint.serving.cli", "--model-base-path", str(base), "--host", "127.0.0.1",
               "--port", str(port), "--rest-port", "-1", "--file-system-poll-wait-seconds", "0.2", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigterm_under_load_finishes_in_flight_requests(onnx_repo, free_port):
    port, target = free_port, f"127.0.0.1:{free_port}"
    # A long batch timeout keeps requests queued when SIGTERM arrives: they must still be answered.
    rest_port = another_free_port()
    process = _serve(onnx_repo, port, "--enable-batching", "--batch-timeout-micros", "300000",
                     "--max-batch-size", "64", "--drain-seconds", "10", "--rest-port", str(rest_port))  # last wins
    try:
        wait_serving(target, process)
        stubs = Stubs(target)
        request = predict_request(*images(1, 16, 16))
        results, stop, sigterm_at, in_progress = [], threading.Event(), [], []

        def client():
            while not stop.is_set():
                started = time.monotonic()
                in_progress.append(started)
                try:
                    stubs.prediction.Predict(request, timeout=20)
                    results.append((started, time.monotonic(), grpc.StatusCode.OK, ""))
                except grpc.RpcError as error:
                    results.append((started, time.monotonic(), error.code(), error.details()))
                in_progress.remove(started)

        threads = [threading.Thread(target=client) for _ in range(16)]
        for thread in threads:
            thread.start()
        # Two rounds done and all 16 clients waiting on the third: it sits in an open batch (300 ms).
        wait_for(lambda: len(results) >= 32 and len(in_progress) == 16, 30, "a third round of requests in flight")
        # ... and in the server, not merely sent: SIGTERM must find them queued there.
        wait_for(lambda: requests_in_flight(rest_port) == 16, 30, "the server holding all 16 requests")
        stop.set()  # clients send nothing new after SIGTERM
        sigterm_at.append(time.monotonic())
        os.kill(process.pid, signal.SIGTERM)
        wait_for(lambda: health_status(target) != health_pb2.HealthCheckResponse.SERVING, 5,
                 "health to stop reporting SERVING")
        assert process.wait(timeout=30) == 0
        for thread in threads:
            thread.join(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    output = process.stdout.read()
    # Requests in flight when SIGTERM came are finished during the drain, or (if they reached the server
    # after it began) refused cleanly by it: never cut, never any other code.
    finished_in_drain = [code for started, ended, code, _ in results if started < sigterm_at[0] < ended]
    assert grpc.StatusCode.OK in finished_in_drain, (results[-16:], output[-2000:])
    refused = [details for _, _, code, details in results if code != grpc.StatusCode.OK]
    assert all("shutting down" in details for details in refused), (refused, output[-2000:])
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
