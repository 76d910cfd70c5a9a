"""``inpaint-serve``: the ONNX Runtime model server, with TF Serving's flags in dashed form."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from pathlib import Path

import click

from .batching import BatchingOptions
from .errors import FailedPrecondition, InvalidConfig
from .models import VersionPolicy
from .runtime import DEVICES
from .server import ServerConfig, serve
from .shutdown import exit_once_threads_end
from inpaint.core.envvars import Command, ToolVariables
from inpaint.core.tiling import TILING_MODES

_DEFAULT_BATCHING = BatchingOptions()

# INPAINT_SERVE_<OPTION> for every option (--memory-budget-mib: INPAINT_SERVE_MEMORY_BUDGET_MIB). The names read
# before issue 24 are refused when set, with the new one: the unprefixed INPAINT_* ones, and MODEL_BASE_PATH and
# MODEL_NAME, whose MODEL_BASE_PATH meant the model's own folder where TF Serving's image means its parent
# (docs/deployment.md, "Images").
OLD_ENVVARS = {"MODEL_BASE_PATH": "--model-base-path", "MODEL_NAME": "--model-name",
               "INPAINT_REST_TIMEOUT_MS": "--rest_api_timeout_in_ms",
               "INPAINT_VERSION_POLICY": "--model-version-policy",
               "INPAINT_POLL_SECONDS": "--file-system-poll-wait-seconds"}
OLD_ENVVARS |= {f"INPAINT_{name}": "--" + name.lower().replace("_", "-") for name in (
    "HOST", "PORT", "REST_PORT", "ENABLE_BATCHING", "MAX_BATCH_SIZE", "BATCH_TIMEOUT_MICROS", "MAX_ENQUEUED_BATCHES",
    "NUM_BATCH_THREADS", "BATCHING_PARAMETERS_FILE", "MAX_PIXELS", "MAX_IMAGES_PER_REQUEST", "MAX_REQUEST_PIXELS",
    "MEMORY_BUDGET_MIB", "MEMORY_SHARE", "MAX_INFLIGHT_PIXELS", "MAX_REQUEST_BYTES", "TILING", "TILE_ABOVE_PIXELS",
    "TILE_BATCH", "DEVICE", "INTRA_OP_THREADS", "COMPUTE_THREADS", "DRAIN_SECONDS", "CORS_ORIGIN", "LOG_LEVEL")}
VARIABLES = ToolVariables("inpaint-serve", "INPAINT_SERVE_")
VARIABLES.rename(OLD_ENVVARS)
option = VARIABLES.option


def _default(name: str):
    """``ServerConfig``'s default for a field: the one place server defaults are set."""
    return ServerConfig.__dataclass_fields__[name].default


def _help(name: str) -> str:
    """``ServerConfig``'s help for a field, where the field carries it."""
    return ServerConfig.__dataclass_fields__[name].metadata["help"]


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


@click.command(cls=Command, variables=VARIABLES,
               context_settings={"show_default": True, "max_content_width": 110})
@option("--model-base-path", "--model_base_path", "model_base_path",
        type=click.Path(file_okay=False, path_type=Path),
        help="Model repository: BASE/<version>/model.onnx (one model; or --model-config-file).")
@option("--model-config-file", "--model_config_file", "model_config_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="TF Serving's model server config (ModelServerConfig text format): several models, their version "
             "policies and version labels, in place of --model-base-path.")
@option("--model-config-file-poll-wait-seconds", "--model_config_file_poll_wait_seconds",
        "model_config_file_poll_wait_seconds", default=_default("config_poll_seconds"),
        type=click.FloatRange(min=0),
        help="How often to re-read --model-config-file and apply its changes (0: read it once).")
@option("--allow-version-labels-for-unavailable-models", "--allow_version_labels_for_unavailable_models",
        "allow_version_labels_for_unavailable_models", type=click.BOOL, is_flag=False, flag_value=True,
        default=_default("allow_unavailable_labels"),
        help="Let a new version label point at a version that is not AVAILABLE yet (as TF Serving's flag).")
@option("--model-name", "--model_name", "model_name", default=_default("model_name"), help="Name clients ask for.")
@option("--host", default=_default("host"), help="Address to listen on.")
@option("--port", default=_default("port"), callback=_port, help="gRPC port (0: any free port).")
@option("--rest-port", default=_default("rest_port"), callback=_port,
        help="REST and metrics port (0: any free port, -1: no REST).")
