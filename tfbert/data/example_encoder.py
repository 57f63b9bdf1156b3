"""Serializes pretraining tf.train.Examples with numpy (no TensorFlow, no protobuf objects).

Building a tf.train.Example message per record costs more than creating the instance. The
wire format is small and fixed, so the bytes are written directly: varints for int64
lists, little-endian float32 for float lists, map entries in sorted key order. The output
is byte-identical to `tf.train.Example.SerializeToString(deterministic=True)` (tested).

Example            { Features features = 1; }
Features           { map<string, Feature> feature = 1; }   entry: key = 1, value = 2
Feature            { FloatList float_list = 2; Int64List int64_list = 3; }
Int64List/FloatList{ repeated value = 1 [packed]; }
"""

import numpy as np

from tfbert.features import (
    RECORD_INPUT_IDS,
    RECORD_INPUT_MASK,
    RECORD_MASKED_LM_IDS,
    RECORD_MASKED_LM_POSITIONS,
    RECORD_MASKED_LM_WEIGHTS,
    RECORD_NEXT_SENTENCE_LABELS,
    RECORD_SEGMENT_IDS,
)

_LEN = 2  # wire type of length-delimited fields
_EXAMPLE_FEATURES = bytes([1 << 3 | _LEN])  # Example.features, also Features.feature
_ENTRY_KEY = bytes([1 << 3 | _LEN])
_ENTRY_VALUE = bytes([2 << 3 | _LEN])
_FLOAT_LIST = bytes([2 << 3 | _LEN])
_INT64_LIST = bytes([3 << 3 | _LEN])
_LIST_VALUES = bytes([1 << 3 | _LEN])
_MAX_VARINT_BYTES = 10
# Records encoded per pass (see encode_pretraining_examples).
_ROWS_PER_PASS = 512


def varint(value):
    """Protobuf base-128 varint of a non-negative int."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varints(values):
    """Varints of a vector of non-negative ints, as a column (see _concat_columns):
    (flat uint8 bytes, [M] starts, [M] lengths)."""
    # M=values, J=bytes of the longest varint (at most 10 for int64).
    values = np.asarray(values).reshape(-1)  # [M]
    if values.size and values.min() < 0:
        raise ValueError("varints here are for non-negative values")
    top = int(values.max()) if values.size else 0
    # Narrow integers make every pass below cheaper; ids and lengths fit in int32.
    values = values.astype(np.int32 if top < 1 << 31 else np.uint64)
    J = 1
    while J < _MAX_VARINT_BYTES and top >= 1 << (7 * J):
        J += 1
    num_bytes = np.ones(values.shape, np.int64)  # [M]
    groups = np.empty((values.size, J), np.uint8)  # [M, J]
    for j in range(J):
        group = (values >> values.dtype.type(7 * j)) & values.dtype.type(0x7F)
        if j + 1 < J:
            more = values >= values.dtype.type(1 << (7 * (j + 1)))  # another byte follows
            num_bytes += more
            group = group | (more.astype(values.dtype) << values.dtype.type(7))
        groups[:, j] = group
    flat = groups[np.arange(J)[None, :] < num_bytes[:, None]] if J > 1 else groups[:, 0]
    starts = np.zeros(values.shape, np.int64)
    np.cumsum(num_bytes[:-1], out=starts[1:])
    return flat, starts, num_bytes


def _constant_column(data, n):
    """A column holding the same bytes in every one of `n` records."""
    flat = np.frombuffer(data, np.uint8)
    return flat, np.zeros(n, np.int64), np.full(n, len(data), np.int64)


def _concat_columns(columns):
    """Record n = column 0's bytes for n, then column 1's, ...: (flat bytes, [N+1] offsets).

    A column is (flat uint8 array, [N] starts, [N] lengths): record n's piece is
    flat[starts[n]:starts[n] + lengths[n]]. One gather builds every record at once.
    """
    # N=records, C=columns.
    sources = [np.asarray(flat, np.uint8) for flat, _, _ in columns]
    bases = np.cumsum([0] + [len(f) for f in sources[:-1]])
    source = np.concatenate(sources)
    seg_src = np.stack([starts + base for (_, starts, _), base in zip(columns, bases)],
                       axis=1)  # [N, C]
    seg_len = np.stack([lengths for _, _, lengths in columns], axis=1)  # [N, C]
    seg_len = seg_len.reshape(-1)  # [N*C], record-major
    seg_out = np.zeros(seg_len.shape, np.int64)
    np.cumsum(seg_len[:-1], out=seg_out[1:])
    total = int(seg_len.sum())
    index = np.repeat(seg_src.reshape(-1) - seg_out, seg_len) + np.arange(total)
    record_len = seg_len.reshape(len(columns[0][1]), len(columns)).sum(axis=1)  # [N]
    offsets = np.zeros(len(record_len) + 1, np.int64)
    np.cumsum(record_len, out=offsets[1:])
    return source[index], offsets


def _varint_size(lengths):
    """Bytes in the varints of a vector of non-negative ints."""
    size = np.ones(np.shape(lengths), np.int64)
    for j in range(1, _MAX_VARINT_BYTES):
        size += np.asarray(lengths) >= (1 << (7 * j))
    return size


def _feature_columns(name, list_tag, payload):
    """The columns of one `feature` map entry (Features field 1) around `payload`.

    payload is a column of the packed values. Returns (columns, [N] entry byte sizes).
    """
    N = len(payload[1])
    key = name.encode()
    L = payload[2]  # [N] packed values bytes
    H = 1 + _varint_size(L) + L  # Int64List/FloatList message
    G = 1 + _varint_size(H) + H  # Feature message
    E = 1 + _varint_size(len(key)) + len(key) + 1 + _varint_size(G) + G  # map entry
    size = 1 + _varint_size(E) + E  # field 1 of Features, tag and length included
    fixed = len(np.unique(L)) == 1
    if fixed:
        # Every header is the same: build it once as bytes.
        l0 = int(L[0])
        header = (
            _EXAMPLE_FEATURES + varint(int(E[0])) + _ENTRY_KEY + varint(len(key)) + key
            + _ENTRY_VALUE + varint(int(G[0])) + list_tag + varint(int(H[0]))
            + _LIST_VALUES + varint(l0)
        )
        return [_constant_column(header, N), payload], size
    return [
        _constant_column(_EXAMPLE_FEATURES, N),
        _varints(E),
        _constant_column(_ENTRY_KEY + varint(len(key)) + key + _ENTRY_VALUE, N),
        _varints(G),
        _constant_column(list_tag, N),
        _varints(H),
        _constant_column(_LIST_VALUES, N),
        _varints(L),
        payload,
    ], size


def _row_varints(values):
    """A column of each row's packed varints, for an int [N, K] array."""
    values = np.asarray(values)
    N, K = values.shape
    flat, _, num_bytes = _varints(values)
    row_bytes = num_bytes.reshape(N, K).sum(axis=1)  # [N]
    starts = np.zeros(N, np.int64)
    np.cumsum(row_bytes[:-1], out=starts[1:])
    return flat, starts, row_bytes


