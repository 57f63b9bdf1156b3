"""Pretraining TFRecords: the schema, a parser, and the tf.data input pipeline.

The records are exactly google-research/bert's (run_pretraining.py `name_to_features`), so
files written by Google's, Model Garden's or NVIDIA's create_pretraining_data train here
unchanged, and ours train in theirs.
"""

import tensorflow as tf

from tfbert.features import (
    INPUT_MASK,
    INPUT_TYPE_IDS,
    INPUT_WORD_IDS,
    MASKED_LM_POSITIONS,
    RECORD_INPUT_IDS,
    RECORD_INPUT_MASK,
    RECORD_MASKED_LM_IDS,
    RECORD_MASKED_LM_POSITIONS,
    RECORD_MASKED_LM_WEIGHTS,
    RECORD_NEXT_SENTENCE_LABELS,
    RECORD_SEGMENT_IDS,
)

# Model input name <- record feature name (features), and the labels kept under their
# record names.
_FEATURE_FROM_RECORD = {
    INPUT_WORD_IDS: RECORD_INPUT_IDS,
    INPUT_MASK: RECORD_INPUT_MASK,
    INPUT_TYPE_IDS: RECORD_SEGMENT_IDS,
    MASKED_LM_POSITIONS: RECORD_MASKED_LM_POSITIONS,
}
_LABELS = (RECORD_MASKED_LM_IDS, RECORD_MASKED_LM_WEIGHTS, RECORD_NEXT_SENTENCE_LABELS)

_COMPRESSIONS = ("", "GZIP", "ZLIB")
_GZIP_MAGIC = b"\x1f\x8b"


def pretraining_feature_spec(max_seq_length, max_predictions_per_seq):
    """google-research/bert's run_pretraining `name_to_features`, keyed by RECORD_* names."""
    S, P = max_seq_length, max_predictions_per_seq
    return {
        RECORD_INPUT_IDS: tf.io.FixedLenFeature([S], tf.int64),
        RECORD_INPUT_MASK: tf.io.FixedLenFeature([S], tf.int64),
        RECORD_SEGMENT_IDS: tf.io.FixedLenFeature([S], tf.int64),
        RECORD_MASKED_LM_POSITIONS: tf.io.FixedLenFeature([P], tf.int64),
        RECORD_MASKED_LM_IDS: tf.io.FixedLenFeature([P], tf.int64),
        RECORD_MASKED_LM_WEIGHTS: tf.io.FixedLenFeature([P], tf.float32),
        RECORD_NEXT_SENTENCE_LABELS: tf.io.FixedLenFeature([1], tf.int64),
    }


def parse_pretraining_examples(serialized, max_seq_length, max_predictions_per_seq):
    """Parses serialized examples into `(features, labels)` for `BertPretrainer`.

    `serialized` is a string scalar (one record) or vector `[B]` (a batch; parsing a batch
    at once is much faster). Returns features {input_word_ids, input_mask, input_type_ids,
    masked_lm_positions} and labels {masked_lm_ids, masked_lm_weights, next_sentence_labels},
    each `[S]`/`[P]`/`[1]` (with a leading `[B]` for a batch); all int32 except the float32
    weights.
    """
    spec = pretraining_feature_spec(max_seq_length, max_predictions_per_seq)
    serialized = tf.convert_to_tensor(serialized, tf.string)
    if serialized.shape.rank == 0:
        record = tf.io.parse_single_example(serialized, spec)
    else:
        record = tf.io.parse_example(serialized, spec)
    # tf.train.Example stores int64; cast once here so TPU code only sees int32.
    record = {
        name: tf.cast(value, tf.int32) if value.dtype == tf.int64 else value
        for name, value in record.items()
    }
    features = {name: record[source] for name, source in _FEATURE_FROM_RECORD.items()}
    labels = {name: record[name] for name in _LABELS}
    return features, labels


def list_record_files(file_patterns):
    """Sorted files matching `file_patterns` (a list, or one comma-separated string of globs).

    Raises FileNotFoundError naming the patterns when nothing matches.
    """
    if isinstance(file_patterns, (str, bytes)):
        file_patterns = [file_patterns]
    patterns = []
    for pattern in file_patterns:
        pattern = pattern.decode() if isinstance(pattern, bytes) else str(pattern)
        patterns.extend(p.strip() for p in pattern.split(",") if p.strip())
    files = set()
    for pattern in patterns:
        try:
            files.update(tf.io.gfile.glob(pattern))
        except tf.errors.OpError:
            pass  # a bad directory in a glob matches nothing; reported below
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {', '.join(patterns) or repr('')}")
    return sorted(files)


