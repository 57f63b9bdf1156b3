"""Versions: hot swap under load, warmup replay, version policies, config reload."""

import os
import shutil
import threading
import time

import grpc
import pytest
import saved_models
from google.protobuf import text_format
from serving_helpers import (
    MODEL,
    SERVING_DIR,
    clients,
    make_base,
    start_server,
    wait_for,
)
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.config import model_server_config_pb2

from tfbert.serving import ServingError
from tfbert.serving.server import ModelServer
from tfbert.serving.server_configs import BatchingOptions

# The `pair` signature scores (len(text) - len(text_b)) * scale; scale is the version number.
PAIR = (["abcd"], ["a"])
SCORE_BY_VERSION = {3.0: 1, 6.0: 2}


def _version_of(client):
    score = float(client.predict(PAIR[0], text_b=PAIR[1])["score"][0])
    return SCORE_BY_VERSION[score]


def _states(server):
    return {v: s.state for v, s in server.manager.version_states(MODEL).items()}


def test_swap_v1_for_v2_under_concurrent_requests(tmp_path, model_versions):
    base = make_base(tmp_path, model_versions, versions=(1,))
    server = start_server(base, file_system_poll_wait_seconds=0.1,
                          batching=BatchingOptions(max_batch_size=8, batch_timeout_micros=2000,
                                                   num_batch_threads=2))
    grpc_client, rest_client = clients(server, signature_name="pair")
    results, failures = [], []
    lock = threading.Lock()
    stop = threading.Event()
    v2_seen = threading.Event()

    def worker(client, index):
        while not stop.is_set():
            try:
                version = _version_of(client)
            except Exception as e:  # noqa: BLE001 -- every failure is recorded and fails the test.
                with lock:
                    failures.append(repr(e))
                continue
            with lock:
                results.append((index, time.monotonic(), version))
                if version == 2:
                    v2_seen.set()
            if len(results) > 3000:
                return

    threads = [threading.Thread(target=worker, args=(grpc_client if i % 2 else rest_client, i))
               for i in range(8)]
    # An in-flight request on version 1, held across the swap: v1 must not unload under it.
    held = server.manager.acquire(MODEL)
    assert held.version == 1
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: len(results) >= 60, timeout=60)
        staging = os.path.join(base, ".incoming-2")  # not an integer: ignored by the poller
        shutil.copytree(model_versions[2], staging)
        swapped_at = time.monotonic()
        os.rename(staging, os.path.join(base, "2"))
        assert v2_seen.wait(timeout=90), "version 2 never served"
        count_at_v2 = len(results)
        wait_for(lambda: len(results) >= max(count_at_v2 + 100, 220), timeout=90)
        # v1 is out of service but still loaded while a request holds it.
        assert _states(server) == {1: "UNLOADING", 2: "AVAILABLE"}
        assert held.has_function("pair")
    finally:
        held.release()
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    try:
        wait_for(lambda: _states(server) == {1: "END", 2: "AVAILABLE"}, timeout=30)
        assert not failures, failures[:5]
        assert len(results) >= 200
        versions = [v for _, _, v in results]
        assert versions.count(1) > 0 and versions.count(2) > 0
        # Requests kept being answered while version 2 loaded and warmed up.
        first_v2 = min(t for _, t, v in results if v == 2)
        assert any(swapped_at <= t < first_v2 for _, t, v in results if v == 1)
        # Once a thread saw version 2 it never saw version 1 again: the swap is atomic.
        for index in range(8):
            mine = [v for i, _, v in sorted(results, key=lambda r: r[1]) if i == index]
            assert mine == sorted(mine), f"thread {index} went back to version 1"
        assert _version_of(grpc_client) == 2 and _version_of(rest_client) == 2
        assert grpc_client.model_status() == [
            {"version": 2, "state": "AVAILABLE", "error_code": "OK", "error_message": ""},
            {"version": 1, "state": "END", "error_code": "OK", "error_message": ""},
        ]
    finally:
        grpc_client.close()
        server.stop()


def test_warmup_records_replay(tmp_path, model_versions):
    base = make_base(tmp_path, model_versions, versions=(1,))
    server = start_server(base)
    try:
        path = os.path.join(base, "1")
        records = server.metrics.counter_value(
            "/tensorflow/serving/model_warmup_records_read", (path, "OK"))
        assert records == len(saved_models.warmup_logs()) == 3
        _, rest_client = clients(server)
        metrics = rest_client._rest("GET", "/v1/models/" + MODEL)  # the REST port is up
        assert metrics["model_version_status"][0]["state"] == "AVAILABLE"
    finally:
        server.stop()


