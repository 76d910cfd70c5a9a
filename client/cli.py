"""``inpaint-client``: inpaint files, make test masks, and inspect a server, from the shell."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import click
import numpy as np

from inpaint.core.envvars import Group, ToolVariables
from inpaint.core.images import (IMAGE_SUFFIXES, ImageError, as_image, as_mask, decode_image, encoded_size,
                                 write_encoded, write_image)
from inpaint.core.masks import MASK_KINDS, generate_mask
from inpaint.core.tiling import TILING_MODES, TilingOptions

from ._client import InpaintClient
from .loadtest import PROTOCOLS
from ._errors import DeadlineExceeded, InpaintError, InvalidInput, ModelNotFound, ServerUnavailable


SEND_MODES = ("auto", "bytes", "pixels")


class SendMode(click.Choice):
    """--send auto|bytes|pixels; the old value files is read as bytes, with a warning."""

    def convert(self, value, param, ctx):
        if value == "files":
            click.echo("Warning: --send files is now --send bytes (the serving_bytes signature)", err=True)
            value = "bytes"
        return super().convert(value, param, ctx)


# INPAINT_CLIENT_<OPTION> for the options before the subcommand (--target: INPAINT_CLIENT_TARGET), and
# INPAINT_CLIENT_<SUBCOMMAND>_<OPTION> for a subcommand's (loadtest --batch-size:
# INPAINT_CLIENT_LOADTEST_BATCH_SIZE), click's own rule. The names read before issue 24 are refused when set.
CLIENT = ToolVariables("inpaint-client", "INPAINT_CLIENT_")
PREDICT, MASK, METADATA, STATUS, HEALTH, LOADTEST = (CLIENT.subcommand(name) for name in (
    "predict", "mask", "metadata", "status", "health", "loadtest"))
CLIENT.rename({f"INPAINT_{flag[2:].replace('-', '_').upper()}": flag for flag in (
    "--target", "--model", "--version", "--timeout", "--tls", "--ca-cert", "--verbose")})
PREDICT.rename({"INPAINT_OUTPUT": "--output", "INPAINT_MASK_SUFFIX": "--mask-suffix",
                "INPAINT_BATCH_SIZE": "--batch-size", "INPAINT_TILING": "--tiling",
                "INPAINT_TILE_ABOVE_PIXELS": "--tile-above-pixels", "INPAINT_SEND": "--send"})
MASK.rename({"INPAINT_MASK_KIND": "--kind", "INPAINT_SEED": "--seed", "INPAINT_MASK_OUTPUT": "--output"})
METADATA.rename({"INPAINT_METADATA_JSON": "--json"})
STATUS.rename({"INPAINT_STATUS_JSON": "--json"})
HEALTH.rename({"INPAINT_HEALTH_WAIT": "--wait", "INPAINT_HEALTH_SERVICE": "--service",
               "INPAINT_HEALTH_JSON": "--json"})
LOADTEST.rename({f"INPAINT_{flag[2:].replace('-', '_').upper()}": flag for flag in (
    "--concurrency", "--rate", "--arrival", "--duration", "--warmup", "--max-requests", "--batch-size",
    "--image-size", "--mask-kind", "--images", "--protocol", "--metrics-url", "--report", "--seed")})


class Settings:
    def __init__(self, target, model, version, timeout, tls, ca_cert, verbose, label=None):
        self.target, self.model, self.version, self.timeout = target, model, version, timeout
        self.tls, self.ca_cert, self.verbose, self.label = tls, ca_cert, verbose, label
        self.tiling = TilingOptions()

    def client(self) -> InpaintClient:
        return InpaintClient(self.target, model=self.model, version=self.version, label=self.label,
                             timeout=self.timeout, tls=self.tls, ca_cert=self.ca_cert, tiling=self.tiling)


def fail(settings: Settings, error: Exception):
    """One line and exit 1; the traceback only with --verbose."""
    if settings.verbose:
        raise error
    raise click.ClickException(str(error).splitlines()[0] if str(error) else type(error).__name__) from None


def ask(settings: Settings, call):
    """One call on a fresh client; an InpaintError becomes the one-line CLI error."""
    try:
        with settings.client() as client:
            return call(client)
    except InpaintError as error:
        fail(settings, error)


def _target(ctx, param, value: str) -> str:
    if not value or value.startswith(":") or value.endswith(":"):
        raise click.BadParameter("give HOST:PORT, e.g. localhost:8500")
    return value


@click.group(cls=Group, variables=CLIENT, context_settings={"show_default": True})
@CLIENT.option("--target", default="localhost:8500", callback=_target,
              help="Server address HOST:PORT (TF Serving or inpaint-serve gRPC).")
@CLIENT.option("--model", default="inpaint", help="Model name to ask for.")
@CLIENT.option("--version", "model_version", type=click.IntRange(min=1), default=None,
              help="Model version [default: the latest available].")
@CLIENT.option("--label", default=None,
              help="Model version label (stable, canary: the server's config maps it to a version), instead of "
                   "--version.")
@CLIENT.option("--timeout", type=click.FloatRange(min=0.001), default=30.0,
              help="Deadline per call in seconds; UNAVAILABLE is retried within it.")
@CLIENT.option("--tls", is_flag=True, help="Use TLS.")
@CLIENT.option("--ca-cert", type=click.Path(exists=True, dir_okay=False),
              help="PEM root certificate for TLS (implies --tls).")
@CLIENT.option("-v", "--verbose", is_flag=True, help="Show details and tracebacks.")
@click.pass_context
def main(ctx, target, model, model_version, label, timeout, tls, ca_cert, verbose):
    """Call an inpainting model served by TF Serving or inpaint-serve."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr)
    if model_version is not None and label is not None:
        raise click.UsageError("give --version or --label, not both")
    ctx.obj = Settings(target, model, model_version, timeout, tls, ca_cert, verbose, label)


def pair_inputs(paths: tuple[Path, ...], mask_suffix: str) -> list[tuple[Path, Path]]:
    """IMAGE MASK pairs, or every x.png in one folder with its x<suffix>.png."""
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        pairs = []
        for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            if image.stem.endswith(mask_suffix) or ".inpainted" in image.name:
                continue
            masks = [m for m in folder.glob(f"{image.stem}{mask_suffix}.*") if m.suffix.lower() in IMAGE_SUFFIXES]
            if not masks:
                raise InvalidInput(f"{image} has no mask {image.stem}{mask_suffix}.png in {folder}")
            pairs.append((image, masks[0]))
        if not pairs:
            raise InvalidInput(f"{folder} holds no images with masks named like x{mask_suffix}.png")
        return pairs
    if len(paths) % 2:
        unpaired = paths[-1]
        raise InvalidInput(f"give IMAGE MASK pairs (or one folder); got {len(paths)} path{'s' * (len(paths) > 1)}, "
                           f"so {unpaired} has no mask: make one with `inpaint-client mask {unpaired}` (writes "
                           f"{unpaired.with_name(unpaired.stem + '_mask.png')}) or paint one in the web page")
    return [(paths[i], paths[i + 1]) for i in range(0, len(paths), 2)]


def _output(ctx, param, value: Path | None) -> Path | None:
    """``-o``: a file whose suffix is an image format, or a folder (no suffix, or one that exists)."""
    if value is None or value.is_dir() or not value.suffix or value.suffix.lower() in IMAGE_SUFFIXES:
        return value
    # A one-line error with exit 1, like every other bad input of this CLI, rather than click's usage block.
    raise click.ClickException(f"-o {value}: '{value.suffix}' is not an image format; give a file ending in one "
                               f"of {', '.join(IMAGE_SUFFIXES)}, or a folder (no suffix, or an existing one)")


def output_path(image: Path, output: Path | None, many: bool) -> Path:
    if output is None:
        return image.with_name(f"{image.stem}.inpainted.png")
    if many or output.is_dir() or not output.suffix:
        return output / f"{image.stem}.inpainted.png"
    return output


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@PREDICT.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              callback=_output,
              help="Output image file (one pair; its suffix picks the format) or folder (no suffix, or an "
                   "existing folder) [default: NAME.inpainted.png beside each image].")
@PREDICT.option("--mask-suffix", default="_mask",
              help="In folder mode, x.png pairs with x<suffix>.png.")
@PREDICT.option("--batch-size", type=click.IntRange(min=1), default=8,
              help="Images per request (same-size images are batched).")
@PREDICT.option("--tiling", type=click.Choice(TILING_MODES), default=TilingOptions.mode,
              help="auto: images over --tile-above-pixels are sent as windows around their holes (any server); "
                   "off: whole images (inpaint-serve still tiles them itself).")