def detect_compression(path):
    """"GZIP" when `path` starts with the gzip magic bytes, else "" (uncompressed)."""
    with tf.io.gfile.GFile(path, "rb") as f:
        return "GZIP" if f.read(2) == _GZIP_MAGIC else ""


def per_replica_batch_size(global_batch_size, batch_size, input_context):
    """One replica's batch size from exactly one of a global or a per-replica size."""
    if (global_batch_size is None) == (batch_size is None):
        raise ValueError("pass exactly one of global_batch_size and batch_size")
    if batch_size is None:
        batch_size = global_batch_size
        if input_context is not None:
            batch_size = input_context.get_per_replica_batch_size(global_batch_size)
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    return batch_size


def pretraining_dataset(
    file_patterns,
    global_batch_size=None,
    batch_size=None,
    *,
    max_seq_length,
    max_predictions_per_seq,
    input_context=None,
    is_training=True,
    shuffle_buffer=10000,
    seed=None,
    deterministic=False,
    compression=None,
    cycle_length=8,
):
    """A `tf.data.Dataset` of `(features, labels)` batches from pretraining TFRecords.

    Args:
      file_patterns: a glob, a comma-separated string of globs, or a list of globs.
      global_batch_size: the batch size summed over all replicas; with `input_context`
        each replica gets `input_context.get_per_replica_batch_size(global_batch_size)`.
      batch_size: the batch size this dataset yields (instead of `global_batch_size`).
      max_seq_length, max_predictions_per_seq: the lengths the records were written with.
      input_context: a `tf.distribute.InputContext` (from
        `strategy.distribute_datasets_from_function`); files are sharded across its
        `num_input_pipelines`, so every worker reads different files.
      is_training: shuffle files and records and repeat forever; else one ordered pass.
      shuffle_buffer: records in the shuffle buffer (training only). Our
        create_pretraining_data shuffles records only within a window of documents, so
        this buffer is larger than Google's 100.
      seed: seeds the file and record shuffles.
      deterministic: keep a reproducible order (slower: interleave and map wait for the
        next element in order instead of taking whichever is ready).
      compression: None detects GZIP from the first file's magic bytes; or "", "GZIP",
        "ZLIB".
      cycle_length: files read in parallel by the interleave.

    Batches are `batch(drop_remainder=True)` so every shape is static (TPUs need it);
    an evaluation pass therefore drops the last partial batch, as Google's does.
    """
    # B=batch, S=max_seq_length, P=max_predictions_per_seq.
    batch_size = per_replica_batch_size(global_batch_size, batch_size, input_context)
    files = list_record_files(file_patterns)
    if compression is None:
        compression = detect_compression(files[0])
    compression = compression.upper()
    if compression not in _COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; valid: '', GZIP, ZLIB")

    # File-level sharding: each input pipeline (usually one per worker host) reads its own
    # files, so no record is read twice and no host parses records it throws away.
    if input_context is not None and input_context.num_input_pipelines > 1:
        num, index = input_context.num_input_pipelines, input_context.input_pipeline_id
        if len(files) < num:
            raise ValueError(
                f"{len(files)} TFRecord files cannot be sharded across {num} input "
                "pipelines; write at least one file per pipeline (--num_shards)"
            )
        files = files[index::num]

    dataset = tf.data.Dataset.from_tensor_slices(files)
    if is_training:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.repeat()
    dataset = dataset.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=compression),
        cycle_length=min(cycle_length, len(files)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic or not is_training,
    )
    if is_training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)  # [B] serialized records
    dataset = dataset.map(
        lambda serialized: parse_pretraining_examples(
            serialized, max_seq_length, max_predictions_per_seq
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic or not is_training,
    )
    options = tf.data.Options()
    options.deterministic = bool(deterministic or not is_training)
    dataset = dataset.with_options(options)
    return dataset.prefetch(tf.data.AUTOTUNE)
