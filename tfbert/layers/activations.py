"""Activation lookup by Google's / HF's `hidden_act` names."""

import functools
import math

import keras
import tensorflow as tf

from tfbert.config import ACTIVATIONS


def _in_float32(fn):
    """`fn` computed in float32 for bfloat16 / float16 inputs, its result cast back.

    XLA rounds every intermediate of a low-precision elementwise chain to that type: in
    bfloat16 the exact GELU's forward and backward made ~17 roundings per element (and
    its 2/sqrt(pi) became 1.125). On a CPU without bf16 instructions each rounding is
    emulated: in profiles of BERT-mini's bf16 pretraining step (2-core CPU) the GELU's
    fusions took ~35 ms a step, and ~18 ms computed this way. In float32 there is one
    rounding, the result's, and the math is as accurate as float32's.
    """

    @functools.wraps(fn)
    def wrapped(x):
        x = tf.convert_to_tensor(x)
        if x.dtype not in (tf.bfloat16, tf.float16):
            return fn(x)
        return tf.cast(fn(tf.cast(x, tf.float32)), x.dtype)

    return wrapped


@_in_float32
def gelu_erf(x):
    """The exact GELU, x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2))), as PyTorch and
    Google's pre-2019 modeling.py compute it. Keras' exact gelu goes through
    tf.nn.gelu's erfc(-x / sqrt(2)), whose CPU kernel took ~20% longer than erf's on
    [30, 1536] (MiniLM's FFN at batch 1); the two forms differ by under 2e-6.
    bfloat16 / float16 inputs are computed in float32."""
    return 0.5 * x * (1.0 + tf.math.erf(x * math.sqrt(0.5)))


@_in_float32
def gelu_tanh(x):
    """The tanh approximation of GELU (Google's BERT "gelu", HF's "gelu_new") by Keras;
    bfloat16 / float16 inputs are computed in float32."""
    return keras.activations.gelu(x, approximate=True)


def get_activation(name):
    """Returns a callable for `name` (see tfbert.config.ACTIVATIONS)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(sorted(ACTIVATIONS))}")
    base, approximate = ACTIVATIONS[name]
    if base == "gelu":
        return gelu_tanh if approximate else gelu_erf
    return keras.activations.get(base)
