"""The SavedModel artefact: its two signatures, TF Serving's warmup file, loading it back.

``serving_default`` takes uint8 arrays; ``serving_bytes`` takes encoded files
(PNG, JPEG, WebP or BMP) and returns PNG files, decoding them in the graph the
way ``inpaint.core.images`` does with OpenCV, so TF Serving and ``inpaint-serve``
answer the same files with the same pixels. Only ``serving_default`` is
converted to ONNX: the server decodes files itself, around the ONNX graph.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from inpaint.core.contract import (BYTES_SIGNATURE_NAME, IMAGE, IMAGE_BYTES, MASK, MASK_BYTES, OUTPUT,
                                   OUTPUT_BYTES, SIGNATURE_NAME)
from inpaint.core.images import FLAT_SHADES, GREY_LEVELS, HOLE_LEVEL, MOST_HOLES, PHOTO_GREY_FRACTION
from inpaint.core.masks import mask_batch
from inpaint.core.tensors import predict_bytes_request, predict_request

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
WARMUP_BYTES_SIDE = 64  # the serving_bytes warmup request: a small PNG pair is enough to run every op

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
logger = logging.getLogger(__name__)

JPEG_SIGNATURE = b"\xff\xd8"  # what core.images.encoded_size takes for a JPEG
# Files are decoded to 16 bits: 8-bit levels times 257 are exactly the 16-bit ones (255 -> 65535), and
# // 257 brings both back to 8 bits as core.images.to_rgb does.
LEVELS_8_TO_16 = 257
PNG_COMPRESSION = 1  # as core.images.encode_png: a 12 MP photo takes seconds at zlib's default


class SignatureError(ValueError):
    """The SavedModel lacks the ``serving_default`` signature."""


def inpaint_arrays(model: keras.Model, image: tf.Tensor, mask: tf.Tensor, depth: int) -> tf.Tensor:
    """The computation both signatures serve: uint8 image [N,H,W,3] and mask [N,H,W,1] in, uint8 image out.

    Takes any N x H x W: pads to a multiple of ``2**depth``, runs the network,
    crops back and composites in uint8, so known pixels come back bit-exact.
    """
    multiple = 2**depth
    height, width = tf.shape(image)[1], tf.shape(image)[2]
    is_hole = mask > 0
    hole = tf.cast(is_hole, tf.float32)
    pixels = tf.cast(image, tf.float32) / 255.0
    # (m - x % m) % m, not (-x) % m: a negative modulo does not survive conversion to ONNX.
    pad = [[0, 0], [0, (multiple - height % multiple) % multiple],
           [0, (multiple - width % multiple) % multiple], [0, 0]]
    # Padding is unknown territory: zero colour, marked as hole.
    hole = tf.pad(hole, pad, constant_values=1.0)
    padded = tf.concat([tf.pad(pixels, pad) * (1.0 - hole), hole], axis=-1)
    prediction = model(padded, training=False)[:, :height, :width, :]
    predicted = tf.cast(tf.round(tf.clip_by_value(prediction, 0.0, 1.0) * 255.0), tf.uint8)
    # Composite in uint8 so known pixels are copied, not recomputed.
    return tf.where(is_hole, predicted, image)


def serving_function(model: keras.Model, depth: int) -> tf.types.experimental.GenericFunction:
    """The ``serving_default`` function: uint8 image and mask in, uint8 inpainted image out."""

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGE),
        tf.TensorSpec([None, None, None, 1], tf.uint8, name=MASK),
    ])
    def serve(image, mask):
        return {OUTPUT: inpaint_arrays(model, image, mask, depth)}

    return serve


def serving_bytes_function(model: keras.Model, depth: int) -> tf.types.experimental.GenericFunction:
    """The ``serving_bytes`` function: N encoded image and mask files in, N PNG files out.

    Images of one request may differ in size: each pair is decoded, checked,
    inpainted as a batch of one and encoded on its own.
    """

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name=IMAGE_BYTES),
        tf.TensorSpec([None], tf.string, name=MASK_BYTES),
    ])
    def serve_bytes(image_bytes, mask_bytes):
        count = tf.size(image_bytes)
        with tf.control_dependencies([check_same_count(image_bytes, mask_bytes)]):
            pairs = (tf.range(count), tf.identity(image_bytes), tf.identity(mask_bytes))
        # One image at a time, as inpaint-serve does: memory is one image's worth, whatever N is.
        files = tf.map_fn(lambda pair: inpaint_file(model, depth, *pair), pairs, fn_output_signature=tf.string,
                          parallel_iterations=1)
        return {OUTPUT_BYTES: files}

    return serve_bytes


def inpaint_file(model: keras.Model, depth: int, index: tf.Tensor, image_file: tf.Tensor,
                 mask_file: tf.Tensor) -> tf.Tensor:
    """The PNG of one inpainted image, from its encoded image and mask files."""
    image = rgb_of(decode_pixels(image_file))
    mask = decode_pixels(mask_file)
    with tf.control_dependencies([check_same_size(index, image, mask)]):
        holes = holes_of_pixels(mask, index)
    inpainted = inpaint_arrays(model, image[None], holes[None, :, :, None], depth)
    return tf.io.encode_png(inpainted[0], compression=PNG_COMPRESSION)


def decode_pixels(data: tf.Tensor) -> tf.Tensor:
    """uint16 [H, W, C] of an encoded file: its channels as OpenCV's IMREAD_UNCHANGED reads them, RGB order.

    C is 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA). JPEG goes through
    the accurate integer IDCT, OpenCV's libjpeg default (TensorFlow's is the fast
    one); PNG is read at 16 bits when it holds 16; BMP and WebP through
    ``decode_image``, first frame only.
    """
    def png():
        return tf.io.decode_png(data, channels=0, dtype=tf.uint16)

    def jpeg():
        return widen(tf.io.decode_jpeg(data, channels=0, dct_method="INTEGER_ACCURATE"))

    def other():
        return widen(tf.io.decode_image(data, channels=0, expand_animations=False))

    return tf.case([(starts_with(data, PNG_SIGNATURE), png), (starts_with(data, JPEG_SIGNATURE), jpeg)],
                   default=other)


def starts_with(data: tf.Tensor, prefix: bytes) -> tf.Tensor:
    """Whether a scalar string tensor begins with ``prefix``."""
    return tf.equal(tf.strings.substr(data, 0, len(prefix)), prefix)


def widen(pixels: tf.Tensor) -> tf.Tensor:
    """uint8 levels as the uint16 levels a 16-bit file would hold for them."""
    return tf.cast(pixels, tf.uint16) * LEVELS_8_TO_16


def has_alpha(pixels: tf.Tensor) -> tf.Tensor:
    """Whether decoded pixels carry an alpha channel (grey + alpha, or RGBA)."""
    channels = tf.shape(pixels)[-1]
    return tf.logical_or(tf.equal(channels, 2), tf.equal(channels, 4))


def colour_channels(pixels: tf.Tensor) -> tf.Tensor:
    """Decoded pixels less their alpha channel, if they have one."""
    return pixels[..., : tf.shape(pixels)[-1] - tf.cast(has_alpha(pixels), tf.int32)]


def rgb_of(pixels: tf.Tensor) -> tf.Tensor:
    """uint8 RGB [H, W, 3] as ``core.images.to_rgb`` makes it: grey repeated, alpha dropped, // 257."""
    colour = colour_channels(pixels)
    # Channel 0, 0, 0 of a grey image; 0, 1, 2 of a colour one.
    picks = tf.minimum(tf.range(3), tf.shape(colour)[-1] - 1)
    rgb = tf.cast(tf.gather(colour, picks, axis=-1), tf.int32) // LEVELS_8_TO_16
    return tf.ensure_shape(tf.cast(rgb, tf.uint8), [None, None, 3])


