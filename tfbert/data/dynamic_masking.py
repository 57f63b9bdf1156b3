"""Online pretraining data: raw text files to masked-LM batches, with fresh masks every epoch.

The offline path (create_pretraining_data + records.pretraining_dataset) fixes the masks
when the records are written, so every epoch sees the same ones (Google's `dupe_factor`
only copies them). Here the whole pipeline runs in tf.data, after `repeat()`:

  text files (one sentence per line, blank line between documents)
    -> documents -> shuffled -> windows of `window_size` documents
    -> tokenized in-graph (BertPreprocessor.tokenize)
    -> instances: NSP pairs like Google's, or RoBERTa-style packed sentences
    -> shuffled -> per-replica batches (drop_remainder)
    -> masked in-graph with tensorflow-text (RandomItemSelector, MaskValuesChooser,
       mask_language_model, pad_model_inputs)

so both the masks and the NSP pairs are drawn anew each epoch. The batches have exactly
the structure and dtypes of `records.pretraining_dataset`, so `PretrainingTask` trains on
either.

Differences from google-research/bert, all deliberate:
- "Random next" segments come from another document of the same window (`window_size`
  documents, drawn after a document shuffle of `shuffle_buffer`), not from the whole
  corpus: a stream cannot hold the corpus. A window of one document (only at the very
  end of a non-training pass) pairs a document with itself.
- The number of masked pieces is tensorflow-text's RandomItemSelector rule,
  min(max_predictions_per_seq, ceil(masked_lm_prob * real pieces)), counting only
  maskable pieces ([CLS] and [SEP] excluded), where Google rounds over all of them.
- Whole-word masking draws words in random order and takes them while their pieces fit
  the same budget (a word longer than the whole budget is skipped); Google keeps trying
  later words after the first that does not fit, so it fills the budget a little more.
- A "##" piece right after [CLS]/[SEP] (a segment cut mid-word) starts a word of its
  own; Google attaches it to the word before the [SEP].
"""

import random

import tensorflow as tf

from tfbert.data import records
import tensorflow_text as tf_text

from tfbert.data.records import list_record_files
from tfbert.features import (
    INPUT_MASK,
    INPUT_TYPE_IDS,
    INPUT_WORD_IDS,
    MASKED_LM_POSITIONS,
    RECORD_MASKED_LM_IDS,
    RECORD_MASKED_LM_WEIGHTS,
    RECORD_NEXT_SENTENCE_LABELS,
)


