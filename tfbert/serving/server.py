"""ModelServer: a reference TF Serving PredictionService and ModelService in Python.

It serves SavedModels by their signatures, with TF Serving's gRPC services
(tensorflow.serving.PredictionService: Classify, Regress, Predict, MultiInference,
GetModelMetadata; tensorflow.serving.ModelService: GetModelStatus, HandleReloadConfigRequest)
and its REST API. It is a stand-in for `tensorflow_model_server` where a container is not at
hand: tests, development, and checking an export before it ships.

    server = ModelServer(single_model_config("bert", "/models/bert"), grpc_port=0,
                         rest_api_port=0, host="127.0.0.1")
    server.start()          # loads the models, then listens
    ...                     # server.grpc_port, server.rest_api_port
    server.stop()           # finishes in-flight requests, then unloads

Requests are parsed here rather than by gRPC, so a request that is not a valid protobuf is
INVALID_ARGUMENT (gRPC itself would answer INTERNAL).
"""

import concurrent.futures
import logging
import os
import threading
import time

import grpc
from google.protobuf import message as protobuf_message
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    predict_pb2,
    regression_pb2,
)

from tfbert.serving.batcher import Batcher
from tfbert.serving.metrics import Metrics
from tfbert.serving.model_manager import ModelManager
from tfbert.serving.prediction_service import PredictionService
from tfbert.serving.rest_server import RestServer
from tfbert.serving.server_configs import BatchingOptions
from tfbert.serving.serving_error import ServingError

log = logging.getLogger("tfbert.serve")

# ToGRPCStatus truncates messages after this many characters.
_MESSAGE_LIMIT = 1024
# TF Serving lets gRPC messages be as large as protobuf allows.
MAX_MESSAGE_BYTES = 2**31 - 1
SHUTTING_DOWN = "The server is shutting down"

_PREDICTION_METHODS = {
    "Classify": classification_pb2.ClassificationRequest,
    "Regress": regression_pb2.RegressionRequest,
    "Predict": predict_pb2.PredictRequest,
    "MultiInference": inference_pb2.MultiInferenceRequest,
    "GetModelMetadata": get_model_metadata_pb2.GetModelMetadataRequest,
}


def _truncate(message):
    if len(message) > _MESSAGE_LIMIT:
        return message[:_MESSAGE_LIMIT] + "...TRUNCATED"
    return message


class ServerStartError(RuntimeError):
    """The server could not start (a port in use, a model that does not load)."""


