"""``benchmarks/large_photos.py``: it runs end to end on a tiny photo, and its ratios and targets are read right.

Only that it works: its timings are benchmarks, never test assertions.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
from conftest import random_image, write_png

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "large_photos.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("large_photos", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runs_every_mode_on_a_tiny_photo(onnx_repo, tmp_path):
    photos = tmp_path / "photos"
    for seed in range(3):
        write_png(photos / f"{seed}.png", random_image(90 + 10 * seed, 140, seed))
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", str(onnx_repo), "--sizes", "0.02", "--holes", "scratch,strokes5",
         "--repeats", "1", "--concurrent", "2", "--concurrent-at", "0.02", "--photos", str(photos), "--out", str(out),
         "--server-args=--tile-above-pixels 4096"],  # the server tiles even this photo
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]

    results = json.loads((out / "large_photos.json").read_text())
    errors = [cell for cell in results["cells"] if "error" in cell]
    assert not errors, errors
    modes = {(cell["holes"], cell["mode"]) for cell in results["cells"]}
    round_trips = results["round_trip_modes"]
    assert "server_tiling" in round_trips
    assert modes == {("scratch", "in_process_whole"), ("scratch", "in_process_tiled"),
                     ("strokes5", "in_process_tiled")} | {
        (holes, mode) for holes in ("scratch", "strokes5") for mode in round_trips} | {
        ("scratch", f"{mode}_x2") for mode in round_trips}
    for cell in results["cells"]:
        assert (cell["width"], cell["height"]) == (172, 115)
        assert cell["peak_rss_mib"] >= cell["rss_before_mib"] > 0
        assert cell["seconds"] > 0 and cell["x_whole"] > 0
    assert 0.04 <= next(c["hole_ratio"] for c in results["cells"] if c["holes"] == "strokes5") < 0.06
    assert "| 0.02 | 172x115 | scratch |" in run.stdout
    assert cv2.imread(str(out / "large_photos.png")) is not None


def test_ratios_and_the_issues_targets():
    bench = load_benchmark()
    base = {"megapixels": 12, "width": 4000, "height": 3000, "hole_ratio": 0.005, "rss_before_mib": 150,
            "rss_after_mib": 200}
    results = {"cells": [
        {**base, "holes": "scratch", "mode": "in_process_whole", "seconds": 100.0, "peak_rss_mib": 5000},
        {**base, "holes": "scratch", "mode": "in_process_tiled", "seconds": 8.0, "peak_rss_mib": 600},
        {**base, "holes": "scratch", "mode": "server_tiling", "seconds": 10.0, "peak_rss_mib": 1024},
        {**base, "holes": "scratch", "mode": "server_tiling_x3", "seconds": 25.0, "peak_rss_mib": 1536},
        {**base, "holes": "strokes20", "mode": "in_process_tiled", "seconds": 20.0, "peak_rss_mib": 900},
        {**base, "holes": "strokes20", "mode": "server_tiling", "error": "ServerError: boom"},
    ]}
    bench.add_ratios(results)
    cells = results["cells"]
    assert cells[2]["x_whole"] == 0.1 and cells[2]["x_tiled"] == 1.25
    assert cells[4]["x_whole"] == 0.2  # the whole image's cost is the same whatever the holes
    targets = {target["name"]: target["value"] for target in results["targets"]}
    assert targets == {"12 MP scratch, server_tiling: round trip / in-process whole image": 0.1,
                       "12 MP scratch, server_tiling: server peak RSS, GiB": 1.0,
                       "12 MP scratch, server_tiling: 3 requests at once, server peak RSS, GiB": 1.5}
    table = bench.markdown(results)
    assert "| server_tiling | 10.00 | 0.100 | 1.25 |" in table
    assert "ServerError: boom" in table


def test_the_encodings_benchmark_sends_every_way_and_gets_the_photo_back(onnx_repo, tmp_path):
    photos = tmp_path / "photos"
    write_png(photos / "0.png", random_image(120, 160, 0))
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "encodings.py"), "--model", str(onnx_repo), "--megapixels", "0.02",
         "--repeats", "1", "--photos", str(photos), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {row["case"]: row for row in json.loads((out / "encodings.json").read_text())["rows"]}
    assert set(rows) == {"rest-json-pixels", "rest-png", "rest-jpeg", "grpc-tensor", "grpc-png", "grpc-jpeg"}
    assert all(rows[case]["known_pixels_exact"] for case in ("rest-json-pixels", "rest-png", "grpc-tensor", "grpc-png"))
    # Sizes are facts, not timings: JSON text is several times the binary tensor, a PNG smaller still.
    assert rows["rest-json-pixels"]["request_mb"] > 2 * rows["grpc-tensor"]["request_mb"] > rows["grpc-png"]["request_mb"]
    assert "| rest-png |" in run.stdout
