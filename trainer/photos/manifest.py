"""The assembled folder's record, ``manifest.json``: every photo (path, package, license, size,
split) and every package's status. Assembly writes it after each package; training reads it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import DataError
from .catalogue import MAX_LONG_SIDE

DEFAULT_DEST = Path("data/photos")
MANIFEST = "manifest.json"
COPYRIGHT = "COPYRIGHT"
ATTRIBUTION_DIR = "attribution"
ASSEMBLE_COMMAND = "python -m inpaint.trainer.photos --dest {dest}"


class PhotosError(DataError):
    """The assembled photos are missing or unusable."""


class PhotosNotAssembled(PhotosError):
    """The folder has no manifest: the photos were never assembled there."""


@dataclass
class PhotoRecord:
    path: str  # relative to the assembled folder: <package>/<name><suffix>
    package: str
    name: str
    source_path: str  # inside the package
    license: str
    width: int
    height: int
    split: str


@dataclass
class PackageRecord:
    status: Literal["ok", "missing"]
    registry: str
    license: str
    photos: int = 0
    copyright: str = ""  # relative to the assembled folder
    archive: str = ""
    sha256: str = ""
    version: str = ""
    seconds: float = 0.0
    error: str = ""


@dataclass
class Manifest:
    packages: dict[str, PackageRecord] = field(default_factory=dict)
    photos: list[PhotoRecord] = field(default_factory=list)
    max_long_side: int = MAX_LONG_SIDE

    def missing(self) -> list[str]:
        return sorted(name for name, record in self.packages.items() if record.status != "ok")

    def photos_of(self, package: str) -> list[PhotoRecord]:
        return [photo for photo in self.photos if photo.package == package]

    def replace(self, package: str, record: PackageRecord, photos: Iterable[PhotoRecord] = ()) -> None:
        self.packages[package] = record
        self.photos = [photo for photo in self.photos if photo.package != package] + list(photos)
        self.photos.sort(key=lambda photo: photo.path)

    def is_complete(self, dest: Path, package: str) -> bool:
        """Whether ``package`` was assembled and all its files are still on disk."""
        record = self.packages.get(package)
        if record is None or record.status != "ok":
            return False
        files = [photo.path for photo in self.photos_of(package)] + [record.copyright]
        return bool(files) and all((dest / name).is_file() for name in files)

    def save(self, dest: Path) -> None:
        data = {"max_long_side": self.max_long_side,
                "packages": {name: asdict(record) for name, record in sorted(self.packages.items())},
                "photos": [asdict(photo) for photo in self.photos]}
        temporary = dest / f".{MANIFEST}.tmp"
        temporary.write_text(json.dumps(data, indent=1) + "\n")
        temporary.replace(dest / MANIFEST)  # never leave a half-written manifest behind

    @classmethod
    def load(cls, dest: Path) -> Manifest:
        path = dest / MANIFEST
        if not path.is_file():
            raise PhotosNotAssembled(
                f"{dest} holds no assembled photos ({MANIFEST} is missing): run "
                f"`{ASSEMBLE_COMMAND.format(dest=dest)}` once, with network (or `make photos`)")
        try:
            data = json.loads(path.read_text())
            return cls(packages={name: PackageRecord(**record) for name, record in data["packages"].items()},
                       photos=[PhotoRecord(**photo) for photo in data["photos"]],
                       max_long_side=data.get("max_long_side", MAX_LONG_SIDE))
        except (ValueError, KeyError, TypeError) as error:
            raise PhotosError(f"{path} is unreadable ({error}): reassemble with "
                              f"`{ASSEMBLE_COMMAND.format(dest=dest)} --force`") from None
