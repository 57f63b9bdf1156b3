"""Token classification (NER) data: CoNLL files, TFDS `conll2003`, word-piece alignment.

Words come from the data already split (one token per CoNLL line); each word is cut into
word pieces by `BertPreprocessor.tokenize`, in-graph, and the sentence is packed as
`[CLS] pieces [SEP]`. As in google-research/bert's NER recipe (and HF's
`label_all_tokens=False`), only the first piece of a word carries the word's label; the
other pieces, [CLS], [SEP] and padding carry IGNORE (-1), which the losses and metrics
here leave out.

Truncation: a sentence keeps its first seq_length - 2 pieces. A word whose first piece
falls beyond them gets no label and no prediction; `predict_words` reports it as "O", and
the entity scores count it so (a truncated entity is a miss, not a skipped example). A word
that tokenizes to no piece at all (only control or zero-width characters, which BERT's
normaliser deletes) is treated the same way.

Keras path:

    train = ner.read_conll("train.txt")
    labels = ner.collect_label_names(train)
    preprocessor = tfbert.BertPreprocessor.from_preset(model_dir, seq_length=128)
    model = tfbert.BertTokenClassifier(encoder, num_classes=len(labels))
    model.compile(optimizer=keras.optimizers.AdamW(5e-5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                                  ignore_class=ner.IGNORE),
                  metrics=[TokenAccuracy()])          # tfbert.train.ner_metrics
    model.fit(ner.ner_dataset(train, preprocessor, labels, batch_size=32, shuffle=True),
              epochs=3)
    tags = ner.predict_words(model, preprocessor, [["Hello", "Paris"]], labels)
"""

import dataclasses
import os
import re

import numpy as np
import tensorflow as tf

# The label of pieces that are not the first piece of a kept word.
IGNORE = -1
OUTSIDE = "O"
DOCSTART = "-DOCSTART-"
# BIO / IOBES / BILOU tags as seqeval reads them; anything else in the tag column means
# the line is not what we think it is (a shifted column, a stray sentence of prose).
_TAG = re.compile(r"^(O|[BIESLU]-\S+)$")


@dataclasses.dataclass(frozen=True)
class NerExamples:
    """Sentences as word lists with their string tags.

    `origins[i]` says where sentence i came from, for error messages: (path, line of its
    first word) for CoNLL files, (source description, example index) otherwise (TFDS,
    Python lists). `label_names` is the dataset's own label list when it declares one
    (TFDS ClassLabel).
    """

    words: list
    tags: list
    origins: list
    label_names: tuple = None

    def __len__(self):
        return len(self.words)

    def where(self, sentence, word):
        """"path:line" of a word of a file, or "<source> example i word j"."""
        source, start = self.origins[sentence]
        if isinstance(source, tuple):  # (description,): not a file
            return f"{source[0]} example {start} word {word + 1}"
        return f"{source}:{start + word}"

    def __add__(self, other):
        return NerExamples(
            self.words + other.words, self.tags + other.tags, self.origins + other.origins,
            self.label_names or other.label_names,
        )

    def subset(self, indices):
        """The sentences at `indices` (in that order), with their origins."""
        return NerExamples([self.words[i] for i in indices], [self.tags[i] for i in indices],
                           [self.origins[i] for i in indices], self.label_names)

    def __getitem__(self, key):
        """A slice of the sentences as NerExamples (e.g. `examples[:1000]`)."""
        if not isinstance(key, slice):
            raise TypeError("NerExamples takes slices (examples[:100]); use .words[i] and "
                            ".tags[i] for one sentence")
        return self.subset(range(len(self))[key])

    @classmethod
    def from_lists(cls, words, tags, source="examples"):
        """NerExamples of Python lists of words and of string tags."""
        if len(words) != len(tags):
            raise ValueError(f"{len(words)} sentences but {len(tags)} tag lists")
        for i, (w, t) in enumerate(zip(words, tags)):
            if len(w) != len(t):
                raise ValueError(f"{source} example {i}: {len(w)} words but {len(t)} tags")
        return cls(list(words), list(tags), [((source,), i) for i in range(len(words))])


# === Reading ===


def expand_files(patterns):
    """Paths of comma-separated globs (a string) or a list of them, in order.

    tf.io.gfile globs, so gs:// and other TensorFlow file systems work too.
    """
    if isinstance(patterns, str):
        patterns = patterns.split(",")
    paths = []
    for pattern in (p.strip() for p in patterns):
        if not pattern:
            continue
        matched = sorted(tf.io.gfile.glob(pattern))
        if not matched:
            raise FileNotFoundError(f"{pattern}: no such file")
        paths.extend(matched)
    if not paths:
        raise FileNotFoundError("no CoNLL files given")
    return paths


