"""Sentence (pair) classification and regression for `python -m tfbert.train`.

  python -m tfbert.train --config configs/finetune/classification.yaml \
      --model_dir runs/sentiment --set model.preset=MODEL_DIR \
      --set data.train_files=train.csv --set data.eval_files=dev.csv

Data: data.format csv | tsv | jsonl (data.train_files / data.eval_files, columns
data.text_column, data.text_b_column, data.label_column) or tfds (data.tfds_name,
data.train_split / data.eval_split); see tfbert.data.classification. Text is tokenized in
the tf.data pipeline by BertPreprocessor with the preset's vocabulary.

Labels: data.label_names fixes the ids; empty, they come from the preset's task.json
(fine-tuning a fine-tuned model again), else from the training data (sorted), else from
the TFDS ClassLabel. data.regression (or a TFDS float label, as STS-B) trains one output
with mean squared error.

Loss: the mean cross-entropy (MSE) over the examples of the global batch, whatever the
number of replicas. Evaluation pads the last batch with weight-0 examples, so the
metrics cover every evaluation example exactly once when trainer.eval_steps >=
num_eval_steps(), and padding never counts.
"""

import json
import math
import os
import sys

import numpy as np
import tensorflow as tf

from tfbert.data import classification as data_lib
from tfbert.models import presets

LABEL = "label"
WEIGHT = "weight"