@PREDICT.option("--tile-above-pixels", type=click.IntRange(min=4096), default=TilingOptions.tile_above_pixels,
                help="Images up to this size are sent whole.")
@PREDICT.option("--send", type=SendMode(SEND_MODES), default="auto",
                help="bytes: the image and mask files as they are (the model's serving_bytes signature; PNG "
                     "back); pixels: decoded arrays; auto: bytes when the model takes them and the image is sent "
                     "whole, pixels otherwise.")
@click.pass_obj
def predict(settings: Settings, paths, output, mask_suffix, batch_size, tiling, tile_above_pixels, send):
    """Inpaint IMAGE MASK [IMAGE MASK ...], or a folder of x.png + x_mask.png."""
    settings.tiling = TilingOptions(tiling, tile_above_pixels)
    try:
        pairs = pair_inputs(paths, mask_suffix)
        check_masks(pairs)
        chunks = [pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)]
        with settings.client() as client, click.progressbar(
                length=len(pairs), label="inpainting", file=sys.stderr, hidden=len(pairs) < 2) as bar:
            takes_bytes = send == "bytes" or (send == "auto" and client.takes_bytes())
            for chunk in chunks:
                files = {pair: _read_pair(pair) for pair in chunk if takes_bytes}
                if send == "auto":
                    files = {pair: data for pair, data in files.items() if _sent_whole(data[0], settings.tiling)}
                if files:
                    results = client.inpaint_bytes([d[0] for d in files.values()], [d[1] for d in files.values()])
                    for (image, _), png in zip(files, results):
                        _write_result(output_path(image, output, len(pairs) > 1), png=png)
                rest = [pair for pair in chunk if pair not in files]
                if rest:
                    results = client.inpaint_batch([p[0] for p in rest], [p[1] for p in rest], batch_size=batch_size)
                    for (image, _), result in zip(rest, results):
                        _write_result(output_path(image, output, len(pairs) > 1), pixels=result)
                bar.update(len(chunk))
    except (InpaintError, ImageError) as error:
        fail(settings, error)


def _read_pair(pair: tuple[Path, Path]) -> tuple[bytes, bytes]:
    files = []
    for path, what in zip(pair, ("image", "mask")):
        if not path.is_file():
            raise ImageError(f"{what} {path} does not exist")
        try:
            files.append(path.read_bytes())
        except OSError as error:
            raise ImageError(f"cannot read {what} {path}: {error.strerror or error}") from None
    return files[0], files[1]


def check_masks(pairs: list[tuple[Path, Path]]) -> None:
    """Every mask read by the mask rule before anything is sent: a photo or an all-hole mask is refused here,
    whichever way the pairs then travel (and TF Serving's serving_default would not refuse them)."""
    for _, mask_path in pairs:
        as_mask(mask_path)


def _sent_whole(image: bytes, tiling: TilingOptions) -> bool:
    """Whether ``auto`` sends this file as it is: a format the server decodes, and no windows needed."""
    try:
        _, width, height = encoded_size(image)
    except ImageError:
        return False  # TIFF, say: decoded here and sent as pixels
    return not tiling.is_tiled(height, width)


def _write_result(target: Path, *, png: bytes | None = None, pixels: np.ndarray | None = None) -> None:
    """A returned PNG is written as it came when the target is a PNG; anything else is encoded here."""
    if png is not None and target.suffix.lower() == ".png":
        write_encoded(target, png)
    else:
        write_image(target, decode_image(png, 2**40) if pixels is None else pixels)
    click.echo(f"wrote {target}")


@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@MASK.option("--kind", type=click.Choice(MASK_KINDS), default="strokes",
             help="Mask generator (the ones training and evaluation use).")
@MASK.option("--seed", type=int, default=0, help="Seed: the same seed, the same mask.")
@MASK.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Mask file [default: NAME_mask.png beside the image].")
@click.pass_obj
def mask(settings: Settings, image: Path, kind: str, seed: int, output: Path | None):
    """Write a test mask the size of IMAGE: black, holes white (255), as the mask rule reads it (docs/protocols.md)."""
    try:
        height, width = as_image(image).shape[:2]
        holes = generate_mask(kind, height, width, np.random.default_rng(seed))
        target = output or image.with_name(f"{image.stem}_mask.png")
        write_image(target, holes * np.uint8(255))
    except ImageError as error:
        fail(settings, error)
    click.echo(f"wrote {target} ({holes.mean():.1%} hole)")


