"""Small SavedModels in TF Serving's layout (base/<version>/saved_model.pb, variables/,
assets.extra/tf_serving_warmup_requests), built with tf.Module + tf.function signatures.

Their signatures cover what a tfbert export has (string `text` in; float, int and string
outputs; a Classify signature over serialized tf.Examples; the TF Hub int32 ids signature)
plus a regress signature and a single-output one. `scale` makes versions give different
numbers, so a test can tell which version answered.
"""

import os

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    predict_pb2,
    prediction_log_pb2,
)

LABELS = ("neg", "pos")
HIDDEN = 4
VOCAB = 11


class TextModel(tf.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = tf.Variable(float(scale))
        self.weights = tf.Variable([0.05, -0.02])
        self.embeddings = tf.Variable(
            np.arange(VOCAB * HIDDEN, dtype="float32").reshape(VOCAB, HIDDEN) / 10.0)

    def _classify_text(self, text):
        # B=batch.
        length = tf.cast(tf.strings.length(text), tf.float32)                  # [B]
        bucket = tf.cast(tf.strings.to_hash_bucket_fast(text, 13), tf.float32)  # [B]
        logits = tf.stack([length * self.weights[0] * self.scale,
                           bucket * self.weights[1]], axis=1)                   # [B, 2]
        probabilities = tf.nn.softmax(logits)
        label_id = tf.argmax(probabilities, axis=1, output_type=tf.int32)
        return probabilities, label_id

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        probabilities, label_id = self._classify_text(text)
        return {
            "probabilities": probabilities,
            "label_id": label_id,
            "label": tf.gather(tf.constant(LABELS), label_id),
            "echo_bytes": text,
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text"),
                                  tf.TensorSpec([None], tf.string, name="text_b")])
    def pair(self, text, text_b):
        difference = tf.strings.length(text) - tf.strings.length(text_b)
        return {"score": tf.cast(difference, tf.float32) * self.scale}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def lower(self, text):
        return {"lowered": tf.strings.lower(text)}

    def _parse(self, serialized):
        spec = {"text": tf.io.FixedLenFeature([], tf.string, default_value="")}
        return tf.io.parse_example(serialized, spec)["text"]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        probabilities, _ = self._classify_text(self._parse(inputs))
        batch = tf.shape(inputs)[0]
        return {"scores": probabilities,
                "classes": tf.tile(tf.constant([list(LABELS)]), [batch, 1])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        text = self._parse(inputs)
        return {"outputs": tf.cast(tf.strings.length(text), tf.float32) * self.scale}

    @tf.function(input_signature=[
        tf.TensorSpec([None, None], tf.int32, name="input_word_ids"),
        tf.TensorSpec([None, None], tf.int32, name="input_mask"),
        tf.TensorSpec([None, None], tf.int32, name="input_type_ids")])
    def serve_ids(self, input_word_ids, input_mask, input_type_ids):
        # B=batch, S=sequence, H=hidden.
        vectors = tf.gather(self.embeddings, input_word_ids % VOCAB)            # [B, S, H]
        mask = tf.cast(input_mask, tf.float32)[:, :, None]                      # [B, S, 1]
        types = tf.cast(input_type_ids, tf.float32)[:, :, None]                 # [B, S, 1]
        pooled = tf.reduce_sum(vectors * mask * (1.0 + types), axis=1)          # [B, H]
        return {"pooled_output": pooled * self.scale}


def _set_method_names(path, method_names):
    """TF2 saves every signature as predict; TF Serving exports mark Classify/Regress ones."""
    pb = os.path.join(path, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with open(pb, "rb") as f:
        saved_model.ParseFromString(f.read())
    for name, method in method_names.items():
        saved_model.meta_graphs[0].signature_def[name].method_name = method
    with open(pb, "wb") as f:
        f.write(saved_model.SerializeToString())


def warmup_logs(model_name="model"):
    """PredictionLog records: Predict at batch sizes 1 and 8, and one Classify."""
    logs = []
    for batch in (1, 8):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = "serving_default"
        request.inputs["text"].CopyFrom(
            tf.make_tensor_proto([f"warmup sentence {i}" for i in range(batch)]))
        log = prediction_log_pb2.PredictionLog()
        log.predict_log.request.CopyFrom(request)
        logs.append(log)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = "classify"
    example = request.input.example_list.examples.add()
    example.features.feature["text"].bytes_list.value.append(b"warmup")
    log = prediction_log_pb2.PredictionLog()
    log.classify_log.request.CopyFrom(request)
    logs.append(log)
    return logs


def write_warmup(path, records):
    """Writes assets.extra/tf_serving_warmup_requests (serialized PredictionLogs or bytes)."""
    directory = os.path.join(path, "assets.extra")
    os.makedirs(directory, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(directory, "tf_serving_warmup_requests")) as writer:
        for record in records:
            writer.write(record if isinstance(record, bytes) else record.SerializeToString())


def build(path, scale=1.0, warmup=True):
    """Saves a TextModel version at `path` (e.g. base/1)."""
    module = TextModel(scale)
    signatures = {
        "serving_default": module.serve,
        "pair": module.pair,
        "lower": module.lower,
        "classify": module.classify,
        "regress": module.regress,
        "serve_ids": module.serve_ids,
    }
    tf.saved_model.save(module, path, signatures=signatures)
    _set_method_names(path, {"classify": tf.saved_model.CLASSIFY_METHOD_NAME,
                             "regress": tf.saved_model.REGRESS_METHOD_NAME})
    if warmup:
        write_warmup(path, warmup_logs())
    return path
