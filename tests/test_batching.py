"""The batcher on a real event loop, with a model that takes its time."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from inpaint.serving.batching import BatchingOptions, BatchScheduler
from inpaint.serving.errors import DeadlineExpired, QueueFull
from inpaint.core.contract import VersionState
from inpaint.serving.models import ModelVersion


class GatedModel:
    """Stands in for a heavy network: each call waits until the test opens the gate."""

    def __init__(self, open_gate: bool = True):
        self.calls: list[int] = []
        self.running = threading.Event()
        self.gate = threading.Event()
        if open_gate:
            self.gate.set()

    def inpaint(self, images, masks):
        self.calls.append(len(images))
        self.running.set()
        assert self.gate.wait(timeout=30), "the test never opened the gate"
        return images + 1


async def _until(event: threading.Event, timeout: float = 10) -> None:
    """Wait for a thread's event without blocking the event loop."""
    assert await asyncio.to_thread(event.wait, timeout), "the model never started"


async def _until_open_batches_time_out(batcher: BatchScheduler, timeout: float = 10) -> None:
    """Wait, on the loop, until there is an open batch and every open batch is past its timeout."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    while not (batcher._open and all(batch.timed_out for batch in batcher._open.values())):
        assert loop.time() < give_up, "the batch never timed out"
        await asyncio.sleep(0.001)


def _version(model) -> ModelVersion:
    return ModelVersion(1, None, VersionState.AVAILABLE, servable=model)


def _run(coroutine):
    return asyncio.run(coroutine)


def _image(n=1, h=4, w=4, value=0):
    return np.full((n, h, w, 3), value, np.uint8), np.zeros((n, h, w, 1), np.uint8)


def test_same_size_requests_merge_and_split_back():
    model = GatedModel()

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
    model = GatedModel()

    async def main():
        batcher = BatchScheduler(BatchingOptions(max_batch_size=8, batch_timeout_micros=20_000), ThreadPoolExecutor(1))
        batcher.start()
        version = _version(model)
        await asyncio.gather(batcher.run(version, *_image(h=4), None), batcher.run(version, *_image(h=5), None))
        await batcher.stop()

    _run(main())
    assert sorted(model.calls) == [1, 1]


def test_full_queue_refuses_at_once():
    model = GatedModel(open_gate=False)

    async def main():
        options = BatchingOptions(max_batch_size=1, batch_timeout_micros=0, max_enqueued_batches=2, num_batch_threads=1)
        batcher = BatchScheduler(options, ThreadPoolExecutor(1))
        batcher.start()
        version = _version(model)
        first = asyncio.ensure_future(batcher.run(version, *_image(), None))
        await _until(model.running)  # the only worker is busy with the first batch
        queued = [asyncio.ensure_future(batcher.run(version, *_image(), None)) for _ in range(2)]
        await asyncio.sleep(0)  # let both enqueue: the queue now holds its 2 batches
        assert batcher.queued_batches == 2
        with pytest.raises(QueueFull, match="queue is full"):
            await batcher.run(version, *_image(), None)  # refused while the model is still held
        model.gate.set()
        results = await asyncio.gather(first, *queued)
        await batcher.stop()
        return results

    assert len(_run(main())) == 3, "the queued requests still complete"
    assert model.calls == [1, 1, 1], "the refused request never reached the model"


def test_expired_requests_are_dropped_before_the_model():
    model = GatedModel(open_gate=False)

    async def main():
        options = BatchingOptions(max_batch_size=1, batch_timeout_micros=0, num_batch_threads=1)
        batcher = BatchScheduler(options, ThreadPoolExecutor(1))
        batcher.start()
        version, loop = _version(model), asyncio.get_running_loop()
        blocker = asyncio.ensure_future(batcher.run(version, *_image(), None))
        await _until(model.running)
        expired = asyncio.ensure_future(batcher.run(version, *_image(), loop.time()))  # due the moment it queues
        await asyncio.sleep(0)
        model.gate.set()
        with pytest.raises(DeadlineExpired):
            await expired
        await blocker
        await batcher.stop()

    _run(main())
    assert model.calls == [1], "the expired request never reached the model"


def test_allowed_batch_sizes_pad_the_batch_and_callers_get_their_own_rows():
    model = GatedModel()

    async def main():
        options = BatchingOptions(max_batch_size=8, batch_timeout_micros=20_000, allowed_batch_sizes=(4, 8))
        batcher = BatchScheduler(options, ThreadPoolExecutor(1))
        batcher.start()
        version = _version(model)
        outputs = await asyncio.gather(*(batcher.run(version, *_image(value=i), None) for i in range(3)))
        await batcher.stop()
        return outputs

    outputs = _run(main())
    assert model.calls == [4], "3 images padded to the allowed size 4"
    assert [o.shape[0] for o in outputs] == [1, 1, 1] and [int(o[0, 0, 0, 0]) for o in outputs] == [1, 2, 3]


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


def test_a_batch_past_its_timeout_keeps_filling_while_every_worker_is_busy():
    model = GatedModel(open_gate=False)

    async def main():
        options = BatchingOptions(max_batch_size=8, batch_timeout_micros=1_000, num_batch_threads=1)
        batcher = BatchScheduler(options, ThreadPoolExecutor(1))
        batcher.start()
        version = _version(model)
        first = asyncio.ensure_future(batcher.run(version, *_image(), None))
        await _until(model.running)  # the only worker is busy
        early = [asyncio.ensure_future(batcher.run(version, *_image(), None)) for _ in range(2)]
        await _until_open_batches_time_out(batcher)
        late = [asyncio.ensure_future(batcher.run(version, *_image(), None)) for _ in range(3)]
        await asyncio.sleep(0)
        assert batcher.queued_batches == 1, "one open batch holds all five"
        model.gate.set()
        results = await asyncio.gather(first, *early, *late)
        await batcher.stop()
        return results

    assert len(_run(main())) == 6
    assert model.calls == [1, 5], "the freed worker took the timed-out batch as it stood, without waiting to fill it"


def test_a_timed_out_batch_runs_before_younger_full_ones():
    model = GatedModel(open_gate=False)

    async def main():
        options = BatchingOptions(max_batch_size=2, batch_timeout_micros=1_000, num_batch_threads=1)
        batcher = BatchScheduler(options, ThreadPoolExecutor(1))
        batcher.start()
        version = _version(model)
        first = asyncio.ensure_future(batcher.run(version, *_image(), None))
        await _until(model.running)  # the only worker is busy
        trickle = asyncio.ensure_future(batcher.run(version, *_image(h=5), None))
        await _until_open_batches_time_out(batcher)  # timed out, still open: no worker is free
        full = [asyncio.ensure_future(batcher.run(version, *_image(h=6), None)) for _ in range(2)]
        await asyncio.sleep(0)
        model.gate.set()
        outputs = await asyncio.gather(first, trickle, *full)
        await batcher.stop()
        return outputs

    _run(main())
    assert model.calls == [1, 1, 2], "the 5-px request arrived first and runs first; the full 6-px batch waits"
