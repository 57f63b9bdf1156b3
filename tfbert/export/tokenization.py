"""In-graph text handling for the serving signatures: safe truncation, word pieces with
their offsets into the original strings, and character offsets.

BertPreprocessor (tfbert/text) turns strings into word-piece ids; the signatures that
answer with text taken from the request (token classification's words, question
answering's answer) also need to know where each piece came from. Normalisation moves
bytes around (accents stripped, "İ" -> "i", control characters and invalid UTF-8
dropped), so offsets are tracked through every step:

  original --FastBertNormalizer--> normalised   (offsets map: normalised byte -> original)
  normalised --Final_Sigma rules--> resolved     (each "Σ" marker, 3 bytes, becomes σ/ς, 2)
  resolved --FastWordpieceTokenizer--> pieces    (byte offsets into `resolved`)

and the piece offsets are walked back to the original bytes, then to characters of the
original string as Python sees it after `bytes.decode("utf-8", errors="replace")`.
The ids are exactly `BertPreprocessor.tokenize`'s (tests/export check this).
"""

import tensorflow as tf

# B=batch, P=pieces of a row (ragged), N=normalised bytes, C=characters, K=markers.

# Large enough to separate rows when ragged offsets are flattened into one sorted list.
_ROW_STRIDE = 1 << 40


def truncate_utf8(strings, max_bytes):
    """The first `max_bytes` bytes of each string, cut back to a UTF-8 character boundary.

    Runs before anything that reads the whole string, so a 1 MB request costs what a
    `max_bytes` one does. The cut moves back (by at most 3 bytes) while the first byte
    left out is a continuation byte, so a character is never split; ill-formed bytes are
    left as they are (normalisation drops them).
    """
    strings = tf.convert_to_tensor(strings, tf.string)
    head = tf.strings.substr(strings, 0, max_bytes + 1)                    # [B]
    too_long = tf.strings.length(head) > max_bytes                          # [B]
    # The 4 bytes max_bytes-3 .. max_bytes (the last one is the first byte cut off),
    # read from the end of `head` behind 3 NUL bytes so short heads stay aligned; rows
    # that are not too long read some other bytes, and are not cut anyway.
    padded = tf.strings.join(["\0\0\0", head])
    probe_at = tf.maximum(tf.strings.length(padded) - 4, 0)
    probe = tf.io.decode_raw(
        tf.strings.substr(padded, probe_at, tf.fill(tf.shape(probe_at), 4)),
        tf.uint8, fixed_length=4,
    )                                                                       # [B, 4]
    continuation = tf.equal(tf.bitwise.bitwise_and(probe, 0xC0), 0x80)     # [B, 4]
    # Back off k bytes: k = how many of the bytes at max_bytes, max_bytes-1, ... are
    # continuation bytes, stopping at the first that is not (at most 3).
    run = tf.cast(continuation[:, ::-1], tf.int32)                          # [B, 4]
    run = tf.math.cumprod(run, axis=1)                                      # [B, 4]
    back = tf.reduce_sum(run[:, :3], axis=1)                                # [B]
    back = tf.where(tf.reduce_all(continuation, axis=1), 0, back)           # no lead byte
    # The NUL padding stands for the start of the string: the cut never goes below 0.
    cut = tf.where(too_long, tf.maximum(max_bytes - back, 0), tf.strings.length(head))
    return tf.strings.substr(strings, tf.zeros_like(cut), cut)


def _flat_row_ids(ragged):
    return tf.cast(ragged.value_rowids(), tf.int64)


def _count_before(sorted_values, queries, side):
    """Per row, how many of `sorted_values[row]` are < (side="left") or <= ("right")
    each of `queries[row]`. Both ragged [B, (.)] int64 with the same B; flat int64 [Q]."""
    # Rows are flattened into one sorted list by adding row * _ROW_STRIDE.
    keys = sorted_values.flat_values + _flat_row_ids(sorted_values) * _ROW_STRIDE
    probes = queries.flat_values + _flat_row_ids(queries) * _ROW_STRIDE
    found = tf.searchsorted(keys, probes, side=side, out_type=tf.int64)     # [Q]
    row_start = tf.gather(sorted_values.row_splits, queries.value_rowids())
    return found - tf.cast(row_start, tf.int64)


