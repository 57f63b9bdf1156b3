"""AdamW's fused CPU kernel: built, registered, called in place by XLA, and the same
update as the XLA path; without it the XLA path runs."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfbert.train import fused_adamw, layer_decay, optimizers
from tfbert.train.optimizers import AdamW

needs_compiler = pytest.mark.skipif(
    not fused_adamw._compiler(),
    reason="no C++ compiler on this machine: the fused kernel cannot be built",
)

SHAPES = {"kernel_a": (1000, 64), "bias": (64,), "kernel_b": (300, 7)}


@pytest.fixture
def no_kernel(monkeypatch):
    monkeypatch.setattr(AdamW, "updates_in_kernel", lambda self, variable: False)


def adamw_steps(steps=3, clip=None, optimizer_class=AdamW, scales=None, seed=0):
    """`steps` AdamW updates of three variables (the bias not decayed) in one XLA function;
    returns the variables, m and v as arrays, and the step's optimized HLO."""
    rng = np.random.default_rng(seed)
    variables = [keras.Variable((0.05 * rng.normal(size=shape)).astype("float32"), name=name)
                 for name, shape in SHAPES.items()]
    optimizer = optimizer_class(learning_rate=1e-2, weight_decay=0.01, epsilon=1e-6)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    optimizer.build(variables)
    if scales is not None:
        optimizer.set_learning_rate_scales(zip(variables, scales))

    @tf.function(jit_compile=True)
    def step(grads):
        if clip is None:
            optimizer.apply_gradients(zip(grads, variables))
        else:
            optimizer.apply_scaled_gradients(zip(grads, variables),
                                             optimizers.clip_scale(grads, clip))

    grads = None
    for _ in range(steps):
        # Gradients of norm about 3-8: a clip at 1.0 scales them down.
        grads = [tf.constant((0.1 * rng.normal(size=shape)).astype("float32"))
                 for shape in SHAPES.values()]
        step(grads)
    arrays = [v.numpy() for v in variables + optimizer._momentums + optimizer._velocities]
    return arrays, step.experimental_get_compiler_ir(grads)(stage="optimized_hlo")


def assert_same_update(kernel, xla):
    for ours, theirs in zip(kernel, xla):
        # Each element goes through the same float32 operations in the same order, but
        # either compiler may contract a multiply and an add into an FMA, and XLA sums the
        # global norm in its own order: a few ulps of the array's scale over 3 steps (a
        # weight passing near zero keeps the absolute error of the others). A wrong term
        # moves elements by about the step, lr = 1e-2.
        scale = np.spacing(np.abs(theirs).max().astype(np.float32))
        np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=8 * scale)


@needs_compiler
def test_the_kernel_builds_and_registers_on_this_machine():
    assert fused_adamw.available(), fused_adamw.unavailable_reason()
    assert fused_adamw.unavailable_reason() == ""


@needs_compiler
@pytest.mark.parametrize("clip", [None, 1.0])
def test_the_kernel_updates_in_place_as_the_xla_path_does(clip, monkeypatch):
    kernel, hlo = adamw_steps(clip=clip)
    # One custom call per variable, each writing its results over its operands: XLA
    # passes the variables' own buffers and copies none of them.
    calls = [line for line in hlo.splitlines() if "custom-call(" in line]
    assert len(calls) == len(SHAPES)
    for line in calls:
        assert f'custom_call_target="{fused_adamw.TARGET}"' in line
        assert "output_to_operand_aliasing={{0}: (0, {}), {1}: (1, {}), {2}: (2, {})}" in line
    assert not [line for line in hlo.splitlines() if " copy(" in line and "f32[1000,64]" in line]
    monkeypatch.setattr(AdamW, "updates_in_kernel", lambda self, variable: False)
    xla, xla_hlo = adamw_steps(clip=clip)
    assert "custom-call(" not in xla_hlo
    assert_same_update(kernel, xla)
    # The weights moved (and m, v are not zero): the comparison compares steps.
    initial = 0.05 * np.random.default_rng(0).normal(size=SHAPES["kernel_a"])
    assert np.abs(kernel[0] - initial).max() > 1e-3


@needs_compiler
def test_the_clip_scale_passed_in_is_the_global_norm_clip(monkeypatch):
    scaled, _ = adamw_steps(clip=1.0)
    monkeypatch.setattr(AdamW, "updates_in_kernel", lambda self, variable: False)
    # The XLA path fed gradients clipped by tf.clip_by_global_norm beforehand.
    clipped_steps = []
    original = AdamW.apply_gradients

    def clipped(self, grads_and_vars):
        grads, variables = zip(*grads_and_vars)
        grads, _ = tf.clip_by_global_norm(list(grads), 1.0)
        clipped_steps.append(1)
        return original(self, zip(grads, variables))

    monkeypatch.setattr(AdamW, "apply_gradients", clipped)
    reference, _ = adamw_steps(clip=None)
    assert clipped_steps
    assert_same_update(scaled, reference)


@needs_compiler
def test_layer_decay_decays_once_with_the_kernel(monkeypatch):
    layered = layer_decay.layerwise(AdamW)
    scales = [0.5, 1.0, 0.25]
    kernel, hlo = adamw_steps(optimizer_class=layered, scales=scales)
    assert hlo.count("custom-call(") == len(SHAPES)
    monkeypatch.setattr(AdamW, "updates_in_kernel", lambda self, variable: False)
    xla, _ = adamw_steps(optimizer_class=layered, scales=scales)
    assert_same_update(kernel, xla)


