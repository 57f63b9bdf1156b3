"""google-research/bert's own code (the bert-tensorflow package), imported under TF 2.

The reference the parity tests compare against is Google's modeling.py, run_pretraining.py,
tokenization.py and create_pretraining_data.py exactly as shipped. They were written for
TF 1.x, so a few names they look up no longer resolve; the shims below supply only those,
each from the library that now holds the same code:

- `tensorflow.contrib.layers` (modeling.layer_norm): tf-slim, the home of contrib.layers,
  whose `layer_norm` is the same code (variables LayerNorm/beta|gamma, epsilon 1e-12).
- `tf.layers.dense` (the pooler and the MLM transform): under Keras 3 TF raises "`dense` is
  not available with Keras 3"; tf_keras still ships the TF 1 layers.
- `tf.flags` (module-level flag definitions in the scripts): each script gets its own
  absl FlagValues, so run_pretraining and create_pretraining_data (which define the same
  flag names) import side by side, and neither touches the test process's flags. Parse
  one with `module.FLAGS(["prog", "--flag=value", ...])`.
- tokenization's `FLAGS.preserve_unused_tokens`: see `google_tokenization()`.

Everything else is the real `tf.compat.v1`. Use `google_module("modeling")` etc.; the graph
code must run inside a `tf.Graph().as_default()` block (TF 1 graph mode).
"""

import functools
import importlib
import sys
import types
import warnings

# Modules of the bert package this helper can import.
GOOGLE_MODULES = ("modeling", "run_pretraining", "tokenization", "create_pretraining_data",
                  "optimization", "run_classifier", "run_squad")

_loaded = {}


def _isolated_flags():
    """A stand-in for `tf.flags` whose DEFINE_* register in a private FlagValues."""
    from absl import flags as absl_flags

    values = absl_flags.FlagValues()
    shim = types.ModuleType("google_reference.flags")
    shim.FLAGS = values
    for name in dir(absl_flags):
        attr = getattr(absl_flags, name)
        if name.startswith("DEFINE") or name.startswith("mark_flag"):
            setattr(shim, name, functools.partial(attr, flag_values=values))
        elif not hasattr(shim, name):
            setattr(shim, name, attr)
    return shim


class _TF1(types.ModuleType):
    """`tf.compat.v1` with `layers` (and `flags`) resolved; everything else forwarded."""

    def __init__(self, flags_shim):
        super().__init__("google_reference.tf")
        import tensorflow as tf
        import tf_keras.api._v1.keras.__internal__.legacy.layers as legacy_layers

        self._v1 = tf.compat.v1
        self.layers = legacy_layers
        self.flags = flags_shim

    def __getattr__(self, name):
        return getattr(self._v1, name)


def google_module(name):
    """Imports `bert.<name>` from bert-tensorflow with the shims above (once per process)."""
    if name not in GOOGLE_MODULES:
        raise ValueError(f"unknown Google module {name!r}; valid: {', '.join(GOOGLE_MODULES)}")
    if name in _loaded:
        return _loaded[name]
    import tensorflow as tf
    import tf_slim

    # Dependencies first, so each is patched once (run_pretraining imports modeling).
    if name == "run_pretraining":
        google_module("modeling")
        google_module("optimization")
    if name == "create_pretraining_data":
        google_module("tokenization")
    if name in ("run_classifier", "run_squad"):
        google_module("modeling")
        google_module("optimization")
        google_module("tokenization")

    flags_shim = _isolated_flags()
    contrib = types.ModuleType("tensorflow.contrib")
    contrib.layers = tf_slim.layers
    v1 = tf.compat.v1
    saved_flags = v1.flags
    had_contrib = "tensorflow.contrib" in sys.modules
    # Only for the duration of the import: module-level code reads tf.flags and imports
    # tensorflow.contrib; afterwards the module's `tf` is rebound to the shim namespace.
    sys.modules.setdefault("tensorflow.contrib", contrib)
    v1.flags = flags_shim
    try:
        module = importlib.import_module(f"bert.{name}")
    finally:
        v1.flags = saved_flags
        if not had_contrib:
            sys.modules.pop("tensorflow.contrib", None)
    if hasattr(module, "tf"):
        module.tf = _TF1(flags_shim)
    # tf_keras warns on every tf.layers.dense call; that is Google's code, not ours.
    warnings.filterwarnings("ignore", message="`tf.layers.dense` is deprecated")
    _loaded[name] = module
    return module


def google_tokenization():
    """Google's tokenization.py, ready to tokenize without touching the process's flags.

    bert-tensorflow 1.0.4's tokenization.py defines `--preserve_unused_tokens` on absl's
    global FLAGS and reads it on every `tokenize` call, which raises until someone parses
    the global flags. Its module `FLAGS` is rebound here to a private, parsed FlagValues
    holding that flag at its default (False), so the test process's flags stay untouched.
    """
    from absl import flags as absl_flags

    module = google_module("tokenization")
    if not getattr(module, "_private_flags", False):
        values = absl_flags.FlagValues()
        absl_flags.DEFINE_bool("preserve_unused_tokens", False, "", flag_values=values)
        values(["google_reference"])
        module.FLAGS = values
        module._private_flags = True
    return module


def google_create_pretraining_data():
    """Google's create_pretraining_data.py, with a working `tokenization` (see above)."""
    google_tokenization()
    return google_module("create_pretraining_data")


def google_run_classifier():
    """Google's run_classifier.py (convert_single_example, _truncate_seq_pair, ...), with
    a working `tokenization` (see google_tokenization)."""
    google_tokenization()
    return google_module("run_classifier")


def google_run_squad():
    """Google's run_squad.py (read_squad_examples, convert_examples_to_features,
    write_predictions), with a working `tokenization` and its flags parsed privately."""
    tokenization = google_tokenization()
    module = google_module("run_squad")
    if not module.FLAGS.is_parsed():
        module.FLAGS(["run_squad", "--vocab_file=unused", "--bert_config_file=unused",
                      "--output_dir=unused"])
    return module, tokenization
