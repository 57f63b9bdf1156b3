"""Status codes and messages, over gRPC and REST, as TF Serving 2.20 returns them.

The server under test runs with serving/batching_parameters.config (max_batch_size 32).
"""

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serving_helpers import MODEL
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
)

from tfbert.serving import ServingError

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def _predict_request(inputs=None, name=MODEL, signature="", version=None, label=None,
                     output_filter=()):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for key, value in (inputs if inputs is not None else {"text": ["a"]}).items():
        request.inputs[key].CopyFrom(
            value if isinstance(value, tensor_pb2.TensorProto)
            else tf.make_tensor_proto(value))
    request.output_filter.extend(output_filter)
    return request


def _grpc_error(call, request):
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    return info.value.code(), info.value.details()


def _http(server, method, path, body=None):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.rest_api_port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _rest_error(server, method, path, body=None):
    status, raw = _http(server, method, path, body)
    return status, json.loads(raw)["error"]


@pytest.fixture(scope="module")
def stubs(grpc_client):
    return grpc_client._prediction, grpc_client._models


GRPC_PREDICT_CASES = [
    # (case, request, code, message substring)
    ("unknown model", _predict_request(name="nope"), NOT_FOUND,
     "Servable not found for request: Latest(nope)"),
    ("unknown version", _predict_request(version=7), NOT_FOUND,
     f"Servable not found for request: Specific({MODEL}, 7)"),
    ("unknown version label", _predict_request(label="stable"), INVALID,
     "Unrecognized servable version label: stable"),
    ("unknown signature", _predict_request(signature="nope"), FAILED_PRECONDITION,
     'Serving signature key "nope" not found.'),
    ("wrong input key", _predict_request({"txt": ["a"]}), INVALID,
     "input tensor alias not found in signature: txt"),
    ("extra input", _predict_request({"text": ["a"], "more": ["b"]}), INVALID,
     "input size does not match signature: 2!=1"),
    ("missing input", _predict_request({"text": ["a"]}, signature="pair"), INVALID,
     "Missing but required: {text_b}"),
    ("wrong dtype", _predict_request({"text": np.float32([1.0])}), INVALID,
     "Expects arg[0] to be string but float is provided"),
    ("wrong int dtype", _predict_request(
        {"input_word_ids": np.zeros((1, 2), np.int64), "input_mask": np.zeros((1, 2), np.int32),
         "input_type_ids": np.zeros((1, 2), np.int32)}, signature="serve_ids"), INVALID,
     "to be int32 but int64 is provided"),
    ("wrong rank", _predict_request({"text": [["a"]]}), INVALID,
     ("input tensor alias: text has shape [1,1], which is incompatible with the signature's "
      "shape [-1]")),
    ("scalar input", _predict_request({"text": "a"}), INVALID, "has shape []"),
    ("wrong rank ids", _predict_request(
        {"input_word_ids": np.zeros(2, np.int32), "input_mask": np.zeros((1, 2), np.int32),
         "input_type_ids": np.zeros((1, 2), np.int32)}, signature="serve_ids"), INVALID,
     "input_word_ids has shape [2]"),
    ("batch over max_batch_size", _predict_request({"text": ["a"] * 33}), INVALID,
     "Task size 33 is larger than maximum input batch size 32"),
    ("unequal batch dims (batching)", _predict_request({"text": ["a"], "text_b": ["b", "c"]},
                                                       signature="pair"), INVALID,
     "must have equal 0th-dimension size"),
    ("unknown output filter", _predict_request(output_filter=["nope"]), INVALID,
     "output tensor alias not found in signature: nope"),
    ("duplicate output filter", _predict_request(output_filter=["label", "label"]), INVALID,
     "duplicate output tensor alias: label"),
    ("undecodable examples (graph error)", _predict_request(
        {"inputs": [b"\x0a\xff\xff\xff"]}, signature="classify"), INVALID, ""),
]


@pytest.mark.parametrize("case,request_proto,code,message", GRPC_PREDICT_CASES,
                         ids=[c[0] for c in GRPC_PREDICT_CASES])
def test_grpc_predict_errors(stubs, case, request_proto, code, message):
    got_code, details = _grpc_error(stubs[0].Predict, request_proto)
    assert got_code == code, details
    assert message in details


