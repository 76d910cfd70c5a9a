"""``serving_bytes``: PNG, JPEG, WebP and BMP files in, PNG out, on the real server over REST and gRPC.

The REST requests are what ``curl`` sends; the gRPC ones are built with the official TF Serving classes.
Sizes are read from the headers and checked before anything is decoded.
"""

from __future__ import annotations

import base64
import json
import struct
import urllib.error
import urllib.request
import zlib

import cv2
import grpc
import numpy as np
import pytest
from conftest import random_image
from onnx_models import expected_fill

from inpaint.core.images import ImageError, ImageTooLarge, check_encoded_size, decode_image, decode_mask, \
    encode_png, encoded_size, holes_of

INVALID = grpc.StatusCode.INVALID_ARGUMENT
FORMATS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "bmp": ".bmp"}


def encode(image: np.ndarray, suffix: str, *params: int) -> bytes:
    """Bytes of an RGB (or grey / RGBA) image, as a file of that format would hold them."""
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    ok, data = cv2.imencode(suffix, image, list(params))
    assert ok
    return data.tobytes()


def stroke_mask(height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    cv2.line(mask, (2, 3), (width - 3, height - 4), 255, 3)
    return mask


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def post(url: str, body: dict | bytes) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def predict_url(server) -> str:
    return f"{server.rest_url}/v1/models/inpaint:predict"


def bytes_body(images: list[bytes], masks: list[bytes]) -> dict:
    return {"signature_name": "serving_bytes",
            "instances": [{"image_bytes": b64(image), "mask_bytes": b64(mask)} for image, mask in zip(images, masks)]}


# -- the codec on its own ----------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix, params, kind", [
    (".png", (), "PNG"), (".jpg", (), "JPEG"), (".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), "JPEG"),
    (".webp", (cv2.IMWRITE_WEBP_QUALITY, 80), "WebP"), (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101), "WebP"),
    (".bmp", (), "BMP")])
def test_sizes_are_read_from_every_formats_header(suffix, params, kind):
    data = encode(random_image(37, 53), suffix, *params)
    assert encoded_size(data) == (kind, 53, 37)
    assert decode_image(data, 53 * 37).shape == (37, 53, 3)


def test_a_top_down_bmp_and_an_alpha_webp_are_measured_too():
    bmp = bytearray(encode(random_image(9, 7), ".bmp"))
    height = struct.unpack("<i", bmp[22:26])[0]
    bmp[22:26] = struct.pack("<i", -height)  # top-down rows
    assert encoded_size(bytes(bmp)) == ("BMP", 7, 9)
    rgba = np.dstack([random_image(20, 30), np.full((20, 30), 255, np.uint8)])
    rgba[5:8, 5:9, 3] = 0
    assert encoded_size(encode(rgba, ".webp", cv2.IMWRITE_WEBP_QUALITY, 101)) == ("WebP", 30, 20)


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header (and a tiny, valid compressed stream) claiming ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + \
        chunk(b"IEND", b"")


def test_decompression_bombs_are_refused_from_the_header():
    with pytest.raises(ImageTooLarge, match="100000x100000 = 10000000000 pixels, over the limit of 50000000"):
        decode_image(bomb_png(100_000, 100_000), 50_000_000, "input 'image_bytes'[0]")
    with pytest.raises(ImageError, match="corrupt PNG"):
        decode_image(bomb_png(3000, 2000), 50_000_000)  # within the limit, but its data ends early


@pytest.mark.parametrize("data, fragment", [
    (b"", "is not a PNG, JPEG, WebP or BMP"), (b"GIF89a....", "is not a PNG, JPEG, WebP or BMP"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "truncated"), (b"\x89PNG\r\n\x1a\n\0\0", "truncated")])
def test_unreadable_bytes_are_named(data, fragment):
    with pytest.raises(ImageError, match=fragment):
        check_encoded_size(data, 10**6, "input 'mask_bytes'[3]")
    with pytest.raises(ImageError, match=r"input 'mask_bytes'\[3\]"):
        decode_mask(data, 10**6, "input 'mask_bytes'[3]")


