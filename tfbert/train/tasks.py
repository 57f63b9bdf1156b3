"""What the trainer trains: each task builds its model and datasets and computes its loss.

A task's `denominators(labels)` gives per-replica counts (e.g. real masked tokens,
examples) that the trainer sums over replicas before the step, outside any XLA cluster.
`step(model, inputs, labels, denominators, training)` then returns (loss, sums) for one
replica's batch: `loss` is this replica's share of the global loss (its gradients summed
over replicas give the gradient of the global mean), and `sums` are additive statistics
(loss sums, correct counts, example counts) that the trainer adds up over replicas and
steps to report metrics.
"""

import os

import tensorflow as tf

from tfbert import features
from tfbert.models import presets


def make_preprocessor(config):
    """The tokenizer of a task: the model directory's, or data.vocab_file's for a size name."""
    from tfbert.text import BertPreprocessor

    data = config.data
    preset = config.model.preset
    if os.path.isdir(preset):
        return BertPreprocessor.from_preset(preset, seq_length=data.max_seq_length)
    if not data.vocab_file:
        raise ValueError("data.vocab_file is required when model.preset is a size name")
    if not os.path.isfile(data.vocab_file):
        raise FileNotFoundError(f"data.vocab_file {data.vocab_file}: no such file")
    return BertPreprocessor(data.vocab_file, seq_length=data.max_seq_length,
                            lowercase=data.lowercase)


def sparse_ce_and_correct(labels, logits):
    """Softmax cross-entropy of integer `labels` and 1.0 where the label's logit is its row's
    largest (else 0.0), both float32 in the labels' shape. Gradient: softmax - one_hot.

    An exact tie with the maximum counts as correct (argmax would pick the first of the
    tied classes). Labels must lie in [0, classes); one outside is never correct and, as
    in TensorFlow's op on accelerators, not checked (its loss is the log-sum-exp). Written
    for XLA, where it is cheaper than TensorFlow's fused cross-entropy plus an argmax; on
    BERT-mini's pretraining step (160 x 30,522 MLM logits, 2-core CPU), the loss and
    accuracy's forward + backward took 120-142 ms with those and 89-112 ms with a one-hot
    select for the label's logit (min-median of one isolated A/B); a later A/B measured
    85-108 ms for the select and 75-94 ms as written here:
    - one max serves the loss's shift and the accuracy. XLA's argmax is a (value, index)
      reduction on one thread (8-16 ms of that step).
    - the math runs on the transposed [classes, rows]. The MLM head's logits come out of
      a [V, H] x [H, rows] matmul and are transposed; here the two transposes cancel, so
      the loss reads, and its gradient writes, the matmul's own layout. For the other
      tasks (2 NSP classes, a window's positions, NER tags) it copies a small tensor.
    - the label's logit is gathered, one per row, and the gradient is written out. XLA on
      CPU turns a reduction over 30,522 classes into a two-stage reduce-window that no
      producer fuses into, so a one-hot select summed over the classes wrote, and read
      back, a whole [classes, rows] tensor; the gradient's select stays inside the one
      fusion that writes the gradient.
    """
    classes = tf.shape(logits)[-1]
    logits = tf.transpose(tf.reshape(tf.cast(logits, tf.float32), [-1, classes]))  # [C, N]
    flat_labels = tf.reshape(tf.cast(labels, tf.int32), [-1])                       # [N]
    in_range = (flat_labels >= 0) & (flat_labels < classes)
    rows = tf.range(tf.size(flat_labels))

    @tf.custom_gradient
    def ce_and_hit(logits):
        top = tf.reduce_max(logits, axis=0)
        exp = tf.exp(logits - top)
        total = tf.reduce_sum(exp, axis=0)
        picked = tf.gather_nd(logits, tf.stack([tf.where(in_range, flat_labels, 0), rows], 1))
        label_logit = tf.where(in_range, picked - top, 0.0)  # <= 0; 0 when it is the max
        ce = tf.math.log(total) - label_logit
        hit = tf.cast((label_logit >= 0.0) & in_range, tf.float32)

        def grad(d_ce, d_hit):  # hit is a step function: no gradient
            is_label = tf.range(classes)[:, None] == flat_labels[None, :]
            return exp * (d_ce / total) - tf.where(is_label, d_ce, 0.0)

        return (ce, hit), grad

    ce, hit = ce_and_hit(logits)
    return tf.reshape(ce, tf.shape(labels)), tf.reshape(hit, tf.shape(labels))