def test_grpc_malformed_requests(stubs, grpc_client):
    predict, _ = stubs
    assert _grpc_error(predict.Predict, predict_pb2.PredictRequest())[0] == INVALID  # no spec
    assert _grpc_error(predict.Predict, predict_pb2.PredictRequest())[1] == "Missing ModelSpec"

    # Bytes that are not a PredictRequest: INVALID_ARGUMENT (grpcio alone would say INTERNAL).
    raw = grpc_client._channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\xff\xff\xff\xff\x0f", timeout=30)
    assert info.value.code() == INVALID

    # A TensorProto whose content does not match its shape, and one that claims 2^40 values.
    bad = tf.make_tensor_proto(np.float32([1, 2]))
    bad.tensor_shape.dim[0].size = 3
    request = _predict_request({"input_word_ids": bad}, signature="serve_ids")
    assert _grpc_error(predict.Predict, request)[0] == INVALID
    huge = tensor_pb2.TensorProto(dtype=tf.string.as_datatype_enum)
    huge.tensor_shape.dim.add(size=2**40)
    code, details = _grpc_error(predict.Predict, _predict_request({"text": huge}))
    assert code == INVALID and details == "tensor parsing error: text"


def test_grpc_classify_status_and_metadata_errors(stubs):
    predict, models = stubs
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "classify"
    assert _grpc_error(predict.Classify, request) == (INVALID, "Input is empty.")
    request.input.example_list.examples.add()
    request.model_spec.signature_name = "nope"
    # Classify words an unknown signature as INVALID_ARGUMENT, unlike Predict.
    assert _grpc_error(predict.Classify, request) == (
        INVALID, "No signature was found with the name: nope")
    request.model_spec.signature_name = "serving_default"  # input is `text`, not `inputs`
    assert _grpc_error(predict.Classify, request)[0] == INVALID
    request.model_spec.name = "nope"
    assert _grpc_error(predict.Classify, request)[0] == NOT_FOUND

    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "nope"
    assert _grpc_error(models.GetModelStatus, status) == (
        NOT_FOUND, "Could not find any versions of model nope")
    status.model_spec.name = MODEL
    status.model_spec.version.value = 9
    assert _grpc_error(models.GetModelStatus, status) == (
        NOT_FOUND, f"Could not find version 9 of model {MODEL}")

    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = MODEL
    assert _grpc_error(predict.GetModelMetadata, metadata) == (
        INVALID, "GetModelMetadataRequest must specify at least one metadata_field")
    metadata.metadata_field.append("graph")
    assert _grpc_error(predict.GetModelMetadata, metadata) == (
        INVALID, "Metadata field graph is not supported")
    metadata.ClearField("metadata_field")
    metadata.metadata_field.append("signature_def")
    metadata.model_spec.name = "nope"
    assert _grpc_error(predict.GetModelMetadata, metadata)[0] == NOT_FOUND


