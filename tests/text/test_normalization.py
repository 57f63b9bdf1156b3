"""Exhaustive checks of the Google-exact normaliser (tfbert/text/normalization.py):
every code point, both casings, against Google's own FullTokenizer; and the short list of
code points where TF Text's ICU and Python's unicodedata disagree on punctuation."""

import pytest
import tensorflow as tf
import tensorflow_text as tf_text

from tfbert.text import normalization


def every_code_point_text():
    # Each assigned code point inside a word (where it is removed, kept, split off,
    # turned into a space or makes the word unknown), plus every 97th unassigned or
    # private-use one (Python gives those no properties, so a sample is enough).
    chars = [c for c, _ in normalization.assigned_code_points()]
    assigned = set(chars)
    chars += [chr(cp) for cp in range(0, 0x110000, 97)
              if not 0xD800 <= cp <= 0xDFFF and chr(cp) not in assigned]
    return [f"a{c}b" for c in chars]


@pytest.mark.parametrize("lowercase", [True, False])
def test_every_code_point_matches_google(lowercase, preprocessor, cased_preprocessor,
                                         google_tokenizer, google_cased_tokenizer):
    ours = preprocessor if lowercase else cased_preprocessor
    google = google_tokenizer if lowercase else google_cased_tokenizer
    texts = every_code_point_text()
    assert len(texts) > 150_000
    got = ours.tokenize(tf.constant(texts)).to_list()
    bad = [
        t for t, ids in zip(texts, got)
        if ids != google.convert_tokens_to_ids(google.tokenize(t))
    ]
    assert not bad, [f"U+{ord(t[1]):04X}" for t in bad[:20]]


def test_icu_only_punctuation_is_complete(google_tokenization):
    """FastWordpieceTokenizer splits on ICU punctuation, Google on Python's: the code
    points where only ICU splits must be exactly ICU_ONLY_PUNCTUATION (which the
    normaliser keeps inside words), and every Google split point must be ICU's too."""
    basic = google_tokenization.BasicTokenizer()
    wordpiece = tf_text.FastWordpieceTokenizer(
        ["[UNK]", "a", "##a"], token_out_type=tf.int32, no_pretokenization=False
    )
    chars = [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF and cp != 0x61]
    # "a?a" is one unknown word ([UNK]) unless "?" splits it: then a, [UNK], a.
    pieces = wordpiece.tokenize(tf.constant([f"a{c}a".encode() for c in chars]))
    splits = {c for c, n in zip(chars, pieces.row_lengths().numpy()) if n == 3}
    google_splits = {
        c for c in chars
        if google_tokenization._is_punctuation(c) or basic._is_chinese_char(ord(c))
    }
    listed = {chr(cp) for lo, hi in normalization.ICU_ONLY_PUNCTUATION
              for cp in range(lo, hi + 1)}
    assert google_splits <= splits
    assert splits - google_splits == listed


def test_whitespace_is_only_space_after_normalising():
    # FastWordpieceTokenizer splits on ICU's White_Space; after normalisation the only
    # such character left must be " " (Google: Zs and \t\n\r become spaces, the rest of
    # White_Space are control characters it removes, or line separators str.split uses).
    for lowercase in (True, False):
        table = normalization.google_char_table(lowercase)
        outputs = set("".join(table.values()))
        assert {c for c in outputs if c.isspace()} <= {" "}
        for cp in (0x85, 0xA0, 0x1680, 0x2000, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000):
            assert table[chr(cp)] in ("", " ")


def test_invalid_utf8_segments_cover_every_ill_formed_byte():
    # Every byte that cannot start a well-formed sequence is a segment of its own.
    single = {s[0] for s in normalization.invalid_utf8_segments() if len(s) == 1}
    assert single == set(range(0x80, 0x100))
    for segment in normalization.invalid_utf8_segments():
        with pytest.raises(UnicodeDecodeError):
            segment.decode("utf-8")


def test_private_chars_avoid_the_vocabulary():
    marker, sentinel = normalization.choose_private_chars(["a", "\ue000", "x\ue001"])
    assert (marker, sentinel) == ("\ue002", "\ue003")
