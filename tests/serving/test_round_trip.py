"""Client -> server -> SavedModel: every API returns what the model computes in-process."""

import json
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from saved_models import HIDDEN, LABELS
from serving_helpers import MODEL

TEXTS = ["a gripping, beautifully shot film", "", "naïve café — 東京", "x" * 300]


def _reference(loaded, signature, **inputs):
    outputs = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in outputs.items()}


def _post(server, path, body):
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.rest_api_port}{path}", data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _get(server, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.rest_api_port}{path}",
                                timeout=30) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_predict_equals_in_process_outputs(protocol, grpc_client, rest_client, loaded_v1):
    client = grpc_client if protocol == "grpc" else rest_client
    got = client.predict(TEXTS)
    want = _reference(loaded_v1, "serving_default", text=[t.encode() for t in TEXTS])
    assert sorted(got) == sorted(want) == ["echo_bytes", "label", "label_id", "probabilities"]
    np.testing.assert_array_equal(got["probabilities"], want["probabilities"])
    assert got["probabilities"].dtype == np.float32
    np.testing.assert_array_equal(got["label_id"], want["label_id"])
    assert got["label_id"].dtype == np.int32
    assert list(got["label"]) == [s.decode() for s in want["label"]]
    assert set(got["label"]) <= set(LABELS)
    # `*_bytes` outputs stay bytes; others are decoded to str.
    assert list(got["echo_bytes"]) == [t.encode() for t in TEXTS]


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_other_signatures_round_trip(protocol, grpc_client, rest_client, loaded_v1):
    client = grpc_client if protocol == "grpc" else rest_client
    pair = client.with_options(signature_name="pair").predict(["abcd", "ab"], text_b=["a", "abcde"])
    np.testing.assert_array_equal(pair["score"], [3.0, -3.0])

    lower = client.with_options(signature_name="lower").predict(["AbC", b"\xff\xc3"])
    # A single output; non-UTF-8 results stay bytes (REST: base64 in the JSON).
    assert list(lower["lowered"]) == ["abc", b"\xff\xc3"]

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100, (3, 5)).astype("int32")
    mask = np.ones((3, 5), "int32")
    mask[1, 3:] = 0
    types = np.zeros((3, 5), "int32")
    got = client.with_options(signature_name="serve_ids").predict(
        input_word_ids=ids, input_mask=mask, input_type_ids=types)
    want = _reference(loaded_v1, "serve_ids", input_word_ids=ids, input_mask=mask,
                      input_type_ids=types)
    assert got["pooled_output"].shape == (3, HIDDEN)
    np.testing.assert_array_equal(got["pooled_output"], want["pooled_output"])


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_classify(protocol, grpc_client, rest_client, loaded_v1):
    client = grpc_client if protocol == "grpc" else rest_client
    texts = ["a gripping film", "dull", "ünïcode"]
    got = client.classify(texts)
    examples = []
    for text in texts:
        example = tf.train.Example()
        example.features.feature["text"].bytes_list.value.append(text.encode())
        examples.append(example.SerializeToString())
    want = _reference(loaded_v1, "classify", inputs=examples)
    assert len(got) == len(texts)
    for row, scores in zip(got, want["scores"]):
        assert [label for label, _ in row] == list(LABELS)
        np.testing.assert_array_equal(np.float32([score for _, score in row]), scores)


def test_rest_json_formats_match_tf_serving(server, loaded_v1):
    want = _reference(loaded_v1, "serving_default", text=[b"a", b"bb"])
    row = _post(server, f"/v1/models/{MODEL}:predict", {"instances": ["a", "bb"]})
    assert list(row) == ["predictions"]
    assert [p["label_id"] for p in row["predictions"]] == list(want["label_id"])
    # Several outputs: one object per row; `_bytes` outputs as base64.
    assert row["predictions"][0]["echo_bytes"] == {"b64": "YQ=="}
    np.testing.assert_array_equal(
        np.float32([p["probabilities"] for p in row["predictions"]]), want["probabilities"])

    named = _post(server, f"/v1/models/{MODEL}:predict", {"instances": [{"text": "a"}]})
    assert named["predictions"][0]["label_id"] == want["label_id"][0]

    columnar = _post(server, f"/v1/models/{MODEL}/versions/1:predict",
                     {"inputs": {"text": ["a", "bb"]}})
    assert list(columnar) == ["outputs"]
    assert columnar["outputs"]["label_id"] == list(want["label_id"])

    # A single output is written bare, not as an object; b64 input decodes to bytes.
    lower_row = _post(server, f"/v1/models/{MODEL}:predict",
                      {"signature_name": "lower", "instances": ["AB", {"b64": "Q0Q="}]})
    assert lower_row == {"predictions": ["ab", "cd"]}
    lower_col = _post(server, f"/v1/models/{MODEL}:predict",
                      {"signature_name": "lower", "inputs": ["AB"]})
    assert lower_col == {"outputs": ["ab"]}

    ids = _post(server, f"/v1/models/{MODEL}:predict", {
        "signature_name": "serve_ids",
        "instances": [{"input_word_ids": [1, 2], "input_mask": [1, 1], "input_type_ids": [0, 1]}],
    })
    np.testing.assert_allclose(ids["predictions"][0], _reference(
        loaded_v1, "serve_ids", input_word_ids=[[1, 2]], input_mask=[[1, 1]],
        input_type_ids=[[0, 1]])["pooled_output"][0], rtol=1e-6)

    classify = _post(server, f"/v1/models/{MODEL}:classify",
                     {"signature_name": "classify", "examples": [{"text": "a"}]})
    assert [label for label, _ in classify["results"][0]] == list(LABELS)

    regress = _post(server, f"/v1/models/{MODEL}:regress",
                    {"signature_name": "regress", "context": {"text": "abc"}, "examples": [{}]})
    assert regress == {"results": [3.0]}


