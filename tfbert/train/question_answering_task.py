"""Extractive question answering (SQuAD v1.1 / v2.0) for the trainer.

Data: `data.format: squad` reads SQuAD JSON files (data.train_files / data.eval_files,
comma-separated globs); `data.format: tfds` reads data.tfds_name (default squad/v1.1, or
squad/v2.0 with version_2_with_negative) splits data.train_split / data.eval_split.
Questions become doc-stride windows on the host once (tfbert/data/squad.py).

The trainer's loop sees windows: the loss is google-research/bert's (start cross-entropy +
end cross-entropy) / 2 averaged over the global batch, and eval reports it with start and
end accuracy over trainer.eval_steps batches of windows. EM and F1 need every window of a
question and host-side post-processing: `host_metrics(model)` (which the trainer's
evaluate() adds) runs the model over all evaluation windows on this host and scores the
answers with the official SQuAD scripts, and
`predict(model, output_file)` writes run_squad's predictions, n-best and null-odds files.
"""

import json
import math
import os
import sys

import numpy as np
import tensorflow as tf

from tfbert import features
from tfbert.data import squad
from tfbert.fileio import write_text_atomic
from tfbert.models import presets
from tfbert.train import qa_postprocess
from tfbert.train.tasks import make_preprocessor, sparse_ce_and_correct

FORMATS = ("squad", "tfds")
# The label that marks real windows (1) and evaluation padding (0).
WEIGHT = "weight"


def _expand(patterns, key):
    if not patterns:
        raise ValueError(f"{key} is empty; set it in the recipe or with --set")
    paths = []
    for pattern in patterns.split(","):
        matched = sorted(tf.io.gfile.glob(pattern.strip()))
        if not matched:
            raise FileNotFoundError(f"{key}: no file matches {pattern.strip()}")
        paths.extend(matched)
    return paths


