"""PredictionService: TF Serving's request semantics, independent of gRPC or HTTP.

Each method takes a tensorflow_serving.apis request proto and returns the response proto,
or raises ServingError with the code and message TF Serving 2.20 returns in the same case
(predict_util.cc, classifier.cc, regressor.cc, multi_inference.cc, get_model_status_impl.cc,
get_model_metadata_impl.cc). Where TF Serving passes a bad input on to the graph and lets it
fail, this service checks dtype and shape against the signature first, so the client gets
INVALID_ARGUMENT with a message about its input, never UNKNOWN or INTERNAL.
"""

import os
import time

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from tfbert.serving import tensors
from tfbert.serving.serving_error import (
    ServingError,
    failed_precondition,
    invalid_argument,
    not_found,
    unimplemented,
)

DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
PREDICT_METHOD = tf.saved_model.PREDICT_METHOD_NAME
CLASSIFY_METHOD = tf.saved_model.CLASSIFY_METHOD_NAME
REGRESS_METHOD = tf.saved_model.REGRESS_METHOD_NAME
CLASSIFY_INPUTS = tf.saved_model.CLASSIFY_INPUTS
CLASSIFY_CLASSES = tf.saved_model.CLASSIFY_OUTPUT_CLASSES
CLASSIFY_SCORES = tf.saved_model.CLASSIFY_OUTPUT_SCORES
REGRESS_INPUTS = tf.saved_model.REGRESS_INPUTS
REGRESS_OUTPUTS = tf.saved_model.REGRESS_OUTPUTS
SIGNATURE_DEF_FIELD = "signature_def"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# WarmupConsts::kMaxNumRecords.
MAX_WARMUP_RECORDS = 1000

# ModelVersionStatus.State values by name.
_STATE_NUMBER = {
    name: number
    for name, number in get_model_status_pb2.ModelVersionStatus.State.items()
}


def _debug_string(message):
    return text_format.MessageToString(message, as_one_line=True)


def _signature_name(model_spec):
    return model_spec.signature_name or DEFAULT_SIGNATURE


def _make_model_spec(out, name, signature_name, version):
    """MakeModelSpec: an empty signature name is reported as serving_default."""
    out.Clear()
    out.name = name
    if signature_name is not None:
        out.signature_name = signature_name or DEFAULT_SIGNATURE
    if version is not None:
        out.version.value = version


def _sorted_keys(mapping):
    return ",".join(sorted(mapping))


