"""The Open Inference Protocol (KServe v2), driven by Triton's own clients, unchanged, and by plain HTTP.

One server (small --max-pixels) serves the whole module; every error test ends with a good request on it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from grpc_helpers import Stubs, images, predict_request
from helpers import ServerThread
from onnx_models import expected_fill, write_version

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

MAX_PIXELS = 64 * 64


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from inpaint.serving.server import ServerConfig

    base = tmp_path_factory.mktemp("v2") / "models" / "inpaint"
    write_version(base, 1)
    config = ServerConfig(model_base_path=base, host="127.0.0.1", port=0, rest_port=0, poll_seconds=0.1,
                          drain_seconds=5.0, max_pixels=MAX_PIXELS)
    with ServerThread(config) as thread:
        thread.wait_until_available()
        yield thread


@pytest.fixture(scope="module")
def grpc_client(server):
    client = tritonclient_grpc.InferenceServerClient(url=server.grpc_target)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http_client(server):
    client = tritonclient_http.InferenceServerClient(url=server.rest_url.removeprefix("http://"))
    yield client
    client.close()


def _inputs(module, image, mask, datatype="UINT8", binary=None):
    inputs = [module.InferInput("image", list(image.shape), datatype),
              module.InferInput("mask", list(mask.shape), datatype)]
    for tensor, array in zip(inputs, (image, mask)):
        if binary is None:
            tensor.set_data_from_numpy(array)
        else:
            tensor.set_data_from_numpy(array, binary_data=binary)
    return inputs


def _error(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def http(url, body=None, headers=None):
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_grpc_health_and_metadata(server, grpc_client):
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert grpc_client.is_model_ready("inpaint") and grpc_client.is_model_ready("inpaint", "1")
    assert not grpc_client.is_model_ready("inpaint", "7") and not grpc_client.is_model_ready("other")
    metadata = grpc_client.get_server_metadata(as_json=True)
    assert metadata["name"] == "inpaint-serve" and metadata["version"]
    assert metadata["extensions"] == ["binary_tensor_data"]
    model = grpc_client.get_model_metadata("inpaint", as_json=True)
    assert model == {
        "name": "inpaint", "versions": ["1"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "image", "datatype": "UINT8", "shape": ["-1", "-1", "-1", "3"]},
                   {"name": "mask", "datatype": "UINT8", "shape": ["-1", "-1", "-1", "1"]}],
        "outputs": [{"name": "inpainted", "datatype": "UINT8", "shape": ["-1", "-1", "-1", "3"]}]}
    assert grpc_client.get_model_metadata("inpaint", "1").versions == ["1"]
    assert _error(lambda: grpc_client.get_model_metadata("other")).status() == "StatusCode.NOT_FOUND"
    assert _error(lambda: grpc_client.get_model_metadata("inpaint", "9")).status() == "StatusCode.NOT_FOUND"

    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.grpc_target) as channel:  # grpcurl can describe it
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService")
        reply = next(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request])))
        assert reply.file_descriptor_response.file_descriptor_proto


def test_http_health_and_metadata(server, http_client):
    assert http_client.is_server_live() and http_client.is_server_ready()
    assert http_client.is_model_ready("inpaint") and http_client.is_model_ready("inpaint", "1")
    assert not http_client.is_model_ready("inpaint", "7") and not http_client.is_model_ready("other")
    metadata = http_client.get_server_metadata()
    assert metadata["name"] == "inpaint-serve" and metadata["version"]
    assert metadata["extensions"] == ["binary_tensor_data"]
    model = http_client.get_model_metadata("inpaint")
    assert model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"][0] == {"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}
    assert model["outputs"] == [{"name": "inpainted", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}]
    assert http_client.get_model_metadata("inpaint", "1")["versions"] == ["1"]
    assert _error(lambda: http_client.get_model_metadata("other")).status() == "404"


def _float_inputs(module, image, mask):
    return _inputs(module, (image / 255.0).astype(np.float32), mask.astype(np.float32), "FP32")


def test_grpc_infer(server, grpc_client):
    image, mask = images(3, 9, 11)
    outputs = [tritonclient_grpc.InferRequestedOutput("inpainted")]
    result = grpc_client.infer("inpaint", _inputs(tritonclient_grpc, image, mask), outputs=outputs,
                               request_id="req-7")
    assert result.as_numpy("inpainted").tolist() == expected_fill(image, mask).tolist()
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("inpaint", "1", "req-7")
    # No outputs named: all of them; a version asked for; FP32 in [0, 1] like TF Serving's float inputs.
    result = grpc_client.infer("inpaint", _float_inputs(tritonclient_grpc, image, mask), model_version="1")
    assert result.as_numpy("inpainted").tolist() == expected_fill(image, mask).tolist()


def test_grpc_typed_contents(server):
    """Inputs in InferTensorContents (uint_contents) instead of raw_input_contents."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    image, mask = images(2, 5, 4)
    request = service_pb2.ModelInferRequest(model_name="inpaint", id="typed")
    for name, array in (("image", image), ("mask", mask)):
        tensor = request.inputs.add(name=name, datatype="UINT8", shape=array.shape)
        tensor.contents.uint_contents.extend(array.ravel().tolist())
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    assert response.id == "typed" and list(response.outputs[0].shape) == [2, 5, 4, 3]
    output = np.frombuffer(response.raw_output_contents[0], np.uint8).reshape(2, 5, 4, 3)
    assert output.tolist() == expected_fill(image, mask).tolist()


