"""The tasks' cross-entropy and accuracy (`sparse_ce_and_correct`) against TensorFlow's
sparse softmax cross-entropy, its gradient, and argmax == label."""

import numpy as np
import pytest
import tensorflow as tf

from tfbert.train.tasks import sparse_ce_and_correct


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("shape", [[64, 2], [4, 40, 1000], [3, 5, 20, 11]])
def test_loss_gradient_and_accuracy_match_tensorflow_and_argmax(shape, jit_compile):
    rng = np.random.default_rng(len(shape))
    logits = (3 * rng.normal(size=shape)).astype("float32")
    # Half the labels are each row's argmax, the rest random: both outcomes occur.
    labels = np.where(rng.random(shape[:-1]) < 0.5, logits.argmax(-1),
                      rng.integers(0, shape[-1], shape[:-1])).astype("int64")
    weights = rng.random(shape[:-1]).astype("float32")

    def both(fn, logits):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            ce, hit = fn(tf.constant(labels), logits)
            total = tf.reduce_sum(ce * weights)
        return ce, hit, tape.gradient(total, logits)

    def reference(labels, logits):
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(labels, tf.int32), logits=logits)
        return ce, tf.cast(tf.argmax(logits, -1) == labels, tf.float32)

    ours = tf.function(lambda x: both(sparse_ce_and_correct, x), jit_compile=jit_compile)
    ce, hit, grad = [t.numpy() for t in ours(tf.constant(logits))]
    ref_ce, ref_hit, ref_grad = [t.numpy() for t in both(reference, tf.constant(logits))]
    assert ce.shape == hit.shape == tuple(shape[:-1]) and hit.dtype == np.float32
    assert 0 < ref_hit.mean() < 1
    np.testing.assert_array_equal(hit, ref_hit)
    np.testing.assert_allclose(ce, ref_ce, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-6)


def test_bfloat16_logits_give_float32_results_and_a_tie_with_the_max_counts_as_correct():
    logits = tf.constant([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]], tf.bfloat16)
    # Row 0: label 2 ties with class 1 for the max (argmax would say 1); row 1: wrong.
    ce, hit = sparse_ce_and_correct(tf.constant([2, 1], tf.int32), logits)
    np.testing.assert_array_equal(hit.numpy(), [1.0, 0.0])
    assert ce.dtype == tf.float32
    expected = [np.log(np.exp(1 - 3) + 2), np.log(1 + np.exp(-2) + np.exp(-3)) + 2]
    np.testing.assert_allclose(ce.numpy(), expected, rtol=1e-6)


def test_a_label_outside_the_classes_is_never_correct():
    logits = tf.zeros([3, 4])  # every class ties with the max
    _, hit = sparse_ce_and_correct(tf.constant([0, 4, -1]), logits)
    np.testing.assert_array_equal(hit.numpy(), [1.0, 0.0, 0.0])