def _row_fixed_column(values, dtype):
    """A column of each row's raw little-endian bytes (one fixed size per row)."""
    values = np.ascontiguousarray(values, dtype=dtype)
    N = values.shape[0]
    width = values.itemsize * int(np.prod(values.shape[1:]))
    flat = values.reshape(-1).view(np.uint8)
    return flat, np.arange(N, dtype=np.int64) * width, np.full(N, width, np.int64)


def encode_pretraining_examples(
    input_ids,
    input_mask,
    segment_ids,
    masked_lm_positions,
    masked_lm_ids,
    masked_lm_weights,
    next_sentence_labels,
):
    """Serialized tf.train.Examples, google-research/bert's pretraining features.

    input_ids/input_mask/segment_ids [N, S], masked_lm_* [N, P] (weights float), and
    next_sentence_labels [N]. Returns a list of N bytes objects.
    """
    N = len(input_ids)
    if N == 0:
        return []
    if N > _ROWS_PER_PASS:
        # The byte gathers below hold several int64 indexes per output byte: encode a few
        # hundred rows at a time so that memory stays a small multiple of the output.
        columns = (input_ids, input_mask, segment_ids, masked_lm_positions, masked_lm_ids,
                   masked_lm_weights, next_sentence_labels)
        records = []
        for start in range(0, N, _ROWS_PER_PASS):
            records += encode_pretraining_examples(
                *(c[start:start + _ROWS_PER_PASS] for c in columns))
        return records
    # 0/1 features are written as one raw byte per value (their one-byte varint).
    for name, values in (
        (RECORD_INPUT_MASK, input_mask),
        (RECORD_SEGMENT_IDS, segment_ids),
        (RECORD_NEXT_SENTENCE_LABELS, next_sentence_labels),
    ):
        values = np.asarray(values)
        if values.size and (values.min() < 0 or values.max() > 1):
            raise ValueError(f"{name} must hold only 0 and 1")
    payloads = {
        RECORD_INPUT_IDS: (_INT64_LIST, _row_varints(input_ids)),
        RECORD_INPUT_MASK: (_INT64_LIST, _row_fixed_column(input_mask, "<u1")),
        RECORD_SEGMENT_IDS: (_INT64_LIST, _row_fixed_column(segment_ids, "<u1")),
        RECORD_MASKED_LM_POSITIONS: (_INT64_LIST, _row_varints(masked_lm_positions)),
        RECORD_MASKED_LM_IDS: (_INT64_LIST, _row_varints(masked_lm_ids)),
        RECORD_MASKED_LM_WEIGHTS: (_FLOAT_LIST, _row_fixed_column(masked_lm_weights, "<f4")),
        RECORD_NEXT_SENTENCE_LABELS: (
            _INT64_LIST,
            _row_fixed_column(np.reshape(next_sentence_labels, (N, 1)), "<u1"),
        ),
    }
    # Features in sorted key order, as deterministic protobuf serialization writes a map.
    columns, features_size = [], np.zeros(N, np.int64)
    for name in sorted(payloads):
        list_tag, payload = payloads[name]
        feature_columns, size = _feature_columns(name, list_tag, payload)
        columns.extend(feature_columns)
        features_size += size
    columns = [_constant_column(_EXAMPLE_FEATURES, N), _varints(features_size)] + columns
    flat, offsets = _concat_columns(columns)
    data, offsets = flat.tobytes(), offsets.tolist()
    return [data[offsets[i]:offsets[i + 1]] for i in range(N)]
