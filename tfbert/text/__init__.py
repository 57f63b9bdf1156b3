"""Text: the in-graph BERT tokenizer (BertPreprocessor), its plain-Python twin for host
jobs (WordPieceTokenizer) and vocabulary building."""

from tfbert._lazy import lazy_getattr

# Resolved on first use (PEP 562): WordPieceTokenizer must not import TensorFlow, and
# `python -m tfbert.text.vocab` must not find its own module already imported here.
_EXPORTS = {
    "BertPreprocessor": "tfbert.text.bert_preprocessor",
    "WordPieceTokenizer": "tfbert.text.wordpiece",
    "build_vocabulary": "tfbert.text.vocab",
}

__all__ = list(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
