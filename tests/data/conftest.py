"""Fixtures for the pretraining-data tests: a real IMDB corpus, the real MiniLM vocabulary,
and records written by Google's own create_pretraining_data.py and by ours."""

import os
import random
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import helpers
import pretrain_corpus
from pretrain_corpus import PARITY_FLAGS, PARITY_REVIEWS, run_ours


@pytest.fixture(scope="session")
def vocab_file():
    return os.path.join(helpers.minilm_dir(), "vocab.txt")


@pytest.fixture(scope="session")
def vocabulary(vocab_file):
    with open(vocab_file, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("pretraining_data")


@pytest.fixture(scope="session")
def parity_corpus(data_dir):
    return pretrain_corpus.write_imdb_corpus(str(data_dir / "imdb400.txt"), PARITY_REVIEWS)


@pytest.fixture(scope="session")
def small_corpus(data_dir):
    """Two files of 60 reviews each, for the runs that only check plumbing."""
    first = pretrain_corpus.write_imdb_corpus(str(data_dir / "small-0.txt"), 60, start=1000)
    pretrain_corpus.write_imdb_corpus(str(data_dir / "small-1.txt"), 60, start=1060)
    return first.replace("small-0.txt", "small-*.txt")


@pytest.fixture(scope="session")
def google_records(data_dir, parity_corpus, vocab_file):
    """Records written by google-research/bert's create_pretraining_data.py itself."""
    import google_reference

    google = google_reference.google_create_pretraining_data()
    tokenization = google_reference.google_tokenization()
    tokenizer = tokenization.FullTokenizer(vocab_file=vocab_file, do_lower_case=True)
    f = PARITY_FLAGS
    instances = google.create_training_instances(
        [parity_corpus], tokenizer, f["max_seq_length"], f["dupe_factor"],
        f["short_seq_prob"], f["masked_lm_prob"], f["max_predictions_per_seq"],
        random.Random(f["random_seed"]))
    path = str(data_dir / "google.tfrecord")
    google.write_instance_to_example_files(
        instances, tokenizer, f["max_seq_length"], f["max_predictions_per_seq"], [path])
    return path


@pytest.fixture(scope="session")
def our_records(data_dir, parity_corpus, vocab_file):
    path = str(data_dir / "ours.tfrecord")
    # Windows of 100 reviews, so most "random next" segments come from the reservoir of
    # earlier windows: its sampling must not change the statistics either.
    assert run_ours(parity_corpus, path, vocab_file, window_size=100, **PARITY_FLAGS) == 0
    return path


@pytest.fixture(scope="session")
def ours():
    """run_ours, for the tests (conftest modules are not importable by name)."""
    return run_ours
