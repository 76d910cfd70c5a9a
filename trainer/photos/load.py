"""Training time: the assembled photos, split, in memory. Reads only local files (no network)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .catalogue import SOURCES, SPLITS, Source, target_scale
from .manifest import ASSEMBLE_COMMAND, Manifest, PhotosError

logger = logging.getLogger(__name__)


def read_rgb(path: Path, max_long_side: int | None = None) -> np.ndarray:
    """A photo as RGB uint8 ``(H, W, 3)``, shrunk to ``max_long_side`` if given."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise PhotosError(f"{path} is missing or unreadable: reassemble its package with --force")
    if max_long_side is not None:
        scale = target_scale(*image.shape[:2], 1.0, max_long_side)
        if scale < 1.0:
            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def split_names(manifest: Manifest, sources: Sequence[Source] = SOURCES) -> dict[str, list[str]]:
    """Each split's photo paths. The split comes from ``sources`` (so the rule lives in code);
    photos of packages not in ``sources`` keep the split recorded at assembly."""
    by_package = {source.package: source for source in sources}
    names: dict[str, list[str]] = {split: [] for split in SPLITS}
    for photo in manifest.photos:
        source = by_package.get(photo.package)
        names[source.split_of(photo.name) if source else photo.split].append(photo.path)
    return names


def load_photos(dest: Path, sources: Sequence[Source] = SOURCES, *, max_long_side: int | None = None,
                splits: Sequence[str] = SPLITS) -> tuple[dict[str, list[np.ndarray]], dict[str, list[str]]]:
    """Train, validation and test photos from an assembled folder, and their paths in it.

    Returns ``(images, names)``, both keyed by ``train``, ``validation`` and ``test``; images are
    RGB uint8, read only for ``splits`` (the others are empty lists; their names are all given). Reads
    only local files. PhotosNotAssembled (a DataError) names the command to run if the folder was never
    assembled; missing packages are named in a warning.
    """
    manifest = Manifest.load(dest)
    missing = manifest.missing()
    if missing:
        logger.warning("%s lacks packages %s: training uses the other %d photos (retry with `%s`)",
                       dest, ", ".join(missing), len(manifest.photos), ASSEMBLE_COMMAND.format(dest=dest))
    names = split_names(manifest, sources)
    if not names["train"]:
        raise PhotosError(f"{dest} holds no training photos: run `{ASSEMBLE_COMMAND.format(dest=dest)}`")
    for split in ("validation", "test"):
        if not names[split]:
            logger.warning("%s: no %s photo was assembled", dest, split)
    images = {split: [read_rgb(dest / path, max_long_side) for path in paths] if split in splits else []
              for split, paths in names.items()}
    return images, names
