"""tfbert: BERT for TensorFlow, end to end."""

import importlib as _importlib
import os as _os
import sys as _sys

from tfbert._lazy import lazy_getattr as _lazy_getattr

# tfbert is written with keras.ops over the TensorFlow backend (tf.data, tf.distribute,
# SavedModel export and TF Text ops all need it).
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow's C++ INFO and WARNING lines (CUDA probing, oneDNN notices) drown the
# progress output of the CLIs; set TF_CPP_MIN_LOG_LEVEL yourself to see them.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

_EXPORTS = {
    "BertConfig": "tfbert.config",
    "BertEncoder": "tfbert.models",
    "BertPretrainer": "tfbert.models",
    "BertClassifier": "tfbert.models",
    "BertTokenClassifier": "tfbert.models",
    "BertQuestionAnswerer": "tfbert.models",
    "BertPreprocessor": "tfbert.text",
    "export_saved_model": "tfbert.export",
}

__all__ = list(_EXPORTS)

# Host-side tools that need numpy only, never TensorFlow (seconds and most of a GB to
# import): run as `python -m` they get the package without the API below.
_HOST_ONLY_MAINS = ("tfbert.data.create_pretraining_data",)


def _lazy():
    """True when the API is imported on first use instead of now: under a host-only
    `python -m` tool, or with TFBERT_LAZY_IMPORTS=1 (for scripts that use only
    tfbert.text.WordPieceTokenizer or tfbert.data.tfrecord_file)."""
    if _os.environ.get("TFBERT_LAZY_IMPORTS") == "1":
        return True
    argv = list(getattr(_sys, "orig_argv", ()))
    return any(a == "-m" and argv[i + 1:i + 2] == [m]
               for i, a in enumerate(argv) for m in _HOST_ONLY_MAINS)


__getattr__ = _lazy_getattr(__name__, _EXPORTS)

if not _lazy():
    # Importing the models and layers also registers tfbert's Keras classes, which
    # keras.models.load_model needs for a saved .keras file.
    for _name, _module in _EXPORTS.items():
        globals()[_name] = getattr(_importlib.import_module(_module), _name)
    del _name, _module
