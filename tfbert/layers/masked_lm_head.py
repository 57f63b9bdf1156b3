import keras
import tensorflow as tf
from keras import ops

from tfbert.layers.activations import get_activation
from tfbert.layers.dense import backing_variable, on_cpu_under_xla


@keras.saving.register_keras_serializable(package="tfbert")
class MaskedLMHead(keras.layers.Layer):
    """BERT's masked-LM head on the masked positions only.

    Gathers `masked_lm_positions` first, so the transform (dense, activation, LayerNorm)
    and the [H, V] decoder run on P rows per example rather than S. The decoder is tied
    to the word embeddings (`embeddings`, set by the owning model and not serialised)
    plus an output bias.

    Called on `(sequence_output [B, S, H], masked_lm_positions int [B, P])`; returns
    logits [B, P, V]. With `masked_lm_positions=None`, the rows [B, P, H] are the
    ones at the masked positions already.
    """

    def __init__(
        self,
        vocabulary_size,
        hidden_dim,
        activation="gelu",
        initializer_range=0.02,
        layer_norm_epsilon=1e-12,
        embeddings=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.activation = activation
        self.initializer_range = initializer_range
        self.layer_norm_epsilon = layer_norm_epsilon
        self.embeddings = embeddings  # a keras.layers.Embedding, shared with the encoder
        self.transform = keras.layers.Dense(
            hidden_dim,
            activation=get_activation(activation),
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=initializer_range),
            dtype=self.dtype_policy,
            name="transform",
        )
        self.layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype="float32", name="layer_norm"
        )

    def build(self, input_shape=None):
        self.transform.build((None, None, self.hidden_dim))
        self.layer_norm.build((None, None, self.hidden_dim))
        self.output_bias = self.add_weight(
            name="output_bias", shape=(self.vocabulary_size,), initializer="zeros"
        )
        self.built = True

    def call(self, sequence_output, masked_lm_positions=None):
        # B=batch, S=sequence, P=predictions, H=hidden, V=vocabulary.
        if self.embeddings is None:
            raise ValueError("MaskedLMHead needs the encoder's word embeddings (embeddings=)")
        x = sequence_output
        if masked_lm_positions is not None:
            positions = ops.cast(masked_lm_positions, "int32")
            x = ops.take_along_axis(x, positions[:, :, None], axis=1)  # [B, P, H]
        x = self.layer_norm(self.transform(x))
        table, bias = self.embeddings.embeddings, self.output_bias
        dtype = self.compute_dtype
        if dtype != "float32" and on_cpu_under_xla(table):
            # XLA on a CPU runs this matmul in float32 whatever its operands (it has no
            # half-precision matmul of its own, and casts from float32 on both sides keep
            # it from XNNPACK's bfloat16 one), so there the decoder stays float32 and
            # skips the casts around it: BERT-mini's bfloat16 pretraining step took a
            # median of 104 ms, against 109 with a bfloat16 decoder and 104 with the
            # whole head in float32 (interleaved A/B, 32 steps each).
            dtype = "float32"
            table, bias = backing_variable(table), backing_variable(bias)
        x = ops.cast(x, dtype)
        batch, predictions = tf.shape(x)[0], tf.shape(x)[1]
        rows = tf.reshape(x, [-1, self.hidden_dim])                               # [B*P, H]
        table = ops.cast(table, dtype)                                            # [V, H]
        bias = ops.cast(bias, dtype)                                              # [V]
        # The decoder as [V, H] x [H, B*P], the vocabulary as the rows of the product,
        # then one transpose. On CPU the matmul the other way round ([B*P, H] x [H, V],
        # few rows and 30,522 columns) ran at a third of the speed: BERT-mini's
        # forward + backward of this decoder and its loss went from 138 to 107 ms in
        # XLA. The bias is added before the transpose, which keeps XLA from folding the
        # transpose back into the matmul. Same values either way.
        logits = tf.transpose(tf.matmul(table, rows, transpose_b=True) + bias[:, None])
        return tf.reshape(logits, [batch, predictions, self.vocabulary_size])     # [B, P, V]

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary_size=self.vocabulary_size,
            hidden_dim=self.hidden_dim,
            activation=self.activation,
            initializer_range=self.initializer_range,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config