class QuestionAnsweringTask:
    """Start/end span prediction with BertQuestionAnswerer."""

    name = "question_answering"
    metric_names = ("loss", "start_accuracy", "end_accuracy")

    def __init__(self, config):
        self.config = config
        data = config.data
        if data.format not in FORMATS:
            raise ValueError(
                f"data.format {data.format!r} is not a question answering format; "
                f"valid: {', '.join(FORMATS)}"
            )
        self._preprocessor = None
        self._examples = {}
        self._features = {}

    # === Model and data ===

    def build_model(self):
        from tfbert.models.bert_question_answerer import BertQuestionAnswerer

        model_config = self.config.model
        preset = model_config.preset
        model = None
        if os.path.isdir(preset):
            info = presets.load_task_info(preset)
            if info is not None and info["task"] == self.name:
                model = presets.load_task_model(
                    preset, dtype=model_config.dtype, **model_config.encoder_overrides)
        if model is None:
            encoder = presets.load_encoder(
                preset, dtype=model_config.dtype, **model_config.encoder_overrides)
            model = BertQuestionAnswerer(encoder)
        # BertQuestionAnswerer freezes the pooler (it gets no gradient): it keeps its
        # pretrained weights and the replicas have no missing gradient to all-reduce.
        return model

    def preprocessor(self):
        """The model directory's tokenizer, or data.vocab_file's for a size name."""
        if self._preprocessor is None:
            self._preprocessor = make_preprocessor(self.config)
        return self._preprocessor

    def examples(self, training):
        """The SquadExamples of the training or evaluation data (read once)."""
        if training not in self._examples:
            data = self.config.data
            v2 = data.version_2_with_negative
            if data.format == "squad":
                key = "data.train_files" if training else "data.eval_files"
                files = data.train_files if training else data.eval_files
                examples = []
                for path in _expand(files, key):
                    examples.extend(squad.read_squad_json(path, v2))
            else:
                name = data.tfds_name or ("squad/v2.0" if v2 else "squad/v1.1")
                split = data.train_split if training else data.eval_split
                examples = squad.load_tfds_examples(
                    name, split, data_dir=data.tfds_data_dir or None, version_2_with_negative=v2)
            if not examples:
                which = "training" if training else "evaluation"
                raise ValueError(f"the {which} data has no questions")
            self._examples[training] = examples
        return self._examples[training]

    def features(self, training):
        """The doc-stride windows (squad.SquadFeatures) of examples(training)."""
        if training not in self._features:
            data = self.config.data
            self._features[training] = squad.convert_examples_to_features(
                self.examples(training), self.preprocessor(),
                max_seq_length=data.max_seq_length, doc_stride=data.doc_stride,
                max_query_length=data.max_query_length, training=training,
            )
        return self._features[training]

    def num_eval_steps(self):
        """Steps that cover the evaluation windows once (the last batch padded)."""
        return max(1, math.ceil(len(self.features(False)) / self.config.trainer.global_batch_size))

    def dataset(self, input_context, training):
        """Per-replica batches of (model inputs, {start_logits, end_logits, weight}).

        Training shuffles and repeats the windows. Evaluation reads them once in order,
        then weight-0 padding windows forever: every window counts exactly once when
        trainer.eval_steps >= num_eval_steps(), and the loop may run any number of steps.
        """
        data = self.config.data
        squad_features = self.features(training)
        batch_size = self.config.trainer.global_batch_size
        if input_context is not None:
            batch_size = input_context.get_per_replica_batch_size(batch_size)
        inputs, labels = squad_features.inputs(), squad_features.labels()
        labels[WEIGHT] = np.ones(len(squad_features), np.float32)
        dataset = tf.data.Dataset.from_tensor_slices((inputs, labels))
        if input_context is not None and input_context.num_input_pipelines > 1:
            dataset = dataset.shard(input_context.num_input_pipelines,
                                    input_context.input_pipeline_id)
        if training:
            dataset = dataset.shuffle(
                max(1, min(data.shuffle_buffer, len(squad_features))), seed=data.seed,
                reshuffle_each_iteration=True)
            dataset = dataset.repeat()
        else:
            dataset = dataset.concatenate(self._padding().repeat())
        dataset = dataset.batch(batch_size, drop_remainder=True)
        return dataset.prefetch(tf.data.AUTOTUNE)

    def _padding(self):
        """One weight-0 window: [CLS] [SEP] [SEP], labels at [CLS]."""
        seq = self.config.data.max_seq_length
        preprocessor = self.preprocessor()
        ids = np.zeros(seq, np.int32)
        ids[:3] = [preprocessor.cls_id, preprocessor.sep_id, preprocessor.sep_id]
        mask = np.zeros(seq, np.int32)
        mask[:3] = 1
        inputs = {features.INPUT_WORD_IDS: ids, features.INPUT_MASK: mask,
                  features.INPUT_TYPE_IDS: np.zeros(seq, np.int32)}
        labels = {features.START_LOGITS: np.int32(0), features.END_LOGITS: np.int32(0),
                  WEIGHT: np.float32(0.0)}
        return tf.data.Dataset.from_tensors((inputs, labels))

    # === Loss and window-level metrics ===

    @staticmethod
    def denominators(labels):
        return {"windows": tf.reduce_sum(labels[WEIGHT])}

    def step(self, model, inputs, labels, denominators, training):
        outputs = model(inputs, training=training)
        # B=batch, S=sequence; positions and weights [B], logits [B, S].
        weight = labels[WEIGHT]
        start_ce, start_correct = sparse_ce_and_correct(
            labels[features.START_LOGITS], outputs[features.START_LOGITS])
        end_ce, end_correct = sparse_ce_and_correct(
            labels[features.END_LOGITS], outputs[features.END_LOGITS])
        start_loss_sum = tf.reduce_sum(start_ce * weight)
        end_loss_sum = tf.reduce_sum(end_ce * weight)
        # Google's run_squad: (mean start loss + mean end loss) / 2 over the global batch;
        # `denominators` are already summed over replicas.
        loss = (start_loss_sum + end_loss_sum) / (2.0 * tf.maximum(denominators["windows"], 1.0))
        sums = {
            "start_loss_sum": start_loss_sum,
            "end_loss_sum": end_loss_sum,
            "start_correct": tf.reduce_sum(start_correct * weight),
            "end_correct": tf.reduce_sum(end_correct * weight),
            "windows": tf.reduce_sum(weight),
        }
        return loss, sums

    @staticmethod
    def metrics(sums):
        count = max(sums["windows"], 1.0)
        return {
            "loss": (sums["start_loss_sum"] + sums["end_loss_sum"]) / (2.0 * count),
            "start_accuracy": sums["start_correct"] / count,
            "end_accuracy": sums["end_correct"] / count,
        }

    # === Whole questions: answers, EM / F1, prediction files ===

    def task_info(self):
        data = self.config.data
        return {
            "seq_length": data.max_seq_length,
            "doc_stride": data.doc_stride,
            "max_query_length": data.max_query_length,
            "max_answer_length": data.max_answer_length,
            "version_2_with_negative": data.version_2_with_negative,
            "null_score_diff_threshold": data.null_score_diff_threshold,
        }

    def answer(self, model):
        """(predictions, nbest, null_odds) for the evaluation data; see qa_postprocess."""
        data = self.config.data
        squad_features = self.features(False)
        start_logits, end_logits = qa_postprocess.predict_logits(
            model, squad_features, batch_size=self.config.trainer.global_batch_size)
        return qa_postprocess.postprocess(
            self.examples(False), squad_features, start_logits, end_logits,
            n_best_size=data.n_best_size, max_answer_length=data.max_answer_length,
            version_2_with_negative=data.version_2_with_negative,
            null_score_diff_threshold=data.null_score_diff_threshold,
        )

    def host_metrics(self, model):
        """EM and F1 (percent) over every evaluation question, by the official scripts."""
        unlabelled = [e for e in self.examples(False) if not (e.answers or e.is_impossible)]
        if unlabelled:
            raise ValueError(f"{unlabelled[0].source}: no gold answers to score against; "
                             "use --mode=predict for unlabelled questions")
        predictions, _, null_odds = self.answer(model)
        return qa_postprocess.evaluate(
            self.examples(False), predictions, null_odds,
            version_2_with_negative=self.config.data.version_2_with_negative)

    def predict(self, model, output_file):
        """Writes {qas_id: answer} to output_file (SQuAD's predictions format).

        Beside it, like run_squad: <name>_nbest.json, and for SQuAD 2.0
        <name>_null_odds.json (the official v2.0 script's --na-prob-file). When the data
        has gold answers, prints and returns EM and F1; else returns {}.
        """
        data = self.config.data
        predictions, nbest, null_odds = self.answer(model)
        root = os.path.splitext(output_file)[0]
        files = {output_file: predictions, f"{root}_nbest.json": nbest}
        if data.version_2_with_negative:
            files[f"{root}_null_odds.json"] = null_odds
        for path, content in files.items():
            write_text_atomic(path, json.dumps(content, indent=2, ensure_ascii=False) + "\n")
        examples = self.examples(False)
        if not all(e.answers or e.is_impossible for e in examples):
            return {}  # unlabelled questions: nothing to score
        metrics = qa_postprocess.evaluate(
            examples, predictions, null_odds,
            version_2_with_negative=data.version_2_with_negative)
        print("predict | " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
              file=sys.stdout, flush=True)
        return metrics