def holes_of_pixels(pixels: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """uint8 [H, W] {0, 1} by ``core.images.holes_of``'s rule, with its two refusals as assertions.

    At 8 bits (// 257): with an alpha channel below 255 somewhere, alpha below
    128 marks a hole; otherwise a level of 128 or more in any colour channel,
    or any 1 in a mask holding only 0 and 1.
    """
    levels = tf.cast(pixels, tf.int32) // LEVELS_8_TO_16
    alpha = levels[..., -1]
    by_alpha = tf.logical_and(has_alpha(pixels), tf.reduce_any(alpha < 255))
    colour = tf.reduce_max(colour_channels(levels), axis=-1)
    threshold = tf.where(tf.equal(tf.reduce_max(colour), 1), 1, HOLE_LEVEL)
    decisive = tf.where(by_alpha, alpha, colour)
    holes = tf.where(by_alpha, alpha < HOLE_LEVEL, colour >= threshold)
    with tf.control_dependencies(check_mask(index, decisive, holes)):
        return tf.cast(holes, tf.uint8)


# Assertions fail as InvalidArgumentError, which TF Serving reports as INVALID_ARGUMENT. Their messages
# name the inputs without quotes: TensorFlow prints string data with quotes backslash-escaped.

def check_same_count(image_bytes: tf.Tensor, mask_bytes: tf.Tensor) -> tf.Operation:
    """An assertion that the request holds one mask file per image file."""
    images, masks = tf.size(image_bytes), tf.size(mask_bytes)
    detail = tf.strings.format(f"input {IMAGE_BYTES} holds {{}} files and {MASK_BYTES} {{}}; send one mask "
                               "per image", (images, masks))
    return tf.debugging.Assert(tf.equal(images, masks), [detail])


def check_same_size(index: tf.Tensor, image: tf.Tensor, mask: tf.Tensor) -> tf.Operation:
    """An assertion that a pair's mask is its image's size."""
    image_size, mask_size = tf.shape(image)[:2], tf.shape(mask)[:2]
    detail = tf.strings.format(
        f"input {MASK_BYTES}[{{}}] is {{}}x{{}} but {IMAGE_BYTES}[{{}}] is {{}}x{{}}; they must match "
        "(no resizing is done)", (index, mask_size[1], mask_size[0], index, image_size[1], image_size[0]))
    return tf.debugging.Assert(tf.reduce_all(tf.equal(mask_size, image_size)), [detail])


def percent(count: tf.Tensor, total: tf.Tensor) -> tf.Tensor:
    """``count`` of ``total`` as a whole percentage, rounded as Python's ``:.0%`` rounds it (to even)."""
    return tf.cast(tf.round(100 * tf.cast(count, tf.float64) / tf.cast(total, tf.float64)), tf.int64)


def check_mask(index: tf.Tensor, levels: tf.Tensor, holes: tf.Tensor) -> list[tf.Operation]:
    """Assertions that a mask is not a photo (shades of grey) and leaves known pixels (``core.images.check_mask``)."""
    low, high = GREY_LEVELS
    total = tf.maximum(tf.size(levels, out_type=tf.int64), 1)
    shades = tf.cast(tf.math.bincount(tf.reshape(levels, [-1]), minlength=256, maxlength=256)[low : high + 1],
                     tf.int64)
    grey = tf.reduce_sum(shades) - tf.reduce_sum(tf.math.top_k(shades, FLAT_SHADES).values)
    covered = tf.math.count_nonzero(holes)
    photo = tf.strings.format(
        f"input {MASK_BYTES}[{{}}] looks like a photo, not a mask: {{}}% of its pixels are shades of grey (levels "
        f"{low}-{high} of 255), where a mask is black with its holes white (or transparent); did you swap IMAGE "
        "and MASK?", (index, percent(grey, total)))
    most = f"{MOST_HOLES:.0%}"
    all_holes = tf.strings.format(
        f"input {MASK_BYTES}[{{}}] marks {{}}% of the image as holes (white, or transparent), over {most}: nothing "
        "is left to fill them from; did you swap IMAGE and MASK, or invert the mask?",
        (index, percent(covered, total)))
    not_photo = tf.debugging.Assert(
        tf.cast(grey, tf.float64) <= PHOTO_GREY_FRACTION * tf.cast(total, tf.float64), [photo])
    with tf.control_dependencies([not_photo]):
        return [not_photo, tf.debugging.Assert(
            tf.cast(covered, tf.float64) <= MOST_HOLES * tf.cast(total, tf.float64), [all_holes])]


def export_saved_model(model: keras.Model, depth: int, path: Path) -> None:
    """Write a SavedModel whose ``serving_default`` and ``serving_bytes`` signatures TF Serving serves as they are."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE_NAME, serving_function(model, depth))
    archive.add_endpoint(BYTES_SIGNATURE_NAME, serving_bytes_function(model, depth))
    store_weights_once(archive)
    archive.write_out(str(path), verbose=False)


def store_weights_once(archive) -> None:
    """Keras' ExportArchive tracks every weight in ``_all_variables`` and again, as other objects, in
    ``variables``, ``trainable_variables`` and ``non_trainable_variables``: the SavedModel stored each weight
    twice (the shipped version's 3.03 M weights took 24 MB). The signatures and ``load_weights_from_version``
    need ``_all_variables`` alone."""
    trackable = archive._tf_trackable
    for name in ("variables", "trainable_variables", "non_trainable_variables"):
        if hasattr(trackable, name):
            setattr(trackable, name, [])


def write_warmup_requests(version_path: Path, model_name: str, image_size: int, seed: int = 0) -> Path:
    """TF Serving's warmup file: a TFRecord of ``PredictionLog``, replayed before a version serves.

    One request per signature: arrays for ``serving_default``, a small PNG pair for ``serving_bytes``.
    """
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (1, image_size, image_size, 3), dtype=np.uint8)
    mask = mask_batch("strokes", 1, image_size, image_size, seed)
    side = min(image_size, WARMUP_BYTES_SIDE)
    image_file = tf.io.encode_png(image[0, :side, :side]).numpy()
    mask_file = tf.io.encode_png(mask[0, :side, :side, None] * 255).numpy()
    requests = [predict_request(image, mask, model_name), predict_bytes_request([image_file], [mask_file], model_name)]
    path = version_path / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in requests:
            # Our request, read back as the official class: same wire format, one request builder.
            official = predict_pb2.PredictRequest.FromString(request.SerializeToString())
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=official))
            writer.write(log.SerializeToString())
    return path


def load_serving_signature(path: Path):
    """The ``serving_default`` function of a SavedModel, kept alive with its owner."""
    if not (path / "saved_model.pb").is_file():
        raise SignatureError(f"{path} holds no SavedModel (saved_model.pb is missing)")
    loaded = tf.saved_model.load(str(path))
    signatures = dict(loaded.signatures)
    if SIGNATURE_NAME not in signatures:
        found = ", ".join(sorted(signatures)) or "none"
        raise SignatureError(f"SavedModel {path} has no '{SIGNATURE_NAME}' signature (found: {found})")
    function = signatures[SIGNATURE_NAME]
    function.owner = loaded  # the function dies with the loaded object otherwise
    return function


def load_weights_from_version(model: keras.Model, path: Path) -> None:
    """Copy a published version's SavedModel weights into ``model``, matched by variable name.

    The model must have the version's architecture (build it from the version's run record), except
    for Fourier units the version lacks: they keep their identity start (``model.SPECTRAL_PREFIX``).
    """
    from .model import SPECTRAL_PREFIX

    loaded = tf.saved_model.load(str(path))
    # Keras' ExportArchive keeps every tracked variable in this list; names are unique per layer.
    saved = {variable.name.split(":")[0]: variable for variable in loaded._all_variables}
    has_spectral = any(name.startswith(SPECTRAL_PREFIX) for name in saved)
    added = set()
    for weight in model.weights:
        source = saved.get(weight.path)
        if source is None and not has_spectral and weight.path.startswith(SPECTRAL_PREFIX):
            added.add(weight.path.split("/")[0])
            continue
        if source is None or tuple(source.shape) != tuple(weight.shape):
            raise SignatureError(f"{path} does not match this architecture at {weight.path}: "
                                 "train with the version's own options (see its run.json)")
        weight.assign(source.numpy())
    if added:
        logger.info("%s has no %s: they start as the identity", path, ", ".join(sorted(added)))
