"""Batching: concurrent requests merge into one model call and split back exactly."""

import re
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serving_helpers import clients, make_base, start_server

from tfbert.serving import ServingError
from tfbert.serving.batcher import Batcher
from tfbert.serving.server_configs import BatchingOptions


def _batch_stats(server):
    text = server.metrics.render()
    count = re.search(r":batching:processed_batch_size_count\{[^}]*\} (\d+)", text)
    total = re.search(r":batching:processed_batch_size_sum\{[^}]*\} (\d+)", text)
    return int(count.group(1)), int(total.group(1))


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory, model_versions):
    base = make_base(tmp_path_factory.mktemp("batching"), model_versions)
    # A long timeout so that requests sent together land in one batch.
    server = start_server(base, batching=BatchingOptions(
        max_batch_size=8, batch_timeout_micros=300_000, num_batch_threads=1))
    yield server
    server.stop()


def _concurrently(function, args_list):
    results = [None] * len(args_list)
    barrier = threading.Barrier(len(args_list))

    def run(i, args):
        barrier.wait()
        try:
            results[i] = function(*args)
        except ServingError as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(args_list)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_concurrent_requests_are_batched_and_split_exactly(batching_server, loaded_v1):
    grpc_client, rest_client = clients(batching_server)
    texts = [f"request number {i} " * (i + 1) for i in range(16)]
    before = _batch_stats(batching_server) if ":batching:" in batching_server.metrics.render() \
        else (0, 0)
    results = _concurrently(
        lambda i: (grpc_client if i % 2 else rest_client).predict([texts[i]]),
        [(i,) for i in range(16)])
    count, rows = _batch_stats(batching_server)
    count, rows = count - before[0], rows - before[1]
    assert rows == 16
    assert count < 16, f"no request was merged with another ({count} batches)"
    reference = loaded_v1.signatures["serving_default"](text=tf.constant(texts))
    for i, result in enumerate(results):
        assert isinstance(result, dict), result
        # Merged or not, each row is computed alike; only exp's vectorised path may move
        # the last bit.
        np.testing.assert_allclose(result["probabilities"][0],
                                   reference["probabilities"].numpy()[i], rtol=1e-6)
        assert result["echo_bytes"][0] == texts[i].encode()
    grpc_client.close()


def test_a_bad_request_does_not_fail_its_batch(batching_server):
    grpc_client, _ = clients(batching_server, signature_name="classify")
    good = tf.train.Example()
    good.features.feature["text"].bytes_list.value.append(b"fine")
    inputs = [[good.SerializeToString()]] * 7 + [[b"\x0a\xff\xff\xff not an example"]]
    results = _concurrently(lambda x: grpc_client.predict(inputs=x), [(x,) for x in inputs])
    assert all(isinstance(r, dict) for r in results[:7]), results
    assert isinstance(results[7], ServingError)
    assert results[7].code == grpc.StatusCode.INVALID_ARGUMENT
    grpc_client.close()


def test_full_queue_is_unavailable():
    started, release = threading.Event(), threading.Event()

    def slow_run(inputs):
        started.set()
        release.wait(30)
        return {"y": inputs["x"] * 2}

    batcher = Batcher(max_batch_size=2, batch_timeout_micros=0, max_enqueued_batches=1,
                      num_batch_threads=1)
    results = {}

    def submit(name, rows):
        try:
            results[name] = batcher.submit("key", slow_run, {"x": np.arange(rows)})
        except ServingError as e:
            results[name] = e

    first = threading.Thread(target=submit, args=("first", 2))
    first.start()
    assert started.wait(30)  # the only batch thread is busy with `first`
    second = threading.Thread(target=submit, args=("second", 2))
    second.start()
    # `second` fills the one queue slot; a third task finds the queue full.
    for _ in range(200):
        if batcher._queues.get("key"):
            break
        threading.Event().wait(0.01)
    submit("third", 1)
    release.set()
    first.join(30)
    second.join(30)
    batcher.stop()
    assert results["third"].code == grpc.StatusCode.UNAVAILABLE
    assert "queue to which this task was submitted is full" in results["third"].message
    np.testing.assert_array_equal(results["first"]["y"], [0, 2])
    np.testing.assert_array_equal(results["second"]["y"], [0, 2])


def test_stop_finishes_in_flight_requests_and_refuses_new_ones(tmp_path, model_versions):
    base = make_base(tmp_path, model_versions)
    # A request waits a whole second in its batch: it is in flight when stop() begins.
    server = start_server(base, batching=BatchingOptions(
        max_batch_size=8, batch_timeout_micros=1_000_000, num_batch_threads=1))
    grpc_client, rest_client = clients(server, retries=0)
    in_flight = {}
    thread = threading.Thread(target=lambda: in_flight.update(grpc_client.predict(["slow"])))
    thread.start()
    stopper = threading.Thread(target=server.stop)
    try:
        time.sleep(0.3)
        stopper.start()
        time.sleep(0.1)
        for client in (grpc_client, rest_client):
            with pytest.raises(ServingError) as info:
                client.model_status()
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
        thread.join(timeout=60)
        assert in_flight["label"][0] in ("neg", "pos")
    finally:
        stopper.join(timeout=60)
        grpc_client.close()
