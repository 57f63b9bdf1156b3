"""The encoder's dense layers: Keras Dense whose input gradient, under XLA on a CPU,
multiplies by a transposed copy of the kernel.

The backward pass of y = x W computes dx = dy W^T. XLA on a CPU hands that to Eigen with
the kernel as a transposed operand, which ran at 313-338 GFLOP/s on BERT-base's shapes
(batch 8 x 128 tokens, 2-core CPU) against 420 for the same matmul with the transposed
kernel already in memory (one shape measured; the forward matmuls ran at 385-421). Copying the kernel transposed costs less than that:
in interleaved A/Bs of the base pretraining step (trainer loop, batch 8 x 128) in one
process, the step took a median of 1,563 against 1,602 ms in fp32 with this layer against
the plain matmul (16 turns of 3 steps each), and 1,674 against 1,715 ms in bf16 with the
same gradient on every Keras Dense (6 turns of 3 steps). XLA folds a plain
transpose back into the matmul, so the copy sits in a conditional whose other branch
never runs (and is correct anyway). Elsewhere (no XLA, or a GPU or TPU, or a SavedModel)
the layer is keras.layers.Dense.
"""

import keras
import tensorflow as tf
from keras import ops
from tensorflow.python.ops import control_flow_util


def on_cpu_under_xla(variable):
    """Whether the graph being traced is compiled by XLA and `variable` lives on a CPU."""
    if not control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        return False
    handle = variable.value if isinstance(variable, keras.Variable) else variable
    return "CPU" in (getattr(handle, "device", "") or "").upper()


def matmul(x, kernel, variable):
    """x [rows, in] @ kernel [in, out]; under XLA on a CPU (where `variable`, the kernel's
    variable, lives) with the input gradient taken against a transposed copy."""
    if x.shape.rank != 2 or not on_cpu_under_xla(variable):
        return tf.matmul(x, kernel)
    return _matmul_transposed_input_grad(x, kernel)


@tf.custom_gradient
def _matmul_transposed_input_grad(x, kernel):
    def grad(dy):
        return tf.matmul(dy, transposed_copy(kernel, dy)), tf.matmul(x, dy, transpose_a=True)

    return tf.matmul(x, kernel), grad


def transposed_copy(kernel, dy):
    """kernel^T in a buffer of its own. The condition is true unless dy is NaN at [0, 0],
    a value XLA cannot know; the other branch gives the same transpose by a gather, which
    XLA does not fold away, so the conditional and its copy stay."""
    ok = tf.reduce_all(tf.equal(dy[:1, :1], dy[:1, :1]))
    return tf.cond(ok, lambda: tf.transpose(kernel), lambda: transposed_by_gather(kernel))


def transposed_by_gather(kernel):
    return tf.gather(tf.transpose(kernel), tf.range(tf.shape(kernel)[1]))


@keras.saving.register_keras_serializable(package="tfbert")
class Dense(keras.layers.Dense):
    """keras.layers.Dense, with `matmul`'s input gradient on rank-2 inputs."""

    def call(self, inputs, training=None):
        if self.lora_enabled or self.quantization_mode or len(inputs.shape) != 2:
            return super().call(inputs, training=training)
        x = matmul(inputs, ops.cast(self.kernel, self.compute_dtype), self.kernel)
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x