def test_http_infer_binary_and_json(server, http_client):
    image, mask = images(2, 7, 6, seed=1)
    expected = expected_fill(image, mask).tolist()
    # Binary both ways (the default: no outputs named, so tritonclient asks for binary_data_output).
    result = http_client.infer("inpaint", _inputs(tritonclient_http, image, mask), request_id="bin")
    assert result.as_numpy("inpainted").tolist() == expected
    assert result.get_response()["id"] == "bin" and result.get_response()["model_version"] == "1"
    # JSON both ways.
    outputs = [tritonclient_http.InferRequestedOutput("inpainted", binary_data=False)]
    result = http_client.infer("inpaint", _inputs(tritonclient_http, image, mask, binary=False), outputs=outputs,
                               model_version="1")
    assert result.as_numpy("inpainted").tolist() == expected
    assert "data" in result.get_output("inpainted")
    # Mixed: image binary, mask JSON, binary output asked for by name; and FP32 inputs.
    inputs = _inputs(tritonclient_http, image, mask)
    inputs[1].set_data_from_numpy(mask, binary_data=False)
    outputs = [tritonclient_http.InferRequestedOutput("inpainted", binary_data=True)]
    assert http_client.infer("inpaint", inputs, outputs=outputs).as_numpy("inpainted").tolist() == expected
    result = http_client.infer("inpaint", _float_inputs(tritonclient_http, image, mask))
    assert result.as_numpy("inpainted").tolist() == expected


def test_large_json_goes_through_the_codec_process(server, http_client):
    """A JSON body and answer over a MiB each: parsed and encoded in the REST API's codec process."""
    image, mask = images(48, 64, 64, seed=3)
    outputs = [tritonclient_http.InferRequestedOutput("inpainted", binary_data=False)]
    result = http_client.infer("inpaint", _inputs(tritonclient_http, image, mask, binary=False), outputs=outputs)
    assert result.as_numpy("inpainted").tolist() == expected_fill(image, mask).tolist()


