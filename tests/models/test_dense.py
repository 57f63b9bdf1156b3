import numpy as np
import pytest
import keras
import tensorflow as tf

from tfbert.layers import dense as dense_lib


def make_pair(activation="gelu", dtype="float32"):
    """tfbert's Dense and keras.layers.Dense with the same weights."""
    ours = dense_lib.Dense(48, activation=activation, dtype=dtype)
    theirs = keras.layers.Dense(48, activation=activation, dtype=dtype)
    ours.build((None, 32))
    theirs.build((None, 32))
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(32, 48)).astype("float32"), rng.normal(size=48).astype("float32")]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    return ours, theirs


def value_and_grads(layer, x, dy, jit_compile):
    @tf.function(jit_compile=jit_compile)
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(tf.cast(y, "float32") * dy)
        return y, tape.gradient(loss, [x] + layer.trainable_variables)

    return run(x)


def conditionals(layer, jit_compile):
    """The conditional ops in the traced gradient of `layer` on a [4, 32] input."""
    @tf.function(jit_compile=jit_compile)
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x))
        return tape.gradient(loss, x)

    graph = run.get_concrete_function(tf.ones([4, 32])).graph
    return {op.type for op in graph.get_operations()} & {"If", "StatelessIf"}


@pytest.mark.parametrize("jit_compile", [True, False])
def test_values_and_gradients_equal_keras_dense(jit_compile):
    ours, theirs = make_pair()
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(20, 32)).astype("float32"))
    dy = tf.constant(rng.normal(size=(20, 48)).astype("float32"))
    y1, g1 = value_and_grads(ours, x, dy, jit_compile)
    y2, g2 = value_and_grads(theirs, x, dy, jit_compile)
    np.testing.assert_allclose(y1.numpy(), y2.numpy(), rtol=1e-5, atol=1e-5)
    assert len(g1) == len(g2) == 3
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-4)


def test_under_xla_on_the_cpu_the_input_gradient_takes_a_transposed_copy(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    ours, _ = make_pair()
    # The copy sits in a conditional, which XLA keeps as a boundary.
    assert conditionals(ours, jit_compile=True)


def test_a_mixed_bfloat16_layer_takes_the_transposed_copy_too(monkeypatch):
    # Its kernel reads as an autocast bf16 copy with no device inside call; the layer
    # must look at the variable behind it.
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    ours, _ = make_pair(dtype="mixed_bfloat16")
    assert conditionals(ours, jit_compile=True)


def test_outside_xla_it_is_a_plain_matmul():
    ours, _ = make_pair()
    assert not conditionals(ours, jit_compile=False)


def test_the_other_branch_gives_the_same_transpose():
    kernel = tf.constant(np.arange(12, dtype="float32").reshape(3, 4))
    np.testing.assert_array_equal(dense_lib.transposed_by_gather(kernel).numpy(),
                                  tf.transpose(kernel).numpy())


def test_a_nan_at_the_corner_takes_the_other_branch_and_still_transposes():
    kernel = tf.constant(np.arange(12, dtype="float32").reshape(3, 4))
    for dy in ([[np.nan, 1.0], [2.0, 3.0]], [[0.5, 1.0], [2.0, 3.0]]):
        copy = tf.function(dense_lib.transposed_copy, jit_compile=True)(kernel, tf.constant(dy))
        np.testing.assert_array_equal(copy.numpy(), tf.transpose(kernel).numpy())


def test_rank_3_inputs_and_bf16_match_keras_dense():
    ours, theirs = make_pair(dtype="mixed_bfloat16")
    x = tf.constant(np.random.default_rng(2).normal(size=(2, 5, 32)).astype("float32"))
    np.testing.assert_array_equal(tf.cast(ours(x), "float32").numpy(),
                                  tf.cast(theirs(x), "float32").numpy())
    x2 = tf.reshape(x, [10, 32])
    y1, g1 = value_and_grads(ours, x2, tf.ones([10, 48]), True)
    y2, g2 = value_and_grads(theirs, x2, tf.ones([10, 48]), True)
    np.testing.assert_array_equal(tf.cast(y1, "float32").numpy(), tf.cast(y2, "float32").numpy())
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(tf.cast(a, "float32").numpy(), tf.cast(b, "float32").numpy(),
                                   rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("flags, expected", [
    ("", False),
    ("--xla_cpu_use_xnnpack=true", True),
    ("--xla_dump_to=/tmp/x --xla_cpu_use_xnnpack", True),
    ("--xla_cpu_use_xnnpack=false", False),
    ("--xla_cpu_use_xnnpack=true --xla_cpu_use_xnnpack=false", False),
    ("--xla_cpu_use_xnnpack_other=true", False),
])
def test_xnnpack_dots_reads_xla_flags(monkeypatch, flags, expected):
    monkeypatch.setenv("XLA_FLAGS", flags)
    assert dense_lib.xnnpack_dots() is expected


def test_under_xnnpack_bf16_takes_the_kernel_gradient_from_a_transposed_input(monkeypatch):
    # XNNPACK has no transposed left operand: dw = x^T dy reads a copy of x^T (in a
    # conditional), and dx = dy W^T is a plain matmul (XNNPACK transposes the right one).
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_xnnpack=true")
    ours, theirs = make_pair(dtype="mixed_bfloat16")
    assert conditionals(ours, jit_compile=True)
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(20, 32)).astype("float32"))
    dy = tf.constant(rng.normal(size=(20, 48)).astype("float32"))
    y1, g1 = value_and_grads(ours, x, dy, True)
    y2, g2 = value_and_grads(theirs, x, dy, True)
    np.testing.assert_array_equal(tf.cast(y1, "float32").numpy(), tf.cast(y2, "float32").numpy())
    assert len(g1) == len(g2) == 3
    for a, b in zip(g1, g2):
        a, b = tf.cast(a, "float32").numpy(), tf.cast(b, "float32").numpy()
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2 * np.abs(b).max())


def test_under_xnnpack_float32_is_a_plain_matmul(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_xnnpack=true")
    ours, theirs = make_pair()
    assert not conditionals(ours, jit_compile=True)
    x = tf.constant(np.random.default_rng(4).normal(size=(20, 32)).astype("float32"))
    dy = tf.ones([20, 48])
    _, g1 = value_and_grads(ours, x, dy, True)
    _, g2 = value_and_grads(theirs, x, dy, True)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-4)