def test_model_status_and_metadata(server, grpc_client, rest_client):
    for client in (grpc_client, rest_client):
        assert client.model_status() == [
            {"version": 1, "state": "AVAILABLE", "error_code": "OK", "error_message": ""}]
        assert client.model_status(version=1)[0]["state"] == "AVAILABLE"
        metadata = client.model_metadata()
        assert metadata["name"] == MODEL and metadata["version"] == 1
        signatures = metadata["signature_def"]
        assert {"serving_default", "classify", "pair", "serve_ids"} <= set(signatures)
        assert signatures["serving_default"]["inputs"] == {
            "text": {"dtype": "DT_STRING", "shape": [-1]}}
        assert signatures["serving_default"]["outputs"]["probabilities"] == {
            "dtype": "DT_FLOAT", "shape": [-1, 2]}
        assert signatures["classify"]["method_name"] == "tensorflow/serving/classify"
        assert signatures["serve_ids"]["inputs"]["input_word_ids"] == {
            "dtype": "DT_INT32", "shape": [-1, -1]}

    # TF Serving's REST JSON, verbatim field names.
    status, content_type, text = _get(server, f"/v1/models/{MODEL}")
    assert status == 200 and content_type == "application/json"
    assert json.loads(text) == {"model_version_status": [{
        "version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    metadata = json.loads(_get(server, f"/v1/models/{MODEL}/versions/1/metadata")[2])
    assert metadata["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    assert "__saved_model_init_op" in metadata["metadata"]["signature_def"]["signature_def"]


def test_grpc_response_model_spec_and_output_filter(server, grpc_client):
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(["a"]))
    request.output_filter.append("label")
    response = grpc_client._prediction.Predict(request, timeout=30)
    assert list(response.outputs) == ["label"]
    assert response.model_spec.name == MODEL
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    # Typed value fields, like TF Serving's default AsProtoField.
    assert list(response.outputs["label"].string_val) in ([b"neg"], [b"pos"])


def test_prometheus_metrics(server, grpc_client):
    grpc_client.predict(["metrics"])
    status, content_type, text = _get(server, "/monitoring/prometheus/metrics")
    assert status == 200 and content_type == "text/plain"
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert f':tensorflow:serving:request_count{{model_name="{MODEL}",status="OK"}}' in text
    assert ':tensorflow:serving:request_latency_bucket{model_name="textmodel",API="Predict",' \
           'entrypoint="GRPC",le="10"}' in text


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_empty_batch(protocol, grpc_client, rest_client):
    client = grpc_client if protocol == "grpc" else rest_client
    got = client.predict([])
    assert len(got["label"]) == len(got["probabilities"]) == 0
    if protocol == "grpc":
        assert got["probabilities"].shape == (0, 2)  # JSON cannot carry an empty shape


def test_grpc_regress_and_multi_inference(grpc_client, loaded_v1):
    from tensorflow_serving.apis import inference_pb2, regression_pb2

    texts = [b"abc", b"a longer text"]
    examples = []
    for text in texts:
        example = tf.train.Example()
        example.features.feature["text"].bytes_list.value.append(text)
        examples.append(example)
    want_scores = _reference(loaded_v1, "classify",
                             inputs=[e.SerializeToString() for e in examples])["scores"]

    request = regression_pb2.RegressionRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "regress"
    request.input.example_list.examples.extend(examples)
    response = grpc_client._prediction.Regress(request, timeout=30)
    assert [r.value for r in response.result.regressions] == [3.0, 13.0]
    assert response.model_spec.version.value == 1

    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("classify", "tensorflow/serving/classify"),
                              ("regress", "tensorflow/serving/regress")):
        task = request.tasks.add(method_name=method)
        task.model_spec.name = MODEL
        task.model_spec.signature_name = signature
    request.input.example_list.examples.extend(examples)
    response = grpc_client._prediction.MultiInference(request, timeout=30)
    classification, regression = response.results
    rows = classification.classification_result.classifications
    np.testing.assert_array_equal([[c.score for c in row.classes] for row in rows], want_scores)
    assert [r.value for r in regression.regression_result.regressions] == [3.0, 13.0]
    assert regression.model_spec.signature_name == "regress"