def test_grpc_bad_requests_get_their_codes(server, grpc_client):
    image, mask = images(1, 8, 8)
    module = tritonclient_grpc

    def code(inputs, model="inpaint", **options):
        error = _error(lambda: grpc_client.infer(model, inputs, **options))
        return error.status().removeprefix("StatusCode."), error.message()

    assert code(_inputs(module, image, mask), model="other")[0] == "NOT_FOUND"
    assert code(_inputs(module, image, mask), model_version="9")[0] == "NOT_FOUND"
    assert code(_inputs(module, image, mask), model_version="v1")[0] == "INVALID_ARGUMENT"
    status, message = code(_inputs(module, image.astype(np.int32), mask.astype(np.int32), "INT32"))
    assert status == "INVALID_ARGUMENT" and "INT32" in message
    assert code(_inputs(module, image, np.repeat(mask, 3, axis=3)))[0] == "INVALID_ARGUMENT"
    assert "missing mask" in code(_inputs(module, image, mask)[:1])[1]
    short = _inputs(module, image, mask)
    short[0].set_shape([1, 8, 9, 3])  # the raw contents are still 1x8x8
    short[1].set_shape([1, 8, 9, 1])
    status, message = code(short)
    assert status == "INVALID_ARGUMENT" and "raw_input_contents" in message and "image" in message
    big_image, big_mask = images(1, 80, 80)
    status, message = code(_inputs(module, big_image, big_mask))
    assert status == "INVALID_ARGUMENT" and "--max-pixels" in message
    huge = _inputs(module, image, mask)
    for tensor, channels in zip(huge, (3, 1)):
        tensor.set_shape([8, 4096, 4096, channels])  # 80 bytes claiming 400 MB: refused before allocating
    assert "--max-pixels" in code(huge)[1]
    unknown = [module.InferRequestedOutput("inpainted_bytes")]
    assert "inpainted_bytes" in code(_inputs(module, image, mask), outputs=unknown)[1]
    out_of_range = _float_inputs(module, image, mask)
    out_of_range[0].set_data_from_numpy(np.full(image.shape, 2.0, np.float32))
    assert code(out_of_range)[0] == "INVALID_ARGUMENT"
    with grpc.insecure_channel(server.grpc_target) as channel:
        for method in ("ModelInfer", "ModelMetadata", "ModelReady"):
            call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            with pytest.raises(grpc.RpcError) as caught:
                call(b"\xff\xff\xff not a message", timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
    result = grpc_client.infer("inpaint", _inputs(module, image, mask))
    assert result.as_numpy("inpainted").tolist() == expected_fill(image, mask).tolist()


def test_http_bad_requests_get_their_codes(server, http_client):
    image, mask = images(1, 8, 8)
    module = tritonclient_http

    def status(inputs, model="inpaint", **options):
        error = _error(lambda: http_client.infer(model, inputs, **options))
        return error.status(), error.message()

    assert status(_inputs(module, image, mask), model="other")[0] == "404"
    assert status(_inputs(module, image, mask), model_version="9")[0] == "404"
    wrong_dtype = status(_inputs(module, image.astype(np.int32), mask.astype(np.int32), "INT32"))
    assert wrong_dtype[0] == "400" and "INT32" in wrong_dtype[1]
    assert status(_inputs(module, image, np.repeat(mask, 3, axis=3)))[0] == "400"
    assert "missing mask" in status(_inputs(module, image, mask)[:1])[1]
    short = _inputs(module, image, mask)
    short[0].set_shape([1, 8, 9, 3])  # binary_data_size is still that of 1x8x8
    short[1].set_shape([1, 8, 9, 1])
    code, message = status(short)
    assert code == "400" and "binary_data_size" in message and "image" in message
    short_json = _inputs(module, image, mask, binary=False)
    short_json[0].set_shape([1, 8, 9, 3])
    short_json[1].set_shape([1, 8, 9, 1])
    assert status(short_json)[0] == "400"
    big_image, big_mask = images(1, 80, 80)
    code, message = status(_inputs(module, big_image, big_mask))
    assert code == "400" and "--max-pixels" in message
    url = server.rest_url + "/v2/models/inpaint/infer"
    assert http(url, b"{not json")[0] == 400
    assert http(url, {"inputs": "nope"})[0] == 400
    assert http(url, b'{"inputs": []}', {"Inference-Header-Content-Length": "999"})[0] == 400
    assert http(url, b'{"inputs": []}', {"Inference-Header-Content-Length": "-1"})[0] == 400
    header = json.dumps({"inputs": [
        {"name": "image", "shape": [1, 2, 2, 3], "datatype": "UINT8", "parameters": {"binary_data_size": 12}},
        {"name": "mask", "shape": [1, 2, 2, 1], "datatype": "UINT8", "parameters": {"binary_data_size": 4}}]})
    code, _, body = http(url, header.encode() + bytes(15), {"Inference-Header-Content-Length": str(len(header))})
    assert code == 400 and "16" in json.loads(body)["error"]  # one byte short
    # A version string that is not a number is a version label (issue 25); this model has none.
    code, message = status(_inputs(module, image, mask), model_version="x1")
    assert code == "400" and "Unrecognized servable version label: 'x1'" in message
    result = http_client.infer("inpaint", _inputs(module, image, mask))
    assert result.as_numpy("inpainted").tolist() == expected_fill(image, mask).tolist()


def test_plain_http(server):
    base = server.rest_url
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/inpaint/ready",
                 "/v2/models/inpaint/versions/1/ready"):
        status, _, body = http(base + path)
        assert (status, body) == (200, b""), path
    assert http(base + "/v2/models/inpaint/versions/3/ready")[0] == 404
    assert http(base + "/v2/models/other/ready")[0] == 404
    status, _, body = http(base + "/v2")
    assert status == 200 and json.loads(body)["extensions"] == ["binary_tensor_data"]
    image, mask = images(2, 3, 4, seed=2)
    request = {"id": "plain", "inputs": [
        {"name": "image", "shape": list(image.shape), "datatype": "UINT8", "data": image.tolist()},  # nested
        {"name": "mask", "shape": list(mask.shape), "datatype": "UINT8", "data": mask.ravel().tolist()}]}
    status, headers, body = http(base + "/v2/models/inpaint/infer", request)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    answer = json.loads(body)
    assert (answer["id"], answer["model_name"], answer["model_version"]) == ("plain", "inpaint", "1")
    [output] = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("inpainted", "UINT8", [2, 3, 4, 3])
    assert output["data"] == expected_fill(image, mask).ravel().tolist()
    # The binary extension by hand: the JSON header, then the tensors; a binary answer.
    request = {"inputs": [
        {"name": "image", "shape": list(image.shape), "datatype": "UINT8",
         "parameters": {"binary_data_size": image.nbytes}},
        {"name": "mask", "shape": list(mask.shape), "datatype": "UINT8", "data": mask.ravel().tolist()}],
        "outputs": [{"name": "inpainted", "parameters": {"binary_data": True}}]}
    header = json.dumps(request).encode()
    status, headers, body = http(base + "/v2/models/inpaint/versions/1/infer", header + image.tobytes(),
                                 {"Inference-Header-Content-Length": str(len(header))})
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    length = int(headers["Inference-Header-Content-Length"])
    [output] = json.loads(body[:length])["outputs"]
    assert output["parameters"] == {"binary_data_size": image.nbytes}
    assert np.frombuffer(body[length:], np.uint8).reshape(image.shape).tolist() == expected_fill(image, mask).tolist()


