"""Keras plumbing for training: the batch stream and the per-epoch validation scores."""

from __future__ import annotations

import logging
import time

import keras
import numpy as np

from . import metrics
from .data import Dataset, masked_examples

logger = logging.getLogger(__name__)


def model_arrays(images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Network input (holes zeroed + mask) and target (truth + mask, for the loss)."""
    pixels = images.astype(np.float32) / 255.0
    hole = masks[..., None].astype(np.float32)
    x = np.concatenate([pixels * (1.0 - hole), hole], axis=-1)
    y = np.concatenate([pixels, hole], axis=-1)
    return x, y


def crop_sizes(image_size: int, multiple: int) -> tuple[int, ...]:
    """The training crop sides: 1/2, 3/4 and all of ``image_size``, multiples of ``multiple``.

    With the random zoom of each crop, the network sees the same holes at
    several scales and the same scene at several sizes.
    """
    sizes = {max(multiple, round(image_size * f / multiple) * multiple) for f in (0.5, 0.75, 1.0)}
    return tuple(sorted(sizes))


class MaskedBatches(keras.utils.PyDataset):
    """Fresh random crops and masks every step, reproducible from (seed, epoch, step).

    Steps cycle through the crop sides in ``sizes``, one side per batch. In
    order, not at random: Keras infers the input signature from the first two
    batches, and only differing sizes there make H and W dynamic.
    """

    def __init__(self, images: list[np.ndarray], *, steps: int, batch_size: int, sizes: tuple[int, ...],
                 mask_kind: str, seed: int, workers: int = 1):
        # Threads, not processes: OpenCV and numpy release the GIL, and JAX does not survive fork.
        super().__init__(workers=workers, use_multiprocessing=False)
        self.images, self.steps, self.batch_size = images, steps, batch_size
        self.sizes, self.mask_kind, self.seed = sizes, mask_kind, seed
        self.epoch = 0

    @classmethod
    def for_config(cls, dataset: Dataset, config) -> "MaskedBatches":
        return cls(dataset.train, steps=config.steps_per_epoch, batch_size=config.batch_size,
                   sizes=crop_sizes(config.image_size, 2**config.depth), mask_kind=config.mask_kind,
                   seed=config.seed, workers=config.workers)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        size = self.sizes[index % len(self.sizes)]
        return model_arrays(*masked_examples(self.images, self.batch_size, size, self.mask_kind, rng))

    def on_epoch_end(self) -> None:
        self.epoch += 1


class ValidationMetrics(keras.callbacks.Callback):
    """Scores fixed validation crops after every epoch with the evaluation's own metrics.

    The scores are added to the epoch's logs, so the progress bar and the
    history show them as ``val_mae``, ``val_hole_mae``, ``val_psnr``,
    ``val_ssim`` and ``val_dice``. Outputs are composited and rounded to uint8
    first, exactly as the serving graph returns them.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray):
        super().__init__()
        self.images, self.masks = images, masks
        self.inputs, _ = model_arrays(images, masks)

    @classmethod
    def for_config(cls, dataset: Dataset, config) -> "ValidationMetrics":
        rng = np.random.default_rng([config.seed, 2**31 - 1])  # a stream training never draws
        return cls(*masked_examples(dataset.validation, config.validation_size, config.image_size,
                                    config.mask_kind, rng))

    def on_epoch_end(self, epoch, logs=None):
        prediction = self.model.predict(self.inputs, batch_size=64, verbose=0)
        output = metrics.composite(self.images, self.masks, prediction)
        scores = metrics.all_metrics(self.images, output, self.masks)
        if logs is not None:
            logs.update({f"val_{name}": value for name, value in scores.items()})


class TimeLimit(keras.callbacks.Callback):
    """Stop at the end of the first epoch that ends after ``minutes`` of training."""

    def __init__(self, minutes: float):
        super().__init__()
        self.seconds = minutes * 60.0
        self.started = 0.0

    def on_train_begin(self, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if time.monotonic() - self.started > self.seconds:
            logger.warning("time limit of %.1f minutes reached after epoch %d: stopping", self.seconds / 60, epoch + 1)
            self.model.stop_training = True