def test_failed_warmup_keeps_the_old_version(tmp_path, model_versions):
    base = make_base(tmp_path, model_versions, versions=(1,))
    server = start_server(base, file_system_poll_wait_seconds=0.1)
    grpc_client, _ = clients(server, signature_name="pair")
    try:
        # Version 2 whose warmup asks for a signature it does not have.
        staging = os.path.join(base, "tmp-2")
        shutil.copytree(model_versions[2], staging)
        log = saved_models.warmup_logs()[0]
        log.predict_log.request.model_spec.signature_name = "missing"
        saved_models.write_warmup(staging, [log])
        os.rename(staging, os.path.join(base, "2"))
        wait_for(lambda: 2 in server.manager.version_states(MODEL)
                 and server.manager.version_states(MODEL)[2].state == "END", timeout=60)
        status = {s["version"]: s for s in grpc_client.model_status()}
        assert status[1]["state"] == "AVAILABLE"
        assert status[2]["error_code"] == "FAILED_PRECONDITION"
        assert 'warmup request failed: Serving signature key "missing" not found.' in \
            status[2]["error_message"]
        assert _version_of(grpc_client) == 1

        # A warmup file that is not TFRecords: DATA_LOSS, and still version 1.
        staging = os.path.join(base, "tmp-3")
        shutil.copytree(model_versions[2], staging)
        with open(os.path.join(staging, "assets.extra", "tf_serving_warmup_requests"), "wb") as f:
            f.write(b"definitely not a TFRecord file")
        os.rename(staging, os.path.join(base, "3"))
        wait_for(lambda: 3 in server.manager.version_states(MODEL)
                 and server.manager.version_states(MODEL)[3].state == "END", timeout=60)
        assert server.manager.version_states(MODEL)[3].error_code == grpc.StatusCode.DATA_LOSS
        assert _version_of(grpc_client) == 1
    finally:
        grpc_client.close()
        server.stop()


def _config(base, policy_text, labels=None):
    config = model_server_config_pb2.ModelServerConfig()
    with open(os.path.join(SERVING_DIR, "models.config"), encoding="utf-8") as f:
        text_format.Parse(f.read(), config)
    model = config.model_config_list.config[0]
    model.name = MODEL
    model.base_path = base
    model.model_version_policy.Clear()
    text_format.Parse(policy_text, model.model_version_policy)
    for label, version in (labels or {}).items():
        model.version_labels[label] = version
    return config


def test_version_policies_and_labels(tmp_path, model_versions):
    base = make_base(tmp_path, model_versions, versions=(1, 2))

    server = ModelServer(_config(base, "specific { versions: 1 }"), grpc_port=0,
                         rest_api_port=0, host="127.0.0.1",
                         file_system_poll_wait_seconds=0).start()
    grpc_client, _ = clients(server, signature_name="pair")
    try:
        assert _version_of(grpc_client) == 1  # pinned, although 2 is newer
        assert [s["version"] for s in grpc_client.model_status()] == [1]
    finally:
        grpc_client.close()
        server.stop()

    server = ModelServer(_config(base, "all {}", labels={"stable": 1, "canary": 2}),
                         grpc_port=0, rest_api_port=0, host="127.0.0.1",
                         file_system_poll_wait_seconds=0).start()
    grpc_client, rest_client = clients(server, signature_name="pair")
    try:
        assert _version_of(grpc_client) == 2  # latest of all
        for client in (grpc_client, rest_client):
            assert _version_of(client.with_options(version=1)) == 1
            assert _version_of(client.with_options(version_label="stable")) == 1
            assert _version_of(client.with_options(version_label="canary")) == 2
        assert [s["state"] for s in grpc_client.model_status()] == ["AVAILABLE", "AVAILABLE"]
    finally:
        grpc_client.close()
        server.stop()


def test_reload_config_adds_and_removes_models(tmp_path, model_versions):
    base = make_base(tmp_path, model_versions, versions=(1,))
    other = make_base(tmp_path / "other", model_versions, versions=(2,))
    server = start_server(base)
    grpc_client, _ = clients(server)
    try:
        config = _config(base, "latest { num_versions: 1 }")
        second = config.model_config_list.config.add()
        second.CopyFrom(config.model_config_list.config[0])
        second.name = "second"
        second.base_path = other
        request = model_management_pb2.ReloadConfigRequest(config=config)
        response = grpc_client._models.HandleReloadConfigRequest(request, timeout=60)
        assert response.status.error_code == 0
        second_client = grpc_client.with_options(signature_name="pair")
        second_client.model_name = "second"
        assert _version_of(second_client) == 2

        del config.model_config_list.config[1]
        grpc_client._models.HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=config), timeout=60)
        with pytest.raises(ServingError) as info:
            second_client.predict(*PAIR)
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        assert grpc_client.predict(["still served"])["label"][0] in saved_models.LABELS

        bad = model_server_config_pb2.ModelServerConfig()
        bad.model_config_list.config.add(name="x", base_path=str(tmp_path / "missing"))
        with pytest.raises(grpc.RpcError) as rpc:
            grpc_client._models.HandleReloadConfigRequest(
                model_management_pb2.ReloadConfigRequest(config=bad), timeout=60)
        assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Could not find base path" in rpc.value.details()
    finally:
        grpc_client.close()
        server.stop()
