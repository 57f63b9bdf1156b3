"""The serving functions of each task: raw strings in, named tensors out.

Every function here is traced into the SavedModel, so everything is TensorFlow and TF
Text ops (no Python per request). Inputs are DT_STRING [-1]; any batch size works,
0 included. Every input string is first cut to `max_text_bytes` at a UTF-8 character
boundary, so a huge request costs what a `max_text_bytes` one does.

What each task returns (B=batch, C=classes, W=words, S=seq_length, H=hidden):

classification     serving_default(text[, text_b]) -> probabilities float32 [B, C],
                   label_id int32 [B], label string [B];
                   classify(inputs: serialized tf.Example with `text` [and `text_b`]
                   bytes features) -> scores float32 [B, C], classes string [B, C]
                   (TF Serving's Classify API).
regression         serving_default(text[, text_b]) -> score float32 [B] (the model's one
  (num_classes=1)  output); regress(inputs: serialized tf.Example) -> outputs float32 [B]
                   (TF Serving's Regress API).
token              serving_default(text) -> words string [B, W], labels string [B, W],
  classification   num_words int32 [B], start_char / end_char int32 [B, W]; padded with
                   "" and 0 past num_words.
question           serving_default(question, context) -> answer string [B], score
  answering        float32 [B], start_char / end_char int32 [B], null_score float32 [B].
encoder            serving_default(text) -> pooled_output float32 [B, H],
                   sequence_output float32 [B, S, H]; serve_ids(input_word_ids,
                   input_mask, input_type_ids: int32 [B, S]) -> the same two.

Character offsets index the request string as Python sees it after
`bytes.decode("utf-8", errors="replace")` (for valid UTF-8, the string itself), so
`context[start_char:end_char] == answer`. Returned text is taken from the request, not
from the normalised (lower-cased, accent-stripped) text, with any invalid UTF-8 inside
replaced by U+FFFD.
"""

import tensorflow as tf

from tfbert import features
from tfbert.features import (  # noqa: F401  (signature names, re-exported)
    SERVING_DEFAULT,
    CLASSIFY,
    REGRESS,
    SERVE_IDS,
    CLASSIFY_METHOD,
    REGRESS_METHOD,
    PREDICT_METHOD,
    EXAMPLES,
    SCORES,
    CLASSES,
    REGRESS_OUTPUTS,
    QUESTION,
    CONTEXT,
    PROBABILITIES,
    LABEL_ID,
    LABEL,
    SCORE,
    WORDS,
    LABELS,
    NUM_WORDS,
    START_CHAR,
    END_CHAR,
    ANSWER,
    NULL_SCORE,
)

from tfbert.export import tokenization

# The tasks an export can serve, by the name task.json gives them (plus regression,
# a classifier with one output).
TASKS = ("classification", "regression", "token_classification", "question_answering",
         "encoder")

# Words of a token-classification request past the model's seq_length get this label.
OUTSIDE_LABEL = "O"

# Default cut of every input string, in bytes. Question answering runs the model once
# per doc-stride window, so its contexts are cut shorter (16 KiB is ~30 windows of 384).
DEFAULT_MAX_TEXT_BYTES = {"question_answering": 16384}
DEFAULT_MAX_TEXT_BYTES_OTHER = 65536

# Rows per model call when a batch runs sorted by length (Builder.run_model_by_length).
ROWS_PER_CHUNK = 8


def _text_spec(name):
    return tf.TensorSpec([None], tf.string, name=name)


def _as_float32(x):
    return tf.cast(x, tf.float32)


