"""``inpaint-export MODEL_BASE_PATH [--version V]``: add a checked ``model.onnx`` to a version."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from inpaint.core.repository import RepositoryError, version_dir
from inpaint.trainer.startup import import_tensorflow

from .onnx_export import OPSET, ExportError


@click.command(context_settings={"show_default": True})
@click.argument("model_base_path", type=click.Path(path_type=Path), envvar="INPAINT_MODEL_BASE_PATH")
@click.option("--version", type=click.IntRange(min=1), default=None, envvar="INPAINT_VERSION",
              help="Version folder to export [default: the latest].")
@click.option("--opset", type=click.IntRange(min=OPSET), default=OPSET, envvar="INPAINT_OPSET",
              help="ONNX opset to convert to.")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs and tracebacks.")
def main(model_base_path: Path, version: int | None, opset: int, verbose: bool) -> None:
    """Convert a version's SavedModel to ONNX, check it, and check it agrees with TensorFlow."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        path = version_dir(model_base_path, version)
        import_tensorflow(verbose)  # only once the input is known good; its start-up banners hidden unless -v
        from .onnx_export import export_version

        report = export_version(path, opset)
    except (RepositoryError, ExportError, ValueError, OSError) as error:
        if verbose:
            raise
        raise click.ClickException(str(error)) from None
    click.echo(f"wrote {report.onnx_path}")
    click.echo(f"  size        {report.size_bytes / 2**20:.2f} MiB")
    click.echo(f"  parameters  {report.parameters:,}")
    shapes = ", ".join("x".join(map(str, s)) for s in report.shapes_checked)
    click.echo(f"  parity      max |TF - ONNX| = {report.max_difference} uint8 levels on N x H x W = {shapes}")


if __name__ == "__main__":
    main()
