"""The batcher on a real event loop, with a model that takes its time."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from inpaint.serving.batching import BatchingOptions, BatchScheduler
from inpaint.serving.errors import DeadlineExpired, QueueFull
from inpaint.core.contract import VersionState
from inpaint.serving.models import ModelVersion


class SlowModel:
    """Stands in for a heavy network: the batcher only sees how long a call takes."""

    def __init__(self, seconds: float):
        self.seconds, self.calls = seconds, []

    def inpaint(self, images, masks):
        self.calls.append(len(images))
        time.sleep(self.seconds)
        return images + 1


def _version(model) -> ModelVersion:
    return ModelVersion(1, None, VersionState.AVAILABLE, servable=model)


def _run(coroutine):
    return asyncio.run(coroutine)


def _image(n=1, h=4, w=4, value=0):
    return np.full((n, h, w, 3), value, np.uint8), np.zeros((n, h, w, 1), np.uint8)


def test_same_size_requests_merge_and_split_back():
    model = SlowModel(0.01)

    async def main():
        batcher = BatchScheduler(BatchingOptions(max_batch_size=8, batch_timeout_micros=50_000), ThreadPoolExecutor(1))
        batcher.start()
        version = _version(model)
        outputs = await asyncio.gather(*(batcher.run(version, *_image(value=i), None) for i in range(8)))
        other = await batcher.run(version, *_image(2, 6, 6, value=50), None)
        await batcher.stop()
        return outputs, other

    outputs, other = _run(main())
    assert [int(o[0, 0, 0, 0]) for o in outputs] == [i + 1 for i in range(8)], "each caller gets its own slice"
    assert model.calls == [8, 2]
    assert other.shape == (2, 6, 6, 3)


def test_different_sizes_never_share_a_batch():
    model = SlowModel(0.0)

    async def main():
        batcher = BatchScheduler(BatchingOptions(max_batch_size=8, batch_timeout_micros=20_000), ThreadPoolExecutor(1))
        batcher.start()
        version = _version(model)
        await asyncio.gather(batcher.run(version, *_image(h=4), None), batcher.run(version, *_image(h=5), None))
        await batcher.stop()

    _run(main())
    assert sorted(model.calls) == [1, 1]


def test_full_queue_refuses_at_once():
    model = SlowModel(0.3)

    async def main():
        options = BatchingOptions(max_batch_size=1, batch_timeout_micros=0, max_enqueued_batches=2, num_batch_threads=1)
        batcher = BatchScheduler(options, ThreadPoolExecutor(1))
        batcher.start()
        version = _version(model)
        first = asyncio.ensure_future(batcher.run(version, *_image(), None))
        await asyncio.sleep(0.05)  # the first batch is running now
        queued = [asyncio.ensure_future(batcher.run(version, *_image(), None)) for _ in range(2)]
        await asyncio.sleep(0)
        started = time.monotonic()
        with pytest.raises(QueueFull, match="queue is full"):
            await batcher.run(version, *_image(), None)
        refused_after = time.monotonic() - started
        results = await asyncio.gather(first, *queued)
        await batcher.stop()
        return refused_after, results

    refused_after, results = _run(main())
    assert refused_after < 0.05, "refused without waiting"
    assert len(results) == 3, "the queued requests still complete"


def test_expired_requests_are_dropped_before_the_model():
    model = SlowModel(0.2)

    async def main():
        options = BatchingOptions(max_batch_size=1, batch_timeout_micros=0, num_batch_threads=1)
        batcher = BatchScheduler(options, ThreadPoolExecutor(1))
        batcher.start()
        version, loop = _version(model), asyncio.get_running_loop()
        blocker = asyncio.ensure_future(batcher.run(version, *_image(), None))
        await asyncio.sleep(0.02)
        with pytest.raises(DeadlineExpired):
            await batcher.run(version, *_image(), loop.time() + 0.05)
        await blocker
        await batcher.stop()

    _run(main())
    assert model.calls == [1], "the expired request never reached the model"


def test_batching_parameters_file(tmp_path):
    path = tmp_path / "batching.txt"
    path.write_text("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 500 }\n"
                    "num_batch_threads { value: 3 }\nallowed_batch_sizes: 4\nallowed_batch_sizes: 16\n")
    options = BatchingOptions.from_file(path, max_enqueued_batches=7)
    assert options == BatchingOptions(16, 500, 7, 3, (4, 16))
    path.write_text("max_batch_size { value: 16 }\nallowed_batch_sizes: 8\n")
    with pytest.raises(ValueError, match="end at max_batch_size 16"):
        BatchingOptions.from_file(path)
    path.write_text("max_batch_sise { value: 16 }\n")
    with pytest.raises(ValueError, match="cannot parse"):
        BatchingOptions.from_file(path)