@option("--rest_api_port", "rest_api_port", type=click.IntRange(0, 65535), default=None,
        help="TF Serving's spelling of the REST port, with its meaning: 0 turns REST off.")
@option("--rest_api_timeout_in_ms", "rest_timeout_ms", type=click.IntRange(min=0), default=0,
        help="Deadline of a REST predict, as in TF Serving (0: none).")
@option("--model-version-policy", default=_default("version_policy"), callback=_policy,
        help="Versions to serve: latest:N, all or specific:1,3.")
@option("--file-system-poll-wait-seconds", "--file_system_poll_wait_seconds", "file_system_poll_wait_seconds",
        default=_default("poll_seconds"), type=click.FloatRange(min=0.05),
        help="How often to look for new or removed versions.")
@option("--enable-batching/--no-enable-batching", default=_default("enable_batching"),
        help="Merge concurrent same-size requests into one model run.")
@option("--max-batch-size", default=_DEFAULT_BATCHING.max_batch_size, type=click.IntRange(min=1),
        help="Most images in one model run.")
@option("--batch-timeout-micros", default=_DEFAULT_BATCHING.batch_timeout_micros, type=click.IntRange(min=0),
        help="Longest a batch waits to fill.")
@option("--max-enqueued-batches", default=_DEFAULT_BATCHING.max_enqueued_batches,
        type=click.IntRange(min=1),
        help="Batches that may wait; beyond it requests get RESOURCE_EXHAUSTED.")
@option("--num-batch-threads", default=_DEFAULT_BATCHING.num_batch_threads, type=click.IntRange(min=1),
        help="Batches run at once.")
@option("--batching-parameters-file", "--batching_parameters_file", "batching_parameters_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="TF Serving's batching parameters text file; overrides the batching flags it sets.")
@option("--max-pixels", default=_default("max_pixels"), type=click.IntRange(min=1),
        help="Largest H x W per image.")
@option("--max-images-per-request", default=_default("max_images_per_request"), type=click.IntRange(min=1),
        help="Most images (N) in one request.")
@option("--max-request-pixels", default=_default("max_request_pixels"), type=click.IntRange(min=1),
        help="Most pixels (N x H x W) in one request.")
@option("--memory-budget-mib", default=_default("memory_budget_mib"), type=click.IntRange(min=64),
        help="Memory all requests in flight may hold together; each reserves its cost before spending it, "
             "and what does not fit waits up to 2 s, then gets RESOURCE_EXHAUSTED (429). Size it with "
             "the pod's memory limit (README, Memory and limits).")
@option("--memory-share", default=_default("memory_share"), type=click.FloatRange(0.05, 1.0),
        help="The most of the budget one request may hold; a request costing more gets "
             "RESOURCE_EXHAUSTED (413), and the rest stays for the others.")
@option("--max-inflight-pixels", default=None, type=click.IntRange(min=1), hidden=True,
        help="Replaced by --memory-budget-mib; accepted and ignored.")
@option("--max-request-bytes", default=_default("max_request_bytes"), type=click.IntRange(min=1024),
        help="Largest message, gRPC and REST [default: gRPC 4 bytes per --max-request-pixels (uint8; float32 "
             "up to --tile-above-pixels), REST 40 bytes per --tile-above-pixels (JSON is for small images), "
             "+ 1 MiB]. A gRPC predict holds twice this from the memory budget while its message arrives, "
             "so gRPC's is at most half of what one request may hold.")
@option("--tiling", default=_default("tiling"), type=click.Choice(TILING_MODES),
        help="auto: images over --tile-above-pixels run in windows around their holes (memory bounded by "
             "the window batch); always; off: every image whole.")
@option("--tile-above-pixels", default=_default("tile_above_pixels"), type=click.IntRange(min=4096),
        help="Images up to this size run whole; the most pixels in one model run.")
@option("--tile-batch", default=_default("tile_batch"), type=click.IntRange(min=1),
        help="Windows (256 x 256) per model run.")
@option("--device", default=_default("device"), type=click.Choice(DEVICES),
        help="auto: CUDA when it really works, else CPU.")
@option("--intra-op-threads", default=_default("intra_op_threads"), type=click.IntRange(min=0),
        help="ONNX Runtime threads per model run (0: ORT's choice).")
@option("--compute-threads", default=_default("compute_threads"), type=click.IntRange(min=1),
        help="Model runs at once when batching is off (each holds at most --tile-above-pixels).")
@option("--drain-seconds", default=_default("drain_seconds"), type=click.FloatRange(min=0),
        help="On SIGTERM (or SIGINT, SIGHUP), how long queued and in-flight requests get to finish.")
@option("--close-seconds", default=_default("close_seconds"), type=click.FloatRange(min=0), help=_help("close_seconds"))
@option("--rest-idle-seconds", default=_default("rest_idle_seconds"), type=click.FloatRange(min=0.1),
        help=_help("rest_idle_seconds"))
@option("--rest-body-seconds", default=_default("rest_body_seconds"), type=click.FloatRange(min=0.1),
        help=_help("rest_body_seconds"))
@option("--cors-origin", default=None, callback=_origin,
        help="Let web pages from this origin (https://app.example.com, or *) call the REST API.")
@option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
        help="Logging level.")