def test_the_mask_rule_half_scale_or_transparent_ones():
    grey = np.zeros((4, 5), np.uint8)
    grey[1, 2], grey[2, 2], grey[3, 0] = 128, 127, 9  # half scale and up is a hole; JPEG-like noise is not
    assert holes_of(grey).sum() == 1 and holes_of(np.dstack([grey] * 3)).sum() == 1
    assert holes_of((grey >= 128).astype(np.uint8)).sum() == 1, "a mask of 0 and 1 marks holes with its 1s"
    erased = np.full((4, 5, 4), 200, np.uint8)   # a photo with the damage erased to transparency
    erased[..., 3] = 255
    erased[2:4, 0:2, 3] = 0
    erased[0, 4, 3] = 127                        # mostly erased counts as erased
    erased[0, 3, 3] = 128                        # half erased does not
    assert holes_of(erased).tolist() == [[0, 0, 0, 0, 1], [0] * 5, [1, 1, 0, 0, 0], [1, 1, 0, 0, 0]]
    opaque = np.zeros((4, 5, 4), np.uint8)       # an RGBA mask that is opaque everywhere: colour decides
    opaque[..., 3] = 255
    opaque[3, 3, :3] = 255
    assert holes_of(opaque).sum() == 1
    rgba_png = encode(np.dstack([grey * 0, grey * 0, grey * 0, 255 - (grey >= 128) * 252]).astype(np.uint8), ".png")
    assert decode_mask(rgba_png, 100).tolist() == holes_of(grey).tolist()
    assert decode_mask(encode(grey.astype(np.uint16) * 257, ".png"), 100).tolist() == holes_of(grey).tolist()


# -- the server ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(FORMATS))
def test_rest_files_in_png_out_known_pixels_as_decoded(kind, onnx_repo, start_server):
    server = start_server(onnx_repo)
    photo, mask = random_image(48, 64, seed=1), stroke_mask(48, 64)
    image_file = encode(photo, FORMATS[kind])
    status, answer = post(predict_url(server), bytes_body([image_file], [encode(mask, ".png")]))
    assert status == 200, answer
    [prediction] = answer["predictions"]
    output = decode_image(base64.b64decode(prediction["b64"]), 10**6)
    assert encoded_size(base64.b64decode(prediction["b64"]))[0] == "PNG"
    decoded = decode_image(image_file, 10**6)  # JPEG and WebP are lossy: the known pixels are what they hold
    np.testing.assert_array_equal(output, expected_fill(decoded[None], (mask > 0)[None, ..., None])[0])
    if kind in ("png", "bmp"):
        np.testing.assert_array_equal(output[mask == 0], photo[mask == 0])


def test_rest_columnar_form_many_images_and_an_rgba_mask(onnx_repo, start_server):
    server = start_server(onnx_repo)
    photos = [random_image(30, 40, seed=seed) for seed in range(3)]
    holes = stroke_mask(30, 40) > 0
    erased = np.dstack([photos[0], np.where(holes, 0, 255).astype(np.uint8)])
    body = {"signature_name": "serving_bytes",
            "inputs": {"image_bytes": [b64(encode(p, ".png")) for p in photos],
                       "mask_bytes": [b64(encode(erased, ".png")), b64(encode(holes.astype(np.uint8), ".bmp")),
                                      b64(encode(np.dstack([holes * 255] * 3).astype(np.uint8), ".png"))]}}
    status, answer = post(predict_url(server), body)
    assert status == 200, answer
    outputs = [decode_image(base64.b64decode(item["b64"]), 10**6) for item in answer["outputs"]]
    for photo, output in zip(photos, outputs):
        np.testing.assert_array_equal(output, expected_fill(photo[None], holes[None, ..., None])[0])


def test_grpc_with_the_official_classes(onnx_repo, start_server):
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    server = start_server(onnx_repo, rest_port=None)
    photo, mask = random_image(40, 50, seed=2), stroke_mask(40, 50)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "inpaint"
    request.model_spec.signature_name = "serving_bytes"
    for name, data in (("image_bytes", encode(photo, ".png")), ("mask_bytes", encode(mask, ".png"))):
        request.inputs[name].dtype = 7  # DT_STRING
        request.inputs[name].tensor_shape.dim.add().size = 1
        request.inputs[name].string_val.append(data)
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert response.model_spec.signature_name == "serving_bytes"
    [png] = response.outputs["inpainted_bytes"].string_val
    output = decode_image(png, 10**6)
    np.testing.assert_array_equal(output, expected_fill(photo[None], (mask > 0)[None, ..., None])[0])


def test_metadata_shows_both_signatures(onnx_repo, start_server):
    from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

    server = start_server(onnx_repo)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "inpaint"
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert set(signatures.signature_def) == {"serving_default", "serving_bytes"}
    files = signatures.signature_def["serving_bytes"]
    assert set(files.inputs) == {"image_bytes", "mask_bytes"} and set(files.outputs) == {"inpainted_bytes"}
    assert files.inputs["image_bytes"].dtype == 7 and [d.size for d in files.inputs["image_bytes"].tensor_shape.dim] == [-1]
    with urllib.request.urlopen(f"{server.rest_url}/v1/models/inpaint/metadata", timeout=10) as reply:
        rest = json.loads(reply.read())["metadata"]["signature_def"]["signature_def"]
    assert rest["serving_bytes"]["outputs"]["inpainted_bytes"]["dtype"] == "DT_STRING"


