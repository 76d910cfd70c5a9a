"""The real server on 127.0.0.1, over real gRPC and HTTP, with small ONNX models (no TensorFlow)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_helpers import Stubs, code_of, images, predict_request
from helpers import wait_for
from inpaint.core.contract import VersionState
from inpaint.core.protos import types_pb2
from onnx_models import expected_fill, fill_model, wrong_signature_model, write_version

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def http(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_predict_fills_holes_and_names_the_version(onnx_repo, start_server):
    server = start_server(onnx_repo)
    stubs = Stubs(server.grpc_target)
    image, mask = images()
    response = stubs.prediction.Predict(predict_request(image, mask), timeout=10)
    assert response.model_spec.version.value == 1 and response.model_spec.signature_name == "serving_default"
    assert stubs.predict(predict_request(image, mask, version=1, signature="serving_default")).tolist() == \
        expected_fill(image, mask).tolist()


def test_int_val_and_float_inputs_are_accepted(onnx_repo, start_server):
    stubs = Stubs(start_server(onnx_repo).grpc_target)
    image, mask = images(1, 4, 4)
    request = predict_request(None, None)
    for name, array in (("image", image), ("mask", mask)):
        tensor = request.inputs[name]
        tensor.dtype = types_pb2.DT_UINT8
        tensor.tensor_shape.dim.add().size = 1
        for size in array.shape[1:]:
            tensor.tensor_shape.dim.add().size = size
        tensor.int_val.extend(array.ravel().tolist())
    assert stubs.predict(request).tolist() == expected_fill(image, mask).tolist()

    float_request = predict_request(image.astype(np.float32) / 255.0, mask.astype(np.float32))
    assert stubs.predict(float_request).tolist() == expected_fill(image, mask).tolist()


@pytest.mark.parametrize("case,fragment", [
    ("missing", "missing mask"),
    ("extra", "unexpected extra"),
    ("dtype", "dtype DT_INT32"),
    ("rank", "rank 4"),
    ("channels", "3 channel(s)"),
    ("mismatch", "differ in N, H or W"),
    ("pixels", "over the limit"),
    ("content", "bytes of tensor_content"),
    ("signature", "signature key \"classify\" not found"),
    ("filter", "unknown output(s) logits"),
    ("float_range", "must lie in [0, 1]"),
])
def test_bad_inputs_are_invalid_argument(onnx_repo, start_server, case, fragment):
    stubs = Stubs(start_server(onnx_repo, max_pixels=10_000).grpc_target)
    image, mask = images()
    request = {
        "missing": lambda: predict_request(image, None),
        "extra": lambda: predict_request(image, mask, extra=image),
        "rank": lambda: predict_request(image[0], mask[0]),
        "channels": lambda: predict_request(image[..., :2], mask),
        "mismatch": lambda: predict_request(image, mask[:, :3]),
        "pixels": lambda: predict_request(*images(1, 101, 100)),
        "signature": lambda: predict_request(image, mask, signature="classify"),
        "float_range": lambda: predict_request(image.astype(np.float32), mask),
    }.get(case, lambda: predict_request(image, mask))()
    if case == "dtype":
        request.inputs["image"].dtype = types_pb2.DT_INT32
    if case == "content":
        request.inputs["image"].tensor_content = request.inputs["image"].tensor_content[:-1]
    if case == "filter":
        request.output_filter.append("logits")
    code, details = code_of(lambda: stubs.predict(request))
    assert code == INVALID and fragment in details, details


def test_unknown_model_and_version_are_not_found(onnx_repo, start_server):
    stubs = Stubs(start_server(onnx_repo).grpc_target)
    image, mask = images()
    code, details = code_of(lambda: stubs.predict(predict_request(image, mask, name="other")))
    assert code == grpc.StatusCode.NOT_FOUND and "other" in details
    code, details = code_of(lambda: stubs.predict(predict_request(image, mask, version=7)))
    assert code == grpc.StatusCode.NOT_FOUND and "Specific(inpaint, 7)" in details
    assert code_of(lambda: stubs.status(name="other"))[0] == grpc.StatusCode.NOT_FOUND


def test_other_rpcs_are_unimplemented_and_an_empty_config_is_refused(onnx_repo, start_server):
    from tensorflow_serving.apis import (
        classification_pb2,
        model_management_pb2,
        model_service_pb2_grpc,
        prediction_service_pb2_grpc,
    )

    channel = grpc.insecure_channel(start_server(onnx_repo).grpc_target)
    prediction = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    model = model_service_pb2_grpc.ModelServiceStub(channel)
    assert code_of(lambda: prediction.Classify(classification_pb2.ClassificationRequest(), timeout=5))[0] == \
        grpc.StatusCode.UNIMPLEMENTED
    # HandleReloadConfigRequest is served (tests/test_model_config.py); a config without models is refused.
    reload = model_management_pb2.ReloadConfigRequest()
    code, details = code_of(lambda: model.HandleReloadConfigRequest(reload, timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "model_config_list" in details


def test_metadata_is_packed_as_tf_serving_does(onnx_repo, start_server):
    from tensorflow_serving.apis import get_model_metadata_pb2 as official

    stubs = Stubs(start_server(onnx_repo).grpc_target)
    response = official.GetModelMetadataResponse.FromString(stubs.metadata().SerializeToString())
    assert response.model_spec.version.value == 1
    signatures = official.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    assert [d.size for d in signature.inputs["image"].tensor_shape.dim] == [-1, -1, -1, 3]
    assert [d.size for d in signature.inputs["mask"].tensor_shape.dim] == [-1, -1, -1, 1]
    assert signature.inputs["image"].dtype == types_pb2.DT_UINT8
    assert set(signature.outputs) == {"inpainted"}
    code, details = code_of(lambda: stubs.metadata(fields=["graph"]))
    assert code == INVALID and "signature_def" in details


def test_nothing_loaded_is_unavailable_until_a_version_appears(tmp_path, start_server):
    base = tmp_path / "inpaint"
    base.mkdir()
    server = start_server(base, wait=False)
    stubs = Stubs(server.grpc_target)
    health = health_pb2_grpc.HealthStub(stubs.channel)
    image, mask = images()
    code, details = code_of(lambda: stubs.predict(predict_request(image, mask)))
    assert code == grpc.StatusCode.UNAVAILABLE and "no available version" in details
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
        health_pb2.HealthCheckResponse.NOT_SERVING
    assert http(server.rest_url + "/readyz")[0] == 503 and http(server.rest_url + "/healthz")[0] == 200

    write_version(base, 3)
    server.wait_until_available()
    wait_for(lambda: health.Check(health_pb2.HealthCheckRequest(service="inpaint"), timeout=5).status ==
             health_pb2.HealthCheckResponse.SERVING, 5, "health to turn SERVING")
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
        health_pb2.HealthCheckResponse.SERVING
    assert http(server.rest_url + "/readyz")[0] == 200
    assert stubs.predict(predict_request(image, mask)).shape == image.shape
    assert code_of(lambda: health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5))[0] == \
        grpc.StatusCode.NOT_FOUND


def test_a_broken_version_is_reported_and_does_not_stop_the_others(onnx_repo, start_server):
    write_version(onnx_repo, 2, wrong_signature_model())
    (onnx_repo / "3").mkdir()
    (onnx_repo / "3" / "model.onnx").write_bytes(b"not an onnx file")
    server = start_server(onnx_repo, version_policy="all")
    stubs = Stubs(server.grpc_target)

    def settled():
        states = {s.version: s for s in stubs.status().model_version_status}
        return states if len(states) == 3 and all(s.state in (30, 50) for s in states.values()) else None

    states = wait_for(settled, 10, "all three versions to load or fail")
    assert states[1].state == 30 and states[1].status.error_message == ""
    assert states[2].state == 50 and "expected ['image', 'mask']" in states[2].status.error_message
    assert states[3].state == 50 and states[3].status.error_message
    assert stubs.predict(predict_request(*images())).shape == (2, 6, 5, 3)
    rest = json.loads(http(server.rest_url + "/v1/models/inpaint/versions/2")[1])
    assert rest["model_version_status"][0]["state"] == "END"


def test_version_policy_and_saved_model_only_versions(onnx_repo, start_server):
    write_version(onnx_repo, 2, fill=10)
    write_version(onnx_repo, 3, fill=20)
    (onnx_repo / "4").mkdir()
    (onnx_repo / "4" / "saved_model.pb").write_bytes(b"TF Serving's, not ours")
    stubs = Stubs(start_server(onnx_repo, version_policy="specific:1,3").grpc_target)
    image, mask = images()
    assert sorted(s.version for s in stubs.status().model_version_status) == [1, 3]
    # The server is ready once one version is; the latest of the two may still be loading.
    wait_for(lambda: all(s.state == VersionState.AVAILABLE for s in stubs.status().model_version_status),
             timeout=60, what="versions 1 and 3 AVAILABLE")
    assert stubs.predict(predict_request(image, mask)).tolist() == expected_fill(image, mask, 20).tolist()
    assert stubs.predict(predict_request(image, mask, version=1)).tolist() == expected_fill(image, mask).tolist()
    assert code_of(lambda: stubs.predict(predict_request(image, mask, version=2)))[0] == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(onnx_repo, start_server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.insecure_channel(start_server(onnx_repo).grpc_target)
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in next(responses).list_services_response.service}
    assert {"tensorflow.serving.PredictionService", "tensorflow.serving.ModelService",
            "grpc.health.v1.Health"} <= names
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="tensorflow.serving.PredictionService")
    files = next(stub.ServerReflectionInfo(iter([request]))).file_descriptor_response.file_descriptor_proto
    assert files, "the service's proto file is served"


def test_reflection_answers_a_stream_of_requests_and_refuses_what_no_client_sends(onnx_repo, start_server):
    """Reflection's requests arrive through the small methods' gate (serving/grpc_transport.py): requests sent
    back to back on one stream are all answered; a message over SMALL_MESSAGE_BYTES is refused unparsed; a
    stream that stays idle ends rather than hold the gate (grpcurl leaves its stream open while the call it
    looked up runs): before its first request with DEADLINE_EXCEEDED, after its answers with OK, at once."""
    import queue

    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from inpaint.serving.grpc_transport import REFLECTION_IDLE_SECONDS, SMALL_ARRIVAL_SECONDS, SMALL_MESSAGE_BYTES

    stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(start_server(onnx_repo).grpc_target))
    symbols = ["tensorflow.serving.PredictionService", "inference.GRPCInferenceService", "grpc.health.v1.Health"]
    requests = [reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol) for symbol in symbols]
    replies = list(stub.ServerReflectionInfo(iter(requests), timeout=30))
    assert [reply.original_request.file_containing_symbol for reply in replies] == symbols
    assert all(reply.file_descriptor_response.file_descriptor_proto for reply in replies)

    huge = reflection_pb2.ServerReflectionRequest(file_containing_symbol="s" * (SMALL_MESSAGE_BYTES + 1))
    code, details = code_of(lambda: list(stub.ServerReflectionInfo(iter([huge]), timeout=30)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and str(SMALL_MESSAGE_BYTES) in details

    pending: queue.Queue = queue.Queue()  # a stream that sends one request, then nothing, and never closes
    pending.put(requests[0])
    stream = stub.ServerReflectionInfo(iter(pending.get, None), timeout=30)
    assert next(stream).original_request.file_containing_symbol == symbols[0]
    started = time.monotonic()
    assert list(stream) == []  # ended, OK, with the gate free again...
    assert time.monotonic() - started < 10 * REFLECTION_IDLE_SECONDS  # ...long before the call's deadline
    pending.put(None)

    silent: queue.Queue = queue.Queue()  # one that never sends its first request
    code, details = code_of(lambda: list(stub.ServerReflectionInfo(iter(silent.get, None), timeout=30)))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and f"{SMALL_ARRIVAL_SECONDS:g} s" in details
    silent.put(None)


def test_streams_that_stay_open_are_counted_and_one_more_is_refused(onnx_repo, start_server):
    """Health Watch and reflection streams stay open as long as their client likes, each keeping its request
    (up to 1 MiB; an unread reflection answer repeats it): uncounted, 473 unread 1 MiB lookups or 1,150 Watch
    streams of 1 MiB names OOM-killed the pod (helper-18). At most OPEN_STREAMS of each are open at once; one
    more gets RESOURCE_EXHAUSTED naming the limit, and a closed stream's place is taken again."""
    import queue

    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from inpaint.serving.grpc_transport import OPEN_STREAMS

    channel = grpc.insecure_channel(start_server(onnx_repo).grpc_target)
    health = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="inpaint")
    watches = [health.Watch(request, timeout=60) for _ in range(OPEN_STREAMS)]
    assert all(next(watch).status == health_pb2.HealthCheckResponse.SERVING for watch in watches)
    code, details = code_of(lambda: next(health.Watch(request, timeout=30)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and f"health Watch streams open at once ({OPEN_STREAMS})" in details
    watches.pop().cancel()
    wait_for(lambda: code_of(lambda: next(health.Watch(request, timeout=30)))[0] == grpc.StatusCode.OK, 10,
             "a Watch stream again")
    for watch in watches:
        watch.cancel()

    lookups = reflection_pb2_grpc.ServerReflectionStub(channel)
    lookup = reflection_pb2.ServerReflectionRequest(file_containing_symbol="s" * 1_000_000)  # answered, never read
    senders = [queue.Queue() for _ in range(OPEN_STREAMS)]
    for sender in senders:
        sender.put(lookup)
    unread = [lookups.ServerReflectionInfo(iter(sender.get, None), timeout=60) for sender in senders]
    listing = reflection_pb2.ServerReflectionRequest(list_services="")

    def one_more() -> tuple:
        return code_of(lambda: list(lookups.ServerReflectionInfo(iter([listing]), timeout=30)))

    code, details = wait_for(lambda: (found := one_more())[0] == grpc.StatusCode.RESOURCE_EXHAUSTED and found, 30,
                             "a reflection stream refused while the unread ones stay open")
    assert f"reflection streams open at once ({OPEN_STREAMS})" in details
    for stream, sender in zip(unread, senders):
        stream.cancel()
        sender.put(None)
    wait_for(lambda: one_more()[0] == grpc.StatusCode.OK, 10, "a reflection stream answered again")


def test_rest_api(onnx_repo, start_server):
    server = start_server(onnx_repo)
    url = server.rest_url + "/v1/models/inpaint"
    status, body = http(url)
    assert status == 200 and json.loads(body)["model_version_status"][0]["state"] == "AVAILABLE"
    status, body = http(url + "/metadata")
    signature = json.loads(body)["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert status == 200 and set(signature["inputs"]) == {"image", "mask"}

    image, mask = images(2, 3, 4)
    instances = [{"image": i.tolist(), "mask": m.tolist()} for i, m in zip(image, mask)]
    status, body = http(url + ":predict", {"instances": instances})
    assert status == 200 and json.loads(body)["predictions"] == expected_fill(image, mask).tolist()
    status, body = http(url + "/versions/1:predict", {"inputs": {"image": image.tolist(), "mask": mask.tolist()}})
    assert status == 200 and json.loads(body)["outputs"] == expected_fill(image, mask).tolist()

    for request_body, code, fragment in [
        ({"instances": instances, "inputs": {}}, 400, "exactly one of"),
        ({"inputs": {"image": image.tolist()}}, 400, "missing mask"),
        ({"inputs": {"image": (image.astype(int) + 300).tolist(), "mask": mask.tolist()}}, 400, "integers 0..255; it holds"),
    ]:
        status, body = http(url + ":predict", request_body)
        assert status == code and fragment in json.loads(body)["error"]
    status, body = http(server.rest_url + "/v1/models/other:predict", {"instances": instances})
    assert status == 404 and "other" in json.loads(body)["error"]
    status, body = http(url + "/versions/9")
    assert status == 404


def test_prometheus_metrics(onnx_repo, start_server):
    server = start_server(onnx_repo, enable_batching=True)
    stubs = Stubs(server.grpc_target)
    stubs.predict(predict_request(*images()))
    code_of(lambda: stubs.predict(predict_request(images()[0], None)))
    for path in ("/monitoring/prometheus/metrics", "/metrics"):
        status, body = http(server.rest_url + path)
        text = body.decode()
        assert status == 200
        assert ('inpaint_request_count_total{api="predict",model_name="inpaint",protocol="tfserving",status="OK",'
                'version="1"} 1.0') in text
        assert 'status="INVALID_ARGUMENT"' in text
        for name in ("inpaint_request_latency_bucket", "inpaint_runtime_latency_bucket",
                     "inpaint_batching_session_queuing_latency_bucket", "inpaint_batching_session_batch_size_sum",
                     'inpaint_model_versions_loaded{model_name="inpaint"} 1.0'):
            assert name in text, name


def test_metric_children_are_cached_and_removal_is_honoured():
    from inpaint.serving.metrics import ServerMetrics

    metrics = ServerMetrics()
    child = metrics.request_count.labels("inpaint", "1", "predict", "OK", "tfserving")
    assert metrics.request_count.labels("inpaint", "1", "predict", "OK", "tfserving") is child
    child.inc()
    metrics.request_count.remove("inpaint", "1", "predict", "OK", "tfserving")
    fresh = metrics.request_count.labels("inpaint", "1", "predict", "OK", "tfserving")
    assert fresh is not child
    fresh.inc()
    assert (b'inpaint_request_count_total{api="predict",model_name="inpaint",protocol="tfserving",status="OK",'
            b'version="1"} 1.0') in metrics.render()


def _batch_size_average(rest_url) -> float:
    text = http(rest_url + "/metrics")[1].decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("inpaint_batching")}
    total = values['inpaint_batching_session_batch_size_sum{model_name="inpaint"}']
    count = values['inpaint_batching_session_batch_size_count{model_name="inpaint"}']
    return total / count


def test_batching_really_merges_concurrent_requests(onnx_repo, start_server):
    server = start_server(onnx_repo, enable_batching=True,
                          batching=__import__("inpaint.serving.batching", fromlist=["BatchingOptions"])
                          .BatchingOptions(max_batch_size=32, batch_timeout_micros=20_000))
    image, mask = images(1, 32, 32)
    request = predict_request(image, mask)
    stubs = Stubs(server.grpc_target)
    barrier = threading.Barrier(32)

    def client(_):
        barrier.wait()
        return [stubs.predict(request).tolist() == expected_fill(image, mask).tolist() for _ in range(5)]

    with ThreadPoolExecutor(32) as pool:
        results = [ok for oks in pool.map(client, range(32)) for ok in oks]
    assert len(results) == 160 and all(results)
    assert _batch_size_average(server.rest_url) > 1.0


def test_hot_reload_under_load_fails_no_request(onnx_repo, start_server):
    server = start_server(onnx_repo)
    stubs = Stubs(server.grpc_target)
    image, mask = images(1, 8, 8)
    request = predict_request(image, mask)
    by_version = {1: expected_fill(image, mask).tolist(), 2: expected_fill(image, mask, 200).tolist()}
    stop, seen, failures = threading.Event(), [], []

    def client():
        while not stop.is_set():
            try:
                response = stubs.prediction.Predict(request, timeout=10)
                output = np.frombuffer(response.outputs["inpainted"].tensor_content, np.uint8).reshape(image.shape)
                version = response.model_spec.version.value
                seen.append(version)
                if output.tolist() != by_version[version]:
                    failures.append(f"version {version} gave the wrong output")
            except grpc.RpcError as error:
                failures.append(error.code())

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(seen) >= 20, 10, "clients to be served by version 1")
    write_version(onnx_repo, 2, fill=200)
    wait_for(lambda: seen and seen[-1] == 2, 10, "version 2 to serve")
    shutil.rmtree(onnx_repo / "1")
    wait_for(lambda: server.call(lambda: 1 not in server.server.manager.versions
                                 or server.server.manager.versions[1].state == VersionState.END), 10,
             "version 1 to be unloaded")
    served_before = len(seen)
    wait_for(lambda: len(seen) >= served_before + 20, 10, "clients to go on being served")
    stop.set()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]
    assert 1 in seen and 2 in seen and len(seen) > 50
    states = {s.version: s.state for s in stubs.status().model_version_status}
    assert states == {1: 50, 2: 30}, states