class ClassificationTask:
    """Fine-tunes a BertClassifier on sentence or sentence-pair labels (or scores)."""

    name = "classification"

    def __init__(self, config):
        self.config = config
        data = config.data
        if data.format not in ("csv", "tsv", "jsonl", "tfds"):
            raise ValueError(
                f"data.format {data.format!r} is not a classification format; valid: "
                "csv, tsv, jsonl, tfds"
            )
        self._data = {}
        self._preset_info = self._classifier_info(config.model.preset)
        self.label_names, self.regression = self._labels()
        vocabulary, lowercase = self._vocabulary()
        from tfbert.text.bert_preprocessor import BertPreprocessor

        self.preprocessor = BertPreprocessor(
            vocabulary, seq_length=data.max_seq_length, lowercase=lowercase
        )

    # === Labels and data ===

    @staticmethod
    def _classifier_info(preset):
        """task.json of a fine-tuned classifier preset, else None."""
        if not os.path.isdir(preset):
            return None
        info = presets.load_task_info(preset)
        return info if info and info["task"] == "classification" else None

    def _labels(self):
        """(label_names, regression), from the recipe, the preset or the data."""
        data = self.config.data
        if data.regression:
            if data.label_names:
                raise ValueError("data.label_names must be empty with data.regression")
            return (), True
        if data.label_names:
            return tuple(str(n) for n in data.label_names), False
        info = self._preset_info
        if info is not None and "label_names" in info:
            names = tuple(info["label_names"])
            return names, not names
        if data.format == "tfds" or self.has_data(training=True):
            # Files: the sorted labels of the training data. TFDS: the ClassLabel names
            # (any split has them) or, for a float label, regression.
            training = self.has_data(training=True)
            loaded = self.load_data(training, label_names=None)
            # The same examples serve once the names are known: no second read.
            self._data[(training, loaded.label_names)] = loaded
            return loaded.label_names, loaded.regression
        raise ValueError(
            "the label names are unknown: set data.label_names, or data.train_files to "
            "read them from the training data, or use a fine-tuned classifier as model.preset"
        )

    @property
    def num_classes(self):
        return 1 if self.regression else len(self.label_names)

    def has_data(self, training):
        """True when the recipe names data for training (or evaluation)."""
        data = self.config.data
        if data.format == "tfds":
            return bool(data.tfds_name and (data.train_split if training else data.eval_split))
        return bool(data.train_files if training else data.eval_files)

    def load_data(self, training, label_names=()):
        """The ClassificationData of the training (or evaluation) split, cached."""
        if label_names == ():
            label_names = self.label_names
        key = (training, tuple(label_names) if label_names is not None else None)
        if key not in self._data:
            data = self.config.data
            if not self.has_data(training):
                which = "train" if training else "eval"
                what = f"data.{which}_split" if data.format == "tfds" else f"data.{which}_files"
                verb = "train" if training else "evaluate"
                raise ValueError(f"{what} is empty; nothing to {verb} on")
            # With data.label_column empty, evaluation data is read unlabelled (for
            # --mode=predict on new text); training always needs labels.
            label_column = data.label_column or None
            if training and not label_column:
                raise ValueError("data.label_column is empty; training needs labels")
            self._data[key] = data_lib.load_classification_data(
                data.tfds_name if data.format == "tfds" else
                (data.train_files if training else data.eval_files),
                format=data.format,
                split=data.train_split if training else data.eval_split,
                text_column=data.text_column,
                text_b_column=data.text_b_column or None,
                label_column=label_column,
                label_names=label_names or None,
                regression=bool(data.regression),
                data_dir=data.tfds_data_dir or None,
            )
        return self._data[key]

    def _vocabulary(self):
        preset = self.config.model.preset
        data = self.config.data
        if os.path.isdir(preset):
            return presets.load_vocabulary(preset), presets.load_config(preset).lowercase
        if not data.vocab_file:
            raise ValueError("data.vocab_file is required when model.preset is a size name")
        if not os.path.isfile(data.vocab_file):
            raise FileNotFoundError(f"data.vocab_file {data.vocab_file}: no such file")
        return data.vocab_file, data.lowercase

    # === Model ===

    def build_model(self):
        from tfbert.models.bert_classifier import BertClassifier

        model_config = self.config.model
        preset = model_config.preset
        info = self._preset_info
        if (info is not None and info.get("args", {}).get("num_classes") == self.num_classes
                and tuple(info.get("label_names", ())) == self.label_names):
            # A fine-tuned classifier with the same labels: keep its head too.
            model = presets.load_task_model(
                preset, dtype=model_config.dtype, **model_config.encoder_overrides
            )
        else:
            encoder = presets.load_encoder(
                preset, dtype=model_config.dtype, **model_config.encoder_overrides
            )
            model = BertClassifier(encoder, num_classes=self.num_classes)
        seq_length = self.config.data.max_seq_length
        if seq_length > model.encoder.max_sequence_length:
            raise ValueError(
                f"data.max_seq_length {seq_length} exceeds the model's "
                f"max_position_embeddings {model.encoder.max_sequence_length}"
            )
        return model

    def task_info(self):
        """task.json's entries beside the task name and model arguments."""
        return {
            "label_names": list(self.label_names),
            "regression": self.regression,
            "seq_length": self.config.data.max_seq_length,
            "inputs": ["text", "text_b"] if self._is_pair() else ["text"],
        }

    def _is_pair(self):
        if self.config.data.format == "tfds":
            for training in (True, False):
                if self.has_data(training):
                    return self.load_data(training).is_pair
        return bool(self.config.data.text_b_column)

    # === Datasets ===

    def num_eval_steps(self):
        """Steps that cover the evaluation split once (the last batch padded)."""
        count = self.load_data(training=False).num_examples
        if count is None:
            return None
        return max(1, math.ceil(count / self.config.trainer.global_batch_size))

    def dataset(self, input_context, training):
        """Per-replica batches of (model inputs, {label, weight})."""
        data = self.load_data(training)
        global_batch = self.config.trainer.global_batch_size
        batch = global_batch
        ds = data.examples
        if input_context is not None:
            batch = input_context.get_per_replica_batch_size(global_batch)
            if input_context.num_input_pipelines > 1:
                ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        if training:
            buffer = min(self.config.data.shuffle_buffer, data.num_examples or sys.maxsize)
            ds = ds.shuffle(max(buffer, 1), seed=self.config.data.seed,
                            reshuffle_each_iteration=True)
            ds = ds.repeat()
            ds = ds.map(lambda x, y: (x, y, tf.ones_like(y, tf.float32)))
        else:
            ds = ds.map(lambda x, y: (x, y, self._weight(y)))
            # Weight-0 padding after the last example: every example counts exactly once
            # and the evaluation loop may run any number of steps.
            ds = ds.concatenate(self._padding(data).repeat())
        ds = ds.batch(batch, drop_remainder=True)
        ds = ds.map(
            lambda x, y, w: (self.preprocessor(x), {LABEL: y, WEIGHT: w}),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        return ds.prefetch(tf.data.AUTOTUNE)

    def _weight(self, label):
        # Unlabelled examples (GLUE's test splits, text to predict on) carry -1 (NaN for
        # regression); they weigh nothing in loss and metrics.
        if self.regression:
            return tf.cast(tf.math.is_finite(label), tf.float32)
        return tf.cast(label >= 0, tf.float32)

    def _padding(self, data):
        label = tf.constant(float("nan") if self.regression else -1,
                            tf.float32 if self.regression else tf.int32)
        text = tf.constant("")
        features = (text, text) if data.is_pair else text
        return tf.data.Dataset.from_tensors((features, label, tf.constant(0.0)))

    # === Loss and metrics ===

    @staticmethod
    def denominators(labels):
        return {"examples": tf.reduce_sum(labels[WEIGHT])}

    def step(self, model, inputs, labels, denominators, training):
        # B=batch, C=classes.
        logits = model(inputs, training=training)                        # [B, C] float32
        weight = labels[WEIGHT]                                           # [B]
        real = weight > 0
        count = tf.reduce_sum(weight)
        if self.regression:
            predicted = logits[:, 0]                                      # [B]
            # Padding carries NaN; zero it so that 0 * NaN cannot poison the sums.
            target = tf.where(real, tf.cast(labels[LABEL], tf.float32), 0.0)
            predicted_real = tf.where(real, predicted, 0.0)
            loss_sum = tf.reduce_sum(tf.square(predicted_real - target) * weight)
            sums = {
                "loss_sum": loss_sum,
                "count": count,
                # Pearson's r from additive sums.
                "sum_p": tf.reduce_sum(predicted_real * weight),
                "sum_y": tf.reduce_sum(target * weight),
                "sum_pp": tf.reduce_sum(tf.square(predicted_real) * weight),
                "sum_yy": tf.reduce_sum(tf.square(target) * weight),
                "sum_py": tf.reduce_sum(predicted_real * target * weight),
            }
        else:
            target = tf.where(real, tf.cast(labels[LABEL], tf.int32), 0)
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=logits)
            loss_sum = tf.reduce_sum(ce * weight)
            predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)  # [B]
            hit = tf.cast(tf.equal(predicted, target), tf.float32) * weight
            sums = {"loss_sum": loss_sum, "count": count, "correct": tf.reduce_sum(hit)}
            if self.num_classes == 2:
                # GLUE's F1 and Matthews correlation take label id 1 as positive.
                said = tf.cast(tf.equal(predicted, 1), tf.float32) * weight
                truth = tf.cast(tf.equal(target, 1), tf.float32) * weight
                sums["true_positive"] = tf.reduce_sum(said * truth)
                sums["predicted_positive"] = tf.reduce_sum(said)
                sums["actual_positive"] = tf.reduce_sum(truth)
        # This replica's share of the global mean: the denominators are global.
        loss = loss_sum / tf.maximum(denominators["examples"], 1.0)
        return loss, sums

    def metrics(self, sums):
        count = max(sums["count"], 1.0)
        if self.regression:
            return {"loss": sums["loss_sum"] / count,
                    "pearson": _pearson_from_sums(sums)}
        out = {"loss": sums["loss_sum"] / count, "accuracy": sums["correct"] / count}
        if "true_positive" in sums:
            out.update(_binary_metrics(sums["true_positive"], sums["predicted_positive"],
                                       sums["actual_positive"], sums["count"]))
        return out

    # === Prediction ===

    def predict(self, model, output_file):
        """Predicts every evaluation example; writes JSONL (or TSV for a .tsv name).

        JSONL rows: {"text", ["text_b",] "label", "probabilities": {name: p}, "gold"} for
        classification, {"text", ["text_b",] "prediction", "gold"} for regression; "gold"
        is null for unlabelled data. Returns (and prints) the metrics on labelled rows:
        accuracy (F1 and MCC when binary), or MSE, Pearson and Spearman.
        """
        data = self.load_data(training=False)
        batch = self.config.trainer.global_batch_size

        @tf.function(reduce_retracing=True)
        def forward(x):
            return model(self.preprocessor(x), training=False)

        texts, texts_b, golds, outputs = [], [], [], []
        for x, y in data.dataset(batch):
            outputs.append(forward(x).numpy())
            a, b = (x if data.is_pair else (x, None))
            texts.extend(t.decode("utf-8", "replace") for t in a.numpy())
            if b is not None:
                texts_b.extend(t.decode("utf-8", "replace") for t in b.numpy())
            golds.extend(y.numpy().tolist())
        logits = np.concatenate(outputs) if outputs else np.zeros((0, self.num_classes))
        rows = self._prediction_rows(texts, texts_b, golds, logits)
        if output_file.endswith(".tsv"):
            text = _tsv(rows)
        else:
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        from tfbert.fileio import write_text_atomic

        write_text_atomic(output_file, text)
        metrics = self.prediction_metrics(np.asarray(golds), logits)
        if metrics:
            print("predict | " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
                  flush=True)
        return metrics

    def _prediction_rows(self, texts, texts_b, golds, logits):
        rows = []
        for i, text in enumerate(texts):
            row = {"text": text}
            if texts_b:
                row["text_b"] = texts_b[i]
            gold = golds[i]
            if self.regression:
                row["prediction"] = float(logits[i, 0])
                row["gold"] = gold if math.isfinite(gold) else None
            else:
                probabilities = _softmax(logits[i])
                row["label"] = self.label_names[int(np.argmax(logits[i]))]
                row["probabilities"] = {
                    name: round(float(p), 6) for name, p in zip(self.label_names, probabilities)
                }
                row["gold"] = self.label_names[gold] if gold >= 0 else None
            rows.append(row)
        return rows

    def prediction_metrics(self, golds, logits):
        """Metrics of predictions (logits [N, C]) against labels [N]; labelled rows only."""
        if self.regression:
            real = np.isfinite(golds)
            if not real.any():
                return {}
            y, p = golds[real].astype("float64"), logits[real, 0].astype("float64")
            from scipy import stats

            return {
                "mse": float(np.mean((p - y) ** 2)),
                "pearson": float(stats.pearsonr(p, y)[0]) if len(y) > 1 else float("nan"),
                "spearman": float(stats.spearmanr(p, y)[0]) if len(y) > 1 else float("nan"),
            }
        real = golds >= 0
        if not real.any():
            return {}
        y, predicted = golds[real], np.argmax(logits[real], axis=-1)
        out = {"accuracy": float(np.mean(predicted == y)), "examples": float(real.sum())}
        if self.num_classes == 2:
            out.update(_binary_metrics(float(np.sum((predicted == 1) & (y == 1))),
                                       float(np.sum(predicted == 1)), float(np.sum(y == 1)),
                                       float(len(y))))
        return out


