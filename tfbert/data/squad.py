"""SQuAD v1.1 / v2.0 for BERT: examples, doc-stride windows and their tf.data pipeline.

The windows are google-research/bert's (run_squad.py):
- a question becomes `[CLS] question [SEP] context window [SEP]`, the question cut to
  max_query_length word pieces, the context split into windows of at most
  max_seq_length - len(question) - 3 pieces that start doc_stride pieces apart;
- the answer is the (start, end) piece position of the window; a window that does not hold
  the whole answer, and every window of an unanswerable (v2.0) question, points both at
  [CLS] (position 0).

Character offsets. Answers come as characters of the context and predictions must go back
as characters of the context, but BertPreprocessor lower-cases, strips accents and drops
control characters before it cuts words into pieces, so its pieces do not point into the
text. As in run_squad, the context is split on whitespace and each word is tokenized on
its own (that gives the same pieces as tokenizing the whole context: Google's tokenizer
never looks across whitespace). Unlike run_squad, which keeps only each piece's word and
later guesses the characters back with get_final_text, every piece here gets its own
character span: the word is normalised character by character with the very rule the
preprocessor compiled (normalization.google_normalize_char), split on punctuation and CJK
characters like Google's BasicTokenizer, and the pieces are laid over the normalised
characters; an [UNK] covers the whole sub-word it replaced. Should the pieces not spell
out the normalised word (the two would disagree only on a tokenizer change), every piece
of that word spans the whole word, which is what run_squad gives.
"""

import dataclasses
import re

import numpy as np

from tfbert import features
from tfbert.text import normalization

UNK = "[UNK]"


@dataclasses.dataclass
class SquadExample:
    """One question about one context.

    `answers` holds every gold answer as (text, answer_start) in characters of `context`
    (training uses the first; evaluation scores against all). `source` says where the
    question came from, for error messages.
    """

    qas_id: str
    question: str
    context: str
    answers: list
    is_impossible: bool = False
    title: str = ""
    source: str = ""


# === Reading ===