def test_malformed_requests_never_hurt_the_server(onnx_repo, start_server):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from inpaint.core.protos import predict_pb2

    stubs = Stubs(start_server(onnx_repo, max_pixels=4096).grpc_target)
    allowed = {grpc.StatusCode.OK, INVALID, grpc.StatusCode.NOT_FOUND}
    dims = st.lists(st.integers(min_value=-2, max_value=40), min_size=0, max_size=5)
    tensors = st.builds(
        lambda dtype, shape, content, ints: (dtype, shape, content, ints),
        st.sampled_from([0, 1, 3, 4, 4, 4, 7, 9, 99]), dims, st.binary(max_size=300),
        st.lists(st.integers(min_value=-300, max_value=300), max_size=50))

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.dictionaries(st.sampled_from(["image", "mask", "extra", ""]), tensors, max_size=3),
           st.sampled_from(["inpaint", "", "x"]), st.sampled_from(["", "serving_default", "nope"]),
           st.booleans())
    def send(inputs, name, signature, use_ints):
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = name, signature
        for key, (dtype, shape, content, ints) in inputs.items():
            tensor = request.inputs[key]
            tensor.dtype = dtype
            for size in shape:
                tensor.tensor_shape.dim.add().size = size
            if use_ints:
                tensor.int_val.extend(ints)
            else:
                tensor.tensor_content = content
        code, details = code_of(lambda: stubs.prediction.Predict(request, timeout=10))
        assert code in allowed, (code, details)

    send()
    image, mask = images()
    assert stubs.predict(predict_request(image, mask)).tolist() == expected_fill(image, mask).tolist()


