"""The export as a Triton model repository, and KServe's Triton runtime serving it.

The repository is written from the shipped model by ``inpaint-export --triton-repository``; its
config is parsed with Triton's own ``ModelConfig`` protobuf (tritonclient's copy of
model_config.proto), its tensors compared with the ONNX graph as ``onnx`` reads it, and its layout
checked against Triton's documented rules (docs/user_guide/model_repository.md). No Triton server
runs here: none can be installed on these machines. Seconds: no TensorFlow is loaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from onnx import TensorProto

from onnx_models import fill_model, write_version
from test_deploy import KUBERNETES_VERSION, by_kind, needs_kubectl, render

from inpaint.export.cli import main as export_main
from inpaint.export.onnx_export import ExportError
from inpaint.export.triton import TritonOptions, write_triton_repository

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient is not installed: see `make test-deps`")

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "pretrained" / "inpaint"
# ONNX element type -> Triton DataType, for the types a Triton ONNX model may use.
ONNX_TO_TRITON = {TensorProto.UINT8: "TYPE_UINT8", TensorProto.FLOAT: "TYPE_FP32", TensorProto.INT64: "TYPE_INT64",
                  TensorProto.FLOAT16: "TYPE_FP16", TensorProto.BOOL: "TYPE_BOOL", TensorProto.INT32: "TYPE_INT32"}
# KServe's ClusterServingRuntime kserve-tritonserver (kserve/kserve config/runtimes/kserve-tritonserver.yaml):
# the model formats it serves, its protocols, and where its tritonserver reads the repository.
KSERVE_TRITON_FORMATS = {("tensorrt", "8"), ("tensorflow", "1"), ("tensorflow", "2"), ("onnx", "1"),
                         ("pytorch", "1"), ("triton", "2")}
KSERVE_TRITON_PROTOCOLS = {"v2", "grpc-v2"}
KSERVE_TRITON_ARGS = ("tritonserver", "--model-store=/mnt/models", "--grpc-port=9000", "--http-port=8080",
                      "--allow-grpc=true", "--allow-http=true")
KSERVE_MODEL_FIELDS = ("modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri")


def export(*args: str) -> str:
    result = CliRunner().invoke(export_main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def parse_config(model_folder: Path):
    """config.pbtxt as Triton's ModelConfig; text_format refuses unknown fields and bad values."""
    return text_format.Parse((model_folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def layout_problems(repository: Path) -> list[str]:
    """What in ``repository`` breaks Triton's documented layout for ONNX models (none: an empty list)."""
    problems = []
    for model in sorted(p for p in repository.iterdir()):
        if not model.is_dir() or model.name.startswith("."):
            problems.append(f"{model.name}: not a model folder")
            continue
        if not (model / "config.pbtxt").is_file():
            problems.append(f"{model.name}: no config.pbtxt")
            continue
        config = parse_config(model)
        if config.name != model.name:
            problems.append(f"{model.name}: config name {config.name!r} is not its folder's")
        versions = {int(p.name) for p in model.iterdir()
                    if p.is_dir() and p.name.isdigit() and not (len(p.name) > 1 and p.name.startswith("0"))}
        if not versions:
            problems.append(f"{model.name}: no numeric version folder")
        for version in versions:
            files = sorted(p.name for p in (model / str(version)).iterdir())
            filename = config.default_model_filename or "model.onnx"
            if files != [filename] or not (model / str(version) / filename).is_file():
                problems.append(f"{model.name}/{version}: holds {files}, expected [{filename!r}]")
        policy = config.version_policy
        if policy.HasField("specific") and not set(policy.specific.versions) <= versions:
            problems.append(f"{model.name}: policy names versions {list(policy.specific.versions)}, "
                            f"the folders are {sorted(versions)}")
        hidden = sorted(p.name for p in model.iterdir() if p.name.startswith("."))
        if hidden:
            problems.append(f"{model.name}: left over {hidden}")
    return problems


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> tuple[Path, str]:
    """The shipped model's latest version written as a Triton repository, and the command's output."""
    target = tmp_path_factory.mktemp("triton") / "repository"
    return target, export(SHIPPED, "--triton-repository", target)


def test_the_repository_is_written_from_the_shipped_model(repository):
    target, output = repository
    model = target / "inpaint" / "1" / "model.onnx"
    assert f"wrote {target / 'inpaint' / 'config.pbtxt'}" in output
    assert sha256(model) == sha256(SHIPPED / "1" / "model.onnx")
    assert layout_problems(target) == []
    assert sorted(p.name for p in target.iterdir()) == ["inpaint"]


def test_the_config_parses_with_tritons_own_protobuf(repository):
    config = parse_config(repository[0] / "inpaint")
    assert config.name == "inpaint"
    assert (config.platform, config.backend) == ("onnxruntime_onnx", "onnxruntime")
    assert config.max_batch_size == 8
    assert list(config.version_policy.specific.versions) == [1]
    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) == [4, 8]
    assert batching.max_queue_delay_microseconds == 2000
    kinds = {group.name: (model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind), group.count, list(group.gpus))
             for group in config.instance_group}
    assert kinds == {"inpaint_cpu": ("KIND_CPU", 1, []), "inpaint_gpu": ("KIND_GPU", 1, [])}
    # What Triton's own validation requires of a batching model.
    assert all(0 < size <= config.max_batch_size for size in batching.preferred_batch_size)
    assert text_format.Parse(text_format.MessageToString(config), model_config_pb2.ModelConfig()) == config


