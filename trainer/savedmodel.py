"""The SavedModel artefact: the serving signature, TF Serving's warmup file, loading it back."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from inpaint.core.contract import SIGNATURE_NAME
from inpaint.core.masks import mask_batch
from inpaint.core.tensors import predict_request

from .model import serving_function

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"


class SignatureError(ValueError):
    """The SavedModel lacks the ``serving_default`` signature."""


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
