"""Wire compatibility with the official tensorflow-serving-api classes and stubs."""

from __future__ import annotations

import numpy as np
from google.protobuf import text_format

from grpc_helpers import Stubs, images, predict_request
from inpaint.core.protos import get_model_status_pb2, predict_pb2
from onnx_models import expected_fill


def _official_tensor(array):
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_UINT8, tensor_content=array.tobytes(),
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in array.shape]))


def test_official_stubs_get_a_correct_answer(onnx_repo, start_server):
    import grpc
    from tensorflow_serving.apis import predict_pb2 as official, prediction_service_pb2_grpc

    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(start_server(onnx_repo).grpc_target))
    image, mask = images(3, 9, 11)
    request = official.PredictRequest()
    request.model_spec.name = "inpaint"
    request.model_spec.signature_name = "serving_default"
    request.inputs["image"].CopyFrom(_official_tensor(image))
    request.inputs["mask"].CopyFrom(_official_tensor(mask))
    response = stub.Predict(request, timeout=10)
    output = response.outputs["inpainted"]
    assert output.dtype == 4 and [d.size for d in output.tensor_shape.dim] == [3, 9, 11, 3]
    result = np.frombuffer(output.tensor_content, np.uint8).reshape(3, 9, 11, 3)
    assert result.tolist() == expected_fill(image, mask).tolist()
    assert response.model_spec.name == "inpaint" and response.model_spec.version.value == 1


def test_our_bytes_parse_as_theirs_and_back():
    from tensorflow_serving.apis import get_model_status_pb2 as official_status
    from tensorflow_serving.apis import predict_pb2 as official

    image, mask = images(2, 4, 3)
    ours = predict_request(image, mask, version=5, signature="serving_default")
    ours.output_filter.append("inpainted")
    theirs = official.PredictRequest.FromString(ours.SerializeToString())
    assert theirs.model_spec.name == "inpaint" and theirs.model_spec.version.value == 5
    assert list(theirs.output_filter) == ["inpainted"]
    assert theirs.inputs["image"].tensor_content == image.tobytes()
    assert [d.size for d in theirs.inputs["mask"].tensor_shape.dim] == [2, 4, 3, 1]
    back = predict_pb2.PredictRequest.FromString(theirs.SerializeToString())
    assert back == ours

    status = official_status.GetModelStatusResponse()
    entry = status.model_version_status.add(version=3, state=official_status.ModelVersionStatus.AVAILABLE)
    entry.status.error_message = "fine"
    parsed = get_model_status_pb2.GetModelStatusResponse.FromString(status.SerializeToString())
    assert parsed.model_version_status[0].version == 3 and parsed.model_version_status[0].state == 30
    assert parsed.model_version_status[0].status.error_message == "fine"
    assert text_format.MessageToString(parsed) == text_format.MessageToString(status)


def test_our_client_protos_talk_to_our_server(onnx_repo, start_server):
    stubs = Stubs(start_server(onnx_repo).grpc_target)
    image, mask = images()
    assert stubs.predict(predict_request(image, mask)).tolist() == expected_fill(image, mask).tolist()


def _fields(descriptor) -> dict:
    return {f.name: (f.number, f.type, f.is_repeated) for f in descriptor.fields}