class Builder:
    """Holds what every serving function needs: the model, preprocessor and limits."""

    def __init__(self, model, preprocessor, max_text_bytes):
        self.model = model
        self.preprocessor = preprocessor
        self.max_text_bytes = int(max_text_bytes)

    def truncate(self, text):
        return tokenization.truncate_utf8(text, self.max_text_bytes)

    def run_model(self, inputs):
        return self.model(inputs, training=False)

    def run_model_by_length(self, inputs, width, rows_per_chunk=ROWS_PER_CHUNK):
        """`run_model` for a float output [B, width] (the classifier's logits: no
        seq_length axis), skipping the padding: rows sorted by length, run in chunks of
        `rows_per_chunk`, each chunk cut to its own longest row.

        The packed inputs are padded to seq_length, but attention masks the padding out,
        so a row's [CLS] output (hence the pooled output and the logits) does not depend
        on how many padded columns follow it. On short texts padding is most of the work:
        Rotten Tomatoes sentences average 27 pieces, so padding them to 128 spends ~80%
        of the encoder on padding, and even padding a batch of 32 to its longest row
        (HF's dynamic padding) does about twice the work of the real pieces. Sorted
        chunks of 8 bring that to ~1.2x. A chunk of 8 rows of ~30 pieces still gives
        the matrix multiplications hundreds of rows, so they stay efficient.
        """
        # B=batch, S=seq_length, C=rows per chunk, L=a chunk's longest row, K=outputs.
        mask = inputs[features.INPUT_MASK]                                 # [B, S]
        lengths = tf.reduce_sum(mask, axis=1)                              # [B]
        order = tf.argsort(lengths, stable=True)                           # [B] shortest first
        rows = {name: tf.gather(value, order) for name, value in inputs.items()}  # [B, S]
        sorted_lengths = tf.gather(lengths, order)                         # [B]
        batch = tf.shape(mask)[0]
        # At least one (empty) chunk, so an empty batch still yields [0, K].
        num_chunks = tf.maximum((batch + rows_per_chunk - 1) // rows_per_chunk, 1)

        def body(i, outputs):
            start = i * rows_per_chunk
            end = tf.minimum(start + rows_per_chunk, batch)
            # At least 1, so an empty chunk (an empty batch) still has a shape.
            longest = tf.maximum(tf.reduce_max(sorted_lengths[start:end]), 1)
            chunk = {name: value[start:end, :longest] for name, value in rows.items()}  # [C, L]
            return i + 1, outputs.write(i, tf.cast(self.run_model(chunk), tf.float32))

        outputs = tf.TensorArray(tf.float32, size=num_chunks, infer_shape=False,
                                 element_shape=tf.TensorShape([None, width]))
        _, outputs = tf.while_loop(lambda i, _: i < num_chunks, body, [0, outputs])
        by_length = outputs.concat()                                       # [B, K] sorted
        # The signature declares [-1, K], as it did when the model ran in one call.
        return tf.ensure_shape(
            tf.gather(by_length, tf.math.invert_permutation(order)), [None, width])  # [B, K]


# ---------------------------------------------------------------- classification


def classification_functions(builder, label_names, pair):
    """serving_default and classify (or, for one output, regress) of a BertClassifier."""
    regression = builder.model.num_classes == 1
    if not regression:
        if label_names is None:
            label_names = [str(i) for i in range(builder.model.num_classes)]
        label_names = [str(n) for n in label_names]
        if len(label_names) != builder.model.num_classes:
            raise ValueError(
                f"{len(label_names)} label names for a classifier with "
                f"{builder.model.num_classes} classes"
            )
        names = tf.constant(label_names)

    def predict(text, text_b):
        # B=batch, C=classes.
        text = builder.truncate(text)
        text_b = None if text_b is None else builder.truncate(text_b)
        logits = builder.run_model_by_length(
            builder.preprocessor(text, text_b), builder.model.num_classes)  # [B, C]
        if regression:
            return {SCORE: logits[:, 0]}                                   # [B]
        label_id = tf.argmax(logits, axis=-1, output_type=tf.int32)        # [B]
        return {
            PROBABILITIES: tf.nn.softmax(logits, axis=-1),
            LABEL_ID: label_id,
            LABEL: tf.gather(names, label_id),
        }

    def from_examples(serialized):
        spec = {features.TEXT: tf.io.FixedLenFeature([], tf.string)}
        if pair:
            spec[features.TEXT_B] = tf.io.FixedLenFeature([], tf.string)
        parsed = tf.io.parse_example(serialized, spec)
        out = predict(parsed[features.TEXT], parsed.get(features.TEXT_B))
        if regression:
            return {REGRESS_OUTPUTS: out[SCORE]}
        batch = tf.shape(serialized)[0]
        return {
            SCORES: out[PROBABILITIES],
            CLASSES: tf.broadcast_to(names[tf.newaxis], tf.stack([batch, tf.size(names)])),
        }

    if pair:
        serve = tf.function(
            lambda text, text_b: predict(text, text_b),
            input_signature=[_text_spec(features.TEXT), _text_spec(features.TEXT_B)],
        )
    else:
        serve = tf.function(
            lambda text: predict(text, None), input_signature=[_text_spec(features.TEXT)]
        )
    examples = tf.function(
        lambda inputs: from_examples(inputs), input_signature=[_text_spec(EXAMPLES)]
    )
    functions = {SERVING_DEFAULT: (serve, PREDICT_METHOD)}
    if regression:
        functions[REGRESS] = (examples, REGRESS_METHOD)
    else:
        functions[CLASSIFY] = (examples, CLASSIFY_METHOD)
    return functions, ([] if regression else label_names)


# ---------------------------------------------------------------- token classification


def token_classification_functions(builder, label_names):
    """serving_default of a BertTokenClassifier: one label per word."""
    num_classes = builder.model.num_classes
    if label_names is None:
        label_names = [str(i) for i in range(num_classes)]
    label_names = [str(n) for n in label_names]
    if len(label_names) != num_classes:
        raise ValueError(
            f"{len(label_names)} label names for a token classifier with {num_classes} classes"
        )
    names = tf.constant(label_names)
    pre = builder.preprocessor
    seq_length = pre.seq_length

    def serve(text):
        # B=batch, P=pieces (ragged), W=words (ragged), S=seq_length, C=classes.
        text = builder.truncate(text)
        original = tokenization.OriginalText(text)
        ids, starts, ends = tokenization.tokenize_with_offsets(pre, text, original)  # [B, (P)]
        logits = builder.run_model(pre.pack(ids))                          # [B, S, C]
        predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)       # [B, S]

        # A word starts at every piece that is not a "##" continuation.
        starts_word = ids.with_flat_values(
            tf.logical_not(tf.gather(pre._is_suffix, ids.flat_values)))     # [B, (P)]
        piece_index = tf.ragged.range(ids.row_lengths(), dtype=tf.int64)    # [B, (P)]
        first_piece = tf.ragged.boolean_mask(piece_index, starts_word)      # [B, (W)]
        word_start = tf.ragged.boolean_mask(starts, starts_word)            # [B, (W)]
        # Each row begins with a word, so a running count numbers the words globally.
        word_of_piece = tf.cumsum(tf.cast(starts_word.flat_values, tf.int32)) - 1
        word_end = first_piece.with_flat_values(tf.math.unsorted_segment_max(
            ends.flat_values, word_of_piece, tf.size(first_piece.flat_values)))

        # The word's label is the prediction at its first piece, which sits at position
        # piece + 1 ([CLS] first) if it made it into the seq_length window.
        position = first_piece.flat_values + 1                             # [W]
        in_window = position < seq_length - 1                              # [W] ([SEP] last)
        row = first_piece.value_rowids()                                   # [W]
        flat_predicted = tf.reshape(predicted, [-1])                       # [B*S]
        label_id = tf.gather(
            flat_predicted, row * seq_length + tf.minimum(position, seq_length - 1))
        labels = tf.where(in_window, tf.gather(names, label_id), OUTSIDE_LABEL)

        start_char = original.char_index(word_start)                       # [B, (W)]
        end_char = original.char_index(word_end)                           # [B, (W)]
        words = original.text(start_char, end_char)                        # [B, (W)]
        return {
            WORDS: words.to_tensor(default_value=""),
            LABELS: first_piece.with_flat_values(labels).to_tensor(default_value=""),
            NUM_WORDS: tf.cast(first_piece.row_lengths(), tf.int32),
            START_CHAR: tf.cast(start_char.to_tensor(default_value=0), tf.int32),
            END_CHAR: tf.cast(end_char.to_tensor(default_value=0), tf.int32),
        }

    serve = tf.function(serve, input_signature=[_text_spec(features.TEXT)])
    return {SERVING_DEFAULT: (serve, PREDICT_METHOD)}, label_names