def test_server_imports_without_tensorflow():
    code = ("import sys, inpaint.serving.server, inpaint.serving.cli; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_request_over_the_size_limit_is_refused_by_grpc(onnx_repo, start_server):
    stubs = Stubs(start_server(onnx_repo, max_request_bytes=4096).grpc_target)
    code, details = code_of(lambda: stubs.predict(predict_request(*images(1, 64, 64))))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details
    assert stubs.predict(predict_request(*images(1, 8, 8))).shape == (1, 8, 8, 3), "small requests still pass"


def test_unexpected_errors_are_internal_and_the_server_survives(onnx_repo, start_server):
    server = start_server(onnx_repo)
    stubs = Stubs(server.grpc_target)
    image, mask = images()
    model_version = server.server.manager.versions[1]
    real_servable = model_version.servable

    class Broken:
        def inpaint(self, images, masks):
            raise ZeroDivisionError("boom")

        def signature(self):
            return real_servable.signature()

    model_version.servable = Broken()  # a bug inside the model call, not a bad request
    try:
        code, details = code_of(lambda: stubs.predict(predict_request(image, mask)))
        assert code == grpc.StatusCode.INTERNAL and "ZeroDivisionError: boom" in details
        url = server.rest_url + "/v1/models/inpaint:predict"
        status, body = http(url, {"inputs": {"image": image.tolist(), "mask": mask.tolist()}})
        assert status == 500 and "ZeroDivisionError" in json.loads(body)["error"]
    finally:
        model_version.servable = real_servable
    assert stubs.predict(predict_request(image, mask)).tolist() == expected_fill(image, mask).tolist()
    assert 'status="INTERNAL"' in http(server.rest_url + "/metrics")[1].decode()


def test_a_stopped_server_leaves_no_task_behind(onnx_repo, start_server):
    """Background tasks are kept and awaited: an unload still waiting for a request when the server stops is
    cancelled with the rest, and nothing is left pending on the loop."""
    server = start_server(onnx_repo, rest_port=None)
    version = server.call(lambda: server.server.models.acquire("inpaint", None))  # a request that never ends
    shutil.rmtree(onnx_repo / "1")
    wait_for(lambda: server.call(lambda: version.state) == VersionState.UNLOADING, 10, "the version unloading")
    assert server.stop()
    left = sorted(task.get_coro().__qualname__ for task in asyncio.all_tasks(server.loop))
    assert not left, f"tasks left pending after the stop: {left}"


def test_health_updates_still_waiting_at_the_stop_are_cancelled_and_awaited(onnx_repo, start_server):
    """A health update the versions' changes started, still waiting when the server stops (a Watch holding the
    health servicer's lock, say), is kept by the server and cancelled and awaited with its other tasks."""
    server = start_server(onnx_repo, rest_port=None)
    inpaint_server = server.server

    async def waits_forever(service: str, status) -> None:
        await asyncio.Event().wait()

    inpaint_server.health.set = waits_forever
    server.call(inpaint_server._on_versions_changed)

    async def stop_and_look() -> list[str]:
        await inpaint_server.drain_and_stop()
        return sorted(task.get_coro().__qualname__ for task in asyncio.all_tasks()
                      if task is not asyncio.current_task())

    left = server.run(stop_and_look())
    assert not left, f"tasks left pending after the stop: {left}"


def test_precision_int8_serves_each_versions_int8_graph_and_says_why_a_version_without_one_is_not(
        tmp_path, start_server, caplog):
    """--precision int8 runs the model.int8.onnx beside each version's model.onnx (benchmarks/int8.py --install
    writes it, once its quality is within 1 % of float32's); float32 runs model.onnx; auto, the default, the
    int8 graph on a CPU where the version has one, else model.onnx. A version without an int8 graph
    is not served under int8, and the log says how to make one."""
    import logging

    import onnx

    from inpaint.serving.runtime import cuda_device_present

    on_cpu = not cuda_device_present()
    base = tmp_path / "inpaint"
    write_version(base, 1, fill=128)
    onnx.save(fill_model(77), str(base / "1" / "model.int8.onnx"))  # a graph that tells which one ran
    write_version(base, 2, fill=99)  # no int8 graph
    image, mask = images()
    servers = {"float32": start_server(base, precision="float32", version_policy="all"),
               "auto": start_server(base, version_policy="all")}
    for server in servers.values():
        server.wait_until_versions([1, 2])
    ran = {precision: {version: Stubs(server.grpc_target).predict(predict_request(image, mask, version=version))
                       .tolist() for version in (1, 2)}
           for precision, server in servers.items()}
    assert ran["float32"] == {1: expected_fill(image, mask, 128).tolist(), 2: expected_fill(image, mask, 99).tolist()}
    assert ran["auto"] == {1: expected_fill(image, mask, 77 if on_cpu else 128).tolist(),
                           2: expected_fill(image, mask, 99).tolist()}
    int8 = start_server(base, precision="int8")
    assert Stubs(int8.grpc_target).predict(predict_request(image, mask)).tolist() == \
        expected_fill(image, mask, 77).tolist()

    bare = tmp_path / "bare"
    write_version(bare, 1)
    caplog.clear()  # the int8 server above said so of version 2
    with caplog.at_level(logging.WARNING, logger="inpaint.serving.models"):
        server = start_server(bare, wait=False, precision="int8")
        wait_for(lambda: "has no model.int8.onnx" in caplog.text, 30, "the warning about the missing int8 graph")
        manager = server.server.models.managers["inpaint"]
        polls = manager.polls
        wait_for(lambda: manager.polls >= polls + 3, 30, "three more polls of the version folder")
    assert "benchmarks/int8.py" in caplog.text and caplog.text.count("has no model.int8.onnx") == 1
    code, _ = code_of(lambda: Stubs(server.grpc_target).predict(predict_request(image, mask)))
    assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND)


