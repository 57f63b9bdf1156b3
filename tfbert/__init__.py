"""tfbert: BERT for TensorFlow, end to end."""

import os as _os

# tfbert is written with keras.ops over the TensorFlow backend (tf.data, tf.distribute,
# SavedModel export and TF Text ops all need it).
_os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tfbert.config import BertConfig  # noqa: E402
from tfbert.models import (  # noqa: E402
    BertClassifier,
    BertEncoder,
    BertPretrainer,
    BertQuestionAnswerer,
    BertTokenClassifier,
)

__version__ = "0.1.0"

__all__ = [
    "BertConfig",
    "BertEncoder",
    "BertPretrainer",
    "BertClassifier",
    "BertTokenClassifier",
    "BertQuestionAnswerer",
]
