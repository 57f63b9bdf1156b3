"""Client: raw text in, named outputs back, from TF Serving or `python -m tfbert.serve`.

    client = Client("localhost:8500", "bert")                       # gRPC
    client = Client(None, "bert", rest_url="http://localhost:8501")  # REST
    client.predict(["a great film", "a dull one"])
    # {'label': array(['pos', 'neg'], dtype=object), 'label_id': array([1, 0], dtype=int32),
    #  'probabilities': array([[0.1, 0.9], [0.8, 0.2]], dtype=float32)}
    client.classify(["a great film"])        # [[('neg', 0.1), ('pos', 0.9)]]
    client.model_status()                    # [{'version': 1, 'state': 'AVAILABLE', ...}]

gRPC goes through the tensorflow-serving-api stubs, REST through urllib (no new
dependencies). Both return the same numpy outputs: REST responses are cast to the dtypes the
model's metadata declares. String outputs come back as `str` where they are valid UTF-8
(as `bytes` otherwise, and always for outputs named `*_bytes`).

Every failure raises ServingError with a gRPC status code. Calls time out after `timeout`
seconds (DEADLINE_EXCEEDED). Only UNAVAILABLE (server down, restarting, or its batch queue
full) is retried, `retries` times with exponential backoff: every other error is an answer.
"""

import base64
import copy
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfbert import features
from tfbert.serving import tensors
from tfbert.serving.json_tensor import BYTES_SUFFIX, example_proto
from tfbert.serving.serving_error import (
    CODE_FOR_HTTP_STATUS,
    ServingError,
    code_from_number,
)


def _decode_strings(array, name):
    if name.endswith(BYTES_SUFFIX):
        return array
    out = np.empty(array.shape, dtype=object)
    flat_in, flat_out = array.reshape(-1), out.reshape(-1)
    for i, value in enumerate(flat_in):
        value = bytes(value)
        try:
            flat_out[i] = value.decode("utf-8")
        except UnicodeDecodeError:
            flat_out[i] = value
    return out


def _as_array(value):
    """Numbers as numpy arrays; str/bytes (nested lists of them too) as object arrays of bytes."""
    if not isinstance(value, np.ndarray):
        objects = np.asarray(value, dtype=object)
        leaves = objects.reshape(-1)
        if leaves.size and all(isinstance(v, (str, bytes, np.str_, np.bytes_)) for v in leaves):
            return tensors.to_bytes_array(objects)
        value = np.asarray(value)
    if value.dtype.kind in "OSU":
        return tensors.to_bytes_array(value)
    return value


def _json_value(array):
    """A numpy array as the JSON TF Serving's REST API reads (b64 for non-UTF-8 bytes)."""
    if array.dtype.kind in "OSU":
        def leaf(value):
            if isinstance(value, str):
                return value
            value = bytes(value)
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(value).decode("ascii")}

        def nest(v):
            return [nest(x) for x in v] if isinstance(v, list) else leaf(v)

        return nest(np.asarray(array, dtype=object).tolist())
    return array.tolist()


def _tensor_infos(mapping):
    return {
        alias: {
            "dtype": types_pb2.DataType.Name(info.dtype),
            "shape": None if info.tensor_shape.unknown_rank
            else [d.size for d in info.tensor_shape.dim],
        }
        for alias, info in mapping.items()
    }


def _metadata_dict(model_spec, signature_map):
    return {
        "name": model_spec.name,
        "version": model_spec.version.value if model_spec.HasField("version") else None,
        "signature_def": {
            name: {
                "method_name": signature.method_name,
                "inputs": _tensor_infos(signature.inputs),
                "outputs": _tensor_infos(signature.outputs),
            }
            for name, signature in signature_map.signature_def.items()
        },
    }


