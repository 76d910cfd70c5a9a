"""``inpaint-serve``: the ONNX Runtime model server, with TF Serving's flags in dashed form."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from pathlib import Path

import click

from .batching import BatchingOptions
from .models import VersionPolicy
from .runtime import DEVICES
from .server import ServerConfig, serve
from inpaint.core.tiling import TILING_MODES

_DEFAULT_BATCHING = BatchingOptions()


def _default(name: str):
    """``ServerConfig``'s default for a field: the one place server defaults are set."""
    return ServerConfig.__dataclass_fields__[name].default


def _policy(ctx, param, value: str) -> str:
    try:
        VersionPolicy.parse(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    return value


def _origin(ctx, param, value: str | None) -> str | None:
    if value is not None and value != "*" and not re.fullmatch(r"https?://[^/\s]+", value):
        raise click.BadParameter("must be * or an origin: scheme://host[:port], no path (https://app.example.com)")
    return value


def _rest_port(rest_port: int, rest_api_port: int | None) -> int:
    """``--rest-port``, or TF Serving's ``--rest_api_port`` (where 0 means no REST server) in its place."""
    if rest_api_port is None:
        return rest_port
    source = click.get_current_context().get_parameter_source("rest_port")
    if source not in (None, click.core.ParameterSource.DEFAULT):
        raise click.ClickException("give --rest-port or TF Serving's --rest_api_port, not both")
    return -1 if rest_api_port == 0 else rest_api_port


def _port(ctx, param, value: int) -> int:
    if not -1 <= value <= 65535:
        raise click.BadParameter("must be 0-65535 (0 picks a free port; -1 disables REST)")
    return value


@click.command(context_settings={"show_default": True, "max_content_width": 110})
@click.option("--model-base-path", "--model_base_path", "model_base_path", required=True, type=click.Path(file_okay=False, path_type=Path),
              envvar="MODEL_BASE_PATH", help="Model repository: BASE/<version>/model.onnx.")
@click.option("--model-name", "--model_name", "model_name", default=_default("model_name"), envvar="MODEL_NAME", help="Name clients ask for.")
@click.option("--host", default=_default("host"), envvar="INPAINT_HOST", help="Address to listen on.")
@click.option("--port", default=_default("port"), callback=_port, envvar="INPAINT_PORT", help="gRPC port (0: any free port).")
@click.option("--rest-port", default=_default("rest_port"), callback=_port, envvar="INPAINT_REST_PORT",
              help="REST and metrics port (0: any free port, -1: no REST).")
@click.option("--rest_api_port", "rest_api_port", type=click.IntRange(0, 65535), default=None,
              help="TF Serving's spelling of the REST port, with its meaning: 0 turns REST off.")
@click.option("--rest_api_timeout_in_ms", "rest_timeout_ms", type=click.IntRange(min=0), default=0,
              envvar="INPAINT_REST_TIMEOUT_MS", help="Deadline of a REST predict, as in TF Serving (0: none).")
@click.option("--model-version-policy", default=_default("version_policy"), callback=_policy, envvar="INPAINT_VERSION_POLICY",
              help="Versions to serve: latest:N, all or specific:1,3.")
@click.option("--file-system-poll-wait-seconds", "--file_system_poll_wait_seconds", "file_system_poll_wait_seconds",
              default=_default("poll_seconds"), type=click.FloatRange(min=0.05),
              envvar="INPAINT_POLL_SECONDS", help="How often to look for new or removed versions.")
@click.option("--enable-batching/--no-enable-batching", default=_default("enable_batching"), envvar="INPAINT_ENABLE_BATCHING",
              help="Merge concurrent same-size requests into one model run.")
@click.option("--max-batch-size", default=_DEFAULT_BATCHING.max_batch_size, type=click.IntRange(min=1),
              envvar="INPAINT_MAX_BATCH_SIZE", help="Most images in one model run.")
@click.option("--batch-timeout-micros", default=_DEFAULT_BATCHING.batch_timeout_micros, type=click.IntRange(min=0),
              envvar="INPAINT_BATCH_TIMEOUT_MICROS", help="Longest a batch waits to fill.")
@click.option("--max-enqueued-batches", default=_DEFAULT_BATCHING.max_enqueued_batches,
              type=click.IntRange(min=1), envvar="INPAINT_MAX_ENQUEUED_BATCHES",
              help="Batches that may wait; beyond it requests get RESOURCE_EXHAUSTED.")
@click.option("--num-batch-threads", default=_DEFAULT_BATCHING.num_batch_threads, type=click.IntRange(min=1),
              envvar="INPAINT_NUM_BATCH_THREADS", help="Batches run at once.")
@click.option("--batching-parameters-file", "--batching_parameters_file", "batching_parameters_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              envvar="INPAINT_BATCHING_PARAMETERS_FILE",
              help="TF Serving's batching parameters text file; overrides the batching flags it sets.")
@click.option("--max-pixels", default=_default("max_pixels"), type=click.IntRange(min=1), envvar="INPAINT_MAX_PIXELS",
              help="Largest H x W per image.")
@click.option("--max-images-per-request", default=_default("max_images_per_request"), type=click.IntRange(min=1),
              envvar="INPAINT_MAX_IMAGES_PER_REQUEST", help="Most images (N) in one request.")
@click.option("--max-request-pixels", default=_default("max_request_pixels"), type=click.IntRange(min=1),
              envvar="INPAINT_MAX_REQUEST_PIXELS", help="Most pixels (N x H x W) in one request.")
@click.option("--memory-budget-mib", default=_default("memory_budget_mib"), type=click.IntRange(min=64),
              envvar="INPAINT_MEMORY_BUDGET_MIB",
              help="Memory all requests in flight may hold together; each reserves its cost before spending it, "
                   "and what does not fit waits up to 2 s, then gets RESOURCE_EXHAUSTED (429). Size it with "
                   "the pod's memory limit (README, Memory and limits).")
@click.option("--memory-share", default=_default("memory_share"), type=click.FloatRange(0.05, 1.0),
              envvar="INPAINT_MEMORY_SHARE",
              help="The most of the budget one request may hold; a request costing more gets "
                   "RESOURCE_EXHAUSTED (413), and the rest stays for the others.")
@click.option("--max-inflight-pixels", default=None, type=click.IntRange(min=1), hidden=True,
              envvar="INPAINT_MAX_INFLIGHT_PIXELS", help="Replaced by --memory-budget-mib; accepted and ignored.")
@click.option("--max-request-bytes", default=_default("max_request_bytes"), type=click.IntRange(min=1024),
              envvar="INPAINT_MAX_REQUEST_BYTES",
              help="Largest message, gRPC and REST [default: gRPC 4 bytes per --max-request-pixels (uint8; float32 "
                   "up to --tile-above-pixels), REST 40 bytes per --tile-above-pixels (JSON is for small images), "
                   "+ 1 MiB]. A gRPC predict holds twice this from the memory budget while its message arrives, "
                   "so gRPC's is at most half of what one request may hold.")
@click.option("--tiling", default=_default("tiling"), type=click.Choice(TILING_MODES), envvar="INPAINT_TILING",
              help="auto: images over --tile-above-pixels run in windows around their holes (memory bounded by "
                   "the window batch); always; off: every image whole.")
@click.option("--tile-above-pixels", default=_default("tile_above_pixels"), type=click.IntRange(min=4096),
              envvar="INPAINT_TILE_ABOVE_PIXELS",
              help="Images up to this size run whole; the most pixels in one model run.")
@click.option("--tile-batch", default=_default("tile_batch"), type=click.IntRange(min=1), envvar="INPAINT_TILE_BATCH",
              help="Windows (256 x 256) per model run.")
@click.option("--device", default=_default("device"), type=click.Choice(DEVICES), envvar="INPAINT_DEVICE",
              help="auto: CUDA when it really works, else CPU.")
@click.option("--intra-op-threads", default=_default("intra_op_threads"), type=click.IntRange(min=0), envvar="INPAINT_INTRA_OP_THREADS",
              help="ONNX Runtime threads per model run (0: ORT's choice).")
@click.option("--compute-threads", default=_default("compute_threads"), type=click.IntRange(min=1),
              envvar="INPAINT_COMPUTE_THREADS",
              help="Model runs at once when batching is off (each holds at most --tile-above-pixels).")
@click.option("--drain-seconds", default=_default("drain_seconds"), type=click.FloatRange(min=0), envvar="INPAINT_DRAIN_SECONDS",
              help="On SIGTERM, how long queued and in-flight requests get to finish.")
@click.option("--cors-origin", default=None, callback=_origin, envvar="INPAINT_CORS_ORIGIN",
              help="Let web pages from this origin (https://app.example.com, or *) call the REST API.")
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
              envvar="INPAINT_LOG_LEVEL", help="Logging level.")
