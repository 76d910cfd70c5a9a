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
    first, exactly as the serving graph returns them; the last ones are kept
    (``output``) for the TensorBoard example fills.

    ``direct``: call the model on the crops instead of ``predict``, which under a
    multi-worker strategy would shard them over the workers.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, direct: bool = False):
        super().__init__()
        self.images, self.masks, self.direct = images, masks, direct
        self.inputs, _ = model_arrays(images, masks)
        self.output: np.ndarray | None = None

    @classmethod
    def for_config(cls, dataset: Dataset, config, direct: bool = False) -> "ValidationMetrics":
        rng = np.random.default_rng([config.seed, 2**31 - 1])  # a stream training never draws
        return cls(*masked_examples(dataset.validation, config.validation_size, config.image_size,
                                    config.mask_kind, rng), direct=direct)

    def predict(self) -> np.ndarray:
        if not self.direct:
            return self.model.predict(self.inputs, batch_size=64, verbose=0)
        return np.concatenate([keras.ops.convert_to_numpy(self.model(self.inputs[start:start + 64], training=False))
                               for start in range(0, len(self.inputs), 64)])

    def on_epoch_end(self, epoch, logs=None):
        output = metrics.composite(self.images, self.masks, self.predict())
        self.output = output
        scores = metrics.all_metrics(self.images, output, self.masks)
        if logs is not None:
            logs.update({f"val_{name}": value for name, value in scores.items()})


def example_fills(images: np.ndarray, masks: np.ndarray, output: np.ndarray, count: int = 4) -> np.ndarray:
    """``count`` rows of [input with holes in white | the model's fill | the truth], uint8 ``(N, S, 3S, 3)``."""
    shown = np.where(masks[:count, ..., None] > 0, np.uint8(255), images[:count])
    return np.concatenate([shown, output[:count], images[:count]], axis=2)


def _summary_metadata(plugin: str, description: str = "", content: bytes = b""):
    """TensorBoard's metadata for a tensor summary of ``plugin`` ("scalars" or "images")."""
    from tensorflow.core.framework import summary_pb2

    data_class = summary_pb2.DATA_CLASS_SCALAR if plugin == "scalars" else summary_pb2.DATA_CLASS_BLOB_SEQUENCE
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin, content=content),
        summary_description=description, data_class=data_class)


class TensorBoardLogger(keras.callbacks.Callback):
    """TensorBoard summaries per epoch, written with ``tf.summary.write`` (TensorBoard need not be installed).

    ``LOGDIR/train``: ``epoch_loss`` and ``epoch_learning_rate``; ``LOGDIR/validation``: the validation
    metrics as ``epoch_mae``, ``epoch_hole_mae``, ``epoch_psnr``, ``epoch_ssim``, ``epoch_dice`` (Keras'
    TensorBoard names) and the image ``example_fills``: a few validation crops as [input with holes in
    white | fill | truth], from the fills ``ValidationMetrics`` just scored (it must run first).
    """

    def __init__(self, logdir: str, validation: ValidationMetrics | None = None, fills: int = 4):
        super().__init__()
        self.logdir, self.validation, self.fills = logdir.rstrip("/"), validation, fills
        self.writers: dict = {}

    def _writer(self, run: str):
        import tensorflow as tf

        if run not in self.writers:
            self.writers[run] = tf.summary.create_file_writer(f"{self.logdir}/{run}")
        return self.writers[run]

    def _scalar(self, run: str, tag: str, value: float, step: int) -> None:
        import tensorflow as tf

        with self._writer(run).as_default():
            tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step,
                             metadata=_summary_metadata("scalars"))

    def _images(self, run: str, tag: str, images: np.ndarray, step: int, description: str) -> None:
        import tensorflow as tf

        height, width = images.shape[1:3]
        encoded = [tf.io.encode_png(image) for image in images]
        tensor = tf.stack([tf.as_string(width), tf.as_string(height), *encoded])  # the image plugin's layout
        with self._writer(run).as_default():
            tf.summary.write(tag, tensor, step=step, metadata=_summary_metadata("images", description))

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        try:
            logs.setdefault("learning_rate", float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        except (AttributeError, TypeError, ValueError):
            pass
        for name, value in logs.items():
            run, name = ("validation", name[4:]) if name.startswith("val_") else ("train", name)
            self._scalar(run, f"epoch_{name}", value, epoch)
        if self.validation is not None and self.validation.output is not None:
            grid = example_fills(self.validation.images, self.validation.masks, self.validation.output, self.fills)
            self._images("validation", "example_fills", grid, epoch,
                         "validation crops: input with holes in white | fill | truth")
        for writer in self.writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self.writers.values():
            writer.close()


class TimeLimit(keras.callbacks.Callback):
    """Stop at the end of the first epoch that ends after ``minutes`` of training.

    ``spent_seconds``: training time of the run before it was resumed. ``agree``: turns this worker's
    verdict into every worker's (a multi-worker run must stop all of its workers after the same epoch).
    """

    def __init__(self, minutes: float, spent_seconds: float = 0.0, agree=None):
        super().__init__()
        self.seconds = minutes * 60.0
        self.spent = spent_seconds
        self.agree = agree
        self.started = 0.0

    def on_train_begin(self, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        over = self.spent + time.monotonic() - self.started > self.seconds
        if self.agree is not None:
            over = self.agree(over)
        if over:
            logger.warning("time limit of %.1f minutes reached after epoch %d: stopping", self.seconds / 60, epoch + 1)
            self.model.stop_training = True
