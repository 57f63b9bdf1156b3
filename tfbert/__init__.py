"""tfbert: BERT for TensorFlow, end to end."""

import os as _os

# tfbert is written with keras.ops over the TensorFlow backend (tf.data, tf.distribute,
# SavedModel export and TF Text ops all need it).
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow's C++ INFO and WARNING lines (CUDA probing, oneDNN notices) drown the
# progress output of the CLIs; set TF_CPP_MIN_LOG_LEVEL yourself to see them.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfbert.config import BertConfig  # noqa: E402
from tfbert.models import (  # noqa: E402
    BertClassifier,
    BertEncoder,
    BertPretrainer,
    BertQuestionAnswerer,
    BertTokenClassifier,
)
from tfbert.text import BertPreprocessor  # noqa: E402
from tfbert.export import export_saved_model  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BertConfig",
    "BertEncoder",
    "BertPretrainer",
    "BertClassifier",
    "BertTokenClassifier",
    "BertQuestionAnswerer",
    "BertPreprocessor",
    "export_saved_model",
]
