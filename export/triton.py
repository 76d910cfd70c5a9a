"""A Triton model repository from a version's ``model.onnx``, for Triton's ONNX Runtime backend.

Triton's layout (its model_repository.md): ``DIR/<model-name>/config.pbtxt`` and
``DIR/<model-name>/<version>/model.onnx``, where ``<version>`` is a number
without leading zeros (other folder names are ignored) and the config's
``name`` is the folder's. The config is Triton's ``ModelConfig`` in protobuf
text format, its tensors read from the ONNX graph itself: names, dtypes, and
every dynamic dimension as -1, the batch dimension dropped because
``max_batch_size`` > 0 (Triton's rule for a batching model).

Written so a Triton polling the repository never loads half of it: a new model
or version folder is filled under a hidden name (Triton ignores version
folders that are not numbers) and renamed into place; the model file is
hard-linked where the file system allows (no second copy of the weights, and
the version's own file is never written to), copied otherwise; the config is
replaced atomically and only once the version it names is in place.
Light: needs ``onnx``, no TensorFlow, no onnxruntime, no tritonclient.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_encoding

from inpaint.core.contract import ContractError, check_signature
from inpaint.core.repository import (ONNX_FILENAME, TEMPORARY_PREFIX, TEMPORARY_SUFFIX, remove_stale_temporaries,
                                     write_atomically)

from .onnx_export import ExportError

logger = logging.getLogger(__name__)

CONFIG_FILENAME = "config.pbtxt"
MODEL_NAME = "inpaint"
PLATFORM, BACKEND = "onnxruntime_onnx", "onnxruntime"  # the pair Triton accepts for ONNX Runtime
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
FOLDER_MODE = 0o755  # tempfile.mkdtemp makes folders private; Triton may run as another user

# numpy dtype name (what the signature holds) -> Triton's DataType (model_config.proto)
TRITON_TYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "object": "TYPE_STRING",
}

Signature = dict[str, dict[str, tuple[str, list[int]]]]


@dataclass(frozen=True)
class TritonOptions:
    """What the config says beyond the graph: the model's name, batching and instances."""

    model_name: str = MODEL_NAME
    max_batch_size: int = 8
    max_queue_delay_microseconds: int = 2000  # as batch_timeout_micros of our server and TF Serving's file
    cpu_instances: int = 1
    gpu_instances: int = 1  # per GPU; 0 leaves the KIND_GPU group out (needed where there is no GPU)

    def __post_init__(self):
        if not MODEL_NAME_PATTERN.fullmatch(self.model_name):
            raise ValueError(f"Triton model name {self.model_name!r} must be letters, digits, '_', '.' or '-' "
                             "and not start with '.' or '-' (it is a folder name)")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.cpu_instances < 0 or self.gpu_instances < 0 or self.cpu_instances + self.gpu_instances == 0:
            raise ValueError("a Triton model needs at least one instance: CPU or GPU instances must be above 0")

    @property
    def preferred_batch_sizes(self) -> list[int]:
        """Half the largest batch and the largest: batches the dynamic batcher waits a little to fill."""
        return sorted({max(1, self.max_batch_size // 2), self.max_batch_size})


@dataclass
class TritonReport:
    config_path: Path
    model_path: Path
    linked: bool  # hard link to the version's model.onnx (False: a copy)
    signature: Signature
    options: TritonOptions


def onnx_signature(path: Path) -> Signature:
    """``{"inputs"|"outputs": {name: (numpy dtype name, shape with -1 for dynamic)}}`` of an ONNX graph."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {initializer.name for initializer in graph.initializer}

    def describe(values):
        described = {}
        for value in values:
            tensor = value.type.tensor_type
            dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
            described[value.name] = (dtype, [dim.dim_value if dim.HasField("dim_value") else -1
                                             for dim in tensor.shape.dim])
        return described

    return {"inputs": describe(v for v in graph.input if v.name not in constants),
            "outputs": describe(graph.output)}


def batch_free_dims(name: str, shape: list[int]) -> list[int]:
    """The shape without its batch dimension, which must be dynamic for Triton to batch."""
    if not shape or shape[0] != -1:
        raise ExportError(f"tensor '{name}' has shape {shape}: Triton's batching (max_batch_size > 0) needs a "
                          "dynamic first dimension")
    return shape[1:]


def _quoted(text: str) -> str:
    return '"' + text_encoding.CEscape(text, as_utf8=True) + '"'


def _tensors(field: str, tensors: dict[str, tuple[str, list[int]]]) -> list[str]:
    entries = []
    for name, (dtype, shape) in tensors.items():
        if dtype not in TRITON_TYPES:
            raise ExportError(f"tensor '{name}' has dtype {dtype}, which Triton has no type for")
        dims = ", ".join(map(str, batch_free_dims(name, shape)))
        entries.append(f"  {{\n    name: {_quoted(name)}\n    data_type: {TRITON_TYPES[dtype]}\n"
                       f"    dims: [ {dims} ]\n  }}")
    return [f"{field} [", ",\n".join(entries), "]"]


def _instance_groups(options: TritonOptions) -> list[str]:
    groups = []
    if options.cpu_instances:
        groups.append(f'  {{ name: "{options.model_name}_cpu" kind: KIND_CPU count: {options.cpu_instances} }}')
    if options.gpu_instances:  # no gpus: [...]: Triton puts `count` instances on every GPU it sees
        groups.append(f'  {{ name: "{options.model_name}_gpu" kind: KIND_GPU count: {options.gpu_instances} }}')
    return ["instance_group [", ",\n".join(groups), "]"]


def model_config(signature: Signature, version: int, options: TritonOptions) -> str:
    """Triton's ``ModelConfig`` text for ``signature``, serving exactly ``version``."""
    preferred = ", ".join(map(str, options.preferred_batch_sizes))
    lines = [
        "# Triton model configuration (ModelConfig, protobuf text format), written by inpaint-export from",
        "# the version's model.onnx: tensors as in its graph, the batch dimension left out of dims.",
        f"name: {_quoted(options.model_name)}",
        f"platform: {_quoted(PLATFORM)}",
        f"backend: {_quoted(BACKEND)}",
        f"max_batch_size: {options.max_batch_size}",
        f"version_policy: {{ specific: {{ versions: [ {version} ] }} }}",
        *_tensors("input", signature["inputs"]),
        *_tensors("output", signature["outputs"]),
        "# Requests of one H x W are batched together; other sizes run in batches of their own.",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {preferred} ]",
        f"  max_queue_delay_microseconds: {options.max_queue_delay_microseconds}",
        "}",
        *_instance_groups(options),
    ]
    return "\n".join(lines) + "\n"


def write_triton_repository(version_path: Path, repository: Path,
                            options: TritonOptions = TritonOptions()) -> TritonReport:
    """Write ``repository/<model>/config.pbtxt`` and ``<model>/<version>/model.onnx`` from a version folder."""
    source = version_path / ONNX_FILENAME
    if not source.is_file():
        raise ExportError(f"{version_path} has no {ONNX_FILENAME}: run inpaint-export {version_path.parent} first")
    signature = onnx_signature(source)
    try:
        check_signature(signature)
    except ContractError as error:
        raise ExportError(f"{source}: {error}") from None
    version = int(version_path.name)
    config = model_config(signature, version, options).encode()
    model_folder = repository / options.model_name
    repository.mkdir(parents=True, exist_ok=True)
    if model_folder.is_dir():
        linked = _publish_version(source, model_folder, version)
        write_atomically(model_folder / CONFIG_FILENAME, config)
    else:
        linked = _publish_model_folder(source, config, model_folder, version)
    target = model_folder / str(version) / ONNX_FILENAME
    logger.debug("Triton model %s version %s: %s (%s)", options.model_name, version, target,
                 "hard link" if linked else "copy")
    return TritonReport(model_folder / CONFIG_FILENAME, target, linked, signature, options)


def _publish_model_folder(source: Path, config: bytes, model_folder: Path, version: int) -> bool:
    """A new model folder, config and version together, renamed into the repository whole."""
    staging = _hidden_folder(model_folder.parent, f".{model_folder.name}.staging-")
    try:
        (staging / str(version)).mkdir(mode=FOLDER_MODE)
        linked = _link_or_copy(source, staging / str(version) / ONNX_FILENAME)
        write_atomically(staging / CONFIG_FILENAME, config)
        os.rename(staging, model_folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return linked


def _publish_version(source: Path, model_folder: Path, version: int) -> bool:
    """Put ``model.onnx`` into ``model_folder/<version>/``: a new folder whole, or the file replaced."""
    target = model_folder / str(version)
    if target.is_dir():
        for stale in remove_stale_temporaries(target, ONNX_FILENAME):
            logger.info("removed %s, left by a write that did not finish", stale)
        return _link_or_copy(source, target / ONNX_FILENAME)
    staging = _hidden_folder(model_folder, f".{version}.staging-")
    try:
        linked = _link_or_copy(source, staging / ONNX_FILENAME)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return linked


def _hidden_folder(parent: Path, prefix: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    folder.chmod(FOLDER_MODE)
    return folder


def _link_or_copy(source: Path, target: Path) -> bool:
    """Hard-link ``source`` to ``target`` (a copy across file systems), replacing it atomically."""
    if target.exists() and os.path.samefile(source, target):
        return True
    temporary = target.with_name(f"{TEMPORARY_PREFIX}{target.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
    try:
        try:
            os.link(source, temporary)
            linked = True
        except OSError as error:  # another file system, or links not allowed
            logger.debug("cannot hard-link %s (%s): copying it", source, error)
            shutil.copyfile(source, temporary)
            linked = False
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return linked