def dynamic_pretraining_dataset(
    file_patterns,
    preprocessor,
    global_batch_size=None,
    batch_size=None,
    *,
    max_seq_length,
    max_predictions_per_seq,
    masked_lm_prob=0.15,
    nsp=True,
    whole_word_masking=False,
    short_seq_prob=0.1,
    input_context=None,
    is_training=True,
    seed=None,
    shuffle_buffer=10000,
    window_size=128,
    cycle_length=8,
):
    """A `tf.data.Dataset` of `(features, labels)` batches masked on the fly from text.

    Args:
      file_patterns: a glob, a comma-separated string of globs, or a list of globs of
        text files: one sentence per line, a blank line between documents.
      preprocessor: a `BertPreprocessor`; its `tokenize` runs in the pipeline and its
        vocabulary supplies [CLS], [SEP], [MASK] and the "##" word continuations.
      global_batch_size: the batch size over all replicas; with `input_context` each
        replica gets `input_context.get_per_replica_batch_size(global_batch_size)`.
      batch_size: the batch size this dataset yields (instead of `global_batch_size`).
      max_seq_length, max_predictions_per_seq: S and P of the outputs.
      masked_lm_prob: the fraction of real pieces to predict (at most P per sequence).
      nsp: True: `[CLS] A [SEP] B [SEP]` pairs, B the actual next sentences (label 0) or
        sentences from another document (label 1), each half the time, like Google's.
        False: RoBERTa's FULL-SENTENCES: `[CLS] s1 s2 ... [SEP]`, whole sentences packed
        up to S, running on across documents with a [SEP] after each document's last
        sentence; all type ids and next_sentence_labels are 0 (train without the NSP
        loss). A sentence longer than S - 2 pieces is cut to fit.
      whole_word_masking: mask all pieces of a word (a piece and the "##" pieces after
        it) or none of them.
      short_seq_prob: with nsp, how often an instance aims at a random shorter length
        (Google's short_seq_prob).
      input_context: a `tf.distribute.InputContext`; files are sharded across its
        input pipelines.
      is_training: shuffle files, documents and instances and repeat forever; else one
        ordered pass (still masked at random; seeded if `seed` is set).
      seed: makes the whole pipeline reproducible (every random draw is stateless, keyed by
        the seed and the window number or a seeded per-batch key, so it runs in parallel
        all the same; each new iteration of the dataset masks afresh).
        None: a fresh random pipeline each time.
      shuffle_buffer: documents, and then instances, in the shuffle buffers (training).
      window_size: documents per window; "random next" segments come from the same
        window, which is also the unit of NSP pairing and packing work.
      cycle_length: files read in parallel.

    Returns:
      `(features, labels)`: features {input_word_ids, input_mask, input_type_ids} int32
      [B, S] and {masked_lm_positions} int32 [B, P]; labels {masked_lm_ids} int32 [B, P],
      {masked_lm_weights} float32 [B, P], {next_sentence_labels} int32 [B, 1].
    """
    # B=batch, S=max_seq_length, P=max_predictions_per_seq, W=documents in a window.
    batch_size = records.per_replica_batch_size(global_batch_size, batch_size, input_context)
    if max_seq_length < 5:
        raise ValueError(f"max_seq_length must be at least 5, got {max_seq_length}")
    if max_predictions_per_seq < 1:
        raise ValueError(f"max_predictions_per_seq must be >= 1, got {max_predictions_per_seq}")
    if not 0.0 < masked_lm_prob <= 1.0:
        raise ValueError(f"masked_lm_prob must be in (0, 1], got {masked_lm_prob}")
    if preprocessor.mask_id is None:
        raise ValueError("the vocabulary has no [MASK] token; masked LM needs one")
    try:
        files = list_record_files(file_patterns)
    except FileNotFoundError as e:
        raise FileNotFoundError(str(e).replace("TFRecord files", "text files")) from None

    if input_context is not None and input_context.num_input_pipelines > 1:
        num, index = input_context.num_input_pipelines, input_context.input_pipeline_id
        if len(files) < num:
            raise ValueError(
                f"{len(files)} text files cannot be sharded across {num} input pipelines; "
                "split the corpus into at least one file per pipeline"
            )
        files = files[index::num]

    deterministic = seed is not None or not is_training
    # Pairing and packing use stateless ops keyed by (base seed, window number), so they
    # are reproducible even when run in parallel; a new window number each epoch (the
    # count runs on after repeat) gives new pairs each epoch.
    base_seed = seed if seed is not None else random.SystemRandom().randrange(2**31)

    dataset = tf.data.Dataset.from_tensor_slices(files)
    if is_training:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.repeat()
    dataset = dataset.interleave(
        _documents,
        cycle_length=min(cycle_length, len(files)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )                                                       # documents: string [(lines)]
    if is_training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.ragged_batch(window_size)             # string [W, (lines)]
    dataset = dataset.enumerate()

    S, P = max_seq_length, max_predictions_per_seq
    make = _nsp_instances if nsp else _packed_instances

    def instances(index, window):
        window_seed = tf.stack([tf.constant(base_seed, tf.int64), index])
        pieces, doc_lengths = _tokenize_window(preprocessor, window)
        return make(pieces, doc_lengths, preprocessor, S, short_seq_prob, window_seed)

    dataset = dataset.map(
        instances, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
    )
    dataset = dataset.unbatch()
    if is_training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)

    masker = _Masker(preprocessor, P, masked_lm_prob, whole_word_masking, base_seed)
    # One random key per batch, a new stream each time the dataset is iterated (fresh
    # masks each epoch, also for model.fit over a dataset that does not repeat), the
    # same streams for the same seed. The masks are stateless ops of that key:
    # reproducible in parallel too.
    keys = tf.data.Dataset.random(seed=base_seed, rerandomize_each_iteration=True)
    dataset = tf.data.Dataset.zip((keys, dataset)).map(
        masker, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
    )
    options = tf.data.Options()
    options.deterministic = deterministic
    dataset = dataset.with_options(options)
    return dataset.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------- documents


