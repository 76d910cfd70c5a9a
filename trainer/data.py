"""Training data in memory: the ``Dataset``, the readers that fill it, the split rule, the crops.

Readers of the built-in sources and of local folders (``sources.py`` resolves ``--data`` to one):

* ``load_samples``: the colour photographs that ship inside scikit-image's installed package, so
  training needs no network. A fixed subset is held out.
* ``load_folder``: a folder of the user's own images, split deterministically by file name
  (``split_by_name``, which ``stream.py`` also applies to TFRecord records).
* ``read_cifar10_folder`` / ``download_cifar10``: CIFAR-10 (an unpacked ``cifar-10-batches-py``
  folder for offline machines, or downloaded by Keras), split by ``cifar10_dataset``.

Only numpy and OpenCV are needed here; TensorFlow is imported lazily for the Keras CIFAR-10 download.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from inpaint.core import images as image_io
from inpaint.core.images import IMAGE_SUFFIXES
from inpaint.core.masks import generate_mask

from .errors import DataError
from .photos.catalogue import SPLITS

logger = logging.getLogger(__name__)

# scikit-image's bundled colour photographs. The two stereo motorcycle views show
# one scene, so they stay on the same side of the split.
SAMPLE_TRAIN = (
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "ihc.png",
    "retina.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
)
SAMPLE_VALIDATION = ("chelsea.png",)
SAMPLE_TEST = ("astronaut.png", "coffee.png")  # held out: never seen in training


@dataclass
class Dataset:
    """Images of one source, split into train, validation and held-out test."""

    source: str
    train: list[np.ndarray]
    validation: list[np.ndarray]
    test: list[np.ndarray]
    names: dict[str, list[str]] = field(default_factory=dict)

    def describe(self) -> dict:
        return {
            "source": self.source,
            "counts": {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)},
            "files": self.names,
        }


def read_image(path: Path) -> np.ndarray:
    """An image file as RGB uint8 ``(H, W, 3)``; alpha is dropped, grey is expanded."""
    try:
        return image_io.read_image(path)
    except image_io.ImageError as error:
        raise DataError(str(error)) from None


write_image = image_io.write_image


def samples_dir() -> Path:
    """The folder of scikit-image's bundled photographs, found without importing it."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("--data samples needs scikit-image: pip install 'inpaint[train]'")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def read_splits(folder: Path, names: dict[str, list[str]], splits: Sequence[str]) -> dict[str, list[np.ndarray]]:
    """The images of ``splits`` read from ``folder``; the other splits stay empty (their names are kept)."""
    return {split: [read_image(folder / name) for name in split_names] if split in splits else []
            for split, split_names in names.items()}


def load_samples(splits: Sequence[str] = SPLITS) -> Dataset:
    folder = samples_dir()
    names = {"train": list(SAMPLE_TRAIN), "validation": list(SAMPLE_VALIDATION), "test": list(SAMPLE_TEST)}
    return Dataset("samples", **read_splits(folder, names, splits), names=names)


