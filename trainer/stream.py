"""Streaming training input: file names in, batches of crops and masks out, through ``tf.data``.

The in-memory loader (``data.py``) decodes every photo before the first step; that is fast for the
built-in sources and small folders and impossible for a folder of a million camera photos. This
module keeps only file *names* in memory and decodes, crops and masks in a parallel ``tf.data``
pipeline (``num_parallel_calls=AUTOTUNE``, prefetched)::

    file names -> (example index, crop side) -> read file -> decode, crop, mask (numpy) -> batch -> model arrays

* **Sources** (chosen in ``sources.py``): a folder (recursive), a glob (``photos/**/*.jpg``) or TFRecord shards (``.tfrecord``,
  ``.tfrec``, ``name.tfrecord-00000-of-00016``), on any path ``tf.io.gfile`` reads (``gs://``, ...).
  A TFRecord record is a ``tf.train.Example`` with the encoded image in a bytes feature
  (``image/encoded``, ``image``, ...; found from the first record) or the encoded file itself.
* **The same recipe** as the in-memory loader: each example is ``data.random_crop`` (1-8x zoom, flip)
  and ``masks.generate_mask`` called through ``tf.numpy_function``, files decoded by OpenCV as
  ``core.images`` decodes them; steps cycle through the crop sides ``pipeline.crop_sizes``.
* **Reproducible**: example ``i`` is drawn with ``numpy.random.default_rng([seed, i])`` and the file
  order of each pass over the data is ``tf.random.experimental.index_shuffle`` of the file list, a
  stateless permutation (no index list in memory); with ``deterministic`` (the default) batches also
  come in the same order. A run resumed at epoch ``k`` starts at example ``k x steps x batch``: the
  stream goes on where it stopped. (TFRecord shards are read in order, so a resumed run reshuffles
  them with a seed derived from the epoch instead.)
* **Split by file name**, the folder rule (``data.split_of_name``): a file never moves between train,
  validation and test when others are added. TFRecord records split by their file-name feature, or
  by ``shard:index``.
* **Distribution**: each input pipeline (one per worker) draws its own examples of every global step:
  example indices are ``(step x replicas + replica) x batch + k``, so the replicas of a step never see
  the same example and all of a step's crops share one side.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
from inpaint.core import images as image_io
from inpaint.core.masks import generate_mask

from .data import Dataset, random_crop, split_of_name
from .errors import DataError
from .files import join, read_bytes

logger = logging.getLogger(__name__)

IMAGE_KEYS = ("image/encoded", "image", "image_raw", "encoded", "jpeg", "png")
NAME_KEYS = ("image/filename", "filename", "name", "key", "id")
TFRECORD_SHUFFLE = 256      # records (encoded, not decoded) held to shuffle a TFRecord stream
TFRECORD_PROBE = 200        # records read at start: the key layout, and whether the set is tiny
VALIDATION_SCAN = 50_000    # records read at most to find the TFRecord validation split
LISTED_NAMES = 1000         # run records list file names only up to this many in all (else digests)
DECODE_RETRIES = 10         # unreadable files skipped in a row before training stops


@dataclass
class FileSource:
    """A streamed training source: a root, file names split three ways, and how records hold images."""

    source: str
    root: str
    format: str                                       # images | tfrecord
    names: dict[str, list[str]]                       # images: split -> names; tfrecord: every split the shards
    image_key: str | None = None                      # tfrecord: the Example feature holding the file (None: raw)
    name_key: str | None = None                       # tfrecord: the feature naming the image, if any
    split_records: bool = True                        # tfrecord: False when too few records to hold any out
    probe: dict[str, int] = field(default_factory=dict)

    @property
    def train(self) -> list[str]:
        return self.names["train"]

    def paths(self, split: str) -> list[str]:
        return [join(self.root, name) for name in self.names[split]]

    def describe(self) -> dict:
        described = {"source": self.source, "loader": "stream", "format": self.format, "root": self.root}
        if self.format == "tfrecord":
            described.update(shards=self.names["train"], image_key=self.image_key, name_key=self.name_key,
                             split="by record name" if self.split_records else "none (too few records)")
            return described
        counts = {split: len(names) for split, names in self.names.items()}
        described["counts"] = counts
        if sum(counts.values()) <= LISTED_NAMES:
            described["files"] = self.names
        else:  # a million names would make the record as large as the model
            described["files_sha1"] = {split: hashlib.sha1("\n".join(names).encode()).hexdigest()
                                       for split, names in self.names.items()}
        return described


# --- TFRecord shards ------------------------------------------------------------------------------


def _record_layout(record: bytes) -> tuple[str | None, str | None]:
    """(image feature, name feature) of a ``tf.train.Example``; (None, None) for a raw encoded file."""
    import tensorflow as tf

    try:
        features = tf.train.Example.FromString(record).features.feature
    except Exception:  # noqa: BLE001 - protobuf's DecodeError: not an Example, the record is the file
        return None, None
    byte_keys = [key for key, value in features.items() if value.bytes_list.value]
    if not byte_keys:
        return None, None
    image_key = next((key for key in IMAGE_KEYS if key in byte_keys), None)
    if image_key is None:
        sized = [key for key in byte_keys if _looks_like_image(features[key].bytes_list.value[0])]
        if not sized:
            raise DataError(f"TFRecord Example has no encoded image among its features {sorted(byte_keys)}")
        image_key = sized[0]
    name_key = next((key for key in NAME_KEYS if key in byte_keys), None)
    return image_key, name_key


def _looks_like_image(data: bytes) -> bool:
    try:
        image_io.encoded_size(data)
        return True
    except image_io.ImageError:
        return False


def _record_name(shard: str, index: int, record: bytes, name_key: str | None) -> str:
    if name_key is not None:
        import tensorflow as tf

        value = tf.train.Example.FromString(record).features.feature[name_key].bytes_list.value
        if value and value[0]:
            return value[0].decode("utf-8", "replace")
    return f"{os.path.basename(shard)}:{index}"


def _record_image(record: bytes, image_key: str | None) -> bytes:
    if image_key is None:
        return record
    import tensorflow as tf

    return tf.train.Example.FromString(record).features.feature[image_key].bytes_list.value[0]


def iterate_records(paths: list[str]):
    """``(shard path, index in shard, record bytes)`` of every record, shard by shard (eager)."""
    import tensorflow as tf

    for path in paths:
        for index, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
            yield path, index, record


def tfrecord_source(spec: str, root: str, shards: list[str]) -> FileSource:
    paths = [join(root, name) for name in shards]
    probe = []
    for item in iterate_records(paths):
        probe.append(item)
        if len(probe) >= TFRECORD_PROBE:
            break
    if not probe:
        raise DataError(f"the TFRecord shards of {spec} hold no records")
    image_key, name_key = _record_layout(probe[0][2])
    split_records = True
    if len(probe) < TFRECORD_PROBE:  # the whole set: is there a training record at all?
        names = [_record_name(path, index, record, name_key) for path, index, record in probe]
        if len(names) < 3 or not any(split_of_name(name) == "train" for name in names):
            logger.warning("%s has too few records to hold any out: validating on training records", spec)
            split_records = False
    counts = {"records_probed": len(probe)}
    return FileSource(spec, root, "tfrecord", {split: list(shards) for split in ("train", "validation", "test")},
                      image_key=image_key, name_key=name_key, split_records=split_records, probe=counts)


# --- the numpy half: decode, crop, mask -----------------------------------------------------------


_small_warned = threading.Event()


def decode(data: bytes, what: str) -> np.ndarray:
    """Encoded bytes as RGB uint8, decoded as ``core.images.read_image`` decodes files (OpenCV)."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if len(data) else None
    if pixels is None:
        raise image_io.ImageError(f"cannot decode {what}: not an image file OpenCV can read")
    return image_io.to_rgb(pixels, bgr=True)


