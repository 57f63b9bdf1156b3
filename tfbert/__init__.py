"""tfbert: BERT for TensorFlow, end to end."""

import importlib as _importlib
import os as _os

# tfbert is written with keras.ops over the TensorFlow backend (tf.data, tf.distribute,
# SavedModel export and TF Text ops all need it).
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow's C++ INFO and WARNING lines (CUDA probing, oneDNN notices) drown the
# progress output of the CLIs; set TF_CPP_MIN_LOG_LEVEL yourself to see them.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

# The public names resolve on first use (PEP 562): host-only tools such as
# `python -m tfbert.data.create_pretraining_data` never import TensorFlow.
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

# Subpackages, importable as attributes too (`import tfbert; tfbert.models.presets`).
_SUBMODULES = ("config", "convert", "data", "export", "features", "fileio", "layers",
               "models", "serving", "text", "train")


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(_importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return _importlib.import_module(f"tfbert.{name}")
    raise AttributeError(f"module 'tfbert' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