REST_CASES = [
    # (case, method, path, body, HTTP status, message substring)
    ("unknown model", "POST", "/v1/models/nope:predict", {"instances": ["a"]}, 404,
     "Servable not found for request: Latest(nope)"),
    ("unknown version", "POST", f"/v1/models/{MODEL}/versions/7:predict", {"instances": ["a"]},
     404, f"Specific({MODEL}, 7)"),
    ("unknown label", "POST", f"/v1/models/{MODEL}/labels/canary:predict", {"instances": ["a"]},
     400, "Unrecognized servable version label: canary"),
    ("unknown model status", "GET", "/v1/models/nope", None, 404,
     "Could not find any versions of model nope"),
    ("unknown version status", "GET", f"/v1/models/{MODEL}/versions/3", None, 404,
     f"Could not find version 3 of model {MODEL}"),
    ("unknown model metadata", "GET", "/v1/models/nope/metadata", None, 404,
     "Servable not found"),
    ("unknown signature", "POST", f"/v1/models/{MODEL}:predict",
     {"signature_name": "nope", "instances": ["a"]}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("wrong input key (row)", "POST", f"/v1/models/{MODEL}:predict",
     {"instances": [{"txt": "a"}]}, 400, "does not have named input: txt"),
    ("missing input (columnar)", "POST", f"/v1/models/{MODEL}:predict",
     {"signature_name": "pair", "inputs": {"text": ["a"]}}, 400,
     "Missing named input: text_b in 'inputs' object."),
    ("wrong dtype", "POST", f"/v1/models/{MODEL}:predict", {"instances": [1.5]}, 400,
     "JSON Value: 1.5 Type: Number is not of expected type: string"),
    ("wrong int dtype", "POST", f"/v1/models/{MODEL}:predict",
     {"signature_name": "serve_ids", "inputs": {"input_word_ids": [[1.5]], "input_mask": [[1]],
                                                 "input_type_ids": [[0]]}}, 400,
     "is not of expected type: int32"),
    ("wrong rank", "POST", f"/v1/models/{MODEL}:predict", {"instances": [["a"]]}, 400,
     "incompatible with the signature's shape [-1]"),
    ("ragged instances", "POST", f"/v1/models/{MODEL}:predict",
     {"signature_name": "serve_ids", "inputs": {"input_word_ids": [[1, 2], [3]],
                                                 "input_mask": [[1]], "input_type_ids": [[0]]}},
     400, "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
    ("batch over max_batch_size", "POST", f"/v1/models/{MODEL}:predict",
     {"instances": ["a"] * 33}, 400, "Task size 33 is larger than maximum input batch size 32"),
    ("bad base64", "POST", f"/v1/models/{MODEL}:predict", {"instances": [{"b64": "%%%"}]}, 400,
     "Unable to base64 decode"),
    ("empty body", "POST", f"/v1/models/{MODEL}:predict", b"", 400,
     "JSON Parse error: The document is empty"),
    ("not JSON", "POST", f"/v1/models/{MODEL}:predict", b"{not json", 400, "JSON Parse error"),
    ("not an object", "POST", f"/v1/models/{MODEL}:predict", [1, 2], 400, "Is not object"),
    ("no instances or inputs", "POST", f"/v1/models/{MODEL}:predict", {"x": 1}, 400,
     "Missing 'inputs' or 'instances' key"),
    ("both instances and inputs", "POST", f"/v1/models/{MODEL}:predict",
     {"instances": ["a"], "inputs": ["a"]}, 400, "expecting only one of 'inputs' or 'instances'"),
    ("empty instances", "POST", f"/v1/models/{MODEL}:predict", {"instances": []}, 400,
     "No values in 'instances' array"),
    ("unknown verb", "POST", f"/v1/models/{MODEL}:explain", {"instances": ["a"]}, 400,
     f"Malformed request: POST /v1/models/{MODEL}:explain"),
    ("classify unknown signature", "POST", f"/v1/models/{MODEL}:classify",
     {"signature_name": "nope", "examples": [{"text": "a"}]}, 400,
     "No signature was found with the name: nope"),
    ("classify without examples", "POST", f"/v1/models/{MODEL}:classify",
     {"signature_name": "classify"}, 400, "key 'examples' is expected and was not found"),
    ("classify mixed feature kinds", "POST", f"/v1/models/{MODEL}:classify",
     {"signature_name": "classify", "examples": [{"text": ["a", 1]}]}, 400,
     "Unexpected element type in feature: text expecting type: bytes"),
]


@pytest.mark.parametrize("case,method,path,body,status,message", REST_CASES,
                         ids=[c[0] for c in REST_CASES])
def test_rest_errors(server, case, method, path, body, status, message):
    got_status, error = _rest_error(server, method, path, body)
    assert got_status == status, error
    assert message in error


def test_rest_unknown_path_is_404(server):
    assert _http(server, "GET", "/healthz")[0] == 404


def test_client_raises_serving_error_with_code(grpc_client, rest_client):
    for client, http_status in ((grpc_client, None), (rest_client, 404)):
        with pytest.raises(ServingError) as info:
            client.with_options(version=42).predict(["a"])
        assert info.value.code == NOT_FOUND
        assert info.value.http_status == http_status
        assert "Specific(textmodel, 42)" in str(info.value)
    with pytest.raises(ServingError) as info:
        grpc_client.with_options(signature_name="nope").predict(["a"])
    assert info.value.code == FAILED_PRECONDITION and info.value.http == 400
