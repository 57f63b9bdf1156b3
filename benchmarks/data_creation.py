"""Pretraining data creation: tfbert's create_pretraining_data beside google-research/bert's
create_pretraining_data.py, same corpus and flags.

  python benchmarks/data_creation.py [--reviews 2000 --dupe_factor 2 --num_workers 2]

The corpus is real IMDB reviews split into sentences, one per line, a blank line between
reviews (tests/pretrain_corpus.py, the corpus the parity tests use). Both scripts get
Google's flags: max_seq_length 128, max_predictions_per_seq 20, masked_lm_prob 0.15,
short_seq_prob 0.1, the MiniLM (uncased) vocabulary, --dupe_factor. Google's is run
unchanged through tests/data/run_google_create_pretraining_data.py; ours as
`python -m tfbert.data.create_pretraining_data --num_workers=N`. Each runs as its own
process tree, one after the other.

Measured per run: wall time, CPU time of the whole process tree, instances written and
their rate, and peak memory three ways: the largest single process (GNU time's maximum
resident set size), the process tree's summed RSS, and its summed PSS (shared pages
split between the processes sharing them; the fair total for a multi-process tool, since
summed RSS counts the pages worker processes share with their parent again for each).
Memory is sampled every 50 ms (PSS, which is costlier to read, every 100 ms), so short
peaks can be missed.

Google's script starts by importing TensorFlow (for tf.gfile and tf.train.Example), which
alone costs seconds of CPU and most of a GB of resident memory; tfbert's never imports it
(a plain-Python tokenizer with Google's exact ids, numpy-encoded examples, numpy CRC32C
for the TFRecord framing). A third row measures Google's floor (`python -c "import
tensorflow"`) so that small runs, where it dominates, read right; the targets are judged
on the whole runs. Google's memory grows with corpus size times dupe_factor (it holds
every instance before writing) and ours does not, so the ratios grow with the corpus:
scale with --reviews (up to 25,000) and --dupe_factor (Google's default is 10).
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reviews", type=int, default=2000,
                        help="IMDB reviews in the corpus (one document each)")
    parser.add_argument("--dupe_factor", type=int, default=2,
                        help="Google's flag: passes over the corpus with different masks")
    parser.add_argument("--num_workers", type=int, default=2,
                        help="tfbert's worker processes")
    parser.add_argument("--skip_floor", action="store_true",
                        help="leave out the import-only row")
    parser.add_argument("--skip_google", action="store_true",
                        help="leave out Google's script (its row says so)")
    parser.add_argument("--work_dir", default=None,
                        help="where the corpus and outputs go (default: temporary)")
    return parser.parse_args(argv)


def _tree(process):
    import psutil

    try:
        return [process] + process.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def measure(command, env):
    """Runs `command`; returns wall seconds, CPU seconds and peak memories (bytes)."""
    import psutil

    from common import REPO_ROOT

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    # GNU time reports the largest process of this run's tree (ru_maxrss of RUSAGE_CHILDREN
    # here would be the largest of every run so far).
    process = psutil.Popen(["/usr/bin/time", "-f", "MAXRSS_KB %M"] + command, env=env,
                           cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks = {"tree_rss": 0, "tree_pss": 0}
    done = threading.Event()
    # PSS every second sample. Once a second missed tfbert's run: at 1.0 s its one
    # sample was taken at start-up and gave a 3 MB peak.
    pss_every = 2

    def sample():
        tick = 0
        while not done.is_set():
            rss = pss = 0
            for p in _tree(process):
                try:
                    rss += p.memory_info().rss
                    if tick % pss_every == 0:
                        pss += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            peaks["tree_rss"] = max(peaks["tree_rss"], rss)
            if tick % pss_every == 0:
                peaks["tree_pss"] = max(peaks["tree_pss"], pss)
            tick += 1
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    wall = time.time() - start
    done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        tail = "\n".join(stderr.decode(errors="replace").strip().splitlines()[-15:])
        raise SystemExit(f"error: {command[1:3]} failed (exit {process.returncode}):\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    max_rss_kb = int(stderr.decode().rsplit("MAXRSS_KB", 1)[1].split()[0])
    return dict(wall=wall, cpu=cpu, max_rss=max_rss_kb * 1024, **peaks)


def count_records(path):
    """Records in the files written for `path` (shards included), counted in-graph: a
    Python loop over a million records would take minutes."""
    import tensorflow as tf

    paths = tf.io.gfile.glob(path + "*")
    counted = tf.data.TFRecordDataset(paths).reduce(tf.constant(0, tf.int64),
                                                      lambda n, _: n + 1)
    return int(counted)


def main(argv=None):
    args = parse_args(argv)
    from common import REPO_ROOT, Report, load_note, minilm_dir, tests_on_path

    tests_dir = tests_on_path()
    import pretrain_corpus

    if not os.path.exists("/usr/bin/time"):
        raise SystemExit("error: GNU time (/usr/bin/time) is needed for peak memory; "
                         "apt-get install time")
    load = load_note()
    work = args.work_dir or tempfile.mkdtemp(prefix="tfbert-bench-data-")
    os.makedirs(work, exist_ok=True)
    corpus = os.path.join(work, f"imdb{args.reviews}.txt")
    if not os.path.exists(corpus):
        pretrain_corpus.write_imdb_corpus(corpus, args.reviews)
    vocab = os.path.join(minilm_dir(), "vocab.txt")
    flags = [f"--input_file={corpus}", f"--vocab_file={vocab}", "--do_lower_case=true",
             "--max_seq_length=128", "--max_predictions_per_seq=20", "--masked_lm_prob=0.15",
             "--random_seed=12345", f"--dupe_factor={args.dupe_factor}",
             "--short_seq_prob=0.1"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO_ROOT)

    def say(message):
        print(f"[data_creation] {message}", file=sys.stderr, flush=True)

    runs = {}
    if not args.skip_google:
        say("running google-research/bert's create_pretraining_data.py")
        out = os.path.join(work, "google.tfrecord")
        command = [sys.executable,
                   os.path.join(tests_dir, "data", "run_google_create_pretraining_data.py"),
                   f"--output_file={out}"] + flags
        runs["google"] = (measure(command, env), out)
    say(f"running python -m tfbert.data.create_pretraining_data ({args.num_workers} workers)")
    out = os.path.join(work, "tfbert.tfrecord")
    command = [sys.executable, "-m", "tfbert.data.create_pretraining_data",
               f"--output_file={out}", f"--num_workers={args.num_workers}",
               "--noprogress"] + flags
    runs["tfbert"] = (measure(command, env), out)
    if not args.skip_floor:
        say("measuring the import floor")
        runs["floor"] = (measure([sys.executable, "-c", "import tensorflow"], env), None)

    names = {"google": "google-research/bert create_pretraining_data.py",
             "tfbert": f"tfbert create_pretraining_data ({args.num_workers} workers)"}
    mb = 2 ** 20
    names["floor"] = "Google's floor: python -c \"import tensorflow\" (no work)"
    rows, counts = [], {}
    for key in ("tfbert", "google", "floor"):
        if key not in runs:
            if key == "google":
                rows.append([names[key], "not run (--skip_google)"] + [""] * 6)
            continue
        m, path = runs[key]
        n = counts[key] = count_records(path) if path else None
        rows.append([names[key], f"{m['wall']:.1f}", f"{m['cpu']:.1f}",
                     "-" if n is None else str(n), "-" if n is None else f"{n / m['wall']:.0f}",
                     f"{m['max_rss'] / mb:.0f}",
                     f"{m['tree_rss'] / mb:.0f}", f"{m['tree_pss'] / mb:.0f}"])

    size = os.path.getsize(corpus)
    report = Report("data_creation",
                    "create_pretraining_data: tfbert vs google-research/bert")
    report.note(
        f"Corpus: {args.reviews} IMDB reviews, one sentence per line ({size / 1e6:.1f} MB); "
        f"dupe_factor {args.dupe_factor}, max_seq_length 128, max_predictions_per_seq 20, "
        f"MiniLM uncased vocabulary; {load}."
    )
    report.table(["script", "wall s", "CPU s", "instances", "instances/s", "max RSS MB",
                  "tree RSS MB", "tree PSS MB"], rows)
    if "google" in runs:
        g, t = runs["google"][0], runs["tfbert"][0]
        ratios = [
            ["wall time, Google / tfbert", f"{g['wall'] / t['wall']:.1f}x"],
            ["CPU time, Google / tfbert", f"{g['cpu'] / t['cpu']:.1f}x"],
            ["instances per wall second, tfbert / Google",
             f"{(counts['tfbert'] / t['wall']) / (counts['google'] / g['wall']):.1f}x"],
            ["peak memory, largest process, tfbert / Google",
             f"{t['max_rss'] / g['max_rss']:.2f}"],
            ["peak memory, tree RSS, tfbert / Google", f"{t['tree_rss'] / g['tree_rss']:.2f}"],
            ["peak memory, tree PSS, tfbert / Google", f"{t['tree_pss'] / g['tree_pss']:.2f}"],
        ]
        if "floor" in runs:
            f = runs["floor"][0]
            ratios.append(["Google's CPU time beyond its TensorFlow import / tfbert's "
                           "(derived)", f"{(g['cpu'] - f['cpu']) / t['cpu']:.1f}x"])
        report.table(["ratio", "value"], ratios)
        if counts["tfbert"] != counts["google"]:
            report.note("The instance counts differ a little: the two scripts draw their "
                        "random numbers (short sequences, random next sentences) from "
                        "different generators.")
        report.bar_chart(["wall time", "CPU time", "peak memory (tree PSS)"],
                         [g["wall"] / t["wall"], g["cpu"] / t["cpu"],
                          g["tree_pss"] / t["tree_pss"]],
                         "Google / tfbert (above 1: tfbert needs less)")
    g = runs["google"][0] if "google" in runs else None
    t = runs["tfbert"][0]
    report.target("CPU time, Google's over tfbert's", g and g["cpu"] / t["cpu"], 10)
    report.target("wall time, Google's over tfbert's", g and g["wall"] / t["wall"], 10)
    report.target("peak memory (tree PSS), tfbert's over Google's",
                  g and t["tree_pss"] / g["tree_pss"], 0.25, unit="", higher_is_better=False)
    report.write()


if __name__ == "__main__":
    main()