def test_readiness_over_rest_answers_while_slow_small_messages_hold_the_grpc_gate(onnx_repo, start_server):
    """The Deployment's readiness probe is GET /readyz, not gRPC health: gRPC health requests pass the gate the
    small methods share (one message arriving at a time, up to 2 s each), so clients holding it make a 1 s
    health check time out, while /readyz, outside the gate, answers at once."""
    import queue

    from grpc_reflection.v1alpha import reflection_pb2_grpc

    server = start_server(onnx_repo)
    channel = grpc.insecure_channel(server.grpc_target)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    silent = [queue.Queue() for _ in range(8)]  # streams that never send their first request: 2 s each
    holders = [reflection.ServerReflectionInfo(iter(q.get, None), timeout=60) for q in silent]
    holding = ThreadPoolExecutor(len(holders)).map(lambda stream: code_of(lambda: list(stream))[0], holders)
    health = health_pb2_grpc.HealthStub(channel)
    wait_for(lambda: code_of(lambda: health.Check(health_pb2.HealthCheckRequest(service="inpaint"), timeout=1))[0]
             == grpc.StatusCode.DEADLINE_EXCEEDED, 10, "a 1 s gRPC health check stuck behind the gate")
    with urllib.request.urlopen(server.rest_url + "/readyz", timeout=1) as response:  # the probe's 1 s
        assert response.status == 200 and json.loads(response.read())["status"] == "ready"
    for q in silent:
        q.put(None)  # the streams still waiting for the gate end
    list(holding)
