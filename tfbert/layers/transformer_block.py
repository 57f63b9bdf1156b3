import keras
import tensorflow as tf
from keras import ops

from tfbert.layers import dense as dense_lib
from tfbert.layers.activations import get_activation
from tfbert.layers.dropout import Dropout

# Under XLA on a CPU the attention is computed in this many independent pieces of its
# [B*N] rows. XLA's CPU runtime runs each batched matmul on one thread and hands ready ops
# to another thread only when more than eight are ready at once (kSplitThreshold in
# openxla/xla's xla/backends/cpu/runtime/thunk.h), so in one piece a layer's batched
# matmuls (and the two independent ones of each gradient pair) ran one after another while
# the other core slept: about 70 ms of one core's time a step in a scheduler trace of the
# base pretraining step (batch 8 x 128, 2-core CPU). Ten pieces is the fewest that leave
# more than eight ready. In that step in fp32, four processes taking turns (10 rounds of 3
# steps), it took 1,625 and 1,662 ms against 1,690 and 1,685 in one piece (44 ms less; 48
# in another such run), though in a run beside KerasHub on a faster machine both took
# 1,482-1,483 ms; 12, 16 and 24 pieces gained less or nothing (more pieces, more small ops
# to gather). Small pieces cost more than they save: BERT-small (64 rows at batch 8) took
# 276 and 274 against 282 and 285 ms, BERT-mini (32 rows, 3-4 a piece) 107 and 105 against
# 102 and 103 ms (8 rounds each), so the attention needs MIN_CHUNK_ROWS rows a piece to be
# split.
ATTENTION_CHUNKS = 10
MIN_CHUNK_ROWS = 6