def test_not_ready_yet(tmp_path, start_server):
    """A server with no model version yet: live, not ready, and UNAVAILABLE (503) for the model."""
    base = tmp_path / "models" / "inpaint"
    base.mkdir(parents=True)
    server = start_server(base, wait=False)
    client = tritonclient_grpc.InferenceServerClient(url=server.grpc_target)
    try:
        assert client.is_server_live() and not client.is_server_ready() and not client.is_model_ready("inpaint")
        image, mask = images(1, 4, 4)
        error = _error(lambda: client.infer("inpaint", _inputs(tritonclient_grpc, image, mask)))
        assert error.status() == "StatusCode.UNAVAILABLE"
    finally:
        client.close()
    assert http(server.rest_url + "/v2/health/live")[0] == 200
    assert http(server.rest_url + "/v2/health/ready")[0] == 503
    assert http(server.rest_url + "/v2/models/inpaint/ready")[0] == 503  # known, no version loaded yet
    assert http(server.rest_url + "/v2/models/inpaint")[0] == 503


def test_tf_serving_and_v2_together_with_protocol_metrics(server, grpc_client, http_client):
    stubs = Stubs(server.grpc_target)

    def tf_serving(seed):
        image, mask = images(2, 6, 5, seed=seed)
        return stubs.predict(predict_request(image, mask)).tolist() == expected_fill(image, mask).tolist()

    def v2(seed):
        image, mask = images(2, 6, 5, seed=seed)
        result = grpc_client.infer("inpaint", _inputs(tritonclient_grpc, image, mask))
        return result.as_numpy("inpainted").tolist() == expected_fill(image, mask).tolist()

    image, mask = images(1, 4, 4)
    assert _error(lambda: grpc_client.infer("inpaint", _inputs(tritonclient_grpc, image, mask)[:1])).status() == \
        "StatusCode.INVALID_ARGUMENT"
    try:
        with ThreadPoolExecutor(4) as pool:
            done = [pool.submit(function, seed) for seed in range(6) for function in (tf_serving, v2)]
            image, mask = images(1, 5, 5)
            result = http_client.infer("inpaint", _inputs(tritonclient_http, image, mask))  # meanwhile, REST v2
            assert result.as_numpy("inpainted").tolist() == expected_fill(image, mask).tolist()
            assert all(future.result(timeout=30) for future in done)
    finally:
        stubs.close()
    text = http(server.rest_url + "/metrics")[2].decode()
    counts = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("inpaint_request_count_total{")}
    ok = 'inpaint_request_count_total{{api="predict",model_name="inpaint",protocol="{}",status="OK",version="1"}}'
    assert counts[ok.format("tfserving")] >= 6 and counts[ok.format("v2")] >= 7
    assert 'api="predict",model_name="inpaint",protocol="v2",status="INVALID_ARGUMENT",version=""' in text
    assert 'inpaint_request_latency_count{api="predict",model_name="inpaint",protocol="v2"}' in text
    assert 'inpaint_request_latency_count{api="predict",model_name="inpaint",protocol="tfserving"}' in text