def test_the_kernel_is_used_only_under_xla_on_cpu_for_float32():
    decisions = {}
    optimizer = AdamW(learning_rate=1e-3)
    f32 = keras.Variable(np.zeros([4, 4], "float32"))
    f16 = keras.Variable(np.zeros([4, 4], "float16"))

    def probe(where):
        decisions[where] = (optimizer.updates_in_kernel(f32), optimizer.updates_in_kernel(f16))
        return tf.constant(0)

    probe("eager")
    tf.function(lambda: probe("graph"))()
    tf.function(lambda: probe("xla"), jit_compile=True)()
    built = fused_adamw.available()
    assert decisions == {"eager": (False, False), "graph": (False, False),
                         "xla": (built, False)}


def test_without_the_kernel_the_xla_path_runs_with_one_warning(monkeypatch, caplog,
                                                               tmp_path):
    monkeypatch.setattr(fused_adamw, "_state", {})
    monkeypatch.setenv("CXX", "/bin/false")  # a compiler that always fails
    monkeypatch.setenv(fused_adamw.ENV_CACHE, str(tmp_path))
    with caplog.at_level("WARNING", logger=fused_adamw.__name__):
        assert not fused_adamw.available()
        assert not fused_adamw.available()  # tried once
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "runs as XLA compiles it" in warnings[0], warnings
    assert fused_adamw.unavailable_reason()
    arrays, hlo = adamw_steps(steps=1)
    assert "custom-call(" not in hlo and np.isfinite(arrays[0]).all()


def test_the_switch_turns_the_kernel_off_quietly(monkeypatch, caplog):
    monkeypatch.setattr(fused_adamw, "_state", {})
    monkeypatch.setenv(fused_adamw.ENV_SWITCH, "0")
    with caplog.at_level("WARNING", logger=fused_adamw.__name__):
        assert not fused_adamw.available()
    assert not caplog.records
    assert fused_adamw.ENV_SWITCH in fused_adamw.unavailable_reason()


def test_a_failed_build_names_the_compiler_error_and_leaves_no_file(tmp_path):
    bad = tmp_path / "cxx"
    bad.write_text("#!/bin/sh\necho 'error: this compiler always fails' >&2\nexit 1\n")
    bad.chmod(0o755)
    with pytest.raises(RuntimeError, match="failed: error: this compiler always fails"):
        fused_adamw._build(str(bad), str(tmp_path / "kernels"))
    assert os.listdir(tmp_path / "kernels") == []


@needs_compiler
def test_the_build_is_cached_and_renamed_into_place(tmp_path):
    compiler = fused_adamw._compiler()
    first = fused_adamw._build(compiler, str(tmp_path))
    stamp = os.stat(first).st_mtime_ns
    assert fused_adamw._build(compiler, str(tmp_path)) == first
    assert os.stat(first).st_mtime_ns == stamp  # not rebuilt
    assert os.listdir(tmp_path) == [os.path.basename(first)]  # no temporary left


def test_scaled_gradients_refuse_accumulation():
    optimizer = AdamW(learning_rate=1e-3, gradient_accumulation_steps=2)
    assert not optimizers.takes_gradient_scale(optimizer)
    assert optimizers.takes_gradient_scale(AdamW(learning_rate=1e-3))
    assert not optimizers.takes_gradient_scale(keras.optimizers.Lamb(learning_rate=1e-3))
    variable = keras.Variable(np.zeros([2], "float32"))
    with pytest.raises(ValueError, match="accumulated"):
        optimizer.apply_scaled_gradients([(tf.ones([2]), variable)], 0.5)


def test_clip_scale_is_the_global_norm_clips_factor():
    grads = [tf.constant([3.0, 0.0]), tf.constant([[4.0]])]  # norm 5
    np.testing.assert_allclose(float(optimizers.clip_scale(grads, 1.0)), 0.2, rtol=1e-7)
    np.testing.assert_allclose(float(optimizers.clip_scale(grads, 10.0)), 1.0, rtol=1e-7)
    clipped, _ = tf.clip_by_global_norm(grads, 2.0)
    np.testing.assert_allclose(clipped[0].numpy(),
                               grads[0].numpy() * float(optimizers.clip_scale(grads, 2.0)))
    assert np.isnan(float(optimizers.clip_scale([tf.constant([np.inf])], 1.0)))


def fit_embedding_model(seed=0):
    """One epoch of model.fit(jit_compile=True) on an Embedding (its gradient comes as
    IndexedSlices) and a Dense, with tfbert's AdamW and Keras' global-norm clip."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((5,), dtype="int32"),
                              keras.layers.Embedding(50, 8, name="embed"),
                              keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(3, name="head")])
    optimizer = AdamW(learning_rate=1e-2, weight_decay=0.01, epsilon=1e-6,
                      global_clipnorm=1.0)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  jit_compile=True)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 50, (64, 5)).astype("int32")
    y = rng.integers(0, 3, (64,)).astype("int32")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    return [w.numpy() for w in model.weights]


@needs_compiler
def test_model_fit_with_jit_compile_uses_the_kernel_alike(monkeypatch):
    calls = []
    original = AdamW._kernel_update

    def counted(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(AdamW, "_kernel_update", counted)
    kernel = fit_embedding_model()
    # The embedding, the head's kernel and bias, in each trace of the train step.
    assert calls and len(calls) % 3 == 0
    monkeypatch.setattr(AdamW, "updates_in_kernel", lambda self, variable: False)
    assert_same_update(kernel, fit_embedding_model())
