"""File names and bytes on any path a training source may sit on: a local folder, a glob, or any
path ``tf.io.gfile`` reads (``gs://``, ...). TensorFlow is imported only for remote paths.
"""

from __future__ import annotations

import glob as globlib
import os
import re
from pathlib import Path

from inpaint.core.images import IMAGE_SUFFIXES

from .errors import DataError

TFRECORD_NAME = re.compile(r"\.tfrec(ord)?(-\d+-of-\d+)?$", re.IGNORECASE)


def is_glob(spec: str) -> bool:
    return any(char in spec for char in "*?[")


def is_remote(spec: str) -> bool:
    return "://" in spec


def join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if root else name


def read_bytes(path: str) -> bytes:
    if is_remote(path):
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "rb") as handle:
            return handle.read()
    with open(path, "rb") as handle:
        return handle.read()


def _name_key(name: str) -> list[str]:
    return name.split("/")  # the order of data.image_files (sorted paths)


def glob_root(pattern: str) -> str:
    """The folder part of a glob before its first wildcard: file names are relative to it."""
    parts = pattern.split("/")
    fixed = []
    for part in parts[:-1]:
        if is_glob(part):
            break
        fixed.append(part)
    return "/".join(fixed) if fixed else "."


def list_files(spec: str) -> tuple[str, list[str]]:
    """``(root, names)``: every file under a folder (recursively), matching a glob, or the one file
    given; names are relative to ``root``, sorted. DataError if the path does not exist."""
    if is_glob(spec):
        if is_remote(spec):
            import tensorflow as tf

            paths = tf.io.gfile.glob(spec)
        else:
            spec = os.path.expanduser(spec)
            paths = [p for p in globlib.glob(spec, recursive=True) if os.path.isfile(p)]
        root = glob_root(spec)
        names = [os.path.relpath(p, root) if not is_remote(spec) else p[len(root):].lstrip("/") for p in paths]
        if not names:
            raise DataError(f"no file matches {spec}")
        return root, sorted(names, key=_name_key)
    if is_remote(spec):
        import tensorflow as tf

        if not tf.io.gfile.exists(spec):
            raise DataError(f"data path {spec} does not exist")
        if not tf.io.gfile.isdir(spec):
            root, _, name = spec.rpartition("/")
            return root, [name]
        root = spec.rstrip("/")
        names = [join(folder, name)[len(root):].lstrip("/")
                 for folder, _, files in tf.io.gfile.walk(root) for name in files]
        return root, sorted(names, key=_name_key)
    path = Path(spec).expanduser()
    if path.is_file():
        return str(path.parent), [path.name]
    if not path.is_dir():
        raise DataError(f"data folder {path} does not exist")
    names = [os.path.relpath(os.path.join(folder, name), path)
             for folder, _, files in os.walk(path, followlinks=True) for name in files]
    return str(path), sorted(names, key=_name_key)


def image_names(names: list[str]) -> list[str]:
    return [name for name in names if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES]


def tfrecord_names(names: list[str]) -> list[str]:
    return [name for name in names if TFRECORD_NAME.search(name)]
