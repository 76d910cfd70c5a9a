"""The client library and CLI against a real server on 127.0.0.1 (small ONNX models, no TensorFlow)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import random_image, write_png
from inpaint.client import (
    AsyncInpaintClient,
    DeadlineExceeded,
    InpaintClient,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    RetryPolicy,
    ServerUnavailable,
)
from inpaint.client.cli import main
from onnx_models import expected_fill


def _mask(h, w, seed=0):
    return (np.random.default_rng(seed).random((h, w)) > 0.7).astype(np.uint8)


def test_inpaint_array_and_files(onnx_repo, start_server, tmp_path):
    server = start_server(onnx_repo)
    image, mask = random_image(20, 30), _mask(20, 30)
    expected = expected_fill(image, mask[..., None])
    with InpaintClient(server.grpc_target) as client:
        assert client.inpaint(image, mask).tolist() == expected.tolist()
        image_path = write_png(tmp_path / "a.png", image)
        rgba_mask = np.zeros((20, 30, 4), np.uint8)
        rgba_mask[..., 1] = mask * 200  # any nonzero channel is a hole
        rgba_mask[..., 3] = 255          # alpha is not
        mask_path = write_png(tmp_path / "a_mask.png", rgba_mask)
        assert client.inpaint(image_path, mask_path).tolist() == expected.tolist()


def test_inpaint_batch_groups_sizes_and_keeps_order(onnx_repo, start_server):
    server = start_server(onnx_repo, enable_batching=True)
    shapes = [(16, 16), (20, 12), (16, 16), (20, 12), (16, 16)]
    images = [random_image(h, w, seed=i) for i, (h, w) in enumerate(shapes)]
    masks = [_mask(h, w, seed=i) for i, (h, w) in enumerate(shapes)]
    with InpaintClient(server.grpc_target) as client:
        results = client.inpaint_batch(images, masks, batch_size=2)
    assert [r.shape for r in results] == [(h, w, 3) for h, w in shapes]
    for image, mask, result in zip(images, masks, results):
        assert result.tolist() == expected_fill(image, mask[..., None]).tolist()


def test_metadata_status_health(onnx_repo, start_server):
    with InpaintClient(start_server(onnx_repo).grpc_target) as client:
        info = client.metadata()
        assert info["version"] == 1
        assert info["signatures"]["serving_default"]["inputs"]["image"] == {"dtype": "DT_UINT8",
                                                                            "shape": [-1, -1, -1, 3]}
        assert client.status() == [{"version": 1, "state": "AVAILABLE", "error": ""}]
        assert client.health() == "SERVING" and client.health("inpaint") == "SERVING"


def test_metadata_lists_signatures_and_tensors_by_name():
    """A protobuf map's order is the process's own (inpaint-client metadata printed serving_bytes or
    serving_default first, image or mask first, from one run to the next): the client sorts them by name."""
    from inpaint.core.protos import get_model_metadata_pb2

    names = [f"signature_{i:02d}" for i in range(20)]
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for name in reversed(names):
        for tensor in reversed(names):
            signatures.signature_def[name].inputs[tensor].name = tensor
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.metadata["signature_def"].Pack(signatures)
    info = InpaintClient._metadata_dict(response)
    assert list(info["signatures"]) == names
    assert all(list(signature["inputs"]) == names for signature in info["signatures"].values())


def test_async_client_many_concurrent_calls(onnx_repo, start_server):
    server = start_server(onnx_repo, enable_batching=True)
    image, mask = random_image(16, 16), _mask(16, 16)

    async def run():
        async with AsyncInpaintClient(server.grpc_target) as client:
            outputs = await asyncio.gather(*(client.inpaint(image, mask) for _ in range(64)))
            return outputs, await client.status(), await client.health()

    outputs, status, health = asyncio.run(run())
    assert all(o.tolist() == expected_fill(image, mask[..., None]).tolist() for o in outputs)
    assert status[0]["state"] == "AVAILABLE" and health == "SERVING"


def test_errors_map_to_the_hierarchy(onnx_repo, start_server):
    server = start_server(onnx_repo, max_pixels=100)
    image, mask = random_image(8, 8), _mask(8, 8)
    with InpaintClient(server.grpc_target, model="other") as client:
        with pytest.raises(ModelNotFound, match="other"):
            client.inpaint(image, mask)
    with InpaintClient(server.grpc_target, version=9) as client:
        with pytest.raises(ModelNotFound):
            client.inpaint(image, mask)
    with InpaintClient(server.grpc_target) as client:
        with pytest.raises(InvalidInput, match="over the limit"):
            client.inpaint(random_image(20, 20), _mask(20, 20))
        with pytest.raises(InvalidInput, match="mask is 7x8 but image is 8x8"):
            client.inpaint(image, _mask(8, 7))
        with pytest.raises(InvalidInput, match="does not exist"):
            client.inpaint("/nonexistent.png", mask)


class CountingRetries(RetryPolicy):
    """The default policy, counting the retries it grants."""

    def __init__(self, **options):
        super().__init__(**options)
        object.__setattr__(self, "granted", [])  # frozen dataclass: set once, then appended to
        object.__setattr__(self, "first", threading.Event())

    def delays(self):
        for delay in super().delays():
            self.granted.append(delay)
            self.first.set()
            yield delay


def test_a_dead_target_is_given_up_on_after_bounded_retries(free_port):
    retry = CountingRetries(max_attempts=4)
    with InpaintClient(f"127.0.0.1:{free_port}", timeout=60, retry=retry) as client:
        with pytest.raises(ServerUnavailable, match=f"no server reachable at 127.0.0.1:{free_port}"):
            client.health()
    assert len(retry.granted) == 4, "4 tries, not a 60 s deadline of them"


def test_a_server_started_late_is_reached_by_retries(onnx_repo, start_server, free_port):
    retry = CountingRetries(max_attempts=100, initial_backoff=0.05, max_backoff=0.2)
    result = {}

    def call():
        with InpaintClient(f"127.0.0.1:{free_port}", timeout=60, retry=retry) as client:
            result["out"] = client.inpaint(random_image(8, 8), _mask(8, 8))

    caller = threading.Thread(target=call)
    caller.start()
    assert retry.first.wait(timeout=30), "the first try was refused and retried"
    start_server(onnx_repo, port=free_port, wait=False)  # UNAVAILABLE until a version loads: retried too
    caller.join(timeout=60)
    assert result["out"].shape == (8, 8, 3)


def test_no_version_loaded_reports_the_servers_reason(tmp_path, start_server):
    (tmp_path / "empty").mkdir()
    server = start_server(tmp_path / "empty", wait=False)
    with InpaintClient(server.grpc_target, timeout=0.5, retry=RetryPolicy(max_attempts=1000)) as client:
        with pytest.raises(ServerUnavailable, match="no available version"):
            client.inpaint(random_image(8, 8), _mask(8, 8))


def test_deadline_and_overload_are_reported(onnx_repo, start_server):
    from inpaint.serving.batching import BatchingOptions

    server = start_server(onnx_repo, enable_batching=True,
                          batching=BatchingOptions(max_batch_size=64, batch_timeout_micros=2_000_000,
                                                   max_enqueued_batches=1))
    image, mask = random_image(8, 8), _mask(8, 8)
    with InpaintClient(server.grpc_target, timeout=0.3) as client:
        with pytest.raises(DeadlineExceeded):
            client.inpaint(image, mask)  # queued 2 s by the batch timeout: the deadline passes first

    async def overload():
        async with AsyncInpaintClient(server.grpc_target, timeout=5) as client:
            sizes = [(8 + i, 8) for i in range(3)]  # three sizes: three batches, the queue holds one
            return await asyncio.gather(*(client.inpaint(random_image(h, w), _mask(h, w)) for h, w in sizes),
                                        return_exceptions=True)

    results = asyncio.run(overload())
    assert any(isinstance(r, Overloaded) and "overloaded" in str(r) for r in results), results


# -- the CLI -------------------------------------------------------------------------------------------

def run_cli(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def one_line_error(result, fragment):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], result.output
    assert "Traceback" not in result.output


def test_cli_predict_pairs_and_default_output(onnx_repo, start_server, tmp_path):
    server = start_server(onnx_repo)
    image, mask = random_image(24, 32), _mask(24, 32)
    image_path = write_png(tmp_path / "photo.png", image)
    mask_path = write_png(tmp_path / "photo_mask.png", mask * 255)
    result = run_cli("--target", server.grpc_target, "predict", str(image_path), str(mask_path))
    assert result.exit_code == 0, result.output
    written = cv2.cvtColor(cv2.imread(str(tmp_path / "photo.inpainted.png")), cv2.COLOR_BGR2RGB)
    assert written.tolist() == expected_fill(image, mask[..., None]).tolist()


def test_cli_predict_folder_mode_with_env_target(onnx_repo, start_server, tmp_path):
    server = start_server(onnx_repo)
    for i in range(3):
        write_png(tmp_path / "in" / f"x{i}.png", random_image(16, 16 + i, seed=i))
        write_png(tmp_path / "in" / f"x{i}_mask.png", _mask(16, 16 + i, seed=i) * 255)
    result = run_cli("predict", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--batch-size", "2",
                     env={"INPAINT_CLIENT_TARGET": server.grpc_target})
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"x{i}.inpainted.png" for i in range(3)]


def test_cli_mask_is_seeded(tmp_path):
    image = write_png(tmp_path / "p.png", random_image(40, 50))
    for name in ("a.png", "b.png"):
        result = run_cli("mask", str(image), "--kind", "strokes", "--seed", "3", "-o", str(tmp_path / name))
        assert result.exit_code == 0 and "% hole" in result.output
    a, b = (cv2.imread(str(tmp_path / n), cv2.IMREAD_GRAYSCALE) for n in ("a.png", "b.png"))
    assert a.shape == (40, 50) and set(np.unique(a)) == {0, 255} and (a == b).all()


def test_cli_metadata_status_health(onnx_repo, start_server):
    target = start_server(onnx_repo).grpc_target
    result = run_cli("--target", target, "metadata")
    assert result.exit_code == 0 and "input  image" in result.output and "DT_UINT8" in result.output
    assert json.loads(run_cli("--target", target, "metadata", "--json").output)["version"] == 1
    assert run_cli("--target", target, "status").output.strip() == "version 1: AVAILABLE"
    assert json.loads(run_cli("--target", target, "status", "--json").output)[0]["state"] == "AVAILABLE"
    result = run_cli("--target", target, "health")
    assert result.exit_code == 0 and result.output.strip() == "SERVING"


def test_health_of_a_service_not_there_says_what_to_ask(onnx_repo, start_server):
    """grpc.health.v1 answers NOT_FOUND without details: the client says what it means; and --wait waits out
    a model's service not there yet (a model a config change adds has none until the server applies it)."""
    target = start_server(onnx_repo).grpc_target
    with InpaintClient(target) as client:
        with pytest.raises(ModelNotFound, match=f"{target} has no health service 'nope': give a model it serves"):
            client.health("nope")
    one_line_error(run_cli("--target", target, "health", "--service", "nope"), "has no health service 'nope'")
    result = run_cli("--target", target, "health", "--service", "nope", "--wait", "1")
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1].startswith(
        f"Error: model 'nope' on {target} was not SERVING within --wait 1 s (last: {target} has no health service")


