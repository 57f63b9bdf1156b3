"""Word-piece ids of BertPreprocessor against Google's FullTokenizer (the reference) and
Hugging Face's tokenizer, on real texts and on a hand-made hard set.

Where Google and Hugging Face disagree, tfbert follows Google. The disagreements seen:
- private-use (Co) and unassigned (Cn) code points: Google keeps them (a word holding
  one becomes [UNK]); HF's BertNormalizer counts every "Other" category as a control
  character and drops them. One IMDB review has one (U+F0B7, a Word bullet).
- words of 101..200 characters: Google's WordPiece limit is 200 characters, HF's 100.
- "Σ" at the end of a word: Google lower-cases with Python's str.lower (final ς), HF
  maps character by character (σ).
"""

import random
import time
import unicodedata

import helpers
import numpy as np
import pytest
import tensorflow as tf
from text_corpora import HARD_CASES


def ours(preprocessor, texts):
    # Batches of 1,000: the layer works on any batch, and this keeps memory flat.
    ids = []
    for i in range(0, len(texts), 1000):
        ids += preprocessor.tokenize(tf.constant(texts[i:i + 1000])).to_list()
    return ids


def google(tokenizer, texts):
    return [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(t)) for t in texts]


@pytest.fixture(scope="module")
def hf_tokenizer():
    import os

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(os.path.join(helpers.minilm_dir(), "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def hf(tokenizer, texts):
    return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def hf_known_difference(text, google_tokenizer):
    """Why HF may legitimately differ from Google on `text` (see the module doc), or None."""
    if any(unicodedata.category(c) in ("Co", "Cn") for c in set(text)):
        return "private-use/unassigned code point"
    if any(100 < len(w) <= 200 for w in google_tokenizer.basic_tokenizer.tokenize(text)):
        return "word of 101-200 characters"
    if "\u03a3" in text:
        return "final sigma"
    return None


def test_real_texts_match_google_exactly(preprocessor, google_tokenizer, hf_tokenizer,
                                         real_texts):
    from text_corpora import movie_reviews

    # The one review with a private-use character, so the HF difference class shows up.
    bullet = [t for t, source in movie_reviews() if "\uf0b7" in t]
    imdb = real_texts["imdb"] + [t for t in bullet if t not in real_texts["imdb"]]
    texts = imdb + real_texts["rotten_tomatoes"] + real_texts["wnut"]
    assert len(texts) >= 6000
    # The sample exercises what the stock FastBertNormalizer gets wrong: C1 control
    # characters (CP1252 dashes and ellipses read as Latin-1) and accents.
    assert sum(any("\x80" <= c <= "\x9f" for c in t) for t in texts) >= 20
    assert sum(any(ord(c) > 127 for c in t) for t in texts) >= 100

    start = time.time()
    got = ours(preprocessor, texts)
    ours_seconds = time.time() - start
    expected = google(google_tokenizer, texts)
    mismatches = [t for t, a, b in zip(texts, got, expected) if a != b]
    assert not mismatches, (
        f"{len(mismatches)} of {len(texts)} texts differ from Google, e.g. "
        f"{mismatches[0][:200]!r}"
    )
    # 6,394 texts, a quarter of them long reviews: a fraction of the Python reference.
    assert ours_seconds < 20

    hf_ids = hf(hf_tokenizer, texts)
    hf_mismatches = [t for t, a, b in zip(texts, hf_ids, expected) if a != b]
    reasons = [hf_known_difference(t, google_tokenizer) for t in hf_mismatches]
    assert None not in reasons, hf_mismatches[reasons.index(None)][:200]
    # Exactly the bullet review: all the other texts agree between Google and HF.
    assert reasons == ["private-use/unassigned code point"]


def test_cased_real_texts_match_google(cased_preprocessor, google_cased_tokenizer,
                                       real_texts):
    texts = real_texts["rotten_tomatoes"][:1000] + real_texts["wnut"][:1000]
    assert ours(cased_preprocessor, texts) == google(google_cased_tokenizer, texts)


def test_hard_cases_match_google(preprocessor, google_tokenizer, hf_tokenizer):
    texts = [t for t, _ in HARD_CASES]
    got = ours(preprocessor, texts)
    expected = google(google_tokenizer, texts)
    for text, a, b in zip(texts, got, expected):
        assert a == b, text
    hf_ids = hf(hf_tokenizer, texts)
    for (text, hf_agrees), a, b in zip(HARD_CASES, hf_ids, expected):
        assert (a == b) == hf_agrees, text


def test_hard_cases_match_google_cased(cased_preprocessor, google_cased_tokenizer):
    texts = [t for t, _ in HARD_CASES]
    assert ours(cased_preprocessor, texts) == google(google_cased_tokenizer, texts)


def test_final_sigma_follows_python_lower(preprocessor, google_tokenizer):
    # Random strings over the characters that decide Final_Sigma: cased letters,
    # case-ignorable ones (apostrophe, period, accents, ZWJ, modifier letters) and others.
    rng = random.Random(0)
    alphabet = ["Σ", "Α", "σ", "ς", "'", ".", "1", " ", "\u0301", "\u200d", "b", "Β",
                "\u02b0", "ª", "-", "中"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 10)))
             for _ in range(2000)]
    assert ours(preprocessor, texts) == google(google_tokenizer, texts)


def test_invalid_utf8_matches_google_decode_ignore(preprocessor, google_tokenizer):
    # Google decodes bytes with errors="ignore"; the normaliser drops the same bytes.
    rng = random.Random(1)
    pool = [0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0xC3, 0xA9, 0xED, 0xA0, 0xFF, 0xC0,
            ord("a"), ord(" "), ord(".")]
    texts = [
        bytes(rng.choice([rng.randrange(256), rng.choice(pool)])
              for _ in range(rng.randrange(1, 24)))
        for _ in range(3000)
    ]
    texts += [b"caf\xc3", b"\xe2\x82 euro", b"\xf0\x9f\x98 smile", b"\xed\xa0\x80surrogate",
              b"\xc0\xafoverlong", b"ok" + b"\xff" * 10]
    got = preprocessor.tokenize(tf.constant(texts)).to_list()
    assert got == google(google_tokenizer, texts)


def test_one_megabyte_string(preprocessor, google_tokenizer):
    rng = np.random.default_rng(0)
    words = rng.choice(["movie", "great", "the", "unbelievably", "!", "café", "ΣΑΣ"], 200_000)
    text = " ".join(words)[: 1 << 20]
    one_word = "a" * (1 << 20)
    assert len(text.encode()) >= 1 << 20
    start = time.time()
    got = preprocessor.tokenize(tf.constant([text, one_word])).to_list()
    assert time.time() - start < 2.0
    assert got[0] == google(google_tokenizer, [text])[0]
    assert got[1] == [preprocessor.unk_id]
