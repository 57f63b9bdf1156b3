import keras
from keras import ops

from tfbert import features
from tfbert.models.bert_task import BertTask


def _logits(head, dropout_layer, pooled, training=None):
    """The head on the pooled output [B, H]: float32 logits [B, num_classes]."""
    return ops.cast(head(dropout_layer(pooled, training=training)), "float32")


@keras.saving.register_keras_serializable(package="tfbert")
class BertClassifier(BertTask):
    """Sentence (or sentence-pair) classification on the pooled output.

    Returns float32 logits [B, num_classes]; `num_classes=1` is regression (as STS-B),
    the single output being the predicted value.
    """

    def __init__(self, encoder, num_classes, dropout=0.1, **kwargs):
        dropout_layer = keras.layers.Dropout(dropout, name="classifier_dropout")
        head = keras.layers.Dense(
            num_classes,
            kernel_initializer=keras.initializers.TruncatedNormal(
                stddev=encoder.initializer_range
            ),
            dtype=encoder.layers_dtype_policy,
            name="classifier",
        )
        inputs = self.encoder_inputs()
        pooled = encoder(inputs)[features.POOLED_OUTPUT]
        logits = _logits(head, dropout_layer, pooled)
        super().__init__(
            encoder, {"num_classes": num_classes, "dropout": dropout},
            inputs=inputs, outputs=logits, **kwargs,
        )
        self.classifier = head
        self.classifier_dropout = dropout_layer

    def call(self, inputs, training=False):
        # The functional graph above, except that the encoder runs its last block for
        # the first token only (BertEncoder.pooled_output): same logits, less work.
        pooled = self.encoder.pooled_output(inputs, training=training)
        return _logits(self.classifier, self.classifier_dropout, pooled, training)
