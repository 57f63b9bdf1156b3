"""Masked LM / next sentence pretraining TFRecords from raw text, like google-research/bert.

    python -m tfbert.data.create_pretraining_data \
        --input_file=corpus/*.txt --output_file=records/train.tfrecord \
        --vocab_file=vocab.txt --do_lower_case=true \
        --max_seq_length=128 --max_predictions_per_seq=20 --masked_lm_prob=0.15 \
        --random_seed=12345 --dupe_factor=10 --num_workers=8 --num_shards=64 --gzip

Same flags, same input format and same records as Google's create_pretraining_data.py:
one sentence per line, a blank line between documents; the records train unchanged in
Google's run_pretraining.py and in `tfbert.data.pretraining_dataset`. Google's algorithm
(create_instances_from_document, truncate_seq_pair, create_masked_lm_predictions) is
reimplemented on token-id arrays in `tfbert.data.pretraining_instances`.

What differs is how the corpus moves through memory. Google's script tokenizes the whole
corpus into Python strings, builds every instance of every dupe, shuffles them all and
only then writes; its memory grows with corpus size times dupe_factor. Here the corpus
streams through in windows of `--window_size` documents, and memory is bounded by the
window, the reservoir below and the tasks in flight (2 per worker), not by the corpus.
Nothing imports TensorFlow (seconds and most of a GB) unless a path is a URL (gs://...):

1. The main process reads a window, tokenizes its lines with
   `tfbert.text.WordPieceTokenizer` (Google's FullTokenizer, exactly, with a cache of the
   tokens seen), and keeps only int32 ids and line offsets.
2. Worker processes (numpy only) build the window's instances, mask them as one batch,
   serialize the tf.train.Examples and frame them as TFRecords
   (`tfbert.data.tfrecord_file`); the main process writes them in order, round-robin
   over the output files, as Google's does.
3. For dupe_factor > 1 the window's ids also go to a temporary token cache on local disk
   (under $TMPDIR, 2 bytes a token), and each later dupe reads the windows back in a new
   random order, so the copies of one document land a corpus apart, not side by side.

Instances are shuffled within a window (Google shuffles the whole corpus), so train with
a shuffle buffer of a few windows' worth of records (pretraining_dataset's default).

Next sentence prediction with bounded memory: Google draws the "random next" segment B
from any other document of the corpus. Here B comes from a pool of the current window's
other documents plus up to `--window_size` documents drawn from a reservoir, a uniform
sample (Algorithm R) of up to 10 x window_size documents of everything read before. So
negatives come both from nearby documents and from across the corpus even when the input
files are sorted by topic, and a small last window still has plenty of candidates. A
reservoir document is kept as an excerpt: the lines from a uniformly random start line
until max_seq_length tokens (B never needs more) or the document's end, at most
4 x max_seq_length tokens; B drawn from it starts at that line, which gives B the law of
Google's B. The random document is never the document itself (Google's gives up after 10
tries), nor another copy of it.

Input: as Google's, except that the end of an input file also ends a document (Google's
reader carries a file's last document on into the next file).

Determinism: every window is processed with its own seed (random_seed, dupe, window), so
a fixed --random_seed gives identical files for any --num_workers.
"""

import argparse
import bisect
import collections
import concurrent.futures
import dataclasses
import glob
import multiprocessing
import os
import random
import signal
import sys
import tempfile

import numpy as np

from tfbert.data import pretraining_instances, tfrecord_file
from tfbert.text.wordpiece import WordPieceTokenizer

# Reservoir of earlier documents for "random next" segments (see the module docstring).
RESERVOIR_WINDOWS = 10  # reservoir capacity, in windows
EXCERPT_SEQUENCES = 4  # longest reservoir excerpt, in max_seq_length
# A window also closes at this many characters (with at least 2 documents), which bounds
# memory when documents are books rather than reviews.
WINDOW_CHARACTERS = 32_000_000


