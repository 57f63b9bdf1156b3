import keras
from keras import ops

from tfbert.layers.transformer_block import padding_bias


@keras.saving.register_keras_serializable(package="tfbert")
class SpanHead(keras.layers.Layer):
    """Start and end logits for extractive QA, with padding masked out.

    Called on `(sequence_output [B, S, H], input_mask [B, S])`; returns
    `(start_logits, end_logits)`, float32 [B, S] each, with padded positions at -1e4 below
    any real logit so softmax and argmax never pick them.
    """

    def __init__(self, hidden_dim, initializer_range=0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.initializer_range = initializer_range
        self.dense = keras.layers.Dense(
            2,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=initializer_range),
            dtype=self.dtype_policy,
            name="dense",
        )

    def build(self, input_shape=None):
        self.dense.build((None, None, self.hidden_dim))
        self.built = True

    def call(self, sequence_output, input_mask):
        # B=batch, S=sequence.
        logits = ops.cast(self.dense(sequence_output), "float32")   # [B, S, 2]
        penalty = padding_bias(input_mask)                          # [B, S]
        return logits[:, :, 0] + penalty, logits[:, :, 1] + penalty

    def get_config(self):
        config = super().get_config()
        config.update(hidden_dim=self.hidden_dim, initializer_range=self.initializer_range)
        return config