def main(model_base_path: Path | None, model_config_file: Path | None, model_config_file_poll_wait_seconds: float,
         allow_version_labels_for_unavailable_models: bool, model_name: str, host: str, port: int, rest_port: int,
         rest_api_port: int | None,
         rest_timeout_ms: int, model_version_policy: str,
         file_system_poll_wait_seconds: float, enable_batching: bool, max_batch_size: int,
         batch_timeout_micros: int, max_enqueued_batches: int, num_batch_threads: int,
         batching_parameters_file: Path | None, max_pixels: int, max_images_per_request: int,
         max_request_pixels: int, memory_budget_mib: int, memory_share: float, max_inflight_pixels: int | None,
         max_request_bytes: int | None, tiling: str,
         tile_above_pixels: int, tile_batch: int, device: str,
         intra_op_threads: int, compute_threads: int, drain_seconds: float, close_seconds: float,
         rest_idle_seconds: float, rest_body_seconds: float, cors_origin: str | None,
         log_level: str) -> None:
    """Serve MODEL_BASE_PATH's ONNX versions (or the models of --model-config-file) over TF Serving's gRPC and
    REST APIs, and a web page at / on the REST port."""
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
    if (model_base_path is None) == (model_config_file is None):
        raise click.ClickException("give --model-base-path (one model) or --model-config-file (several), "
                                   f"{'not both' if model_config_file else 'one of them'}")
    if max_inflight_pixels is not None:
        logging.getLogger(__name__).warning("--max-inflight-pixels is replaced by --memory-budget-mib (memory, "
                                            "not pixels, is what runs out); ignored")
    if tiling == "off" and max_pixels > tile_above_pixels:
        raise click.ClickException(f"--tiling off runs every image whole: --max-pixels ({max_pixels}) must not "
                                   f"exceed --tile-above-pixels ({tile_above_pixels}), which bounds a model run's "
                                   "memory")
    config = ServerConfig(
        model_base_path=model_base_path, model_name=model_name, model_config_file=model_config_file,
        config_poll_seconds=model_config_file_poll_wait_seconds,
        allow_unavailable_labels=allow_version_labels_for_unavailable_models, host=host, port=port,
        rest_port=None if rest_port == -1 else rest_port, version_policy=model_version_policy,
        poll_seconds=file_system_poll_wait_seconds, enable_batching=enable_batching, batching=batching,
        max_pixels=max_pixels, max_images_per_request=max_images_per_request,
        max_request_pixels=max_request_pixels, memory_budget_mib=memory_budget_mib, memory_share=memory_share,
        max_request_bytes=max_request_bytes, tiling=tiling, tile_above_pixels=tile_above_pixels,
        tile_batch=tile_batch, device=device,
        intra_op_threads=intra_op_threads, compute_threads=compute_threads, drain_seconds=drain_seconds,
        close_seconds=close_seconds, rest_idle_seconds=rest_idle_seconds, rest_body_seconds=rest_body_seconds,
        cors_origin=cors_origin, rest_timeout_seconds=rest_timeout_ms / 1000 or None,
    )
    try:
        asyncio.run(serve(config))
    except (OSError, InvalidConfig, FailedPrecondition) as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:  # Ctrl+C before serve() handles it: nothing was started yet
        sys.exit(130)
    exit_once_threads_end()


if __name__ == "__main__":
    main()
