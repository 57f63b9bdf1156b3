"""RestServer: TF Serving's HTTP/REST API (model_servers/http_rest_api_handler.cc, 2.20).

    GET  /v1/models/<name>[/versions/<v> | /labels/<l>]             model status
    GET  /v1/models/<name>[/versions/<v> | /labels/<l>]/metadata    model metadata
    POST /v1/models/<name>[/versions/<v> | /labels/<l>]:predict     (also :classify, :regress)
    GET  <prometheus path>                                           metrics, if enabled

Errors are `{"error": "<message>"}` with the HTTP status TF Serving maps the code to
(INVALID_ARGUMENT and FAILED_PRECONDITION 400, NOT_FOUND 404, UNAVAILABLE 503, ...). Paths
outside /v1/ are 404 with no body, as TF Serving's dispatcher ignores them.
"""

import http.server
import json
import logging
import re
import threading
import urllib.parse

from google.protobuf import json_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    predict_pb2,
    regression_pb2,
)

from tfbert.serving import json_tensor, tensors
from tfbert.serving.serving_error import ServingError, invalid_argument

log = logging.getLogger("tfbert.serve")

_PREDICTION_PATH = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)")
_STATUS_PATH = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?")
_API_PREFIX = re.compile(r"(?i)/v1/.*")


def _json_message(message):
    # ToJsonString for GetModelStatusResponse: whitespace, every field printed.
    return json_format.MessageToJson(
        message, indent=1, always_print_fields_with_no_presence=True)


def _metadata_json(response):
    """ToJsonString for GetModelMetadataResponse: model_spec and the unpacked signature map."""
    spec = json_format.MessageToJson(
        response.model_spec, indent=1, preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    signatures = json_format.MessageToJson(
        signature_map, indent=1, preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True)
    return '{\n"model_spec":' + spec + ',\n"metadata": {"signature_def": ' + signatures + "}\n}\n"


class RestHandler:
    """Turns (method, path, body) into (HTTP status, JSON text) through PredictionService."""

    def __init__(self, service):
        self.service = service

    def handle(self, method, path, body):
        model_name = ""
        try:
            if method == "POST":
                match = _PREDICTION_PATH.fullmatch(path)
            elif method == "GET":
                match = _STATUS_PATH.fullmatch(path)
            else:
                match = None
            if match is None:
                raise invalid_argument(f"Malformed request: {method} {path}")
            name, version, label, verb = match.groups()
            model_name = urllib.parse.unquote(name or "")
            if version is not None and label is not None:
                raise invalid_argument(
                    f"Both model version ({version}) and model version label ({label}) "
                    "cannot be supplied.")
            spec = {"name": model_name}
            if version is not None:
                if int(version) >= 2**63:
                    raise invalid_argument(f"Failed to convert version: {version} to numeric.")
                spec["version"] = int(version)
            if label is not None:
                spec["label"] = urllib.parse.unquote(label)
            if method == "POST":
                verb = verb.lower()
                if verb == "predict":
                    return 200, self._predict(spec, body)
                return 200, self._classify_or_regress(spec, body, verb)
            if not model_name:
                raise invalid_argument("Missing model name in request.")
            if verb is not None and verb.lower() == "metadata":
                return 200, self._metadata(spec)
            return 200, self._status(spec)
        except ServingError as e:
            return e.http, json.dumps({"error": e.message}, indent=4)

    @staticmethod
    def _fill_spec(model_spec, spec):
        model_spec.name = spec["name"]
        if "version" in spec:
            model_spec.version.value = spec["version"]
        if "label" in spec:
            model_spec.version_label = spec["label"]

    def _predict(self, spec, body):
        doc = json_tensor.parse_json(body)
        request = predict_pb2.PredictRequest()
        self._fill_spec(request.model_spec, spec)
        request.model_spec.signature_name = json_tensor.signature_name(doc)
        infos = self.service.signature_inputs(request.model_spec,
                                              request.model_spec.signature_name)
        arrays, fmt = json_tensor.predict_inputs(doc, infos)
        for name, array in arrays.items():
            request.inputs[name].CopyFrom(tensors.ndarray_to_proto(array))
        response = self.service.call("Predict", request, "REST")
        outputs = {name: tensors.proto_to_ndarray(proto, name)
                   for name, proto in response.outputs.items()}
        return json_tensor.outputs_to_json(outputs, fmt)

    def _classify_or_regress(self, spec, body, verb):
        doc = json_tensor.parse_json(body)
        if verb == "classify":
            request = classification_pb2.ClassificationRequest()
        else:
            request = regression_pb2.RegressionRequest()
        self._fill_spec(request.model_spec, spec)
        json_tensor.fill_examples_request(doc, request)
        if verb == "classify":
            response = self.service.call("Classify", request, "REST")
            return json_tensor.classification_to_json(response.result)
        response = self.service.call("Regress", request, "REST")
        return json_tensor.regression_to_json(response.result)

    def _status(self, spec):
        request = get_model_status_pb2.GetModelStatusRequest()
        self._fill_spec(request.model_spec, spec)
        if "label" in spec:
            # GetModelStatus ignores labels, as TF Serving's does.
            request.model_spec.ClearField("version_label")
        return _json_message(self.service.call("GetModelStatus", request, "REST"))

    def _metadata(self, spec):
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._fill_spec(request.model_spec, spec)
        return _metadata_json(self.service.call("GetModelMetadata", request, "REST"))


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tfbert.serve"
    # Seconds a kept-alive connection may sit idle; also bounds how long a graceful stop
    # waits for such connections.
    timeout = 5

    def log_message(self, format, *args):
        log.debug("REST %s " + format, self.address_string(), *args)

    def _reply(self, status, text, content_type="application/json"):
        data = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method):
        path = urllib.parse.urlsplit(self.path).path
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._reply(400, json.dumps({"error": "Malformed Content-Length header"}, indent=4))
            return
        body = self.rfile.read(length) if length > 0 else b""
        server = self.server
        if server.prometheus_path is not None and path == server.prometheus_path:
            self._reply(200, server.metrics.render(), "text/plain")
            return
        if not _API_PREFIX.fullmatch(path):
            self._reply(404, "", "text/plain")
            return
        admission = server.admission
        if admission is not None and not admission.enter():
            self._reply(503, json.dumps({"error": "The server is shutting down"}, indent=4))
            return
        try:
            status, text = server.rest_handler.handle(method, path, body)
        except Exception:  # a server bug: the client gets 500, the log a trace
            log.exception("REST %s %s failed", method, path)
            status, text = 500, json.dumps({"error": "Internal server error"}, indent=4)
        finally:
            if admission is not None:
                admission.exit()
        self._reply(status, text)

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")


class RestServer(http.server.ThreadingHTTPServer):
    """A threaded HTTP server for the REST API; `port=0` picks a free port."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, host, port, service, metrics=None, prometheus_path=None,
                 admission=None):
        super().__init__((host, port), _HttpHandler)
        self.rest_handler = RestHandler(service)
        # enter()/exit() around each API request; enter() is False while draining.
        self.admission = admission
        self.metrics = metrics
        self.prometheus_path = prometheus_path
        self._thread = None

    @property
    def port(self):
        return self.server_address[1]

    def start(self):
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.2}, name="rest", daemon=True)
        self._thread.start()

    def stop(self):
        """Stops accepting requests, then waits for those being answered."""
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join()