def test_wait_until_serving_waits_out_a_model_not_added_yet():
    from inpaint.client.cli import wait_until_serving

    class Adding:
        target = "host:1"

        def __init__(self):
            self.answers = [ModelNotFound("no health service"), ModelNotFound("no health service"), "NOT_SERVING",
                            "SERVING"]

        def health(self, service, timeout):
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    assert wait_until_serving(Adding(), "inpaint-small", 5, 1) == "SERVING"
    with pytest.raises(ModelNotFound):  # the whole server's service is always there: not found is not waited out
        wait_until_serving(Adding(), "", 5, 1)


def test_cli_bad_inputs_are_one_line_errors(onnx_repo, start_server, tmp_path, free_port):
    target = start_server(onnx_repo).grpc_target
    image = write_png(tmp_path / "p.png", random_image(10, 10))
    mask = write_png(tmp_path / "m.png", _mask(9, 10) * 255)
    garbage = tmp_path / "g.png"
    garbage.write_bytes(b"not a png")
    nobody = f"127.0.0.1:{free_port}"
    one_line_error(run_cli("--target", target, "predict", str(tmp_path / "missing.png"), str(mask)), "does not exist")
    one_line_error(run_cli("--target", target, "predict", str(garbage), str(mask)), "cannot read image")
    one_line_error(run_cli("--target", target, "predict", str(image), str(mask)), "mask is 10x9 but image is 10x10")
    one_line_error(run_cli("--target", nobody, "--timeout", "0.3", "status"), f"no server reachable at {nobody}")
    one_line_error(run_cli("--target", target, "--model", "nope", "status"), "nope")


