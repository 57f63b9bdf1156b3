"""google-research/bert's pretraining instances, built from token ids with numpy.

The algorithm is Google's create_pretraining_data.py (create_instances_from_document,
truncate_seq_pair, create_masked_lm_predictions); the data layout is not. Documents are
flat int32 token arrays plus line offsets, a segment is a (start, end) slice of that array,
and masking runs on a whole [N, S] batch of instances at once.

This module imports numpy only (no TensorFlow), because it runs in the worker processes
of `python -m tfbert.data.create_pretraining_data`.
"""

import bisect
import dataclasses
import random
from typing import NamedTuple

import numpy as np

from tfbert.data.example_encoder import encode_pretraining_examples


class DocumentPool(NamedTuple):
    """Tokenized documents: the ones to make instances from, then extra random-next ones.

    T=tokens, L=lines, D=documents.
    """

    ids: np.ndarray  # [T] int32 word-piece ids of every line, concatenated
    line_splits: np.ndarray  # [L + 1] int64: line l is ids[line_splits[l]:line_splits[l + 1]]
    doc_splits: np.ndarray  # [D + 1] int64: document d is lines doc_splits[d]:doc_splits[d + 1]
    doc_ids: np.ndarray  # [D] int64 corpus-wide document ids (the same document never pairs)
    num_targets: int  # documents [0, num_targets) get instances; the rest are only
    # candidates for the "random next" segment B, and are excerpts that already begin at
    # a random line: B starts at their first line.


@dataclasses.dataclass(frozen=True)
class InstanceConfig:
    """create_pretraining_data's flags, plus the vocabulary facts the workers need."""

    max_seq_length: int
    max_predictions_per_seq: int
    masked_lm_prob: float
    short_seq_prob: float
    do_whole_word_mask: bool
    vocab_size: int
    cls_id: int
    sep_id: int
    mask_id: int
    # [V] bool, True for "##" continuation pieces; needed for whole-word masking only.
    continuation: np.ndarray | None = None


def create_examples(pool, config, seed):
    """Google's instances for every target document of `pool`, serialized and shuffled.

    Returns a list of serialized tf.train.Examples. `seed` is a sequence of ints (here
    (random_seed, dupe, window)); the output is a function of (pool, config, seed) only,
    so any number of workers writes the same files.
    """
    seed_sequence = np.random.SeedSequence([int(x) % 2**64 for x in seed])
    rnd = random.Random(int(seed_sequence.generate_state(1, np.uint64)[0]))
    np_rng = np.random.default_rng(seed_sequence)
    spans = create_instance_spans(pool, config, rnd)
    rnd.shuffle(spans)
    arrays = pack_instances(pool.ids, spans, config)
    arrays = mask_instances(arrays, config, np_rng)
    return encode_pretraining_examples(**arrays)


def create_instance_spans(pool, config, rnd):
    """Segment pairs (a_start, a_end, b_start, b_end, is_random_next) for target documents.

    Google's create_instances_from_document for each target document in a shuffled order;
    segments are slices of `pool.ids` after truncate_seq_pair.
    """
    line_splits = pool.line_splits.tolist()
    doc_splits = pool.doc_splits.tolist()
    doc_ids = pool.doc_ids.tolist()
    num_docs = len(doc_ids)
    num_targets = pool.num_targets
    if len(set(doc_ids)) < 2:
        raise ValueError(
            "next sentence prediction needs at least 2 documents (a blank line separates "
            "documents in the input)"
        )
    max_num_tokens = config.max_seq_length - 3  # [CLS] A [SEP] B [SEP]
    short_seq_prob = config.short_seq_prob
    spans = []

    order = list(range(num_targets))
    rnd.shuffle(order)
    for doc in order:
        first_line, end_line = doc_splits[doc], doc_splits[doc + 1]
        # Usually fill the whole sequence (padding is wasted compute anyway); sometimes
        # (short_seq_prob) aim shorter so pretraining also sees short inputs, as
        # fine-tuning will. A target, not a limit: max_num_tokens is the limit.
        target_seq_length = max_num_tokens
        if rnd.random() < short_seq_prob:
            target_seq_length = rnd.randint(2, max_num_tokens)

        # Segments A and B follow the input's sentence (line) boundaries, not an arbitrary
        # split point, which would make next sentence prediction too easy.
        chunk_start = first_line  # the current chunk is lines [chunk_start, i]
        current_length = 0
        i = first_line
        while i < end_line:
            current_length += line_splits[i + 1] - line_splits[i]
            if i == end_line - 1 or current_length >= target_seq_length:
                num_chunk_lines = i - chunk_start + 1
                # How many of the chunk's lines go to A.
                a_lines = rnd.randint(1, num_chunk_lines - 1) if num_chunk_lines >= 2 else 1
                a_start = line_splits[chunk_start]
                a_end = line_splits[chunk_start + a_lines]
                if num_chunk_lines == 1 or rnd.random() < 0.5:
                    is_random_next = 1
                    target_b_length = target_seq_length - (a_end - a_start)
                    # Never the same document: unlike Google's (10 tries, then whatever
                    # came up), and also never a copy of it among the extra documents.
                    while True:
                        other = rnd.randrange(num_docs)
                        if other != doc and doc_ids[other] != doc_ids[doc]:
                            break
                    other_first, other_end = doc_splits[other], doc_splits[other + 1]
                    if other < num_targets:
                        start_line = rnd.randint(other_first, other_end - 1)
                    else:  # an excerpt that starts at a random line of its document
                        start_line = other_first
                    b_start = line_splits[start_line]
                    # Whole lines from start_line until B reaches target_b_length (at
                    # least one line), or the document ends.
                    stop = bisect.bisect_left(
                        line_splits, b_start + target_b_length, start_line + 1, other_end
                    )
                    b_end = line_splits[stop]
                    # The chunk's lines after A were not used: put them back, so the next
                    # chunk starts with them.
                    i -= num_chunk_lines - a_lines
                else:
                    is_random_next = 0
                    b_start, b_end = a_end, line_splits[i + 1]
                spans.append(
                    _truncate_seq_pair(a_start, a_end, b_start, b_end, max_num_tokens, rnd)
                    + (is_random_next,)
                )
                chunk_start = i + 1
                current_length = 0
            i += 1
    return spans