def _softmax(logits):
    z = np.exp(logits - np.max(logits))
    return z / z.sum()


def _binary_metrics(tp, predicted_positive, actual_positive, count):
    """F1 of the positive class (id 1) and Matthews' correlation coefficient."""
    fp = predicted_positive - tp
    fn = actual_positive - tp
    tn = count - tp - fp - fn
    f1 = 2 * tp / max(2 * tp + fp + fn, 1.0)
    denominator = math.sqrt(max((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn), 0.0))
    mcc = (tp * tn - fp * fn) / denominator if denominator else 0.0
    return {"f1": f1, "mcc": mcc}


def _pearson_from_sums(sums):
    n = sums["count"]
    if n < 2:
        return float("nan")
    cov = n * sums["sum_py"] - sums["sum_p"] * sums["sum_y"]
    var_p = n * sums["sum_pp"] - sums["sum_p"] ** 2
    var_y = n * sums["sum_yy"] - sums["sum_y"] ** 2
    if var_p <= 0 or var_y <= 0:
        return 0.0
    return cov / math.sqrt(var_p * var_y)


def _tsv(rows):
    """Rows as TSV with a header; tabs and line breaks inside texts become spaces."""
    if not rows:
        return ""
    columns = [k for k in rows[0] if k != "probabilities"]
    names = list(rows[0].get("probabilities", {}))

    def cell(value):
        if value is None:
            return ""
        return " ".join(value.split()) if isinstance(value, str) else str(value)

    lines = ["\t".join(columns + [f"p_{n}" for n in names])]
    for row in rows:
        probabilities = row.get("probabilities", {})
        lines.append("\t".join([cell(row[c]) for c in columns]
                               + [str(probabilities[n]) for n in names]))
    return "\n".join(lines) + "\n"
