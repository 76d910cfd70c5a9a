"""Large photos: whole-image against tiled inpainting, in process and through ``inpaint-serve``, with memory.

    python benchmarks/large_photos.py [--model models/pretrained/inpaint] [--sizes 1,4,12,24]
                                      [--holes scratch,strokes5,strokes20] [--repeats 3]
                                      [--skip-whole-above 12] [--concurrent 3] [--out reports/bench-large]

Photos of 1, 4, 12 and 24 MP (1224x816, 2448x1632, 4000x3000, 6000x4000) are
mosaics of real photographs (``--photos``, default ``data/photos``, else
scikit-image's samples), each tile resized from one photo, so the content is a
photo's at every size. Holes, drawn at the photo's scale: ``scratch`` (one
12-px line corner to corner), ``strokes5`` and ``strokes20`` (free-form brush
strokes covering 4-6 % and 18-22 % of the photo). Per size and holes:

* ``in_process_whole``: ``OnnxModel.inpaint`` on the whole image in one run
  (``TilingOptions(mode="off")``). Its cost does not depend on the holes, so it
  runs once per size (with the first ``--holes`` kind) unless ``--whole-every-hole``;
  only up to ``--skip-whole-above`` MP, but always at 12 MP (the acceptance ratio
  needs it), and never where it would not fit in the free memory.
* ``in_process_tiled``: ``inpaint_tiled`` with ``mode="always"`` and the
  server's default ``--tile-above-pixels`` and ``--tile-batch``: windows along
  thin holes, one run downscaled to that size for wide ones.
* ``server_tiling``: a round trip with the client library, over loopback gRPC,
  against ``inpaint-serve`` started with its default flags: the client sends the
  whole photo (``tiling=TilingOptions(mode="off")``) and the server tiles it
  (``--tiling auto``: above ``--tile-above-pixels``, whole below).
* ``client_tiling``: the same with the client library's defaults, which tile
  on the client (above its own threshold) and send only the windows, a batch a
  request. Measured where ``InpaintClient`` takes ``tiling=``.
* ``server_tiling_xN``, ``client_tiling_xN``: at ``--concurrent-at`` MP (12)
  with the first holes kind, ``--concurrent`` such round trips at once.

Every case runs in a fresh process (an in-process case in a child of this
script, a server case in a server started for it), after a warm-up run on one
small window, and its memory is that process's, read from ``/proc/PID/status``:
``peak`` is VmHWM, the process's lifetime peak resident set (model loading and
warm-up included: what a memory limit must allow), ``before`` is VmRSS after
warm-up and ``after`` VmRSS once the measured runs are done (memory given back).
The server's figures leave out its REST codec process (idle here: gRPC only;
its peak is ``helpers_peak_mib`` in the JSON) and the client's memory. Times
are the median of ``--repeats`` runs (``--whole-repeats`` for whole images,
default 1: a 12 MP one takes minutes on 2 cores); ``x whole`` and ``x tiled``
divide by the in-process cells of the same size (and holes) in this same run.

Prints a Markdown table, writes ``large_photos.json`` and ``large_photos.png``
(time and peak memory against megapixels per mode) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("benchmarks.large_photos")

# Megapixels -> (width, height): a 3:2 photo, and a 4000x3000 phone photo at 12 MP (the acceptance case).
PRESET_SIZES = {1: (1224, 816), 4: (2448, 1632), 12: (4000, 3000), 24: (6000, 4000)}
ACCEPTANCE_MP = 12
ROUND_TRIP_MODES = ("server_tiling", "client_tiling")
SCRATCH_WIDTH = 12
HOLE_KINDS = ("scratch", "strokes5", "strokes20")
STROKE_BUCKETS = {"strokes5": (0.04, 0.06), "strokes20": (0.18, 0.22)}
MOSAIC_TILE_SIDE = 2048  # the longest side of the bundled photos: tiles are never upscaled much
WARMUP_SIDE = 256        # one window: ORT's first run of a session is slower
WHOLE_BYTES_PER_PIXEL = 500  # a whole-image run of the shipped model peaks at about 450 B/px (README)


# -- photos and holes ---------------------------------------------------------------------------------

def photo_size(megapixels: float) -> tuple[int, int]:
    """``(width, height)``: the preset for 1, 4, 12 and 24 MP, else a 3:2 photo of that many pixels."""
    if megapixels in PRESET_SIZES:
        return PRESET_SIZES[int(megapixels)]
    height = max(8, round(math.sqrt(megapixels * 1e6 / 1.5)))
    return round(height * 1.5), height


def photo_files(folder: Path | None) -> list[Path]:
    """The photo files to tile: ``folder``'s if it has any, else scikit-image's samples."""
    from inpaint.trainer.data import image_files, samples_dir
    from inpaint.trainer.errors import DataError

    for candidate in ([folder] if folder else []) + [samples_dir()]:
        try:
            return image_files(candidate)
        except DataError as error:
            logger.warning("%s; trying the next photo source", error)
    raise SystemExit("no photos found: pass --photos DIR")


def _fit(photo: np.ndarray, width: int, height: int) -> np.ndarray:
    """``photo`` centre-cropped to the aspect of ``width`` x ``height`` and resized to it."""
    rows, cols = photo.shape[:2]
    scale = max(width / cols, height / rows)
    crop_w, crop_h = min(cols, round(width / scale)), min(rows, round(height / scale))
    top, left = (rows - crop_h) // 2, (cols - crop_w) // 2
    crop = photo[top : top + crop_h, left : left + crop_w]
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(crop, (width, height), interpolation=interpolation)


def synthesize_photo(width: int, height: int, files: list[Path], seed: int = 0) -> np.ndarray:
    """A ``height x width`` RGB photo: a grid of different real photos, each centre-cropped to the tile's shape
    and resized to it (tiles are at most 2048 px wide, the bundled photos' longest side: little upscaling)."""
    from inpaint.core.images import read_image

    grid = max(1, math.ceil(max(width, height) / MOSAIC_TILE_SIDE))
    order = np.random.default_rng(seed).permutation(len(files))
    photo = np.empty((height, width, 3), np.uint8)
    rows, cols = np.linspace(0, height, grid + 1).astype(int), np.linspace(0, width, grid + 1).astype(int)
    for index in range(grid * grid):
        row, col = divmod(index, grid)
        source = read_image(files[int(order[index % len(files)])])
        photo[rows[row] : rows[row + 1], cols[col] : cols[col + 1]] = _fit(
            source, cols[col + 1] - cols[col], rows[row + 1] - rows[row])
    return photo


def diagonal_scratch(width: int, height: int) -> np.ndarray:
    """One ``SCRATCH_WIDTH``-px line from the top-left corner to the bottom-right one."""
    mask = np.zeros((height, width), np.uint8)
    cv2.line(mask, (0, 0), (width - 1, height - 1), 1, SCRATCH_WIDTH)
    return mask


def hole_mask(kind: str, width: int, height: int, seed: int = 0) -> np.ndarray:
    """``(height, width)`` uint8, 1 = hole; strokes are as wide, relative to the photo, at every size."""
    from inpaint.core.masks import stroke_mask_in_bucket

    if kind == "scratch":
        return diagonal_scratch(width, height)
    if kind in STROKE_BUCKETS:
        low, high = STROKE_BUCKETS[kind]
        return stroke_mask_in_bucket(height, width, low, high, np.random.default_rng(seed))
    raise SystemExit(f"unknown holes {kind!r}: choose from {', '.join(HOLE_KINDS)}")


# -- memory ---------------------------------------------------------------------------------------------

def peak_since(before: dict, after: dict) -> int:
    """The peak resident set over a measurement: VmHWM when it ends, at least VmRSS when it began (the kernel's
    RSS counters are per-thread and approximate, so a later VmHWM can read a MiB under an earlier VmRSS)."""
    return max(after["VmHWM"], before["VmRSS"])


def process_memory(pid: int | str = "self") -> dict[str, int]:
    """VmRSS (now) and VmHWM (lifetime peak) of a process, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0]) // 1024
    return fields


def available_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def whole_fits(width: int, height: int) -> bool:
    """Whether a whole-image run likely fits in the free memory (an out-of-memory kill may hit anyone)."""
    return width * height * WHOLE_BYTES_PER_PIXEL / 2**20 < 0.8 * available_mib()


# -- in process: one case per child process -----------------------------------------------------------

def in_process_worker(spec: dict) -> dict:
    """Run in a fresh child: load the model and the inputs, warm up, time ``repeats`` runs, read memory."""
    from inpaint.core.onnx_model import OnnxModel
    from inpaint.core.tiling import TilingOptions, inpaint_tiled

    model = OnnxModel(Path(spec["model"]), memory_arena=False)
    image, mask = np.load(spec["image"]), np.load(spec["mask"])
    options = TilingOptions(**spec["tiling"])
    warm = np.zeros((1, WARMUP_SIDE, WARMUP_SIDE, 3), np.uint8)
    model.inpaint(warm, np.ones((1, WARMUP_SIDE, WARMUP_SIDE, 1), np.uint8))
    model_pixels = 0

    def run(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        nonlocal model_pixels
        model_pixels += images.shape[0] * images.shape[1] * images.shape[2]
        return model.inpaint(images, masks)

    before = process_memory()
    seconds = []
    for _ in range(spec["repeats"]):
        model_pixels = 0
        began = time.perf_counter()
        inpaint_tiled(image, mask, run, options)
        seconds.append(time.perf_counter() - began)
    after = process_memory()
    return {"seconds_all": seconds, "rss_before_mib": before["VmRSS"], "peak_rss_mib": peak_since(before, after),
            "rss_after_mib": after["VmRSS"], "model_pixels": model_pixels}


def server_tiling_options(mode: str) -> dict:
    """``TilingOptions`` fields as ``inpaint-serve`` sets them by default, with ``mode``: in process and
    server cut the same windows and shrink wide holes to the same size."""
    from inpaint.serving.server import ServerConfig

    defaults = ServerConfig.__dataclass_fields__
    options = {"mode": mode}
    if "tile_above_pixels" in defaults:
        options["tile_above_pixels"] = defaults["tile_above_pixels"].default
    if "tile_batch" in defaults:
        options["batch"] = defaults["tile_batch"].default
    return options


def in_process_case(model: Path, inputs: tuple[Path, Path], tiling: dict, repeats: int) -> dict:
    """``in_process_worker`` in a child process of its own, so its memory peak is this case's alone."""
    spec = {"model": str(model), "image": str(inputs[0]), "mask": str(inputs[1]), "tiling": tiling,
            "repeats": repeats}
    child = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], check=False,
                           capture_output=True, text=True)
    if child.returncode != 0:
        reason = "killed (out of memory?)" if child.returncode == -9 else f"exit {child.returncode}"
        return {"error": f"{reason}: {child.stderr.strip()[-500:]}"}
    return json.loads(child.stdout.strip().splitlines()[-1])