def read_conll(path):
    """Reads a CoNLL file: one token per line with its tag in the last column.

    Columns are tab separated when the line has a tab, else whitespace separated (CoNLL
    2003's `token POS chunk tag`). A blank (or whitespace-only) line ends a sentence;
    `-DOCSTART-` lines are skipped. A line with fewer than two columns or whose last column
    is not a BIO/IOBES tag raises ValueError naming the file and line. Comma-separated
    globs (or a list) read several files into one NerExamples.
    """
    paths = [path] if isinstance(path, str) and os.path.isfile(path) else expand_files(path)
    examples = None
    for p in paths:
        one = _read_one_conll(p)
        examples = one if examples is None else examples + one
    return examples


def _read_one_conll(path):
    with tf.io.gfile.GFile(path, "rb") as f:
        content = f.read()
    lines = content.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the final newline ends the last line, it starts none
    words, tags, origins = [], [], []
    sentence_words, sentence_tags, first_line = [], [], 0
    # A sentinel blank line closes the last sentence.
    for number, raw in enumerate(lines + [b""], start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{number}: not valid UTF-8 ({e.reason})") from None
        if number == 1:
            line = line.lstrip("\ufeff")  # a UTF-8 byte order mark
        columns = [c.strip() for c in (line.split("\t") if "\t" in line else line.split())]
        if not line.strip() or columns[0] == DOCSTART:
            if sentence_words:
                words.append(sentence_words)
                tags.append(sentence_tags)
                origins.append((path, first_line))
            sentence_words, sentence_tags = [], []
            continue
        if len(columns) < 2 or not columns[0] or not columns[-1]:
            raise ValueError(
                f"{path}:{number}: malformed CoNLL line {line[:60]!r}: expected a token "
                "and its tag separated by a tab or spaces"
            )
        if not _TAG.match(columns[-1]):
            raise ValueError(
                f"{path}:{number}: malformed CoNLL line {line[:60]!r}: last column "
                f"{columns[-1][:30]!r} is not a tag (O, B-X, I-X, ...)"
            )
        if not sentence_words:
            first_line = number
        sentence_words.append(columns[0])
        sentence_tags.append(columns[-1])
    if not words:
        raise ValueError(f"{path}: no sentences (an empty CoNLL file)")
    return NerExamples(words, tags, origins)


def write_conll(path, words, *tag_columns):
    """Writes sentences as CoNLL lines `word TAB tag [TAB tag ...]`, atomically."""
    from tfbert.fileio import write_text_atomic

    lines = []
    for i, sentence in enumerate(words):
        for j, word in enumerate(sentence):
            lines.append("\t".join([word] + [column[i][j] for column in tag_columns]))
        lines.append("")
    write_text_atomic(path, "\n".join(lines) + "\n")


def load_tfds(name, split, data_dir=None, words_feature="tokens", tags_feature="ner"):
    """A TFDS token classification split (e.g. `conll2003`, split train/dev/test).

    Tags may be a Sequence of ClassLabel (conll2003's `ner`: its names become
    `label_names`) or a Sequence of strings.
    """
    import tensorflow_datasets as tfds

    dataset, info = tfds.load(name, split=split, data_dir=data_dir or None, with_info=True,
                              shuffle_files=False)
    for feature in (words_feature, tags_feature):
        if feature not in info.features:
            raise ValueError(
                f"tfds {name} has no feature {feature!r}; valid: {', '.join(info.features)}"
            )
    tag_feature = info.features[tags_feature]
    names = getattr(getattr(tag_feature, "feature", None), "names", None)
    words, tags, origins = [], [], []
    source = (f"tfds {name} [{split}]",)
    for index, example in enumerate(tfds.as_numpy(dataset)):
        sentence = [w.decode("utf-8") for w in example[words_feature]]
        raw = example[tags_feature]
        if names is not None:
            sentence_tags = [names[int(t)] for t in raw]
        else:
            sentence_tags = [t.decode("utf-8") for t in raw]
        if not sentence:
            continue
        words.append(sentence)
        tags.append(sentence_tags)
        origins.append((source, index))
    if not words:
        raise ValueError(f"{source[0]}: no sentences")
    return NerExamples(words, tags, origins, tuple(names) if names is not None else None)


def split_examples(examples, fractions=(0.8, 0.1, 0.1), seed=12345):
    """A fixed random split of one corpus (WNUT-16 ships as a single file).

    The sentence order is shuffled with `random.Random(seed)`; part i takes the next
    int(fractions[i] * n) sentences and the last part the rest. The defaults give the
    80/10/10 train/dev/test split of benchmarks/finetune_ner.py and examples/ner_wnut.py.
    Returns one NerExamples per fraction.
    """
    import random

    if not fractions or any(f < 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise ValueError(f"fractions must be non-negative and sum to at most 1, got {fractions}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    parts, start = [], 0
    for i, fraction in enumerate(fractions):
        end = len(order) if i == len(fractions) - 1 else start + int(fraction * len(order))
        parts.append(examples.subset(order[start:end]))
        start = end
    return tuple(parts)


# === Labels ===


def collect_label_names(*example_sets):
    """The label list: the dataset's declared one (TFDS), else every tag seen, sorted, "O"
    first (so id 0 is "O")."""
    for examples in example_sets:
        if examples is not None and examples.label_names:
            return list(examples.label_names)
    seen = set()
    for examples in example_sets:
        if examples is not None:
            for sentence in examples.tags:
                seen.update(sentence)
    seen.discard(OUTSIDE)
    return [OUTSIDE] + sorted(seen)


def tag_ids(examples, label_names):
    """Tag ids per sentence; an unknown tag raises ValueError naming its file and line."""
    index = {name: i for i, name in enumerate(label_names)}
    ids = []
    for i, sentence in enumerate(examples.tags):
        row = []
        for j, tag in enumerate(sentence):
            if tag not in index:
                raise ValueError(
                    f"{examples.where(i, j)}: unknown tag {tag!r}; the model's labels are "
                    f"{', '.join(label_names)}"
                )
            row.append(index[tag])
        ids.append(row)
    return ids


# === Word-piece alignment (in-graph) ===


def align(preprocessor, words, tags=None):
    """Model inputs, first-piece labels and word positions for a batch of sentences.

    Args:
      preprocessor: a `tfbert.BertPreprocessor` (its seq_length is S).
      words: string RaggedTensor [B, (W)], the words of each sentence.
      tags: int RaggedTensor [B, (W)] of tag ids, or None.

    Returns (inputs, labels, positions): the three model inputs int32 [B, S]; labels
    int32 [B, S], a word's tag at its first piece and IGNORE elsewhere (None without
    `tags`); positions int32 [B, (W)], the index of each word's first piece in the packed
    sequence, or -1 for a word that was truncated away or has no piece.
    """
    # B=batch, W=words of a sentence, P=pieces of a word, T=all words of the batch.
    seq_length = preprocessor.seq_length
    flat_words = words.flat_values                                         # [T]
    pieces = preprocessor.tokenize(flat_words)                             # [T, (P)]
    piece_splits = pieces.row_splits                                       # [T+1]
    # Sentence i's pieces run from piece_splits[row_splits[i]] to the next boundary.
    sentence_splits = tf.gather(piece_splits, words.row_splits)            # [B+1]
    sentence_pieces = tf.RaggedTensor.from_row_splits(
        pieces.flat_values, sentence_splits, validate=False)               # [B, (sum P)]
    inputs = preprocessor.pack(sentence_pieces)                            # 3 x [B, S]

    word_row = words.value_rowids()                                        # [T]
    first_piece = piece_splits[:-1] - tf.gather(sentence_splits, word_row)  # [T]
    num_pieces = pieces.row_lengths()                                      # [T]
    # pack() keeps the first S-2 pieces; [CLS] shifts every piece by one.
    kept = tf.logical_and(num_pieces > 0, first_piece < seq_length - 2)     # [T]
    position = tf.where(kept, first_piece + 1, -1)                         # [T]
    positions = words.with_flat_values(tf.cast(position, tf.int32))        # [B, (W)]
    if tags is None:
        return inputs, None, positions

    batch = words.nrows()
    index = tf.stack([tf.boolean_mask(word_row, kept),
                      tf.boolean_mask(position, kept)], axis=1)            # [K, 2]
    labels = tf.tensor_scatter_nd_update(
        tf.fill(tf.stack([batch, tf.cast(seq_length, batch.dtype)]), IGNORE),
        index,
        tf.boolean_mask(tf.cast(tags.flat_values, tf.int32), kept),
    )                                                                      # [B, S]
    return inputs, labels, positions


def _ragged(rows, dtype):
    """A RaggedTensor [N, (len)] of a list of lists, without tf.ragged.constant's recursion."""
    lengths = np.array([len(r) for r in rows], np.int64)
    flat = [x for r in rows for x in r]
    if dtype == tf.string:
        values = tf.constant(np.array(flat, dtype=object) if flat else np.zeros([0], object),
                             tf.string)
    else:
        values = tf.constant(np.array(flat, np.int32).reshape([-1]), dtype)
    return tf.RaggedTensor.from_row_lengths(values, lengths)


def ner_dataset(examples, preprocessor, label_names, batch_size, *, shuffle=False,
                repeat=False, drop_remainder=False, pad_forever=False, shuffle_buffer=10000,
                seed=None, input_context=None, with_positions=False):
    """A `tf.data.Dataset` of (model inputs, labels [B, S]) batches for `model.fit`.

    Args:
      examples: NerExamples (read_conll, load_tfds), or a (words, tags) pair of lists of
        lists with string tags.
      preprocessor: a BertPreprocessor; its seq_length is the packed length S.
      label_names: tag strings by id; an unknown tag raises ValueError naming file and line.
      batch_size: sentences per batch.
      shuffle, repeat: shuffle sentences (each pass anew, seeded by `seed`), repeat forever.
      drop_remainder: drop a last partial batch (static shapes).
      pad_forever: after one pass, keep yielding empty sentences (all labels IGNORE), so a
        fixed number of evaluation steps sees every sentence once and the padding adds
        nothing to the metrics. Implies full batches.
      input_context: a tf.distribute.InputContext; sentences are sharded across its input
        pipelines (the caller passes the per-replica batch size).
      with_positions: add a third element, the first-piece positions [B, (W)] of `align`.

    Tokenization and alignment run in the pipeline (TF ops, no Python per sentence).
    Labels are IGNORE (-1) except at each kept word's first piece: use
    `keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE)`.
    """
    if isinstance(examples, (tuple, list)):
        examples = NerExamples.from_lists(*examples)
    ids = tag_ids(examples, label_names)
    data = (_ragged(examples.words, tf.string), _ragged(ids, tf.int32))
    dataset = tf.data.Dataset.from_tensor_slices(data)
    if input_context is not None and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(input_context.num_input_pipelines,
                                input_context.input_pipeline_id)
    if shuffle:
        dataset = dataset.shuffle(min(shuffle_buffer, len(examples)), seed=seed,
                                  reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    if pad_forever:
        empty = (_ragged([[]], tf.string), _ragged([[]], tf.int32))
        dataset = dataset.concatenate(tf.data.Dataset.from_tensor_slices(empty).repeat())
        drop_remainder = True
    dataset = dataset.ragged_batch(batch_size, drop_remainder=drop_remainder)

    def encode(words, tags):
        inputs, labels, positions = align(preprocessor, words, tags)
        return (inputs, labels, positions) if with_positions else (inputs, labels)

    dataset = dataset.map(encode, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def words_dataset(sentences, preprocessor, batch_size):
    """Batches of (model inputs, positions [B, (W)]) for unlabelled word lists."""
    dataset = tf.data.Dataset.from_tensor_slices(_ragged(sentences, tf.string))
    dataset = dataset.ragged_batch(batch_size)

    def encode(words):
        inputs, _, positions = align(preprocessor, words)
        return inputs, positions

    return dataset.map(encode, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


# === Predictions back to words ===


def predict_word_ids(model, preprocessor, sentences, batch_size=64):
    """The predicted tag id of every word (its first piece's argmax); -1 for a word that
    has no piece in the window (truncated, or no piece at all)."""
    # B=batch, S=seq_length, W=words of a sentence.
    forward = tf.function(lambda inputs: tf.argmax(model(inputs, training=False), axis=-1,
                                                   output_type=tf.int32))
    out = []
    for inputs, positions in words_dataset(sentences, preprocessor, batch_size):
        predicted = forward(inputs).numpy()                                 # [B, S]
        for row, word_positions in enumerate(positions.numpy()):
            word_positions = np.asarray(word_positions)
            ids = np.where(word_positions >= 0,
                           predicted[row][np.maximum(word_positions, 0)], -1)
            out.append([int(i) for i in ids])
    return out


def predict_words(model, preprocessor, sentences, label_names=None, batch_size=64):
    """Predicted tags of every word of `sentences` (lists of words).

    With `label_names`, tag strings, and "O" for a word with no piece in the window
    (beyond seq_length - 2 pieces, or no piece at all); without, ids with -1 there.
    """
    ids = predict_word_ids(model, preprocessor, sentences, batch_size=batch_size)
    if label_names is None:
        return ids
    return [[label_names[i] if i >= 0 else OUTSIDE for i in row] for row in ids]