def _truncate_seq_pair(a_start, a_end, b_start, b_end, max_num_tokens, rnd):
    """Google's truncate_seq_pair on slices, in O(1) instead of one token per step.

    Google removes one token at a time from the longer segment (B on ties), from the front
    or the back with probability 1/2 each. The number of tokens each segment loses is
    therefore fixed by the lengths; how many of those come off the front is
    Binomial(cuts, 1/2), drawn here as the popcount of `cuts` random bits.
    """
    len_a, len_b = a_end - a_start, b_end - b_start
    excess = len_a + len_b - max_num_tokens
    if excess <= 0:
        return a_start, a_end, b_start, b_end
    # Cut the longer one down to the other's length, then alternate starting with B.
    if len_a > len_b:
        cut_a = min(excess, len_a - len_b)
        cut_b = 0
    else:
        cut_a = 0
        cut_b = min(excess, len_b - len_a)
    rest = excess - cut_a - cut_b
    cut_b += (rest + 1) // 2
    cut_a += rest // 2
    front_a = rnd.getrandbits(cut_a).bit_count() if cut_a else 0
    front_b = rnd.getrandbits(cut_b).bit_count() if cut_b else 0
    return (
        a_start + front_a,
        a_end - (cut_a - front_a),
        b_start + front_b,
        b_end - (cut_b - front_b),
    )


def pack_instances(ids, spans, config):
    """`[CLS] A [SEP] B [SEP]` rows padded with 0, and their segment ids and mask."""
    # N=instances, S=max_seq_length.
    N, S = len(spans), config.max_seq_length
    spans = np.asarray(spans, np.int64).reshape(N, 5)  # [N, 5]
    a_start, a_end, b_start, b_end, is_random_next = spans.T  # 5 x [N]
    len_a = (a_end - a_start)[:, None]  # [N, 1]
    len_b = (b_end - b_start)[:, None]  # [N, 1]
    position = np.arange(S)[None, :]  # [1, S]
    in_a = (position >= 1) & (position <= len_a)  # [N, S]
    in_b = (position >= len_a + 2) & (position < len_a + 2 + len_b)  # [N, S]
    source = np.where(in_a, a_start[:, None] + position - 1, 0)  # [N, S]
    source = np.where(in_b, b_start[:, None] + position - len_a - 2, source)
    input_ids = np.where(in_a | in_b, ids[source], 0).astype(np.int32)  # [N, S]
    length = len_a + len_b + 3  # [N, 1]
    input_ids[:, 0] = config.cls_id
    rows = np.arange(N)
    input_ids[rows, len_a[:, 0] + 1] = config.sep_id
    input_ids[rows, length[:, 0] - 1] = config.sep_id
    input_mask = (position < length).astype(np.int32)  # [N, S]
    segment_ids = ((position >= len_a + 2) & (position < length)).astype(np.int32)
    return {
        "input_ids": input_ids,
        "input_mask": input_mask,
        "segment_ids": segment_ids,
        "next_sentence_labels": is_random_next.astype(np.int32),  # [N]
    }