class UsageError(Exception):
    """Bad input; reported as one line naming the flag or file, exit status 2."""


def _str2bool(value):
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "t", "yes", "y"):
        return True
    if lowered in ("0", "false", "f", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        # One line (argparse also prints the whole usage block).
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser():
    p = _ArgumentParser(
        prog="python -m tfbert.data.create_pretraining_data",
        usage="%(prog)s --input_file=GLOBS --output_file=FILES --vocab_file=FILE [flags]",
        description="Create masked LM / next sentence pretraining TFRecords (the "
        "records and flags of google-research/bert's create_pretraining_data.py).",
        allow_abbrev=False,
    )

    def boolean(name, default, help):
        # absl style: --flag, --flag=false, --noflag.
        p.add_argument(f"--{name}", type=_str2bool, nargs="?", const=True, default=default,
                       metavar="BOOL", help=f"{help} (default: {default})")
        p.add_argument(f"--no{name}", dest=name, action="store_false", help=argparse.SUPPRESS)

    p.add_argument("--input_file", required=True,
                   help="Input raw text file (or comma-separated list of files/globs): one "
                   "sentence per line, a blank line between documents.")
    p.add_argument("--output_file", required=True,
                   help="Output TFRecord file (or comma-separated list of files).")
    p.add_argument("--vocab_file", required=True,
                   help="The vocabulary file that the BERT model was trained on.")
    boolean("do_lower_case", True, "Lower-case the input (True for uncased models).")
    boolean("do_whole_word_mask", False,
            "Mask all of the word pieces of a word, or none of them.")
    p.add_argument("--max_seq_length", type=int, default=128,
                   help="Maximum sequence length (default: 128).")
    p.add_argument("--max_predictions_per_seq", type=int, default=20,
                   help="Maximum number of masked LM predictions per sequence (default: 20).")
    p.add_argument("--random_seed", type=int, default=12345,
                   help="Random seed for data generation (default: 12345).")
    p.add_argument("--dupe_factor", type=int, default=10,
                   help="Number of times to duplicate the input data, with different "
                   "masks (default: 10).")
    p.add_argument("--masked_lm_prob", type=float, default=0.15,
                   help="Masked LM probability (default: 0.15).")
    p.add_argument("--short_seq_prob", type=float, default=0.1,
                   help="Probability of creating sequences shorter than the maximum "
                   "length (default: 0.1).")
    p.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="Worker processes building instances (default: CPUs, at most 8). "
                   "The output does not depend on it.")
    p.add_argument("--num_shards", type=int, default=1,
                   help="Split each output file into NUM_SHARDS files named "
                   "OUTPUT-00000-of-0000N (default: 1, no suffix).")
    boolean("gzip", False, "Write GZIP-compressed TFRecords.")
    p.add_argument("--window_size", type=int, default=1000,
                   help="Documents per window: instances are shuffled within a window and "
                   "random next sentences come from it plus a reservoir of earlier "
                   "documents (default: 1000).")
    boolean("progress", True, "Show a progress bar on stderr.")
    return p


@dataclasses.dataclass
class _Window:
    """One tokenized window (see pretraining_instances.DocumentPool) plus bookkeeping."""

    ids: np.ndarray
    line_splits: np.ndarray
    doc_splits: np.ndarray
    doc_ids: np.ndarray
    num_bytes: int  # input bytes it came from, for the progress bar


def expand_input_files(input_file):
    files = []
    for pattern in (p.strip() for p in input_file.split(",")):
        if not pattern:
            continue
        if tfrecord_file.is_url(pattern):  # gs://, s3://, ...: through TensorFlow
            import tensorflow as tf

            try:
                matches = sorted(tf.io.gfile.glob(pattern))
            except tf.errors.OpError:
                matches = []
            matches = [m for m in matches if not tf.io.gfile.isdir(m)]
        else:
            matches = sorted(m for m in glob.glob(pattern) if not os.path.isdir(m))
        if not matches:
            raise UsageError(f"--input_file: no file matches {pattern!r}")
        files.extend(matches)
    if not files:
        raise UsageError("--input_file: no input files given")
    return files


