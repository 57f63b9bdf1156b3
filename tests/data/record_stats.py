"""Reads pretraining TFRecords into numpy and measures what create_pretraining_data makes."""

import numpy as np
import tensorflow as tf

from tfbert.data.records import detect_compression, pretraining_feature_spec
from tfbert.features import (
    RECORD_INPUT_IDS,
    RECORD_INPUT_MASK,
    RECORD_MASKED_LM_IDS,
    RECORD_MASKED_LM_POSITIONS,
    RECORD_MASKED_LM_WEIGHTS,
    RECORD_NEXT_SENTENCE_LABELS,
    RECORD_SEGMENT_IDS,
)


def read_serialized(paths):
    out = []
    for path in [paths] if isinstance(paths, str) else paths:
        dataset = tf.data.TFRecordDataset(path, compression_type=detect_compression(path))
        out.extend(r.numpy() for r in dataset)
    return out


def read_records(paths, max_seq_length, max_predictions_per_seq):
    """All records of `paths` as a dict of numpy arrays [N, ...] keyed by RECORD_* names."""
    serialized = read_serialized(paths)
    spec = pretraining_feature_spec(max_seq_length, max_predictions_per_seq)
    parsed = tf.io.parse_example(tf.constant(serialized), spec)
    return {name: value.numpy() for name, value in parsed.items()}


def original_ids(records):
    """input_ids with the masked positions restored to their labels: [N, S]."""
    ids = records[RECORD_INPUT_IDS].copy()
    weights = records[RECORD_MASKED_LM_WEIGHTS] > 0
    rows, slots = np.nonzero(weights)
    ids[rows, records[RECORD_MASKED_LM_POSITIONS][rows, slots]] = (
        records[RECORD_MASKED_LM_IDS][rows, slots]
    )
    return ids


def statistics(records, cls_id, sep_id, mask_id, max_seq_length, masked_lm_prob,
               max_predictions_per_seq):
    """The numbers the parity tests compare between our records and Google's."""
    length = records[RECORD_INPUT_MASK].sum(axis=1)
    weights = records[RECORD_MASKED_LM_WEIGHTS] > 0
    num_masked = weights.sum(axis=1)
    rows, slots = np.nonzero(weights)
    positions = records[RECORD_MASKED_LM_POSITIONS][rows, slots]
    labels = records[RECORD_MASKED_LM_IDS][rows, slots]
    shown = records[RECORD_INPUT_IDS][rows, positions]
    is_mask = shown == mask_id
    is_same = (shown == labels) & ~is_mask
    expected = np.minimum(
        max_predictions_per_seq, np.maximum(1, np.rint(length * masked_lm_prob))
    )
    original = original_ids(records)
    # In the original ids: a random replacement can be [SEP] too.
    first_sep = np.argmax(original == sep_id, axis=1)
    return {
        "num_instances": len(length),
        "mean_length": float(length.mean()),
        "short_fraction": float(np.mean(length < max_seq_length - 10)),
        "full_fraction": float(np.mean(length == max_seq_length)),
        "masked_fraction": float(num_masked.sum() / length.sum()),
        "exact_num_masked": bool(np.all(num_masked == expected)),
        "mask_fraction": float(is_mask.mean()),
        "same_fraction": float(is_same.mean()),
        "random_fraction": float((~is_mask & ~is_same).mean()),
        "random_next_fraction": float(records[RECORD_NEXT_SENTENCE_LABELS].mean()),
        "mean_segment_a": float(
            (records[RECORD_SEGMENT_IDS] == 0).sum(axis=1).mean()
            - (max_seq_length - length).mean()
        ),
        "mean_random_b": float(
            records[RECORD_SEGMENT_IDS].sum(axis=1)[
                records[RECORD_NEXT_SENTENCE_LABELS][:, 0] == 1].mean()),
        "mean_actual_b": float(
            records[RECORD_SEGMENT_IDS].sum(axis=1)[
                records[RECORD_NEXT_SENTENCE_LABELS][:, 0] == 0].mean()),
        "masks_special": bool(np.any(np.isin(labels, [cls_id, sep_id]))),
        "starts_with_cls": bool(np.all(original[:, 0] == cls_id)),
        "first_sep": first_sep,
    }
