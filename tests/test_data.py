import hashlib
import pickle

import numpy as np
import pytest

from conftest import random_image, write_png
from inpaint.trainer import data, sources
from inpaint.trainer.errors import DataError


def _digest(image):
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def test_samples_hold_out_the_documented_photos():
    dataset = data.load_samples()
    assert dataset.names["test"] == ["astronaut.png", "coffee.png"]
    assert dataset.names["validation"] == ["chelsea.png"]
    train = {_digest(img) for img in dataset.train}
    held_out = {_digest(img) for img in dataset.validation + dataset.test}
    assert len(train) == 6 and not train & held_out
    assert all(img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8 for img in dataset.train)


def test_folder_split_is_deterministic_and_disjoint(tmp_path):
    for i in range(40):
        write_png(tmp_path / f"img{i:02d}.png", random_image(40, 48, seed=i))
    first, second = data.load_folder(tmp_path), data.load_folder(tmp_path)
    assert first.names == second.names
    splits = [set(first.names[s]) for s in ("train", "validation", "test")]
    assert sum(map(len, splits)) == 40
    assert not (splits[0] & splits[1]) and not (splits[0] & splits[2]) and not (splits[1] & splits[2])
    assert splits[1] and splits[2], "40 files leave something to validate and test on"


def test_folder_reads_grey_and_rgba(tmp_path):
    write_png(tmp_path / "grey.png", np.full((20, 30), 7, np.uint8))
    write_png(tmp_path / "rgba.png", np.full((20, 30, 4), 9, np.uint8))
    dataset = data.load_folder(tmp_path)
    assert all(img.shape == (20, 30, 3) for img in dataset.train)


def test_random_crop_has_the_size_and_is_seeded():
    image = random_image(300, 200)
    a = data.random_crop(image, 64, np.random.default_rng(5))
    b = data.random_crop(image, 64, np.random.default_rng(5))
    assert a.shape == (64, 64, 3)
    np.testing.assert_array_equal(a, b)


def _write_cifar_batch(path, images):
    """CIFAR-10's own format: a pickled dict, rows of 3072 bytes, R plane then G then B."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    with path.open("wb") as handle:
        pickle.dump({b"batch_label": b"x", b"labels": [0] * len(images), b"data": rows, b"filenames": []}, handle)


def test_cifar10_folder_reader(tmp_path):
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8) for _ in range(6)]
    for i in range(5):
        _write_cifar_batch(tmp_path / f"data_batch_{i + 1}", batches[i])
    _write_cifar_batch(tmp_path / "test_batch", batches[5])

    dataset = sources.load_dataset(f"cifar10:{tmp_path}")
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (90, 10, 20)
    np.testing.assert_array_equal(dataset.train[0], batches[0][0])  # channel order survives
    np.testing.assert_array_equal(dataset.test[-1], batches[5][-1])


def test_cifar10_download_path_uses_keras(monkeypatch):
    """The network is the one part that cannot run here: Keras' downloader is replaced."""
    import keras

    images = np.random.default_rng(1).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    labels = np.zeros((50, 1), np.uint8)
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", lambda: ((images, labels), (images[:5], labels[:5])))
    dataset = sources.load_dataset("cifar10")
    assert dataset.source == "cifar10"
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (45, 5, 5)


def test_missing_cifar_batch_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="data_batch_1"):
        sources.load_dataset(f"cifar10:{tmp_path}")


def test_bad_folders_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        sources.load_dataset(str(tmp_path / "nope"))
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="holds no images"):
        sources.load_dataset(str(tmp_path))


def test_small_images_are_rejected():
    with pytest.raises(DataError, match="smaller than --image-size 64"):
        data.check_image_size([np.zeros((32, 100, 3), np.uint8)], 64, ["tiny.png"])


def test_a_source_reads_only_the_splits_asked_for():
    """Evaluation asks for the held-out split alone: nothing else is read, every name is still known."""
    dataset = sources.load_dataset("samples", splits=("test",))
    assert dataset.train == [] and dataset.validation == []
    assert len(dataset.test) == len(data.SAMPLE_TEST) and dataset.test[0].ndim == 3
    assert dataset.names["train"] == list(data.SAMPLE_TRAIN)