class Client:
    """A client for one model on a TF Serving (or `python -m tfbert.serve`) server.

    Args:
        target: gRPC "host:port", or None to use REST.
        model_name: the served model's name.
        signature_name: the signature `predict` calls.
        rest_url: e.g. "http://localhost:8501"; used when target is None (or protocol="rest").
        timeout: seconds per attempt.
        retries: extra attempts after an UNAVAILABLE answer.
        max_message_bytes: largest request or response, both ways.
        version / version_label: pin a model version (default: the latest).
        protocol: "grpc" or "rest"; default "grpc" when a target is given.
        backoff: seconds before the first retry; doubles each time, at most 5 s.
    """

    def __init__(self, target, model_name, signature_name="serving_default", rest_url=None,
                 timeout=30.0, retries=3, max_message_bytes=64 << 20, version=None,
                 version_label=None, protocol=None, backoff=0.1):
        if protocol is None:
            protocol = "grpc" if target else "rest"
        if protocol not in ("grpc", "rest"):
            raise ValueError(f"protocol must be 'grpc' or 'rest', got {protocol!r}")
        if protocol == "grpc" and not target:
            raise ValueError("a gRPC client needs a target 'host:port'")
        if protocol == "rest" and not rest_url:
            raise ValueError("a REST client needs rest_url, e.g. 'http://localhost:8501'")
        if version is not None and version_label is not None:
            raise ValueError("give version or version_label, not both")
        self.target = target
        self.model_name = model_name
        self.signature_name = signature_name
        self.rest_url = rest_url.rstrip("/") if rest_url else None
        self.timeout = timeout
        self.retries = retries
        self.max_message_bytes = max_message_bytes
        self.version = version
        self.version_label = version_label
        self.protocol = protocol
        self.backoff = backoff
        self._signature_cache = {}
        self._channel = None
        if protocol == "grpc":
            self._channel = grpc.insecure_channel(target, options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
            ])
            self._prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
            self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def with_options(self, signature_name=None, version=None, version_label=None):
        """A client for another signature or version, sharing this one's connection."""
        other = copy.copy(self)
        if signature_name is not None:
            other.signature_name = signature_name
        if version is not None or version_label is not None:
            other.version, other.version_label = version, version_label
        other._signature_cache = {}
        return other

    def close(self):
        if self._channel is not None:
            self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- transport -------------------------------------------------------------------------

    def _sleep_before_retry(self, attempt):
        time.sleep(min(self.backoff * 2**attempt, 5.0))

    def _grpc(self, method, request):
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as e:
                code = e.code()
                if code == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    self._sleep_before_retry(attempt)
                    continue
                raise ServingError(code, e.details() or "") from None

    def _model_path(self, version=None):
        path = "/v1/models/" + urllib.parse.quote(self.model_name, safe="")
        version = self.version if version is None else version
        if version is not None:
            path += f"/versions/{int(version)}"
        elif self.version_label is not None:
            path += "/labels/" + urllib.parse.quote(self.version_label, safe="")
        return path

    def _rest(self, method, path, body=None):
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            if len(data) > self.max_message_bytes:
                raise ServingError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"request of {len(data)} bytes is larger than max_message_bytes "
                    f"({self.max_message_bytes})")
        url = self.rest_url + path
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(
                url, data=data, method=method, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    text = response.read(self.max_message_bytes + 1)
                    if len(text) > self.max_message_bytes:
                        raise ServingError(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"response larger than max_message_bytes ({self.max_message_bytes})")
                    return json.loads(text)
            except urllib.error.HTTPError as e:
                raw = e.read()
                try:
                    message = json.loads(raw)["error"]
                except (ValueError, KeyError, TypeError):
                    message = raw.decode("utf-8", errors="replace") or e.reason
                code = CODE_FOR_HTTP_STATUS.get(e.code, grpc.StatusCode.UNKNOWN)
                if e.code == 503 and attempt < self.retries:
                    self._sleep_before_retry(attempt)
                    continue
                raise ServingError(code, message, http_status=e.code) from None
            except TimeoutError:
                raise ServingError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no answer from {url} within {self.timeout}s") from None
            except (urllib.error.URLError, ConnectionError) as e:
                reason = getattr(e, "reason", e)
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    raise ServingError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"no answer from {url} within {self.timeout}s") from None
                if attempt < self.retries:
                    self._sleep_before_retry(attempt)
                    continue
                raise ServingError(
                    grpc.StatusCode.UNAVAILABLE, f"cannot reach {url}: {reason}") from None

    def _fill_spec(self, model_spec, signature_name=None):
        model_spec.name = self.model_name
        if signature_name is not None:
            model_spec.signature_name = signature_name
        if self.version is not None:
            model_spec.version.value = int(self.version)
        elif self.version_label is not None:
            model_spec.version_label = self.version_label

    # -- API -------------------------------------------------------------------------------

    def predict(self, texts=None, text_b=None, **inputs):
        """Runs the signature; returns {output name: numpy array}.

        `texts` feeds the `text` input and `text_b` the `text_b` input (a str or a list of
        str); any other named input is given as a keyword (`input_word_ids=ids`).
        """
        arrays = {}
        for name, value in ((features.TEXT, texts), (features.TEXT_B, text_b)):
            if value is not None:
                value = [value] if isinstance(value, (str, bytes)) else value
                arrays[name] = tensors.to_bytes_array(value)
        for name, value in inputs.items():
            arrays[name] = _as_array(value)
        if self.protocol == "grpc":
            request = predict_pb2.PredictRequest()
            self._fill_spec(request.model_spec, self.signature_name)
            for name, array in arrays.items():
                if array.dtype == object:
                    request.inputs[name].CopyFrom(tensors.ndarray_to_proto(array))
                else:
                    request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
            response = self._grpc(self._prediction.Predict, request)
            outputs = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
        else:
            body = {
                "signature_name": self.signature_name,
                "inputs": {name: _json_value(array) for name, array in arrays.items()},
            }
            result = self._rest("POST", self._model_path() + ":predict", body)["outputs"]
            outputs = self._rest_outputs(result)
        return {
            name: _decode_strings(array, name) if array.dtype == object else array
            for name, array in outputs.items()
        }

    def _signature_outputs(self, refresh=False):
        if refresh or self.signature_name not in self._signature_cache:
            metadata = self.model_metadata()
            signature = metadata["signature_def"].get(self.signature_name)
            if signature is None:
                raise ServingError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f'Serving signature key "{self.signature_name}" not found.')
            self._signature_cache[self.signature_name] = signature["outputs"]
        return self._signature_cache[self.signature_name]

    def _rest_outputs(self, result):
        infos = self._signature_outputs()
        if isinstance(result, dict) and set(result) - set(infos):
            infos = self._signature_outputs(refresh=True)
        if len(infos) == 1:
            (name,) = infos
            values = {name: result}
        else:
            values = result
        return {name: self._rest_array(value, infos[name]["dtype"])
                for name, value in values.items()}

    @staticmethod
    def _rest_array(value, dtype_name):
        if dtype_name == "DT_STRING":
            flat = []

            def walk(v, depth, shape):
                if isinstance(v, list):
                    if len(shape) <= depth:
                        shape.append(len(v))
                    for x in v:
                        walk(x, depth + 1, shape)
                else:
                    flat.append(base64.b64decode(v["b64"]) if isinstance(v, dict)
                                else v.encode("utf-8", errors="surrogatepass"))

            shape = []
            walk(value, 0, shape)
            array = np.empty(len(flat), dtype=object)
            array[:] = flat
            return array.reshape(shape)
        np_dtype = tf.dtypes.as_dtype(
            types_pb2.DataType.Value(dtype_name)).as_numpy_dtype
        return np.asarray(value, dtype=np_dtype)

    def classify(self, texts, signature_name="classify"):
        """TF Serving's Classify API on tf.Examples with a `text` feature.

        Returns one list per text of (label, score) pairs (label '' if the signature has no
        `classes` output, score 0.0 if it has no `scores`).
        """
        texts = [texts] if isinstance(texts, (str, bytes)) else list(texts)
        if self.protocol == "grpc":
            request = classification_pb2.ClassificationRequest()
            self._fill_spec(request.model_spec, signature_name)
            for text in texts:
                request.input.example_list.examples.append(example_proto({features.TEXT: text}))
            response = self._grpc(self._prediction.Classify, request)
            return [[(c.label, c.score) for c in classifications.classes]
                    for classifications in response.result.classifications]
        examples = []
        for text in texts:
            value = _json_value(np.asarray([text], dtype=object))[0]
            examples.append({features.TEXT: value})
        body = {"signature_name": signature_name, "examples": examples}
        results = self._rest("POST", self._model_path() + ":classify", body)["results"]
        return [[(label, float(score)) for label, score in row] for row in results]

    def model_status(self, version=None):
        """[{'version', 'state', 'error_code', 'error_message'}], newest version first."""
        if self.protocol == "grpc":
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = self.model_name
            if version is not None:
                request.model_spec.version.value = int(version)
            response = self._grpc(self._models.GetModelStatus, request)
            state_name = get_model_status_pb2.ModelVersionStatus.State.Name
            return [
                {
                    "version": s.version,
                    "state": state_name(s.state),
                    "error_code": code_from_number(s.status.error_code).name,
                    "error_message": s.status.error_message,
                }
                for s in response.model_version_status
            ]
        path = "/v1/models/" + urllib.parse.quote(self.model_name, safe="")
        if version is not None:
            path += f"/versions/{int(version)}"
        response = self._rest("GET", path)
        return [
            {
                "version": int(s["version"]),
                "state": s["state"],
                "error_code": s["status"]["error_code"],
                "error_message": s["status"]["error_message"],
            }
            for s in response["model_version_status"]
        ]

    def model_metadata(self, version=None):
        """{'name', 'version', 'signature_def': {name: {'method_name', 'inputs', 'outputs'}}}.

        Inputs and outputs map each alias to {'dtype': 'DT_STRING', 'shape': [-1]}.
        """
        if self.protocol == "grpc":
            request = get_model_metadata_pb2.GetModelMetadataRequest(
                metadata_field=["signature_def"])
            self._fill_spec(request.model_spec)
            if version is not None:
                request.model_spec.version.value = int(version)
            response = self._grpc(self._prediction.GetModelMetadata, request)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(signature_map)
            return _metadata_dict(response.model_spec, signature_map)
        response = self._rest("GET", self._model_path(version) + "/metadata")
        spec = get_model_metadata_pb2.GetModelMetadataResponse().model_spec
        json_format.ParseDict(response["model_spec"], spec)
        signature_map = json_format.ParseDict(
            response["metadata"]["signature_def"], get_model_metadata_pb2.SignatureDefMap())
        return _metadata_dict(spec, signature_map)