def mask_instances(arrays, config, np_rng):
    """Google's create_masked_lm_predictions for a batch of packed instances.

    Adds masked_lm_positions/ids/weights [N, P]; replaces the chosen input_ids with
    [MASK] (80%), a random vocabulary id (10%) or themselves (10%).
    """
    # N=instances, S=max_seq_length, P=max_predictions_per_seq.
    input_ids = arrays["input_ids"]
    N, S = input_ids.shape
    P = config.max_predictions_per_seq
    length = arrays["input_mask"].sum(axis=1)  # [N]
    # Google counts [CLS] and both [SEP]s in len(tokens), then never masks them.
    candidate = (
        (arrays["input_mask"] == 1)
        & (input_ids != config.cls_id)
        & (input_ids != config.sep_id)
    )  # [N, S]
    # np.rint rounds half to even, as Python's round() does.
    num_to_predict = np.minimum(
        P, np.maximum(1, np.rint(length * config.masked_lm_prob).astype(np.int64))
    )  # [N]
    if config.do_whole_word_mask:
        selected = _select_whole_words(input_ids, candidate, num_to_predict, config, np_rng)
    else:
        # A random key per candidate; the num_to_predict smallest keys are a uniform
        # random subset, as Google's shuffle-then-take.
        keys = np.where(candidate, np_rng.random((N, S)), 2.0)  # [N, S]
        kth = np.minimum(num_to_predict, candidate.sum(axis=1)) - 1  # [N]
        threshold = np.take_along_axis(np.sort(keys, axis=1), kth[:, None], axis=1)  # [N, 1]
        selected = candidate & (keys <= threshold)  # [N, S]

    # Positions in increasing order (Google sorts them), padded with 0 to P.
    rows, cols = np.nonzero(selected)  # row-major, so each row's positions ascend
    count = selected.sum(axis=1)  # [N]
    first = np.zeros(N, np.int64)
    np.cumsum(count[:-1], out=first[1:])
    slot = np.arange(rows.size) - first[rows]  # index within its row
    positions = np.zeros((N, P), np.int64)  # [N, P]
    positions[rows, slot] = cols
    valid = np.arange(P)[None, :] < count[:, None]  # [N, P]
    labels = np.zeros((N, P), np.int32)  # [N, P]
    labels[rows, slot] = input_ids[rows, cols]

    # 80% [MASK]; else 50/50 keep the original or a uniformly random vocabulary id
    # (Google: random() < 0.8, else random() < 0.5; one uniform draw has the same law).
    draw = np_rng.random((N, P))  # [N, P]
    random_ids = np_rng.integers(0, config.vocab_size, (N, P), dtype=np.int32)
    replacement = np.where(draw < 0.8, config.mask_id, np.where(draw < 0.9, labels, random_ids))
    masked_ids = input_ids.copy()
    masked_ids[rows, cols] = replacement[rows, slot]

    arrays = dict(arrays)
    arrays["input_ids"] = masked_ids
    arrays["masked_lm_positions"] = positions.astype(np.int32)
    arrays["masked_lm_ids"] = labels
    arrays["masked_lm_weights"] = valid.astype(np.float32)
    return arrays


def _select_whole_words(input_ids, candidate, num_to_predict, config, np_rng):
    """Google's whole-word masking: all pieces of a word, or none of them.

    A word is a candidate token plus the "##" pieces after it (Google's grouping: a "##"
    piece joins the previous candidate, even across the middle [SEP]). Words are visited
    in random order and taken while they fit in num_to_predict; a word that would overflow
    is skipped and the search goes on, as in Google's code. The visit is sequential within
    a row, so the loop runs over visit steps, each step for all rows at once.
    """
    # N=instances, S=max_seq_length (also the most words a row can have).
    N, S = input_ids.shape
    continuation = config.continuation[input_ids] & candidate  # [N, S]
    has_previous = np.cumsum(candidate, axis=1) > 1  # [N, S] a candidate before this one
    starts = candidate & ~(continuation & has_previous)  # [N, S] first piece of a word
    word = np.cumsum(starts, axis=1) - 1  # [N, S] word index of each candidate
    num_words = starts.sum(axis=1)  # [N]
    rows = np.arange(N)[:, None]  # [N, 1]
    sizes = np.zeros((N, S), np.int64)  # [N, S] pieces per word
    r, c = np.nonzero(candidate)
    np.add.at(sizes, (r, word[r, c]), 1)
    # A random visiting order of each row's words.
    keys = np.where(np.arange(S)[None, :] < num_words[:, None], np_rng.random((N, S)), 2.0)
    order = np.argsort(keys, axis=1)  # [N, S] word ids, the row's real words first
    sizes_in_order = sizes[rows, order]  # [N, S]
    total = np.zeros(N, np.int64)
    taken = np.zeros((N, S), bool)  # [N, S] by visit step
    for step in range(S):
        active = (total < num_to_predict) & (step < num_words)  # [N]
        if not active.any():
            break
        take = active & (total + sizes_in_order[:, step] <= num_to_predict)
        total += np.where(take, sizes_in_order[:, step], 0)
        taken[:, step] = take
    taken_words = np.zeros((N, S), bool)  # [N, S] by word id
    np.put_along_axis(taken_words, order, taken, axis=1)
    return candidate & taken_words[rows, np.maximum(word, 0)]