def _documents(path):
    """The documents of one text file: string vectors of their lines, blank lines split."""
    # A blank line after the last one flushes the final document.
    lines = tf.data.TextLineDataset(path).concatenate(
        tf.data.Dataset.from_tensors(tf.constant(""))
    )

    def step(current, line):
        blank = tf.equal(tf.strings.strip(line), "")
        following = tf.cond(
            blank, lambda: current[:0], lambda: tf.concat([current, line[tf.newaxis]], 0)
        )
        return following, (blank, current)

    docs = lines.scan(tf.zeros([0], tf.string), step)
    docs = docs.filter(lambda done, doc: tf.logical_and(done, tf.size(doc) > 0))
    return docs.map(lambda done, doc: doc)


def _tokenize_window(preprocessor, window):
    """Word pieces [N, (T)] of a window's non-empty sentences, and sentences per document.

    Lines that tokenize to nothing are dropped, as Google's reader does, and so are
    documents left with no sentence: doc_lengths [W'] > 0.
    """
    pieces = preprocessor.tokenize(window.flat_values)                     # [N0, (T)]
    non_empty = pieces.row_lengths() > 0                                   # [N0]
    pieces = tf.ragged.boolean_mask(pieces, non_empty)                     # [N, (T)]
    doc_lengths = tf.math.unsorted_segment_sum(
        tf.cast(non_empty, tf.int64), window.value_rowids(), window.nrows()
    )                                                                      # [W]
    return pieces, tf.boolean_mask(doc_lengths, doc_lengths > 0)           # [W']


def _randint(u, low, high):
    """Uniform integers in [low, high] (inclusive, like random.randint) from u in [0, 1)."""
    low = tf.cast(low, tf.int64)
    span = tf.cast(high, tf.int64) - low
    return low + tf.minimum(
        tf.cast(tf.floor(u * tf.cast(span + 1, tf.float32)), tf.int64), span
    )


def _pack(preprocessor, flat, starts_ends, S):
    """`[CLS] A [SEP] (B [SEP])` padded to S from (start, end) offsets into `flat`."""
    segments = [
        tf.gather(flat, tf.ragged.range(start, end)) for start, end in starts_ends
    ]                                                                      # k x [M, (T)]
    ids, type_ids = tf_text.combine_segments(
        segments, preprocessor.cls_id, preprocessor.sep_id
    )                                                                      # [M, (S)]
    word_ids, mask = tf_text.pad_model_inputs(ids, S)                      # [M, S]
    type_ids, _ = tf_text.pad_model_inputs(type_ids, S)                    # [M, S]
    return word_ids, tf.cast(mask, tf.int32), tf.cast(type_ids, tf.int32)


