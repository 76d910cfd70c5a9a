"""Client strings never become server state, and every HTTP reply carries the security headers (issue 21).

Unknown model names, perhaps megabytes each, used to become a Prometheus label child apiece, counted before
they were checked: 300 GetModelStatus calls with 1 MB names kept 315 MiB for good, and the ``/metrics``
page grew with every one. Now they are counted under ``model_name="_unknown"``, and error messages quote
only a prefix. The server runs as ``inpaint-serve`` in its own process, so its resident set is its own.
"""

from __future__ import annotations

import json
import re
import resource
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from grpc_helpers import Stubs, code_of, images, predict_request
from helpers import free_port, wait_serving
from inpaint.serving.web import SECURITY_HEADERS, STATIC
from onnx_models import expected_fill

METRICS_READ_LIMIT = 4 * 2**20  # a /metrics page this large is already a failure; never read more of it
HEADROOM = 2**30                # address space over idle: the old code kept ~1 MB a call for good


def _rss_of(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _address_space_of(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")


def get(url: str, timeout: float = 30, limit: int | None = None) -> tuple[int, dict, bytes]:
    """Status, headers and (at most ``limit`` bytes of) body of a GET; HTTP errors are answers too."""
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as error:
        response = error
    with response:
        return response.status, dict(response.headers), response.read(limit) if limit else response.read()


class ServeProcess:
    """``inpaint-serve`` on free ports; its address space capped at idle + HEADROOM once SERVING."""

    def __init__(self, base: Path):
        self.port, self.rest_port = free_port(), free_port()
        command = [sys.executable, "-m", "inpaint.serving.cli", "--model-base-path", str(base), "--host", "127.0.0.1",
                   "--port", str(self.port), "--rest-port", str(self.rest_port), "--log-level", "WARNING"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_serving(self.target, self.process)
        cap = _address_space_of(self.process.pid) + HEADROOM
        resource.prlimit(self.process.pid, resource.RLIMIT_AS, (cap, cap))
        self.stubs = Stubs(self.target)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.rest_port}{path}"

    def rss(self) -> int:
        return _rss_of(self.process.pid)

    def metrics(self) -> str:
        status, _, body = get(self.url("/metrics"), limit=METRICS_READ_LIMIT + 1)
        assert status == 200 and len(body) <= METRICS_READ_LIMIT, f"/metrics is over {METRICS_READ_LIMIT} bytes"
        return body.decode()

    def assert_alive_and_serving(self) -> None:
        assert self.process.poll() is None, self.process.stdout.read()[-3000:]
        image, mask = images(1, 8, 8)
        assert self.stubs.predict(predict_request(image, mask)).tolist() == expected_fill(image, mask).tolist()

    def stop(self) -> None:
        self.stubs.close()
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    from onnx_models import write_version

    base = tmp_path_factory.mktemp("models") / "inpaint"
    write_version(base, 1)
    server = ServeProcess(base)
    yield server
    server.stop()


def series(metrics_text: str) -> list[str]:
    """The sample lines of a /metrics page, without their values: what grows when labels do."""
    return sorted(line.rsplit(" ", 1)[0] for line in metrics_text.splitlines() if line and not line.startswith("#"))


def name(index: int, size: int) -> str:
    return f"{index:08d}" + "x" * (size - 8)


def unknown_name_calls(server: ServeProcess, first: int, count: int, size: int) -> None:
    """``count`` GetModelStatus calls, then one GetModelMetadata and one Predict, each naming a new model."""
    calls = [lambda index=index: server.stubs.status(name=name(index, size)) for index in range(first, first + count)]
    calls.append(lambda: server.stubs.metadata(name=name(first + count, size)))
    calls.append(lambda: server.stubs.prediction.Predict(
        predict_request(*images(1, 4, 4), name=name(first + count + 1, size)), timeout=10))
    for call in calls:
        code, details = code_of(call)
        assert code == grpc.StatusCode.NOT_FOUND, (code, details[:200])
        assert len(details) < 400, f"the error quotes {len(details)} characters of a client's string"


# -- item 2: client strings never become unbounded state ------------------------------------------------

def test_300_unknown_model_names_of_100_kb_add_no_series_to_metrics(serve):
    unknown_name_calls(serve, 0, 20, 100_000)  # the _unknown series of each API, made once
    before = series(serve.metrics())
    unknown_name_calls(serve, 100, 300, 100_000)
    text = serve.metrics()
    assert series(text) == before and "xxxxxxxx" not in text
    counted = [line for line in text.splitlines() if line.startswith("inpaint_request_count_total")
               and 'model_name="_unknown"' in line and 'api="status"' in line]
    assert counted == ['inpaint_request_count_total{api="status",model_name="_unknown",protocol="tfserving",'
                       'status="NOT_FOUND",version=""} 320.0'], counted
    serve.assert_alive_and_serving()


def test_1000_unknown_model_names_of_30_kb_keep_no_memory(serve):
    """The old code kept each name for good (label children and their cache): +35 MiB per 1,000 such calls,
    measured; now the resident set stays within a few MiB (gRPC's buffers come and go)."""
    unknown_name_calls(serve, 10_000, 100, 30_000)
    before = serve.rss()
    unknown_name_calls(serve, 20_000, 1000, 30_000)
    grown = serve.rss() - before
    assert grown < 12 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB over 1,000 calls"
    serve.assert_alive_and_serving()


def test_rest_404s_with_long_model_names_add_no_series(serve):
    long = "n" * 4000
    for index in range(3):  # label children of the unknown name, for each API, made once
        for path in (f"/v1/models/{index}{long}", f"/v1/models/{index}{long}/metadata", f"/v2/models/{index}{long}"):
            get(serve.url(path))
    before = series(serve.metrics())
    for index in range(3, 300):
        for path in (f"/v1/models/{index}{long}", f"/v1/models/{index}{long}/metadata", f"/v2/models/{index}{long}"):
            status, _, body = get(serve.url(path))
            assert status == 404 and len(body) < 400, (path[:40], status, body[:200])
    assert series(serve.metrics()) == before
    serve.assert_alive_and_serving()


def test_known_names_keep_their_own_series(serve):
    serve.assert_alive_and_serving()
    text = serve.metrics()
    assert ('inpaint_request_count_total{api="predict",model_name="inpaint",protocol="tfserving",status="OK",'
            'version="1"}') in text
    assert 'inpaint_model_versions_loaded{model_name="inpaint"} 1.0' in text


def test_metric_labels_record_only_known_values():
    from inpaint.serving.metrics import UNKNOWN_LABEL, ServerMetrics

    metrics = ServerMetrics("inpaint")
    for index in range(100):
        metrics.request_count.labels(f"model{index}", "1" * 30, "status", "NOT_A_CODE", "tfserving").inc()
        metrics.requests_in_flight.labels(model_name=f"other{index}").inc()
    counted = metrics.request_count.labels(UNKNOWN_LABEL, UNKNOWN_LABEL, "status", UNKNOWN_LABEL, "tfserving")
    assert counted._value.get() == 100
    assert len(metrics.request_count._metrics) == 1 and len(metrics.requests_in_flight._metrics) == 1
    assert len(metrics.request_count._children) == 1
    ours = metrics.request_count.labels("inpaint", "7", "predict", "OK", "v2")
    assert metrics.request_count.labels("inpaint", "7", "predict", "OK", "v2") is ours


def test_error_messages_quote_a_bounded_prefix():
    from inpaint.serving.errors import quoted

    assert quoted("inpaint") == "'inpaint'"
    long = quoted("y" * 10**6)
    assert len(long) < 100 and "1000000 characters" in long


# -- item 7: headers ------------------------------------------------------------------------------------

PATHS = ("/", "/static/app.js", "/static/style.css", "/static/nothing.js", "/v1/models/inpaint",
         "/v1/models/inpaint/metadata", "/v1/models/nope", "/v2/models/inpaint", "/metrics", "/healthz", "/nowhere")


@pytest.fixture
def server(onnx_repo, start_server):
    return start_server(onnx_repo)


def test_every_reply_carries_the_security_headers_and_no_version_banner(server):
    for path in PATHS:
        _, headers, _ = get(server.rest_url + path)
        for header, value in SECURITY_HEADERS.items():
            if header != "Content-Security-Policy":
                assert headers.get(header) == value, (path, header, headers)
        assert "default-src 'none'" in headers.get("Content-Security-Policy", ""), (path, headers)
        assert headers.get("Server") == "inpaint-serve", (path, headers.get("Server"))
    request = urllib.request.Request(server.rest_url + "/v1/models/inpaint:predict", data=b"{not json",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400 and refused.value.headers["X-Content-Type-Options"] == "nosniff"
    assert refused.value.headers["Server"] == "inpaint-serve"


def test_a_request_refused_by_the_http_parser_shows_no_versions_either(server):
    with socket.create_connection(("127.0.0.1", server.server.rest_port), timeout=10) as sock:
        sock.sendall(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    assert re.match(r"HTTP/1\.[01] 4\d\d ", head), head
    server_lines = [line for line in head.split("\r\n") if line.lower().startswith("server:")]
    assert server_lines == ["Server: inpaint-serve"], head


def test_the_page_policy_allows_only_its_own_files_and_the_page_needs_nothing_else(server):
    _, headers, page = get(server.rest_url + "/")
    policy = dict(part.strip().split(" ", 1) for part in headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'" and "unsafe" not in headers["Content-Security-Policy"]
    text = page.decode()
    # No inline script, event handler or style in the markup: the policy would block them.
    assert not re.search(r"<script(?![^>]*\ssrc=)|<style|<[^>]*\s(?:on[a-z]+|style)\s*=", text, re.IGNORECASE)
    assert 'src="static/app.js"' in text and 'href="static/style.css"' in text
    assert "innerHTML" not in (STATIC / "app.js").read_text() and "eval(" not in (STATIC / "app.js").read_text()
    status, headers, body = get(server.rest_url + "/static/app.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript") and body


def test_headers_stay_with_a_cors_origin(onnx_repo, start_server):
    server = start_server(onnx_repo, cors_origin="https://app.example")
    _, headers, _ = get(server.rest_url + "/v1/models/inpaint")
    assert headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert headers["X-Frame-Options"] == "DENY" and headers["Server"] == "inpaint-serve"
    assert json.loads(get(server.rest_url + "/v1/models/inpaint")[2])["model_version_status"][0]["state"] == "AVAILABLE"