@main.command()
@METADATA.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def metadata(settings: Settings, as_json: bool):
    """The model's signature."""
    info = ask(settings, lambda client: client.metadata())
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"model {info['model']} version {info['version']}")
    for key, signature in info["signatures"].items():
        click.echo(f"signature {key} ({signature['method_name']})")
        for kind in ("inputs", "outputs"):
            for name, tensor in signature[kind].items():
                click.echo(f"  {kind[:-1]:6} {name:10} {tensor['dtype']:9} {tensor['shape']}")


@main.command()
@STATUS.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(settings: Settings, as_json: bool):
    """The model's versions and their states; exits 1 unless one is AVAILABLE.

    No version at all (say, an empty model base path) is a one-line error.
    Versions that exist but none AVAILABLE (loading, failed, unloaded) are
    listed, then a one-line error says so. --json prints the list (maybe
    empty) first in both cases; the error goes to stderr.
    """
    versions = ask(settings, lambda client: client.status())
    if as_json:
        click.echo(json.dumps(versions, indent=2))
    else:
        for entry in versions:
            error = f"  {entry['error']}" if entry["error"] else ""
            click.echo(f"version {entry['version']}: {entry['state']}{error}")
    model = f"model '{settings.model}'"
    if not versions:
        fail(settings, ModelNotFound(f"{model} has no versions at {settings.target}"))
    if not any(entry["state"] == "AVAILABLE" for entry in versions):
        missing = f"version {settings.version} of {model} is not AVAILABLE" if settings.version else \
            f"{model} has no AVAILABLE version"
        fail(settings, ServerUnavailable(f"{missing} at {settings.target}"))


@main.command()
@HEALTH.option("--service", default="", help="Health service name ('' = the whole server).")
@HEALTH.option("--wait", "wait_seconds", type=click.FloatRange(min=0), default=0,
              help="Poll until SERVING for at most this many seconds (a server starting, a model loading); "
                   "0: ask once.")
@HEALTH.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def health(settings: Settings, service: str, wait_seconds: float, as_json: bool):
    """grpc.health.v1 status; exits 1 unless SERVING (within --wait seconds)."""
    if wait_seconds:
        click.echo(f"waiting up to {wait_seconds:g} s for {serving_what(settings.target, service)} to be SERVING",
                   err=True)
        try:
            with settings.client() as client:
                state = wait_until_serving(client, service, wait_seconds, settings.timeout)
        except InpaintError as error:
            fail(settings, error)
    else:
        state = ask(settings, lambda client: client.health(service))
    click.echo(json.dumps({"service": service, "status": state}) if as_json else state)
    if state != "SERVING":
        sys.exit(1)


POLL_SECONDS = 0.5


def serving_what(target: str, service: str) -> str:
    return f"model {service!r} on {target}" if service else target


def wait_until_serving(client: InpaintClient, service: str, seconds: float, timeout: float) -> str:
    """SERVING once the server says so; ServerUnavailable naming the last answer when ``seconds`` pass first.

    Nobody listening yet, NOT_SERVING, UNAVAILABLE and a slow answer are waited out, and so is a model's
    service not found yet (a model that a config change adds has none until the server applies it); any
    other error ends the wait.
    """
    deadline = time.monotonic() + seconds
    waited_out = (ServerUnavailable, DeadlineExceeded, ModelNotFound) if service else (ServerUnavailable,
                                                                                         DeadlineExceeded)
    while True:
        left = deadline - time.monotonic()
        try:
            state = client.health(service, timeout=max(min(left, timeout), 0.001))
            last = state
        except waited_out as error:
            state, last = None, str(error)
        if state == "SERVING":
            return state
        if time.monotonic() + POLL_SECONDS >= deadline:
            raise ServerUnavailable(f"{serving_what(client.target, service)} was not SERVING within --wait "
                                    f"{seconds:g} s (last: {last}); see the server's log, or wait longer")
        time.sleep(POLL_SECONDS)