def bad_cases() -> list:
    photo, mask = encode(random_image(20, 30), ".png"), encode(stroke_mask(20, 30), ".png")
    return [
        ({"image_bytes": b64(photo), "mask_bytes": b64(encode(stroke_mask(21, 30), ".png"))},
         "'mask_bytes'[0] is 30x21 but 'image_bytes'[0] is 30x20"),
        ({"image_bytes": b64(bomb_png(100_000, 100_000)), "mask_bytes": b64(mask)},
         "'image_bytes'[0] is a PNG of 100000x100000 = 10000000000 pixels, over the limit"),
        ({"image_bytes": b64(photo[:200]), "mask_bytes": b64(mask)}, "'image_bytes'[0] is a corrupt PNG"),
        ({"image_bytes": b64(b"GIF89a" + photo), "mask_bytes": b64(mask)}, "'image_bytes'[0] is not a PNG"),
        ({"image_bytes": {"b64": "not base64!"}, "mask_bytes": b64(mask)}, "'image_bytes'[0] is not valid base64"),
        ({"image_bytes": photo.hex(), "mask_bytes": b64(mask)}, "must be {\"b64\""),
        ({"image_bytes": b64(photo)}, "signature 'serving_bytes' takes ['image_bytes', 'mask_bytes']"),
    ]


@pytest.mark.parametrize("instance, fragment", bad_cases())
def test_bad_files_over_rest_are_400_naming_the_input(instance, fragment, onnx_repo, start_server):
    server = start_server(onnx_repo)
    status, answer = post(predict_url(server), {"signature_name": "serving_bytes", "instances": [instance]})
    assert status == 400 and fragment in answer["error"], answer


def test_bad_files_over_grpc_are_invalid_argument_and_the_server_goes_on(onnx_repo, start_server):
    from grpc_helpers import Stubs, code_of

    from inpaint.core.tensors import predict_bytes_request

    server = start_server(onnx_repo, rest_port=None)
    stubs = Stubs(server.grpc_target)
    photo, mask = encode(random_image(20, 30), ".png"), encode(stroke_mask(20, 30), ".png")
    for images, masks, fragment in (([bomb_png(100_000, 100_000)], [mask], "over the limit of"),
                                    ([photo[:100]], [mask], "corrupt PNG"),
                                    ([photo, photo], [mask], "send one mask per image")):
        code, details = code_of(lambda: stubs.prediction.Predict(predict_bytes_request(images, masks, "inpaint"),
                                                                 timeout=10))
        assert code == INVALID and fragment in details, details
    wrong = predict_bytes_request([photo], [mask], "inpaint")
    wrong.inputs["image_bytes"].dtype = 4  # DT_UINT8
    code, details = code_of(lambda: stubs.prediction.Predict(wrong, timeout=10))
    assert code == INVALID and "expected DT_STRING" in details
    response = stubs.prediction.Predict(predict_bytes_request([photo], [mask], "inpaint"), timeout=10)
    assert len(response.outputs["inpainted_bytes"].string_val) == 1


def test_a_photo_over_the_threshold_takes_the_large_photo_path(onnx_repo, start_server):
    server = start_server(onnx_repo, rest_port=None, tile_above_pixels=64 * 64, max_pixels=400 * 300)
    from inpaint.core.protos import predict_pb2, prediction_service_pb2_grpc
    from inpaint.core.tensors import bytes_output_of, predict_bytes_request

    photo, mask = random_image(300, 400, seed=3), stroke_mask(300, 400)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(predict_bytes_request([encode(photo, ".png")], [encode(mask, ".png")], "inpaint"),
                                timeout=60)
    assert isinstance(response, predict_pb2.PredictResponse)
    [png] = bytes_output_of(response, 1)
    np.testing.assert_array_equal(decode_image(png, 10**6),
                                  expected_fill(photo[None], (mask > 0)[None, ..., None])[0])


def test_json_arrays_over_the_rest_array_limit_are_refused_before_parsing(onnx_repo, start_server):
    server = start_server(onnx_repo, tile_above_pixels=64 * 64)  # JSON arrays: 40 B x 4096 px / 2 = 81,920 values
    image = np.zeros((1, 150, 150, 3), np.uint8).tolist()
    mask = np.zeros((1, 150, 150, 1), np.uint8).tolist()
    status, answer = post(predict_url(server), {"inputs": {"image": image, "mask": mask}})
    assert status == 413 and "send the image files (signature 'serving_bytes')" in answer["error"]
    photo = encode(random_image(150, 150), ".png")  # the same photo as a file is welcome
    status, answer = post(predict_url(server), bytes_body([photo], [encode(stroke_mask(150, 150), ".png")]))
    assert status == 200, answer


