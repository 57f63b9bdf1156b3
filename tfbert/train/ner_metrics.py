"""NER metrics: seqeval's entity-level scores on word tags, and a token accuracy for Keras.

Entity precision, recall and F1 are seqeval's defaults (conlleval-compatible chunking, the
scores Hugging Face's run_ner.py and most papers report), micro-averaged over entity types,
computed on word-level tags: each word's prediction is its first piece's.
"""

import keras
from keras import ops

IGNORE = -1


def entity_scores(gold, predicted):
    """Entity precision, recall, F1 (seqeval) and word accuracy of word tag sequences.

    `gold` and `predicted` are lists of sentences, each a list of tag strings of the same
    length.
    """
    from seqeval import metrics

    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted")
    for i, (g, p) in enumerate(zip(gold, predicted)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
    return {
        "precision": float(metrics.precision_score(gold, predicted, zero_division=0)),
        "recall": float(metrics.recall_score(gold, predicted, zero_division=0)),
        "f1": float(metrics.f1_score(gold, predicted, zero_division=0)),
        "word_accuracy": float(metrics.accuracy_score(gold, predicted)) if gold else 0.0,
    }


def entity_report(gold, predicted, digits=4):
    """seqeval's per-entity-type classification report, as text."""
    from seqeval import metrics

    return metrics.classification_report(gold, predicted, digits=digits, zero_division=0)


@keras.saving.register_keras_serializable(package="tfbert")
class TokenAccuracy(keras.metrics.Mean):
    """Accuracy over labelled positions only: labels equal to `ignore_class` are left out.

    Keras' SparseCategoricalAccuracy counts the IGNORE positions ([CLS], [SEP], padding,
    non-first word pieces) as wrong; this is the accuracy over the words' first pieces.
    """

    def __init__(self, ignore_class=IGNORE, name="accuracy", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.ignore_class = ignore_class

    def update_state(self, y_true, y_pred, sample_weight=None):
        # B=batch, S=sequence, C=classes.
        y_true = ops.cast(y_true, "int32")                                 # [B, S]
        predicted = ops.argmax(y_pred, axis=-1)                            # [B, S]
        mask = ops.cast(ops.not_equal(y_true, self.ignore_class), self.dtype)
        if sample_weight is not None:
            mask = mask * ops.cast(sample_weight, self.dtype)
        correct = ops.cast(ops.equal(ops.cast(predicted, "int32"), y_true), self.dtype)
        return super().update_state(correct, sample_weight=mask)

    def get_config(self):
        return {"ignore_class": self.ignore_class, "name": self.name, "dtype": self.dtype}