def split_of_name(name: str) -> str:
    """A file's split from a hash of its name: stable when files are added or removed."""
    bucket = int(hashlib.sha1(name.encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder``, sorted; DataError if there is none."""
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist")
    files = image_io.find_images(folder)
    if not files:
        raise DataError(f"data folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def split_by_name(files: Sequence[str], where: object) -> dict[str, list[str]]:
    """File names (relative to their folder) into train, validation and test by ``split_of_name``.

    Too few to split (fewer than 3, or no training file): every split is all of them, with a warning;
    a split left empty borrows the first training file. ``where`` names the source in warnings.
    """
    names: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for name in files:
        names[split_of_name(name)].append(name)
    if not names["train"] or len(files) < 3:
        logger.warning("%s has too few images to hold any out: validating and testing on training images", where)
        names = {"train": list(files), "validation": list(files), "test": list(files)}
    for split in ("validation", "test"):
        if not names[split]:
            names[split] = names["train"][:1]
            logger.warning("%s: no image hashed into the %s split; using %s", where, split, names[split][0])
    return names


def load_folder(folder: Path, splits: Sequence[str] = SPLITS) -> Dataset:
    """A user's folder: about 10 % test, 10 % validation, by file-name hash.

    A folder too small to split (fewer than 3 images, or no training image)
    trains, validates and tests on the same images, with a warning; a split
    left empty borrows the first training image.
    """
    names = split_by_name([str(path.relative_to(folder)) for path in image_files(folder)], folder)
    return Dataset(str(folder), **read_splits(folder, names, splits), names=names)


def _read_cifar_batch(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"CIFAR-10 batch {path} is missing")
    with path.open("rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    data = batch[b"data"] if b"data" in batch else batch["data"]
    return np.asarray(data, np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def read_cifar10_folder(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Train and test images from an unpacked ``cifar-10-batches-py`` folder."""
    if not folder.is_dir():
        raise DataError(f"CIFAR-10 folder {folder} does not exist")
    train = np.concatenate([_read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)])
    return train, _read_cifar_batch(folder / "test_batch")


def download_cifar10() -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 through Keras, which downloads it once into ``~/.keras/datasets``."""
    from keras.datasets import cifar10  # heavy, and only this source needs it

    (train, _), (test, _) = cifar10.load_data()
    return train, test


def cifar10_dataset(train: np.ndarray, test: np.ndarray, source: str) -> Dataset:
    """The last 10 % of CIFAR-10's training set validates; its test batch is held out."""
    n_val = max(1, len(train) // 10)
    return Dataset(
        source,
        train=list(train[:-n_val]),
        validation=list(train[-n_val:]),
        test=list(test),
        names={"train": [f"data_batch[:{len(train) - n_val}]"], "validation": [f"data_batch[-{n_val}:]"],
               "test": ["test_batch"]},
    )


def check_image_size(images: list[np.ndarray], image_size: int, names: list[str] | None = None) -> None:
    """Every image must hold at least one crop of ``image_size``."""
    for index, image in enumerate(images):
        if min(image.shape[:2]) < image_size:
            name = names[index] if names and len(names) == len(images) else f"#{index}"
            raise DataError(f"image {name} is {image.shape[1]}x{image.shape[0]}, smaller than --image-size {image_size}")


def check_dataset_image_size(dataset: Dataset, image_size: int) -> None:
    for split in ("train", "validation", "test"):
        check_image_size(getattr(dataset, split), image_size, dataset.names.get(split))


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator, max_zoom_out: float = 8.0,
                flip: bool = True) -> np.ndarray:
    """A ``size``-square crop at a random scale, position and horizontal flip.

    The crop covers between ``size`` and ``size * max_zoom_out`` source pixels
    (never more than the image), then is resized to ``size``: small crops of big
    photos alone would show the model nothing but flat texture.
    """
    height, width = image.shape[:2]
    largest = min(height, width, int(size * max_zoom_out))
    side = int(round(np.exp(rng.uniform(np.log(size), np.log(largest))))) if largest > size else size
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    crop = image[top : top + side, left : left + side]
    if side != size:
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    if flip and rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


def sample_crops(images: list[np.ndarray], count: int, size: int, rng: np.random.Generator,
                 **crop_options) -> np.ndarray:
    """``count`` crops, each from a randomly chosen image: ``(count, size, size, 3)`` uint8."""
    picks = rng.integers(0, len(images), count)
    return np.stack([random_crop(images[i], size, rng, **crop_options) for i in picks])


def masked_examples(images: list[np.ndarray], count: int, size: int, mask_kind: str,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Crops and their masks: ``(N, S, S, 3)`` uint8 images and ``(N, S, S)`` uint8 masks."""
    crops = sample_crops(images, count, size, rng)
    masks = np.stack([generate_mask(mask_kind, size, size, rng) for _ in range(count)])
    return crops, masks
