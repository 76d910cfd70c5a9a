"""Shared fixtures: a real, tiny model trained and exported once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def write_png(path: Path, image: np.ndarray) -> Path:
    from inpaint.core.images import write_image

    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, image)
    return path


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random colour image (a blurred noise field), so inpainting has structure to find."""
    import cv2

    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 3)


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    from inpaint.trainer.train import TrainConfig

    base = tmp_path_factory.mktemp("repo") / "inpaint"
    return TrainConfig(data="samples", model_base_path=str(base), init_weights="", image_size=32, depth=2,
                       base_filters=8, batch_size=4, epochs=2, steps_per_epoch=3, validation_size=8, seed=7)


@pytest.fixture(scope="session")
def tiny_version(tiny_config) -> Path:
    """Version 1 of a depth-2, 8-filter U-Net: trained, SavedModel written, ONNX exported and checked."""
    from inpaint.export.onnx_export import export_version
    from inpaint.trainer.train import train

    version = train(tiny_config)
    export_version(version)
    return version


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    from helpers import free_port as find

    return find()


# -- the server ------------------------------------------------------------------------------------

@pytest.fixture
def onnx_repo(tmp_path) -> Path:
    """A model repository whose version 1 fills holes with 128."""
    from onnx_models import write_version

    base = tmp_path / "models" / "inpaint"
    write_version(base, 1)
    return base


@pytest.fixture
def start_server():
    """``start_server(base, **config)``: a real server on 127.0.0.1 with free ports, stopped afterwards."""
    from helpers import ServerThread

    from inpaint.serving.server import ServerConfig

    running = []

    def start(base: Path, wait: bool = True, **overrides) -> ServerThread:
        options = dict(model_base_path=base, host="127.0.0.1", port=0, rest_port=0, poll_seconds=0.1,
                       drain_seconds=5.0)
        options.update(overrides)
        thread = ServerThread(ServerConfig(**options)).start()
        running.append(thread)
        if wait:
            thread.wait_until_available()
        return thread

    yield start
    for thread in running:
        thread.stop()
