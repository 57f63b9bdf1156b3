"""tfbert.layers.Dropout: Keras' dropout law with a hashed keep mask (see its module)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfbert.layers.dropout import Dropout, keep_mask


def test_keep_rate_scale_and_independence():
    keras.utils.set_random_seed(0)
    layer = Dropout(0.1)
    x = tf.ones((64, 128, 256))
    a = layer(x, training=True).numpy()
    b = layer(x, training=True).numpy()
    # Kept values are scaled by 1 / (1 - rate), dropped ones are 0.
    np.testing.assert_allclose(np.unique(a), [0.0, 1 / 0.9], rtol=1e-6)
    kept_a, kept_b = a > 0, b > 0
    n = kept_a.size  # 2.1M elements: the keep rate is within 0.1% of 0.9
    assert abs(kept_a.mean() - 0.9) < 0.001 and abs(kept_b.mean() - 0.9) < 0.001
    # A new mask each call, independent of the last one: P(both kept) = 0.81.
    assert not np.array_equal(kept_a, kept_b)
    assert abs((kept_a & kept_b).mean() - 0.81) < 0.002
    # Neighbouring elements are independent too (no structure in the index hash).
    flat = kept_a.reshape(-1)
    assert abs((flat[1:] & flat[:-1]).mean() - 0.81) < 0.002
    assert abs(np.corrcoef(flat[1:], flat[:-1])[0, 1]) < 0.005, n


@pytest.mark.parametrize("rate", [0.01, 0.5, 0.9])
def test_other_rates(rate):
    mask = keep_mask(tf.constant([1 << 20]), tf.constant([3, 7]), rate).numpy()
    assert abs(mask.mean() - (1 - rate)) < 0.003


def test_same_mask_with_and_without_xla():
    shape, seed = tf.constant([8, 128, 256]), tf.constant([123456789, -42])
    eager = keep_mask(shape, seed, 0.1)
    xla = tf.function(lambda s, k: keep_mask(s, k, 0.1), jit_compile=True)(shape, seed)
    graph = tf.function(lambda s, k: keep_mask(s, k, 0.1))(shape, seed)
    np.testing.assert_array_equal(eager.numpy(), xla.numpy())
    np.testing.assert_array_equal(eager.numpy(), graph.numpy())


def test_seeded_runs_repeat_and_inference_is_identity():
    x = tf.random.normal((4, 16, 32))
    keras.utils.set_random_seed(5)
    first = Dropout(0.2)(x, training=True)
    keras.utils.set_random_seed(5)
    second = Dropout(0.2)(x, training=True)
    np.testing.assert_array_equal(first.numpy(), second.numpy())
    np.testing.assert_array_equal(Dropout(0.2)(x).numpy(), x.numpy())
    np.testing.assert_array_equal(Dropout(0.0)(x, training=True).numpy(), x.numpy())


def test_gradient_is_the_mask_times_the_scale():
    keras.utils.set_random_seed(1)
    layer = Dropout(0.25)
    x = tf.random.normal((32, 64))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        total = tf.reduce_sum(y)
    grad = tape.gradient(total, x).numpy()
    kept = y.numpy() != 0
    np.testing.assert_allclose(grad, np.where(kept, 1 / 0.75, 0.0), rtol=1e-6)


def test_mixed_precision_and_config_round_trip():
    layer = Dropout(0.1, seed=3, dtype="mixed_bfloat16")
    y = layer(tf.ones((4, 8)), training=True)
    assert y.dtype == tf.bfloat16
    clone = Dropout.from_config(layer.get_config())
    assert (clone.rate, clone.seed) == (0.1, 3)
    with pytest.raises(ValueError, match="rate"):
        Dropout(1.0)
