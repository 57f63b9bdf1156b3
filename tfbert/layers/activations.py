"""Activation lookup by Google's / HF's `hidden_act` names."""

import keras

from tfbert.config import ACTIVATIONS


def get_activation(name):
    """Returns a callable for `name` (see tfbert.config.ACTIVATIONS)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(sorted(ACTIVATIONS))}")
    base, approximate = ACTIVATIONS[name]
    if base == "gelu":
        return lambda x: keras.activations.gelu(x, approximate=approximate)
    return keras.activations.get(base)
