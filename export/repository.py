"""TF Serving's model-repository layout: ``BASE/<version>/``, version a positive integer.

Used by the trainer (to publish a new version), the exporter (to find one) and
the server (to poll for them). Light: no TensorFlow, no onnxruntime.
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
SAVED_MODEL_FILENAME = "saved_model.pb"
RUN_RECORD = Path("assets.extra") / "run.json"


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


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; servers may run as another user
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