def test_the_config_refuses_what_triton_would_not_read():
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "inpaint"\nmax_batch_sizes: 8\n', model_config_pb2.ModelConfig())
    with pytest.raises(text_format.ParseError):
        text_format.Parse('input [ { name: "image" data_type: TYPE_UINT9 } ]', model_config_pb2.ModelConfig())


def test_inputs_and_outputs_are_the_onnx_graphs(repository):
    config = parse_config(repository[0] / "inpaint")
    graph = onnx.load(str(SHIPPED / "1" / "model.onnx"), load_external_data=False).graph

    def from_graph(values):
        tensors = {}
        for value in values:
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
            assert dims[0] == -1, f"{value.name}: the graph's batch dimension must be dynamic"
            tensors[value.name] = (ONNX_TO_TRITON[value.type.tensor_type.elem_type], dims[1:])
        return tensors

    def from_config(tensors):
        return {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in tensors}

    assert from_config(config.input) == from_graph(graph.input)
    assert from_config(config.output) == from_graph(graph.output)
    assert from_config(config.input) == {"image": ("TYPE_UINT8", [-1, -1, 3]), "mask": ("TYPE_UINT8", [-1, -1, 1])}
    assert from_config(config.output) == {"inpainted": ("TYPE_UINT8", [-1, -1, 3])}


def test_cpu_only_and_gpu_only_repositories(tmp_path):
    export(SHIPPED, "--triton-repository", tmp_path / "cpu", "--triton-gpu-instances", "0")
    export(SHIPPED, "--triton-repository", tmp_path / "gpu", "--triton-cpu-instances", "0",
           "--triton-gpu-instances", "2", "--triton-max-batch-size", "1", "--triton-model-name", "inpaint-gpu")
    cpu, gpu = parse_config(tmp_path / "cpu" / "inpaint"), parse_config(tmp_path / "gpu" / "inpaint-gpu")
    kind = model_config_pb2.ModelInstanceGroup.Kind.Name
    assert [(kind(g.kind), g.count) for g in cpu.instance_group] == [("KIND_CPU", 1)]
    assert [(kind(g.kind), g.count) for g in gpu.instance_group] == [("KIND_GPU", 2)]
    assert gpu.name == "inpaint-gpu" and list(gpu.dynamic_batching.preferred_batch_size) == [1]
    assert layout_problems(tmp_path / "cpu") == layout_problems(tmp_path / "gpu") == []


@pytest.mark.parametrize("args, message", [
    (["--triton-cpu-instances", "0", "--triton-gpu-instances", "0"], "at least one instance"),
    (["--triton-model-name", "../escape"], "must be letters"),
    (["--triton-model-name", ".hidden"], "must be letters"),
])
def test_bad_options_are_refused_before_anything_is_written(tmp_path, args, message):
    result = CliRunner().invoke(export_main, [str(SHIPPED), "--triton-repository", str(tmp_path / "r"), *args])
    assert result.exit_code == 1 and message in result.output
    assert not (tmp_path / "r").exists()


