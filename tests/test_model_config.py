"""Several models from TF Serving's model config file, version labels, and config changes while traffic flows
(issue 25): ``--model_config_file``, its poll, ``HandleReloadConfigRequest``, and the official stubs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from grpc_helpers import images
from helpers import free_port, wait_for, wait_serving
from onnx_models import expected_fill, write_version

from inpaint.serving.errors import InvalidConfig
from inpaint.serving.model_config import entries_from_proto, parse_config_text, read_config_file

FILLS = {("a", 1): 100, ("a", 2): 200, ("b", 1): 50, ("c", 1): 30}  # each version fills holes with its own value


def write_repos(root: Path) -> dict[str, Path]:
    """Models a (versions 1 and 2), b and c (version 1), whose answers tell which version ran."""
    for (name, version), fill in FILLS.items():
        write_version(root / name, version, fill=fill)
    return {name: root / name for name in ("a", "b", "c")}


def config_text(models: dict[str, Path], names=("a", "b"), **labels: int) -> str:
    """A ModelServerConfig as one writes it for tensorflow_model_server: a with both versions and the labels
    stable=1, canary=2 (or as ``labels`` says)."""
    labels = {"stable": 1, "canary": 2, **labels}
    entries = []
    for name in names:
        policy = "model_version_policy { specific { versions: 1 versions: 2 } }" if name == "a" else ""
        labelled = " ".join(f'version_labels {{ key: "{label}" value: {version} }}'
                            for label, version in labels.items()) if name == "a" else ""
        entries.append(f'config {{ name: "{name}" base_path: "{models[name]}" model_platform: "tensorflow" '
                       f'{policy} {labelled} }}')
    return "model_config_list {\n  " + "\n  ".join(entries) + "\n}\n"


def write_atomically(path: Path, text: str) -> None:
    staging = path.with_name("." + path.name + ".tmp")
    staging.write_text(text)
    os.replace(staging, path)


# -- the official TF Serving stubs ---------------------------------------------------------------------

def official_request(name: str, version: int | None = None, label: str | None = None, seed: int = 0):
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    def tensor(array):
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_UINT8, tensor_content=array.tobytes(),
                                      tensor_shape=tensor_shape_pb2.TensorShapeProto(
                                          dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in array.shape]))

    image, mask = images(1, 8, 8, seed=seed)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs["image"].CopyFrom(tensor(image))
    request.inputs["mask"].CopyFrom(tensor(mask))
    return request, image, mask


class Official:
    """PredictionService and ModelService stubs from tensorflow-serving-api."""

    def __init__(self, target: str):
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.channel = grpc.insecure_channel(target)
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def served(self, name: str, version: int | None = None, label: str | None = None) -> tuple[int, int]:
        """``(version, fill value)`` of the version that answered; AssertionError if a known pixel changed."""
        request, image, mask = official_request(name, version, label)
        response = self.prediction.Predict(request, timeout=10)
        output = np.frombuffer(response.outputs["inpainted"].tensor_content, np.uint8).reshape(image.shape)
        fill = int(output[mask[..., 0] > 0][0, 0])
        assert output.tolist() == expected_fill(image, mask, fill).tolist()
        assert response.model_spec.name == name
        return response.model_spec.version.value, fill

    def reload(self, text: str):
        from google.protobuf import text_format
        from tensorflow_serving.apis import model_management_pb2
        from tensorflow_serving.config import model_server_config_pb2

        request = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(text, request.config)
        assert isinstance(request.config, model_server_config_pb2.ModelServerConfig)
        return self.model.HandleReloadConfigRequest(request, timeout=30)


def rpc_error(function) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        function()
    return caught.value.code(), caught.value.details()


def rest(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def rest_predict_body(seed: int = 0) -> tuple[dict, np.ndarray, np.ndarray]:
    image, mask = images(1, 8, 8, seed=seed)
    return {"inputs": {"image": image.tolist(), "mask": mask.tolist()}}, image, mask


def metrics(rest_url: str) -> str:
    with urllib.request.urlopen(rest_url + "/metrics", timeout=10) as response:
        return response.read().decode()


class Traffic:
    """Clients predicting throughout (by label on a, by name on b), every outcome recorded."""

    def __init__(self, stubs: Official, calls: list[tuple[str, int | None, str | None]]):
        self.stubs, self.calls = stubs, calls
        self.results: list[tuple[str, str | None, object]] = []  # (model, label, (version, fill) or the error)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(call,), daemon=True) for call in calls]

    def _run(self, call) -> None:
        name, version, label = call
        while not self.stop.is_set():
            try:
                outcome = self.stubs.served(name, version, label)
            except (grpc.RpcError, AssertionError) as error:
                outcome = error
            self.results.append((name, label, outcome))

    def __enter__(self) -> "Traffic":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def failures(self) -> list:
        return [result for result in self.results if isinstance(result[2], Exception)]

    def count(self) -> int:
        return len(self.results)


# -- a real inpaint-serve process ------------------------------------------------------------------------

def serve(config_file: Path, port: int, rest_port: int, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "inpaint.serving.cli", "--model_config_file", str(config_file),
               "--model_config_file_poll_wait_seconds", "1", "--file-system-poll-wait-seconds", "0.2",
               "--host", "127.0.0.1", "--port", str(port), "--rest-port", str(rest_port), *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_models_by_name_version_and_label_relabelled_added_and_removed_under_traffic(tmp_path):
    models = write_repos(tmp_path / "models")
    config_file = tmp_path / "models.config"
    config_file.write_text(config_text(models))
    port, rest_port = free_port(), free_port()
    process = serve(config_file, port, rest_port)
    try:
        target, rest_url = f"127.0.0.1:{port}", f"http://127.0.0.1:{rest_port}"
        wait_serving(target, process)
        stubs = Official(target)
        # Each model by name (the latest of its policy), by version and by label.
        assert stubs.served("a") == (2, 200) and stubs.served("b") == (1, 50)
        assert stubs.served("a", version=1) == (1, 100) and stubs.served("a", version=2) == (2, 200)
        assert stubs.served("a", label="stable") == (1, 100) and stubs.served("a", label="canary") == (2, 200)
        body, image, mask = rest_predict_body()
        code, answer = rest(f"{rest_url}/v1/models/a/labels/stable:predict", body)
        assert code == 200 and answer["outputs"] == expected_fill(image, mask, 100).tolist()
        code, answer = rest(f"{rest_url}/v1/models/a/labels/canary")
        assert code == 200 and [v["version"] for v in answer["model_version_status"]] == ["2"]

        with Traffic(stubs, [("a", None, "canary"), ("a", None, "stable"), ("b", None, None)]) as traffic:
            # Relabel canary in the file: the switch comes with the next poll (every second).
            wait_for(lambda: traffic.count() >= 30, 30, "traffic on both models")
            write_atomically(config_file, config_text(models, canary=1))
            written = time.monotonic()
            wait_for(lambda: stubs.served("a", label="canary") == (1, 100), 10, "canary to point at version 1")
            switched_after = time.monotonic() - written
            # HandleReloadConfigRequest adds model c ...
            stubs.reload(config_text(models, names=("a", "b", "c"), canary=1))
            wait_for(lambda: _served_or_none(stubs, "c") == (1, 30), 30, "model c to serve")
            seen = traffic.count()
            wait_for(lambda: traffic.count() >= seen + 30, 30, "traffic after model c was added")
        assert switched_after < 1 + 3, f"the relabel took {switched_after:.1f} s for a 1 s poll"
        assert traffic.failures() == [], traffic.failures()[:3]
        by_label = {label: {outcome for model, lab, outcome in traffic.results if lab == label}
                    for label in ("canary", "stable")}
        assert by_label["canary"] == {(2, 200), (1, 100)}  # before and after the relabel, nothing else
        assert by_label["stable"] == {(1, 100)}

        # ... and removes model b, while a's traffic goes on unharmed.
        with Traffic(stubs, [("a", None, "canary"), ("c", None, None)]) as traffic:
            wait_for(lambda: traffic.count() >= 20, 30, "traffic on a and c")
            stubs.reload(config_text(models, names=("a", "c"), canary=1))
            code, details = rpc_error(lambda: stubs.served("b"))
            assert code == grpc.StatusCode.NOT_FOUND and "'b' is not served" in details
            seen = traffic.count()
            wait_for(lambda: traffic.count() >= seen + 20, 30, "traffic after model b was removed")
        assert traffic.failures() == [], traffic.failures()[:3]
        page = metrics(rest_url)
        assert 'model_name="a"' in page and 'model_name="c"' in page and 'model_name="b"' not in page
        # The file, unchanged since, does not undo the RPC's config at its next polls.
        polls = process_polls_later(stubs)
        assert polls == "c still served"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    output = process.stdout.read()
    assert "model config applied" in output and process.returncode == 0, output[-3000:]


def _served_or_none(stubs: Official, name: str):
    try:
        return stubs.served(name)
    except grpc.RpcError:
        return None


def process_polls_later(stubs: Official) -> str:
    """Model c, which only the RPC's config has, still serves after several polls of the unchanged file."""
    deadline = time.monotonic() + 2.5  # 2.5 poll intervals of the file
    while time.monotonic() < deadline:
        if _served_or_none(stubs, "c") != (1, 30):
            return "c gone"
    return "c still served"