def _nsp_instances(pieces, doc_lengths, preprocessor, S, short_seq_prob, seed):
    """Google's create_instances_from_document for every document of a window at once.

    One loop step makes one instance for each document that has sentences left: it draws
    a target length (max, or with short_seq_prob a random shorter one), takes whole
    sentences from the document until they reach it, splits them into A and B at a random
    sentence, and half the time (always for a single sentence) replaces B by sentences
    from a random start in another document of the window, putting the unused sentences
    back. Pairs over max_num_tokens are cut from the longer segment, front or back at
    random, like Google's truncate_seq_pair.
    """
    # W=documents, N=sentences, M=instances.
    max_num_tokens = tf.constant(S - 3, tf.int64)
    flat = tf.cast(pieces.flat_values, tf.int32)
    cum = tf.concat([[0], tf.cumsum(pieces.row_lengths())], 0)             # [N+1]
    doc_end = tf.cumsum(doc_lengths)                                       # [W]
    doc_start = doc_end - doc_lengths                                      # [W]
    num_docs = tf.size(doc_lengths, out_type=tf.int64)
    doc = tf.range(num_docs)                                               # [W]

    def sentences_until(first, length, stop):
        # The end (exclusive) of the whole sentences from `first` whose pieces first
        # reach `length`: at least one sentence, at most up to `stop`.
        reach = tf.gather(cum, first) + length
        end = tf.searchsorted(cum, reach, side="left", out_type=tf.int64)                    # cum[end] >= reach
        return tf.clip_by_value(end, first + 1, stop)

    def body(step, pos, arrays):
        active = pos < doc_end                                             # [W]
        pos_c = tf.minimum(pos, doc_end - 1)
        u = tf.random.stateless_uniform(
            [7, num_docs], tf.random.experimental.stateless_fold_in(seed, step)
        )
        target = tf.where(
            u[0] < short_seq_prob, _randint(u[1], 2, max_num_tokens), max_num_tokens
        )                                                                  # [W]
        chunk_end = sentences_until(pos_c, target, doc_end)                # [W]
        num_lines = chunk_end - pos_c
        a_lines = tf.where(
            num_lines >= 2, _randint(u[2], 1, num_lines - 1), tf.ones_like(num_lines)
        )
        a_start = tf.gather(cum, pos_c)
        a_end = tf.gather(cum, pos_c + a_lines)
        random_next = tf.logical_or(num_lines == 1, u[3] < 0.5)
        # Another document of the window, uniformly (itself only if it is alone).
        other = _randint(u[4], 0, tf.maximum(num_docs - 2, 0))
        other = tf.where(tf.logical_and(num_docs > 1, other >= doc), other + 1, other)
        other_start = tf.gather(doc_start, other)
        other_end = tf.gather(doc_end, other)
        start_line = _randint(u[5], other_start, other_end - 1)
        target_b = tf.maximum(target - (a_end - a_start), 1)
        stop_line = sentences_until(start_line, target_b, other_end)
        b_start = tf.where(random_next, tf.gather(cum, start_line), a_end)
        b_end = tf.where(
            random_next, tf.gather(cum, stop_line), tf.gather(cum, chunk_end)
        )
        # Unused sentences after A go back when B came from elsewhere.
        next_pos = tf.where(random_next, pos_c + a_lines, chunk_end)
        spans = _truncate_pair(
            a_start, a_end, b_start, b_end, max_num_tokens,
            tf.random.experimental.stateless_fold_in(seed, -1 - step),
        )
        new = spans + (tf.cast(random_next, tf.int64), active)
        arrays = tuple(array.write(step, x) for array, x in zip(arrays, new))
        return step + 1, tf.where(active, next_pos, pos), arrays

    arrays = tuple(
        tf.TensorArray(dtype, size=0, dynamic_size=True, element_shape=[None])
        for dtype in [tf.int64] * 5 + [tf.bool]
    )
    _, _, arrays = tf.while_loop(
        lambda step, pos, arrays: tf.reduce_any(pos < doc_end),
        body,
        (tf.constant(0, tf.int32), doc_start, arrays),
    )
    keep = tf.reshape(arrays[-1].stack(), [-1])
    a_start, a_end, b_start, b_end, label = (
        tf.boolean_mask(tf.reshape(a.stack(), [-1]), keep) for a in arrays[:-1]
    )                                                                      # 5 x [M]
    word_ids, mask, type_ids = _pack(
        preprocessor, flat, [(a_start, a_end), (b_start, b_end)], S
    )
    return {
        INPUT_WORD_IDS: word_ids,
        INPUT_MASK: mask,
        INPUT_TYPE_IDS: type_ids,
        RECORD_NEXT_SENTENCE_LABELS: tf.cast(label, tf.int32)[:, tf.newaxis],  # [M, 1]
    }