class PretrainingTask:
    """Masked LM + next sentence prediction from google-research/bert TFRecords."""

    name = "pretraining"
    metric_names = ("mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy")

    def __init__(self, config):
        self.config = config

    def build_model(self):
        from tfbert.models.bert_pretrainer import BertPretrainer

        model_config = self.config.model
        preset = model_config.preset
        if os.path.isdir(preset) and presets.load_task_info(preset) is not None:
            info = presets.load_task_info(preset)
            if info["task"] == "pretraining":
                return presets.load_task_model(
                    preset, dtype=model_config.dtype, **model_config.encoder_overrides
                )
        encoder = presets.load_encoder(
            preset, dtype=model_config.dtype, **model_config.encoder_overrides
        )
        return BertPretrainer(encoder)

    def dataset(self, input_context, training):
        from tfbert.data.records import pretraining_dataset

        data = self.config.data
        files = data.train_files if training else data.eval_files
        if data.dynamic_masking:
            return self._dynamic_dataset(files, input_context, training)
        return pretraining_dataset(
            files.split(","),
            global_batch_size=self.config.trainer.global_batch_size,
            max_seq_length=data.max_seq_length,
            max_predictions_per_seq=data.max_predictions_per_seq,
            input_context=input_context,
            is_training=training,
            shuffle_buffer=data.shuffle_buffer,
            seed=data.seed,
            deterministic=data.deterministic,
        )

    def _dynamic_dataset(self, files, input_context, training):
        from tfbert.data.dynamic_masking import dynamic_pretraining_dataset
        from tfbert.text.bert_preprocessor import BertPreprocessor

        data = self.config.data
        vocab = data.vocab_file or os.path.join(self.config.model.preset, presets.VOCAB_FILE)
        lowercase = data.lowercase
        if not data.vocab_file and os.path.isdir(self.config.model.preset):
            lowercase = presets.load_config(self.config.model.preset).lowercase
        return dynamic_pretraining_dataset(
            files.split(","),
            BertPreprocessor(vocab, seq_length=data.max_seq_length, lowercase=lowercase),
            global_batch_size=self.config.trainer.global_batch_size,
            max_seq_length=data.max_seq_length,
            max_predictions_per_seq=data.max_predictions_per_seq,
            masked_lm_prob=data.masked_lm_prob,
            nsp=data.nsp,
            whole_word_masking=data.whole_word_masking,
            short_seq_prob=data.short_seq_prob,
            input_context=input_context,
            is_training=training,
            seed=data.seed if data.deterministic else None,
            shuffle_buffer=data.shuffle_buffer,
        )

    @staticmethod
    def denominators(labels):
        return {
            "mlm_weight": tf.reduce_sum(
                tf.cast(labels[features.RECORD_MASKED_LM_WEIGHTS], tf.float32)),
            "examples": tf.cast(tf.shape(labels[features.RECORD_MASKED_LM_IDS])[0], tf.float32),
        }

    def step(self, model, inputs, labels, denominators, training):
        # The two heads' logits alone: the last block runs for the rows they read.
        outputs = model.pretraining_logits(inputs, training=training)
        # Google's MLM loss: mean cross-entropy over real (weight 1) predictions of the
        # whole global batch; `denominators` are already summed over replicas.
        weights = tf.cast(labels[features.RECORD_MASKED_LM_WEIGHTS], tf.float32)
        mlm_ids = labels[features.RECORD_MASKED_LM_IDS]
        mlm_logits = outputs[features.MLM_LOGITS]
        mlm_ce, mlm_correct = sparse_ce_and_correct(mlm_ids, mlm_logits)
        mlm_loss_sum = tf.reduce_sum(mlm_ce * weights)
        mlm_weight = tf.reduce_sum(weights)
        # Google's records store the label as a [1] feature: [B, 1] here.
        nsp_labels = tf.reshape(labels[features.RECORD_NEXT_SENTENCE_LABELS], [-1])
        nsp_logits = outputs[features.NSP_LOGITS]
        nsp_ce, nsp_correct = sparse_ce_and_correct(nsp_labels, nsp_logits)
        nsp_loss_sum = tf.reduce_sum(nsp_ce)
        loss = mlm_loss_sum / tf.maximum(denominators["mlm_weight"], 1.0)
        if self.config.data.nsp:
            # Without NSP (RoBERTa-style packing) the labels are all 0: no loss from them.
            loss += nsp_loss_sum / denominators["examples"]
        sums = {
            "mlm_loss_sum": mlm_loss_sum,
            "mlm_weight": mlm_weight,
            "mlm_correct": tf.reduce_sum(mlm_correct * weights),
            "nsp_loss_sum": nsp_loss_sum,
            "nsp_correct": tf.reduce_sum(nsp_correct),
            "nsp_count": tf.cast(tf.shape(nsp_labels)[0], tf.float32),
        }
        return loss, sums

    def metrics(self, sums):
        mlm_weight = max(sums["mlm_weight"], 1.0)
        nsp_count = max(sums["nsp_count"], 1.0)
        metrics = {
            "mlm_loss": sums["mlm_loss_sum"] / mlm_weight,
            "mlm_accuracy": sums["mlm_correct"] / mlm_weight,
        }
        if self.config.data.nsp:
            metrics["nsp_loss"] = sums["nsp_loss_sum"] / nsp_count
            metrics["nsp_accuracy"] = sums["nsp_correct"] / nsp_count
        return metrics


# The trainer's tasks by name (the `task:` key of a recipe). Fine-tuning tasks are
# named "module:Class" and imported when used, so pretraining never loads their data code.
TASKS = {
    "pretraining": PretrainingTask,
    "classification": "tfbert.train.classification_task:ClassificationTask",
    "token_classification": "tfbert.train.token_classification_task:TokenClassificationTask",
    "question_answering": "tfbert.train.question_answering_task:QuestionAnsweringTask",
}


def get_task(config):
    if config.task not in TASKS:
        raise ValueError(f"unknown task {config.task!r}; valid: {', '.join(TASKS)}")
    task = TASKS[config.task]
    if isinstance(task, str):
        import importlib

        module, name = task.split(":")
        task = getattr(importlib.import_module(module), name)
    return task(config)