def output_paths(output_file, num_shards):
    paths = []
    for path in (p.strip() for p in output_file.split(",")):
        if not path:
            continue
        if num_shards == 1:
            paths.append(path)
        else:
            paths.extend(f"{path}-{i:05d}-of-{num_shards:05d}" for i in range(num_shards))
    if not paths:
        raise UsageError("--output_file: no output files given")
    if len(set(paths)) != len(paths):
        raise UsageError("--output_file: the same output file is listed twice")
    for path in paths:
        directory = os.path.dirname(path)
        if "://" not in path and directory and not os.path.isdir(directory):
            raise UsageError(f"--output_file: no directory {directory!r} for {path!r}")
    return paths


def read_vocabulary(vocab_file):
    """The vocabulary's tokens in id order (one per line, as BertPreprocessor reads them)."""
    try:
        with tfrecord_file.open_file(vocab_file, "rb") as f:
            data = f.read()
    except OSError:
        raise UsageError(f"--vocab_file: cannot read {vocab_file!r}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--vocab_file: {vocab_file!r} is not UTF-8 text") from None
    tokens = [line.rstrip("\r") for line in text.split("\n")]
    if tokens and not tokens[-1]:
        tokens.pop()  # the newline that ends the last line
    missing = [t for t in ("[CLS]", "[SEP]", "[MASK]", "[UNK]") if t not in tokens]
    if missing:
        raise UsageError(
            f"--vocab_file: {vocab_file!r} is not a BERT vocabulary (lacks {', '.join(missing)})"
        )
    return tokens