def _truncate_pair(a_start, a_end, b_start, b_end, max_num_tokens, seed):
    """Google's truncate_seq_pair on offsets, vectorised (see pretraining_instances.py).

    Google removes one piece at a time from the longer segment (B on ties), from the
    front or the back with probability 1/2: the number each segment loses is fixed by
    the lengths, and how many come off the front is Binomial(cuts, 1/2).
    """
    len_a, len_b = a_end - a_start, b_end - b_start
    excess = tf.maximum(len_a + len_b - max_num_tokens, 0)
    zero = tf.zeros_like(excess)
    cut_a = tf.where(len_a > len_b, tf.minimum(excess, len_a - len_b), zero)
    cut_b = tf.where(len_a > len_b, zero, tf.minimum(excess, len_b - len_a))
    rest = excess - cut_a - cut_b
    cut_b += (rest + 1) // 2
    cut_a += rest // 2
    counts = tf.cast(tf.stack([cut_a, cut_b]), tf.float32)                # [2, W]
    front = tf.cast(
        tf.random.stateless_binomial(tf.shape(counts), seed, counts, probs=0.5), tf.int64
    )
    return (
        a_start + front[0], a_end - (cut_a - front[0]),
        b_start + front[1], b_end - (cut_b - front[1]),
    )


def _packed_instances(pieces, doc_lengths, preprocessor, S, short_seq_prob, seed):
    """RoBERTa FULL-SENTENCES: whole sentences packed greedily into `[CLS] ... [SEP]`.

    Sentences run on across documents with a [SEP] after each document's last sentence.
    The last sequence of a window is whatever is left (usually shorter).
    """
    del short_seq_prob, seed  # packing is deterministic given the document order
    # N=sentences, M=sequences.
    budget = tf.constant(S - 2, tf.int64)
    last_of_doc = tf.cumsum(doc_lengths) - 1                               # [W]
    num_sentences = pieces.nrows()
    is_last = tf.scatter_nd(
        last_of_doc[:, tf.newaxis], tf.ones_like(last_of_doc, tf.bool),
        num_sentences[tf.newaxis],
    )                                                                      # [N]
    sep = tf.where(is_last, preprocessor.sep_id, -1)[:, tf.newaxis]        # [N, 1]
    pieces = tf.concat(
        [tf.cast(pieces, tf.int32),
         tf.ragged.boolean_mask(tf.cast(sep, tf.int32), sep >= 0)], axis=1
    )                                                                      # [N, (T)]
    flat = pieces.flat_values
    cum = tf.concat([[0], tf.cumsum(pieces.row_lengths())], 0)             # [N+1]
    # From sentence i, the sentences up to (exclusive) fit[i] fill at most `budget`.
    fit = tf.searchsorted(cum, cum[:-1] + budget, side="right", out_type=tf.int64) - 1        # [N]
    fit = tf.maximum(fit, tf.range(num_sentences) + 1)

    def body(pos, starts):
        return tf.gather(fit, pos), starts.write(starts.size(), pos)

    _, starts = tf.while_loop(
        lambda pos, starts: pos < num_sentences,
        body,
        (tf.constant(0, tf.int64), tf.TensorArray(tf.int64, size=0, dynamic_size=True)),
    )
    starts = starts.stack()                                                # [M]
    ends = tf.gather(fit, starts)
    start = tf.gather(cum, starts)
    end = tf.minimum(tf.gather(cum, ends), start + budget)  # a too-long sentence is cut
    word_ids, mask, type_ids = _pack(preprocessor, flat, [(start, end)], S)
    return {
        INPUT_WORD_IDS: word_ids,
        INPUT_MASK: mask,
        INPUT_TYPE_IDS: type_ids,
        RECORD_NEXT_SENTENCE_LABELS: tf.zeros_like(word_ids[:, :1]),       # [M, 1]
    }


# ---------------------------------------------------------------------- masking