# ---------------------------------------------------------------- question answering


def question_answering_functions(builder, doc_stride=128, max_query_length=64,
                                 max_answer_length=30, null_score_diff_threshold=None):
    """serving_default(question, context) of a BertQuestionAnswerer.

    google-research/bert's run_squad, in the graph: the question is cut to
    `max_query_length` pieces; the context is cut into windows of seq_length -
    question - 3 pieces, `doc_stride` apart; the model scores every window; a span may
    start only at a piece whose window holds it with the most context on both sides
    (Google's _check_is_max_context), ends at or after its start, is at most
    `max_answer_length` pieces long, and the best start + end logit over all windows
    wins. Unlike Google's top-20 starts x top-20 ends shortlist, every valid span is
    scored, so the result is the true maximum.

    null_score is Google's SQuAD 2.0 null score (start + end logit at [CLS], the lowest
    over windows). With `null_score_diff_threshold` set (SQuAD 2.0 models), the answer
    is empty when null_score - score exceeds it. An empty answer (that, or an empty
    context) has start_char = end_char = -1 and score = null_score.
    """
    pre = builder.preprocessor
    seq_length = pre.seq_length
    if max_query_length < 1 or seq_length - max_query_length - 3 < 1:
        raise ValueError(
            f"max_query_length {max_query_length} leaves no room for the context in "
            f"seq_length {seq_length} (needs max_query_length + 4 <= seq_length)"
        )
    if doc_stride < 1 or max_answer_length < 1:
        raise ValueError("doc_stride and max_answer_length must be positive")

    def serve(question, context):
        # B=batch, N=windows (all examples), S=seq_length, L=max_answer_length,
        # P=context pieces (ragged), Q=question pieces (ragged).
        question = builder.truncate(question)
        context = builder.truncate(context)
        q_ids = pre.tokenize(question)[:, :max_query_length]               # [B, (Q)]
        original = tokenization.OriginalText(context)
        c_ids, c_starts, c_ends = tokenization.tokenize_with_offsets(pre, context, original)
        batch = tf.shape(question, out_type=tf.int64)[0]
        q_len = q_ids.row_lengths()                                        # [B]
        doc_len = c_ids.row_lengths()                                      # [B]
        room = seq_length - q_len - 3                                      # [B]
        step = tf.minimum(room, doc_stride)                                # [B]
        # Google's loop: windows start at 0, step, 2*step, ... until one reaches the end.
        num_windows = tf.where(
            doc_len <= room, tf.ones_like(doc_len), 1 + (doc_len - room + step - 1) // step)
        example = tf.repeat(tf.range(batch), num_windows)                  # [N]
        index = tf.ragged.range(num_windows).flat_values                   # [N]
        w_start = index * tf.gather(step, example)                         # [N]
        w_len = tf.maximum(
            tf.minimum(tf.gather(room, example), tf.gather(doc_len, example) - w_start), 0)
        doc_pos = tf.ragged.range(w_len) + w_start[:, tf.newaxis]          # [N, (len)]
        global_pos = doc_pos + tf.gather(c_ids.row_splits, example)[:, tf.newaxis]
        window_ids = global_pos.with_flat_values(
            tf.gather(c_ids.flat_values, global_pos.flat_values))          # [N, (len)]
        outputs = builder.run_model(pre.pack(tf.gather(q_ids, example), window_ids))
        start_logits = _as_float32(outputs[features.START_LOGITS])         # [N, S]
        end_logits = _as_float32(outputs[features.END_LOGITS])             # [N, S]

        # Max context: each piece counts for the window where min(left, right context)
        # + 0.01 * window length is largest, the first such window on a tie. Scaled by
        # 100 it is an integer, so the comparison is exact.
        num_windows_total = tf.shape(example, out_type=tf.int64)[0]
        window_of = doc_pos.with_flat_values(doc_pos.value_rowids())      # [N, (len)]
        i = tf.ragged.range(w_len)                                         # [N, (len)]
        lens = w_len[:, tf.newaxis]
        score100 = tf.minimum(i, lens - 1 - i) * 100 + lens                # [N, (len)]
        total_pieces = tf.shape(c_ids.flat_values, out_type=tf.int64)[0]
        best = tf.math.unsorted_segment_max(
            score100.flat_values, global_pos.flat_values, total_pieces)
        is_best = tf.equal(score100.flat_values, tf.gather(best, global_pos.flat_values))
        first_best = tf.math.unsorted_segment_min(
            tf.where(is_best, window_of.flat_values, num_windows_total),
            global_pos.flat_values, total_pieces)
        max_context = global_pos.with_flat_values(
            tf.equal(window_of.flat_values, tf.gather(first_best, global_pos.flat_values)))

        # Dense [N, S] views indexed by sequence position j: the context starts at
        # offset = q_len + 2 ([CLS] question [SEP]).
        offset = tf.gather(q_len, example)[:, tf.newaxis] + 2              # [N, 1]
        j = tf.range(seq_length, dtype=tf.int64)[tf.newaxis]               # [1, S]
        k = j - offset                                                     # [N, S]
        in_doc = tf.logical_and(k >= 0, k < lens)                          # [N, S]
        max_context_dense = max_context.to_tensor(
            default_value=False, shape=[None, seq_length])                 # [N, S] by k
        valid_start = tf.logical_and(in_doc, tf.gather(
            max_context_dense, tf.clip_by_value(k, 0, seq_length - 1), batch_dims=1))
        # Spans (start j, length l + 1), l < L.
        span = tf.range(max_answer_length, dtype=tf.int64)                 # [L]
        end_j = j[:, :, tf.newaxis] + span                                 # [1, S, L]
        end_k = k[:, :, tf.newaxis] + span                                 # [N, S, L]
        valid = tf.logical_and(valid_start[:, :, tf.newaxis],
                               tf.logical_and(end_k < lens[:, :, tf.newaxis],
                                              end_j < seq_length))         # [N, S, L]
        end_at = tf.minimum(end_j[0], seq_length - 1)                      # [S, L]
        span_score = (start_logits[:, :, tf.newaxis]
                      + tf.gather(end_logits, end_at, axis=1))             # [N, S, L]
        span_score = tf.where(valid, span_score, -float("inf"))
        flat_score = tf.reshape(span_score, [num_windows_total, -1])       # [N, S*L]
        window_best = tf.reduce_max(flat_score, axis=1)                    # [N]
        window_arg = tf.argmax(flat_score, axis=1)                         # [N]
        example_best = tf.math.unsorted_segment_max(window_best, example, batch)  # [B]
        first_window = tf.math.unsorted_segment_min(
            tf.where(tf.equal(window_best, tf.gather(example_best, example)),
                     tf.range(num_windows_total), num_windows_total),
            example, batch)                                                # [B]
        # (unsorted_segment_max starts from the lowest float, not -inf: count instead.)
        has_span = tf.math.unsorted_segment_max(
            tf.cast(tf.math.is_finite(window_best), tf.int32), example, batch) > 0  # [B]
        safe_window = tf.minimum(first_window, tf.maximum(num_windows_total - 1, 0))

        null = start_logits[:, 0] + end_logits[:, 0]                       # [N]
        null_score = tf.math.unsorted_segment_min(null, example, batch)    # [B]
        answered = has_span
        if null_score_diff_threshold is not None:
            answered = tf.logical_and(
                answered, null_score - example_best <= null_score_diff_threshold)

        # The winning span's first and last piece of the context.
        zero = tf.zeros([1], tf.int64)
        # (Padded by one so that a batch of 0 windows still has something to gather.)
        arg = tf.gather(tf.concat([window_arg, zero], 0), safe_window)     # [B]
        start_j = arg // max_answer_length
        length = arg % max_answer_length
        first = tf.gather(tf.concat([w_start, zero], 0), safe_window) + start_j - (q_len + 2)
        last = first + length
        row_start = c_ids.row_splits[:-1]
        padded_starts = tf.concat([c_starts.flat_values, zero], 0)
        padded_ends = tf.concat([c_ends.flat_values, zero], 0)
        last_index = tf.size(padded_starts, out_type=tf.int64) - 1

        def piece_offset(padded, piece):
            at = tf.clip_by_value(row_start + piece, 0, last_index)
            return tf.where(answered, tf.gather(padded, at), 0)

        byte_start = piece_offset(padded_starts, first)                    # [B]
        byte_end = piece_offset(padded_ends, last)                         # [B]
        as_ragged = lambda x: tf.RaggedTensor.from_tensor(x[:, tf.newaxis])
        start_char = original.char_index(as_ragged(byte_start))            # [B, (1)]
        end_char = original.char_index(as_ragged(byte_end))                # [B, (1)]
        answer = original.text(start_char, end_char).flat_values           # [B]
        start_char, end_char = start_char.flat_values, end_char.flat_values
        return {
            ANSWER: answer,
            SCORE: tf.where(answered, example_best, null_score),
            START_CHAR: tf.cast(tf.where(answered, start_char, -1), tf.int32),
            END_CHAR: tf.cast(tf.where(answered, end_char, -1), tf.int32),
            NULL_SCORE: null_score,
        }

    serve = tf.function(serve, input_signature=[_text_spec(QUESTION), _text_spec(CONTEXT)])
    return {SERVING_DEFAULT: (serve, PREDICT_METHOD)}


# ---------------------------------------------------------------- encoder


def encoder_functions(builder):
    """serving_default(text) and serve_ids(three int32 inputs) of a BertEncoder; also a
    `__call__` on the three inputs returning every output (TF Hub's reusable API)."""

    def encode(inputs):
        out = builder.run_model(inputs)
        return {
            features.POOLED_OUTPUT: _as_float32(out[features.POOLED_OUTPUT]),
            features.SEQUENCE_OUTPUT: _as_float32(out[features.SEQUENCE_OUTPUT]),
        }

    def serve(text):
        return encode(builder.preprocessor(builder.truncate(text)))

    def serve_ids(input_word_ids, input_mask, input_type_ids):
        return encode({
            features.INPUT_WORD_IDS: input_word_ids,
            features.INPUT_MASK: input_mask,
            features.INPUT_TYPE_IDS: input_type_ids,
        })

    def call(inputs):
        out = builder.run_model(inputs)
        return {
            features.POOLED_OUTPUT: _as_float32(out[features.POOLED_OUTPUT]),
            features.SEQUENCE_OUTPUT: _as_float32(out[features.SEQUENCE_OUTPUT]),
            features.ENCODER_OUTPUTS: [_as_float32(x) for x in out[features.ENCODER_OUTPUTS]],
        }

    ids_spec = [tf.TensorSpec([None, None], tf.int32, name=n) for n in features.MODEL_INPUTS]
    functions = {
        SERVING_DEFAULT: (
            tf.function(serve, input_signature=[_text_spec(features.TEXT)]), PREDICT_METHOD),
        SERVE_IDS: (tf.function(serve_ids, input_signature=ids_spec), PREDICT_METHOD),
    }
    hub_call = tf.function(call, input_signature=[
        {n: tf.TensorSpec([None, None], tf.int32, name=n) for n in features.MODEL_INPUTS}])
    return functions, hub_call