def validate_args(args):
    checks = [
        (args.max_seq_length >= 5, "--max_seq_length must be at least 5 ([CLS] A [SEP] B [SEP])"),
        (args.max_predictions_per_seq >= 1, "--max_predictions_per_seq must be at least 1"),
        (0.0 < args.masked_lm_prob <= 1.0, "--masked_lm_prob must be in (0, 1]"),
        (0.0 <= args.short_seq_prob <= 1.0, "--short_seq_prob must be in [0, 1]"),
        (args.dupe_factor >= 1, "--dupe_factor must be at least 1"),
        (args.num_workers >= 1, "--num_workers must be at least 1"),
        (args.num_shards >= 1, "--num_shards must be at least 1"),
        (args.window_size >= 2, "--window_size must be at least 2"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


def read_windows(input_files, window_size):
    """Yields (documents, num_bytes): up to `window_size` documents, each a list of lines.

    A blank line ends a document, and so does the end of a file (Google's reader carries
    the last document of one file on into the next file).
    """
    documents, document = [], []
    chars = num_bytes = 0
    for path in input_files:
        with tfrecord_file.open_file(path, "rb") as f:
            for raw in f:
                num_bytes += len(raw)
                # Google's convert_to_unicode: UTF-8, dropping undecodable bytes.
                line = raw.decode("utf-8", "ignore").strip()
                if line:
                    document.append(line)
                    chars += len(line)
                    continue
                if document:
                    documents.append(document)
                    document = []
                    if len(documents) >= window_size or (
                        chars >= WINDOW_CHARACTERS and len(documents) >= 2
                    ):
                        yield documents, num_bytes
                        documents, chars, num_bytes = [], 0, 0
        if document:
            documents.append(document)
            document = []
    if documents or num_bytes:
        yield documents, num_bytes


def _tokenizer(vocabulary, lowercase, vocab_file):
    """Google's FullTokenizer, exactly, in plain Python (no TensorFlow to import)."""
    try:
        return WordPieceTokenizer(vocabulary, lowercase=lowercase)
    except ValueError as e:
        raise UsageError(f"--vocab_file: {vocab_file!r}: {e}") from None


def tokenize_window(documents, num_bytes, tokenizer, first_doc_id):
    """A _Window of the documents' non-empty lines and documents (Google drops both)."""
    lines = [line for doc in documents for line in doc]
    ids, line_lengths = tokenizer.tokenize_lines(lines)
    lines_per_doc = np.array([len(doc) for doc in documents], np.int64)
    doc_of_line = np.repeat(np.arange(len(documents)), lines_per_doc)
    keep = line_lengths > 0
    line_lengths, doc_of_line = line_lengths[keep], doc_of_line[keep]
    kept_per_doc = np.bincount(doc_of_line, minlength=len(documents))
    kept_per_doc = kept_per_doc[kept_per_doc > 0]
    line_splits = np.zeros(len(line_lengths) + 1, np.int64)
    np.cumsum(line_lengths, out=line_splits[1:])
    doc_splits = np.zeros(len(kept_per_doc) + 1, np.int64)
    np.cumsum(kept_per_doc, out=doc_splits[1:])
    doc_ids = np.arange(first_doc_id, first_doc_id + len(kept_per_doc), dtype=np.int64)
    return _Window(ids, line_splits, doc_splits, doc_ids, num_bytes)


class _Reservoir:
    """A uniform sample (Algorithm R) of earlier documents, as "random next" excerpts.

    An excerpt is what a random-next segment B can use of a document: the lines from a
    uniformly random start line until max_seq_length tokens (Google's B stops once it
    reaches its target length, which is below that) or the end of the document, so B
    drawn from an excerpt has the same law as Google's B drawn from the whole document.
    """

    def __init__(self, capacity, max_tokens, excerpt_cap, rnd):
        self.capacity = capacity
        self.max_tokens = max_tokens
        self.excerpt_cap = excerpt_cap  # bounds memory when one line is a whole book
        self.rnd = rnd
        self.seen = 0
        self.documents = []  # (doc_id, ids [T], line_lengths [L])

    def add_window(self, window):
        line_splits = window.line_splits.tolist()
        doc_splits = window.doc_splits.tolist()
        for d, doc_id in enumerate(window.doc_ids.tolist()):
            self.seen += 1
            if len(self.documents) < self.capacity:
                slot = len(self.documents)
                self.documents.append(None)
            else:
                slot = self.rnd.randrange(self.seen)
                if slot >= self.capacity:
                    continue
            first, end = doc_splits[d], doc_splits[d + 1]
            start_line = self.rnd.randrange(first, end)
            start = line_splits[start_line]
            # Whole lines until max_tokens (at least one line), then at most excerpt_cap.
            last = bisect.bisect_left(line_splits, start + self.max_tokens, start_line + 1, end)
            stop = min(line_splits[last], start + self.excerpt_cap)
            bounds = np.minimum(np.array(line_splits[start_line:last + 1]), stop) - start
            self.documents[slot] = (
                doc_id,
                window.ids[start:stop].copy(),
                np.diff(bounds).astype(np.int64),
            )

    def pool(self, window, num_extra):
        """The window's documents, then up to `num_extra` reservoir documents."""
        extra = self.rnd.sample(self.documents, min(num_extra, len(self.documents)))
        if not extra:
            return pretraining_instances.DocumentPool(
                window.ids, window.line_splits, window.doc_splits, window.doc_ids,
                len(window.doc_ids))
        ids = np.concatenate([window.ids] + [e[1] for e in extra])
        extra_lengths = np.concatenate([e[2] for e in extra])
        line_splits = np.concatenate(
            [window.line_splits, window.line_splits[-1] + np.cumsum(extra_lengths)])
        extra_lines = np.array([len(e[2]) for e in extra], np.int64)
        doc_splits = np.concatenate(
            [window.doc_splits, window.doc_splits[-1] + np.cumsum(extra_lines)])
        doc_ids = np.concatenate([window.doc_ids, np.array([e[0] for e in extra], np.int64)])
        return pretraining_instances.DocumentPool(
            ids, line_splits, doc_splits, doc_ids, len(window.doc_ids))


class _TokenCache:
    """Tokenized windows on local disk, for the dupes after the first."""

    def __init__(self, vocab_size):
        self.dtype = np.uint16 if vocab_size <= 1 << 16 else np.int32
        self._dir = tempfile.mkdtemp(prefix="tfbert-pretraining-")
        self._path = os.path.join(self._dir, "tokens.bin")
        self._file = open(self._path, "w+b")
        self.index = []  # per window: (window index, offset, sizes, num_bytes)

    def add(self, index, window):
        arrays = (window.ids.astype(self.dtype), window.line_splits, window.doc_splits,
                  window.doc_ids)
        self._file.seek(0, os.SEEK_END)
        offset = self._file.tell()
        for array in arrays:
            array.tofile(self._file)
        self.index.append((index, offset, [a.size for a in arrays], window.num_bytes))

    def get(self, position):
        """(window index, _Window) of the window cached `position`-th."""
        index, offset, sizes, num_bytes = self.index[position]
        self._file.seek(offset)
        dtypes = (self.dtype, np.int64, np.int64, np.int64)
        ids, line_splits, doc_splits, doc_ids = (
            np.fromfile(self._file, dtype, count) for dtype, count in zip(dtypes, sizes))
        return index, _Window(ids.astype(np.int32), line_splits, doc_splits, doc_ids, num_bytes)

    def close(self):
        self._file.close()
        os.remove(self._path)
        os.rmdir(self._dir)


def _work(task):
    """Worker side: one window's examples, framed as TFRecords (numpy only)."""
    pool, config, seed = task
    return tfrecord_file.frame(pretraining_instances.create_examples(pool, config, seed))


class _Writers:
    """Round-robin TFRecord files on temporary names, renamed into place on success."""

    def __init__(self, paths, gzip):
        self.paths = paths
        self._files = []
        for path in paths:
            try:
                self._files.append(tfrecord_file.AtomicRecordFile(path, gzip))
            except OSError as e:
                self.abort()
                raise UsageError(f"--output_file: cannot write {path!r} ({e})") from None
        self.count = 0

    def write(self, framed):
        """Writes framed records: record i of the run goes to file i % len(paths)."""
        n = len(self._files)
        first = self.count % n
        for i, f in enumerate(self._files):
            # This batch's records for file i start at the batch position that continues
            # the round-robin.
            f.write_framed(framed[(i - first) % n::n])
        self.count += len(framed)

    def commit(self):
        for f in self._files:
            f.commit()

    def abort(self):
        for f in self._files:
            f.abort()


def create_pretraining_data(args, executor=None):
    """Runs the whole job for parsed `args`; returns the number of instances written.

    `executor` (from _start_workers) builds the instances, or None to build them here.
    """
    validate_args(args)
    input_files = expand_input_files(args.input_file)
    paths = output_paths(args.output_file, args.num_shards)
    vocabulary = read_vocabulary(args.vocab_file)
    tokenizer = _tokenizer(vocabulary, args.do_lower_case, args.vocab_file)
    config = pretraining_instances.InstanceConfig(
        max_seq_length=args.max_seq_length,
        max_predictions_per_seq=args.max_predictions_per_seq,
        masked_lm_prob=args.masked_lm_prob,
        short_seq_prob=args.short_seq_prob,
        do_whole_word_mask=args.do_whole_word_mask,
        vocab_size=len(vocabulary),
        cls_id=vocabulary.index("[CLS]"),
        sep_id=vocabulary.index("[SEP]"),
        mask_id=vocabulary.index("[MASK]"),
        continuation=np.array([t.startswith("##") for t in vocabulary], bool),
    )
    rnd = random.Random(args.random_seed)
    reservoir = _Reservoir(RESERVOIR_WINDOWS * args.window_size, args.max_seq_length,
                           EXCERPT_SEQUENCES * args.max_seq_length, rnd)
    total_bytes = sum(_file_size(f) for f in input_files)
    progress = _progress(args.progress, total_bytes * args.dupe_factor)
    cache = _TokenCache(len(vocabulary)) if args.dupe_factor > 1 else None
    writers = _Writers(paths, args.gzip)
    pending = collections.deque()
    max_pending = 2 * args.num_workers

    def finish_one():
        records, num_bytes = pending.popleft()
        if isinstance(records, concurrent.futures.Future):
            records = records.result()
        writers.write(records)
        progress.update(num_bytes)
        progress.set_postfix(instances=writers.count, refresh=False)

    def submit(window, dupe, index):
        task = (reservoir.pool(window, args.window_size), config,
                (args.random_seed, dupe, index))
        result = executor.submit(_work, task) if executor is not None else _work(task)
        pending.append((result, window.num_bytes))
        while len(pending) > max_pending or (executor is None and pending):
            finish_one()

    try:
        num_docs = 0
        for index, (documents, num_bytes) in enumerate(read_windows(input_files,
                                                                    args.window_size)):
            window = tokenize_window(documents, num_bytes, tokenizer, num_docs)
            num_docs += len(window.doc_ids)
            if index == 0 and len(window.doc_ids) < 2:
                # The first window holds window_size >= 2 documents unless that is all.
                raise UsageError(
                    f"--input_file: {args.input_file!r} holds fewer than 2 documents; next "
                    "sentence prediction needs at least 2 (a blank line ends a document)")
            if len(window.doc_ids) == 0:
                progress.update(num_bytes * args.dupe_factor)
                continue
            submit(window, 0, index)
            if cache is not None:
                cache.add(index, window)
            reservoir.add_window(window)
        if cache is not None:
            for dupe in range(1, args.dupe_factor):
                order = list(range(len(cache.index)))
                rnd.shuffle(order)
                for position in order:
                    index, window = cache.get(position)
                    submit(window, dupe, index)
        while pending:
            finish_one()
        writers.commit()
    except BaseException:
        writers.abort()
        raise
    finally:
        progress.close()
        if cache is not None:
            cache.close()
    return writers.count


def _file_size(path):
    if tfrecord_file.is_url(path):
        import tensorflow as tf

        try:
            return tf.io.gfile.stat(path).length
        except tf.errors.OpError:
            return 0
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _progress(enabled, total):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, disable=not enabled,
                desc="create_pretraining_data", file=sys.stderr, mininterval=1.0)


def _start_workers(num_workers):
    """A process pool whose workers exist before TensorFlow runs anything in this process.

    The workers only use numpy. Forked after TensorFlow has started its threads they
    could inherit a held lock, so they are forked now (a no-op task makes the executor
    start all of them), before this process imports or runs TensorFlow.
    """
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    executor = concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=context, initializer=_ignore_interrupts)
    executor.submit(int).result()
    return executor


def _ignore_interrupts():
    # Ctrl-C reaches the whole process group; the main process alone handles it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def main(argv=None):
    args = build_parser().parse_args(argv)
    prog = "create_pretraining_data"
    try:
        validate_args(args)
        executor = _start_workers(args.num_workers) if args.num_workers > 1 else None
        try:
            count = create_pretraining_data(args, executor)
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an unreadable input file, a full disk, ...
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except concurrent.futures.process.BrokenProcessPool:
        print(f"{prog}: error: a worker process died (out of memory?); no output written",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no output written", file=sys.stderr)
        return 130
    print(f"{prog}: wrote {count} instances to {args.output_file}"
          + (f" ({args.num_shards} shards each)" if args.num_shards > 1 else ""),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