def test_client_imports_without_tensorflow_or_onnxruntime():
    code = ("import sys, inpaint.client, inpaint.client.cli; "
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'onnxruntime', 'keras')]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_loadtest_reports_add_up(onnx_repo, start_server, tmp_path):
    server = start_server(onnx_repo, enable_batching=True)
    report = tmp_path / "load"
    result = run_cli("--target", server.grpc_target, "loadtest", "--concurrency", "1,8", "--duration", "1",
                     "--warmup", "0.3", "--image-size", "32", "--metrics-url", server.rest_url + "/metrics",
                     "--report", str(report))
    assert result.exit_code == 0, result.output
    assert "| 8 clients |" in result.output
    data = json.loads((report / "load.json").read_text())
    assert [level["level"] for level in data["levels"]] == [1, 8]
    for level in data["levels"]:
        assert level["ok"] > 0 and level["sent"] == level["ok"] + sum(level["errors"].values())
        assert level["latency_ms"]["p50"] <= level["latency_ms"]["p99"] <= level["latency_ms"]["max"]
        assert level["server_batch_size"] >= 1
    import csv

    rows = list(csv.DictReader((report / "load.csv").open()))
    assert [r["Concurrency"] for r in rows] == ["1", "8"]
    assert all(float(r["Inferences/Second"]) > 0 and int(r["Sent"]) == int(r["Succeeded"]) + int(r["Errors"])
               for r in rows)
    png = (report / "load.png").read_bytes()
    assert png.startswith(b"\x89PNG") and cv2.imread(str(report / "load.png")) is not None


