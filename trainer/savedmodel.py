"""The SavedModel artefact: the serving signature, TF Serving's warmup file, loading it back."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from inpaint.core.contract import IMAGE, MASK, OUTPUT, SIGNATURE_NAME
from inpaint.core.masks import mask_batch
from inpaint.core.tensors import predict_request

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"


class SignatureError(ValueError):
    """The SavedModel lacks the ``serving_default`` signature."""


def serving_function(model: keras.Model, depth: int) -> tf.types.experimental.GenericFunction:
    """The ``serving_default`` function: uint8 image and mask in, uint8 inpainted image out.

    Takes any N x H x W: pads to a multiple of ``2**depth``, runs the network,
    crops back and composites in uint8, so known pixels come back bit-exact.
    """
    multiple = 2**depth

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGE),
        tf.TensorSpec([None, None, None, 1], tf.uint8, name=MASK),
    ])
    def serve(image, mask):
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
        return {OUTPUT: tf.where(is_hole, predicted, image)}

    return serve


def export_saved_model(model: keras.Model, depth: int, path: Path) -> None:
    """Write a SavedModel whose ``serving_default`` signature TF Serving serves as it is."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE_NAME, serving_function(model, depth))
    archive.write_out(str(path), verbose=False)


def write_warmup_requests(version_path: Path, model_name: str, image_size: int, seed: int = 0) -> Path:
    """TF Serving's warmup file: a TFRecord of ``PredictionLog``, replayed before a version serves."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (1, image_size, image_size, 3), dtype=np.uint8)
    mask = mask_batch("strokes", 1, image_size, image_size, seed)
    # Our request, read back as the official class: same wire format, one request builder.
    request = predict_pb2.PredictRequest.FromString(predict_request(image, mask, model_name).SerializeToString())
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    path = version_path / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
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

    The model must have the version's architecture (build it from the version's run record).
    """
    loaded = tf.saved_model.load(str(path))
    # Keras' ExportArchive keeps every tracked variable in this list; names are unique per layer.
    saved = {variable.name.split(":")[0]: variable for variable in loaded._all_variables}
    for weight in model.weights:
        source = saved.get(weight.path)
        if source is None or tuple(source.shape) != tuple(weight.shape):
            raise SignatureError(f"{path} does not match this architecture at {weight.path}: "
                                 "train with the version's own options (see its run.json)")
        weight.assign(source.numpy())
