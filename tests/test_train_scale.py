"""Training beyond one machine: two workers, a run killed and resumed, memory independent of the folder's
size, TensorBoard logs, and the streaming input's own guarantees (split, seeds, resume, TFRecords)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import random_image, write_png
from inpaint.core.repository import RUN_RECORD, list_versions

TINY = ["--init-weights", "none", "--image-size", "32", "--depth", "2", "--base-filters", "8", "--batch-size", "4",
        "--validation-size", "8", "--max-minutes", "0"]
MIB = 2**20


def trainer(*args) -> list[str]:
    return [sys.executable, "-m", "inpaint.trainer.train", *TINY, *map(str, args)]


def environment(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", **extra)
    return env


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on, held together while chosen so that they differ."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def epoch_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if " - loss: " in line]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i in range(24):
        write_png(folder / f"set{i % 3}" / f"p{i:02d}.png", random_image(40, 48, seed=i))
    return folder


# -- two workers ------------------------------------------------------------------------------------

def test_two_workers_train_one_model_and_only_the_chief_publishes(photos, tmp_path):
    base, backup, logdir = tmp_path / "models", tmp_path / "backup", tmp_path / "logs"
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    command = trainer("--data", photos, "--loader", "stream", "--model-base-path", base, "--epochs", "2",
                      "--steps-per-epoch", "3", "--strategy", "multi-worker", "--backup-dir", backup,
                      "--logdir", logdir)
    logs = [tmp_path / f"worker{index}.log" for index in range(2)]
    workers = [subprocess.Popen(command, cwd=tmp_path, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                env=environment(TF_CONFIG=json.dumps({"cluster": cluster,
                                                                      "task": {"type": "worker", "index": index}})))
               for index, log in enumerate(logs)]
    try:
        codes = [worker.wait(timeout=240) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert codes == [0, 0], "\n\n".join(tail(log) for log in logs)
    chief, other = (log.read_text() for log in logs)

    assert list_versions(base) == [1], "exactly one version, from the chief"
    assert not [p for p in base.iterdir() if p.name.startswith(".")], "no staging left"
    record = json.loads((base / "1" / RUN_RECORD).read_text())
    assert record["distribution"] == {"strategy": "multi-worker", "replicas": 2, "workers": 2, "task": "worker:0",
                                      "per_replica_batch": 4, "global_batch": 8, "learning_rate": 3e-4}
    assert len(record["history"]["loss"]) == 2 and record["steps_done"] == 6
    assert "wrote" in chief and "worker:1 done: the chief publishes the version" in other
    # One model in sync: both workers log the same losses (averaged over the replicas) and validation scores.
    assert epoch_lines(chief) and [line.split(" - ", 3)[-1] for line in epoch_lines(chief)] == \
        [line.split(" - ", 3)[-1] for line in epoch_lines(other)]
    assert not backup.exists(), "the backup is removed once the version is published"
    assert {p.name for p in logdir.iterdir()} == {"train", "validation"}, "only the chief's logs"


# -- a run killed and resumed -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def resumed_run(photos, tmp_path_factory):
    """A 3-epoch run SIGKILLed as soon as its first epoch is backed up, then started again, same command."""
    root = tmp_path_factory.mktemp("resume")
    command = trainer("--data", photos, "--loader", "stream", "--model-base-path", root / "models", "--epochs", "3",
                      "--steps-per-epoch", "20", "--backup-dir", root / "backup", "--logdir", root / "logs")
    first_log, second_log = root / "first.log", root / "second.log"
    first = subprocess.Popen(command, cwd=root, stdout=first_log.open("w"), stderr=subprocess.STDOUT,
                             env=environment())
    deadline = time.monotonic() + 180
    try:
        while not (root / "backup" / "epoch-000001").is_dir():  # renamed into place whole: epoch 1 is done
            assert first.poll() is None, f"the run ended before its first backup:\n{tail(first_log)}"
            assert time.monotonic() < deadline, f"no backup after 180 s:\n{tail(first_log)}"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == -signal.SIGKILL
    backed_up = sorted(p.name for p in (root / "backup").iterdir() if p.name.startswith("epoch-"))
    second = subprocess.run(command, cwd=root, stdout=second_log.open("w"), stderr=subprocess.STDOUT,
                            env=environment(), timeout=240, check=False)
    assert second.returncode == 0, tail(second_log)
    return root, backed_up, first_log.read_text(), second_log.read_text()


def test_a_killed_run_resumes_from_its_last_epoch_and_publishes_once(resumed_run):
    root, backed_up, first, second = resumed_run
    done = int(backed_up[-1].split("-")[1])
    assert 1 <= done < 3, backed_up
    assert "wrote" not in first, "the first run was killed before publishing"
    assert f"resuming from {root / 'backup'}: {done} of 3 epochs done, continuing with epoch {done + 1}" in second
    assert f"Epoch {done + 1}/3" in second and "Epoch 1/3" not in second
    assert list_versions(root / "models") == [1]
    record = json.loads((root / "models" / "1" / RUN_RECORD).read_text())
    assert record["resumed_after_epoch"] == done
    assert len(record["history"]["loss"]) == 3 and len(record["history"]["val_hole_mae"]) == 3
    assert record["steps_done"] == 60
    assert not (root / "backup").exists()


def test_logdir_holds_losses_validation_metrics_and_example_fills(resumed_run):
    import tensorflow as tf

    root = resumed_run[0]
    found: dict[str, dict[str, set[int]]] = {}
    images = []
    for run in ("train", "validation"):
        for events in sorted((root / "logs" / run).glob("events.out.tfevents.*")):
            for event in tf.compat.v1.train.summary_iterator(str(events)):
                for value in event.summary.value:
                    plugin = value.metadata.plugin_data.plugin_name
                    found.setdefault(run, {}).setdefault(f"{value.tag}:{plugin}", set()).add(event.step)
                    if value.tag == "example_fills":
                        images.append(tf.make_ndarray(value.tensor))
    every_epoch = {0, 1, 2}  # epoch 0 from the killed run, 1 and 2 after the restart
    for tag in ("epoch_loss", "epoch_learning_rate"):
        assert found["train"][f"{tag}:scalars"] == every_epoch, found["train"]
    for tag in ("epoch_mae", "epoch_hole_mae", "epoch_psnr", "epoch_ssim", "epoch_dice"):
        assert found["validation"][f"{tag}:scalars"] == every_epoch, found["validation"]
    assert found["validation"]["example_fills:images"] == every_epoch
    width, height, *pngs = images[-1]
    assert (int(width), int(height)) == (96, 32) and len(pngs) == 4  # input | fill | truth, 32-px crops
    assert tf.io.decode_png(pngs[0]).shape == (32, 96, 3)


# -- memory independent of the folder's size --------------------------------------------------------

SIDE = 48
PER_FOLDER = 2000


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    """20,000 small PNGs, 2,000 per sub-folder, each a different window of one smooth picture."""
    root = tmp_path_factory.mktemp("many")
    picture = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (SIDE * 4, SIDE * 4, 3), np.uint8), (0, 0), 2)
    for index in range(10 * PER_FOLDER):
        folder = root / f"part{index // PER_FOLDER}"
        if index % PER_FOLDER == 0:
            folder.mkdir()
        top, left = (index * 7) % (SIDE * 3), (index * 13) % (SIDE * 3)
        cv2.imwrite(str(folder / f"img{index:05d}.png"), picture[top:top + SIDE, left:left + SIDE])
    return root


# Forks the command from a fresh, small interpreter and reports its ru_maxrss. A child forked straight from
# pytest would report pytest's own resident set (gigabytes once the suite has loaded TensorFlow): the kernel
# counts the pre-exec image in a child's maximum.
_MEASURE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.dup2(1, 2)  # the trainer's log goes to the log file with its output
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss(command: list[str], log: Path, cwd: Path) -> int:
    """Peak resident memory of the training process (its high-water mark, reported at its exit), bytes."""
    with log.open("w") as out:
        process = subprocess.run([sys.executable, "-c", _MEASURE, *command], cwd=cwd, stdout=out,
                                 stderr=subprocess.PIPE, env=environment(), text=True)
    assert process.returncode == 0, tail(log) + process.stderr[-2000:]
    return int(process.stderr.strip().splitlines()[-1]) * 1024  # KiB on Linux


def test_peak_memory_does_not_grow_with_the_number_of_images(many_images, tmp_path):
    steps = ["--epochs", "1", "--steps-per-epoch", "4"]
    small = peak_rss(trainer("--data", many_images / "part0", "--model-base-path", tmp_path / "a", *steps),
                     tmp_path / "2000.log", tmp_path)
    large = peak_rss(trainer("--data", many_images, "--model-base-path", tmp_path / "b", *steps),
                     tmp_path / "20000.log", tmp_path)
    # --loader auto streams both folders (over 1,000 images): only their names are held.
    for log, count in (("2000.log", 2000), ("20000.log", 20000)):
        split = re.search(r"streamed: (\d+) train, (\d+) validation, (\d+) held-out", (tmp_path / log).read_text())
        assert split and sum(map(int, split.groups())) == count
    assert abs(large - small) < 20 * MIB, f"2,000 images: {small / MIB:.0f} MiB, 20,000: {large / MIB:.0f} MiB"

    # The in-memory loader holds the 18,000 extra decoded images (120 MiB): the measurement would show it.
    in_memory = peak_rss(trainer("--data", many_images, "--loader", "memory", "--model-base-path", tmp_path / "c",
                                 *steps), tmp_path / "memory.log", tmp_path)
    memory_log = (tmp_path / "memory.log").read_text()
    assert "held-out images" in memory_log and "streamed" not in memory_log
    assert in_memory - large > 60 * MIB, f"in memory {in_memory / MIB:.0f} MiB, streamed {large / MIB:.0f} MiB"
    print(f"peak RSS: 2,000 images streamed {small / MIB:.0f} MiB, 20,000 streamed {large / MIB:.0f} MiB, "
          f"20,000 in memory {in_memory / MIB:.0f} MiB")


# -- the stream's guarantees, in process --------------------------------------------------------------

def _batches(source, count: int, **layout):
    from inpaint.trainer.stream import Layout, training_batches

    deterministic = layout.pop("deterministic", True)
    dataset = training_batches(source, Layout(4, (16, 24, 32), **layout), mask_kind="mixed", seed=3,
                               deterministic=deterministic)
    return [x.numpy() for x, _ in dataset.take(count)]  # a finite take: the pipeline's threads end with it


def test_stream_splits_by_file_name_like_the_folder_loader(photos):
    from inpaint.trainer import data
    from inpaint.trainer.sources import open_data
    from inpaint.trainer.stream import FileSource

    streamed = open_data(str(photos), loader="stream")
    assert isinstance(streamed, FileSource)
    assert streamed.names == data.load_folder(photos, splits=()).names
    globbed = open_data(f"{photos}/*/*.png")  # a glob streams under --loader auto
    assert isinstance(globbed, FileSource) and globbed.names == streamed.names
    assert isinstance(open_data(str(photos)), data.Dataset), "a small folder stays in memory under auto"


def test_stream_is_seeded_resumable_and_draws_each_replica_its_own_examples(photos):
    from inpaint.trainer.sources import open_data

    source = open_data(str(photos), loader="stream")
    first, again = _batches(source, 6), _batches(source, 6)
    assert [b.shape for b in first] == [(4, s, s, 4) for s in (16, 24, 32, 16, 24, 32)], "sides cycle per step"
    assert all(np.array_equal(a, b) for a, b in zip(first, again)), "same seed, same batches"
    resumed = _batches(source, 2, start_step=2)
    assert np.array_equal(resumed[0], first[2]) and np.array_equal(resumed[1], first[3]), "resumes where it stopped"

    def contents(batch):
        return frozenset(example.tobytes() for example in batch)

    window = {contents(b) for b in _batches(source, 16)}
    assert all(contents(b) in window for b in _batches(source, 6, deterministic=False)), \
        "out of order, the same batches"
    replica0 = _batches(source, 3, replicas=2, pipelines=2, pipeline_id=0)
    replica1 = _batches(source, 3, replicas=2, pipelines=2, pipeline_id=1)
    assert [b.shape for b in replica1] == [b.shape for b in replica0], "a step's replicas share its crop side"
    assert all(not contents(a) & contents(b) for a, b in zip(replica0, replica1))


def test_tfrecord_shards_stream_and_validate(tmp_path):
    import tensorflow as tf
    from inpaint.trainer.sources import open_data
    from inpaint.trainer.stream import FileSource, validation_examples

    for shard in range(2):
        with tf.io.TFRecordWriter(str(tmp_path / f"photos.tfrecord-{shard:05d}-of-00002")) as writer:
            for index in range(20):
                encoded = cv2.imencode(".png", random_image(40, 44, seed=shard * 100 + index))[1].tobytes()
                feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
                           "image/filename": tf.train.Feature(
                               bytes_list=tf.train.BytesList(value=[f"s{shard}/p{index}.png".encode()]))}
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    source = open_data(str(tmp_path))  # auto: no image files, TFRecord shards by suffix
    assert isinstance(source, FileSource) and source.format == "tfrecord"
    assert (source.image_key, source.name_key) == ("image/encoded", "image/filename")
    assert [b.shape for b in _batches(source, 3)] == [(4, 16, 16, 4), (4, 24, 24, 4), (4, 32, 32, 4)]
    crops, masks = validation_examples(source, 8, 32, "mixed", seed=0)
    assert crops.shape == (8, 32, 32, 3) and masks.shape == (8, 32, 32) and crops.any()


def test_a_backup_is_whole_or_ignored(tmp_path):
    """What a kill can leave: a half-written staging folder, a damaged newest backup."""
    import h5py
    from inpaint.trainer.resume import RunBackup, find_published, latest_state

    backup = tmp_path / "backup"
    run_id = RunBackup(backup).identity({"epochs": 3}, create=True)
    for epoch in (1, 2):
        folder = backup / f"epoch-{epoch:06d}"
        folder.mkdir()
        (folder / "training_metadata.json").write_text(json.dumps({"epoch": epoch, "history": {"loss": [0.1] * epoch}}))
        with h5py.File(folder / "latest.weights.h5", "w") as weights:
            weights["x"] = np.zeros(3)
    (backup / "epoch-000002" / "latest.weights.h5").write_bytes(b"cut short")
    (backup / ".staging-abc").mkdir()  # killed mid-write: never renamed, never read
    state = latest_state(backup)
    assert state.epoch == 1 and state.history == {"loss": [0.1]}
    assert RunBackup(backup).identity({"epochs": 3}, create=True) == run_id, "a restart keeps the run's id"

    base = tmp_path / "models"
    (base / "1" / RUN_RECORD).parent.mkdir(parents=True)
    (base / "1" / RUN_RECORD).write_text(json.dumps({"run_id": "another"}))
    assert find_published(base, run_id) is None
    (base / "2" / RUN_RECORD).parent.mkdir(parents=True)
    (base / "2" / RUN_RECORD).write_text(json.dumps({"run_id": run_id}))
    assert find_published(base, run_id) == base / "2", "killed after publishing: the restart finds its version"