def _two_labels(ctx, param, value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    labels = tuple(label.strip() for label in value.split(","))
    if len(labels) != 2 or not all(labels) or labels[0] == labels[1]:
        raise click.BadParameter("give two different version labels: stable,canary")
    return labels


def _levels(kind):
    def parse(ctx, param, value):
        if value is None:
            return ()
        try:
            levels = tuple(kind(v) for v in value.split(",") if v.strip())
        except ValueError:
            raise click.BadParameter(f"give a comma-separated list of numbers, e.g. {param.metavar}") from None
        if not levels or any(v <= 0 for v in levels):
            raise click.BadParameter("every level must be positive")
        return levels

    return parse


@main.command()
@LOADTEST.option("--concurrency", default="1,8,32", callback=_levels(int), metavar="1,8,32",
                 help="Closed loop: concurrent clients per level.")
@LOADTEST.option("--rate", default=None, callback=_levels(float), metavar="50,100",
                 help="Open loop: requests/s per level (replaces --concurrency).")
@LOADTEST.option("--arrival", type=click.Choice(["constant", "poisson"]), default="constant",
                 help="Open-loop arrival process.")
@LOADTEST.option("--duration", type=click.FloatRange(min=0.1), default=10.0,
              help="Measured seconds per level.")
@LOADTEST.option("--warmup", type=click.FloatRange(min=0), default=2.0,
              help="Unmeasured seconds before each level.")
@LOADTEST.option("--max-requests", type=click.IntRange(min=1), default=100_000,
              help="Most requests per level, warmup included.")
@LOADTEST.option("--batch-size", type=click.IntRange(min=1), default=1,
              help="Images per request.")
@LOADTEST.option("--image-size", type=click.IntRange(min=1), default=64,
              help="Square image side.")
@LOADTEST.option("--mask-kind", type=click.Choice(MASK_KINDS), default="strokes", help="Mask generator.")
@LOADTEST.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Crop real photos from this folder and its subfolders (as the trainer reads a folder) instead "
                   "of random pixels.")
@LOADTEST.option("--protocol", type=click.Choice(list(PROTOCOLS)), default="tfserving",
              help="tfserving: TF Serving's Predict; v2: the Open Inference Protocol's ModelInfer (same port).")
@LOADTEST.option("--metrics-url", default=None,
              help="The server's Prometheus URL, to add server queue time and batch size.")
@LOADTEST.option("--report", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/load"),
                 help="Folder for load.json, load.csv and load.png.")
@LOADTEST.option("--seed", type=int, default=0, help="Seed of images and masks.")
@LOADTEST.option("--split-labels", default=None, callback=_two_labels, metavar="stable,canary",
                help="Alternate the requests between two version labels (a canary check): the report gives each "
                     "label's latency and errors.")
@click.pass_obj
def loadtest(settings: Settings, concurrency, rate, arrival, duration, warmup, max_requests, batch_size,
             image_size, mask_kind, images, protocol, metrics_url, report, seed, split_labels):
    """Sweep concurrency (closed loop) or request rate (open loop); report throughput and latency."""
    import asyncio

    from .loadtest import LoadConfig, format_table, run, write_report

    if split_labels and (settings.version is not None or settings.label is not None):
        raise click.UsageError("--split-labels chooses the versions: give it without --version or --label")
    version = settings.label if settings.label is not None else settings.version
    config = LoadConfig(target=settings.target, model=settings.model, version=version,
                        split_labels=split_labels or (), concurrency=concurrency, rates=rate,
                        arrival=arrival, duration=duration, warmup=warmup, max_requests=max_requests,
                        batch_size=batch_size, image_size=image_size, mask_kind=mask_kind, images=images,
                        timeout=settings.timeout, metrics_url=metrics_url, seed=seed, protocol=protocol)
    levels = len(rate or concurrency)
    ask(settings, lambda client: client.health(timeout=min(settings.timeout, 10)))  # fail fast if nobody is there
    try:
        with click.progressbar(length=levels, label="load levels", file=sys.stderr) as bar:
            results = asyncio.run(run(config, on_level=lambda result: bar.update(1)))
    except InpaintError as error:
        fail(settings, error)
    click.echo(format_table(results))
    for path in write_report(results, config, report):
        click.echo(f"wrote {path}")
    refused = sum(r.errors.get("RESOURCE_EXHAUSTED", 0) for r in results)
    if refused:
        click.echo(f"the server was overloaded: {refused} request(s) refused with RESOURCE_EXHAUSTED", err=True)


if __name__ == "__main__":
    main()
