"""``inpaint-serve``: the ONNX Runtime model server, with TF Serving's flags in dashed form.

Its options are built from ``ServerConfig`` (and ``BatchingOptions``): each field that carries a ``Setting``
(serving/settings.py) is one option, with the field's name, type and default and the setting's flags, help
and bounds. The few options that are not a field (TF Serving's --rest_api_port and --rest_api_timeout_in_ms,
whose units differ, the batching parameters file, the log level) are declared below ``main``'s decorator.
"""

from __future__ import annotations

from . import early_signals

early_signals.remember()  # before the slow imports below: a stop while they run is acted on, not lost

import asyncio  # noqa: E402
import dataclasses
import logging
import sys
import types
import typing
from pathlib import Path

import click

from .batching import BatchingOptions
from .errors import FailedPrecondition, InvalidConfig
from .server import ServerConfig, serve
from .settings import Setting
from .shutdown import exit_once_threads_end
from inpaint.core.envvars import Command, ToolVariables

logger = logging.getLogger(__name__)

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


# -- options built from the settings ------------------------------------------------------------------------

def setting_fields(config: type) -> list[tuple[dataclasses.Field, typing.Any]]:
    """(field, type) of each field of ``config`` that carries a ``Setting``, in field order; a field whose type is
    a dataclass (``ServerConfig.batching``) gives its own in its place."""
    hints = typing.get_type_hints(config)
    found = []
    for field in dataclasses.fields(config):
        if dataclasses.is_dataclass(hints[field.name]):
            found += setting_fields(hints[field.name])
        elif "setting" in field.metadata:
            found.append((field, hints[field.name]))
    return found


def setting_options(config: type):
    """A decorator adding one option for each of ``setting_fields(config)``."""
    def decorate(function):
        for field, hint in reversed(setting_fields(config)):
            function = option(*declarations(field, hint), **attributes(field, hint))(function)
        return function

    return decorate


def declarations(field: dataclasses.Field, hint) -> list[str]:
    spec: Setting = field.metadata["setting"]
    flags = spec.flags(field.name)
    if value_type(hint) is bool and not spec.tf_serving:  # --enable-batching/--no-enable-batching
        flags = [f"{flags[0]}/--no-{flags[0][2:]}"]
    return [*flags, field.name]


def attributes(field: dataclasses.Field, hint) -> dict:
    spec: Setting = field.metadata["setting"]
    attrs = {"default": field.default, "help": spec.help, "hidden": spec.hidden, "type": click_type(spec, hint)}
    if value_type(hint) is bool and spec.tf_serving:  # TF Serving's --flag or --flag=true
        attrs |= {"is_flag": False, "flag_value": True}
    if spec.check is not None:
        attrs["callback"] = checked(spec.check)
    return attrs


def value_type(hint) -> type:
    """``int`` for ``int | None``."""
    if isinstance(hint, types.UnionType):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def click_type(spec: Setting, hint) -> click.ParamType:
    kind = value_type(hint)
    if spec.choices:
        return click.Choice(spec.choices)
    if spec.path == "folder":
        return click.Path(file_okay=False, path_type=Path)
    if spec.path == "file":
        return click.Path(exists=True, dir_okay=False, path_type=Path)
    bounded = spec.min is not None or spec.max is not None
    if kind is int:
        return click.IntRange(spec.min, spec.max) if bounded else click.INT
    if kind is float:
        return click.FloatRange(spec.min, spec.max) if bounded else click.FLOAT
    return click.BOOL if kind is bool else click.STRING


def checked(check):
    """A click callback: ``check`` refuses a value with ValueError, shown as click's usage error."""
    def callback(ctx, param, value):
        if value is not None:
            try:
                check(value)
            except ValueError as error:
                raise click.BadParameter(str(error)) from None
        return value

    return callback


# -- what is not a field -------------------------------------------------------------------------------------

def _rest_port(rest_port: int, rest_api_port: int | None) -> int | None:
    """``--rest-port`` (-1: none), or TF Serving's ``--rest_api_port`` (0: none) in its place."""
    if rest_api_port is not None:
        source = click.get_current_context().get_parameter_source("rest_port")
        if source not in (None, click.core.ParameterSource.DEFAULT):
            raise click.ClickException("give --rest-port or TF Serving's --rest_api_port, not both")
        rest_port = -1 if rest_api_port == 0 else rest_api_port
    return None if rest_port == -1 else rest_port


def _batching(settings: dict, parameters_file: Path | None) -> BatchingOptions:
    """The batching flags, or TF Serving's batching parameters file over them (which also enables batching)."""
    flags = {field.name: settings.pop(field.name) for field, _ in setting_fields(BatchingOptions)}
    try:
        if parameters_file is None:
            return BatchingOptions(**flags)
        settings["enable_batching"] = True
        return BatchingOptions.from_file(parameters_file, **flags)
    except ValueError as error:
        raise click.ClickException(str(error)) from None


def _check(config: ServerConfig) -> None:
    if (config.model_base_path is None) == (config.model_config_file is None):
        raise click.ClickException("give --model-base-path (one model) or --model-config-file (several), "
                                   f"{'not both' if config.model_config_file else 'one of them'}")
    if config.tiling == "off" and config.max_pixels > config.tile_above_pixels:
        raise click.ClickException(f"--tiling off runs every image whole: --max-pixels ({config.max_pixels}) must "
                                   f"not exceed --tile-above-pixels ({config.tile_above_pixels}), which bounds a "
                                   "model run's memory")


@click.command(cls=Command, variables=VARIABLES,
               context_settings={"show_default": True, "max_content_width": 110})
@setting_options(ServerConfig)
@option("--rest_api_port", "rest_api_port", type=click.IntRange(0, 65535), default=None,
        help="TF Serving's spelling of the REST port, with its meaning: 0 turns REST off.")
@option("--rest_api_timeout_in_ms", "rest_timeout_ms", type=click.IntRange(min=0), default=0,
        help="Deadline of a REST predict, as in TF Serving (0: none).")
@option("--batching-parameters-file", "--batching_parameters_file", "batching_parameters_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="TF Serving's batching parameters text file; overrides the batching flags it sets.")
@option("--max-inflight-pixels", default=None, type=click.IntRange(min=1), hidden=True,
        help="Replaced by --memory-budget-mib; accepted and ignored.")
@option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
        help="Logging level.")
def main(rest_api_port: int | None, rest_timeout_ms: int, batching_parameters_file: Path | None,
         max_inflight_pixels: int | None, log_level: str, **settings) -> None:
    """Serve MODEL_BASE_PATH's ONNX versions (or the models of --model-config-file) over TF Serving's gRPC and
    REST APIs, and a web page at / on the REST port."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    batching = _batching(settings, batching_parameters_file)
    settings["rest_port"] = _rest_port(settings["rest_port"], rest_api_port)
    if max_inflight_pixels is not None:
        logger.warning("--max-inflight-pixels is replaced by --memory-budget-mib (memory, not pixels, is what runs "
                       "out); ignored")
    config = ServerConfig(**settings, batching=batching, rest_timeout_seconds=rest_timeout_ms / 1000 or None)
    _check(config)
    if early_signals.received:  # stopped before anything started
        sys.exit(128 + early_signals.received[0])
    try:
        asyncio.run(serve(config))
    except (OSError, InvalidConfig, FailedPrecondition) as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:  # Ctrl+C before serve() handles it: nothing was started yet
        sys.exit(130)
    exit_once_threads_end()


if __name__ == "__main__":
    main()
