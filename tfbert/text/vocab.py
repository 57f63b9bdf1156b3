"""WordPiece vocabulary building: `build_vocabulary` and `python -m tfbert.text.vocab`.

Words are split exactly as BertPreprocessor (and Google's BasicTokenizer) splits them,
so the vocabulary fits the tokenizer that will use it; the WordPiece learning itself is
tensorflow-text's (`wordpiece_tokenizer_learner_lib`, the learner behind its
`bert_vocab_from_dataset`).
"""

import argparse
import collections
import math
import sys
import time

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text
from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as learner

from tfbert.config import write_text_atomic
from tfbert.text import normalization

# Google's special tokens, [PAD] first so that it gets id 0 as in Google's vocabularies
# (run_classifier.py pads input_ids with 0).
RESERVED_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def word_splitter(lowercase=True):
    """Google's BasicTokenizer in-graph: a function from strings [B] to words [B, (W)].

    The same normalisation as BertPreprocessor (normalization.py), then a split on
    spaces, with Google's punctuation and CJK characters kept as one-character words.
    """
    marker, sentinel = normalization.choose_private_chars(())
    model = normalization.normalizer_model(lowercase, marker, sentinel)
    normalizer = tf_text.FastBertNormalizer(
        model_buffer=tf.constant(np.frombuffer(model, dtype=np.uint8))
    )
    sigma_rules = normalization.sigma_rules(marker) if lowercase else ()
    split = normalization.split_pattern()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def split_words(strings):
        text = normalizer.normalize(strings)
        for pattern, rewrite in sigma_rules:
            text = tf.strings.regex_replace(text, pattern, rewrite)
        # After normalisation the only whitespace left is " ".
        return tf_text.regex_split(text, f" |{split}", keep_delim_regex_pattern=split)

    return split_words


def _as_dataset(data):
    if isinstance(data, tf.data.Dataset):
        if data.element_spec.dtype != tf.string:
            raise ValueError(f"expected a dataset of strings, got {data.element_spec}")
        return data.unbatch() if data.element_spec.shape.rank else data
    if isinstance(data, str):
        data = [data]
    files = []
    for pattern in data:
        matches = sorted(tf.io.gfile.glob(pattern))
        if not matches:
            raise FileNotFoundError(f"no file matches {pattern!r}")
        files += matches
    return tf.data.TextLineDataset(files)


def count_words(data, lowercase=True, batch_size=1024, progress=None):
    """{word: count} over `data` (text files, globs, or a tf.data.Dataset of strings)."""
    split_words = word_splitter(lowercase)
    counts = collections.Counter()
    texts = 0
    for batch in _as_dataset(data).batch(batch_size).prefetch(tf.data.AUTOTUNE):
        words = split_words(batch).flat_values.numpy()
        unique, count = np.unique(words, return_counts=True)
        counts.update(dict(zip(unique.tolist(), count.tolist())))
        texts += len(batch)
        if progress:
            progress(texts)
    return {word.decode("utf-8"): count for word, count in counts.items()}


def learn_vocabulary(word_counts, vocabulary_size, reserved_tokens, lower_thresh=10,
                     num_iterations=4, max_token_length=50, max_unique_chars=1000,
                     max_input_tokens=int(5e6), slack_ratio=0.05):
    """tensorflow-text's WordPiece learner, with fewer rounds of its threshold search.

    `learner.learn` bisects the count threshold linearly from the largest word count
    down, so most of its rounds (each a full pass of the learner over all words) try
    thresholds that keep a few hundred tokens. The vocabulary size is close to a power
    law of the threshold, so here the next threshold is interpolated on log-log scales
    between the nearest rounds above and below the target, starting from the count of
    the word ranked vocabulary_size / 1.5 (about how many whole words a WordPiece
    vocabulary keeps), with a log-bisection whenever interpolation stalls. It stops, as
    `learner.learn` does, at a vocabulary within `slack_ratio` below `vocabulary_size`;
    every round is the library's own `learn_with_thresh` and the arguments are those of
    `learner.learn`. Returns the largest vocabulary found that fits.
    """
    params = learner.Params(
        None, lower_thresh, num_iterations, max_input_tokens, max_token_length,
        max_unique_chars, vocabulary_size, slack_ratio, True, "##", list(reserved_tokens),
    )
    word_counts = list(word_counts.items())
    upper, lower = learner.get_search_threshs(word_counts, None, lower_thresh)
    all_counts = learner.get_input_words(word_counts, params.reserved_tokens,
                                         max_token_length)
    allowed_chars = learner.get_allowed_chars(all_counts, max_unique_chars)
    words = learner.filter_input_words(all_counts, allowed_chars, max_input_tokens)

    target = vocabulary_size * (1 - slack_ratio / 2)
    ranked = sorted((count for _, count in words), reverse=True)
    thresh = ranked[min(len(ranked) - 1, int(vocabulary_size / 1.5))] if ranked else lower
    too_big = too_small = None  # (thresh, size) of the nearest rounds on each side
    best = None
    while lower <= upper:
        thresh = min(upper, max(lower, thresh))
        vocabulary = learner.learn_with_thresh(words, thresh, params)
        size = len(vocabulary)
        if size > vocabulary_size:
            too_big, lower = (thresh, size), thresh + 1
        else:
            if best is None or size > len(best):
                best = vocabulary
            if vocabulary_size - size <= slack_ratio * vocabulary_size:
                break
            too_small, upper = (thresh, size), thresh - 1
        if lower > upper:
            break
        thresh = _next_threshold(too_big, too_small, target, lower, upper)
    if best is None:
        raise ValueError(
            f"no vocabulary of at most {vocabulary_size} tokens: the reserved tokens and "
            f"the {len(allowed_chars)} characters (each also as ##c) alone need more"
        )
    return best


