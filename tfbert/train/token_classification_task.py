"""Token classification (NER) for the trainer: `task: token_classification`.

Data (data.format): `conll` reads data.train_files / data.eval_files (comma-separated
globs of CoNLL files); `tfds` reads data.tfds_name's data.train_split / data.eval_split,
words from data.text_column and tags from data.label_column (conll2003: tokens, ner).

Labels: data.label_names, else the label list of a fine-tuned token classification
model directory given as model.preset, else the dataset's own (a TFDS ClassLabel) or every
tag of the training data sorted with "O" first. They go into task.json with the sequence
length.

Only the first word piece of a word is labelled (see tfbert.data.ner). The loss is the
mean cross-entropy over the labelled pieces of the whole global batch; the evaluation
loop reports it and the accuracy over labelled pieces, and `host_metrics` adds seqeval's
entity precision, recall and F1 over every sentence of the evaluation data, with words
beyond max_seq_length predicted "O" (`dropped_words` counts them).
"""

import math
import os
import sys

import tensorflow as tf

from tfbert.data import ner
from tfbert.models import presets
from tfbert.train import ner_metrics
from tfbert.train.tasks import make_preprocessor, sparse_ce_and_correct

FORMATS = ("conll", "tfds")
TASK_NAME = "token_classification"


class TokenClassificationTask:
    """Fine-tunes a BertTokenClassifier on CoNLL files or a TFDS NER dataset."""

    name = TASK_NAME
    metric_names = ("loss", "accuracy")

    def __init__(self, config):
        self.config = config
        data = config.data
        if data.format not in FORMATS:
            raise ValueError(
                f"data.format {data.format!r} is not a token classification format; "
                f"valid: {', '.join(FORMATS)}"
            )
        if data.format == "tfds" and not data.tfds_name:
            raise ValueError("data.format is tfds but data.tfds_name is empty (e.g. conll2003)")
        self._examples = {}
        self.label_names = self._resolve_label_names()
        self._preprocessor = None

    # === Data ===

    def _has_split(self, training):
        data = self.config.data
        if data.format == "tfds":
            return bool(data.train_split if training else data.eval_split)
        return bool(data.train_files if training else data.eval_files)

    def examples(self, training):
        """The training or evaluation sentences (read once)."""
        if training not in self._examples:
            data = self.config.data
            if data.format == "tfds":
                split = data.train_split if training else data.eval_split
                self._examples[training] = ner.load_tfds(
                    data.tfds_name, split, data_dir=data.tfds_data_dir,
                    words_feature=data.text_column, tags_feature=data.label_column,
                )
            else:
                files = data.train_files if training else data.eval_files
                if not files:
                    key = "train_files" if training else "eval_files"
                    raise ValueError(f"data.{key} is empty; set it in the recipe or with --set")
                self._examples[training] = ner.read_conll(files)
        return self._examples[training]

    def _preset_task_info(self):
        preset = self.config.model.preset
        if os.path.isdir(preset):
            info = presets.load_task_info(preset)
            if info is not None and info["task"] == TASK_NAME:
                return info
        return None

    def _resolve_label_names(self):
        data = self.config.data
        if data.label_names:
            names = list(data.label_names)
        elif self._preset_task_info() and self._preset_task_info().get("label_names"):
            names = list(self._preset_task_info()["label_names"])
        elif self._has_split(training=True):
            names = ner.collect_label_names(self.examples(training=True))
        else:
            raise ValueError(
                "token_classification needs its label names: set data.label_names or the "
                "training data, or start from a fine-tuned model directory (model.preset)"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"data.label_names has duplicates: {names}")
        return names

    @property
    def preprocessor(self):
        if self._preprocessor is None:
            self._preprocessor = make_preprocessor(self.config)
        return self._preprocessor

    def num_eval_steps(self):
        """Steps that cover the evaluation sentences once (the last batch padded)."""
        return max(1, math.ceil(len(self.examples(False)) / self.config.trainer.global_batch_size))

    def dataset(self, input_context, training):
        data = self.config.data
        batch_size = self.config.trainer.global_batch_size
        if input_context is not None:
            batch_size = input_context.get_per_replica_batch_size(batch_size)
        if training:
            return ner.ner_dataset(
                self.examples(True), self.preprocessor, self.label_names, batch_size,
                shuffle=True, repeat=True, drop_remainder=True,
                shuffle_buffer=data.shuffle_buffer, seed=data.seed, input_context=input_context,
            )
        # One pass, then empty sentences: any number of eval steps counts each sentence once.
        return ner.ner_dataset(
            self.examples(False), self.preprocessor, self.label_names, batch_size,
            pad_forever=True, input_context=input_context,
        )

    # === Model ===

    def build_model(self):
        from tfbert.models.bert_token_classifier import BertTokenClassifier

        model_config = self.config.model
        if self._preset_task_info() is not None:
            model = presets.load_task_model(
                model_config.preset, dtype=model_config.dtype, **model_config.encoder_overrides)
            if model.num_classes != len(self.label_names):
                raise ValueError(
                    f"{model_config.preset} predicts {model.num_classes} labels but the data "
                    f"has {len(self.label_names)}: {', '.join(self.label_names)}"
                )
        else:
            encoder = presets.load_encoder(
                model_config.preset, dtype=model_config.dtype, **model_config.encoder_overrides)
            # The head's dropout is the encoder's, as HF's classifier_dropout defaults to
            # hidden_dropout_prob (so encoder_overrides.dropout=0 turns all of it off).
            model = BertTokenClassifier(encoder, num_classes=len(self.label_names),
                                        dropout=encoder.dropout)
        # BertTokenClassifier freezes the pooler, which token labels never reach.
        if self.config.data.max_seq_length > model.encoder.max_sequence_length:
            raise ValueError(
                f"data.max_seq_length {self.config.data.max_seq_length} is longer than the "
                f"encoder's max_position_embeddings {model.encoder.max_sequence_length}"
            )
        return model

    def task_info(self):
        return {"label_names": list(self.label_names),
                "seq_length": self.config.data.max_seq_length}

    # === Loss and metrics ===

    @staticmethod
    def denominators(labels):
        # Labelled pieces (one per kept word) of this replica's batch.
        return {"labelled": tf.reduce_sum(tf.cast(labels != ner.IGNORE, tf.float32))}

    def step(self, model, inputs, labels, denominators, training):
        # B=batch, S=seq_length, C=classes.
        logits = model(inputs, training=training)                          # [B, S, C]
        labels = tf.cast(labels, tf.int32)                                 # [B, S]
        weights = tf.cast(labels != ner.IGNORE, tf.float32)                # [B, S]
        # IGNORE is no class id: sparse_ce_and_correct gives it a finite loss, never a
        # hit, and its weight is 0.
        ce, hit = sparse_ce_and_correct(labels, logits)
        loss_sum = tf.reduce_sum(ce * weights)
        # The mean over the global batch's labelled pieces (summed over replicas).
        loss = loss_sum / tf.maximum(denominators["labelled"], 1.0)
        sums = {
            "loss_sum": loss_sum,
            "labelled": tf.reduce_sum(weights),
            "correct": tf.reduce_sum(hit * weights),
        }
        return loss, sums

    @staticmethod
    def metrics(sums):
        labelled = max(sums["labelled"], 1.0)
        return {"loss": sums["loss_sum"] / labelled, "accuracy": sums["correct"] / labelled}

    # === Whole-sentence evaluation and prediction (host side) ===

    def _predict_eval(self, model):
        examples = self.examples(training=False)
        ner.tag_ids(examples, self.label_names)  # unknown tags fail naming file and line
        ids = ner.predict_word_ids(model, self.preprocessor, examples.words,
                                   batch_size=self.config.trainer.global_batch_size)
        dropped = sum(1 for row in ids for i in row if i < 0)
        predicted = [[self.label_names[i] if i >= 0 else ner.OUTSIDE for i in row] for row in ids]
        return examples, predicted, dropped

    def host_metrics(self, model):
        """seqeval entity precision, recall and F1 over every evaluation sentence."""
        examples, predicted, dropped = self._predict_eval(model)
        scores = ner_metrics.entity_scores(examples.tags, predicted)
        return {"precision": scores["precision"], "recall": scores["recall"],
                "f1": scores["f1"], "dropped_words": float(dropped)}

    def predict(self, model, output_file):
        """Writes `word TAB gold TAB predicted` CoNLL lines for the evaluation data.

        Words beyond max_seq_length pieces (or with no piece) are predicted "O".
        Returns the entity scores of the predictions.
        """
        examples, predicted, dropped = self._predict_eval(model)
        ner.write_conll(output_file, examples.words, examples.tags, predicted)
        scores = ner_metrics.entity_scores(examples.tags, predicted)
        print(
            f"predicted {len(examples)} sentences ({dropped} words beyond "
            f"max_seq_length={self.config.data.max_seq_length} pieces predicted O) | "
            + " ".join(f"{k} {v:.4f}" for k, v in scores.items()),
            file=sys.stdout, flush=True,
        )
        return scores