def main(model_base_path: Path, model_name: str, host: str, port: int, rest_port: int, rest_api_port: int | None,
         rest_timeout_ms: int, model_version_policy: str,
         file_system_poll_wait_seconds: float, enable_batching: bool, max_batch_size: int,
         batch_timeout_micros: int, max_enqueued_batches: int, num_batch_threads: int,
         batching_parameters_file: Path | None, max_pixels: int, max_images_per_request: int,
         max_request_pixels: int, memory_budget_mib: int, memory_share: float, max_inflight_pixels: int | None,
         max_request_bytes: int | None, tiling: str,
         tile_above_pixels: int, tile_batch: int, device: str,
         intra_op_threads: int, compute_threads: int, drain_seconds: float, cors_origin: str | None,
         log_level: str) -> None:
    """Serve MODEL_BASE_PATH's ONNX versions over TF Serving's gRPC and REST APIs, and a web page at / on the
    REST port."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        batching = BatchingOptions(max_batch_size, batch_timeout_micros, max_enqueued_batches, num_batch_threads)
        if batching_parameters_file is not None:
            batching = BatchingOptions.from_file(batching_parameters_file, max_batch_size=max_batch_size,
                                                 batch_timeout_micros=batch_timeout_micros,
                                                 max_enqueued_batches=max_enqueued_batches,
                                                 num_batch_threads=num_batch_threads)
            enable_batching = True
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    rest_port = _rest_port(rest_port, rest_api_port)
    if max_inflight_pixels is not None:
        logging.getLogger(__name__).warning("--max-inflight-pixels is replaced by --memory-budget-mib (memory, "
                                            "not pixels, is what runs out); ignored")
    if tiling == "off" and max_pixels > tile_above_pixels:
        raise click.ClickException(f"--tiling off runs every image whole: --max-pixels ({max_pixels}) must not "
                                   f"exceed --tile-above-pixels ({tile_above_pixels}), which bounds a model run's "
                                   "memory")
    config = ServerConfig(
        model_base_path=model_base_path, model_name=model_name, host=host, port=port,
        rest_port=None if rest_port == -1 else rest_port, version_policy=model_version_policy,
        poll_seconds=file_system_poll_wait_seconds, enable_batching=enable_batching, batching=batching,
        max_pixels=max_pixels, max_images_per_request=max_images_per_request,
        max_request_pixels=max_request_pixels, memory_budget_mib=memory_budget_mib, memory_share=memory_share,
        max_request_bytes=max_request_bytes, tiling=tiling, tile_above_pixels=tile_above_pixels,
        tile_batch=tile_batch, device=device,
        intra_op_threads=intra_op_threads, compute_threads=compute_threads, drain_seconds=drain_seconds,
        cors_origin=cors_origin, rest_timeout_seconds=rest_timeout_ms / 1000 or None,
    )
    try:
        asyncio.run(serve(config))
    except OSError as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:  # Ctrl+C before serve() handles it: nothing was started yet
        sys.exit(130)


if __name__ == "__main__":
    main()