class PredictionService:
    """Predict, Classify, Regress, MultiInference, GetModelMetadata, GetModelStatus.

    Args:
        manager: the ModelManager holding the servables.
        batcher: a Batcher, or None to run every request alone.
        metrics: a Metrics registry, or None.
        enable_signature_method_name_check: TF Serving's flag of the same name (off by
            default: TF2 SavedModels give every signature the predict method name).
        warmup_iterations: times each warmup record is replayed.
    """

    def __init__(self, manager, batcher=None, metrics=None,
                 enable_signature_method_name_check=False, warmup_iterations=1):
        self.manager = manager
        self.batcher = batcher
        self.metrics = metrics
        self.method_name_check = enable_signature_method_name_check
        self.warmup_iterations = max(int(warmup_iterations), 1)

    # -- entry point with metrics ----------------------------------------------------------

    def call(self, api, request, entrypoint):
        """Runs one API call by name ('Predict', ...) and records TF Serving's metrics."""
        method = {
            "Predict": self.predict,
            "Classify": self.classify,
            "Regress": self.regress,
            "MultiInference": self.multi_inference,
            "GetModelMetadata": self.get_model_metadata,
            "GetModelStatus": self.get_model_status,
        }[api]
        start = time.monotonic()
        status = "OK"
        try:
            return method(request)
        except ServingError as e:
            status = e.code.name
            raise
        except Exception:
            status = "INTERNAL"
            raise
        finally:
            if self.metrics is not None and api in ("Predict", "Classify", "Regress"):
                name = request.model_spec.name
                self.metrics.increment("/tensorflow/serving/request_count", (name, status))
                if status == "OK":
                    self.metrics.observe(
                        "/tensorflow/serving/request_latency", (name, api, entrypoint),
                        (time.monotonic() - start) * 1e6)

    # -- servable handles ------------------------------------------------------------------

    def _acquire(self, model_spec):
        version = model_spec.version.value if model_spec.HasField("version") else None
        label = model_spec.version_label or None
        return self.manager.acquire(model_spec.name, version=version, label=label)

    def signature_inputs(self, model_spec, signature_name):
        """The signature's input TensorInfo map (the REST API's GetInfoMap)."""
        servable = self._acquire(model_spec)
        try:
            name = signature_name or DEFAULT_SIGNATURE
            signature = servable.signature_defs.get(name)
            if signature is None:
                raise invalid_argument(
                    f'Serving signature name: "{name}" not found in signature def')
            return dict(signature.inputs)
        finally:
            servable.release()

    # -- running signatures ----------------------------------------------------------------

    def _run(self, servable, signature_name, inputs):
        """Runs a signature, through the batcher when batching is on."""
        if self.batcher is None:
            return servable.run(signature_name, inputs)
        # The model name first: the batcher's metrics label batches with it.
        key = (
            servable.name,
            id(servable),
            signature_name,
            tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in inputs.items())),
        )

        def run(batch_inputs):
            return servable.run(signature_name, batch_inputs)

        outputs = self.batcher.submit(key, run, inputs)
        return outputs

    def _check_input(self, alias, index, array, request_dtype, info):
        if request_dtype != info.dtype:
            raise invalid_argument(
                f"Expects arg[{index}] to be {tensors.dtype_name(info.dtype)} but "
                f"{tensors.dtype_name(request_dtype)} is provided")
        if not tensors.shape_compatible(array.shape, info.tensor_shape):
            raise invalid_argument(
                f"input tensor alias: {alias} has shape {tensors.shape_string(array.shape)}, "
                f"which is incompatible with the signature's shape "
                f"{tensors.shape_string(info.tensor_shape)}")

    # -- Predict ---------------------------------------------------------------------------

    def predict(self, request):
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        servable = self._acquire(request.model_spec)
        try:
            return self._predict_with(servable, request)
        finally:
            servable.release()

    def _predict_with(self, servable, request):
        signature_name = _signature_name(request.model_spec)
        signature = servable.signature_defs.get(signature_name)
        if signature is None or not servable.has_function(signature_name):
            raise failed_precondition(f'Serving signature key "{signature_name}" not found.')
        if self.method_name_check and signature.method_name not in (
                PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
            # TF Serving reports this one as INTERNAL: it is the model's fault, not the
            # request's.
            raise ServingError(
                grpc.StatusCode.INTERNAL,
                f"Expected prediction signature method_name to be one of {{{PREDICT_METHOD}, "
                f"{CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: {signature.method_name}")
        n_request, n_signature = len(request.inputs), len(signature.inputs)
        if n_request > n_signature or (n_request < n_signature and not signature.defaults):
            sent, expected = set(request.inputs), set(signature.inputs)
            raise invalid_argument(
                f"input size does not match signature: {n_request}!={n_signature} "
                f"len({{{_sorted_keys(sent)}}}) != len({{{_sorted_keys(expected)}}}). "
                f"Sent extra: {{{_sorted_keys(sent - expected)}}}. "
                f"Missing but required: {{{_sorted_keys(expected - sent)}}}.")
        for alias in request.inputs:
            if alias not in signature.inputs:
                raise invalid_argument(
                    f"input tensor alias not found in signature: {alias}. Inputs expected to "
                    f"be in the set {{{_sorted_keys(signature.inputs)}}}.")
        inputs = {}
        for index, alias in enumerate(sorted(signature.inputs)):
            proto = request.inputs.get(alias)
            if proto is None:
                proto = signature.defaults.get(alias)
                if proto is None:
                    raise invalid_argument(
                        f"Signature input alias: {alias} not found in request and has no "
                        "default value")
            array = tensors.proto_to_ndarray(proto, alias)
            self._check_input(alias, index, array, proto.dtype, signature.inputs[alias])
            inputs[alias] = array

        output_keys = []
        for alias in request.output_filter:
            if alias not in signature.outputs:
                raise invalid_argument(
                    f"output tensor alias not found in signature: {alias} Outputs expected to "
                    f"be in the set {{{_sorted_keys(signature.outputs)}}}.")
            if alias in output_keys:
                raise invalid_argument(f"duplicate output tensor alias: {alias}")
            output_keys.append(alias)
        output_keys = output_keys or sorted(signature.outputs)

        outputs = self._run(servable, signature_name, inputs)
        response = predict_pb2.PredictResponse()
        _make_model_spec(response.model_spec, request.model_spec.name, signature_name,
                         servable.version)
        for alias in output_keys:
            response.outputs[alias].CopyFrom(tensors.ndarray_to_proto(outputs[alias]))
        return response

    # -- Classify and Regress --------------------------------------------------------------

    @staticmethod
    def serialized_examples(input_proto):
        """InputToSerializedExampleTensor: one serialized tf.Example per row."""
        kind = input_proto.WhichOneof("kind")
        if kind == "example_list":
            examples = [e.SerializeToString() for e in input_proto.example_list.examples]
        elif kind == "example_list_with_context":
            # Proto merge semantics: the context's features, overridden by the example's.
            context = input_proto.example_list_with_context.context.SerializeToString()
            examples = [
                context + e.SerializeToString()
                for e in input_proto.example_list_with_context.examples
            ]
        else:
            examples = []
        if not examples:
            raise invalid_argument("Input is empty.")
        array = np.empty(len(examples), dtype=object)
        array[:] = examples
        return array

    def _task_signature(self, servable, model_spec, method):
        name = _signature_name(model_spec)
        signature = servable.signature_defs.get(name)
        if signature is None:
            raise invalid_argument(f"No signature was found with the name: {name}")
        kind = "classification" if method == CLASSIFY_METHOD else "regression"
        if self.method_name_check and signature.method_name != method:
            raise invalid_argument(
                f"Expected {kind} signature method_name to be {method}. "
                f"Was: {signature.method_name}")
        if len(signature.inputs) != 1:
            raise invalid_argument("Expected one input Tensor.")
        if method == CLASSIFY_METHOD:
            if len(signature.outputs) not in (1, 2):
                raise invalid_argument(
                    f"Expected one or two output Tensors, found {len(signature.outputs)}")
            if CLASSIFY_INPUTS not in signature.inputs:
                raise invalid_argument(
                    f"No classification inputs found in SignatureDef: {_debug_string(signature)}")
            if not {CLASSIFY_CLASSES, CLASSIFY_SCORES} & set(signature.outputs):
                raise invalid_argument(
                    "Expected classification signature outputs to contain at least one of "
                    f'"{CLASSIFY_CLASSES}" or "{CLASSIFY_SCORES}". Signature was: '
                    f"{_debug_string(signature)}")
        else:
            if len(signature.outputs) != 1:
                raise invalid_argument("Expected one output Tensor.")
            if REGRESS_INPUTS not in signature.inputs:
                raise invalid_argument(
                    f"No regression inputs found in SignatureDef: {_debug_string(signature)}")
            if REGRESS_OUTPUTS not in signature.outputs:
                raise invalid_argument(
                    f"No regression outputs found in SignatureDef: {_debug_string(signature)}")
        if not servable.has_function(name):
            raise invalid_argument(f"No signature was found with the name: {name}")
        return name, signature

    def _examples_input(self, signature, examples):
        info = signature.inputs[next(iter(signature.inputs))]
        alias = next(iter(signature.inputs))
        self._check_input(alias, 0, examples, types_pb2.DT_STRING, info)
        return {alias: examples}

    @staticmethod
    def _classification_result(outputs, num_examples, result):
        classes = outputs.get(CLASSIFY_CLASSES)
        scores = outputs.get(CLASSIFY_SCORES)
        checks = ((classes, np.object_, "classes"), (scores, np.float32, "scores"))
        for tensor, dtype, what in checks:
            if tensor is None:
                continue
            if tensor.ndim != 2:
                raise invalid_argument(
                    "Expected Tensor shape: [batch_size num_classes] but got "
                    f"{tensors.shape_string(tensor.shape)}")
            if tensor.dtype != dtype:
                expected = "DT_STRING" if what == "classes" else "DT_FLOAT"
                raise invalid_argument(
                    f"Expected {what} Tensor of {expected}. Got: "
                    f"DT_{tf.as_dtype(tensor.dtype).name.upper()}")
            if tensor.shape[0] != num_examples:
                raise invalid_argument(
                    f"Expected {what} output batch size of {num_examples}. Got: {tensor.shape[0]}")
        if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
            raise invalid_argument(
                "Tensors class and score should match in dim_size(1). Got "
                f"{classes.shape[1]} vs. {scores.shape[1]}")
        num_classes = (classes if classes is not None else scores).shape[1]
        for i in range(num_examples):
            classifications = result.classifications.add()
            for c in range(num_classes):
                cls = classifications.classes.add()
                if classes is not None:
                    cls.label = bytes(classes[i, c]).decode("utf-8", errors="replace")
                if scores is not None:
                    cls.score = float(scores[i, c])

    @staticmethod
    def _regression_result(outputs, num_examples, result):
        output = outputs[REGRESS_OUTPUTS]
        if not (output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)):
            raise invalid_argument(
                "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but "
                f"got {tensors.shape_string(output.shape)}")
        if output.shape[0] != num_examples:
            raise invalid_argument(
                "Input batch size did not match output batch size: "
                f"{num_examples} vs. {output.shape[0]}")
        if output.dtype != np.float32:
            raise invalid_argument(
                "Expected output Tensor of DT_FLOAT.  Got: "
                f"DT_{tf.as_dtype(output.dtype).name.upper()}")
        for value in output.reshape(-1):
            result.regressions.add(value=float(value))

    def classify(self, request):
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        servable = self._acquire(request.model_spec)
        try:
            return self._classify_with(servable, request)
        finally:
            servable.release()

    def _classify_with(self, servable, request):
        name, signature = self._task_signature(servable, request.model_spec, CLASSIFY_METHOD)
        examples = self.serialized_examples(request.input)
        outputs = self._run(servable, name, self._examples_input(signature, examples))
        response = classification_pb2.ClassificationResponse()
        _make_model_spec(response.model_spec, request.model_spec.name,
                         request.model_spec.signature_name, servable.version)
        self._classification_result(outputs, len(examples), response.result)
        return response

    def regress(self, request):
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        servable = self._acquire(request.model_spec)
        try:
            return self._regress_with(servable, request)
        finally:
            servable.release()

    def _regress_with(self, servable, request):
        name, signature = self._task_signature(servable, request.model_spec, REGRESS_METHOD)
        examples = self.serialized_examples(request.input)
        outputs = self._run(servable, name, self._examples_input(signature, examples))
        response = regression_pb2.RegressionResponse()
        _make_model_spec(response.model_spec, request.model_spec.name,
                         request.model_spec.signature_name, servable.version)
        self._regression_result(outputs, len(examples), response.result)
        return response

    def multi_inference(self, request):
        model_spec = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
        servable = self._acquire(model_spec)
        try:
            return self._multi_inference_with(servable, request)
        finally:
            servable.release()

    def _multi_inference_with(self, servable, request):
        model_name = None
        seen = set()
        plans = []
        for task in request.tasks:
            if not task.model_spec.name:
                raise invalid_argument("Found ModelSpec with an empty model name.")
            if model_name is None:
                model_name = task.model_spec.name
            elif model_name != task.model_spec.name:
                raise invalid_argument(
                    "All ModelSpecs in a MultiInferenceRequest must access the same model name.")
            name = _signature_name(task.model_spec)
            if name in seen:
                raise invalid_argument(f"Duplicate evaluation of signature: {name}")
            seen.add(name)
            if name not in servable.signature_defs:
                raise invalid_argument(f"Requested signature not found in model graph: {name}")
            if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
                raise unimplemented(f"Unsupported signature method_name: {task.method_name}")
            plans.append((task, *self._task_signature(servable, task.model_spec, task.method_name)))
        examples = self.serialized_examples(request.input)
        response = inference_pb2.MultiInferenceResponse()
        for task, name, signature in plans:
            outputs = self._run(servable, name, self._examples_input(signature, examples))
            result = response.results.add()
            if task.method_name == CLASSIFY_METHOD:
                self._classification_result(outputs, len(examples), result.classification_result)
            else:
                self._regression_result(outputs, len(examples), result.regression_result)
            _make_model_spec(result.model_spec, task.model_spec.name,
                             task.model_spec.signature_name, servable.version)
        return response

    # -- metadata and status ---------------------------------------------------------------

    def get_model_metadata(self, request):
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid_argument(
                "GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise invalid_argument(f"Metadata field {field} is not supported")
        servable = self._acquire(request.model_spec)
        try:
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for name, signature in servable.signature_defs.items():
                signature_map.signature_def[name].CopyFrom(signature)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
            return response
        finally:
            servable.release()

    def get_model_status(self, request):
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        name = request.model_spec.name
        states = self.manager.version_states(name)
        response = get_model_status_pb2.GetModelStatusResponse()
        if request.model_spec.HasField("version"):
            version = request.model_spec.version.value
            if version not in states:
                raise not_found(f"Could not find version {version} of model {name}")
            versions = [version]
        else:
            if not states:
                raise not_found(f"Could not find any versions of model {name}")
            versions = sorted(states, reverse=True)
        for version in versions:
            status = states[version]
            entry = response.model_version_status.add()
            entry.version = version
            entry.state = _STATE_NUMBER[status.state]
            entry.status.error_code = status.error_code.value[0]
            entry.status.error_message = status.error_message
        return response

    # -- warmup ----------------------------------------------------------------------------

    def warmup(self, servable):
        """Replays assets.extra/tf_serving_warmup_requests against a new servable.

        Any failing record fails the load, as in TF Serving (saved_model_warmup_util.cc).
        """
        path = os.path.join(servable.path, WARMUP_FILE)
        if not os.path.exists(path):
            return 0
        start = time.monotonic()
        count = 0
        status = "OK"
        try:
            records = iter(tf.data.TFRecordDataset(path).as_numpy_iterator())
            while True:
                try:
                    record = next(records)
                except StopIteration:
                    break
                except tf.errors.DataLossError as e:
                    raise ServingError(
                        grpc.StatusCode.DATA_LOSS,
                        f"{e.message}. Please verify your warmup data is in TFRecord format.",
                    ) from None
                count += 1
                if count > MAX_WARMUP_RECORDS:
                    raise invalid_argument(
                        f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) "
                        f"at {path}")
                log = prediction_log_pb2.PredictionLog()
                try:
                    log.ParseFromString(record)
                except Exception:  # noqa: BLE001 -- DecodeError and friends.
                    raise invalid_argument(
                        f"Failed to parse warmup record: {record[:64]!r} from {path}") from None
                for _ in range(self.warmup_iterations):
                    self._replay(servable, log)
        except ServingError as e:
            status = e.code.name
            raise ServingError(e.code, f"warmup request failed: {e.message}") from None
        finally:
            if self.metrics is not None:
                self.metrics.increment(
                    "/tensorflow/serving/model_warmup_records_read", (servable.path, status),
                    by=count)
                self.metrics.observe(
                    "/tensorflow/serving/model_warmup_latency", (servable.path, status),
                    (time.monotonic() - start) * 1e6)
        return count

    def _replay(self, servable, log):
        kind = log.WhichOneof("log_type")
        if kind == "predict_log":
            self._predict_with(servable, log.predict_log.request)
        elif kind == "classify_log":
            self._classify_with(servable, log.classify_log.request)
        elif kind == "regress_log":
            self._regress_with(servable, log.regress_log.request)
        elif kind == "multi_inference_log":
            self._multi_inference_with(servable, log.multi_inference_log.request)
        elif kind is not None:
            raise unimplemented(f"Unsupported log_type for warmup: {kind}")
