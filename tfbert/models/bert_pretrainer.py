import keras
from keras import ops

from tfbert import features
from tfbert.layers.masked_lm_head import MaskedLMHead
from tfbert.models.bert_task import BertTask


@keras.saving.register_keras_serializable(package="tfbert")
class BertPretrainer(BertTask):
    """BERT with its two pretraining heads: masked LM and next sentence prediction.

    Inputs: the encoder's three inputs plus `masked_lm_positions` int32 [B, P].
    Outputs: the encoder's outputs plus `mlm_logits` [B, P, V] and `nsp_logits` [B, 2],
    both float32.
    """

    def __init__(self, encoder, **kwargs):
        mlm_head = MaskedLMHead(
            vocabulary_size=encoder.vocabulary_size,
            hidden_dim=encoder.hidden_dim,
            activation=encoder.activation,
            initializer_range=encoder.initializer_range,
            layer_norm_epsilon=encoder.layer_norm_epsilon,
            embeddings=encoder.word_embeddings,
            dtype=encoder.layers_dtype_policy,
            name="mlm_head",
        )
        nsp_head = keras.layers.Dense(
            2,
            kernel_initializer=keras.initializers.TruncatedNormal(
                stddev=encoder.initializer_range
            ),
            dtype=encoder.layers_dtype_policy,
            name="nsp_head",
        )
        inputs = self.encoder_inputs()
        inputs[features.MASKED_LM_POSITIONS] = keras.Input(
            shape=(None,), dtype="int32", name=features.MASKED_LM_POSITIONS
        )
        encoded = encoder({name: inputs[name] for name in features.MODEL_INPUTS})
        outputs = dict(encoded)
        mlm = mlm_head(encoded[features.SEQUENCE_OUTPUT], inputs[features.MASKED_LM_POSITIONS])
        outputs[features.MLM_LOGITS] = ops.cast(mlm, "float32")
        nsp = nsp_head(encoded[features.POOLED_OUTPUT])
        outputs[features.NSP_LOGITS] = ops.cast(nsp, "float32")
        super().__init__(encoder, {}, inputs=inputs, outputs=outputs, **kwargs)
        self.mlm_head = mlm_head
        self.nsp_head = nsp_head

    def pretraining_logits(self, inputs, training=False):
        """`mlm_logits` and `nsp_logits` of `self(inputs)` alone (a dict), with the
        encoder's last block computed only at the rows the heads read: the first token
        (pooler, NSP) and the masked positions (`BertEncoder.sequence_output_at`). Same
        logits and gradients, less work: the pretraining task's step calls this."""
        positions = ops.cast(inputs[features.MASKED_LM_POSITIONS], "int32")      # [B, P]
        rows = ops.concatenate([ops.zeros_like(positions[:, :1]), positions], axis=1)
        x = self.encoder.sequence_output_at(inputs, rows, training=training)
        pooled = self.encoder.pooler(x[:, 0, :])
        return {
            features.MLM_LOGITS: ops.cast(self.mlm_head(x[:, 1:]), "float32"),
            features.NSP_LOGITS: ops.cast(self.nsp_head(pooled), "float32"),
        }
