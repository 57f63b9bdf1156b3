"""Random bytes never make the server answer UNKNOWN or INTERNAL, and it stays up.

1,000 seeded random byte strings go in as `text` values (gRPC and REST), as serialized
tf.Examples (into the classify signature's parse_example, which rejects most of them), and as
whole request bodies (gRPC messages and REST bodies). Everything is bounded in count and time.
"""

import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import tensorflow as tf
from serving_helpers import MODEL
from tensorflow_serving.apis import predict_pb2

N = 1000
BATCH = 20
TIME_LIMIT_S = 240
CLIENT_FAULTS_OR_OK = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}


def _random_strings(seed, n=N):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 80, n)
    return [rng.integers(0, 256, length, dtype=np.uint8).tobytes() for length in lengths]


def _predict(stub, signature, key, values):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    request.inputs[key].CopyFrom(tf.make_tensor_proto(values, dtype=tf.string))
    try:
        stub.Predict(request, timeout=30)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


def test_random_bytes_give_no_unknown_or_internal(server, grpc_client, rest_client):
    start = time.monotonic()
    stub = grpc_client._prediction
    strings = _random_strings(seed=20240)
    codes = {}

    def record(kind, code):
        codes.setdefault(kind, []).append(code)
        assert time.monotonic() - start < TIME_LIMIT_S, "fuzzing ran over its time budget"

    # 1. As text: every byte string is a valid DT_STRING value, so all succeed, and the
    #    non-UTF-8 ones round-trip unchanged.
    for i in range(0, N, BATCH):
        record("text", _predict(stub, "serving_default", "text", strings[i:i + BATCH]))
    outputs = grpc_client.predict(strings[:BATCH])
    assert list(outputs["echo_bytes"]) == strings[:BATCH]

    # 2. As serialized tf.Examples: parse_example rejects most; the rest parse.
    for i in range(0, N, BATCH):
        record("examples", _predict(stub, "classify", "inputs", strings[i:i + BATCH]))

    # 3. As whole gRPC request bodies.
    raw = grpc_client._channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    for body in strings[:300]:
        try:
            raw(body, timeout=30)
            record("grpc body", grpc.StatusCode.OK)
        except grpc.RpcError as e:
            record("grpc body", e.code())

    # 4. REST: as base64 text values, and as whole request bodies.
    rest_base = f"http://127.0.0.1:{server.rest_api_port}/v1/models/{MODEL}:predict"
    rest_statuses = []
    lower = rest_client.with_options(signature_name="lower")
    for i in range(0, 200, BATCH):
        # The client sends non-UTF-8 values as {"b64": ...}; results come back as str or bytes.
        batch = strings[i:i + BATCH]
        got = lower.predict(batch)["lowered"]
        assert [v.encode() if isinstance(v, str) else v for v in got] == [s.lower() for s in batch]
    for body in strings[:300]:
        request = urllib.request.Request(rest_base, data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                rest_statuses.append(response.status)
        except urllib.error.HTTPError as e:
            rest_statuses.append(e.code)
    assert time.monotonic() - start < TIME_LIMIT_S

    assert set(codes["text"]) == {grpc.StatusCode.OK}
    for kind, kind_codes in codes.items():
        assert set(kind_codes) <= CLIENT_FAULTS_OR_OK, (kind, set(kind_codes))
    # Most random bytes are not tf.Examples: the graph's parse error is INVALID_ARGUMENT.
    assert grpc.StatusCode.INVALID_ARGUMENT in codes["examples"]
    assert grpc.StatusCode.INVALID_ARGUMENT in codes["grpc body"]
    assert set(rest_statuses) <= {200, 400, 404}, set(rest_statuses)
    assert 400 in rest_statuses

    # The server is still up and still right.
    assert grpc_client.model_status()[0]["state"] == "AVAILABLE"
    assert rest_client.predict(["still here"])["label"][0] in ("neg", "pos")
