"""Helpers for the serving tests: model base paths, in-process servers, clients."""

import os
import shutil
import time

from tfbert.serving import Client
from tfbert.serving.server import ModelServer
from tfbert.serving.server_configs import single_model_config

MODEL = "textmodel"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVING_DIR = os.path.join(REPO, "serving")


def make_base(directory, model_versions, versions=(1,)):
    """A model base path under `directory` holding copies of the given versions."""
    base = os.path.join(str(directory), "models", MODEL)
    os.makedirs(base)
    for version in versions:
        shutil.copytree(model_versions[version], os.path.join(base, str(version)))
    return base


def start_server(base, **kwargs):
    """A started ModelServer for MODEL at `base`, gRPC and REST on free 127.0.0.1 ports."""
    kwargs.setdefault("file_system_poll_wait_seconds", 0)
    kwargs.setdefault("prometheus_path", "/monitoring/prometheus/metrics")
    server = ModelServer(single_model_config(MODEL, base), grpc_port=0, rest_api_port=0,
                         host="127.0.0.1", **kwargs)
    return server.start()


def clients(server, **kwargs):
    """(gRPC client, REST client) for MODEL on `server`."""
    kwargs.setdefault("timeout", 30)
    grpc_client = Client(f"127.0.0.1:{server.grpc_port}", MODEL, **kwargs)
    rest_client = Client(None, MODEL, rest_url=f"http://127.0.0.1:{server.rest_api_port}",
                         **kwargs)
    return grpc_client, rest_client


def wait_for(predicate, timeout=60.0, interval=0.05):
    """Polls `predicate` until true; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
