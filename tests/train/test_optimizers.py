"""tfbert's AdamW takes the Adam paper's step (torch.optim.AdamW's), not Keras' epsilon-hat one."""

import keras
import numpy as np
import pytest

from tfbert.config import TrainerSection
from tfbert.train.optimizers import AdamW, make_optimizer


def reference_adamw(params, grads_per_step, lr, wd, beta_1=0.9, beta_2=0.999, eps=1e-6):
    """Decoupled weight decay, then lr * m_hat / (sqrt(v_hat) + eps) (PyTorch's AdamW)."""
    p = params.astype(np.float64).copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads_per_step, start=1):
        p -= lr * wd * p
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        p -= lr * (m / (1 - beta_1**t)) / (np.sqrt(v / (1 - beta_2**t)) + eps)
    return p


def run(optimizer, params, grads_per_step):
    variable = keras.Variable(params, name="kernel")
    for g in grads_per_step:
        optimizer.apply_gradients([(g.astype("float32"), variable)])
    return np.asarray(variable.numpy(), np.float64)


def test_adamw_matches_the_paper_step_for_fine_tuning_sized_gradients():
    rng = np.random.default_rng(0)
    # Small weights keep float32 rounding of the weights far below the steps compared.
    params = (0.01 * rng.normal(size=[64])).astype("float32")
    # Per-element gradients from 1e-7 to 1e-1: BERT fine-tuning's are mostly 1e-6..1e-5.
    scales = np.logspace(-7, -1, 64)
    grads = [(rng.normal(size=[64]) * scales).astype("float32") for _ in range(5)]
    expected = reference_adamw(params, grads, lr=1e-3, wd=0.01)
    ours = run(AdamW(learning_rate=1e-3, weight_decay=0.01, epsilon=1e-6), params, grads)
    np.testing.assert_allclose(ours - params, expected - params, rtol=1e-3)
    # Keras' own AdamW adds epsilon before bias correction: on the small gradients its
    # steps fall well short, so this comparison can tell the two apart.
    keras_steps = run(keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=0.01,
                                             epsilon=1e-6), params, grads)
    moved_keras = np.abs(keras_steps - params)[:16]
    moved_reference = np.abs(expected - params)[:16]
    assert np.all(moved_keras < 0.7 * moved_reference)


def test_make_optimizer_builds_it_with_layer_decay_and_without():
    plain = make_optimizer(TrainerSection(train_steps=10))
    assert isinstance(plain, AdamW) and plain.epsilon == 1e-6
    layered = make_optimizer(TrainerSection(train_steps=10, layer_decay=0.8))
    assert isinstance(layered, AdamW) and hasattr(layered, "set_learning_rate_scales")
    assert not isinstance(make_optimizer(TrainerSection(optimizer="lamb")), AdamW)
    with pytest.raises(ValueError, match="layer_decay must be in"):
        make_optimizer(TrainerSection(layer_decay=0.0))
