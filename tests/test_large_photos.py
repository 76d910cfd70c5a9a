"""Large photos through the real server: tiled above the threshold, bounded runs, the in-flight budget."""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import random_image
from helpers import wait_for
from onnx_models import expected_fill

from inpaint.client import AsyncInpaintClient, InpaintClient, InvalidInput, Overloaded
from inpaint.client.cli import main as client_main
from inpaint.core.detail import finish_fills
from inpaint.core.tiling import TilingOptions, inpaint_tiled
from inpaint.serving.cli import main as serve_main
from inpaint.serving.runtime import ModelLoader
from inpaint.trainer.data import read_image, samples_dir

PRETRAINED = Path(__file__).resolve().parents[1] / "models" / "pretrained" / "inpaint"


@pytest.fixture
def shipped_repo(tmp_path) -> Path:
    base = tmp_path / "inpaint"
    shutil.copytree(PRETRAINED / "1", base / "1")
    return base


def served_model(version: Path):
    """The model ``inpaint-serve`` runs for ``version`` with its default flags: its runtime (``--runtime
    auto``: OpenVINO on a CPU where it is installed) on its graph (``--precision auto``)."""
    from inpaint.serving.server import ServerConfig

    return ModelLoader.for_config(ServerConfig())(version)


def photo(height: int, width: int) -> np.ndarray:
    return cv2.resize(read_image(samples_dir() / "coffee.png"), (width, height), interpolation=cv2.INTER_CUBIC)


def diagonal_scratch(height: int, width: int, thickness: int = 12) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    cv2.line(mask, (0, 0), (width - 1, height - 1), 1, thickness)
    return mask