def _gather_in_rows(ragged, positions):
    """ragged[row, positions[row, j]] for ragged positions [B, (.)]; flat [Q]."""
    row_start = tf.gather(ragged.row_splits, positions.value_rowids())
    return tf.gather(ragged.flat_values, tf.cast(row_start, tf.int64) + positions.flat_values)


class OriginalText:
    """The characters of request strings [B], as Python's
    `bytes.decode("utf-8", errors="replace")` splits them: each maximal ill-formed byte
    run is one U+FFFD character (tests/export check the agreement). Decoded once per
    request and shared by everything that maps bytes to characters or cuts out text.
    """

    def __init__(self, strings):
        self.strings = strings
        self.code_points, self.char_starts = tf.strings.unicode_decode_with_offsets(
            strings, "UTF-8", errors="replace", replacement_char=0xFFFD
        )                                                                  # [B, (C)]
        self.byte_lengths = tf.cast(tf.strings.length(strings), tf.int64)  # [B]

    def char_index(self, byte_offsets, side="left"):
        """Character indices of ragged int64 byte offsets [B, (.)]: with side="left"
        how many characters start before each offset (its index, at a character
        start); with "right", how many start at or before it."""
        return byte_offsets.with_flat_values(
            _count_before(self.char_starts, byte_offsets, side))

    def byte_offset(self, char_index):
        """Byte offsets of ragged character indices [B, (.)] (the length at the end)."""
        n_chars = self.char_starts.row_lengths()
        rows = char_index.value_rowids()
        padded = tf.concat([self.char_starts.flat_values, tf.zeros([1], tf.int64)], 0)
        at = tf.gather(self.char_starts.row_splits, rows) + char_index.flat_values
        inside = char_index.flat_values < tf.gather(n_chars, rows)
        return char_index.with_flat_values(tf.where(
            inside,
            tf.gather(padded, tf.minimum(at, tf.size(padded, tf.int64) - 1)),
            tf.gather(self.byte_lengths, rows),
        ))

    def text(self, start_chars, end_chars):
        """Characters start..end of each row, UTF-8 encoded: ragged [B, (.)] strings.

        Built from the decoded characters, so each piece is copied once (not the whole
        request per piece) and ill-formed bytes come out as U+FFFD.
        """
        rows = start_chars.value_rowids()
        first = tf.gather(self.code_points.row_splits, rows) + start_chars.flat_values
        lengths = tf.maximum(end_chars.flat_values - start_chars.flat_values, 0)
        index = tf.ragged.range(first, first + lengths)                    # [X, (len)]
        chars = index.with_flat_values(
            tf.gather(self.code_points.flat_values, index.flat_values))
        return start_chars.with_flat_values(tf.strings.unicode_encode(chars, "UTF-8"))


