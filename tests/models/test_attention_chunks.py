"""Under XLA on a CPU, TransformerBlock computes float32 attention in ATTENTION_CHUNKS
independent pieces (see tfbert/layers/transformer_block.py): the same values, gradients
and dropout mask as in one piece."""

import numpy as np
import pytest
import tensorflow as tf

from tfbert.layers import transformer_block
from tfbert.layers.transformer_block import TransformerBlock

BATCH, SEQ, HIDDEN, HEADS = 3, 12, 32, 4  # 12 attention rows: ten pieces of 1-2 rows
CHUNKS = 10
ONE_PIECE = 10**9  # as many pieces as that: too few rows, so the attention stays whole
POSITIONS = np.array([[0, 3, 3], [0, 9, 1], [0, 2, 11]], "int32")


@pytest.fixture(autouse=True)
def no_xnnpack_flags(monkeypatch):
    # Another test's bf16 training may have put XLA's XNNPACK flag in this process's
    # XLA_FLAGS; under XNNPACK's dots the attention stays in one piece.
    monkeypatch.delenv("XLA_FLAGS", raising=False)


def block_and_inputs(dtype=None):
    tf.keras.utils.set_random_seed(3)
    # Attention dropout only, so that the outputs depend on its mask.
    block = TransformerBlock(HIDDEN, HEADS, 2 * HIDDEN, dropout=0.0, attention_dropout=0.2,
                             dtype=dtype)
    block.build((None, None, HIDDEN))
    x = tf.constant(np.random.default_rng(0).normal(size=(BATCH, SEQ, HIDDEN)), "float32")
    mask = np.ones((BATCH, SEQ), "int32")
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    return block, x, tf.constant(mask)


def batched_matmuls(function, *args):
    graph = function.get_concrete_function(*args).graph
    return sum(op.type.startswith("BatchMatMul") for op in graph.get_operations())


def pieces(monkeypatch, chunks, min_rows=1):
    monkeypatch.setattr(transformer_block, "ATTENTION_CHUNKS", chunks)
    monkeypatch.setattr(transformer_block, "MIN_CHUNK_ROWS", min_rows)


def training_call(block, x, mask, chunks, seed, monkeypatch, jit_compile=True, **call):
    """(output, gradients of the input and every weight, batched matmuls traced) of one
    training call, its attention dropout seeded with `seed`."""
    pieces(monkeypatch, chunks)
    block.attention_dropout_layer.seed_generator.state.assign(seed)

    @tf.function(jit_compile=jit_compile)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = block(x, mask, training=True, **call)
            weights = tf.random.stateless_normal(tf.shape(y), seed=[1, 2])
            loss = tf.reduce_sum(y * weights)
        return y, tape.gradient(loss, [x] + block.trainable_variables)

    matmuls = batched_matmuls(step, x)
    y, grads = step(x)
    return y.numpy(), [g.numpy() for g in grads], matmuls


@pytest.mark.parametrize("call", [{}, {"query_positions": POSITIONS}],
                         ids=["all_rows", "query_positions"])
def test_pieces_give_the_values_gradients_and_dropout_of_one_piece(call, monkeypatch):
    block, x, mask = block_and_inputs()
    seed = block.attention_dropout_layer.seed_generator.state.numpy()
    y1, g1, matmuls1 = training_call(block, x, mask, ONE_PIECE, seed, monkeypatch, **call)
    y10, g10, matmuls10 = training_call(block, x, mask, CHUNKS, seed, monkeypatch, **call)
    # Forward and backward: the two batched matmuls and their gradients' four, per piece.
    assert matmuls1 == 2 * 3 and matmuls10 == CHUNKS * 2 * 3
    # Another seed draws another mask and changes the output: the mask matters, and the
    # pieces applied the one the whole drew.
    other, _, _ = training_call(block, x, mask, ONE_PIECE, seed + 1, monkeypatch, **call)
    assert np.abs(other - y1).max() > 1e-3
    np.testing.assert_allclose(y10, y1, rtol=1e-5, atol=1e-5)
    assert len(g10) == len(g1) == 1 + len(block.trainable_variables)
    for a, b in zip(g10, g1):
        assert np.abs(b).max() > 0
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


def test_one_piece_outside_xla_in_bf16_with_few_rows_and_under_xnnpack(monkeypatch):
    block, x, mask = block_and_inputs()
    seed = block.attention_dropout_layer.seed_generator.state.numpy()
    assert training_call(block, x, mask, CHUNKS, seed, monkeypatch, jit_compile=False)[2] == 6
    bf16, _, _ = block_and_inputs(dtype="mixed_bfloat16")
    in_xla = lambda layer: tf.function(lambda x: layer(x, mask), jit_compile=True)  # noqa: E731
    pieces(monkeypatch, CHUNKS)
    assert batched_matmuls(in_xla(bf16), x) == 2
    assert batched_matmuls(in_xla(block), x) == 2 * CHUNKS
    # 12 rows are fewer than two a piece.
    pieces(monkeypatch, CHUNKS, min_rows=2)
    assert batched_matmuls(in_xla(block), x) == 2
    # Under XNNPACK's dots (which bf16 training turns on for the process).
    pieces(monkeypatch, CHUNKS)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_xnnpack=true")
    assert batched_matmuls(in_xla(block), x) == 2


@pytest.mark.parametrize("hidden,heads,split", [(768, 12, True), (512, 8, True),
                                                (256, 4, False)], ids=["base", "small", "mini"])
def test_at_batch_8_base_and_small_attention_is_split_and_minis_is_not(hidden, heads, split):
    # [B*N] rows at batch 8 x 128: BERT-base 96, BERT-small 64, BERT-mini 32 (measured
    # slower in pieces).
    block = TransformerBlock(hidden, heads, 4 * hidden)
    block.build((None, None, hidden))
    x, mask = tf.zeros([8, 128, hidden]), tf.ones([8, 128], "int32")
    traced = tf.function(lambda x: block(x, mask), jit_compile=True)
    assert batched_matmuls(traced, x) == (2 * CHUNKS if split else 2)
