"""Large photos run on the data plane's own threads: a photo in windows never holds the model's compute threads,
so small requests keep their latency while it runs (issue 24, item 6)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import wait_for

from inpaint.client import InpaintClient
from inpaint.core.tiling import TilingOptions
from inpaint.trainer.data import read_image, samples_dir

PRETRAINED = Path(__file__).resolve().parents[1] / "models" / "pretrained" / "inpaint"
SMALL = 64
SMALL_REQUESTS = 5


@pytest.fixture
def shipped_repo(tmp_path) -> Path:
    base = tmp_path / "inpaint"
    shutil.copytree(PRETRAINED / "1", base / "1")
    return base


def photo(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A sample photo resized to ``width x height``, and a mask with a thick scratch along its diagonal: enough
    windows that the photo's runs outlast the small requests' (OpenVINO runs a batch of 8 in under a second)."""
    image = cv2.resize(read_image(samples_dir() / "coffee.png"), (width, height), interpolation=cv2.INTER_CUBIC)
    mask = np.zeros((height, width), np.uint8)
    cv2.line(mask, (0, 0), (width - 1, height - 1), 1, 24)
    cv2.line(mask, (0, height - 1), (width - 1, 0), 1, 24)
    return image, mask


class RecordedRuns:
    """Wraps a servable's ``inpaint``: when each model run of the large photo's windows ended."""

    def __init__(self, servable):
        self.inpaint = servable.inpaint
        self.window_ends: list[float] = []
        self.lock = threading.Lock()
        servable.inpaint = self.run

    def run(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        output = self.inpaint(images, masks)
        if images.shape[1:3] != (SMALL, SMALL):
            with self.lock:
                self.window_ends.append(time.monotonic())
        return output

    def windows_run(self) -> int:
        with self.lock:
            return len(self.window_ends)


def test_small_requests_keep_their_latency_while_a_24_mp_photo_runs_in_windows(shipped_repo, start_server):
    # One compute thread: before the tiled path had threads of its own, the photo held it from its first
    # window to its last and every small request waited for the whole photo.
    server = start_server(shipped_repo, rest_port=None, compute_threads=1)
    version = server.call(lambda: server.server.manager.versions[1])
    runs = RecordedRuns(version.servable)
    large_image, large_mask = photo(4000, 6000)
    small_image = np.full((SMALL, SMALL, 3), 90, np.uint8)
    small_mask = np.zeros((SMALL, SMALL), np.uint8)
    small_mask[20:40, 20:40] = 1
    large: dict = {}

    def send_large() -> None:
        started = time.monotonic()
        with InpaintClient(server.grpc_target, tiling=TilingOptions(mode="off")) as client:  # sent whole
            large["output"] = client.inpaint(large_image, large_mask, timeout=600)
        large["seconds"] = time.monotonic() - started

    sender = threading.Thread(target=send_large, name="large-photo")
    sender.start()
    try:
        wait_for(runs.windows_run, 300, "the large photo's first window run")
        latencies, finished_at = [], []
        with InpaintClient(server.grpc_target) as client:
            for _ in range(SMALL_REQUESTS):
                started = time.monotonic()
                output = client.inpaint(small_image, small_mask, timeout=600)
                finished_at.append(time.monotonic())
                latencies.append(finished_at[-1] - started)
                assert output.shape == small_image.shape
        assert sender.is_alive(), "the large photo finished before the small requests did: make it larger"
    finally:
        sender.join(600)
    assert "output" in large, "the large photo's request failed"
    holes = large_mask > 0
    np.testing.assert_array_equal(large["output"][~holes], large_image[~holes])
    last_window = max(runs.window_ends)
    assert finished_at[-1] < last_window, (
        f"the small requests ended {finished_at[-1] - last_window:.1f} s after the photo's last window: they "
        "waited for it")
    bound = large["seconds"] / 4
    assert max(latencies) < bound, (
        f"small requests took up to {max(latencies):.2f} s (each: {', '.join(f'{s:.2f}' for s in latencies)}) "
        f"while the photo took {large['seconds']:.1f} s; a quarter of it is the bound")