def tokenize_with_offsets(preprocessor, strings, original=None):
    """Word pieces of `strings` [B] with their byte offsets into `strings`.

    Returns (ids, starts, ends): int32 ids [B, (P)] equal to `preprocessor.tokenize`,
    and int64 [B, (P)] byte offsets: piece j of row b comes from
    `strings[b][starts[b, j]:ends[b, j]]`. A piece never starts or ends inside a
    character. A word that became one [UNK] spans the whole word. `original` is the
    OriginalText of `strings`, if the caller has one.
    """
    pre = preprocessor
    strings = tf.convert_to_tensor(strings, tf.string)
    original = original or OriginalText(strings)
    normalized, norm_offsets = pre._normalizer.normalize_with_offsets(strings)  # [B], [B, (N+1)]
    resolved = normalized
    for pattern, rewrite in pre._sigma_rules:
        resolved = tf.strings.regex_replace(resolved, pattern, rewrite)
    ids, starts, ends = pre._exact_wordpiece.tokenize_with_offsets(resolved)  # [B, (P)]
    ids, starts, ends = _apply_word_length_limit(pre, resolved, ids, starts, ends)

    # Offsets in `resolved` -> offsets in `normalized`: every marker before a position
    # was one byte longer there (3-byte private-use character vs 2-byte σ/ς).
    if pre._sigma_rules:
        chars, char_starts = tf.strings.unicode_decode_with_offsets(normalized, "UTF-8")
        is_marker = tf.equal(chars, ord(pre._sigma_marker))                # [B, (C)]
        marker_at = tf.ragged.boolean_mask(char_starts, is_marker)         # [B, (K)]
        marker_index = tf.ragged.range(marker_at.row_lengths(), dtype=tf.int64)
        resolved_marker_at = marker_at - marker_index                      # sorted per row
        starts = starts.with_flat_values(
            starts.flat_values + _count_before(resolved_marker_at, starts, "left"))
        ends = ends.with_flat_values(
            ends.flat_values + _count_before(resolved_marker_at, ends, "left"))

    # Offsets in `normalized` -> offsets in `strings`. A piece starts where the
    # character behind its first byte starts; it ends where the character behind its
    # last byte ends (not where the next normalised byte comes from: dropped control
    # characters or invalid bytes may lie in between).
    orig_start = _gather_in_rows(norm_offsets, starts)                     # [P]
    last_byte = ends.with_flat_values(tf.maximum(ends.flat_values - 1, 0))
    orig_last = ends.with_flat_values(_gather_in_rows(norm_offsets, last_byte))
    orig_end = original.byte_offset(original.char_index(orig_last, "right"))
    return ids, starts.with_flat_values(orig_start), orig_end


def _apply_word_length_limit(pre, resolved, ids, starts, ends):
    """Google's 200-character word limit, as BertPreprocessor._tokenize_exact applies it:
    a longer word becomes one [UNK] piece, which here spans the whole word."""
    # P=pieces (flat), W=words (flat), L=long-word candidates.
    piece_ids = ids.flat_values                                            # [P]
    piece_rows = ids.value_rowids()                                        # [P]
    starts_word = tf.logical_not(tf.gather(pre._is_suffix, piece_ids))     # [P]
    word_of_piece = tf.cumsum(tf.cast(starts_word, tf.int32)) - 1          # [P]
    num_words = tf.reduce_sum(tf.cast(starts_word, tf.int32))
    first_piece = tf.where(starts_word)[:, 0]                              # [W]
    word_start = tf.gather(starts.flat_values, first_piece)                # [W]
    word_end = tf.math.unsorted_segment_max(
        ends.flat_values, word_of_piece, num_words)                        # [W]
    # Only a word of more than 200 bytes can have more than 200 characters.
    limit = _max_chars_per_word()
    candidate = tf.where(word_end - word_start > limit)[:, 0]              # [L]
    candidate_text = tf.strings.substr(
        tf.gather(resolved, tf.gather(tf.gather(piece_rows, first_piece), candidate)),
        tf.gather(word_start, candidate),
        tf.gather(word_end - word_start, candidate),
    )                                                                      # [L]
    candidate_too_long = tf.cast(
        tf.strings.length(candidate_text, unit="UTF8_CHAR") > limit, tf.int32)
    too_long = tf.scatter_nd(
        candidate[:, tf.newaxis], candidate_too_long, tf.cast(num_words, tf.int64)[tf.newaxis]
    ) > 0                                                                  # [W]
    piece_too_long = tf.gather(too_long, word_of_piece)                    # [P]
    keep = tf.logical_or(tf.logical_not(piece_too_long), starts_word)      # [P]
    new_ids = tf.where(piece_too_long, pre.unk_id, piece_ids)
    new_ends = tf.where(piece_too_long, tf.gather(word_end, word_of_piece), ends.flat_values)

    def rebuild(values):
        return tf.RaggedTensor.from_value_rowids(
            tf.boolean_mask(values, keep), tf.boolean_mask(piece_rows, keep),
            nrows=ids.nrows(), validate=False)

    return rebuild(new_ids), rebuild(starts.flat_values), rebuild(new_ends)


def _max_chars_per_word():
    from tfbert.text.bert_preprocessor import MAX_CHARS_PER_WORD

    return MAX_CHARS_PER_WORD
