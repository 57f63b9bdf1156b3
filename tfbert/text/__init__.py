"""Text: the in-graph BERT tokenizer (BertPreprocessor) and vocabulary building."""

from tfbert.text.bert_preprocessor import BertPreprocessor

__all__ = ["BertPreprocessor", "build_vocabulary"]


def __getattr__(name):
    # Imported on first use, so that `python -m tfbert.text.vocab` does not find its
    # own module already imported by this package.
    if name == "build_vocabulary":
        from tfbert.text.vocab import build_vocabulary

        return build_vocabulary
    raise AttributeError(f"module 'tfbert.text' has no attribute {name!r}")
