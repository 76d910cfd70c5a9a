"""TF Serving's model server config: ``--model_config_file`` and ``HandleReloadConfigRequest``.

The config is TF Serving's own ``ModelServerConfig`` message (``core/protos/model_server_config.proto``, a
wire- and text-format-compatible copy of theirs), read with protobuf's text format, so a file written for
``tensorflow_model_server`` serves here as it is::

    model_config_list {
      config {
        name: "inpaint"
        base_path: "/models/inpaint"
        model_platform: "tensorflow"
        model_version_policy { specific { versions: 1 versions: 2 } }
        version_labels { key: "stable" value: 1 }
        version_labels { key: "canary" value: 2 }
      }
    }

``entries_from_proto`` checks it as TF Serving does (a name once, an absolute ``base_path``) and more (the
base path exists, a platform this server runs, labels that are not numbers), and turns it into
``ModelEntry`` values; every problem is an ``InvalidConfig`` naming the model and the field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format

from inpaint.core.protos import model_server_config_pb2

from .errors import InvalidConfig, quoted
from .models import VersionPolicy

# Platforms whose version folders this server can run (their model.onnx): TF Serving's name for a
# SavedModel, which inpaint-export writes next to model.onnx, and ONNX Runtime's.
PLATFORMS = ("tensorflow", "onnx", "onnxruntime_onnx")


@dataclass(frozen=True)
class ModelEntry:
    """One model of the config: its name, where its versions are, which to serve, and its labels."""

    name: str
    base_path: Path
    policy: VersionPolicy = field(default_factory=lambda: VersionPolicy("latest"))
    labels: dict[str, int] = field(default_factory=dict)


def read_config_file(path: Path) -> list[ModelEntry]:
    """The models of a ``--model_config_file``; InvalidConfig when it cannot be read, parsed or used."""
    return entries_from_proto(parse_config_text(read_config_text(path), str(path)))


def read_config_text(path: Path) -> str:
    """The file's text; InvalidConfig when it cannot be read (missing, unreadable, not UTF-8)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidConfig(f"cannot read model config file {path}: {error}") from None


def parse_config_text(text: str, source: str) -> model_server_config_pb2.ModelServerConfig:
    try:
        return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as error:
        raise InvalidConfig(f"model config file {source} is not a ModelServerConfig in text format: {error}") from None


def entries_from_proto(config: model_server_config_pb2.ModelServerConfig) -> list[ModelEntry]:
    """The config's models, checked; InvalidConfig for anything this server cannot serve as written."""
    if config.WhichOneof("config") != "model_config_list":
        raise InvalidConfig("the config holds no model_config_list; custom_model_config is not supported")
    entries = [entry_from_proto(model) for model in config.model_config_list.config]
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise InvalidConfig(f"Illegal to list model {quoted(entry.name)} multiple times in config list")
        seen.add(entry.name)
    return entries


def entry_from_proto(model: model_server_config_pb2.ModelConfig) -> ModelEntry:
    if not model.name:
        raise InvalidConfig("a model in the config has no name")
    name = quoted(model.name)
    if not model.base_path:
        raise InvalidConfig(f"model {name} has no base_path")
    if not os.path.isabs(model.base_path):
        raise InvalidConfig(f"Expected model {name} to have an absolute path; got base_path()={model.base_path}")
    if not os.path.isdir(model.base_path):
        raise InvalidConfig(f"model {name}: base_path {model.base_path} is not a directory")
    if model.model_platform and model.model_platform not in PLATFORMS:
        raise InvalidConfig(f"Model {name} requests unsupported platform {quoted(model.model_platform)}; this "
                            f"server runs {', '.join(PLATFORMS)} (the version folders' model.onnx)")
    return ModelEntry(model.name, Path(model.base_path), policy_from_proto(model), labels_from_proto(model))


def policy_from_proto(model: model_server_config_pb2.ModelConfig) -> VersionPolicy:
    """TF Serving's ``model_version_policy``; unset, it is ``latest`` with one version."""
    policy = model.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        if not policy.specific.versions:
            raise InvalidConfig(f"model {quoted(model.name)}: model_version_policy specific lists no versions")
        return VersionPolicy("specific", versions=tuple(sorted(set(policy.specific.versions))))
    return VersionPolicy("latest", count=max(1, policy.latest.num_versions))


def labels_from_proto(model: model_server_config_pb2.ModelConfig) -> dict[str, int]:
    """The model's version labels. A label of digits only would read as a version number in the Open
    Inference Protocol's version strings and in REST paths, so it is refused."""
    labels = dict(model.version_labels)
    for label in labels:
        if not label or label.isdigit() or "/" in label or ":" in label:
            raise InvalidConfig(f"model {quoted(model.name)}: version label {quoted(label)} must be a name, not "
                                "empty, all digits, or holding '/' or ':'")
    return labels
