"""tfbert.data.records: Google's records through our pipeline, ours through Google's."""

import collections
import types

import numpy as np
import pytest
import record_stats
import tensorflow as tf
from pretrain_corpus import PARITY_FLAGS

from tfbert.data import (
    list_record_files,
    parse_pretraining_examples,
    pretraining_dataset,
    pretraining_feature_spec,
)
from tfbert.data.example_encoder import encode_pretraining_examples
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

S, P = PARITY_FLAGS["max_seq_length"], PARITY_FLAGS["max_predictions_per_seq"]
FEATURES = {INPUT_WORD_IDS: RECORD_INPUT_IDS, INPUT_MASK: RECORD_INPUT_MASK,
            INPUT_TYPE_IDS: RECORD_SEGMENT_IDS, MASKED_LM_POSITIONS: RECORD_MASKED_LM_POSITIONS}
LABELS = (RECORD_MASKED_LM_IDS, RECORD_MASKED_LM_WEIGHTS, RECORD_NEXT_SENTENCE_LABELS)


def _concat(dataset):
    features, labels = collections.defaultdict(list), collections.defaultdict(list)
    for f, l in dataset:
        for k, v in f.items():
            features[k].append(v.numpy())
        for k, v in l.items():
            labels[k].append(v.numpy())
    return ({k: np.concatenate(v) for k, v in features.items()},
            {k: np.concatenate(v) for k, v in labels.items()})


def test_googles_records_batch_through_pretraining_dataset(google_records):
    dataset = pretraining_dataset(google_records, batch_size=32, max_seq_length=S,
                                  max_predictions_per_seq=P, is_training=False)
    features, labels = next(iter(dataset))
    assert set(features) == set(FEATURES) and set(labels) == set(LABELS)
    for name in (INPUT_WORD_IDS, INPUT_MASK, INPUT_TYPE_IDS):
        assert features[name].shape == (32, S) and features[name].dtype == tf.int32
    assert features[MASKED_LM_POSITIONS].shape == (32, P)
    assert features[MASKED_LM_POSITIONS].dtype == tf.int32
    assert labels[RECORD_MASKED_LM_IDS].shape == (32, P)
    assert labels[RECORD_MASKED_LM_IDS].dtype == tf.int32
    assert labels[RECORD_MASKED_LM_WEIGHTS].dtype == tf.float32
    assert labels[RECORD_NEXT_SENTENCE_LABELS].shape == (32, 1)
    assert labels[RECORD_NEXT_SENTENCE_LABELS].dtype == tf.int32
    # One ordered pass, the last partial batch dropped; values as written.
    features, labels = _concat(dataset)
    expected = record_stats.read_records(google_records, S, P)
    n = len(expected[RECORD_INPUT_IDS]) // 32 * 32
    assert len(features[INPUT_WORD_IDS]) == n
    for model_name, record_name in FEATURES.items():
        np.testing.assert_array_equal(features[model_name], expected[record_name][:n])
    for name in LABELS:
        np.testing.assert_array_equal(labels[name], expected[name][:n])


def test_our_records_parse_in_googles_run_pretraining(our_records, monkeypatch):
    import google_reference

    run_pretraining = google_reference.google_module("run_pretraining")
    # Google's input_fn batches with tf.contrib.data.map_and_batch, now tf.data's.
    contrib = types.SimpleNamespace(data=types.SimpleNamespace(
        map_and_batch=tf.data.experimental.map_and_batch,
        parallel_interleave=tf.data.experimental.parallel_interleave))
    monkeypatch.setattr(run_pretraining.tf, "contrib", contrib, raising=False)
    input_fn = run_pretraining.input_fn_builder([our_records], S, P, is_training=False)
    google_batch = next(iter(input_fn({"batch_size": 16})))
    ours = pretraining_dataset(our_records, batch_size=16, max_seq_length=S,
                               max_predictions_per_seq=P, is_training=False)
    features, labels = next(iter(ours))
    for model_name, record_name in FEATURES.items():
        np.testing.assert_array_equal(google_batch[record_name].numpy(),
                                      features[model_name].numpy())
    for name in LABELS:
        np.testing.assert_array_equal(google_batch[name].numpy(), labels[name].numpy())
    # And Google's name_to_features is our spec, name for name.
    spec = pretraining_feature_spec(S, P)
    assert set(google_batch) == set(spec)
    for name, value in google_batch.items():
        assert value.shape[1:] == spec[name].shape