def _field(node, key, kind, where):
    if not isinstance(node, dict) or key not in node:
        raise ValueError(f"{where}: missing {key!r}")
    value = node[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ValueError(f"{where}.{key}: expected {names}, got {type(value).__name__}")
    return value


def make_example(qas_id, question, context, answers, is_impossible, version_2_with_negative,
                 where, title=""):
    """A checked SquadExample; `where` names the question in error messages.

    Raises ValueError (one line) when an answer's text is not at its answer_start, or when
    an unanswerable question shows up without version_2_with_negative.
    """
    checked = []
    for a, (text, start) in enumerate(answers):
        found = context[start:start + len(text)] if start >= 0 else ""
        if not text or found != text:
            raise ValueError(
                f"{where}.answers[{a}]: answer {text!r} is not at answer_start {start} of "
                f"the context ({found!r} is there)"
            )
        checked.append((text, int(start)))
    if is_impossible and not version_2_with_negative:
        raise ValueError(
            f"{where}: question is unanswerable (is_impossible); set "
            "data.version_2_with_negative=true for SQuAD 2.0 data"
        )
    if is_impossible and checked:
        raise ValueError(f"{where}: question is marked is_impossible but has answers")
    return SquadExample(
        qas_id=str(qas_id), question=question, context=context, answers=checked,
        is_impossible=bool(is_impossible), title=title, source=where,
    )


def read_squad_json(path, version_2_with_negative=False):
    """The examples of a SQuAD-format JSON file (v1.1, or v2.0 with unanswerable ones).

    Reads local paths and anything tf.io.gfile reads (gs://...). Every error is one line
    naming the file, and the question id and its JSON path when it is about a question.
    """
    import json

    import tensorflow as tf

    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    articles = _field(data, "data", list, f"{path}: top level")
    examples = []
    seen = {}
    for i, article in enumerate(articles):
        title = article.get("title", "") if isinstance(article, dict) else ""
        paragraphs = _field(article, "paragraphs", list, f"{path}: data[{i}]")
        for j, paragraph in enumerate(paragraphs):
            where_p = f"{path}: data[{i}].paragraphs[{j}]"
            context = _field(paragraph, "context", str, where_p)
            for k, qa in enumerate(_field(paragraph, "qas", list, where_p)):
                json_path = f"data[{i}].paragraphs[{j}].qas[{k}]"
                qas_id = str(_field(qa, "id", (str, int), f"{path}: {json_path}"))
                where = f"{path}: question {qas_id} at {json_path}"
                if qas_id in seen:
                    raise ValueError(f"{where}: id already used at {seen[qas_id]}")
                seen[qas_id] = json_path
                question = _field(qa, "question", str, where)
                answers = []
                for a, answer in enumerate(qa.get("answers", [])):
                    answers.append((
                        _field(answer, "text", str, f"{where}.answers[{a}]"),
                        _field(answer, "answer_start", int, f"{where}.answers[{a}]"),
                    ))
                is_impossible = qa.get("is_impossible", False)
                if not isinstance(is_impossible, bool):
                    raise ValueError(f"{where}.is_impossible: expected true or false")
                examples.append(make_example(
                    qas_id, question, context, answers, is_impossible,
                    version_2_with_negative, where, title=title,
                ))
    return examples


def load_tfds_examples(name, split, data_dir=None, version_2_with_negative=False):
    """The examples of a TFDS SQuAD-like dataset (`squad/v1.1`, `squad/v2.0`).

    TFDS keeps each answer's answer_start, so the same checks as for JSON apply; errors
    name the dataset, the split and the question id.
    """
    import tensorflow_datasets as tfds

    dataset = tfds.load(name, split=split, data_dir=data_dir or None, shuffle_files=False)
    examples = []
    for index, record in enumerate(tfds.as_numpy(dataset)):
        qas_id = _text(record["id"])
        answers = record["answers"]
        pairs = [(_text(t), int(s)) for t, s in zip(answers["text"], answers["answer_start"])]
        examples.append(make_example(
            qas_id, _text(record["question"]), _text(record["context"]), pairs,
            bool(record.get("is_impossible", False)), version_2_with_negative,
            f"tfds {name} split {split}: question {qas_id} (record {index})",
            title=_text(record.get("title", b"")),
        ))
    return examples


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def squad_articles(examples):
    """The examples as SQuAD JSON's `data` list, for the official evaluation scripts."""
    articles = []
    for example in examples:
        qa = {
            "id": example.qas_id,
            "question": example.question,
            "answers": [{"text": t, "answer_start": s} for t, s in example.answers],
            "is_impossible": example.is_impossible,
        }
        articles.append({"title": example.title,
                         "paragraphs": [{"context": example.context, "qas": [qa]}]})
    return articles


# === Word pieces with character spans ===


def _canonical(text):
    # Python lower-cases a word-final capital sigma to "ς", which a per-character pass
    # cannot know; both forms are one letter here.
    return text.replace("\u03c2", "\u03c3")


def _subwords(word, lowercase):
    """Google's BasicTokenizer on one whitespace-free word, keeping character origins.

    Returns [(normalised text, [index in `word` of each of its characters])], one entry
    per sub-word: punctuation and CJK characters stand alone, as Google splits them.
    """
    out = []
    text, origin = [], []

    def close():
        if text:
            out.append(("".join(text), list(origin)))
            text.clear()
            origin.clear()

    for i, char in enumerate(word):
        normalized = normalization.google_normalize_char(char, lowercase)
        if normalization.is_cjk(ord(char)):
            close()
            if normalized:
                out.append((normalized, [i] * len(normalized)))
            continue
        for c in normalized:
            if c.isspace():
                close()
            elif normalization.is_punctuation(c):
                close()
                out.append((c, [i]))
            else:
                text.append(c)
                origin.append(i)
    close()
    return out


def piece_char_spans(word, pieces, lowercase):
    """[(start, end)] in characters of `word` of each of its word pieces (strings).

    None when the pieces do not spell out the normalised word.
    """
    spans = []
    p = 0
    for text, origin in _subwords(word, lowercase):
        if p < len(pieces) and pieces[p] == UNK:
            # An [UNK] replaces a whole sub-word.
            spans.append((origin[0], origin[-1] + 1))
            p += 1
            continue
        text = _canonical(text)
        pos = 0
        while pos < len(text):
            if p >= len(pieces):
                return None
            piece = pieces[p]
            if pos > 0:
                if not piece.startswith("##"):
                    return None
                piece = piece[2:]
            piece = _canonical(piece)
            if not piece or text[pos:pos + len(piece)] != piece:
                return None
            spans.append((origin[pos], origin[pos + len(piece) - 1] + 1))
            pos += len(piece)
            p += 1
    return spans if p == len(pieces) else None


class WordPieces:
    """Word-piece ids (by BertPreprocessor) and character spans of strings, memoised.

    `prefetch(strings)` tokenizes the strings not seen yet in one batched call, so a
    dataset costs one in-graph call per few thousand distinct words, not one per word.
    """

    def __init__(self, preprocessor, chunk_size=8192):
        self.preprocessor = preprocessor
        self.tokens = preprocessor.vocabulary
        self.lowercase = preprocessor.lowercase
        self.chunk_size = chunk_size
        self._ids = {}
        self._spans = {}

    def prefetch(self, strings):
        import tensorflow as tf

        todo = sorted({s for s in strings if s not in self._ids})
        for i in range(0, len(todo), self.chunk_size):
            chunk = todo[i:i + self.chunk_size]
            ids = self.preprocessor.tokenize(tf.constant(chunk, tf.string))
            for string, row in zip(chunk, ids.to_list()):
                self._ids[string] = row

    def ids(self, string):
        if string not in self._ids:
            self.prefetch([string])
        return self._ids[string]

    def spans(self, word):
        """Character spans of the pieces of a whitespace-free word; see the module doc."""
        if word not in self._spans:
            ids = self.ids(word)
            spans = piece_char_spans(word, [self.tokens[i] for i in ids], self.lowercase)
            if spans is None:
                spans = [(0, len(word))] * len(ids)
            self._spans[word] = spans
        return self._spans[word]


_WORD = re.compile(r"\S+")


def context_pieces(context, word_pieces):
    """The context's word-piece ids and each piece's [start, end) characters in it.

    Returns three int32 arrays [P]: ids, char starts, char ends (non-decreasing).
    """
    ids, starts, ends = [], [], []
    for match in _WORD.finditer(context):
        word, offset = match.group(), match.start()
        for piece_id, (start, end) in zip(word_pieces.ids(word), word_pieces.spans(word)):
            ids.append(piece_id)
            starts.append(offset + start)
            ends.append(offset + end)
    return (np.asarray(ids, np.int32), np.asarray(starts, np.int32),
            np.asarray(ends, np.int32))


# === Windows ===


@dataclasses.dataclass
class SquadFeatures:
    """The windows of a list of examples, and what maps them back to the examples.

    N = windows, S = max_seq_length. Model inputs are int32 [N, S]; positions int32 [N]
    (0, the [CLS], when the window holds no answer or there is none). Window n shows the
    example's context pieces doc_start[n] .. doc_start[n] + doc_length[n] - 1 at sequence
    positions doc_offset[n] onwards. `char_starts[e]` / `char_ends[e]` give the character
    span in example e's context of each of its context pieces.
    """

    input_word_ids: np.ndarray
    input_mask: np.ndarray
    input_type_ids: np.ndarray
    start_positions: np.ndarray
    end_positions: np.ndarray
    example_index: np.ndarray
    doc_start: np.ndarray
    doc_length: np.ndarray
    doc_offset: np.ndarray
    char_starts: list
    char_ends: list

    def __len__(self):
        return len(self.example_index)

    def inputs(self):
        return {
            features.INPUT_WORD_IDS: self.input_word_ids,
            features.INPUT_MASK: self.input_mask,
            features.INPUT_TYPE_IDS: self.input_type_ids,
        }

    def labels(self):
        # Keyed like the model's outputs, so `model.fit` pairs them with a loss dict.
        return {features.START_LOGITS: self.start_positions,
                features.END_LOGITS: self.end_positions}


def doc_windows(num_pieces, max_pieces, doc_stride):
    """run_squad's doc spans: [(start, length)], each starting doc_stride after the last."""
    windows = []
    start = 0
    while True:
        length = min(num_pieces - start, max_pieces)
        windows.append((start, length))
        if start + length >= num_pieces:
            return windows
        start += min(length, doc_stride)


def answer_pieces(char_starts, char_ends, answer_start, answer_text):
    """(first, last) context piece of an answer given in characters; None if no piece."""
    answer_end = answer_start + len(answer_text)
    # The first piece that ends after the answer starts and the last that starts before
    # it ends: an answer that begins or ends inside a piece takes the whole piece.
    inside = np.nonzero((char_ends > answer_start) & (char_starts < answer_end))[0]
    if len(inside) == 0:
        return None
    return int(inside[0]), int(inside[-1])


def convert_examples_to_features(examples, preprocessor, max_seq_length=384, doc_stride=128,
                                 max_query_length=64, training=False):
    """Windows (SquadFeatures) of `examples` for `preprocessor`'s vocabulary.

    With training=True every answerable example must have an answer. Examples with
    answers get positions in evaluation too (first answer), for window-level metrics.
    """
    if max_seq_length - max_query_length - 3 < 1:
        raise ValueError(
            f"max_seq_length {max_seq_length} leaves no room for the context after a "
            f"question of max_query_length {max_query_length} and [CLS], [SEP], [SEP]"
        )
    if doc_stride < 1:
        raise ValueError(f"doc_stride must be >= 1, got {doc_stride}")
    pieces = WordPieces(preprocessor)
    words = set()
    for example in examples:
        words.update(_WORD.findall(example.context))
    pieces.prefetch(list(words) + [e.question for e in examples])

    # First the windows of every example, then one fill of preallocated arrays: SQuAD's
    # 88k windows of 384 ids as Python lists would take gigabytes.
    windows = []  # (example, window start, length, start position, end position)
    queries, docs = [], []
    char_starts, char_ends = [], []
    by_context = {}
    for index, example in enumerate(examples):
        if example.context not in by_context:
            by_context[example.context] = context_pieces(example.context, pieces)
        doc_ids, starts, ends = by_context[example.context]
        docs.append(doc_ids)
        char_starts.append(starts)
        char_ends.append(ends)
        query = pieces.ids(example.question)[:max_query_length]
        queries.append(np.asarray(query, np.int32))
        answer = None
        if example.answers and not example.is_impossible:
            text, answer_start = example.answers[0]
            answer = answer_pieces(starts, ends, answer_start, text)
            if answer is None and training:
                # Only control characters or spaces: nothing a model could point at.
                raise ValueError(f"{example.source}: answer {text!r} has no word pieces")
        elif training and not example.is_impossible:
            raise ValueError(f"{example.source}: question has no answer to train on")
        doc_offset = len(query) + 2
        max_pieces = max_seq_length - len(query) - 3
        for start, length in doc_windows(len(doc_ids), max_pieces, doc_stride):
            position = (0, 0)
            if answer is not None and start <= answer[0] and answer[1] < start + length:
                position = (answer[0] - start + doc_offset, answer[1] - start + doc_offset)
            windows.append((index, start, length) + position)

    # N=windows, S=max_seq_length.
    count = len(windows)
    word_ids = np.zeros((count, max_seq_length), np.int32)               # [N, S]
    mask = np.zeros((count, max_seq_length), np.int32)                   # [N, S]
    type_ids = np.zeros((count, max_seq_length), np.int32)               # [N, S]
    columns = np.asarray(windows, np.int32).reshape(count, 5)            # [N, 5]
    doc_offset = np.zeros(count, np.int32)                               # [N]
    for n, (index, start, length, _, _) in enumerate(windows):
        query = queries[index]
        offset = len(query) + 2
        end = offset + length
        word_ids[n, 0] = preprocessor.cls_id
        word_ids[n, 1:offset - 1] = query
        word_ids[n, offset - 1] = preprocessor.sep_id
        word_ids[n, offset:end] = docs[index][start:start + length]
        word_ids[n, end] = preprocessor.sep_id
        mask[n, :end + 1] = 1
        # The context and its closing [SEP] are segment B.
        type_ids[n, offset:end + 1] = 1
        doc_offset[n] = offset
    return SquadFeatures(
        input_word_ids=word_ids, input_mask=mask, input_type_ids=type_ids,
        start_positions=columns[:, 3].copy(), end_positions=columns[:, 4].copy(),
        example_index=columns[:, 0].copy(), doc_start=columns[:, 1].copy(),
        doc_length=columns[:, 2].copy(), doc_offset=doc_offset,
        char_starts=char_starts, char_ends=char_ends,
    )


def make_dataset(squad_features, batch_size, training=False, *, repeat=False,
                 drop_remainder=None, shuffle_buffer=10000, seed=None, input_context=None):
    """A tf.data.Dataset of (inputs, labels) batches of the windows.

    inputs: {input_word_ids, input_mask, input_type_ids} int32 [B, S]; labels:
    {start_logits, end_logits} int32 [B] (piece positions), keyed like the outputs of
    BertQuestionAnswerer so `model.fit` pairs each with its loss. training=True shuffles
    (anew each epoch); repeat=True repeats forever. The last partial batch is kept, so an
    epoch of `model.fit` sees every window, unless the stream repeats (then every batch
    is full and shapes are static, as TPUs want); drop_remainder overrides that. With
    `input_context`, each input pipeline takes its own shard of windows.

      examples = squad.read_squad_json("train-v1.1.json")   # or squad.load_tfds_examples
      windows = squad.convert_examples_to_features(examples, preprocessor, training=True)
      model = tfbert.BertQuestionAnswerer(encoder)
      ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
      model.compile(optimizer=..., loss={"start_logits": ce, "end_logits": ce})
      model.fit(squad.make_dataset(windows, 32, training=True), epochs=2)

    Answers for new questions: tfbert.train.qa_postprocess.predict_logits, then
    qa_postprocess.postprocess.
    """
    import tensorflow as tf

    if len(squad_features) == 0:
        raise ValueError("no windows to make a dataset of (no examples, or none with an "
                         "answer in its windows)")
    dataset = tf.data.Dataset.from_tensor_slices(
        (squad_features.inputs(), squad_features.labels()))
    if input_context is not None and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        dataset = dataset.shuffle(
            min(shuffle_buffer, max(len(squad_features), 1)), seed=seed,
            reshuffle_each_iteration=True,
        )
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(
        batch_size, drop_remainder=repeat if drop_remainder is None else drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)
