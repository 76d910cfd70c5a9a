"""Versions are checked by running them, and a loaded model.onnx changed in place is noticed (issue 21, item 5).

A version whose graph had the right input and output names but answered every request with a 16 x 16 crop
became AVAILABLE, and every request got HTTP 200 with a [1,16,16,3] reply; a model.onnx overwritten in place
was silently ignored. Now a version serves only once its warm-up runs (``models.WARM_UP_SHAPES``) return the
contract's shape and dtype with the known pixels kept, and a changed file is loaded again, checked the same
way, and swapped in while the file loaded before goes on serving (or refused, in the log and the status).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from grpc_health.v1 import health_pb2
from onnx import TensorProto, helper

from grpc_helpers import Stubs, images, predict_request
from helpers import health_status, wait_for
from inpaint.core.contract import ContractError, VersionState
from inpaint.serving.models import WARM_UP_SHAPES, warm_up
from onnx_models import expected_fill, fill_model, write_version

AVAILABLE, END = int(VersionState.AVAILABLE), int(VersionState.END)
POLL_SECONDS = 0.05


def _contract_model(name: str, nodes: list, initializers: list | None = None) -> onnx.ModelProto:
    """A graph with the contract's names and declared types: uint8 image, mask in, uint8 [N,H,W,3] out."""
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])
    mask = helper.make_tensor_value_info("mask", TensorProto.UINT8, ["N", "H", "W", 1])
    output = helper.make_tensor_value_info("inpainted", TensorProto.UINT8, ["N", "H", "W", 3])
    graph = helper.make_graph(nodes, name, [image, mask], [output], initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def crop_model() -> onnx.ModelProto:
    """Answers with the image's top-left 16 x 16 pixels, whatever its size."""
    ints = [helper.make_tensor(name, TensorProto.INT64, [2], values)
            for name, values in (("starts", [0, 0]), ("ends", [16, 16]), ("axes", [1, 2]))]
    return _contract_model("crop", [helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["inpainted"])],
                           ints)


def known_pixels_changed_model() -> onnx.ModelProto:
    """Keeps the hole and writes 128 over every known pixel: the shape is right, the pixels are not."""
    return _contract_model("inverted", [
        helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.UINT8, [], [0])),
        helper.make_node("Constant", [], ["fill"], value=helper.make_tensor("f", TensorProto.UINT8, [], [128])),
        helper.make_node("Greater", ["mask", "zero"], ["hole"]),
        helper.make_node("Where", ["hole", "image", "fill"], ["inpainted"]),
    ])


def statuses(stubs: Stubs) -> dict[int, tuple[int, str]]:
    return {s.version: (s.state, s.status.error_message) for s in stubs.status().model_version_status}


def answer_of(stubs: Stubs, image: np.ndarray, mask: np.ndarray) -> tuple[int, int | None]:
    """(version, fill value) of one Predict: which file answered it (None: not a fill model's answer)."""
    response = stubs.prediction.Predict(predict_request(image, mask), timeout=10)
    output = np.frombuffer(response.outputs["inpainted"].tensor_content, np.uint8).reshape(image.shape)
    fills = [fill for fill in (128, 60, 200) if np.array_equal(output, expected_fill(image, mask, fill))]
    return response.model_spec.version.value, fills[0] if fills else None


class Requests:
    """One client thread sending Predict non-stop; every answer's (version, fill) or failure is kept."""

    def __init__(self, stubs: Stubs):
        self.stubs, self.image, self.mask = stubs, *images(1, 8, 8)
        self.answers: list[tuple[int, int | None]] = []
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def __enter__(self) -> "Requests":
        self.thread.start()
        wait_for(lambda: len(self.answers) >= 5, 10, "the first answers")
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.answers.append(answer_of(self.stubs, self.image, self.mask))
            except grpc.RpcError as error:
                self.failures.append(f"{error.code().name}: {error.details()}")

    def wait_answered_by(self, answer: tuple[int, int], count: int = 10) -> None:
        wait_for(lambda: self.answers[-count:] == [answer] * count, 15, f"{answer} to answer every request")


def overwrite_in_place(path: Path, content: bytes) -> None:
    """Rewrite ``path``'s bytes through the same inode, as ``cp`` over an existing file does."""
    with open(path, "r+b") as model_file:
        model_file.write(content)
        model_file.truncate()


# -- versions checked by running them -------------------------------------------------------------------

@pytest.mark.parametrize("model, problem", [(crop_model, "returned uint8 [1, 16, 16, 3]"),
                                            (known_pixels_changed_model, "known pixels")])
def test_a_version_with_the_right_names_but_wrong_answers_never_serves(onnx_repo, start_server, model, problem):
    server = start_server(onnx_repo, poll_seconds=POLL_SECONDS)
    stubs = Stubs(server.grpc_target)
    with Requests(stubs) as requests:
        write_version(onnx_repo, 2, model())
        error = wait_for(lambda: statuses(stubs).get(2, (0, ""))[1], 10, "version 2 to fail its warm-up")
        assert statuses(stubs) == {1: (AVAILABLE, ""), 2: (END, error)}
        assert "warm-up run on 1x64x64 images" in error and problem in error, error
        answered = len(requests.answers)
        wait_for(lambda: len(requests.answers) >= answered + 10, 10, "more answers")
    assert not requests.failures, requests.failures[:3]
    assert set(requests.answers) == {(1, 128)}