class _WholeWordSelector(tf_text.RandomItemSelector):
    """Selects whole words of `[B, (words), (pieces)]` until their pieces fill the budget.

    RandomItemSelector would count words, so a sequence could get more than
    max_predictions_per_seq pieces; this one counts pieces, like Google's whole-word
    masking: min(P, ceil(rate * maskable pieces)) per sequence. Without whole-word
    masking every piece is a word of its own, which is RandomItemSelector's rule.

    Its random word order comes from a stateless op keyed by `seed` (int64 [2]), which
    _Masker sets for each batch it traces: tensorflow-text's own selector draws from
    stateful ops, whose order across threads (and pipelines) is not reproducible.
    """

    seed = None

    def get_selection_mask(self, input_ids, axis):
        # B=batch, W=words (padded), order=random word order.
        selectable = self.get_selectable(input_ids, axis)                  # [B, (W)]
        flat_selectable = selectable.flat_values                            # [B*(W)]
        word_len = input_ids.values.row_lengths()                          # [B*(W)]
        maskable = tf.math.segment_sum(
            tf.where(flat_selectable, word_len, tf.zeros_like(word_len)),
            selectable.value_rowids(),
        )                                                                  # [B]
        maskable = tf.pad(maskable, [[0, selectable.nrows() - tf.size(maskable, tf.int64)]])
        budget = tf.minimum(
            tf.cast(self.max_selections_per_batch, tf.int64),
            tf.cast(tf.math.ceil(tf.cast(maskable, tf.float32) * self.selection_rate),
                    tf.int64),
        )[:, tf.newaxis]                                                   # [B, 1]
        keys = tf.where(
            flat_selectable, tf.random.stateless_uniform(tf.shape(flat_selectable), self.seed),
            2.0,
        )                                                                  # [B*(W)]
        keys = selectable.with_flat_values(keys).to_tensor(default_value=3.0)  # [B, W]
        word_len = selectable.with_flat_values(word_len)                   # [B, (W)]
        lengths = word_len.to_tensor()                                     # [B, W]
        order = tf.argsort(keys, axis=1)                                   # [B, W]
        keys = tf.gather(keys, order, batch_dims=1)
        lengths = tf.gather(lengths, order, batch_dims=1)
        # Words longer than the whole budget can never fit: skip them, then take words
        # in random order while their pieces fit.
        usable = tf.logical_and(keys < 2.0, lengths <= budget)
        total = tf.cumsum(tf.where(usable, lengths, 0), axis=1)
        chosen = tf.logical_and(usable, total <= budget)                   # [B, W] (order)
        chosen = tf.gather(chosen, tf.argsort(order, axis=1), batch_dims=1)  # [B, W]
        return tf.RaggedTensor.from_tensor(chosen, lengths=selectable.row_lengths())


class _StatelessChooser(tf_text.MaskValuesChooser):
    """BERT's 80% [MASK] / 10% random token / 10% unchanged, from stateless ops keyed by
    `seed` (int64 [2], set by _Masker for each batch)."""

    seed = None

    def get_mask_values(self, masked_lm_ids):
        flat = masked_lm_ids.flat_values                                   # [N]
        u = tf.random.stateless_uniform(
            tf.shape(flat), tf.random.experimental.stateless_fold_in(self.seed, 1))
        random_ids = tf.random.stateless_uniform(
            tf.shape(flat), tf.random.experimental.stateless_fold_in(self.seed, 2),
            minval=0, maxval=self._vocab_size, dtype=tf.int64)
        mask_rate, random_rate = self._mask_token_rate, self._random_token_rate
        values = tf.where(
            u < mask_rate, tf.cast(self._mask_token, flat.dtype),
            tf.where(u < mask_rate + random_rate, tf.cast(random_ids, flat.dtype), flat))
        return masked_lm_ids.with_flat_values(values)


