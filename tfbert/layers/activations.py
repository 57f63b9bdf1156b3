"""Activation lookup by Google's / HF's `hidden_act` names."""

import math

import keras
import tensorflow as tf

from tfbert.config import ACTIVATIONS


def gelu_erf(x):
    """The exact GELU, x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2))), as PyTorch and
    Google's pre-2019 modeling.py compute it. Keras' exact gelu goes through
    tf.nn.gelu's erfc(-x / sqrt(2)), whose CPU kernel took ~20% longer than erf's on
    [30, 1536] (MiniLM's FFN at batch 1); the two forms differ by under 2e-6."""
    return 0.5 * x * (1.0 + tf.math.erf(x * math.sqrt(0.5)))


def get_activation(name):
    """Returns a callable for `name` (see tfbert.config.ACTIVATIONS)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(sorted(ACTIVATIONS))}")
    base, approximate = ACTIVATIONS[name]
    if base == "gelu":
        if not approximate:
            return gelu_erf
        return lambda x: keras.activations.gelu(x, approximate=True)
    return keras.activations.get(base)
