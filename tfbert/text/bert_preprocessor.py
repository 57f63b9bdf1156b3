"""BertPreprocessor: Google's BERT tokenization and input packing, in-graph."""

import os
import shutil
import tempfile
import weakref

import keras
import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text
from tensorflow_text.core.pybinds import pywrap_fast_wordpiece_tokenizer_model_builder

from tfbert import features
from tfbert.config import write_text_atomic
from tfbert.text import normalization
from tfbert.text.wordpiece import MAX_CHARS_PER_WORD

CLS = "[CLS]"
SEP = "[SEP]"
UNK = "[UNK]"
PAD = "[PAD]"
MASK = "[MASK]"

# A UTF-8 character has at most 4 bytes, so a word of more than this many bytes is
# certainly over MAX_CHARS_PER_WORD.
_MAX_BYTES_PER_WORD = 4 * MAX_CHARS_PER_WORD


def read_vocabulary(path):
    """The tokens of a vocab.txt, one per line, ids in line order."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f]


def _check_vocabulary(tokens):
    seen = {}
    for i, token in enumerate(tokens):
        if not token:
            raise ValueError(f"vocabulary line {i + 1} is empty")
        if token in seen:
            raise ValueError(
                f"vocabulary token {token!r} appears twice (lines {seen[token] + 1} and "
                f"{i + 1}); its id would be ambiguous"
            )
        seen[token] = i
    missing = [t for t in (CLS, SEP, UNK) if t not in seen]
    if missing:
        raise ValueError(f"vocabulary lacks the special token(s) {', '.join(missing)}")
    return seen


@keras.saving.register_keras_serializable(package="tfbert")
class BertPreprocessor(keras.layers.Layer):
    """Turns raw strings into BERT's model inputs, exactly like google-research/bert.

    `preprocessor(text)` with a string tensor [B] (or a list of str), or
    `preprocessor(text, text_b)` (or `preprocessor((text, text_b))`) for pairs, returns
    {input_word_ids, input_mask, input_type_ids}, int32 [B, seq_length]: `[CLS] A [SEP]`
    or `[CLS] A [SEP] B [SEP]`, pairs truncated longest-first like Google's
    `_truncate_seq_pair`, zero padded. A scalar string gives [seq_length]. Everything runs as TensorFlow and TF Text ops, so
    it works inside `tf.data`, `tf.function` and an exported SavedModel (TF Serving).

    Word pieces are Google's `FullTokenizer` ids (tests/text check them on real text):
    - normalisation is Google's BasicTokenizer compiled into one FastBertNormalizer
      pass (see normalization.py): invalid UTF-8 dropped as `decode("utf-8",
      "ignore")` does, control characters removed, whitespace normalised, and for
      `lowercase=True` Python's lower-casing, NFD and accent stripping;
    - FastWordpieceTokenizer splits on whitespace, punctuation and CJK characters and
      applies WordPiece (greedy longest match first);
    - rows that come out with an [UNK] take a second, exact pass for the two rules a
      per-character table cannot hold: a word over 200 characters is one [UNK] (Google's
      limit is characters, the fast pass counts bytes), and "Σ" lower-cases to "ς" at
      the end of a word (Python's Final_Sigma rule).

    Args:
      vocabulary: a list of tokens, or the path of a vocab.txt (one token per line). It
        must hold [CLS], [SEP] and [UNK].
      seq_length: the packed length, [CLS] and [SEP]s included.
      lowercase: True for uncased models (lower-case and strip accents).
    """

    def __init__(self, vocabulary, seq_length=128, lowercase=True, **kwargs):
        super().__init__(**kwargs)
        # Strings in, int32 out: nothing here is a float to cast, and numpy object
        # arrays of str must reach tf.convert_to_tensor untouched.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        if isinstance(vocabulary, (str, os.PathLike)):
            vocabulary = read_vocabulary(vocabulary)
        tokens = tuple(str(t) for t in vocabulary)
        if seq_length < 3:
            raise ValueError(f"seq_length must be at least 3 ([CLS] a [SEP]), got {seq_length}")
        self._token_ids = _check_vocabulary(tokens)
        self._tokens = tokens
        self.seq_length = int(seq_length)
        self.lowercase = bool(lowercase)

        # The vocabulary travels with every SavedModel that holds this layer, as
        # assets/vocab.txt; the graph itself carries the compiled models below.
        self._asset_dir = tempfile.mkdtemp(prefix="tfbert-vocab-")
        weakref.finalize(self, shutil.rmtree, self._asset_dir, ignore_errors=True)
        vocab_path = os.path.join(self._asset_dir, "vocab.txt")
        write_text_atomic(vocab_path, "".join(t + "\n" for t in tokens))
        self.vocabulary_file = tf.saved_model.Asset(vocab_path)

        # Two private-use characters no token contains: one stands in for "Σ" until its
        # final form is decided, the other for characters that must stay inside a word
        # yet can never be matched (see normalization.normalizer_model).
        self._sigma_marker, sentinel = normalization.choose_private_chars(tokens)
        self._normalizer = tf_text.FastBertNormalizer(
            model_buffer=_uint8_tensor(normalization.normalizer_model(
                self.lowercase, self._sigma_marker, sentinel
            ))
        )
        # Fast pass: a word of more than 200 bytes becomes [UNK]; that is exact for
        # ASCII words, and any other such row is redone by the exact pass.
        self._fast_wordpiece = tf_text.FastWordpieceTokenizer(
            model_buffer=_wordpiece_model(tokens, MAX_CHARS_PER_WORD),
            token_out_type=tf.int32,
        )
        self._exact_wordpiece = tf_text.FastWordpieceTokenizer(
            model_buffer=_wordpiece_model(tokens, _MAX_BYTES_PER_WORD),
            token_out_type=tf.int32,
        )
        # Continuation pieces ("##ing"); every other piece starts a word.
        self._is_suffix = tf.constant([t.startswith("##") and len(t) > 2 for t in tokens])
        self._sigma_rules = (
            normalization.sigma_rules(self._sigma_marker) if self.lowercase else ()
        )
        self.built = True

    # ---------------------------------------------------------------- vocabulary

    @property
    def vocabulary(self):
        return list(self._tokens)

    @property
    def vocabulary_size(self):
        return len(self._tokens)

    def token_to_id(self, token):
        if token not in self._token_ids:
            raise KeyError(f"{token!r} is not in the vocabulary")
        return self._token_ids[token]

    def id_to_token(self, token_id):
        return self._tokens[token_id]

    @property
    def cls_id(self):
        return self._token_ids[CLS]

    @property
    def sep_id(self):
        return self._token_ids[SEP]

    @property
    def unk_id(self):
        return self._token_ids[UNK]

    @property
    def pad_id(self):
        """The id that pads input_word_ids: 0, as in Google's run_classifier.py."""
        return 0

    @property
    def mask_id(self):
        """The id of [MASK] (for masked-LM data), or None if the vocabulary lacks it."""
        return self._token_ids.get(MASK)

    # ---------------------------------------------------------------- tokenizing

    def tokenize(self, strings):
        """Word-piece ids of a string tensor [B], no special tokens: int32 [B, (pieces)].

        A scalar string gives a 1-D tensor of ids.
        """
        strings = tf.convert_to_tensor(strings, tf.string)
        if strings.shape.rank == 0:
            return self.tokenize(strings[tf.newaxis])[0]
        if strings.shape.rank != 1:
            raise ValueError(f"expected a string tensor [batch], got shape {strings.shape}")
        # B=batch, P=pieces of a row.
        normalized = self._normalizer.normalize(strings)                   # [B]
        ids = self._fast_wordpiece.tokenize(normalized)                   # [B, (P)]
        has_unk = tf.reduce_any(tf.equal(ids, self.unk_id), axis=1)        # [B]
        return tf.cond(
            tf.reduce_any(has_unk),
            lambda: self._redo_rows(ids, normalized, has_unk),
            lambda: ids,
        )

    def _redo_rows(self, ids, normalized, redo):
        """`ids` with the rows flagged in `redo` replaced by the exact pass."""
        # N=rows redone, K=rows kept.
        redo_rows = tf.where(redo)[:, 0]                                   # [N]
        keep_rows = tf.where(tf.logical_not(redo))[:, 0]                   # [K]
        exact = self._tokenize_exact(tf.gather(normalized, redo_rows))     # [N, (P)]
        stacked = tf.concat([tf.gather(ids, keep_rows), exact], axis=0)    # [K+N, (P)]
        order = tf.math.invert_permutation(tf.concat([keep_rows, redo_rows], axis=0))
        return tf.gather(stacked, order)                                   # [B, (P)]

    def _tokenize_exact(self, normalized):
        """Word pieces with Final_Sigma and the 200-character word limit applied."""
        # N=rows, P=pieces (flat), W=words (flat), L=long-word candidates.
        for pattern, rewrite in self._sigma_rules:
            normalized = tf.strings.regex_replace(normalized, pattern, rewrite)
        ids, starts, ends = self._exact_wordpiece.tokenize_with_offsets(normalized)
        piece_ids = ids.flat_values                                        # [P]
        piece_rows = ids.value_rowids()                                    # [P]
        starts_word = tf.logical_not(tf.gather(self._is_suffix, piece_ids))  # [P]
        word_of_piece = tf.cumsum(tf.cast(starts_word, tf.int32)) - 1      # [P]
        num_words = tf.reduce_sum(tf.cast(starts_word, tf.int32))
        first_piece = tf.where(starts_word)[:, 0]                          # [W]
        word_start = tf.gather(starts.flat_values, first_piece)            # [W]
        word_end = tf.math.unsorted_segment_max(
            ends.flat_values, word_of_piece, num_words
        )                                                                  # [W]
        # Only a word of more than 200 bytes can have more than 200 characters; count
        # the characters of those few.
        candidate = tf.where(word_end - word_start > MAX_CHARS_PER_WORD)[:, 0]  # [L]
        candidate_text = tf.strings.substr(
            tf.gather(normalized, tf.gather(tf.gather(piece_rows, first_piece), candidate)),
            tf.gather(word_start, candidate),
            tf.gather(word_end - word_start, candidate),
        )                                                                  # [L]
        candidate_too_long = tf.cast(
            tf.strings.length(candidate_text, unit="UTF8_CHAR") > MAX_CHARS_PER_WORD,
            tf.int32,
        )                                                                  # [L]
        too_long = tf.scatter_nd(
            candidate[:, tf.newaxis],
            candidate_too_long,
            tf.cast(num_words, tf.int64)[tf.newaxis],
        ) > 0                                                              # [W]
        piece_too_long = tf.gather(too_long, word_of_piece)                # [P]
        # A long word keeps one piece, its first, as [UNK].
        keep = tf.logical_or(tf.logical_not(piece_too_long), starts_word)  # [P]
        new_ids = tf.where(piece_too_long, self.unk_id, piece_ids)
        return tf.RaggedTensor.from_value_rowids(
            tf.boolean_mask(new_ids, keep),
            tf.boolean_mask(piece_rows, keep),
            nrows=ids.nrows(),
            validate=False,
        )

    # ---------------------------------------------------------------- packing

    def call(self, inputs, text_b=None):
        if isinstance(inputs, dict):
            inputs, text_b = inputs[features.TEXT], inputs.get(features.TEXT_B)
        elif _is_pair(inputs):
            if len(inputs) != 2 or text_b is not None:
                raise ValueError("pass (text, text_b) as one pair, or text and text_b")
            inputs, text_b = inputs
        text = tf.convert_to_tensor(inputs, tf.string)
        if text.shape.rank == 0:
            pair = None if text_b is None else tf.convert_to_tensor(text_b, tf.string)[None]
            packed = self.call(text[tf.newaxis], pair)
            return {name: value[0] for name, value in packed.items()}
        a = self.tokenize(text)
        b = None if text_b is None else self.tokenize(text_b)
        return self.pack(a, b)

    def pack(self, a, b=None):
        """Packs word pieces [B, (P)] (and a second segment) into the model inputs.

        Google's run_classifier.convert_single_example: `[CLS] A [SEP] (B [SEP])`,
        zero padded. A second segment with no pieces packs like a single one, as there.
        """
        # B=batch, S=seq_length. Dense slot arithmetic rather than ragged concatenation:
        # a handful of ops, so tracing (tf.data, tf.function, export) stays quick.
        seq_length = self.seq_length
        batch = a.nrows()
        len_a = a.row_lengths()                                            # [B]
        len_b = tf.zeros_like(len_a) if b is None else b.row_lengths()    # [B]
        keep_a, keep_b = truncate_pair_lengths(len_a, len_b, seq_length)
        has_b = (keep_b > 0)[:, tf.newaxis]                                # [B, 1]
        end_a = keep_a[:, tf.newaxis]                                      # [B, 1]
        end_b = end_a + 1 + keep_b[:, tf.newaxis]                          # [B, 1]
        slot = tf.broadcast_to(
            tf.range(seq_length, dtype=len_a.dtype), tf.stack([batch, seq_length])
        )                                                                  # [B, S]

        def pieces_at(segment, index):
            # The first S pieces of each row, read at index (clipped; masked later).
            dense = segment.to_tensor(default_value=0, shape=[None, seq_length])  # [B, S]
            return tf.gather(dense, tf.clip_by_value(index, 0, seq_length - 1),
                             batch_dims=1)                                 # [B, S]

        # [CLS] at 0, A at 1..end_a, [SEP] at end_a + 1, then B and its [SEP].
        word_ids = tf.where(slot <= end_a, pieces_at(a, slot - 1), 0)
        word_ids = tf.where(slot == 0, self.cls_id, word_ids)
        word_ids = tf.where(slot == end_a + 1, self.sep_id, word_ids)
        if b is not None:
            in_b = tf.logical_and(slot > end_a + 1, slot <= end_b)
            word_ids = tf.where(in_b, pieces_at(b, slot - end_a - 2), word_ids)
            word_ids = tf.where(tf.logical_and(has_b, slot == end_b + 1), self.sep_id,
                                word_ids)
        total = end_b + 1 + tf.cast(has_b, end_b.dtype)                    # [B, 1]
        mask = slot < total                                                # [B, S]
        type_ids = tf.logical_and(mask, slot > end_a + 1)
        return {
            features.INPUT_WORD_IDS: tf.ensure_shape(
                tf.where(mask, word_ids, 0), [None, seq_length]),
            features.INPUT_MASK: tf.ensure_shape(tf.cast(mask, tf.int32), [None, seq_length]),
            features.INPUT_TYPE_IDS: tf.ensure_shape(
                tf.cast(type_ids, tf.int32), [None, seq_length]),
        }

    def compute_output_spec(self, inputs, text_b=None):
        if isinstance(inputs, dict):
            inputs = inputs[features.TEXT]
        elif _is_pair(inputs):
            inputs = inputs[0]
        shape = tuple(inputs.shape) + (self.seq_length,)
        return {
            name: keras.KerasTensor(shape, dtype="int32") for name in features.MODEL_INPUTS
        }

    # ---------------------------------------------------------------- config

    def get_config(self):
        config = super().get_config()
        config.update(
            vocabulary=list(self._tokens),
            seq_length=self.seq_length,
            lowercase=self.lowercase,
        )
        return config

    @classmethod
    def from_preset(cls, directory, seq_length=None, **kwargs):
        """The preprocessor of a tfbert model directory (its vocab.txt and `lowercase`).

        seq_length: default the fine-tuned model's own (task.json's seq_length), else 128.
        """
        from tfbert.models import presets

        config = presets.load_config(directory)
        if seq_length is None:
            seq_length = (presets.load_task_info(directory) or {}).get("seq_length") or 128
        return cls(
            presets.load_vocabulary(directory), seq_length=seq_length,
            lowercase=config.lowercase, **kwargs,
        )


def _is_pair(inputs):
    # A tuple is (text, text_b), as tf.data hands pair datasets to map functions; a list
    # is a pair only of tensors or arrays, since ["one text", "another"] is a batch.
    if isinstance(inputs, tuple):
        return True
    return isinstance(inputs, list) and not all(isinstance(x, (str, bytes)) for x in inputs)


def _uint8_tensor(buffer):
    # The TF Text modules turn a bytes model into list(bytes) first; a numpy view is
    # much faster for models of a megabyte or more.
    return tf.constant(np.frombuffer(buffer, dtype=np.uint8))


def _wordpiece_model(tokens, max_bytes_per_word):
    """FastWordpieceTokenizer's model: Google's "##" suffixes and [UNK], splitting on
    whitespace, punctuation and CJK characters itself (no_pretokenization=False)."""
    return _uint8_tensor(
        pywrap_fast_wordpiece_tokenizer_model_builder.build_fast_wordpiece_model(
            list(tokens), max_bytes_per_word, "##", UNK, False, False
        )
    )


def truncate_pair_lengths(len_a, len_b, seq_length):
    """Lengths Google's `_truncate_seq_pair` leaves, in closed form.

    Google pops the last piece of the longer segment (of B on a tie) until A + B fit in
    seq_length - 3; that leaves the shorter one whole if it fits in half, else ceil(m/2)
    pieces of A and floor(m/2) of B. With an empty B (a single segment) A keeps
    seq_length - 2.
    """
    has_b = len_b > 0
    budget = tf.where(has_b, seq_length - 3, seq_length - 2)              # [B]
    budget = tf.cast(budget, len_a.dtype)
    fits = len_a + len_b <= budget
    half_up = (budget + 1) // 2
    half_down = budget // 2
    keep_a = tf.where(
        fits, len_a, tf.minimum(len_a, tf.maximum(budget - len_b, half_up))
    )
    keep_b = tf.where(
        fits, len_b, tf.minimum(len_b, tf.maximum(budget - len_a, half_down))
    )
    return keep_a, keep_b