# -- through the server ---------------------------------------------------------------------------------

def server_supports_tiling() -> bool:
    """Whether this ``inpaint-serve`` has ``--tiling`` (before it, images over 2 MP are refused)."""
    help_text = subprocess.run([sys.executable, "-m", "inpaint.serving.cli", "--help"], check=False,
                               capture_output=True, text=True).stdout
    return "--tiling" in help_text


def round_trip_modes() -> list[tuple[str, dict]]:
    """``(mode, InpaintClient options)``: the whole photo sent (the server tiles), and, where the client
    library can tile itself, its defaults (it sends windows)."""
    from inpaint.client import InpaintClient
    from inpaint.core.tiling import TilingOptions

    whole = {"tiling": TilingOptions(mode="off")}
    try:
        InpaintClient("127.0.0.1:1", **whole).close()  # builds a channel; connects to nothing
    except TypeError:
        return [("server_tiling", {})]  # a client without tiling always sends whole photos
    return [("server_tiling", whole), ("client_tiling", {})]


class ServeProcess:
    """``inpaint-serve`` with its default flags (plus ``extra``), on free loopback ports, log to a file."""

    def __init__(self, model_base: Path, extra: list[str], log: Path):
        sys.path.insert(0, str(ROOT / "tests"))
        from helpers import free_port

        self.target = f"127.0.0.1:{free_port()}"
        self.log = log
        command = [sys.executable, "-m", "inpaint.serving.cli", "--model-base-path", str(model_base),
                   "--host", "127.0.0.1", "--port", self.target.rsplit(":", 1)[1], "--rest-port", "0",
                   "--log-level", "WARNING", *extra]
        with log.open("w") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)

    def __enter__(self) -> Self:
        from helpers import wait_serving

        try:
            wait_serving(self.target, self.process)
        except AssertionError as error:
            self.stop()
            raise RuntimeError(f"{error}\n{self.log.read_text()[-2000:]}") from None
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def memory(self) -> dict:
        """The server's memory and the peak of its helper processes (the REST codec), in MiB."""
        from memory import children_of

        helpers = sum(process_memory(child)["VmHWM"] for child in children_of(self.process.pid))
        return {**process_memory(self.process.pid), "helpers_peak": helpers}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=120)


