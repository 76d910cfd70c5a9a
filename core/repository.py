"""TF Serving's model-repository layout, ``BASE/<version>/``, and publishing into it atomically.

Used by the trainer (to publish a new version), the exporter (to add a file to
one) and the server (to poll for them). Servers on other machines may be
reading the same folder, so nothing appears half-written: new folders and files
are written under hidden temporary names and renamed into place. Light: no
TensorFlow, no onnxruntime.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ONNX_FILENAME = "model.onnx"
# The version's int8 graph, beside model.onnx; served with --precision int8 (benchmarks/int8.py writes it).
INT8_FILENAME = "model.int8.onnx"
SAVED_MODEL_FILENAME = "saved_model.pb"
RUN_RECORD = Path("assets.extra") / "run.json"
# The detail pass a version is served with (core/detail.py); TF Serving ignores it (it reads only its warm-up file).
DETAIL_RECORD = Path("assets.extra") / "detail.json"


class RepositoryError(ValueError):
    """The model base path or version asked for does not exist."""


def list_versions(base_path: Path) -> list[int]:
    """Version numbers under ``base_path``, ascending. Hidden staging folders are ignored."""
    if not base_path.is_dir():
        return []
    return sorted(
        int(entry.name)
        for entry in base_path.iterdir()
        if entry.is_dir() and entry.name.isdigit() and int(entry.name) > 0
    )


def version_dir(base_path: Path, version: int | None = None) -> Path:
    """The folder of ``version``, or of the latest version when it is None."""
    versions = list_versions(base_path)
    if not versions:
        raise RepositoryError(f"no model versions under {base_path} (expected {base_path}/1/, {base_path}/2/, ...)")
    if version is None:
        return base_path / str(versions[-1])
    if version not in versions:
        raise RepositoryError(
            f"version {version} does not exist under {base_path} (have {', '.join(map(str, versions))})"
        )
    return base_path / str(version)


@dataclass
class StagedVersion:
    """A hidden folder being filled; ``published`` is set once it became a version."""

    path: Path
    published: Path | None = None


@contextlib.contextmanager
def staged_version(base_path: Path) -> Iterator[StagedVersion]:
    """Yield a staging folder; on success it is renamed into the next free version.

    TF Serving and our server poll the base path, so a version folder must
    appear whole or not at all. The staging folder is hidden (dot-prefixed) and
    on the same file system, so the final ``rename`` is atomic. On error it is
    removed and no version appears.
    """
    base_path.mkdir(parents=True, exist_ok=True)
    staged = StagedVersion(Path(tempfile.mkdtemp(prefix=".staging-", dir=base_path)))
    try:
        yield staged
        staged.published = _rename_to_next_version(staged.path, base_path)
    finally:
        if staged.published is None:
            shutil.rmtree(staged.path, ignore_errors=True)


def _rename_to_next_version(staging: Path, base_path: Path) -> Path:
    while True:
        target = base_path / str((list_versions(base_path) or [0])[-1] + 1)
        try:
            os.rename(staging, target)
            return target
        except OSError:
            if not target.exists():
                raise
            # another run published this number meanwhile: take the next one


TEMPORARY_PREFIX = "."  # hidden: the server's poll and list_versions ignore dot-files and dot-folders
TEMPORARY_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path``; on success it is renamed over ``path``.

    Whatever writes the file (this process or a child such as tf2onnx) writes
    the temporary; readers see either the old file or the whole new one. On
    error the temporary is removed; one left by a killed process is removed by
    ``remove_stale_temporaries``.
    """
    handle, temporary = tempfile.mkstemp(prefix=f"{TEMPORARY_PREFIX}{path.name}.", suffix=TEMPORARY_SUFFIX,
                                         dir=path.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        temporary.chmod(0o644)  # mkstemp makes it private; servers may run as another user
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``atomic_file``."""
    with atomic_file(path) as temporary:
        temporary.write_bytes(data)


def remove_stale_temporaries(folder: Path, name: str) -> list[Path]:
    """Remove temporaries of ``name`` that a killed writer left in ``folder``; return them."""
    stale = sorted(folder.glob(f"{TEMPORARY_PREFIX}{name}.*{TEMPORARY_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
