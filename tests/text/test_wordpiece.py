"""tfbert.text.WordPieceTokenizer (plain Python, no TensorFlow) against Google's
FullTokenizer: every id of every text must be the same."""

import random

import helpers
import pytest
from text_corpora import HARD_CASES

from tfbert.text import wordpiece
from tfbert.text.wordpiece import WordPieceTokenizer


def google(tokenizer, texts):
    return [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(t)) for t in texts]


@pytest.fixture(scope="module")
def vocabulary(vocab_file):
    with open(vocab_file, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


@pytest.fixture(params=[True, False], ids=["uncased", "cased"])
def pair(request, vocabulary, google_tokenizer, google_cased_tokenizer):
    """(ours, Google's) with the same do_lower_case."""
    lowercase = request.param
    reference = google_tokenizer if lowercase else google_cased_tokenizer
    return WordPieceTokenizer(vocabulary, lowercase=lowercase), reference


def _assert_same(tokenizer, reference, texts):
    expected = google(reference, texts)
    got = [tokenizer.tokenize(t) for t in texts]
    mismatches = [t for t, a, b in zip(texts, got, expected) if a != b]
    assert not mismatches, (f"{len(mismatches)} of {len(texts)} texts differ, e.g. "
                            f"{mismatches[0][:200]!r}")
    # The batch form gives the same ids, flat, with each line's count.
    ids, lengths = tokenizer.tokenize_lines(texts)
    assert ids.tolist() == [i for row in expected for i in row]
    assert lengths.tolist() == [len(row) for row in expected]


def test_real_texts_match_google(pair, real_texts):
    tokenizer, reference = pair
    texts = real_texts["imdb"] + real_texts["rotten_tomatoes"] + real_texts["wnut"]
    # Accents, C1 controls and emoji are all in there.
    assert sum(any(ord(c) > 127 for c in t) for t in texts) >= 100
    _assert_same(tokenizer, reference, texts)


def test_hard_cases_match_google(pair):
    tokenizer, reference = pair
    _assert_same(tokenizer, reference, [t for t, _ in HARD_CASES])


def test_random_unicode_matches_google(pair):
    tokenizer, reference = pair
    # Strings over every kind of code point the rules treat apart: ASCII symbols and
    # controls, Latin with accents, combining marks, CJK, Zs/Zl/Zp separators, Cf format
    # characters, final-sigma letters, private use, unassigned, emoji.
    rng = random.Random(0)
    alphabet = (
        [chr(c) for c in range(0, 128)]
        + list("éÉßẞİıǅﬁΣσςΑ½™…«»¿¡—–‘’“”") + ["\u0301", "\u0308", "\u20dd"]
        + ["中", "日", "한", "\u3000", "\u00a0", "\u2028", "\u2029", "\u200b", "\u200d"]
        + ["\ufeff", "\u00ad", "\ue000", "\U000e0001", "\U0001f600", "\ufffd", "\x85"]
        + [chr(0x0378), chr(0x11F43), "\U0002a6d6", "\uf900"]
    )
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
             for _ in range(3000)]
    _assert_same(tokenizer, reference, texts)


def test_bytes_are_decoded_as_google_does(vocabulary, google_tokenizer):
    tokenizer = WordPieceTokenizer(vocabulary)
    rng = random.Random(1)
    texts = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 24)))
             for _ in range(2000)] + [b"caf\xc3 \xe2\x82 euro", b"ok" + b"\xff" * 5]
    assert [tokenizer.tokenize(t) for t in texts] == google(google_tokenizer, texts)


def test_a_full_cache_is_emptied_and_ids_stay_right(vocabulary, google_tokenizer,
                                                    real_texts, monkeypatch):
    monkeypatch.setattr(wordpiece, "MAX_CACHED_TOKENS", 50)
    tokenizer = WordPieceTokenizer(vocabulary)
    texts = real_texts["rotten_tomatoes"][:300]
    got = [tokenizer.tokenize(t) for t in texts]
    assert len(tokenizer._cache) <= 50
    assert got == google(google_tokenizer, texts)


def test_vocabulary_without_unk_is_refused():
    with pytest.raises(ValueError, match=r"\[UNK\]"):
        WordPieceTokenizer(["[CLS]", "[SEP]", "hello"])


def test_imports_no_tensorflow():
    helpers.assert_runs_without_tensorflow(
        "from tfbert.text import WordPieceTokenizer as T\n"
        "assert T(['[UNK]', 'hi']).tokenize('Hi!') == [1, 0]")
