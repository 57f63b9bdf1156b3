"""The encoder's dense layers: Keras Dense whose input gradient, under XLA on a CPU,
multiplies by a transposed copy of the kernel.

The backward pass of y = x W computes dx = dy W^T. XLA on a CPU hands that to Eigen with
the kernel as a transposed operand, which ran at 313-338 GFLOP/s on BERT-base's shapes
(batch 8 x 128 tokens, 2-core CPU) against 420 for the same matmul with the transposed
kernel already in memory (one shape measured; the forward matmuls ran at 385-421).
Copying the kernel transposed costs less than that: in interleaved A/Bs of the base
pretraining step (trainer loop, batch 8 x 128) in one process, the step took a median of
1,563 against 1,602 ms in fp32 with this layer against the plain matmul (16 turns of 3
steps each), and 1,674 against 1,715 ms in bf16 with the same gradient on every Keras
Dense (6 turns of 3 steps). XLA folds a plain transpose back into the matmul, so the
copy sits in a conditional whose other branch never runs (and is correct anyway).
Elsewhere (no XLA, or a GPU or TPU, or a SavedModel) the layer is keras.layers.Dense.

Under XLA's XNNPACK dots (XLA_FLAGS=--xla_cpu_use_xnnpack=true, which `tfbert.train`
sets for bfloat16 training on CPUs with AVX512-BF16: see `tfbert.train.cpu_xla`) the
shapes that are slow change. XNNPACK multiplies by a transposed right operand as fast
as by a plain one, so dx takes the kernel as it is; it has no transposed left operand,
so the kernel gradient dw = x^T dy would fall back to XLA's own matmul, and in bfloat16
it takes x^T from a copy instead (x is the smaller operand: B*S x in, against in x out
for the kernel). Measured one matmul at a time, 1024 x 768 x 3072, 2-core CPU with
AVX512-BF16: bf16 XNNPACK 737 GFLOP/s with both operands plain, 837 with the right one
transposed, and 366 with the left one transposed (not XNNPACK's), against 379 for XLA's
own bf16 matmul, which converts to float32. In float32 XNNPACK was slower than XLA's
own (271 against 398 GFLOP/s plain), so there the flag stays off.
"""

import os

import keras
import tensorflow as tf
from keras import ops
from tensorflow.python.ops import control_flow_util


XNNPACK_FLAG = "--xla_cpu_use_xnnpack"


def xla_flag_value(flag):
    """The value XLA_FLAGS gives `flag` ("" where it is named bare), or None where it does
    not name it (the last setting wins, as in XLA).

    XLA reads XLA_FLAGS once, at the process's first XLA compile; this reads the variable
    now, which is what XLA saw unless the variable changed after that first compile.
    """
    value = None
    for item in os.environ.get("XLA_FLAGS", "").split():
        name, _, setting = item.partition("=")
        if name == flag:
            value = setting
    return value


def xnnpack_setting():
    """What XLA_FLAGS says of XLA's XNNPACK dots: True, False, or None where it does not
    name the flag."""
    value = xla_flag_value(XNNPACK_FLAG)
    return None if value is None else value.lower() in ("", "true", "1")


def xnnpack_dots():
    """Whether XLA_FLAGS turns XLA's XNNPACK dots on."""
    return bool(xnnpack_setting())


def on_cpu_under_xla(variable):
    """Whether the graph being traced is compiled by XLA and `variable` lives on a CPU."""
    if not control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        return False
    variable = backing_variable(variable)
    return "CPU" in (getattr(variable, "device", "") or "").upper()


def backing_variable(variable):
    """The tf.Variable behind a Keras variable (other values as they are). In a
    mixed-precision layer's call a Keras variable reads as its autocast copy, a
    half-precision tensor with no device; the tf.Variable reads as itself."""
    if isinstance(variable, keras.Variable):
        backing = getattr(variable, "_value", None)
        return variable.value if backing is None else backing
    return variable


def matmul(x, kernel, variable):
    """x [rows, in] @ kernel [in, out]; under XLA on a CPU (where `variable`, the kernel's
    variable, lives) with the input gradient taken against a transposed copy."""
    if x.shape.rank != 2 or not on_cpu_under_xla(variable):
        return tf.matmul(x, kernel)
    if not xnnpack_dots():
        return _matmul_transposed_input_grad(x, kernel)
    if kernel.dtype == tf.bfloat16:
        return _matmul_transposed_kernel_grad(x, kernel)
    return tf.matmul(x, kernel)


@tf.custom_gradient
def _matmul_transposed_input_grad(x, kernel):
    def grad(dy):
        return tf.matmul(dy, transposed_copy(kernel, dy)), tf.matmul(x, dy, transpose_a=True)

    return tf.matmul(x, kernel), grad


@tf.custom_gradient
def _matmul_transposed_kernel_grad(x, kernel):
    def grad(dy):
        return tf.matmul(dy, kernel, transpose_b=True), tf.matmul(transposed_copy(x, dy), dy)

    return tf.matmul(x, kernel), grad


def transposed_copy(matrix, dy):
    """matrix^T in a buffer of its own. The condition is true unless dy is NaN at [0, 0],
    a value XLA cannot know; the other branch gives the same transpose by a gather, which
    XLA does not fold away, so the conditional and its copy stay."""
    ok = tf.reduce_all(tf.equal(dy[:1, :1], dy[:1, :1]))
    return tf.cond(ok, lambda: tf.transpose(matrix), lambda: transposed_by_gather(matrix))


def transposed_by_gather(matrix):
    return tf.gather(tf.transpose(matrix), tf.range(tf.shape(matrix)[1]))


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
