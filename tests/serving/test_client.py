"""Client behaviour: retries on UNAVAILABLE only, timeouts, message-size limits."""

import concurrent.futures
import http.server
import json
import socket
import threading
import time

import grpc
import pytest
from serving_helpers import MODEL
from tensorflow_serving.apis import get_model_status_pb2

from tfbert.serving import Client, ServingError


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ScriptedModelService:
    """A gRPC ModelService whose GetModelStatus answers from a script of codes."""

    def __init__(self, script, delay=0.0):
        self.script = list(script)
        self.delay = delay
        self.calls = 0
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))

        def handle(request_bytes, context):
            self.calls += 1
            time.sleep(self.delay)
            code = self.script.pop(0) if self.script else grpc.StatusCode.OK
            if code != grpc.StatusCode.OK:
                context.abort(code, f"scripted {code.name}")
            response = get_model_status_pb2.GetModelStatusResponse()
            response.model_version_status.add(version=1, state=30)
            return response.SerializeToString()

        method = grpc.unary_unary_rpc_method_handler(
            handle, request_deserializer=None, response_serializer=None)
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "tensorflow.serving.ModelService", {"GetModelStatus": method})])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self):
        self.server.stop(0).wait()


def test_grpc_retries_unavailable_then_succeeds():
    service = _ScriptedModelService([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE])
    try:
        client = Client(f"127.0.0.1:{service.port}", MODEL, retries=3, backoff=0.01)
        assert client.model_status()[0]["state"] == "AVAILABLE"
        assert service.calls == 3
        client.close()
    finally:
        service.stop()


def test_grpc_does_not_retry_other_errors():
    service = _ScriptedModelService([grpc.StatusCode.INVALID_ARGUMENT])
    try:
        client = Client(f"127.0.0.1:{service.port}", MODEL, retries=3, backoff=0.01)
        with pytest.raises(ServingError) as info:
            client.model_status()
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.message == "scripted INVALID_ARGUMENT"
        assert service.calls == 1
        client.close()
    finally:
        service.stop()


def test_grpc_gives_up_after_retries_and_times_out():
    # Nothing listens on this port: UNAVAILABLE, retried `retries` times with backoff.
    client = Client(f"127.0.0.1:{_free_port()}", MODEL, retries=2, backoff=0.05, timeout=5)
    start = time.monotonic()
    with pytest.raises(ServingError) as info:
        client.model_status()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - start >= 0.05 + 0.1
    client.close()

    service = _ScriptedModelService([], delay=2.0)
    try:
        client = Client(f"127.0.0.1:{service.port}", MODEL, retries=3, timeout=0.3)
        with pytest.raises(ServingError) as info:
            client.model_status()
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert service.calls == 1  # a timeout is not retried
        client.close()
    finally:
        service.stop()


class _ScriptedHttp(http.server.ThreadingHTTPServer):
    def __init__(self, statuses):
        self.statuses = list(statuses)
        self.calls = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.calls += 1
                status = outer.statuses.pop(0) if outer.statuses else 200
                body = {"error": f"scripted {status}"} if status != 200 else {
                    "model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {
                        "error_code": "OK", "error_message": ""}}]}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_rest_retries_503_only():
    server = _ScriptedHttp([503, 503])
    try:
        client = Client(None, MODEL, rest_url=f"http://127.0.0.1:{server.server_address[1]}",
                        retries=3, backoff=0.01)
        assert client.model_status()[0]["version"] == 1
        assert server.calls == 3
    finally:
        server.shutdown()
    server = _ScriptedHttp([404])
    try:
        client = Client(None, MODEL, rest_url=f"http://127.0.0.1:{server.server_address[1]}",
                        retries=3, backoff=0.01)
        with pytest.raises(ServingError) as info:
            client.model_status()
        assert (info.value.code, info.value.http_status) == (grpc.StatusCode.NOT_FOUND, 404)
        assert info.value.message == "scripted 404"
        assert server.calls == 1
    finally:
        server.shutdown()
    client = Client(None, MODEL, rest_url=f"http://127.0.0.1:{_free_port()}", retries=1,
                    backoff=0.01)
    with pytest.raises(ServingError) as info:
        client.model_status()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_max_message_bytes(protocol, server):
    kwargs = {"max_message_bytes": 1024, "retries": 0}
    if protocol == "grpc":
        client = Client(f"127.0.0.1:{server.grpc_port}", MODEL, **kwargs)
    else:
        client = Client(None, MODEL, rest_url=f"http://127.0.0.1:{server.rest_api_port}",
                        **kwargs)
    if protocol == "grpc":
        # Small request, small answer: fine. (A REST client first reads the model's
        # metadata, for output names and dtypes, which is larger than 1 KiB here.)
        assert client.with_options(signature_name="lower").predict(["AB"])["lowered"][0] == "ab"
    # Too big to send.
    with pytest.raises(ServingError) as info:
        client.with_options(signature_name="lower").predict(["x" * 5000])
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # A small request whose answer is too big to receive (the metadata of six signatures).
    with pytest.raises(ServingError) as info:
        client.model_metadata()
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    client.close()
