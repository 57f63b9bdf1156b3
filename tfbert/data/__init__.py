"""Pretraining TFRecords (schema, reader, writer) and task datasets.

Names resolve lazily (PEP 562), so `python -m tfbert.data.create_pretraining_data` and its
numpy-only worker processes do not import TensorFlow before they need it.
"""

from tfbert._lazy import lazy_getattr

_EXPORTS = {
    "pretraining_dataset": "tfbert.data.records",
    "pretraining_feature_spec": "tfbert.data.records",
    "parse_pretraining_examples": "tfbert.data.records",
    "list_record_files": "tfbert.data.records",
}

__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
