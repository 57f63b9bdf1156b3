"""Fixtures: small SavedModels in TF Serving's layout and a real server on 127.0.0.1."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import saved_models
from serving_helpers import SERVING_DIR, clients, make_base, start_server

from tfbert.serving.server_configs import read_batching_parameters


@pytest.fixture(scope="session")
def model_versions(tmp_path_factory):
    """{1: path, 2: path}: one model with two sets of weights (scale 1 and 2)."""
    root = tmp_path_factory.mktemp("versions")
    return {
        1: saved_models.build(str(root / "v1"), scale=1.0),
        2: saved_models.build(str(root / "v2"), scale=2.0),
    }


@pytest.fixture(scope="session")
def server(tmp_path_factory, model_versions):
    """One server on version 1, batching with serving/batching_parameters.config."""
    base = make_base(tmp_path_factory.mktemp("shared"), model_versions)
    batching = read_batching_parameters(os.path.join(SERVING_DIR, "batching_parameters.config"))
    server = start_server(base, batching=batching)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def grpc_client(server):
    client, _ = clients(server)
    yield client
    client.close()


@pytest.fixture(scope="session")
def rest_client(server):
    _, client = clients(server)
    return client


@pytest.fixture(scope="session")
def loaded_v1(model_versions):
    """Version 1 loaded in-process, the reference the servers must match."""
    import tensorflow as tf

    return tf.saved_model.load(model_versions[1])