def round_trip(client, image: np.ndarray, mask: np.ndarray, timeout: float) -> float:
    began = time.perf_counter()
    output = client.inpaint(image, mask, timeout=timeout)
    elapsed = time.perf_counter() - began
    if output.shape != image.shape:
        raise RuntimeError(f"server answered {output.shape} for {image.shape}")
    return elapsed


def server_case(model_base: Path, image: np.ndarray, mask: np.ndarray, repeats: int, concurrent: int,
                extra: list[str], log: Path, timeout: float, client_options: dict | None = None) -> dict:
    """A fresh server, one warm-up request, then ``repeats`` rounds of ``concurrent`` requests at once."""
    from inpaint.client import InpaintClient, InpaintError

    try:
        with ServeProcess(model_base, extra, log) as server, \
                InpaintClient(server.target, timeout=timeout, **(client_options or {})) as client:
            warm = np.zeros((WARMUP_SIDE, WARMUP_SIDE, 3), np.uint8)
            warm_mask = np.zeros((WARMUP_SIDE, WARMUP_SIDE), np.uint8)
            warm_mask[WARMUP_SIDE // 4 : -WARMUP_SIDE // 4, WARMUP_SIDE // 4 : -WARMUP_SIDE // 4] = 1  # not all holes
            client.inpaint(warm, warm_mask)
            before = server.memory()
            seconds, wall = [], []
            with ThreadPoolExecutor(concurrent) as pool:
                for _ in range(repeats):
                    began = time.perf_counter()
                    seconds += pool.map(lambda _: round_trip(client, image, mask, timeout), range(concurrent))
                    wall.append(time.perf_counter() - began)
            after = server.memory()
    except (InpaintError, RuntimeError) as error:
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
    cell = {"seconds_all": seconds, "rss_before_mib": before["VmRSS"], "peak_rss_mib": peak_since(before, after),
            "rss_after_mib": after["VmRSS"], "helpers_peak_mib": after["helpers_peak"]}
    if concurrent > 1:
        cell["wall_seconds_all"] = wall
    return cell


# -- the run ----------------------------------------------------------------------------------------------

def prepare_inputs(megapixels: float, holes: list[str], files: list[Path], folder: Path) -> dict:
    """The photo and each holes kind's mask, as .npy files the child processes load."""
    width, height = photo_size(megapixels)
    image = synthesize_photo(width, height, files)
    image_path = folder / f"{megapixels:g}mp.npy"
    np.save(image_path, image)
    masks = {}
    for kind in holes:
        mask = hole_mask(kind, width, height)
        mask_path = folder / f"{megapixels:g}mp-{kind}.npy"
        np.save(mask_path, mask)
        masks[kind] = (mask_path, float(mask.mean()))
    return {"width": width, "height": height, "image": image_path, "masks": masks}


def measure_whole(args: argparse.Namespace, megapixels: float, width: int, height: int) -> str | None:
    """None if the whole image is to be measured at this size, else why not."""
    if megapixels > args.skip_whole_above and megapixels != ACCEPTANCE_MP:
        return f"skipped: above --skip-whole-above {args.skip_whole_above:g} MP"
    if not whole_fits(width, height):
        return f"skipped: needs about {width * height * WHOLE_BYTES_PER_PIXEL / 2**30:.1f} GiB, " \
               f"{available_mib() / 1024:.1f} GiB available"
    return None


def finish(cell: dict) -> dict:
    if "seconds_all" in cell:
        cell["seconds"] = statistics.median(cell["seconds_all"])
    logger.info("%s", {k: v for k, v in cell.items() if k != "seconds_all"})
    return cell


def run_size(args: argparse.Namespace, megapixels: float, files: list[Path], folder: Path,
             round_trips: list[tuple[str, dict]]) -> list[dict]:
    inputs = prepare_inputs(megapixels, args.holes, files, folder)
    width, height = inputs["width"], inputs["height"]
    version_file = _version_file(args.model)
    image = np.load(inputs["image"])
    cells = []
    for index, kind in enumerate(args.holes):
        mask_path, ratio = inputs["masks"][kind]
        base = {"megapixels": megapixels, "width": width, "height": height, "holes": kind, "hole_ratio": ratio}
        if index == 0 or args.whole_every_hole:
            skipped = measure_whole(args, megapixels, width, height)
            cell = {"error": skipped} if skipped else in_process_case(
                version_file, (inputs["image"], mask_path), {"mode": "off"}, min(args.repeats, args.whole_repeats))
            cells.append(finish({**base, "mode": "in_process_whole", **cell}))
        cell = in_process_case(version_file, (inputs["image"], mask_path),
                               server_tiling_options("always"), args.repeats)
        cells.append(finish({**base, "mode": "in_process_tiled", **cell}))
        mask = np.load(mask_path)
        for mode, client_options in round_trips:
            cell = server_case(args.model, image, mask, args.repeats, 1, args.server_args,
                               folder / "server.log", args.timeout, client_options)
            cells.append(finish({**base, "mode": mode, **cell}))
        if index == 0 and megapixels == args.concurrent_at and args.concurrent > 1:
            for mode, client_options in round_trips:
                cell = server_case(args.model, image, mask, 1, args.concurrent, args.server_args,
                                   folder / "server.log", args.timeout, client_options)
                cells.append(finish({**base, "mode": f"{mode}_x{args.concurrent}", **cell}))
    return cells


def _version_file(model_base: Path) -> Path:
    from inpaint.core.repository import ONNX_FILENAME, version_dir

    return version_dir(model_base) / ONNX_FILENAME


# -- ratios, table, plot ----------------------------------------------------------------------------------

def _find(cells: list[dict], megapixels: float, holes: str | None, mode: str) -> dict | None:
    """The cell of ``mode``; for the whole image any holes kind at that size (its cost ignores them)."""
    for cell in cells:
        if cell["megapixels"] == megapixels and cell["mode"] == mode and "seconds" in cell and (
                holes is None or cell["holes"] == holes):
            return cell
    return None


def add_ratios(results: dict) -> None:
    """Per cell: time over the whole image in process (same size, same run); plus the issue's targets."""
    cells = results["cells"]
    for cell in cells:
        whole = _find(cells, cell["megapixels"], None, "in_process_whole")
        cell["x_whole"] = cell["seconds"] / whole["seconds"] if whole and "seconds" in cell else None
        tiled = _find(cells, cell["megapixels"], cell["holes"], "in_process_tiled")
        cell["x_tiled"] = cell["seconds"] / tiled["seconds"] if tiled and "seconds" in cell else None
    targets = []
    for mode in ROUND_TRIP_MODES:
        cell = _find(cells, ACCEPTANCE_MP, "scratch", mode)
        if cell and cell["x_whole"] is not None:
            targets.append((f"12 MP scratch, {mode}: round trip / in-process whole image", cell["x_whole"],
                            "<= 0.1"))
        if cell:
            targets.append((f"12 MP scratch, {mode}: server peak RSS, GiB", cell["peak_rss_mib"] / 1024, "<= 1.5"))
    for cell in cells:
        mode, _, concurrent = cell["mode"].rpartition("_x")
        if cell["megapixels"] == ACCEPTANCE_MP and mode in ROUND_TRIP_MODES and "seconds" in cell:
            targets.append((f"12 MP {cell['holes']}, {mode}: {concurrent} requests at once, server peak RSS, GiB",
                            cell["peak_rss_mib"] / 1024, "< 2"))
    results["targets"] = [{"name": name, "value": value, "target": target} for name, value, target in targets]


def _number(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(results: dict) -> str:
    lines = [("| MP | size | holes | hole % | mode | seconds | x whole | x tiled | model px / image px "
              "| peak RSS MiB | RSS before | RSS after |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in results["cells"]:
        if "error" in c:
            lines.append(f"| {c['megapixels']:g} | {c['width']}x{c['height']} | {c['holes']} "
                         f"| {100 * c['hole_ratio']:.1f} | {c['mode']} | {c['error'].splitlines()[0][:120]} "
                         "| | | | | | |")
            continue
        coverage = c["model_pixels"] / (c["width"] * c["height"]) if "model_pixels" in c else None
        lines.append(f"| {c['megapixels']:g} | {c['width']}x{c['height']} | {c['holes']} "
                     f"| {100 * c['hole_ratio']:.1f} | {c['mode']} | {_number(c['seconds'])} "
                     f"| {_number(c['x_whole'], 3)} | {_number(c['x_tiled'])} | {_number(coverage)} "
                     f"| {c['peak_rss_mib']:,} | {c['rss_before_mib']:,} | {c['rss_after_mib']:,} |")
    lines.append("")
    for target in results["targets"]:
        lines.append(f"- {target['name']}: **{target['value']:.3f}** (target {target['target']})")
    return "\n".join(lines)


PLOT_COLOURS = {"in_process_whole": (40, 40, 200), "in_process_tiled": (200, 90, 30),
                "server_tiling": (40, 150, 40), "client_tiling": (0, 140, 230)}  # BGR
PANEL_W, PANEL_H, MARGIN, TOP = 420, 300, 70, 70
FONT = cv2.FONT_HERSHEY_SIMPLEX


def plot(results: dict, path: Path) -> None:
    """Seconds (log scale) and peak RSS against megapixels, one column per holes kind, one line per mode.

    The whole image's points appear in every column: its cost does not depend on the holes.
    """
    holes = list(dict.fromkeys(c["holes"] for c in results["cells"]))
    measured = [c for c in results["cells"] if "seconds" in c and c["mode"] in PLOT_COLOURS]
    canvas = np.full((TOP + 2 * (PANEL_H + MARGIN), len(holes) * (PANEL_W + MARGIN) + MARGIN, 3), 255, np.uint8)
    if measured:
        sizes = sorted({c["megapixels"] for c in measured})
        max_mp = max(sizes) * 1.08
        low = math.floor(math.log10(min(c["seconds"] for c in measured)))
        high = max(math.ceil(math.log10(max(c["seconds"] for c in measured))), low + 1)
        high_rss = max(c["peak_rss_mib"] for c in measured) * 1.1
        axes = (("seconds", "seconds", lambda s: (math.log10(s) - low) / (high - low), _log_ticks(low, high)),
                ("peak_rss_mib", "peak RSS, MiB", lambda m: m / high_rss, _linear_ticks(high_rss)))
        for column, kind in enumerate(holes):
            left = MARGIN + column * (PANEL_W + MARGIN)
            for row, (key, label, to_y, ticks) in enumerate(axes):
                top = TOP + row * (PANEL_H + MARGIN)
                _axes(canvas, left, top, f"{kind}: {label}", sizes, max_mp, to_y, ticks)
                for mode, colour in PLOT_COLOURS.items():
                    line = sorted((c for c in measured if c["mode"] == mode and
                                   (c["holes"] == kind or mode == "in_process_whole")), key=lambda c: c["megapixels"])
                    points = [(left + round(c["megapixels"] / max_mp * PANEL_W),
                               top + PANEL_H - round(to_y(c[key]) * PANEL_H)) for c in line]
                    if len(points) > 1:
                        cv2.polylines(canvas, [np.array(points, np.int32)], False, colour, 2, cv2.LINE_AA)
                    for point in points:
                        cv2.circle(canvas, point, 4, colour, -1, cv2.LINE_AA)
        _legend(canvas, [mode for mode in PLOT_COLOURS if any(c["mode"] == mode for c in measured)])
    cv2.imwrite(str(path), canvas)


def _log_ticks(low: int, high: int) -> list[tuple[float, str]]:
    return [(step * 10.0 ** exponent, f"{step * 10.0 ** exponent:g}") for exponent in range(low, high)
            for step in (1, 2, 5)] + [(10.0 ** high, f"{10.0 ** high:g}")]


def _linear_ticks(high: float) -> list[tuple[float, str]]:
    step = 10 ** math.floor(math.log10(high / 2))
    step *= 5 if high / step > 20 else 2 if high / step > 8 else 1
    return [(step * i, f"{step * i:g}") for i in range(int(high // step) + 1)]


def _axes(canvas: np.ndarray, left: int, top: int, title: str, sizes: list[float], max_mp: float, to_y,
          ticks: list[tuple[float, str]]) -> None:
    black, grey = (0, 0, 0), (220, 220, 220)
    for value, text in ticks:
        y = top + PANEL_H - round(to_y(value) * PANEL_H)
        cv2.line(canvas, (left, y), (left + PANEL_W, y), grey, 1)
        cv2.putText(canvas, text, (left - 8 - 9 * len(text), y + 4), FONT, 0.4, black, 1, cv2.LINE_AA)
    for megapixels in sizes:
        x = left + round(megapixels / max_mp * PANEL_W)
        cv2.line(canvas, (x, top + PANEL_H), (x, top + PANEL_H + 4), black, 1)
        cv2.putText(canvas, f"{megapixels:g}", (x - 6, top + PANEL_H + 18), FONT, 0.4, black, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (left, top), (left + PANEL_W, top + PANEL_H), black, 1)
    cv2.putText(canvas, title, (left, top - 8), FONT, 0.5, black, 1, cv2.LINE_AA)
    cv2.putText(canvas, "MP", (left + PANEL_W - 20, top + PANEL_H + 36), FONT, 0.4, black, 1, cv2.LINE_AA)


def _legend(canvas: np.ndarray, modes: list[str]) -> None:
    x = MARGIN
    for mode in modes:
        cv2.line(canvas, (x, 24), (x + 24, 24), PLOT_COLOURS[mode], 3)
        cv2.putText(canvas, mode, (x + 30, 29), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        x += 70 + 10 * len(mode)


# -- entry point -------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/pretrained/inpaint"), help="model base path")
    parser.add_argument("--sizes", default="1,4,12,24", help="megapixels, comma-separated")
    parser.add_argument("--holes", default=",".join(HOLE_KINDS), help="holes kinds, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (the median is reported)")
    parser.add_argument("--whole-repeats", type=int, default=1, help="at most this many runs of a whole image")
    parser.add_argument("--skip-whole-above", type=float, default=12,
                        help="no whole-image runs above this many MP (except at 12 MP, for the acceptance ratio)")
    parser.add_argument("--whole-every-hole", action="store_true",
                        help="measure the whole image with every holes kind, not once per size")
    parser.add_argument("--concurrent", type=int, default=3, help="requests at once in the concurrent case")
    parser.add_argument("--concurrent-at", type=float, default=ACCEPTANCE_MP, help="size (MP) of the concurrent case")
    parser.add_argument("--no-server", action="store_true", help="in-process cases only")
    parser.add_argument("--server-args", default="", help="extra inpaint-serve flags, space-separated")
    parser.add_argument("--timeout", type=float, default=900, help="client deadline per request, seconds")
    parser.add_argument("--photos", type=Path, default=ROOT / "data" / "photos", help="folder of photos to tile")
    parser.add_argument("--out", type=Path, default=Path("reports/bench-large"), help="where results go")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one in-process case, JSON spec
    args = parser.parse_args(argv)
    args.sizes = [float(size) for size in args.sizes.split(",")]
    args.sizes = [int(size) if size.is_integer() else size for size in args.sizes]
    args.holes = [kind for kind in args.holes.split(",") if kind]
    args.server_args = args.server_args.split()
    for kind in args.holes:
        if kind not in HOLE_KINDS:
            parser.error(f"unknown holes {kind!r}: choose from {', '.join(HOLE_KINDS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(in_process_worker(json.loads(args.worker))))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    started = time.perf_counter()
    round_trips = [] if args.no_server else round_trip_modes()
    server_tiling = not args.no_server and server_supports_tiling()
    if round_trips and not server_tiling:
        logger.warning("inpaint-serve has no --tiling yet: it refuses images over its --max-pixels")
    results = {"model": str(_version_file(args.model)), "cpu_count": os.cpu_count(),
               "cpu_affinity": len(os.sched_getaffinity(0)), "server_tiling_flag": server_tiling,
               "round_trip_modes": [mode for mode, _ in round_trips], "server_args": args.server_args, "cells": []}
    files = photo_files(args.photos)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-large-") as folder:
        for megapixels in args.sizes:
            results["cells"] += run_size(args, megapixels, files, Path(folder), round_trips)
    add_ratios(results)
    results["seconds_total"] = time.perf_counter() - started
    (args.out / "large_photos.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out / "large_photos.png")
    print(markdown(results))
    print(f"\n{results['seconds_total']:.0f} s in all; {args.out / 'large_photos.json'}, "
          f"{args.out / 'large_photos.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
