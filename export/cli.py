"""``inpaint-export MODEL_BASE_PATH [--version V] [--triton-repository DIR]``: add a checked ``model.onnx``
to a version, and optionally lay it out as a Triton model repository."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from inpaint.core.envvars import Command, ToolVariables
from inpaint.core.detail import load_detail
from inpaint.core.repository import DETAIL_RECORD, ONNX_FILENAME, RepositoryError, version_dir, write_atomically
from inpaint.trainer.startup import import_tensorflow

from .onnx_export import OPSET, ExportError, ExportReport
from .triton import MODEL_NAME, TritonOptions, TritonReport

logger = logging.getLogger(__name__)

# INPAINT_EXPORT_<OPTION> (--opset: INPAINT_EXPORT_OPSET; the argument: INPAINT_EXPORT_MODEL_BASE_PATH); the
# unprefixed names read before issue 24 are refused when set.
VARIABLES = ToolVariables("inpaint-export", "INPAINT_EXPORT_")
VARIABLES.rename({f"INPAINT_{flag[2:].replace('-', '_').upper()}": flag for flag in (
    "--model-base-path", "--version", "--opset", "--triton-repository", "--triton-model-name",
    "--triton-max-batch-size", "--triton-cpu-instances", "--triton-gpu-instances")})
option = VARIABLES.option


@click.command(cls=Command, variables=VARIABLES, context_settings={"show_default": True})
@click.argument("model_base_path", type=click.Path(path_type=Path), envvar=VARIABLES.envvar("--model-base-path"))
@option("--version", type=click.IntRange(min=1), default=None,
        help="Version folder to export [default: the latest].")
@option("--opset", type=click.IntRange(min=OPSET), default=OPSET,
        help="ONNX opset to convert to.")
@option("--triton-repository", type=click.Path(file_okay=False, path_type=Path), default=None,
        help="Also write a Triton model repository here: DIR/NAME/config.pbtxt (ONNX Runtime backend) and "
             "DIR/NAME/VERSION/model.onnx. A version that has a model.onnx is not converted again "
             "(run without this option to convert it anew).")
@option("--triton-model-name", default=MODEL_NAME,
        help="The model's name in Triton (its folder).")
@option("--triton-max-batch-size", type=click.IntRange(min=1), default=TritonOptions.max_batch_size,
        help="Triton's max_batch_size (images of one size per batch).")
@option("--triton-cpu-instances", type=click.IntRange(min=0), default=TritonOptions.cpu_instances,
        help="Model instances on CPU (a KIND_CPU group; 0: none).")
@option("--triton-gpu-instances", type=click.IntRange(min=0), default=TritonOptions.gpu_instances,
        help="Model instances on each GPU (a KIND_GPU group; 0: none). Triton refuses to load a model with "
             "a KIND_GPU group where it sees no GPU: use 0 for CPU-only Triton.")
@option("--detail-amount", type=click.FloatRange(0, 2), default=None,
        help="Declare the version's detail pass (assets.extra/detail.json, docs/sharp-fills.md): the strength of "
             "the photo's texture added to fills of images run whole (0: off) [default: leave it as declared].")
@option("--detail-amount-tiled", type=click.FloatRange(0, 2), default=None,
        help="The same for photos the server runs in windows [default: leave it as declared].")
@option("-v", "--verbose", is_flag=True, help="Show debug logs and tracebacks.")
def main(model_base_path: Path, version: int | None, opset: int, triton_repository: Path | None,
         triton_model_name: str, triton_max_batch_size: int, triton_cpu_instances: int,
         triton_gpu_instances: int, detail_amount: float | None, detail_amount_tiled: float | None,
         verbose: bool) -> None:
    """Convert a version's SavedModel to ONNX, check it, and check it agrees with TensorFlow.

    With --triton-repository, also write it as a Triton model repository (docs/triton.md).
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        path = version_dir(model_base_path, version)
        _declare_detail(path, detail_amount, detail_amount_tiled)
        if triton_repository is None:
            _echo_export(_export_onnx(path, opset, verbose))
            return
        options = TritonOptions(triton_model_name, triton_max_batch_size, cpu_instances=triton_cpu_instances,
                                gpu_instances=triton_gpu_instances)
        if (path / ONNX_FILENAME).is_file():
            logger.info("%s has a %s: written to Triton as it is", path, ONNX_FILENAME)
        else:
            _echo_export(_export_onnx(path, opset, verbose))
        from .triton import write_triton_repository

        _echo_triton(write_triton_repository(path, triton_repository, options))
    except (RepositoryError, ExportError, ValueError, OSError) as error:
        if verbose:
            raise
        raise click.ClickException(str(error)) from None


def _declare_detail(path: Path, amount: float | None, amount_tiled: float | None) -> None:
    """Write the version's detail declaration with the amounts given, keeping its other settings."""
    if amount is None and amount_tiled is None:
        return
    detail = load_detail(path).with_amounts(amount, amount_tiled)
    (path / DETAIL_RECORD).parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path / DETAIL_RECORD, detail.to_json().encode())
    click.echo(f"{path / DETAIL_RECORD}: detail pass {detail.amount} on images run whole, "
               f"{detail.amount_tiled} on photos run in windows")


def _export_onnx(path: Path, opset: int, verbose: bool) -> ExportReport:
    import_tensorflow(verbose)  # only once the input is known good; its start-up banners hidden unless -v
    from .onnx_export import export_version

    return export_version(path, opset)


def _echo_export(report: ExportReport) -> None:
    click.echo(f"wrote {report.onnx_path}")
    click.echo(f"  size        {report.size_bytes / 2**20:.2f} MiB")
    click.echo(f"  parameters  {report.parameters:,}")
    shapes = ", ".join("x".join(map(str, s)) for s in report.shapes_checked)
    click.echo(f"  parity      max |TF - ONNX| = {report.max_difference} uint8 levels on N x H x W = {shapes}")


def _echo_triton(report: TritonReport) -> None:
    def tensors(kind: str) -> str:
        return ", ".join(f"{name} {dtype} {shape}" for name, (dtype, shape) in report.signature[kind].items())

    options = report.options
    click.echo(f"wrote {report.config_path}")
    click.echo(f"  model       {report.model_path} ({'hard link' if report.linked else 'copy'})")
    click.echo(f"  inputs      {tensors('inputs')}")
    click.echo(f"  outputs     {tensors('outputs')}")
    click.echo(f"  batching    max_batch_size {options.max_batch_size}, preferred "
               f"{', '.join(map(str, options.preferred_batch_sizes))}, "
               f"queue delay {options.max_queue_delay_microseconds} us")
    click.echo(f"  instances   {options.cpu_instances} on CPU, {options.gpu_instances} on each GPU")
    if options.gpu_instances:
        click.echo("  note        a Triton without GPUs refuses this model: --triton-gpu-instances 0 for CPU-only")


if __name__ == "__main__":
    main()
