"""Converters as tables: (source name(s), target weight path, transform).

A table is applied with shape checks; any source tensor the table did not use (and that is
not explicitly ignored) and any target weight left unset is an error that lists them, so a
renamed or missing tensor can never be skipped silently.
"""

import re

import numpy as np


def identity(x):
    return x


def transpose(x):
    return np.transpose(x)


def concat_last(*xs):
    """Fuses separate q, k, v kernels [H, H] (or biases [H]) into one [H, 3H] ([3H])."""
    return np.concatenate(xs, axis=-1)


def flatten_heads(x):
    """[H, N, D] (EinsumDense kernels) to [H, N*D], or [N, D] biases to [N*D]."""
    return x.reshape(x.shape[0], -1) if x.ndim == 3 else x.reshape(-1)


def merge_heads_in(x):
    """An attention output kernel [N, D, H] to [N*D, H]."""
    return x.reshape(-1, x.shape[-1])


def concat_flat_heads(*xs):
    """Fuses per-head q, k, v kernels [H, N, D] (or biases [N, D]) into [H, 3*N*D] ([3*N*D])."""
    return np.concatenate([flatten_heads(x) for x in xs], axis=-1)


class ConversionError(ValueError):
    pass


def apply_table(model, source, table, ignore=(), source_desc="source"):
    """Assigns `model`'s weights from `source` (a dict name -> numpy array) by `table`.

    `table` holds (sources, target_path, transform) rows: `sources` is one name or a tuple
    of names whose arrays are passed to `transform` in order; `target_path` is a Keras
    variable path (`variable.path`). `ignore` holds regular expressions of source names
    that are expected to be unused (optimizer slots, step counters, heads not converted).
    """
    targets = {v.path: v for v in model.weights}
    used = set()
    assigned = set()
    values = {}
    for sources, target_path, transform in table:
        names = (sources,) if isinstance(sources, str) else tuple(sources)
        missing = [n for n in names if n not in source]
        if missing:
            raise ConversionError(f"{source_desc}: missing tensor(s) {', '.join(missing)}")
        if target_path not in targets:
            raise ConversionError(f"target model has no weight {target_path!r}")
        value = np.asarray(transform(*[np.asarray(source[n]) for n in names]))
        expected = tuple(targets[target_path].shape)
        if tuple(value.shape) != expected:
            shapes = ", ".join(f"{n} {tuple(np.shape(source[n]))}" for n in names)
            raise ConversionError(
                f"{source_desc}: {shapes} give shape {tuple(value.shape)} but "
                f"{target_path} needs {expected}"
            )
        values[target_path] = value
        used.update(names)
        assigned.add(target_path)
    patterns = [re.compile(p) for p in ignore]
    unused = sorted(
        n for n in source if n not in used and not any(p.search(n) for p in patterns)
    )
    if unused:
        raise ConversionError(
            f"{source_desc}: {len(unused)} source tensor(s) not used by the conversion: "
            + ", ".join(unused)
        )
    unset = sorted(set(targets) - assigned)
    if unset:
        raise ConversionError(
            f"{source_desc}: no source for target weight(s): " + ", ".join(unset)
        )
    for path, value in values.items():
        targets[path].assign(value.astype(targets[path].dtype))
    return model
