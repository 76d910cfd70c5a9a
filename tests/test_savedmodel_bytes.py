"""The SavedModel's ``serving_bytes`` signature: encoded files decoded in the graph, as TF Serving serves them.

It must answer the same files with the same pixels as ``inpaint-serve``, which
decodes them with OpenCV around the ONNX graph. The shipped pretrained version
is used throughout: it is what TF Serving loads, and it needs no training here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import random_image

from inpaint.core.contract import BYTES_SIGNATURE, BYTES_SIGNATURE_NAME, IMAGE_BYTES, MASK_BYTES, OUTPUT_BYTES
from inpaint.core.images import decode_image, encoded_size

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "models" / "pretrained" / "inpaint" / "1"
MAX_PIXELS = 10**6
SIZE = (48, 64)  # small: the server runs it whole, and the SavedModel in a fraction of a second


def encode(pixels: np.ndarray, suffix: str, *params: int) -> bytes:
    """The bytes of a file of that format holding an RGB, RGBA or grey (8- or 16-bit) image."""
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR if pixels.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, data = cv2.imencode(suffix, pixels, list(params))
    assert ok, suffix
    return data.tobytes()


def strokes(height: int, width: int) -> np.ndarray:
    """A bool hole mask: two strokes crossing the image."""
    mask = np.zeros((height, width), np.uint8)
    cv2.line(mask, (2, 3), (width - 3, height - 4), 1, 3)
    cv2.line(mask, (width - 5, 2), (4, height - 3), 1, 5)
    return mask > 0


def image_files(photo: np.ndarray) -> dict[str, bytes]:
    """One photo in every format and flavour ``serving_bytes`` takes."""
    return {
        "png": encode(photo, ".png"),
        "png grey": encode(photo[..., 1], ".png"),
        "png 16-bit": encode(photo.astype(np.uint16) * 257 + 100, ".png"),
        "jpeg": encode(photo, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 90),
        "jpeg progressive": encode(photo, ".jpg", cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
        "webp lossy": encode(photo, ".webp", cv2.IMWRITE_WEBP_QUALITY, 80),
        "webp lossless": encode(photo, ".webp", cv2.IMWRITE_WEBP_QUALITY, 101),
        "bmp": encode(photo, ".bmp"),
    }


def mask_files(holes: np.ndarray, photo: np.ndarray) -> dict[str, bytes]:
    """The same holes, by the mask rule, as a grey PNG, a colour PNG, a photo erased to transparency, and as
    masks whose other pixels are not all zero: JPEG noise, a brush's anti-aliased edge, a soft eraser."""
    white = (holes * 255).astype(np.uint8)
    # A brush's edge: some pixels next to the holes just under half scale (not holes), some holes at half.
    columns = np.arange(holes.shape[1])
    edge = (cv2.dilate(white, np.ones((3, 3), np.uint8)) > 0) & ~holes & (columns % 3 == 0)
    brushed = np.where(holes, 255, np.where(edge, 127, 0)).astype(np.uint8)
    brushed[holes & (columns % 5 == 0)] = 128
    return {
        "grey png": encode(white, ".png"),
        "rgb png": encode(np.dstack([white, np.zeros_like(white), white // 2]), ".png"),
        "rgba transparent": encode(np.dstack([photo, np.where(holes, 0, 255).astype(np.uint8)]), ".png"),
        "grey jpeg": encode(white, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 90),
        "anti-aliased png": encode(brushed, ".png"),
        "anti-aliased 16-bit png": encode(brushed.astype(np.uint16) * 257, ".png"),
        "soft eraser rgba": encode(np.dstack([photo, 255 - brushed]), ".png"),  # alpha 127 a hole, 128 not
        "0 and 1 png": encode(holes.astype(np.uint8), ".png"),
    }


def test_every_mask_file_holds_exactly_the_holes_by_the_mask_rule():
    """Noise below half scale, edges at 127 and soft alpha at 128 are not holes; the old rule (nonzero) said so."""
    from inpaint.core.images import decode_mask

    holes, photo = strokes(*SIZE), random_image(*SIZE, seed=12)
    for name, data in mask_files(holes, photo).items():
        np.testing.assert_array_equal(decode_mask(data, MAX_PIXELS), holes, err_msg=name)
    jpeg = cv2.imdecode(np.frombuffer(mask_files(holes, photo)["grey jpeg"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.count_nonzero(jpeg) > holes.sum(), "the JPEG's noise made holes under the nonzero rule"


@pytest.fixture(scope="module")
def shipped():
    """The shipped version's SavedModel, loaded once for the module."""
    import tensorflow as tf

    return tf.saved_model.load(str(PRETRAINED))


def serve_bytes(saved_model, images: list[bytes], masks: list[bytes]) -> list[bytes]:
    """The PNG files ``serving_bytes`` answers."""
    import tensorflow as tf

    signature = saved_model.signatures[BYTES_SIGNATURE_NAME]
    outputs = signature(**{IMAGE_BYTES: tf.constant(images, tf.string), MASK_BYTES: tf.constant(masks, tf.string)})
    return list(outputs[OUTPUT_BYTES].numpy())


@pytest.fixture(scope="module")
def cases() -> list[tuple[str, bytes, bytes]]:
    """``(name, image file, mask file)``: every image format with every kind of mask, one photo and holes."""
    photo, holes = random_image(*SIZE, seed=11), strokes(*SIZE)
    return [(f"{image_kind} / {mask_kind}", image, mask)
            for image_kind, image in image_files(photo).items()
            for mask_kind, mask in mask_files(holes, random_image(*SIZE, seed=12)).items()]


@pytest.fixture(scope="module")
def saved_model_answers(shipped, cases) -> list[np.ndarray]:
    """The SavedModel's answers to every case, all in one request."""
    outputs = serve_bytes(shipped, [image for _, image, _ in cases], [mask for _, _, mask in cases])
    return [decode_image(output, MAX_PIXELS) for output in outputs]


def test_files_are_decoded_in_the_graph_exactly_as_opencv_decodes_them(shipped, cases, saved_model_answers):
    from inpaint.core.images import decode_mask

    arrays = shipped.signatures["serving_default"]
    for (name, image, mask), answer in zip(cases, saved_model_answers):
        expected = arrays(image=decode_image(image, MAX_PIXELS)[None],
                          mask=decode_mask(mask, MAX_PIXELS)[None, ..., None])["inpainted"].numpy()[0]
        np.testing.assert_array_equal(answer, expected, err_msg=name)


def test_saved_model_and_server_give_the_same_pixels_for_every_format(cases, saved_model_answers, start_server,
                                                                      tmp_path):
    from grpc_helpers import Stubs

    from inpaint.core.tensors import bytes_output_of, predict_bytes_request

    base = tmp_path / "inpaint"
    (base / "1").mkdir(parents=True)
    shutil.copy(PRETRAINED / "model.onnx", base / "1" / "model.onnx")  # the same version, served by inpaint-serve
    server = start_server(base, rest_port=None)
    request = predict_bytes_request([image for _, image, _ in cases], [mask for _, _, mask in cases], "inpaint")
    response = Stubs(server.grpc_target).prediction.Predict(request, timeout=120)
    from_server = [decode_image(output, MAX_PIXELS) for output in bytes_output_of(response, len(cases))]

    holes = strokes(*SIZE)
    differences = {}
    for (name, image, _), ours, theirs in zip(cases, saved_model_answers, from_server):
        assert ours.shape == theirs.shape == SIZE + (3,), name
        differences[name] = int(np.abs(ours.astype(np.int16) - theirs).max())
        # Known pixels are the decoded file's own, in both.
        np.testing.assert_array_equal(ours[~holes], decode_image(image, MAX_PIXELS)[~holes], err_msg=name)
    assert max(differences.values()) <= 1, differences


def test_known_pixels_come_back_bit_exact_as_png_files_of_any_size(shipped):
    photos = [random_image(37, 53, seed=1), random_image(20, 30, seed=2)]
    holes = [strokes(37, 53), strokes(20, 30)]
    outputs = serve_bytes(shipped, [encode(photo, ".png") for photo in photos],
                          [encode(hole.astype(np.uint8) * 255, ".png") for hole in holes])
    for photo, hole, output in zip(photos, holes, outputs):
        assert encoded_size(output)[0] == "PNG"
        inpainted = decode_image(output, MAX_PIXELS)
        assert inpainted.shape == photo.shape
        np.testing.assert_array_equal(inpainted[~hole], photo[~hole])
        assert np.abs(inpainted[hole].astype(int) - photo[hole]).mean() < 40, "holes are filled"


def test_a_mask_of_another_size_is_an_invalid_argument_naming_the_inputs(shipped):
    import tensorflow as tf

    photo = encode(random_image(37, 53), ".png")
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"mask_bytes\[1\] is 53x30 but image_bytes\[1\] is 53x37; they must match"):
        serve_bytes(shipped, [photo, photo], [encode(strokes(37, 53).astype(np.uint8), ".png"),
                                              encode(strokes(30, 53).astype(np.uint8), ".png")])
    with pytest.raises(tf.errors.InvalidArgumentError, match="image_bytes holds 1 files and mask_bytes 2"):
        serve_bytes(shipped, [photo], [encode(strokes(37, 53).astype(np.uint8), ".png")] * 2)


def test_a_photo_as_the_mask_and_an_all_hole_mask_are_invalid_arguments_as_in_the_server(shipped):
    """The mask rule's two refusals, in the graph (TF Serving) with the words inpaint-serve uses."""
    import tensorflow as tf

    from inpaint.core.images import MaskError, decode_mask

    photo = encode(smooth_photo(37, 53), ".jpg")
    white = encode(np.full((37, 53), 255, np.uint8), ".png")
    cases = [(photo, r"looks like a photo, not a mask: \d+% of its pixels are shades of grey .* did you swap IMAGE "
                     r"and MASK\?"),
             (white, r"marks 100% of the image as holes .* over 90%: nothing is left to fill them from; did you swap "
                     r"IMAGE and MASK, or invert the mask\?")]
    good = encode(strokes(37, 53).astype(np.uint8) * 255, ".png")
    for mask, message in cases:
        with pytest.raises(MaskError, match="^mask " + message):
            decode_mask(mask, MAX_PIXELS)
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"mask_bytes\[1\] " + message):
            serve_bytes(shipped, [photo, photo], [good, mask])


def smooth_photo(height: int, width: int) -> np.ndarray:
    """Gradients and texture: what a photo's levels look like (mostly mid-grey)."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 200 / width, y * 200 / height, (x + y) * 100 / (width + height)], -1) + 30
    return np.clip(base + np.random.default_rng(3).normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def test_the_warmup_file_holds_one_request_per_signature_and_each_runs(shipped):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from inpaint.trainer.savedmodel import WARMUP_FILE

    records = list(tf.data.TFRecordDataset(str(PRETRAINED / WARMUP_FILE)))
    requests = [prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request for record in records]
    assert [request.model_spec.signature_name for request in requests] == ["serving_default", BYTES_SIGNATURE_NAME]
    for request in requests:  # what TF Serving replays before the version serves: each must run
        signature = shipped.signatures[request.model_spec.signature_name]
        inputs = {name: tf.constant(tf.make_ndarray(tensor)) for name, tensor in request.inputs.items()}
        outputs = signature(**inputs)
        assert set(outputs) == set(request.output_filter)
    files = requests[1].inputs
    assert [encoded_size(files[name].string_val[0])[0] for name in (IMAGE_BYTES, MASK_BYTES)] == ["PNG", "PNG"]


def test_the_shipped_model_has_both_signatures_and_onnx_only_the_arrays(shipped):
    import onnx
    import tensorflow as tf

    from inpaint.trainer.savedmodel import load_serving_signature

    assert set(shipped.signatures) == {"serving_default", BYTES_SIGNATURE_NAME}
    files = shipped.signatures[BYTES_SIGNATURE_NAME]
    inputs = files.structured_input_signature[1]
    for name in BYTES_SIGNATURE["inputs"]:
        assert inputs[name].dtype == tf.string and inputs[name].shape.as_list() == [None], name
    [output] = files.structured_outputs.values()
    assert output.dtype == tf.string and output.shape.as_list() == [None]
    assert set(files.structured_outputs) == set(BYTES_SIGNATURE["outputs"])
    default = load_serving_signature(PRETRAINED)
    assert set(default.structured_input_signature[1]) == {"image", "mask"}
    graph = onnx.load(str(PRETRAINED / "model.onnx"), load_external_data=False).graph
    assert {tensor.name for tensor in graph.input} == {"image", "mask"}


def test_every_export_writes_both_signatures_and_both_warmup_requests(tmp_path):
    """What ``publish`` runs for every new version: a tiny untrained model is enough to show it."""
    import keras
    import tensorflow as tf

    from inpaint.trainer.savedmodel import WARMUP_FILE, export_saved_model, write_warmup_requests
    from inpaint.trainer.train import TrainConfig, build_model

    keras.mixed_precision.set_global_policy("float32")
    model = build_model(TrainConfig(depth=2, base_filters=4, coarse_side=16, smoothing=0))
    export_saved_model(model, 2, tmp_path)
    write_warmup_requests(tmp_path, "inpaint", 32)
    assert set(tf.saved_model.load(str(tmp_path)).signatures) == {"serving_default", BYTES_SIGNATURE_NAME}
    assert len(list(tf.data.TFRecordDataset(str(tmp_path / WARMUP_FILE)))) == 2
    # each weight stored once: the checkpoint holds the model's float32 values once, plus a little framing
    stored = sum(f.stat().st_size for f in (tmp_path / "variables").iterdir())
    assert 4 * model.count_params() <= stored < 1.25 * 4 * model.count_params() + 8 * 1024, stored  # twice: 2.3x
    image = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), np.uint8)
    mask = np.zeros((1, 32, 32, 1), np.uint8)
    mask[:, 8:20, 8:20] = 1
    reloaded = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]
    fill = reloaded(image=tf.constant(image), mask=tf.constant(mask))["inpainted"].numpy()
    assert fill.shape == image.shape and (fill[mask[..., 0] == 0] == image[mask[..., 0] == 0]).all()