def test_a_new_version_joins_the_repository_and_the_config_follows_it(tmp_path):
    base = tmp_path / "base"
    (base / "1").mkdir(parents=True)
    shutil.copyfile(SHIPPED / "1" / "model.onnx", base / "1" / "model.onnx")
    write_version(base, 2)  # a small model with the same signature
    target = tmp_path / "repository"
    export(base, "--version", "1", "--triton-repository", target)
    export(base, "--triton-repository", target)  # the latest: 2
    model = target / "inpaint"
    assert sorted(p.name for p in model.iterdir()) == ["1", "2", "config.pbtxt"]
    assert list(parse_config(model).version_policy.specific.versions) == [2]
    assert sha256(model / "2" / "model.onnx") == sha256(base / "2" / "model.onnx")
    assert layout_problems(target) == []
    export(base, "--version", "1", "--triton-repository", target)  # a roll-back points the config back
    assert list(parse_config(model).version_policy.specific.versions) == [1]
    write_version(base, 1, fill_model(7))  # a re-exported version 1 replaces its file in the repository
    report = write_triton_repository(base / "1", target)
    assert report.linked and os.path.samefile(report.model_path, base / "1" / "model.onnx")
    assert layout_problems(target) == []


def test_across_file_systems_the_model_is_copied(tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    report = write_triton_repository(SHIPPED / "1", tmp_path)
    assert not report.linked and report.model_path.stat().st_nlink == 1
    assert sha256(report.model_path) == sha256(SHIPPED / "1" / "model.onnx")
    assert oct(report.model_path.stat().st_mode & 0o777) == "0o644"
    assert oct((tmp_path / "inpaint").stat().st_mode & 0o777) == "0o755", "Triton may run as another user"
    assert layout_problems(tmp_path) == []


def test_models_triton_cannot_batch_or_that_break_the_contract_are_refused(tmp_path):
    fixed = fill_model()
    for value in [*fixed.graph.input, *fixed.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    write_version(tmp_path / "fixed", 1, fixed)
    with pytest.raises(ExportError, match="dynamic first dimension"):
        write_triton_repository(tmp_path / "fixed" / "1", tmp_path / "r")
    floats = fill_model()
    floats.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    write_version(tmp_path / "floats", 1, floats)
    with pytest.raises(ExportError, match="inpainted"):
        write_triton_repository(tmp_path / "floats" / "1", tmp_path / "r")
    (tmp_path / "none" / "1").mkdir(parents=True)
    with pytest.raises(ExportError, match="has no model.onnx"):
        write_triton_repository(tmp_path / "none" / "1", tmp_path / "r")
    assert not (tmp_path / "r" / "inpaint").exists()


def test_a_failed_write_leaves_no_model_folder_behind(tmp_path, monkeypatch):
    def broken(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "link", broken)
    monkeypatch.setattr(shutil, "copyfile", broken)
    with pytest.raises(OSError, match="No space"):
        write_triton_repository(SHIPPED / "1", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_options_check_themselves():
    assert TritonOptions(max_batch_size=32).preferred_batch_sizes == [16, 32]
    with pytest.raises(ValueError, match="max_batch_size"):
        TritonOptions(max_batch_size=0)


# -- KServe ----------------------------------------------------------------------------------------------

@needs_kubectl
def test_the_kserve_triton_inference_service_renders_and_validates(tmp_path):
    import kubernetes_validate

    docs = render("kserve/triton")
    assert [doc["kind"] for doc in docs] == ["InferenceService"]
    service = by_kind(docs, "InferenceService")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == "kserve-tritonserver"
    assert (model["modelFormat"]["name"], model["modelFormat"]["version"]) in KSERVE_TRITON_FORMATS
    assert model["protocolVersion"] in KSERVE_TRITON_PROTOCOLS
    pvc = by_kind(render("overlays/onnx-cpu"), "PersistentVolumeClaim")["metadata"]["name"]
    assert model["storageUri"] == f"pvc://{pvc}/triton"
    # KServe appends the predictor's args to its runtime's: Triton flags the runtime does not set already.
    runtime_flags = {arg.split("=")[0] for arg in KSERVE_TRITON_ARGS}
    assert all(arg.startswith("--") and arg.split("=")[0] not in runtime_flags for arg in model["args"])
    # KServe's CRDs are not in the offline schemas: the model is a core/v1 Container plus KServe's fields,
    # and the predictor's other fields are a PodSpec's; each is validated as what it is.
    container = {k: v for k, v in model.items() if k not in KSERVE_MODEL_FIELDS}
    container["name"] = "kserve-container"
    pod_fields = {k: v for k, v in predictor.items() if k != "model"}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
           "spec": {**pod_fields, "containers": [container]}}
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    # The config written by default has a KIND_GPU group, which Triton refuses to load without a GPU.
    assert int(model["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert any(t["key"] == "nvidia.com/gpu" for t in predictor["tolerations"])
    # The repository the storageUri names has the layout Triton needs at --model-store.
    write_triton_repository(SHIPPED / "1", tmp_path / model["storageUri"].rsplit("/", 1)[1])
    assert layout_problems(tmp_path / "triton") == []
