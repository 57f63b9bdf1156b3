"""tfbert's AdamW takes the Adam paper's step (torch.optim.AdamW's), not Keras' epsilon-hat one."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfbert.config import TrainerSection
from tfbert.train import optimizers
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


@pytest.fixture
def xla_update(monkeypatch):
    """The update as XLA compiles it, not tfbert.train.fused_adamw's kernel (tested in
    test_fused_adamw.py): what runs where the kernel cannot be built, and on GPUs."""
    monkeypatch.setattr(AdamW, "updates_in_kernel", lambda self, variable: False)


def xla_run(params, grads_per_step):
    """AdamW steps in one XLA function, as the trainer and model.fit(jit_compile=True) run."""
    variable = keras.Variable(params, name="kernel")
    optimizer = AdamW(learning_rate=1e-3, weight_decay=0.01, epsilon=1e-6)
    optimizer.build([variable])

    @tf.function(jit_compile=True)
    def step(gradient):
        optimizer.apply_gradients([(gradient, variable)])

    for g in grads_per_step:
        step(tf.constant(g))
    hlo = step.experimental_get_compiler_ir(tf.constant(grads_per_step[0]))(stage="optimized_hlo")
    return np.asarray(variable.numpy(), np.float64), hlo


def test_xla_on_cpu_computes_the_update_apart_from_the_in_place_write(monkeypatch,
                                                                      xla_update):
    rng = np.random.default_rng(1)
    size = optimizers.SPLIT_UPDATE_MIN_SIZE
    params = (0.01 * rng.normal(size=[size // 256, 256])).astype("float32")
    grads = [(rng.normal(size=params.shape) * 1e-3).astype("float32") for _ in range(3)]
    split, split_hlo = xla_run(params, grads)
    # The conditional is the fusion boundary; XLA would fuse a select away.
    assert "conditional(" in split_hlo
    monkeypatch.setattr(optimizers, "split_in_place_update", lambda variable: False)
    fused, fused_hlo = xla_run(params, grads)
    assert "conditional(" not in fused_hlo
    # Same arithmetic either way, and the paper's step. The weights (|w| < 0.05) are
    # float32: each of the 3 steps rounds them by up to 2e-9.
    np.testing.assert_array_equal(split, fused)
    expected = reference_adamw(params, grads, lr=1e-3, wd=0.01)
    np.testing.assert_allclose(split - params, expected - params, rtol=1e-3, atol=1e-8)


def test_the_update_is_split_only_under_xla_on_cpu_for_large_variables():
    large = keras.Variable(np.zeros([optimizers.SPLIT_UPDATE_MIN_SIZE], "float32"))
    small = keras.Variable(np.zeros([optimizers.SPLIT_UPDATE_MIN_SIZE - 1], "float32"))
    decisions = {}

    def probe(where):
        decisions[where] = (optimizers.split_in_place_update(large),
                            optimizers.split_in_place_update(small),
                            optimizers.split_in_place_update(large.value))
        return tf.constant(0)

    probe("eager")
    tf.function(lambda: probe("graph"))()
    tf.function(lambda: probe("xla"), jit_compile=True)()
    assert decisions == {"eager": (False, False, False), "graph": (False, False, False),
                         "xla": (True, False, True)}


def test_the_split_updates_branches_compute_no_scalars(xla_update):
    # XLA's CPU runtime orders two ops that write the same buffer slice, and buffer
    # assignment gives every conditional's scalar temporaries the same slice: scalars
    # computed inside the branches would chain all the conditionals one after another.
    # The branches hold the elementwise fusion alone; the scalars are their operands.
    rng = np.random.default_rng(2)
    shape = [optimizers.SPLIT_UPDATE_MIN_SIZE // 256, 256]
    variables = [keras.Variable(0.01 * rng.normal(size=shape).astype("float32"), name=n)
                 for n in ("kernel_a", "kernel_b")]
    optimizer = AdamW(learning_rate=1e-3, weight_decay=0.01, epsilon=1e-6)
    optimizer.build(variables)

    @tf.function(jit_compile=True)
    def step(gradient):
        optimizer.apply_gradients([(gradient, v) for v in variables])

    gradient = tf.constant(rng.normal(size=shape).astype("float32"))
    hlo = step.experimental_get_compiler_ir(gradient)(stage="optimized_hlo")
    computations = {}
    for block in hlo.split("\n\n"):
        header = block.strip().split("\n", 1)[0]
        if header.startswith("%"):
            computations[header.split(" ", 1)[0][1:]] = block
    branches = [name for line in hlo.splitlines() if " conditional(" in line
                for name in re.findall(r"(?:true|false)_computation=%([\w.\-]+)", line)]
    assert len(branches) == 4  # two variables, two branches each
    for name in branches:
        scalars = re.findall(r"= f32\[\] (\w[\w-]*)\(", computations[name])
        assert set(scalars) <= {"parameter", "get-tuple-element", "constant"}, (name, scalars)
