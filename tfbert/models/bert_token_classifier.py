import keras
from keras import ops

from tfbert import features
from tfbert.models.bert_task import BertTask


@keras.saving.register_keras_serializable(package="tfbert")
class BertTokenClassifier(BertTask):
    """Per-token classification (NER) on the sequence output: float32 logits [B, S, C].

    Token labels never reach the encoder's pooler, so it is frozen here (HF's
    BertForTokenClassification has none): `model.fit` does not warn about its missing
    gradients and the optimizer keeps no slots for it. An encoder shared with a
    classifier shares that freeze; set `encoder.pooler.trainable = True` there.
    """

    def __init__(self, encoder, num_classes, dropout=0.1, **kwargs):
        encoder.pooler.trainable = False
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
        sequence = encoder(inputs)[features.SEQUENCE_OUTPUT]
        logits = ops.cast(head(dropout_layer(sequence)), "float32")
        super().__init__(
            encoder, {"num_classes": num_classes, "dropout": dropout},
            inputs=inputs, outputs=logits, **kwargs,
        )
        self.classifier = head