def crop_and_mask(image: np.ndarray, size: int, mask_kind: str, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """One training example, the in-memory loader's recipe: a multi-scale crop and its mask.

    An image smaller than the crop is scaled up to it first (the in-memory loader refuses it up
    front; a stream cannot look at every file before training).
    """
    short = min(image.shape[:2])
    if short < size:
        if not _small_warned.is_set():
            _small_warned.set()
            logger.warning("an image of %dx%d is smaller than the %d-px crop: scaled up (warned once)",
                           image.shape[1], image.shape[0], size)
        scale = size / short
        image = cv2.resize(image, (max(size, round(image.shape[1] * scale)), max(size, round(image.shape[0] * scale))),
                           interpolation=cv2.INTER_LINEAR)
    crop = random_crop(image, size, rng)
    return crop, generate_mask(mask_kind, size, size, rng)


class FileExamples:
    """Example ``index`` from the encoded file at ``file_index`` (read by TensorFlow, decoded here)."""

    def __init__(self, paths: list[str], mask_kind: str, seed: int):
        self.paths, self.mask_kind, self.seed = paths, mask_kind, seed

    def __call__(self, data: bytes, index, file_index, size):
        rng = np.random.default_rng([self.seed, int(index)])
        file_index = int(file_index)
        for attempt in range(DECODE_RETRIES):
            path = self.paths[(file_index + attempt) % len(self.paths)]
            try:
                image = decode(data if attempt == 0 else read_bytes(path), path)
                break
            except (image_io.ImageError, OSError) as error:
                logger.warning("skipping %s: %s", path, error)
        else:
            raise DataError(f"{DECODE_RETRIES} files in a row could not be decoded, the last {path}")
        return crop_and_mask(image, int(size), self.mask_kind, rng)


class MemoryExamples:
    """Example ``index`` from in-memory images (the in-memory loader under a tf.distribute strategy)."""

    def __init__(self, images: list[np.ndarray], mask_kind: str, seed: int):
        self.images, self.mask_kind, self.seed = images, mask_kind, seed

    def __call__(self, index, size):
        rng = np.random.default_rng([self.seed, int(index)])
        image = self.images[int(rng.integers(0, len(self.images)))]
        return crop_and_mask(image, int(size), self.mask_kind, rng)


class RecordExamples:
    """Example ``index`` from an encoded image taken out of a TFRecord record."""

    def __init__(self, mask_kind: str, seed: int):
        self.mask_kind, self.seed = mask_kind, seed

    def __call__(self, data: bytes, key: bytes, index, size):
        rng = np.random.default_rng([self.seed, int(index)])
        try:
            image = decode(data, f"record {key.decode(errors='replace')}")
        except image_io.ImageError as error:
            raise DataError(str(error)) from None
        return crop_and_mask(image, int(size), self.mask_kind, rng)


# --- the tf.data pipeline -------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where an input pipeline's examples sit in the global stream (see the module docstring)."""

    batch: int                 # per-replica batch
    sizes: tuple[int, ...]     # crop sides, cycled per global step
    replicas: int = 1          # in sync, over all workers
    pipelines: int = 1         # input pipelines (workers)
    pipeline_id: int = 0
    start_step: int = 0        # global steps already done (a resumed run)

    @property
    def local_replicas(self) -> int:
        return max(1, self.replicas // self.pipelines)

    @property
    def start(self) -> int:
        """The first local example position of this pipeline."""
        return self.start_step * self.local_replicas * self.batch

    def locate(self, position):
        """Local example position -> (global example index, crop side, local batch number); tensors."""
        import tensorflow as tf

        batch = tf.constant(self.batch, tf.int64)
        local_batch = position // batch
        step, replica = local_batch // self.local_replicas, local_batch % self.local_replicas
        global_batch = step * self.replicas + self.pipeline_id * self.local_replicas + replica
        sizes = tf.constant(self.sizes, tf.int64)
        return global_batch * batch + position % batch, tf.gather(sizes, step % len(self.sizes)), local_batch


def _options(deterministic: bool):
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = deterministic
    # Each pipeline draws its own examples (Layout): tf.distribute must not shard them again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _examples_to_batches(examples, layout: Layout, deterministic: bool):
    """(crop, mask, local batch) elements -> prefetched (x, y) model batches."""
    import tensorflow as tf

    if deterministic:
        batches = examples.batch(layout.batch, drop_remainder=True)
    else:  # elements may come out of order: group each batch's own examples back together
        batches = examples.group_by_window(
            key_func=lambda crop, mask, local_batch: local_batch,
            reduce_func=lambda key, window: window.batch(layout.batch, drop_remainder=True),
            window_size=layout.batch)

    def model_arrays(crops, masks, local_batch):
        pixels = tf.cast(crops, tf.float32) / 255.0
        hole = tf.cast(masks, tf.float32)[..., None]
        return tf.concat([pixels * (1.0 - hole), hole], axis=-1), tf.concat([pixels, hole], axis=-1)

    batches = batches.map(model_arrays, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return batches.prefetch(tf.data.AUTOTUNE).with_options(_options(deterministic))


def _numpy_example(function: Callable, inputs: list):
    import tensorflow as tf

    crop, mask = tf.numpy_function(function, inputs, [tf.uint8, tf.uint8])
    crop.set_shape([None, None, 3])
    mask.set_shape([None, None])
    return crop, mask


def file_batches(paths: list[str], layout: Layout, *, mask_kind: str, seed: int, deterministic: bool = True):
    """Batches from image files: each pass over the data visits every file once, in a seeded order."""
    import tensorflow as tf

    if not paths:
        raise DataError("no training images")
    count = len(paths)
    table = tf.constant(paths)
    draw = FileExamples(paths, mask_kind, seed)

    def example(position):
        index, size, local_batch = layout.locate(position)
        # Pass p over the data visits the files in the order of a stateless permutation seeded (seed, p).
        file_index = tf.random.experimental.index_shuffle(
            index % count, seed=tf.stack([tf.constant(seed, tf.int64), index // count]),
            max_index=tf.constant(count - 1, tf.int64))
        data = tf.io.read_file(tf.gather(table, file_index))
        crop, mask = _numpy_example(draw, [data, index, file_index, size])
        return crop, mask, local_batch

    positions = tf.data.Dataset.range(layout.start, np.iinfo(np.int64).max)
    examples = positions.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return _examples_to_batches(examples, layout, deterministic)


def memory_batches(images: list[np.ndarray], layout: Layout, *, mask_kind: str, seed: int,
                   deterministic: bool = True):
    """Batches from in-memory images, for the in-memory loader under a tf.distribute strategy."""
    import tensorflow as tf

    draw = MemoryExamples(images, mask_kind, seed)

    def example(position):
        index, size, local_batch = layout.locate(position)
        crop, mask = _numpy_example(draw, [index, size])
        return crop, mask, local_batch

    positions = tf.data.Dataset.range(layout.start, np.iinfo(np.int64).max)
    examples = positions.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return _examples_to_batches(examples, layout, deterministic)


def _in_split(split: str):
    def keep(key) -> bool:
        return split_of_name(key.decode("utf-8", "replace")) == split
    return keep


def record_dataset(source: FileSource, *, pipelines: int = 1, pipeline_id: int = 0, shuffle_seed: int | None = None,
                   deterministic: bool = True, repeat: bool = True):
    """``(name, encoded image)`` of the training records: shards interleaved, split by name, shuffled."""
    import tensorflow as tf

    paths = source.paths("train")
    shards = tf.data.Dataset.from_tensor_slices(paths)
    by_shard = pipelines > 1 and len(paths) >= pipelines
    if by_shard:
        shards = shards.shard(pipelines, pipeline_id)
    if shuffle_seed is not None:
        shards = shards.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat:
        shards = shards.repeat()
    image_key, name_key = source.image_key, source.name_key

    def records(path):
        base = tf.strings.regex_replace(path, r"^.*/", "")
        return tf.data.TFRecordDataset(path).enumerate().map(
            lambda index, record: (base + ":" + tf.strings.as_string(index), record))

    def parse(key, record):
        if image_key is None:
            return key, record
        spec = {image_key: tf.io.FixedLenFeature([], tf.string)}
        if name_key is not None:
            spec[name_key] = tf.io.FixedLenFeature([], tf.string, default_value="")
        features = tf.io.parse_single_example(record, spec)
        if name_key is not None:
            key = tf.where(tf.strings.length(features[name_key]) > 0, features[name_key], key)
        return key, features[image_key]

    data = shards.interleave(records, cycle_length=min(4, len(paths)), num_parallel_calls=tf.data.AUTOTUNE,
                             deterministic=deterministic)
    if pipelines > 1 and not by_shard:
        data = data.shard(pipelines, pipeline_id)
    data = data.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if source.split_records:
        keep = _in_split("train")
        data = data.filter(lambda key, image: tf.ensure_shape(
            tf.numpy_function(keep, [key], tf.bool, stateful=False), []))
    if shuffle_seed is not None:
        data = data.shuffle(TFRECORD_SHUFFLE, seed=shuffle_seed, reshuffle_each_iteration=True)
    return data


def record_batches(source: FileSource, layout: Layout, *, mask_kind: str, seed: int, deterministic: bool = True):
    """Batches from TFRecord shards, shuffled with a seed that also depends on the resumed step."""
    import tensorflow as tf

    shuffle_seed = int(hashlib.sha1(f"{seed}:{layout.start_step}".encode()).hexdigest()[:8], 16)
    records = record_dataset(source, pipelines=layout.pipelines, pipeline_id=layout.pipeline_id,
                             shuffle_seed=shuffle_seed, deterministic=deterministic)
    draw = RecordExamples(mask_kind, seed)

    def example(position, record):
        key, data = record
        index, size, local_batch = layout.locate(position + layout.start)
        crop, mask = _numpy_example(draw, [data, key, index, size])
        return crop, mask, local_batch

    examples = records.enumerate().map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return _examples_to_batches(examples, layout, deterministic)


def training_batches(data: Dataset | FileSource, layout: Layout, *, mask_kind: str, seed: int,
                     deterministic: bool = True):
    """The ``tf.data`` pipeline of one input pipeline for any source."""
    if isinstance(data, Dataset):
        return memory_batches(data.train, layout, mask_kind=mask_kind, seed=seed, deterministic=deterministic)
    if data.format == "tfrecord":
        return record_batches(data, layout, mask_kind=mask_kind, seed=seed, deterministic=deterministic)
    return file_batches(data.paths("train"), layout, mask_kind=mask_kind, seed=seed, deterministic=deterministic)


# --- validation crops -----------------------------------------------------------------------------


def validation_examples(source: FileSource, count: int, size: int, mask_kind: str, seed: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """``count`` fixed validation crops and masks, decoding one file at a time.

    At most ``count`` validation files are used (spread evenly over the sorted split); each is
    decoded once and dropped after its crops are cut.
    """
    rng = np.random.default_rng([seed, 2**31 - 1])  # a stream training never draws
    if source.format == "tfrecord":
        records = validation_records(source, count)

        def load(k: int) -> np.ndarray:
            return decode(records[k][1], f"record {records[k][0]}")
        total = len(records)
    else:
        names = source.names["validation"]
        chosen = names[::max(1, len(names) // count)][:count]
        paths = [join(source.root, name) for name in chosen]

        def load(k: int) -> np.ndarray:
            return decode(read_bytes(paths[k]), paths[k])
        total = len(chosen)
    picks = rng.integers(0, total, count)
    crops = np.zeros((count, size, size, 3), np.uint8)
    masks = np.zeros((count, size, size), np.uint8)
    for pick in np.unique(picks):
        image = load(int(pick))
        for slot in np.flatnonzero(picks == pick):
            crops[slot], masks[slot] = crop_and_mask(image, size, mask_kind, rng)
    return crops, masks


def validation_records(source: FileSource, count: int) -> list[tuple[str, bytes]]:
    """Up to ``count`` validation records, in shard order (training records if none is found)."""
    found, fallback = [], []
    for scanned, (path, index, record) in enumerate(iterate_records(source.paths("train"))):
        name = _record_name(path, index, record, source.name_key)
        split = split_of_name(name) if source.split_records else "validation"
        if split == "validation":
            found.append((name, _record_image(record, source.image_key)))
        elif len(fallback) < count and split == "train":
            fallback.append((name, _record_image(record, source.image_key)))
        if len(found) >= count or scanned >= VALIDATION_SCAN:
            break
    if not found:
        logger.warning("%s: no validation record among the first %d; validating on training records",
                       source.source, VALIDATION_SCAN)
        found = fallback
    if not found:
        raise DataError(f"{source.source}: no record to validate on")
    return found