def test_every_message_matches_the_official_field_numbers():
    """Ours is a subset: every field we declare exists in TF Serving's message with the same number and type."""
    from tensorflow.core.framework import tensor_pb2 as tf_tensor
    from tensorflow.core.framework import tensor_shape_pb2 as tf_shape
    from tensorflow.core.protobuf import meta_graph_pb2 as tf_meta
    from tensorflow_serving.apis import get_model_metadata_pb2 as tf_metadata
    from tensorflow_serving.apis import get_model_status_pb2 as tf_status
    from tensorflow_serving.apis import model_pb2 as tf_model
    from tensorflow_serving.apis import predict_pb2 as tf_predict
    from tensorflow_serving.apis import status_pb2 as tf_status_proto

    from inpaint.core.protos import (
        get_model_metadata_pb2,
        meta_graph_pb2,
        model_pb2,
        tensor_pb2,
        tensor_shape_pb2,
    )

    pairs = [
        (tensor_pb2.TensorProto, tf_tensor.TensorProto),
        (tensor_shape_pb2.TensorShapeProto, tf_shape.TensorShapeProto),
        (tensor_shape_pb2.TensorShapeProto.Dim, tf_shape.TensorShapeProto.Dim),
        (meta_graph_pb2.TensorInfo, tf_meta.TensorInfo),
        (meta_graph_pb2.SignatureDef, tf_meta.SignatureDef),
        (model_pb2.ModelSpec, tf_model.ModelSpec),
        (predict_pb2.PredictRequest, tf_predict.PredictRequest),
        (predict_pb2.PredictResponse, tf_predict.PredictResponse),
        (get_model_metadata_pb2.SignatureDefMap, tf_metadata.SignatureDefMap),
        (get_model_metadata_pb2.GetModelMetadataRequest, tf_metadata.GetModelMetadataRequest),
        (get_model_metadata_pb2.GetModelMetadataResponse, tf_metadata.GetModelMetadataResponse),
        (get_model_status_pb2.GetModelStatusRequest, tf_status.GetModelStatusRequest),
        (get_model_status_pb2.ModelVersionStatus, tf_status.ModelVersionStatus),
        (get_model_status_pb2.GetModelStatusResponse, tf_status.GetModelStatusResponse),
        (get_model_status_pb2.StatusProto, tf_status_proto.StatusProto),
    ]
    for ours, theirs in pairs:
        assert ours.DESCRIPTOR.full_name == theirs.DESCRIPTOR.full_name
        mine, official = _fields(ours.DESCRIPTOR), _fields(theirs.DESCRIPTOR)
        for name, spec in mine.items():
            assert official.get(name) == spec, f"{ours.DESCRIPTOR.full_name}.{name}: ours {spec}, official {official.get(name)}"
    state = get_model_status_pb2.ModelVersionStatus.State
    assert {v.name: v.number for v in state.DESCRIPTOR.values} == \
        {v.name: v.number for v in tf_status.ModelVersionStatus.State.DESCRIPTOR.values}


def test_open_inference_protocol_matches_tritons_descriptors():
    """Our KServe v2 protos against Triton's (a superset of KServe's grpc_predict_v2.proto): every message,
    nested message and field of ours exists there with the same number, type, label and message type, and
    every RPC of ours with the same request and response types."""
    from tritonclient.grpc import service_pb2 as triton

    from inpaint.core.protos import grpc_predict_v2_pb2 as ours

    def messages(descriptor):
        yield descriptor
        for nested in descriptor.nested_types:
            yield from messages(nested)

    def field_spec(field):
        return (field.number, field.type, field.label, field.message_type and field.message_type.full_name,
                field.containing_oneof and field.containing_oneof.name)

    theirs_file = triton.DESCRIPTOR
    checked = 0
    assert ours.DESCRIPTOR.package == theirs_file.package == "inference"
    for top in ours.DESCRIPTOR.message_types_by_name.values():
        for message in messages(top):
            official = theirs_file.pool.FindMessageTypeByName(message.full_name)
            for field in message.fields:
                other = official.fields_by_name.get(field.name)
                assert other is not None, f"{message.full_name}.{field.name} is not in Triton's message"
                assert field_spec(field) == field_spec(other), \
                    f"{message.full_name}.{field.name}: ours {field_spec(field)}, official {field_spec(other)}"
                checked += 1
    assert checked >= 60
    service = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    official_service = theirs_file.services_by_name["GRPCInferenceService"]
    assert [m.name for m in service.methods] == ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                                                 "ModelMetadata", "ModelInfer"]
    for method in service.methods:
        other = official_service.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == \
            (other.input_type.full_name, other.output_type.full_name)
        assert not (method.client_streaming or method.server_streaming)