def _next_threshold(too_big, too_small, target, lower, upper):
    """The next threshold to try in [lower, upper] (see learn_vocabulary)."""
    if not (too_big and too_small):
        # One side known: step as if size ~ threshold ** -0.6 (IMDB and Wikipedia-like
        # text come close), clamped into the bracket.
        t, n = too_big or too_small
        x = math.log(t) + (math.log(n) - math.log(target)) / 0.6
        return min(upper, max(lower, round(math.exp(x))))
    (t1, n1), (t2, n2) = too_big, too_small
    # Interpolate log(threshold) linearly in log(size), but keep clear of the ends of
    # the bracket, where interpolation creeps (regula falsi): bisect there instead.
    x = math.log(t1) + (math.log(target) - math.log(n1)) * (
        (math.log(t2) - math.log(t1)) / (math.log(n2) - math.log(n1)))
    log_lo, log_hi = math.log(lower), math.log(upper)
    margin = 0.1 * (log_hi - log_lo)
    if not log_lo + margin <= x <= log_hi - margin:
        x = (log_lo + log_hi) / 2
    return min(upper, max(lower, round(math.exp(x))))


def build_vocabulary(data, vocabulary_size, lowercase=True, output=None,
                     reserved_tokens=RESERVED_TOKENS, progress=None, **learn_params):
    """Learns a WordPiece vocabulary of at most `vocabulary_size` tokens.

    Args:
      data: text files (paths or globs, one text per line) or a tf.data.Dataset of
        strings (scalars or batches).
      vocabulary_size: the largest vocabulary to return (tensorflow-text's learner aims
        within 5% below it).
      lowercase: True for an uncased vocabulary (BertPreprocessor's `lowercase`).
      output: if given, the vocab.txt to write (atomically).
      reserved_tokens: tokens placed first, in order; by default Google's specials with
        [PAD] = 0.
      progress: optional callable receiving the number of texts read so far.
      **learn_params: passed on to learn_vocabulary (e.g. lower_thresh).

    Returns:
      The vocabulary, a list of tokens.
    """
    reserved_tokens = list(reserved_tokens)
    if vocabulary_size <= len(reserved_tokens):
        raise ValueError(
            f"vocabulary_size {vocabulary_size} leaves no room beside the "
            f"{len(reserved_tokens)} reserved tokens"
        )
    counts = count_words(data, lowercase, progress=progress)
    if not counts:
        raise ValueError("the input holds no words")
    vocabulary = learn_vocabulary(counts, vocabulary_size, reserved_tokens, **learn_params)
    if output is not None:
        write_text_atomic(output, "".join(token + "\n" for token in vocabulary))
    return vocabulary


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m tfbert.text.vocab",
        description="Learn a WordPiece vocab.txt from text files (one text per line), "
                    "splitting words exactly as tfbert's BertPreprocessor does.",
    )
    parser.add_argument("--input", required=True,
                        help="comma-separated files or globs (local or gs://)")
    parser.add_argument("--output", required=True, help="the vocab.txt to write")
    parser.add_argument("--vocab_size", type=int, required=True,
                        help="the largest vocabulary to produce")
    parser.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=True,
                        help="uncased vocabulary (default); --no-lowercase for cased")
    args = parser.parse_args(argv)

    start = time.time()
    reported = [0]

    def progress(texts):
        if texts - reported[0] >= 100_000:
            reported[0] = texts
            print(f"[vocab] {texts:,} lines read ({time.time() - start:.0f}s)",
                  file=sys.stderr, flush=True)

    try:
        vocabulary = build_vocabulary(
            [p for p in args.input.split(",") if p], args.vocab_size,
            lowercase=args.lowercase, output=args.output, progress=progress,
        )
    except (OSError, ValueError, tf.errors.OpError) as e:
        message = getattr(e, "message", None) or str(e)
        print(f"error: {message.splitlines()[0] if message else type(e).__name__}",
              file=sys.stderr)
        return 1
    print(f"[vocab] wrote {len(vocabulary):,} tokens to {args.output} "
          f"({time.time() - start:.0f}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