def test_the_server_fills_photos_over_the_threshold_in_windows_as_the_library_does(shipped_repo, start_server):
    image, mask = photo(1100, 1500), diagonal_scratch(1100, 1500)
    server = start_server(shipped_repo, rest_port=None, tile_above_pixels=2**20)
    with InpaintClient(server.grpc_target) as client:
        served = client.inpaint(image, mask, timeout=120)
    model = served_model(shipped_repo / "1")
    assert model.detail.enabled, "the shipped version declares its detail pass"

    def finished(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """A run as the server answers it: each window is an image it runs whole, finished with the pass."""
        outputs = model.inpaint(images, masks)
        finish_fills(outputs, masks, model.detail, False)
        return outputs

    local = inpaint_tiled(image, mask, finished, TilingOptions(tile_above_pixels=2**20))
    whole = model.inpaint(image[None], mask[None, ..., None])[0]
    holes = mask > 0
    np.testing.assert_array_equal(served[~holes], image[~holes])
    assert np.abs(served.astype(int) - local.astype(int)).max() <= 1
    assert np.abs(served.astype(int) - whole.astype(int))[holes].max() > 1, "the server ran the photo whole"


def test_photos_the_server_tiles_itself_get_the_versions_detail_pass_at_full_resolution(shipped_repo, start_server):
    image, mask = photo(1100, 1500), diagonal_scratch(1100, 1500, thickness=40)
    server = start_server(shipped_repo, rest_port=None, tile_above_pixels=2**20)
    with InpaintClient(server.grpc_target, tiling=TilingOptions(mode="off")) as client:  # the photo travels whole
        served = client.inpaint(image, mask, timeout=120)
    model = served_model(shipped_repo / "1")
    raw = inpaint_tiled(image, mask, model.inpaint, TilingOptions(tile_above_pixels=2**20))
    local = raw.copy()
    finish_fills(local[None], mask[None], model.detail, True)
    holes = mask > 0
    np.testing.assert_array_equal(served[~holes], image[~holes])
    assert np.abs(served.astype(int) - local.astype(int)).max() <= 1
    assert np.abs(served.astype(int) - raw.astype(int))[holes].mean() > 2, "no detail pass ran"


def test_a_24_megapixel_photo_works_end_to_end(onnx_repo, start_server):
    height, width = 4000, 6000
    image = cv2.resize(random_image(400, 600), (width, height), interpolation=cv2.INTER_NEAREST)
    mask = diagonal_scratch(height, width)
    with InpaintClient(start_server(onnx_repo, rest_port=None).grpc_target) as client:
        output = client.inpaint(image, mask, timeout=120)
    np.testing.assert_array_equal(output, expected_fill(image, mask[..., None]))


def test_many_small_images_in_one_request_run_in_bounded_groups(onnx_repo, start_server):
    # Runs are bounded in the pixels the graph runs: 300 x 400 is padded to 304 x 400 (multiples of 16).
    server = start_server(onnx_repo, rest_port=None, tile_above_pixels=2 * 304 * 400, enable_batching=True)
    images = np.stack([random_image(300, 400, seed) for seed in range(7)])
    masks = np.stack([diagonal_scratch(300, 400, 3 + seed) for seed in range(7)])
    with InpaintClient(server.grpc_target) as client:
        outputs = client.inpaint_batch(images, masks, timeout=60)
    np.testing.assert_array_equal(np.stack(outputs), expected_fill(images, masks[..., None]))
    registry, labels = server.server.metrics.registry, {"model_name": "inpaint"}
    images_run = server.call(lambda: registry.get_sample_value("inpaint_batching_session_batch_size_sum", labels))
    runs = server.call(lambda: registry.get_sample_value("inpaint_batching_session_batch_size_count", labels))
    assert (images_run, runs) == (7, 4), "7 images over runs of at most 2"


def test_a_large_photo_holds_only_its_share_of_the_memory_budget_while_others_run(shipped_repo, start_server):
    """A request may hold at most --memory-share of --memory-budget-mib: while a large photo runs, small
    requests are admitted and served, not refused; a request costing more than its share gets 413's
    RESOURCE_EXHAUSTED at once."""
    height, width = 1100, 1500
    # ONNX Runtime, whose runs each request pays for (OpenVINO's are held at start: tests/test_openvino.py).
    onnxruntime = dict(runtime="onnxruntime", precision="float32")
    server = start_server(shipped_repo, rest_port=None, tile_above_pixels=2**20, memory_budget_mib=768,
                          memory_share=0.75, **onnxruntime)
    image, mask = photo(height, width), diagonal_scratch(height, width)
    first: dict = {}

    def send_first():
        with InpaintClient(server.grpc_target, tiling=TilingOptions(mode="off")) as client:
            first["output"] = client.inpaint(image, mask, timeout=120)

    sender = threading.Thread(target=send_first)
    sender.start()
    budget = server.server.budget
    wait_for(lambda: server.call(lambda: budget.held) > 0, what="first request in flight")
    with InpaintClient(server.grpc_target) as client:
        assert client.inpaint(image[:100, :100], mask[:100, :100], timeout=30).shape == (100, 100, 3)
    sender.join()
    assert first["output"].shape == image.shape
    assert server.call(lambda: budget.held) == 0
    huge = start_server(shipped_repo, rest_port=None, memory_budget_mib=64, **onnxruntime)
    with InpaintClient(huge.grpc_target, tiling=TilingOptions(mode="off")) as client:
        with pytest.raises(Exception, match="one request may hold"):
            client.inpaint(image, mask, timeout=30)


def test_tiling_off_refuses_an_image_limit_above_what_one_run_may_hold(tmp_path):
    result = CliRunner().invoke(serve_main, ["--model-base-path", str(tmp_path), "--tiling", "off"])
    assert result.exit_code == 1
    assert "--tiling off" in result.output and "--max-pixels" in result.output and "Traceback" not in result.output


def test_the_client_sends_only_the_windows_of_a_large_photo(onnx_repo, start_server):
    """The server refuses anything over 0.6 MP: the 12 MP photo only gets through as windows."""
    height, width = 3000, 4000
    image = cv2.resize(random_image(300, 400), (width, height), interpolation=cv2.INTER_NEAREST)
    mask = diagonal_scratch(height, width)
    server = start_server(onnx_repo, rest_port=None, max_request_pixels=600_000)
    expected = expected_fill(image, mask[..., None])
    with InpaintClient(server.grpc_target) as client:
        np.testing.assert_array_equal(client.inpaint(image, mask, timeout=60), expected)
    with InpaintClient(server.grpc_target, tiling=TilingOptions(mode="off")) as client:
        with pytest.raises(InvalidInput, match="request too large|max-request-pixels"):
            client.inpaint(image, mask, timeout=60)

    async def send_async():
        async with AsyncInpaintClient(server.grpc_target) as client:
            return await client.inpaint_batch([image, image[:100, :100]], [mask, mask[:100, :100]], timeout=60)

    large, small = asyncio.run(send_async())
    np.testing.assert_array_equal(large, expected)
    np.testing.assert_array_equal(small, expected[:100, :100])


def test_the_cli_tiles_large_photos_and_can_be_told_not_to(onnx_repo, start_server, tmp_path):
    from conftest import write_png

    height, width = 1500, 1500
    image = cv2.resize(random_image(150, 150), (width, height), interpolation=cv2.INTER_NEAREST)
    mask = diagonal_scratch(height, width)
    image_path, mask_path = write_png(tmp_path / "photo.png", image), write_png(tmp_path / "mask.png", mask * 255)
    server = start_server(onnx_repo, rest_port=None, max_request_pixels=600_000)
    arguments = ["--target", server.grpc_target, "predict", str(image_path), str(mask_path), "-o", str(tmp_path / "out.png")]
    result = CliRunner().invoke(client_main, arguments)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read_image(tmp_path / "out.png"), expected_fill(image, mask[..., None]))
    result = CliRunner().invoke(client_main, arguments + ["--tiling", "off"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert re.search("request too large|over the limit of 600000 per request", result.output), result.output
