"""Side-by-side: google-research/bert's create_pretraining_data.py vs ours, same corpus/flags.

    python tests/data/benchmark_create_pretraining_data.py --reviews=5000 --dupe_factor=2

The corpus is real IMDB reviews split into sentences, one per line, a blank line between
reviews. Each script runs as its own process; the table reports wall time, CPU time of
the whole process tree, instances written and their rate, and peak memory three ways:
the largest single process (GNU time's maximum resident set size), the process tree's
summed RSS, and its summed PSS (shared pages split between the processes sharing them).
Memory is sampled every 50 ms (PSS, which is costly to read, every second), so short
peaks can be missed.
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import helpers
import pretrain_corpus


def _tree(process):
    try:
        return [process] + process.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def measure(command, env):
    """Runs `command`; returns wall seconds, CPU seconds and peak memories (bytes)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    # GNU time reports the largest process of this run's tree (ru_maxrss of RUSAGE_CHILDREN
    # here would be the largest of every run so far).
    process = psutil.Popen(["/usr/bin/time", "-f", "MAXRSS_KB %M"] + command, env=env,
                           cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks = {"tree_rss": 0, "tree_pss": 0}
    done = threading.Event()

    def sample():
        tick = 0
        while not done.is_set():
            rss = pss = 0
            for p in _tree(process):
                try:
                    rss += p.memory_info().rss
                    if tick % 20 == 0:
                        pss += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            peaks["tree_rss"] = max(peaks["tree_rss"], rss)
            if tick % 20 == 0:
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
        raise RuntimeError(f"{command[:3]} failed:\n{stderr.decode()[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    max_rss_kb = int(stderr.decode().rsplit("MAXRSS_KB", 1)[1].split()[0])
    return dict(wall=wall, cpu=cpu, max_rss=max_rss_kb * 1024, **peaks)


def count_records(path):
    import tensorflow as tf

    paths = tf.io.gfile.glob(path + "*")
    return sum(1 for p in paths for _ in tf.data.TFRecordDataset(p))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=5000)
    parser.add_argument("--dupe_factor", type=int, default=2)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--skip_google", action="store_true")
    parser.add_argument("--work_dir", default=None)
    args = parser.parse_args()

    work = args.work_dir or tempfile.mkdtemp(prefix="tfbert-bench-")
    corpus = os.path.join(work, f"imdb{args.reviews}.txt")
    if not os.path.exists(corpus):
        pretrain_corpus.write_imdb_corpus(corpus, args.reviews)
    vocab = os.path.join(helpers.minilm_dir(), "vocab.txt")
    flags = [f"--input_file={corpus}", f"--vocab_file={vocab}", "--do_lower_case=true",
             "--max_seq_length=128", "--max_predictions_per_seq=20", "--masked_lm_prob=0.15",
             "--random_seed=12345", f"--dupe_factor={args.dupe_factor}",
             "--short_seq_prob=0.1"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    runs = []
    if not args.skip_google:
        out = os.path.join(work, "google.tfrecord")
        command = [sys.executable, os.path.join(HERE, "run_google_create_pretraining_data.py"),
                   f"--output_file={out}"] + flags
        runs.append(("google-research/bert", measure(command, env), out))
    out = os.path.join(work, "tfbert.tfrecord")
    command = [sys.executable, "-m", "tfbert.data.create_pretraining_data",
               f"--output_file={out}", f"--num_workers={args.num_workers}",
               "--noprogress"] + flags
    runs.append((f"tfbert ({args.num_workers} workers)", measure(command, env), out))

    size = os.path.getsize(corpus)
    print(f"corpus: {args.reviews} IMDB reviews, {size / 1e6:.1f} MB; "
          f"dupe_factor={args.dupe_factor}, max_seq_length=128")
    header = ("script", "wall s", "cpu s", "instances", "inst/s", "max RSS MB",
              "tree RSS MB", "tree PSS MB")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, m, out in runs:
        n = count_records(out)
        print(f"| {name} | {m['wall']:.1f} | {m['cpu']:.1f} | {n} | {n / m['wall']:.0f} | "
              f"{m['max_rss'] / 2**20:.0f} | {m['tree_rss'] / 2**20:.0f} | "
              f"{m['tree_pss'] / 2**20:.0f} |")


if __name__ == "__main__":
    main()