def test_a_server_whose_only_version_crops_is_never_ready(tmp_path, start_server):
    base = tmp_path / "inpaint"
    write_version(base, 1, crop_model())
    server = start_server(base, wait=False, poll_seconds=POLL_SECONDS)
    stubs = Stubs(server.grpc_target)
    error = wait_for(lambda: statuses(stubs).get(1, (0, ""))[1], 10, "version 1 to fail its warm-up")
    assert statuses(stubs)[1][0] == END and "[1, 16, 16, 3]" in error
    assert health_status(server.grpc_target) == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as refused:
        stubs.predict(predict_request(*images(1, 32, 32)))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


class Answers:
    """What a warm-up check sees, for servables that are not ONNX models."""

    def __init__(self, answer):
        self.answer = answer

    def inpaint(self, images, masks):
        return self.answer(images, masks)

    def signature(self):
        raise AssertionError("not asked")


def test_the_warm_up_check_names_each_problem():
    warm_up(Answers(lambda images, masks: images.copy()))  # the contract kept: passes
    cases = [
        (lambda images, masks: images[:, :16, :16], "returned uint8 [1, 16, 16, 3]"),
        (lambda images, masks: images.astype(np.float32) / 255, "returned float32 [1, 64, 64, 3]"),
        (lambda images, masks: images[:, :, :, :1], "returned uint8 [1, 64, 64, 1]"),
        (lambda images, masks: images.tolist(), "returned list"),
        (lambda images, masks: images[:1] if len(images) == 2 else images, "2x32x32 images returned uint8 [1,"),
        (lambda images, masks: np.where(masks > 0, images, 0).astype(np.uint8), "known pixels"),
    ]
    for answer, problem in cases:
        with pytest.raises(ContractError, match="warm-up run on") as failed:
            warm_up(Answers(answer))
        assert problem in str(failed.value), (problem, str(failed.value))
    assert {shape[0] for shape in WARM_UP_SHAPES} == {1, 2}, "a batch is among the shapes"


# -- a loaded file changed in place ---------------------------------------------------------------------

def test_a_model_onnx_overwritten_in_place_is_reloaded_while_the_old_one_serves(onnx_repo, start_server, caplog):
    server = start_server(onnx_repo, poll_seconds=POLL_SECONDS)
    stubs = Stubs(server.grpc_target)
    path = onnx_repo / "1" / "model.onnx"
    inode = path.stat().st_ino
    with caplog.at_level(logging.INFO, logger="inpaint.serving.models"), Requests(stubs) as requests:
        overwrite_in_place(path, fill_model(60).SerializeToString())
        requests.wait_answered_by((1, 60))
    assert path.stat().st_ino == inode
    assert not requests.failures, requests.failures[:3]
    assert set(requests.answers) == {(1, 128), (1, 60)}, "every answer came from one whole file or the other"
    assert statuses(stubs) == {1: (AVAILABLE, "")}
    assert "model.onnx changed in place" in caplog.text


def test_a_file_renamed_over_it_with_the_same_size_and_mtime_is_noticed(onnx_repo, start_server):
    server = start_server(onnx_repo, poll_seconds=POLL_SECONDS)
    stubs = Stubs(server.grpc_target)
    path = onnx_repo / "1" / "model.onnx"
    before = path.stat()
    replacement = path.with_name(".model.onnx.tmp")
    replacement.write_bytes(fill_model(200).SerializeToString())
    assert replacement.stat().st_size == before.st_size
    os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(replacement, path)
    image, mask = images(1, 8, 8)
    wait_for(lambda: answer_of(stubs, image, mask) == (1, 200), 10, "the renamed-in file to serve")
    assert statuses(stubs) == {1: (AVAILABLE, "")}


def test_a_broken_or_cropping_file_written_in_place_is_refused_and_said_so(onnx_repo, start_server, caplog):
    server = start_server(onnx_repo, poll_seconds=POLL_SECONDS)
    stubs = Stubs(server.grpc_target)
    path = onnx_repo / "1" / "model.onnx"
    with caplog.at_level(logging.INFO, logger="inpaint.serving.models"), Requests(stubs) as requests:
        for content, problem in ((b"not an onnx model", "failed to load"),
                                 (crop_model().SerializeToString(), "[1, 16, 16, 3]")):
            overwrite_in_place(path, content)
            error = wait_for(lambda: problem in statuses(stubs)[1][1] and statuses(stubs)[1][1], 10,
                             "the refusal in the version's status")
            assert statuses(stubs)[1][0] == AVAILABLE and "file loaded before still serves" in error
            answered = len(requests.answers)
            wait_for(lambda: len(requests.answers) >= answered + 10, 10, "more answers")
            assert set(requests.answers) == {(1, 128)}
        overwrite_in_place(path, fill_model(60).SerializeToString())  # fixed: loaded, the error is gone
        requests.wait_answered_by((1, 60))
    assert not requests.failures, requests.failures[:3]
    assert statuses(stubs) == {1: (AVAILABLE, "")}
    assert "not retried until model.onnx changes again" in caplog.text