def test_loadtest_open_loop_and_max_requests(onnx_repo, start_server, tmp_path):
    server = start_server(onnx_repo)
    result = run_cli("--target", server.grpc_target, "loadtest", "--rate", "200", "--arrival", "poisson",
                     "--duration", "5", "--warmup", "0", "--max-requests", "30", "--report", str(tmp_path))
    assert result.exit_code == 0, result.output
    level = json.loads((tmp_path / "load.json").read_text())["levels"][0]
    assert level["mode"] == "rate" and level["sent"] == 30 and level["ok"] == 30


def test_loadtest_speaks_v2_to_the_same_server(onnx_repo, start_server, tmp_path):
    """--protocol v2 sends ModelInfer; the server's metrics count them under protocol="v2", not tfserving."""
    server = start_server(onnx_repo, enable_batching=True)
    result = run_cli("--target", server.grpc_target, "loadtest", "--protocol", "v2", "--concurrency", "4",
                     "--duration", "0.5", "--warmup", "0", "--image-size", "16", "--max-requests", "40",
                     "--report", str(tmp_path))
    assert result.exit_code == 0, result.output
    level = json.loads((tmp_path / "load.json").read_text())["levels"][0]
    assert level["ok"] == level["sent"] > 0 and not level["errors"]
    with urllib.request.urlopen(server.rest_url + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    counted = [line for line in metrics.splitlines()
               if line.startswith("inpaint_request_count_total") and 'status="OK"' in line and 'api="predict"' in line]
    assert any('protocol="v2"' in line and line.endswith(f" {float(level['ok'])}") for line in counted), counted
    assert not any('protocol="tfserving"' in line for line in counted), counted


def test_loadtest_counts_whole_cycles_of_a_bursty_server(monkeypatch):
    """Replies in bursts of 32 every 1.2 s: the rate is 32 / 1.2 s wherever the window falls."""
    from inpaint.client import loadtest

    clock = [0.0]
    monkeypatch.setattr(loadtest.time, "perf_counter", lambda: clock[0])
    recorder = loadtest._Recorder(measure_from=1.0, stop_at=6.0, max_requests=10_000)
    for burst_at in (0.5, 1.7, 2.9, 4.1, 5.3, 6.5):
        clock[0] = burst_at
        for _ in range(32):
            if recorder.may_send():
                recorder.record(recorder.start(), None)
    assert len(recorder.latencies) == 4 * 32
    assert recorder.measured_seconds() == pytest.approx(6.5 - 1.7)
    assert len(recorder.latencies) / recorder.measured_seconds() == pytest.approx(32 / 1.2)


def test_loadtest_without_a_server_is_one_line(tmp_path, free_port):
    nobody = f"127.0.0.1:{free_port}"
    one_line_error(run_cli("--target", nobody, "--timeout", "0.3", "loadtest", "--report", str(tmp_path)),
                   "no server reachable")


def test_cli_deadline_and_overload_are_one_line(onnx_repo, start_server, tmp_path):
    from inpaint.serving.batching import BatchingOptions

    # A batch stays open for a minute and the queue holds one: the first request's batch fills it.
    server = start_server(onnx_repo, enable_batching=True, drain_seconds=1.0,
                          batching=BatchingOptions(max_batch_size=64, batch_timeout_micros=60_000_000,
                                                   max_enqueued_batches=1))
    image = write_png(tmp_path / "p.png", random_image(10, 10))
    mask = write_png(tmp_path / "m.png", _mask(10, 10) * 255)
    one_line_error(run_cli("--target", server.grpc_target, "--timeout", "0.3", "predict", str(image), str(mask)),
                   "deadline exceeded")
    assert server.call(lambda: server.server.scheduler.queued_batches) == 1, "its batch still holds the queue"
    other = write_png(tmp_path / "q.png", random_image(12, 12))
    other_mask = write_png(tmp_path / "q_mask.png", _mask(12, 12) * 255)
    one_line_error(run_cli("--target", server.grpc_target, "predict", str(other), str(other_mask)), "overloaded")


def test_client_against_a_tf_serving_shaped_peer():
    """A server written with the official tensorflow-serving-api classes, as TF Serving would answer."""
    from concurrent import futures

    import grpc
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    def tensor(array):
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_UINT8, tensor_content=array.tobytes(),
                                      tensor_shape=tensor_shape_pb2.TensorShapeProto(
                                          dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in array.shape]))

    def array(proto):
        return np.frombuffer(proto.tensor_content, np.uint8).reshape([d.size for d in proto.tensor_shape.dim])

    class Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            if request.model_spec.name != "inpaint":
                context.abort(grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(x)")
            image, mask = array(request.inputs["image"]), array(request.inputs["mask"])
            response = predict_pb2.PredictResponse()
            response.model_spec.name, response.model_spec.version.value = "inpaint", 7
            response.outputs["inpainted"].CopyFrom(tensor(np.where(mask > 0, np.uint8(9), image)))
            return response

        def GetModelMetadata(self, request, context):
            signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
            signature.inputs["image"].dtype = types_pb2.DT_UINT8
            signatures = get_model_metadata_pb2.SignatureDefMap()
            signatures.signature_def["serving_default"].CopyFrom(signature)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name, response.model_spec.version.value = "inpaint", 7
            response.metadata["signature_def"].Pack(signatures)
            return response

    class Models(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):
            response = get_model_status_pb2.GetModelStatusResponse()
            response.model_version_status.add(version=7, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
            return response

    server = grpc.server(futures.ThreadPoolExecutor(4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Prediction(), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(Models(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        image, mask = random_image(9, 7), _mask(9, 7)
        with InpaintClient(f"127.0.0.1:{port}") as client:
            assert client.inpaint(image, mask).tolist() == np.where(mask[..., None] > 0, 9, image).tolist()
            assert client.status() == [{"version": 7, "state": "AVAILABLE", "error": ""}]
            info = client.metadata()
            assert info["version"] == 7 and info["signatures"]["serving_default"]["inputs"]["image"]["dtype"] == \
                "DT_UINT8"
        with InpaintClient(f"127.0.0.1:{port}", model="x") as client:
            with pytest.raises(ModelNotFound, match="Servable not found"):
                client.inpaint(image, mask)
    finally:
        server.stop(None)
