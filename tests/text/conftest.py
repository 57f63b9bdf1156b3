"""Fixtures for the tokenizer tests: the real MiniLM vocabulary (uncased, 30,522 tokens),
Google's FullTokenizer on it, and real texts (IMDB, Rotten Tomatoes, WNUT tweets)."""

import os
import random
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import helpers
from text_corpora import movie_reviews, wnut_tweets


@pytest.fixture(scope="session")
def vocab_file():
    return os.path.join(helpers.minilm_dir(), "vocab.txt")


@pytest.fixture(scope="session")
def preprocessor(vocab_file):
    from tfbert.text import BertPreprocessor

    return BertPreprocessor(vocab_file, seq_length=128)


@pytest.fixture(scope="session")
def cased_preprocessor(vocab_file):
    from tfbert.text import BertPreprocessor

    return BertPreprocessor(vocab_file, seq_length=128, lowercase=False)


@pytest.fixture(scope="session")
def google_tokenization():
    import google_reference

    return google_reference.google_tokenization()


@pytest.fixture(scope="session")
def google_tokenizer(google_tokenization, vocab_file):
    return google_tokenization.FullTokenizer(vocab_file, do_lower_case=True)


@pytest.fixture(scope="session")
def google_cased_tokenizer(google_tokenization, vocab_file):
    return google_tokenization.FullTokenizer(vocab_file, do_lower_case=False)


@pytest.fixture(scope="session")
def real_texts():
    """{corpus: texts}: 1,500 IMDB reviews, 2,500 Rotten Tomatoes sentences (both a fixed
    random sample) and every WNUT tweet (2,394)."""
    rows = movie_reviews()
    rng = random.Random(2)
    imdb = [text for text, source in rows if source == "imdb"]
    rotten = [text for text, source in rows if source == "rotten_tomatoes"]
    return {
        "imdb": rng.sample(imdb, 1500),
        "rotten_tomatoes": rng.sample(rotten, 2500),
        "wnut": wnut_tweets(),
    }
