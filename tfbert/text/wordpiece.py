"""Google's FullTokenizer in plain Python, exact and fast, with no TensorFlow.

For host-side jobs that must not pay for importing TensorFlow (seconds and most of a GB
of memory), chiefly `python -m tfbert.data.create_pretraining_data`. In a model or an
export use `tfbert.text.BertPreprocessor`, which runs in the graph.

google-research/bert's BasicTokenizer cleans the text, spaces out CJK ideographs, splits
it on whitespace, and then treats every whitespace-separated token on its own: lower-case
and strip accents (uncased models), split off punctuation, WordPiece each piece. So the
ids of a whitespace token depend on that token alone, and real text repeats its tokens:
here each distinct token is worked out once, by the same rules and the same Python
`str.lower` / `unicodedata` calls Google's code makes, and then looked up. A line of
ASCII text (most lines of most corpora) is cleaned with one regular-expression test; other
lines go through a translation table filled in one code point at a time as they appear.
The ids equal Google's on every input (tests/text/test_wordpiece.py, the hard cases and
real corpora of tests/text/test_parity.py).
"""

import re
import unicodedata

import numpy as np

from tfbert.text import normalization

# Google's WordpieceTokenizer turns a word longer than this many characters into [UNK]
# (bert-tensorflow 1.0.4).
MAX_CHARS_PER_WORD = 200
# The token cache is emptied when it reaches this many entries, which bounds its memory
# (about 100 MB at most) on corpora with an open vocabulary of tokens.
MAX_CACHED_TOKENS = 500_000

# ASCII control characters Google's _clean_text removes: Cc but tab, newline and return.
_ASCII_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# An ASCII token split as Google's _run_split_on_punc splits it: every ASCII symbol
# (33-47, 58-64, 91-96, 123-126) on its own, the runs between them whole.
_ASCII_PIECES = re.compile(r"[^!-/:-@\[-`{-~]+|[!-/:-@\[-`{-~]")


class _CleanTable(dict):
    """str.translate table for Google's _clean_text and CJK spacing, filled lazily."""

    def __missing__(self, cp):
        char = chr(cp)
        if cp == 0 or cp == 0xFFFD or normalization.is_control(char):
            value = None  # removed
        elif normalization.is_whitespace(char):
            value = " "
        elif normalization.is_cjk(cp):
            value = f" {char} "
        else:
            value = cp  # unchanged
        self[cp] = value
        return value


class WordPieceTokenizer:
    """Text -> word-piece ids, as google-research/bert's FullTokenizer.

    `vocabulary` lists the tokens in id order; `lowercase` is Google's do_lower_case.
    """

    def __init__(self, vocabulary, lowercase=True, unk_token="[UNK]"):
        self._vocab = {}
        for index, token in enumerate(vocabulary):
            self._vocab.setdefault(token, index)
        if unk_token not in self._vocab:
            raise ValueError(f"the vocabulary has no {unk_token} token")
        self.unk_id = self._vocab[unk_token]
        self.lowercase = lowercase
        self._clean = _CleanTable()
        self._cache = {}

    def tokenize(self, text):
        """The ids of one text (str, or bytes decoded as Google does: UTF-8, dropping
        invalid bytes), as a list of ints."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "ignore")
        return self.tokenize_lines([text])[0].tolist()

    def tokenize_lines(self, lines):
        """(flat int32 ids [N], int64 ids per line [L]) of a list of str lines."""
        ids, lengths = [], [0] * len(lines)
        lookup, clean, miss = self._cache.get, self._clean_text, self._token_ids
        for i, line in enumerate(lines):
            start = len(ids)
            for token in clean(line).split():
                token_ids = lookup(token)
                ids += miss(token) if token_ids is None else token_ids
            lengths[i] = len(ids) - start
        return np.array(ids, np.int32), np.array(lengths, np.int64)

    def _clean_text(self, text):
        if text.isascii():
            if _ASCII_CONTROL.search(text):
                return _ASCII_CONTROL.sub("", text)
            return text
        return text.translate(self._clean)

    def _token_ids(self, token):
        """Google's BasicTokenizer and WordpieceTokenizer on one whitespace token."""
        word = token.lower() if self.lowercase else token
        if token.isascii():
            # NFD leaves ASCII as it is, and the token holds no whitespace.
            pieces = _ASCII_PIECES.findall(word)
        else:
            if self.lowercase:
                word = unicodedata.normalize("NFD", word)
                word = "".join(c for c in word if unicodedata.category(c) != "Mn")
            # Splitting off punctuation, then Google's second whitespace split.
            pieces = " ".join(_split_punctuation(word)).split()
        ids, vocab = [], self._vocab
        for piece in pieces:
            index = vocab.get(piece)  # most pieces are whole words of the vocabulary
            if index is not None and len(piece) <= MAX_CHARS_PER_WORD:
                ids.append(index)
            else:
                ids += self._wordpiece(piece)
        ids = tuple(ids)
        if len(self._cache) >= MAX_CACHED_TOKENS:
            self._cache.clear()
        self._cache[token] = ids
        return ids

    def _wordpiece(self, piece):
        """Greedy longest-match-first word pieces of one punctuation-free word."""
        if len(piece) > MAX_CHARS_PER_WORD:
            return [self.unk_id]
        vocab, ids, start = self._vocab, [], 0
        while start < len(piece):
            for end in range(len(piece), start, -1):
                sub = piece[start:end] if start == 0 else "##" + piece[start:end]
                index = vocab.get(sub)
                if index is not None:
                    break
            else:
                return [self.unk_id]  # one unmatched part makes the whole word unknown
            ids.append(index)
            start = end
        return ids


def _split_punctuation(word):
    """Every punctuation character on its own, the runs between them kept whole."""
    pieces, current = [], []
    for char in word:
        if normalization.is_punctuation(char):
            if current:
                pieces.append("".join(current))
                current = []
            pieces.append(char)
        else:
            current.append(char)
    if current:
        pieces.append("".join(current))
    return pieces
