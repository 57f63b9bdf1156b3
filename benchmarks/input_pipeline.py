"""Pretraining input pipeline: examples/s it delivers against examples/s the model consumes.

  python benchmarks/input_pipeline.py [--reviews 2000 --batch_size 32 --model mini ...]

An input pipeline is fast enough when the training step never waits for it. This puts
the two rates side by side on this machine:

- delivered: the trainer's own dataset, `PretrainingTask(config).dataset(...)` (what
  `python -m tfbert.train` iterates), over TFRecords that `python -m
  tfbert.data.create_pretraining_data` wrote from real IMDB reviews: the records reader
  of tfbert/data/records.py (interleave, shuffle, batch, parse), which is the trainer's
  default path. A second row runs the raw-text path (data.dynamic_masking: tokenizing,
  NSP pairing and masking in tf.data) over the same reviews. Timed over --batches
  batches after --warmup batches (which fill the shuffle buffer); the pipeline has the
  machine to itself.
- consumed: the trainer's compiled training step (tfbert.train.trainer.Trainer: the
  BertPretrainer of --model, AdamW, clipping, XLA as configured) at the same batch size and
  sequence length, fed one cached batch so that it never waits for input; or
  --consumer_rate, e.g. an accelerator's measured examples/s.

Both run one after the other in this process, each with every core; in training they
would share the cores, so the ratio is an upper bound of the headroom on a CPU-only host
(on an accelerator host the step runs on the device and the ratio is the headroom).
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
    parser.add_argument("--reviews", type=int, default=2000,
                        help="IMDB reviews in the pretraining corpus")
    parser.add_argument("--dupe_factor", type=int, default=2,
                        help="create_pretraining_data's --dupe_factor for the records")
    parser.add_argument("--num_shards", type=int, default=4,
                        help="TFRecord files written (the reader interleaves them)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_length", type=int, default=128)
    parser.add_argument("--max_predictions_per_seq", type=int, default=20)
    parser.add_argument("--batches", type=int, default=500,
                        help="timed batches of the input pipeline")
    parser.add_argument("--warmup", type=int, default=20,
                        help="untimed batches first (the shuffle buffer fills here)")
    parser.add_argument("--model", default="mini",
                        help="the consumer: a size name (tiny, mini, small, medium, base, "
                             "large) or a tfbert model directory")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--consumer_rate", type=float, default=None,
                        help="examples/s the model consumes, instead of measuring a step here")
    parser.add_argument("--skip_dynamic", action="store_true",
                        help="leave out the raw-text (dynamic masking) pipeline")
    parser.add_argument("--work_dir", default=None,
                        help="where the corpus and records go (default: temporary)")
    return parser.parse_args(argv)


def experiment_config(args, train_files, vocab, dynamic):
    """The recipe `python -m tfbert.train` would read, for this benchmark's sizes."""
    from tfbert.config import ExperimentConfig

    return ExperimentConfig.from_dict({
        "task": "pretraining",
        "model": {"preset": args.model},
        "data": {"train_files": train_files, "vocab_file": vocab,
                 "max_seq_length": args.seq_length,
                 "max_predictions_per_seq": args.max_predictions_per_seq,
                 "dynamic_masking": dynamic},
        "trainer": {"global_batch_size": args.batch_size, "train_steps": args.steps},
    }, source="benchmarks/input_pipeline.py")


def delivered_rate(config, args):
    """Examples/s of the trainer's dataset for `config`, iterated alone."""
    from tfbert.train.tasks import get_task

    dataset = get_task(config).dataset(None, training=True)
    iterator = iter(dataset)
    for _ in range(args.warmup):
        next(iterator)
    started = time.perf_counter()
    for _ in range(args.batches):
        features, _ = next(iterator)
    seconds = time.perf_counter() - started
    # The tensors are computed when next() returns; this only checks the shapes.
    assert features["input_word_ids"].shape == (args.batch_size, args.seq_length)
    return args.batches * args.batch_size / seconds, seconds