class _Admission:
    """Counts requests in flight, and refuses new ones once the server drains.

    A drained server answers UNAVAILABLE (HTTP 503) on purpose: clients retry that code,
    against this server's replacement, whereas a request caught by the transport closing
    would surface as CANCELLED.
    """

    # Drained means nothing in flight and no request for this long.
    QUIET_SECONDS = 0.2

    def __init__(self):
        self._cv = threading.Condition()
        self._in_flight = 0
        self._last_arrival = 0.0
        self.draining = False

    def enter(self):
        with self._cv:
            self._last_arrival = time.monotonic()
            if self.draining:
                return False
            self._in_flight += 1
            return True

    def exit(self):
        with self._cv:
            self._in_flight -= 1
            self._cv.notify_all()

    def drain(self, timeout):
        """Refuses new requests; waits until the ones in flight finish (or `timeout`)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self.draining = True
            while True:
                now = time.monotonic()
                quiet = now - self._last_arrival
                if (self._in_flight == 0 and quiet >= self.QUIET_SECONDS) or now >= deadline:
                    return self._in_flight == 0
                wait = self.QUIET_SECONDS - quiet if self._in_flight == 0 else self.QUIET_SECONDS
                self._cv.wait(max(0.01, min(wait, deadline - now)))


class ModelServer:
    """gRPC and REST front ends over one ModelManager.

    Args:
        config: a ModelServerConfig (see server_configs.single_model_config).
        grpc_port: gRPC port; 0 picks a free one; None disables gRPC.
        rest_api_port: REST port; 0 picks a free one; None disables REST.
        host: the address both listen on.
        file_system_poll_wait_seconds: how often to look for new versions; 0 looks once.
        batching: BatchingOptions to merge concurrent requests, or None (no batching).
        prometheus_path: serve metrics at this REST path, or None.
        enable_model_warmup: replay assets.extra/tf_serving_warmup_requests on load.
        num_request_iterations_for_warmup: replays per warmup record.
        grpc_max_threads: gRPC worker threads.
        max_message_bytes: largest gRPC message received or sent.
        enable_signature_method_name_check: TF Serving's flag of the same name.
    """

    def __init__(self, config, grpc_port=8500, rest_api_port=None, host="0.0.0.0",
                 file_system_poll_wait_seconds=1.0, batching=None, prometheus_path=None,
                 enable_model_warmup=True, num_request_iterations_for_warmup=1,
                 grpc_max_threads=None, max_message_bytes=MAX_MESSAGE_BYTES,
                 enable_signature_method_name_check=False):
        self.config = config
        self.host = host
        self._grpc_port = grpc_port
        self._rest_api_port = rest_api_port
        self.prometheus_path = prometheus_path
        self.grpc_max_threads = grpc_max_threads or 4 * (os.cpu_count() or 1)
        self.max_message_bytes = max_message_bytes
        self.metrics = Metrics()
        self.batcher = None
        if batching is not None:
            if not isinstance(batching, BatchingOptions):
                raise TypeError("batching must be a BatchingOptions or None")
            self.batcher = Batcher(
                max_batch_size=batching.max_batch_size,
                batch_timeout_micros=batching.batch_timeout_micros,
                max_enqueued_batches=batching.max_enqueued_batches,
                num_batch_threads=batching.num_batch_threads,
                on_batch=lambda key, size: self.metrics.observe(
                    "/tensorflow/serving/batching/processed_batch_size", (key[0],), size),
            )
        # The manager warms new versions up through the service, which serves from the
        # manager; the lambda breaks the cycle.
        self.manager = ModelManager(
            config, poll_wait_seconds=file_system_poll_wait_seconds,
            warmup=(lambda servable: self.service.warmup(servable)) if enable_model_warmup
            else None)
        self.service = PredictionService(
            self.manager, batcher=self.batcher, metrics=self.metrics,
            enable_signature_method_name_check=enable_signature_method_name_check,
            warmup_iterations=num_request_iterations_for_warmup)
        self._grpc_server = None
        self._rest_server = None
        self._admission = _Admission()
        self._stopped = threading.Event()

    @property
    def grpc_port(self):
        return self._grpc_port

    @property
    def rest_api_port(self):
        return self._rest_api_port

    # -- gRPC ------------------------------------------------------------------------------

    def _unary(self, api, request_class):
        def handle(request_bytes, context):
            if not self._admission.enter():
                context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            try:
                return answer(request_bytes, context)
            finally:
                self._admission.exit()

        def answer(request_bytes, context):
            request = request_class()
            try:
                request.ParseFromString(request_bytes)
            except (protobuf_message.DecodeError, ValueError, RuntimeError) as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"Failed to parse {request_class.DESCRIPTOR.name}: {e}")
            try:
                return self.service.call(api, request, "GRPC")
            except ServingError as e:
                context.abort(e.code, _truncate(e.message))
            except Exception:  # a server bug: INTERNAL, with a trace in the log
                log.exception("%s failed", api)
                context.abort(grpc.StatusCode.INTERNAL, f"{api} failed inside the server")

        return grpc.unary_unary_rpc_method_handler(
            handle, request_deserializer=None,
            response_serializer=lambda response: response.SerializeToString())

    def _reload_config(self, request_bytes, context):
        request = model_management_pb2.ReloadConfigRequest()
        try:
            request.ParseFromString(request_bytes)
        except (protobuf_message.DecodeError, ValueError, RuntimeError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"Failed to parse ReloadConfigRequest: {e}")
        response = model_management_pb2.ReloadConfigResponse()
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                    "ModelConfigList is currently supported")
            self.manager.reload_config(request.config)
        except ServingError as e:
            response.status.error_code = e.code.value[0]
            response.status.error_message = e.message
            context.abort(e.code, _truncate(e.message))
        return response

    def _start_grpc(self):
        options = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
        ]
        server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(
                max_workers=self.grpc_max_threads, thread_name_prefix="grpc"),
            options=options)
        server.add_generic_rpc_handlers([
            grpc.method_handlers_generic_handler(
                "tensorflow.serving.PredictionService",
                {api: self._unary(api, cls) for api, cls in _PREDICTION_METHODS.items()}),
            grpc.method_handlers_generic_handler(
                "tensorflow.serving.ModelService", {
                    "GetModelStatus": self._unary(
                        "GetModelStatus", get_model_status_pb2.GetModelStatusRequest),
                    "HandleReloadConfigRequest": grpc.unary_unary_rpc_method_handler(
                        self._reload_config, request_deserializer=None,
                        response_serializer=lambda r: r.SerializeToString()),
                }),
        ])
        address = f"{self.host}:{self._grpc_port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if not port:
            raise ServerStartError(f"could not listen for gRPC on {address} (port in use?)")
        server.start()
        self._grpc_port = port
        self._grpc_server = server
        log.info("Running gRPC ModelServer at %s:%d ...", self.host, port)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self):
        """Loads every model's initial versions, then opens the gRPC and REST ports."""
        self.manager.start()
        try:
            # Like TF Serving, refuse to start when a model's initial versions all failed.
            for name in self.manager.model_names():
                failed = {v: s for v, s in self.manager.version_states(name).items()
                          if s.error_code != grpc.StatusCode.OK}
                if failed and not self.manager.available_versions(name):
                    version = max(failed)
                    raise ServerStartError(
                        f"model {name} version {version} failed to load: "
                        f"{failed[version].error_message}")
            if self._grpc_port is not None:
                self._start_grpc()
            if self._rest_api_port is not None:
                try:
                    self._rest_server = RestServer(
                        self.host, self._rest_api_port, self.service, metrics=self.metrics,
                        prometheus_path=self.prometheus_path, admission=self._admission)
                except OSError as e:
                    raise ServerStartError(
                        f"could not listen for HTTP/REST on {self.host}:{self._rest_api_port}: "
                        f"{e.strerror or e}") from None
                self._rest_server.start()
                self._rest_api_port = self._rest_server.port
                log.info("Exporting HTTP/REST API at:%s:%d ...", self.host, self._rest_api_port)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self, grace=10.0):
        """Graceful: refuse new requests (UNAVAILABLE), finish the ones in flight (for up
        to `grace` seconds), close the ports, unload the models."""
        if self._stopped.is_set():
            return
        self._admission.drain(grace)
        if self._grpc_server is not None:
            self._grpc_server.stop(1.0).wait()
        if self._rest_server is not None:
            self._rest_server.stop()
        if self.batcher is not None:
            self.batcher.stop()
        self.manager.stop()
        self._stopped.set()

    def wait(self, timeout=None):
        """Blocks until `stop()` has finished."""
        return self._stopped.wait(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