@keras.saving.register_keras_serializable(package="tfbert")
class TransformerBlock(keras.layers.Layer):
    """One post-LayerNorm BERT encoder block with a fused QKV projection.

    Called on `(x, attention_mask)`: x float [B, S, H], attention_mask [B, S] with 1 for
    real tokens and 0 for padding (BERT's `input_mask`).
    """

    def __init__(
        self,
        hidden_dim,
        num_heads,
        intermediate_dim,
        activation="gelu",
        dropout=0.1,
        attention_dropout=0.1,
        initializer_range=0.02,
        layer_norm_epsilon=1e-12,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not a multiple of num_heads {num_heads}")
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.activation = activation
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.layer_norm_epsilon = layer_norm_epsilon
        self.head_dim = hidden_dim // num_heads

        init = keras.initializers.TruncatedNormal(stddev=initializer_range)
        dense = dict(kernel_initializer=init, dtype=self.dtype_policy)
        # One [H, 3H] matmul instead of three [H, H]: fewer kernel launches, same math.
        # tfbert's Dense: keras.layers.Dense with a faster input gradient under XLA on a
        # CPU (tfbert/layers/dense.py).
        self.qkv = dense_lib.Dense(3 * hidden_dim, name="qkv", **dense)
        self.attention_output = dense_lib.Dense(hidden_dim, name="attention_output", **dense)
        self.intermediate = dense_lib.Dense(
            intermediate_dim, activation=get_activation(activation), name="intermediate", **dense
        )
        self.output_dense = dense_lib.Dense(hidden_dim, name="output", **dense)
        # LayerNorm statistics in float32 even under a mixed policy.
        self.attention_layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype="float32", name="attention_layer_norm"
        )
        self.output_layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype="float32", name="output_layer_norm"
        )
        self.attention_dropout_layer = Dropout(attention_dropout, dtype=self.dtype_policy)
        self.dropout_layer = Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape=None):
        h = (None, None, self.hidden_dim)
        self.qkv.build(h)
        self.attention_output.build(h)
        self.attention_layer_norm.build(h)
        self.intermediate.build(h)
        self.output_dense.build((None, None, self.intermediate_dim))
        self.output_layer_norm.build(h)
        self.built = True

    def call(self, x, attention_mask, training=False, first_token_only=False,
             query_positions=None):
        """x [B, S, H] -> [B, S, H]; with `first_token_only`, [B, 1, H]: the output at
        the first position alone (its query attends to every key), which is all a
        classifier's pooler reads, for about a quarter of the block's work (the keys
        and values of every token). With `query_positions` int [B, Q], [B, Q, H]: the
        outputs at those positions alone, the same way (the pretraining heads read the
        first token and the masked positions)."""
        # B=batch, S=sequence, Q=query positions (S, 1 or given), T=B*S tokens, H=hidden,
        # N=heads, D=head size.
        if query_positions is not None:
            return self._attend_from(x, attention_mask, query_positions, training)
        batch, seq = tf.shape(x)[0], tf.shape(x)[1]
        # The dense layers see [tokens, features]: a rank-2 MatMul whose bias add
        # TensorFlow's graph optimizer fuses into it, where a rank-3 input would go
        # through tensordot's reshapes. On a graph (a SavedModel served on CPU) that
        # was ~40% fewer ops and ~7% less latency for MiniLM at batch 1; XLA fuses
        # either form.
        tokens = tf.reshape(x, [-1, self.hidden_dim])                  # [T, H]
        qkv = self.qkv(tokens)                                         # [T, 3*H]
        # The kernel's columns are [3, N, D]. One transpose gives the heads of all
        # three (einsum would transpose q, k, v and the context separately).
        qkv = tf.reshape(qkv, [batch, seq, 3, self.num_heads, self.head_dim])
        q, k, v = tf.unstack(self._heads(tf.transpose(qkv, [2, 0, 3, 1, 4]), seq))  # 3 x [B*N, S, D]
        residual = tokens                                              # [B*Q, H]
        if first_token_only:
            q = q[:, :1]                                               # [B*N, 1, D]
            residual = x[:, 0]                                         # [B, H]
        out = self._attention_and_feed_forward(q, k, v, residual, attention_mask, training)
        return tf.reshape(out, [batch, 1 if first_token_only else seq, self.hidden_dim])

    def _attend_from(self, x, attention_mask, query_positions, training):
        """`call` with `query_positions`: the queries (and the rest of the block) at the
        given rows only, keys and values at every row."""
        batch, seq = tf.shape(x)[0], tf.shape(x)[1]
        queries = tf.shape(query_positions)[1]
        rows = tf.gather(x, ops.cast(query_positions, "int32"), batch_dims=1)  # [B, Q, H]
        residual = tf.reshape(rows, [-1, self.hidden_dim])             # [B*Q, H]
        # The fused kernel's first H columns project the queries, the other 2H the keys
        # and values: two matmuls, so that the queries of the other rows are not computed.
        variable = self.qkv.kernel
        kernel = ops.cast(variable, self.compute_dtype)                # [H, 3*H]
        bias = ops.cast(self.qkv.bias, self.compute_dtype)
        q = dense_lib.matmul(residual, kernel[:, :self.hidden_dim], variable) + bias[:self.hidden_dim]
        q = tf.reshape(q, [batch, queries, self.num_heads, self.head_dim])
        q = self._heads(tf.transpose(q, [0, 2, 1, 3]), queries)        # [B*N, Q, D]
        tokens = tf.reshape(x, [-1, self.hidden_dim])                  # [T, H]
        kv = dense_lib.matmul(tokens, kernel[:, self.hidden_dim:], variable) + bias[self.hidden_dim:]
        kv = tf.reshape(kv, [batch, seq, 2, self.num_heads, self.head_dim])
        k, v = tf.unstack(self._heads(tf.transpose(kv, [2, 0, 3, 1, 4]), seq))  # 2 x [B*N, S, D]
        out = self._attention_and_feed_forward(q, k, v, residual, attention_mask, training)
        return tf.reshape(out, [batch, queries, self.hidden_dim])

    def _heads(self, x, length):
        """[..., B, N, S, D] -> [..., B*N, S, D] (S = `length`; the leading axes are
        static: none, or q/k/v's 3 or k/v's 2): the attention matmuls' batch in one
        leading dimension. XLA gives a transpose a permuted layout (a bitcast of its
        input), and under XLA's XNNPACK dots (tfbert/train/cpu_xla.py) a 4-D batched
        matmul reading such an operand fails to compile ("LHS batch dims [0,1] must be in
        the most major dimensions"); the reshape gives it a dense [B*N, S, D] one. Without
        XNNPACK it is the same speed: pretraining step, batch 8 x 128, 2-core CPU,
        interleaved in one process, 112 against 112 ms (mini bf16) and 1,485 against
        1,485 ms (base fp32) a step, medians."""
        return tf.reshape(x, [*x.shape[:-4], -1, length, self.head_dim])

    def _attention_and_feed_forward(self, q, k, v, residual, attention_mask, training):
        """The block from the heads' q [B*N, Q, D], k, v [B*N, S, D] and the residual
        rows [B*Q, H] of the queries: [B*Q, H]."""
        queries = tf.shape(q)[1]
        if self._attends_in_chunks(q):
            context = self._attention_in_chunks(q, k, v, attention_mask, training)
        else:
            context = self._attention(q, k, v, attention_mask, training)  # [B*N, Q, D]
        context = tf.reshape(context, [-1, self.num_heads, queries, self.head_dim])
        context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [-1, self.hidden_dim])
        attn = self.dropout_layer(self.attention_output(context), training=training)
        h = ops.cast(self.attention_layer_norm(residual + attn), self.compute_dtype)
        ffn = self.output_dense(self.intermediate(h))                  # [B*Q, H]
        ffn = self.dropout_layer(ffn, training=training)
        return ops.cast(self.output_layer_norm(h + ffn), self.compute_dtype)

    def _attention(self, q, k, v, attention_mask, training):
        """The heads' context [B*N, Q, D] from q [B*N, Q, D], k, v [B*N, S, D]."""
        queries, seq = tf.shape(q)[1], tf.shape(k)[1]
        scores = tf.matmul(q, k, transpose_b=True)                     # [B*N, Q, S]
        scores = tf.reshape(scores, [-1, self.num_heads, queries, seq])  # [B, N, Q, S]
        padding = padding_bias(attention_mask)[:, None, None, :]       # [B, 1, 1, S]
        probs = self._probabilities(scores, padding)
        probs = self.attention_dropout_layer(probs, training=training)
        probs = tf.reshape(probs, [-1, queries, seq])                  # [B*N, Q, S]
        return tf.matmul(probs, v)

    def _attends_in_chunks(self, q):
        """Whether `_attention_in_chunks` takes the attention: float32 under XLA on a CPU
        (without XNNPACK's dots, which bfloat16 training turns on), with enough rows known
        when traced (see ATTENTION_CHUNKS)."""
        rows = q.shape[0]
        return (rows is not None and rows >= ATTENTION_CHUNKS * MIN_CHUNK_ROWS
                and self.compute_dtype == "float32" and not dense_lib.xnnpack_dots()
                and dense_lib.on_cpu_under_xla(self.qkv.kernel))

    def _attention_in_chunks(self, q, k, v, attention_mask, training):
        """`_attention` in ATTENTION_CHUNKS independent pieces of the [B*N] rows: the same
        values, the same dropout mask (drawn whole, then split)."""
        rows, queries, seq = q.shape[0], tf.shape(q)[1], tf.shape(k)[1]
        sizes = [rows // ATTENTION_CHUNKS + (i < rows % ATTENTION_CHUNKS)
                 for i in range(ATTENTION_CHUNKS)]
        # Row b*N + n is head n of sequence b.
        padding = tf.repeat(padding_bias(attention_mask), self.num_heads, axis=0)[:, None, :]
        keep = self.attention_dropout_layer.draw_mask(tf.stack([rows, queries, seq]), training)
        keeps = [None] * ATTENTION_CHUNKS if keep is None else tf.split(keep, sizes)
        contexts = []
        for q_i, k_i, v_i, padding_i, keep_i in zip(
                tf.split(q, sizes), tf.split(k, sizes), tf.split(v, sizes),
                tf.split(padding, sizes), keeps):
            probs = self._probabilities(tf.matmul(q_i, k_i, transpose_b=True), padding_i)
            probs = self.attention_dropout_layer.apply_mask(probs, keep_i)
            contexts.append(tf.matmul(probs, v_i))
        return tf.concat(contexts, 0)

    def _probabilities(self, scores, padding):
        """Softmax of the scaled scores plus `padding` (float32, broadcast to them)."""
        scores = scores * ops.cast(1.0 / self.head_dim**0.5, scores.dtype)
        # Softmax in float32: bf16/fp16 logits lose too much precision before exp.
        scores = ops.cast(scores, "float32") + padding
        return ops.cast(ops.softmax(scores, axis=-1), self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim,
            num_heads=self.num_heads,
            intermediate_dim=self.intermediate_dim,
            activation=self.activation,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            initializer_range=self.initializer_range,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config


def padding_bias(attention_mask):
    """float32 [B, S]: -10000 at padded positions, 0 elsewhere, added to the attention
    scores (and by SpanHead to its logits). Google's modeling.py adds -10000 too; a large
    finite value keeps a fully padded row finite (uniform) instead of NaN."""
    return (1.0 - ops.cast(attention_mask, "float32")) * -10000.0
