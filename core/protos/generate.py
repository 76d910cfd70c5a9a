"""Regenerate the Python modules from the .proto files here (``make protos``).

The messages are registered in a private descriptor pool, not protobuf's
default one: a process may load TensorFlow's or tensorflow-serving-api's own
definitions of ``tensorflow.TensorProto`` and friends too, and the two would
collide as duplicate symbols in a shared pool.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_ROOT = "inpaint/core/protos"
POOL_IMPORT = "from inpaint.core.protos._pool import POOL as _private_pool\n"
# grpcio-tools 1.80.x writes protobuf 6.31.1 gencode, which runs on protobuf 6.31.1+ and 7.x; a later one writes
# 7.x gencode, which refuses to import under protobuf 6 (and tritonclient needs protobuf<7).
GRPC_TOOLS_SERIES = "1.80."


def check_grpc_tools(version: str) -> None:
    if not version.startswith(GRPC_TOOLS_SERIES):
        raise SystemExit(f"grpcio-tools {version} is installed; the protos are generated with grpcio-tools "
                         f"{GRPC_TOOLS_SERIES}x (protobuf 6.31.1 gencode, importable under protobuf 6 and 7): "
                         "pip install 'grpcio-tools==1.80.1'")


def main() -> int:
    from grpc_tools import grpc_version, protoc
    import grpc_tools

    check_grpc_tools(grpc_version.VERSION)

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src" / PROTO_ROOT
        source.mkdir(parents=True)
        for proto in HERE.glob("*.proto"):
            shutil.copy(proto, source)
        out = Path(tmp) / "out"
        out.mkdir()
        include = Path(grpc_tools.__file__).parent / "_proto"
        protos = sorted(f"{PROTO_ROOT}/{p.name}" for p in HERE.glob("*.proto"))
        args = ["protoc", f"-I{Path(tmp) / 'src'}", f"-I{include}", f"--python_out={out}",
                f"--pyi_out={out}", f"--grpc_python_out={out}", *protos]
        if protoc.main(args) != 0:
            return 1
        for old in HERE.glob("*_pb2*.py*"):
            old.unlink()
        for generated in (out / PROTO_ROOT).iterdir():
            text = generated.read_text()
            if generated.name.endswith("_pb2_grpc.py") and "Stub" not in text:
                continue  # a file without services: nothing to generate
            if generated.name.endswith("_pb2.py"):
                text = text.replace("_descriptor_pool.Default()", "_private_pool")
                text = re.sub(r"(from google\.protobuf\.internal import builder as _builder\n)",
                              r"\1" + POOL_IMPORT, text, count=1)
            (HERE / generated.name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
