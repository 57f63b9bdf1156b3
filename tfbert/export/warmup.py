"""assets.extra/tf_serving_warmup_requests: requests TF Serving replays before serving.

TF Serving reads this TFRecord file of `PredictionLog`s when it loads a version and runs
each request once, so the first real request does not pay for graph optimisation and
memory allocation. One request per signature and batch size (1 and 8), with
real-looking text.
"""

import os

import numpy as np
import tensorflow as tf

from tfbert import features
from tfbert.export import signatures as sig

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
BATCH_SIZES = (1, 8)

SENTENCES = (
    "The film opens slowly, but the last half hour is as gripping as anything this year.",
    "Shares of the company fell 4% in early trading after the quarterly report.",
    "I ordered the soup and it arrived cold; the waiter never came back to our table.",
    "Barack Obama met Angela Merkel in Berlin on Tuesday to discuss trade.",
    "Das Wetter in München war gestern überraschend warm für November.",
    "Please reset my password, I can't log in since the update.",
    "A beautifully shot, quietly devastating portrait of a family in crisis.",
    "The new library on Elm Street opens at 9 a.m. on weekdays.",
)
PAIRS = (
    ("A man is playing a guitar on stage.", "A person is performing music."),
    ("The cat sat on the mat.", "The dog is sleeping in the garden."),
    ("She bought three apples at the market.", "She purchased fruit."),
    ("The meeting was moved to Friday.", "The meeting was cancelled."),
    ("Two children are building a sandcastle.", "Kids are at the beach."),
    ("The train was delayed by an hour.", "The train arrived on time."),
    ("He is reading a newspaper in the park.", "A man is outdoors."),
    ("The restaurant closes at midnight.", "The restaurant is open late."),
)
QUESTIONS = (
    ("When was the Eiffel Tower completed?",
     ("The Eiffel Tower is a wrought-iron lattice tower in Paris. It was designed by "
      "Gustave Eiffel's company and completed in 1889 for the World's Fair.")),
    ("What is the capital of Australia?",
     "Canberra is the capital city of Australia, while Sydney is its largest city."),
    ("Who wrote Pride and Prejudice?",
     "Pride and Prejudice is an 1813 novel of manners written by Jane Austen."),
    ("How long is the Nile?",
     "The Nile is about 6,650 km long and flows through eleven countries in Africa."),
    ("What does a barometer measure?",
     "A barometer is a scientific instrument used to measure air pressure."),
    ("Where is Mount Kilimanjaro?",
     "Mount Kilimanjaro is a dormant volcano in Tanzania, the highest in Africa."),
    ("When did Apollo 11 land on the Moon?",
     "Apollo 11 landed on the Moon on July 20, 1969, with Neil Armstrong and Buzz Aldrin."),
    ("What language is spoken in Brazil?",
     "Portuguese is the official and most widely spoken language of Brazil."),
)


def _strings(values):
    return tf.make_tensor_proto(np.array([v.encode("utf-8") for v in values], dtype=object))


def _example(**texts):
    feature = {
        name: tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode("utf-8")]))
        for name, text in texts.items()
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _take(items, batch):
    return [items[i % len(items)] for i in range(batch)]


def warmup_logs(task, preprocessor=None, pair=False, model_name="model"):
    """PredictionLog protos for every signature of a `task` export, batch sizes 1 and 8.

    `preprocessor` (encoder exports) turns the sentences into serve_ids' int32 inputs.
    """
    from tensorflow_serving.apis import (
        classification_pb2,
        predict_pb2,
        prediction_log_pb2,
        regression_pb2,
    )

    logs = []

    def predict(signature, inputs):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature
        for name, proto in inputs.items():
            request.inputs[name].CopyFrom(proto)
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))

    for batch in BATCH_SIZES:
        if task in ("classification", "regression"):
            if pair:
                rows = _take(PAIRS, batch)
                texts = {features.TEXT: [a for a, _ in rows], features.TEXT_B: [b for _, b in rows]}
            else:
                texts = {features.TEXT: _take(SENTENCES, batch)}
            predict(sig.SERVING_DEFAULT, {k: _strings(v) for k, v in texts.items()})
            examples = [
                _example(**{k: v[i] for k, v in texts.items()}) for i in range(batch)
            ]
            if task == "classification":
                request = classification_pb2.ClassificationRequest()
                request.model_spec.name = model_name
                request.model_spec.signature_name = sig.CLASSIFY
                request.input.example_list.examples.extend(examples)
                logs.append(prediction_log_pb2.PredictionLog(
                    classify_log=prediction_log_pb2.ClassifyLog(request=request)))
            else:
                request = regression_pb2.RegressionRequest()
                request.model_spec.name = model_name
                request.model_spec.signature_name = sig.REGRESS
                request.input.example_list.examples.extend(examples)
                logs.append(prediction_log_pb2.PredictionLog(
                    regress_log=prediction_log_pb2.RegressLog(request=request)))
        elif task == "token_classification":
            predict(sig.SERVING_DEFAULT, {features.TEXT: _strings(_take(SENTENCES, batch))})
        elif task == "question_answering":
            rows = _take(QUESTIONS, batch)
            predict(sig.SERVING_DEFAULT, {
                sig.QUESTION: _strings([q for q, _ in rows]),
                sig.CONTEXT: _strings([c for _, c in rows]),
            })
        elif task == "encoder":
            texts = _take(SENTENCES, batch)
            predict(sig.SERVING_DEFAULT, {features.TEXT: _strings(texts)})
            ids = preprocessor(tf.constant([t.encode("utf-8") for t in texts]))
            predict(sig.SERVE_IDS, {
                name: tf.make_tensor_proto(np.asarray(ids[name], np.int32))
                for name in features.MODEL_INPUTS
            })
        else:
            raise ValueError(f"unknown task {task!r}; valid: {', '.join(sig.TASKS)}")
    return logs


def write_warmup_requests(export_path, logs):
    """Writes `logs` to export_path/assets.extra/tf_serving_warmup_requests."""
    directory = os.path.join(export_path, WARMUP_DIR)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(export_path):
    """The PredictionLog protos of an export's warmup file."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(export_path, WARMUP_DIR, WARMUP_FILE)
    logs = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs
