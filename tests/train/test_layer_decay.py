"""Layer-wise learning-rate decay: each layer's update is scaled by its own rate."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfbert
from tfbert.train.layer_decay import layer_scales, layerwise


def tiny_classifier():
    keras.utils.set_random_seed(0)
    encoder = tfbert.BertEncoder.from_preset(
        "tiny", vocabulary_size=50, num_layers=2, hidden_dim=16, num_heads=2,
        intermediate_dim=32, max_sequence_length=16)
    return tfbert.BertClassifier(encoder, num_classes=2)


def test_scales_follow_depth():
    model = tiny_classifier()
    scales = {v.path: s for v, s in layer_scales(model, 0.5)}
    assert scales["embeddings/word_embeddings/embeddings"] == 0.125  # 0.5 ** (L + 1)
    assert scales["transformer_layer_0/qkv/kernel"] == 0.25          # 0.5 ** (L - 0)
    assert scales["transformer_layer_1/output_layer_norm/gamma"] == 0.5
    assert scales["pooler/kernel"] == scales["classifier/bias"] == 1.0
    assert len(scales) == len(model.trainable_weights)
    with pytest.raises(ValueError, match="layer decay must be in"):
        layer_scales(model, 0.0)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_first_step_moves_each_layer_by_its_rate(weight_decay):
    model = tiny_classifier()
    lr = 1e-2
    optimizer = layerwise(keras.optimizers.AdamW)(learning_rate=lr, weight_decay=weight_decay)
    optimizer.build(model.trainable_variables)
    scales = layer_scales(model, 0.5)
    optimizer.set_learning_rate_scales(scales)
    before = [v.numpy().copy() for v in model.trainable_variables]
    # Adam's first step moves every element by lr * sign(gradient) (here +1).
    optimizer.apply_gradients(zip([tf.ones_like(v) for v in model.trainable_variables],
                                  model.trainable_variables))
    for (variable, scale), old in zip(scales, before):
        # Decoupled weight decay uses the variable's own (scaled) rate, as PyTorch's
        # per-group AdamW does.
        expected = old - lr * scale * weight_decay * old - lr * scale
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-4, atol=1e-7,
                                   err_msg=variable.path)


def test_unscaled_optimizer_is_plain_adamw():
    a, b = tiny_classifier(), tiny_classifier()
    plain = keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=0.01)
    wrapped = layerwise(keras.optimizers.AdamW)(learning_rate=1e-3, weight_decay=0.01)
    wrapped.set_learning_rate_scales(layer_scales(b, 1.0))
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=v.shape).astype("float32") for v in a.trainable_variables]
    for _ in range(3):
        plain.apply_gradients(zip(grads, a.trainable_variables))
        wrapped.apply_gradients(zip(grads, b.trainable_variables))
    for x, y in zip(a.trainable_variables, b.trainable_variables):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-5, atol=1e-7)