# -- statuses and messages, in process ------------------------------------------------------------------

@pytest.fixture
def labelled(tmp_path, start_server):
    models = write_repos(tmp_path / "models")
    config_file = tmp_path / "models.config"
    config_file.write_text(config_text(models))
    server = start_server(None, model_config_file=config_file, config_poll_seconds=0.2)
    wait_for(lambda: server.call(server.server.models.is_available), 30, "both models AVAILABLE")
    return server, models, config_file


def test_unknown_label_and_label_on_an_unavailable_version_get_their_statuses(labelled):
    server, models, _ = labelled
    stubs = Official(server.grpc_target)
    code, details = rpc_error(lambda: stubs.served("a", label="nope"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Unrecognized servable version label: 'nope'" in details
    assert "'canary'" in details and "'stable'" in details  # the labels the model has
    body, _, _ = rest_predict_body()
    code, answer = rest(f"{server.rest_url}/v1/models/a/labels/nope:predict", body)
    assert code == 400 and "Unrecognized servable version label" in answer["error"]
    # A label on a version that is not available: refused, with the model and version named; nothing changes.
    code, details = rpc_error(lambda: stubs.reload(config_text(models, canary=3)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "version 3 of model 'a', which is not currently available for inference" in details
    assert "--allow_version_labels_for_unavailable_models" in details
    assert stubs.served("a", label="canary") == (2, 200)
    # A client's label is never state: a 100 KB one is quoted short, and no metrics series holds it.
    code, details = rpc_error(lambda: stubs.served("a", label="x" * 100_000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "(100000 characters)" in details and len(details) < 400
    code, answer = rest(f"{server.rest_url}/v1/models/a/labels/{'y' * 4000}:predict", body)  # aiohttp's URL cap: 8 KB
    assert code == 400 and "(4000 characters)" in answer["error"] and len(answer["error"]) < 400
    page = metrics(server.rest_url)
    assert "xxxxxxxx" not in page and "yyyyyyyy" not in page and len(page) < 100_000
    # The Open Inference Protocol's version strings take labels too.
    v2_body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": [7] * 12},
                          {"name": "mask", "datatype": "UINT8", "shape": [1, 2, 2, 1], "data": [1, 0, 0, 0]}]}
    code, answer = rest(f"{server.rest_url}/v2/models/a/versions/stable/infer", v2_body)
    assert code == 200 and answer["model_version"] == "1" and answer["outputs"][0]["data"][:3] == [100] * 3


def test_allow_flag_lets_a_new_label_point_at_a_version_still_to_come(tmp_path, start_server):
    models = write_repos(tmp_path / "models")
    config_file = tmp_path / "models.config"
    config_file.write_text(config_text(models))
    server = start_server(None, model_config_file=config_file, allow_unavailable_labels=True)
    wait_for(lambda: server.call(server.server.models.is_available), 30, "both models AVAILABLE")
    stubs = Official(server.grpc_target)
    # A new label on version 3 (not on disk yet) is taken; a request by it is NOT_FOUND, naming it.
    stubs.reload(config_text(models, next=3))
    code, details = rpc_error(lambda: stubs.served("a", label="next"))
    assert code == grpc.StatusCode.NOT_FOUND and "label 'next'" in details and "version 3" in details
    # Moving a label that exists to a version that is not available is refused even with the flag, as in TF
    # Serving.
    code, details = rpc_error(lambda: stubs.reload(config_text(models, canary=3)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "version 3 of model 'a'" in details


def test_broken_configs_are_refused_and_never_take_down_the_models_served(labelled):
    server, models, config_file = labelled
    stubs = Official(server.grpc_target)
    missing = models["a"].parent / "nowhere"
    bad_configs = {
        'model_config_list { config { name: "a" base_path: ': "not a ModelServerConfig in text format",
        'model_config_list { config { name: "a" } }': "model 'a' has no base_path",
        f'model_config_list {{ config {{ name: "a" base_path: "{missing}" }} }}': f"base_path {missing} is not "
                                                                                   "a directory",
        'model_config_list { config { name: "a" base_path: "models/a" } }': "to have an absolute path",
        config_text(models, names=("a", "a")): "Illegal to list model 'a' multiple times",
    }
    for text, problem in bad_configs.items():
        if "not a ModelServerConfig" in problem:
            continue  # a syntax error cannot travel in a ReloadConfigRequest: it is the file's alone
        code, details = rpc_error(lambda: stubs.reload(text))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and problem in details, (text, details)
    assert stubs.served("a", label="canary") == (2, 200) and stubs.served("b") == (1, 50)
    # The file polled: each broken version is read, refused, and the models served go on.
    for text, problem in bad_configs.items():
        write_atomically(config_file, text)
        wait_for(lambda: server.call(lambda: server.server._config_text) == text, 10, "the poll to read the file")
        assert stubs.served("a", label="canary") == (2, 200) and stubs.served("b") == (1, 50)
    # A good file after them is applied: the poller survived them all.
    write_atomically(config_file, config_text(models, canary=1))
    wait_for(lambda: stubs.served("a", label="canary") == (1, 100), 10, "the good file to be applied")
    with pytest.raises(InvalidConfig, match="not a ModelServerConfig in text format"):
        entries_from_proto(parse_config_text('model_config_list { config { name: "a" base_path: ', "x.config"))


def test_a_config_file_gone_or_not_utf8_is_logged_once_and_the_poll_goes_on(labelled, caplog):
    """A file that cannot be read (removed, or bytes that are not UTF-8) is logged once per problem, not at
    every poll, and never stops the poll: the next good file is applied, and the log says so readably."""
    server, models, config_file = labelled
    stubs = Official(server.grpc_target)

    def warned() -> list[str]:
        return [record.getMessage() for record in caplog.records if "cannot read model config file" in
                record.getMessage()]

    with caplog.at_level(logging.INFO):
        config_file.unlink()
        wait_for(lambda: len(warned()) == 1, 10, "the missing file to be logged")
        config_file.write_bytes(b"\xff\xfe model_config_list {}")
        wait_for(lambda: len(warned()) == 2, 10, "the file that is not UTF-8 to be logged")
        time.sleep(1.0)  # five more polls of each: nothing more logged
        assert len(warned()) == 2 and "No such file" in warned()[0] and "utf-8" in warned()[1], warned()
        assert stubs.served("a", label="canary") == (2, 200) and stubs.served("b") == (1, 50)
        write_atomically(config_file, config_text(models, canary=1))
        wait_for(lambda: stubs.served("a", label="canary") == (1, 100), 10, "the good file to be applied")
    assert "can be read again" in caplog.text
    assert f"a from {models['a']} (specific:1,2; labels canary=1, stable=1)" in caplog.text


def test_cli_refuses_a_broken_config_file_or_both_model_sources_in_one_line(tmp_path):
    bad = tmp_path / "bad.config"
    bad.write_text('model_config_list { config { name: "a" base_path: "/nowhere/at/all" } }\n')
    command = [sys.executable, "-m", "inpaint.serving.cli", "--host", "127.0.0.1", "--port", "0", "--rest-port", "-1"]
    result = subprocess.run([*command, "--model_config_file", str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "Error: model 'a': base_path /nowhere/at/all is not a directory"
    result = subprocess.run([*command, "--model_config_file", str(bad), "--model-base-path", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        "Error: give --model-base-path (one model) or --model-config-file (several), not both"]


def test_config_files_parse_as_tf_serving_reads_them(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    text = (f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path / "m"}" model_platform: "tensorflow" '
            'model_version_policy { latest { num_versions: 2 } } version_labels { key: "stable" value: 1 } '
            'logging_config { sampling_config { sampling_rate: 0.5 } } } '
            f'config {{ name: "n" base_path: "{tmp_path / "m"}" model_version_policy {{ all {{}} }} }} }}')
    path = tmp_path / "models.config"
    path.write_text(text)
    first, second = read_config_file(path)
    assert (first.name, first.policy.kind, first.policy.count, first.labels) == ("m", "latest", 2, {"stable": 1})
    assert (second.name, second.policy.kind, second.labels) == ("n", "all", {})
    # The same text is TF Serving's own ModelServerConfig, field for field.
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    theirs = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    assert entries_from_proto(parse_config_text(text_format.MessageToString(theirs), "theirs")) == [first, second]
    for bad, problem in {'version_labels { key: "7" value: 1 }': "must be a name",
                         'model_platform: "pytorch"': "unsupported platform 'pytorch'"}.items():
        with pytest.raises(InvalidConfig, match=problem):
            entries_from_proto(parse_config_text(
                f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path / "m"}" {bad} }} }}', "x"))


# -- the client, its CLI and the load tester by label ----------------------------------------------------

def test_client_cli_and_loadtest_ask_by_label_and_split_traffic(labelled, tmp_path):
    from click.testing import CliRunner

    from inpaint.client import InpaintClient, InvalidInput as ClientInvalidInput
    from inpaint.client.cli import main as client_main

    server, _, _ = labelled
    image, mask = images(1, 8, 8, seed=3)
    for label, fill in (("stable", 100), ("canary", 200)):
        with InpaintClient(server.grpc_target, model="a", label=label, timeout=10) as client:
            assert client.inpaint(image[0], mask[0]).tolist() == expected_fill(image, mask, fill)[0].tolist()
            assert [entry["version"] for entry in client.status()] == [fill // 100]
    with InpaintClient(server.grpc_target, model="a", label="nope", timeout=10) as client:
        with pytest.raises(ClientInvalidInput, match="Unrecognized servable version label"):
            client.inpaint(image[0], mask[0])
    with pytest.raises(ValueError, match="not both"):
        InpaintClient(server.grpc_target, version=1, label="stable")

    runner = CliRunner()
    result = runner.invoke(client_main, ["--target", server.grpc_target, "--model", "a", "--label", "canary",
                                         "status"])
    assert result.exit_code == 0 and result.output.strip() == "version 2: AVAILABLE", result.output
    report = tmp_path / "load"
    result = runner.invoke(client_main, ["--target", server.grpc_target, "--model", "a", "loadtest",
                                         "--split-labels", "stable,canary", "--concurrency", "2", "--duration",
                                         "1", "--warmup", "0", "--image-size", "16", "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "| 2 clients, label canary |" in result.output and "| 2 clients, label stable |" in result.output
    [level] = json.loads((report / "load.json").read_text())["levels"]
    assert set(level["by_label"]) == {"stable", "canary"}
    for part in level["by_label"].values():
        assert part["ok"] > 0 and part["errors"] == {} and part["latency_ms"]["p50"] > 0
    assert sum(part["ok"] for part in level["by_label"].values()) == level["ok"]
    result = runner.invoke(client_main, ["--target", server.grpc_target, "--label", "x", "loadtest",
                                         "--split-labels", "stable,canary"])
    assert result.exit_code == 2 and "without --version or --label" in result.output