def test_encode_png_round_trips():
    photo = random_image(33, 47, seed=4)
    assert decode_image(encode_png(photo), 10**6).tolist() == photo.tolist()


# -- the client and the CLI ------------------------------------------------------------------------------------

class FilesSpy:
    """Counts the server's ``serving_bytes`` calls (a spy on the real data plane, which still does the work)."""

    def __init__(self, server):
        self.calls = 0
        dataplane = server.server.dataplane
        real = dataplane.predict_bytes

        async def predict_bytes(*args, **kwargs):
            self.calls += 1
            return await real(*args, **kwargs)

        dataplane.predict_bytes = predict_bytes


def test_the_client_sends_files_and_gets_pngs(onnx_repo, start_server):
    from inpaint.client import InpaintClient, InvalidInput

    server = start_server(onnx_repo, rest_port=None)
    photos = [random_image(20, 30, seed=5), random_image(24, 16, seed=6)]  # two sizes in one request
    masks = [stroke_mask(20, 30), stroke_mask(24, 16)]
    with InpaintClient(server.grpc_target) as client:
        assert client.takes_bytes()
        pngs = client.inpaint_bytes([encode(p, ".png") for p in photos], [encode(m, ".png") for m in masks])
        for photo, mask, png in zip(photos, masks, pngs):
            np.testing.assert_array_equal(decode_image(png, 10**6),
                                          expected_fill(photo[None], (mask > 0)[None, ..., None])[0])
        with pytest.raises(InvalidInput, match="mask is 16x24 but image is 30x20"):
            client.inpaint_bytes([encode(photos[0], ".png")], [encode(masks[1], ".png")])
        with pytest.raises(InvalidInput, match="is not a PNG, JPEG, WebP or BMP"):
            client.inpaint_bytes([b"II*\0 a tiff"], [encode(masks[0], ".png")])


def test_predict_sends_the_files_own_bytes_when_the_model_takes_them(onnx_repo, start_server, tmp_path):
    from click.testing import CliRunner

    from inpaint.client.cli import main as client_main

    server = start_server(onnx_repo, rest_port=None)
    spy = FilesSpy(server)
    photo, mask = random_image(40, 60, seed=7), stroke_mask(40, 60)
    (tmp_path / "photo.jpg").write_bytes(encode(photo, ".jpg"))
    (tmp_path / "mask.png").write_bytes(encode(mask, ".png"))
    expected = expected_fill(decode_image(encode(photo, ".jpg"), 10**6)[None], (mask > 0)[None, ..., None])[0]
    for send, files_calls in (("auto", 1), ("pixels", 1), ("bytes", 2), ("files", 3)):
        out = tmp_path / f"out-{send}.png"
        result = CliRunner().invoke(client_main, ["--target", server.grpc_target, "predict", str(tmp_path / "photo.jpg"),
                                                  str(tmp_path / "mask.png"), "-o", str(out), "--send", send])
        assert result.exit_code == 0, result.output
        assert spy.calls == files_calls, f"--send {send}"
        assert ("--send files is now --send bytes" in result.output) == (send == "files"), "the old value warns"
        np.testing.assert_array_equal(decode_image(out.read_bytes(), 10**6), expected)
    # Photos the client sends in windows go as pixels under auto.
    big = random_image(300, 400, seed=8)
    (tmp_path / "big.png").write_bytes(encode(big, ".png"))
    (tmp_path / "big_mask.png").write_bytes(encode(stroke_mask(300, 400), ".png"))
    result = CliRunner().invoke(client_main, ["--target", server.grpc_target, "predict", str(tmp_path / "big.png"),
                                              str(tmp_path / "big_mask.png"), "-o", str(tmp_path / "big.jpg"),
                                              "--tile-above-pixels", "10000"])
    assert result.exit_code == 0 and spy.calls == 3, result.output
    assert cv2.imread(str(tmp_path / "big.jpg")).shape == (300, 400, 3)


def test_predict_with_files_the_server_cannot_read_is_a_one_line_error(onnx_repo, start_server, tmp_path):
    from click.testing import CliRunner

    from inpaint.client.cli import main as client_main

    server = start_server(onnx_repo, rest_port=None)
    cv2.imwrite(str(tmp_path / "photo.tif"), random_image(20, 30))
    (tmp_path / "mask.png").write_bytes(encode(stroke_mask(20, 30), ".png"))
    args = ["--target", server.grpc_target, "predict", str(tmp_path / "photo.tif"), str(tmp_path / "mask.png"),
            "-o", str(tmp_path / "out.png")]
    result = CliRunner().invoke(client_main, [*args, "--send", "bytes"])
    assert result.exit_code == 1 and "is not a PNG, JPEG, WebP or BMP" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    result = CliRunner().invoke(client_main, args)  # auto: a TIFF goes as pixels
    assert result.exit_code == 0, result.output
