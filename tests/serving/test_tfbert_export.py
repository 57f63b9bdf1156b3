"""End to end: a real tfbert classification export, served and queried over gRPC and REST."""

import os

import numpy as np
import pytest
import tensorflow as tf
from serving_helpers import clients

from tfbert.export import export_saved_model
from tfbert.models import BertClassifier, BertEncoder
from tfbert.serving.server import ModelServer
from tfbert.serving.server_configs import BatchingOptions, single_model_config
from tfbert.text import BertPreprocessor

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "great", "film", "dull", "the",
         "plot", "was", "##s", ",", ".", "!"]
LABELS = ["neg", "pos"]
TEXTS = ["A great film!", "the plot was dull.", "", "naïve café", "great " * 40]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tf.keras.utils.set_random_seed(7)
    encoder = BertEncoder(vocabulary_size=len(VOCAB), num_layers=1, num_heads=2, hidden_dim=16,
                          intermediate_dim=32, max_sequence_length=32)
    model = BertClassifier(encoder, 2)
    preprocessor = BertPreprocessor(VOCAB, seq_length=16)
    base = str(tmp_path_factory.mktemp("export") / "bert")
    path = export_saved_model(model, preprocessor, base, label_names=LABELS)
    return base, path, model, preprocessor


def test_tfbert_export_serves_like_the_savedmodel(exported):
    base, path, model, preprocessor = exported
    assert os.path.basename(path) == "1"
    loaded = tf.saved_model.load(path)
    want = {k: v.numpy() for k, v in
            loaded.signatures["serving_default"](text=tf.constant(TEXTS)).items()}
    # The export agrees with the Keras model it came from.
    keras_probabilities = tf.nn.softmax(
        model(preprocessor(tf.constant(TEXTS)), training=False), axis=-1).numpy()
    assert keras_probabilities.shape == (len(TEXTS), len(LABELS))
    np.testing.assert_allclose(want["probabilities"], keras_probabilities, atol=1e-5)

    server = ModelServer(single_model_config("bert", base), grpc_port=0, rest_api_port=0,
                         host="127.0.0.1", file_system_poll_wait_seconds=0,
                         batching=BatchingOptions(max_batch_size=8, batch_timeout_micros=1000,
                                                  num_batch_threads=1)).start()
    grpc_client, rest_client = clients(server)
    grpc_client.model_name = rest_client.model_name = "bert"
    try:
        # Its warmup records replayed on load.
        assert server.metrics.counter_value(
            "/tensorflow/serving/model_warmup_records_read", (path, "OK")) > 0
        for client in (grpc_client, rest_client):
            assert client.model_status()[0]["state"] == "AVAILABLE"
            got = client.predict(TEXTS)
            # Same batch, same graph; a tolerance only for threaded matmul reductions.
            np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-6)
            np.testing.assert_array_equal(got["label_id"], want["label_id"])
            assert list(got["label"]) == [s.decode() for s in want["label"]]
            assert set(got["label"]) <= set(LABELS)

            classified = client.classify(TEXTS[:2])
            assert [[label for label, _ in row] for row in classified] == [LABELS, LABELS]
            np.testing.assert_allclose(
                [[score for _, score in row] for row in classified], want["probabilities"][:2],
                atol=1e-6)

            signatures = client.model_metadata()["signature_def"]
            assert signatures["serving_default"]["inputs"]["text"]["dtype"] == "DT_STRING"
            assert signatures["classify"]["method_name"] == "tensorflow/serving/classify"
    finally:
        grpc_client.close()
        server.stop()


def test_the_server_registers_the_tf_text_ops_itself():
    # Like TF Serving's binary the server must know the TF Text ops an export's graph
    # holds by itself, not through tfbert's tokenizer happening to be imported (which
    # TFBERT_LAZY_IMPORTS=1 keeps `import tfbert` from doing).
    import subprocess
    import sys

    code = ("import sys; import tfbert.serving.servable; "
            "from tensorflow.python.framework import op_def_registry as r; "
            "assert r.get('FastWordpieceTokenizeWithOffsets') is not None, 'not registered'; "
            "assert 'tfbert.text.bert_preprocessor' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                                   TFBERT_LAZY_IMPORTS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
