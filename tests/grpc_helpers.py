"""Requests built with our own protos, and stubs for a running server."""

from __future__ import annotations

import grpc
import numpy as np

from inpaint.core.protos import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from inpaint.core.tensors import from_numpy, to_numpy


def images(n=2, h=6, w=5, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    mask = (rng.random((n, h, w, 1)) > 0.6).astype(np.uint8)
    return image, mask


def predict_request(image, mask, name="inpaint", version=None, signature="", **extra_inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if image is not None:
        request.inputs["image"].CopyFrom(from_numpy(image))
    if mask is not None:
        request.inputs["mask"].CopyFrom(from_numpy(mask))
    for key, value in extra_inputs.items():
        request.inputs[key].CopyFrom(from_numpy(value))
    return request


class Stubs:
    def __init__(self, target: str):
        self.channel = grpc.insecure_channel(target)
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def predict(self, request, timeout=10):
        return to_numpy("inpainted", self.prediction.Predict(request, timeout=timeout).outputs["inpainted"])

    def status(self, name="inpaint", version=None):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        return self.model.GetModelStatus(request, timeout=10)

    def metadata(self, name="inpaint", fields=("signature_def",)):
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=list(fields))
        request.model_spec.name = name
        return self.prediction.GetModelMetadata(request, timeout=10)

    def close(self):
        self.channel.close()


def code_of(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""