def consumed_rate(config, args, work):
    """Examples/s of the trainer's compiled training step, fed a cached batch."""
    import tensorflow as tf

    from tfbert.train.strategies import make_strategy
    from tfbert.train.trainer import Trainer

    strategy = make_strategy("one_device")
    # No checkpoints or logs are written: only the compiled step is used.
    trainer = Trainer(config, strategy, os.path.join(work, "model"), out=sys.stderr)
    # One real batch, cached and repeated: the step never waits for input, so this is
    # what the model consumes at most.
    batch = trainer.task.dataset(None, training=True).take(1).cache().repeat()
    iterator = iter(strategy.distribute_datasets_from_function(lambda _: batch))
    # The trainer's own compiled loop (`steps` training steps per call, as
    # trainer.steps_per_loop runs them); the first call traces and compiles.
    loop = trainer._build_train_loop()
    loop(iterator, tf.constant(1))
    started = time.perf_counter()
    sums = loop(iterator, tf.constant(args.steps))
    float(sums["mlm_loss_sum"])  # waits for the last step
    seconds = time.perf_counter() - started
    return args.steps * args.batch_size / seconds, seconds


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from common import Report, load_note, minilm_dir, tests_on_path

    tests_on_path()
    import pretrain_corpus

    load = load_note()
    work = args.work_dir or tempfile.mkdtemp(prefix="tfbert-bench-pipeline-")
    os.makedirs(work, exist_ok=True)
    vocab = os.path.join(minilm_dir(), "vocab.txt")

    def say(message):
        print(f"[input_pipeline] {message}", file=sys.stderr, flush=True)

    corpus = os.path.join(work, f"imdb{args.reviews}.txt")
    if not os.path.exists(corpus):
        pretrain_corpus.write_imdb_corpus(corpus, args.reviews)
    records = os.path.join(work, f"imdb{args.reviews}-d{args.dupe_factor}.tfrecord")
    if not any(name.startswith(os.path.basename(records)) for name in os.listdir(work)):
        say("writing TFRecords with python -m tfbert.data.create_pretraining_data")
        from tfbert.data import create_pretraining_data

        status = create_pretraining_data.main([
            f"--input_file={corpus}", f"--output_file={records}", f"--vocab_file={vocab}",
            f"--max_seq_length={args.seq_length}",
            f"--max_predictions_per_seq={args.max_predictions_per_seq}",
            f"--dupe_factor={args.dupe_factor}", f"--num_shards={args.num_shards}",
            "--noprogress"])
        if status:
            raise SystemExit(f"error: create_pretraining_data exited with {status}")
    pattern = records + "*"

    import tensorflow as tf

    num_records = sum(1 for path in tf.io.gfile.glob(pattern)
                      for _ in tf.data.TFRecordDataset(path))
    rates = {}
    say("timing the TFRecord pipeline")
    rates["records"] = delivered_rate(experiment_config(args, pattern, vocab, False), args)
    if not args.skip_dynamic:
        say("timing the raw-text (dynamic masking) pipeline")
        rates["dynamic"] = delivered_rate(experiment_config(args, corpus, vocab, True), args)
    if args.consumer_rate:
        consumed, consumer = args.consumer_rate, "--consumer_rate (given)"
    else:
        say(f"timing the {args.model} training step")
        consumed, step_seconds = consumed_rate(
            experiment_config(args, pattern, vocab, False), args, work)
        consumer = (f"tfbert Trainer step, BertPretrainer {args.model}, batch "
                    f"{args.batch_size} x {args.seq_length} ({step_seconds / args.steps:.3f} "
                    f"s/step, {args.steps} steps)")

    names = {
        "records": "TFRecords (records.pretraining_dataset, the trainer's default)",
        "dynamic": "raw text, dynamic masking (data.dynamic_masking: true)",
    }
    rows = [[names[key], f"{rate:,.0f}", f"{args.batch_size / rate * 1000:.2f}",
             f"{rate / consumed:.1f}x"] for key, (rate, _) in rates.items()]
    rows.append([f"consumed: {consumer}", f"{consumed:,.0f}",
                 f"{args.batch_size / consumed * 1000:.2f}", "1.0x"])
    report = Report("input_pipeline", "Pretraining input pipeline: delivered vs consumed")
    report.note(
        f"{args.reviews} IMDB reviews; {num_records} records written by "
        f"create_pretraining_data (dupe_factor {args.dupe_factor}, {args.num_shards} shards); "
        f"batch {args.batch_size}, sequence {args.seq_length}, "
        f"{args.max_predictions_per_seq} predictions; {args.batches} timed batches after "
        f"{args.warmup}. Each measured alone on all {os.cpu_count()} cores; {load}."
    )
    report.table(["pipeline", "examples/s", "ms per batch", "delivered / consumed"], rows)
    report.target("TFRecord pipeline examples/s over the training step's",
                  rates["records"][0] / consumed, 10)
    labels = [names[k].split(" (")[0] for k in rates] + ["consumed"]
    report.bar_chart(labels, [r for r, _ in rates.values()] + [consumed], "examples/s")
    report.write()


if __name__ == "__main__":
    main()
