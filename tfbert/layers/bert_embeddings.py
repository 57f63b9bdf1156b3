import keras
from keras import ops

from tfbert.layers.dropout import Dropout


@keras.saving.register_keras_serializable(package="tfbert")
class BertEmbeddings(keras.layers.Layer):
    """Word + learned position + token type embeddings, then LayerNorm and dropout.

    Called on `(input_word_ids, input_type_ids)`, both int32 [B, S] with S up to
    `max_sequence_length`.
    """

    def __init__(
        self,
        vocabulary_size,
        hidden_dim,
        max_sequence_length=512,
        type_vocabulary_size=2,
        dropout=0.1,
        initializer_range=0.02,
        layer_norm_epsilon=1e-12,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.max_sequence_length = max_sequence_length
        self.type_vocabulary_size = type_vocabulary_size
        self.dropout = dropout
        self.initializer_range = initializer_range
        self.layer_norm_epsilon = layer_norm_epsilon

        init = keras.initializers.TruncatedNormal(stddev=initializer_range)
        self.word_embeddings = keras.layers.Embedding(
            vocabulary_size, hidden_dim, embeddings_initializer=init,
            dtype=self.dtype_policy, name="word_embeddings",
        )
        self.position_embeddings = keras.layers.Embedding(
            max_sequence_length, hidden_dim, embeddings_initializer=init,
            dtype=self.dtype_policy, name="position_embeddings",
        )
        self.type_embeddings = keras.layers.Embedding(
            type_vocabulary_size, hidden_dim, embeddings_initializer=init,
            dtype=self.dtype_policy, name="type_embeddings",
        )
        # LayerNorm statistics in float32 even under a mixed policy.
        self.layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype="float32", name="layer_norm"
        )
        self.dropout_layer = Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape=None):
        self.word_embeddings.build((None, None))
        self.position_embeddings.build((None,))
        self.type_embeddings.build((None, None))
        self.layer_norm.build((None, None, self.hidden_dim))
        self.built = True

    def call(self, input_word_ids, input_type_ids, training=False):
        # B=batch, S=sequence, H=hidden.
        seq_length = ops.shape(input_word_ids)[1]
        if isinstance(seq_length, int) and seq_length > self.max_sequence_length:
            # Under XLA (and on GPUs) the position lookup would clamp silently.
            raise ValueError(
                f"sequences of {seq_length} tokens are longer than the model's "
                f"max_sequence_length {self.max_sequence_length}; use a shorter seq_length"
            )
        positions = ops.arange(seq_length, dtype="int32")                 # [S]
        x = self.word_embeddings(input_word_ids)                          # [B, S, H]
        x = x + ops.expand_dims(self.position_embeddings(positions), 0)   # [B, S, H]
        x = x + self.type_embeddings(input_type_ids)                      # [B, S, H]
        x = self.layer_norm(x)
        x = ops.cast(x, self.compute_dtype)
        return self.dropout_layer(x, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary_size=self.vocabulary_size,
            hidden_dim=self.hidden_dim,
            max_sequence_length=self.max_sequence_length,
            type_vocabulary_size=self.type_vocabulary_size,
            dropout=self.dropout,
            initializer_range=self.initializer_range,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config