class _Masker:
    """Masks a batch of packed instances in-graph; returns `(features, labels)`.

    Called on `(key, instances)`, `key` an int64 from a seeded tf.data random stream:
    every random draw is a stateless op keyed by (base seed, key), so the masks depend
    on neither thread timing nor other pipelines in the process, and the map may run in
    parallel.
    """

    # Keeps masking's random streams apart from the pairing ones keyed by the same seed.
    STREAM = 0x6D61736B

    def __init__(self, preprocessor, max_predictions, rate, whole_word, base_seed):
        self.max_predictions = max_predictions
        self.whole_word = whole_word
        self.base_seed = base_seed
        self.special = [preprocessor.cls_id, preprocessor.sep_id]
        self.selector = _WholeWordSelector(max_predictions, rate, unselectable_ids=self.special)
        self.chooser = _StatelessChooser(
            preprocessor.vocabulary_size, preprocessor.mask_id, 0.8, 0.1
        )
        # Continuation pieces ("##ing"); every other piece starts a word.
        self.is_suffix = tf.constant(
            [t.startswith("##") and len(t) > 2 for t in preprocessor.vocabulary]
        )

    def _words(self, ids):
        """`[B, (S)]` pieces grouped into `[B, (words), (pieces)]`."""
        flat = ids.flat_values                                             # [T]
        special = tf.reduce_any(
            tf.equal(flat[:, tf.newaxis], tf.constant(self.special, flat.dtype)), axis=1
        )                                                                  # [T]
        after_special = tf.concat([[True], special[:-1]], 0)
        starts = tf.logical_or(
            tf.logical_not(tf.gather(self.is_suffix, flat)),
            tf.logical_or(special, after_special),
        )                                                                  # [T]
        word_starts = tf.where(starts)[:, 0]
        words = tf.RaggedTensor.from_row_starts(flat, word_starts)         # [(words), (P)]
        words_per_row = tf.math.unsorted_segment_sum(
            tf.cast(starts, tf.int64), ids.value_rowids(), ids.nrows()
        )                                                                  # [B]
        return tf.RaggedTensor.from_row_lengths(words, words_per_row)

    def _pieces(self, ids):
        """`[B, (S)]` pieces as `[B, (S), (1)]`: each piece a word of its own."""
        flat = ids.flat_values                                             # [T]
        words = tf.RaggedTensor.from_row_lengths(flat, tf.ones_like(flat, tf.int64))
        return tf.RaggedTensor.from_row_lengths(words, ids.row_lengths())

    def __call__(self, key, instance):
        # B=batch, S=seq, P=max predictions.
        seed = tf.random.experimental.stateless_fold_in(
            tf.stack([tf.constant(self.base_seed, tf.int64), tf.cast(key, tf.int64)]),
            self.STREAM)
        # Read by the selector and the chooser while this function is traced.
        self.selector.seed = seed
        self.chooser.seed = tf.random.experimental.stateless_fold_in(seed, 1)
        word_ids = instance[INPUT_WORD_IDS]                                # [B, S]
        S = word_ids.shape[1]
        lengths = tf.reduce_sum(instance[INPUT_MASK], axis=1)
        ids = tf.RaggedTensor.from_tensor(word_ids, lengths=lengths)       # [B, (S)]
        items = self._words(ids) if self.whole_word else self._pieces(ids)
        masked, positions, original = tf_text.mask_language_model(
            items, self.selector, self.chooser, axis=1
        )                                                                  # [B, (S)], 2 x [B, (M)]
        masked, _ = tf_text.pad_model_inputs(masked, S)                    # [B, S]
        P = self.max_predictions
        positions, weights = tf_text.pad_model_inputs(positions, P)        # [B, P]
        original, _ = tf_text.pad_model_inputs(original, P)                # [B, P]
        # Ragged round trips lose the static batch size; TPUs need it back.
        B = word_ids.shape[0]
        features = {
            INPUT_WORD_IDS: tf.ensure_shape(tf.cast(masked, tf.int32), [B, S]),
            INPUT_MASK: instance[INPUT_MASK],
            INPUT_TYPE_IDS: instance[INPUT_TYPE_IDS],
            MASKED_LM_POSITIONS: tf.ensure_shape(tf.cast(positions, tf.int32), [B, P]),
        }
        labels = {
            RECORD_MASKED_LM_IDS: tf.ensure_shape(tf.cast(original, tf.int32), [B, P]),
            RECORD_MASKED_LM_WEIGHTS: tf.ensure_shape(tf.cast(weights, tf.float32), [B, P]),
            RECORD_NEXT_SENTENCE_LABELS: instance[RECORD_NEXT_SENTENCE_LABELS],
        }
        return features, labels