def test_encoder_is_byte_identical_to_protobuf():
    rng = np.random.default_rng(0)
    N = 50
    arrays = dict(
        input_ids=rng.integers(0, 250_000, (N, S)), input_mask=rng.integers(0, 2, (N, S)),
        segment_ids=rng.integers(0, 2, (N, S)),
        masked_lm_positions=rng.integers(0, 512, (N, P)),
        masked_lm_ids=rng.integers(0, 2**40, (N, P)),
        masked_lm_weights=rng.random((N, P)).astype(np.float32),
        next_sentence_labels=rng.integers(0, 2, N))
    arrays["input_ids"][0] = 0  # all-zero rows (padding) and one-byte varints
    records = encode_pretraining_examples(**arrays)
    for n, record in enumerate(records):
        feature = {}
        for name in (RECORD_INPUT_IDS, RECORD_INPUT_MASK, RECORD_SEGMENT_IDS,
                     RECORD_MASKED_LM_POSITIONS, RECORD_MASKED_LM_IDS):
            feature[name] = tf.train.Feature(
                int64_list=tf.train.Int64List(value=arrays[name][n].tolist()))
        feature[RECORD_MASKED_LM_WEIGHTS] = tf.train.Feature(
            float_list=tf.train.FloatList(value=arrays["masked_lm_weights"][n].tolist()))
        feature[RECORD_NEXT_SENTENCE_LABELS] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=[int(arrays["next_sentence_labels"][n])]))
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        assert record == example.SerializeToString(deterministic=True)


@pytest.fixture(scope="module")
def shards(small_corpus, data_dir, vocab_file, ours):
    """Our records for two small files, in 4 GZIP shards; and the same uncompressed."""
    prefix = str(data_dir / "pipeline.tfrecord")
    assert ours(small_corpus, prefix, vocab_file, dupe_factor=1, num_shards=4,
                gzip="true", random_seed=5) == 0
    plain = str(data_dir / "pipeline-plain.tfrecord")
    assert ours(small_corpus, plain, vocab_file, dupe_factor=1, random_seed=5) == 0
    return prefix + "-*", plain


def test_file_sharding_across_input_pipelines(shards):
    pattern, plain = shards
    rows = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2,
                                             input_pipeline_id=pipeline,
                                             num_replicas_in_sync=4)
        dataset = pretraining_dataset(pattern, global_batch_size=8, input_context=context,
                                      max_seq_length=S, max_predictions_per_seq=P,
                                      is_training=False)
        features, _ = _concat(dataset)
        assert len(features[INPUT_WORD_IDS]) > 0
        assert next(iter(dataset))[0][INPUT_WORD_IDS].shape == (2, S)  # 8 / 4 replicas
        rows.append({r.tobytes() for r in features[INPUT_WORD_IDS]})
    assert not rows[0] & rows[1]
    # Together they cover the records (each pipeline drops its last partial batch).
    written = record_stats.read_records(plain, S, P)[RECORD_INPUT_IDS].astype(np.int32)
    everything = {r.tobytes() for r in written}
    assert rows[0] | rows[1] <= everything
    assert len(rows[0] | rows[1]) >= len(everything) - 2 * 2 * 2


def test_gzip_is_detected_and_reads_the_same_records(shards):
    pattern, plain = shards
    gz = record_stats.read_records(list_record_files(pattern), S, P)
    ref = record_stats.read_records(plain, S, P)
    assert sorted(r.tobytes() for r in gz[RECORD_INPUT_IDS]) == sorted(
        r.tobytes() for r in ref[RECORD_INPUT_IDS])
    dataset = pretraining_dataset(pattern, batch_size=4, max_seq_length=S,
                                  max_predictions_per_seq=P, is_training=False,
                                  compression=None)
    assert next(iter(dataset))[0][INPUT_WORD_IDS].shape == (4, S)


def test_training_pipeline_repeats_and_is_seeded(shards):
    pattern, _ = shards

    total = len(record_stats.read_serialized(list_record_files(pattern)))
    count = total // 16 + 3  # more than one pass: the dataset must repeat

    def first_batches(seed):
        dataset = pretraining_dataset(pattern, batch_size=16, max_seq_length=S,
                                      max_predictions_per_seq=P, seed=seed,
                                      deterministic=True, shuffle_buffer=200)
        return [f[INPUT_WORD_IDS].numpy() for f, _ in dataset.take(count)]

    a, b, c = first_batches(1), first_batches(1), first_batches(2)
    assert len(a) == count
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_parse_one_record_and_errors(our_records, tmp_path):
    serialized = record_stats.read_serialized(our_records)[0]
    features, labels = parse_pretraining_examples(serialized, S, P)
    assert features[INPUT_WORD_IDS].shape == (S,)
    assert labels[RECORD_MASKED_LM_WEIGHTS].dtype == tf.float32
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        pretraining_dataset(str(tmp_path / "nothing-here*"), batch_size=2,
                            max_seq_length=S, max_predictions_per_seq=P)
    with pytest.raises(ValueError, match="exactly one"):
        pretraining_dataset(our_records, max_seq_length=S, max_predictions_per_seq=P)
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=0)
    with pytest.raises(ValueError, match="--num_shards"):
        pretraining_dataset(our_records, global_batch_size=2, input_context=context,
                            max_seq_length=S, max_predictions_per_seq=P)
