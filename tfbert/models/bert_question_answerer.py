import keras

from tfbert import features
from tfbert.layers.span_head import SpanHead
from tfbert.models.bert_task import BertTask


@keras.saving.register_keras_serializable(package="tfbert")
class BertQuestionAnswerer(BertTask):
    """Extractive QA (SQuAD): a dict of `start_logits` and `end_logits`, float32 [B, S].

    Padded positions are pushed far below any real logit. Spans come from the sequence
    output, so the encoder's pooler gets no gradient: it is frozen here (as HF's
    BertForQuestionAnswering has none), which keeps `model.fit` from warning about it
    and the optimizer from keeping slots for it. An encoder shared with a classifier
    shares that freeze; set `encoder.pooler.trainable = True` there.
    """

    def __init__(self, encoder, **kwargs):
        encoder.pooler.trainable = False
        head = SpanHead(
            hidden_dim=encoder.hidden_dim,
            initializer_range=encoder.initializer_range,
            dtype=encoder.layers_dtype_policy,
            name="span_head",
        )
        inputs = self.encoder_inputs()
        sequence = encoder(inputs)[features.SEQUENCE_OUTPUT]
        start, end = head(sequence, inputs[features.INPUT_MASK])
        outputs = {features.START_LOGITS: start, features.END_LOGITS: end}
        super().__init__(encoder, {}, inputs=inputs, outputs=outputs, **kwargs)
        self.span_head = head
