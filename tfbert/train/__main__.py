"""python -m tfbert.train: pretrain (and fine-tune) BERT with tf.distribute.

  python -m tfbert.train --config=configs/pretrain/tiny.yaml --strategy=mirrored \
      --model_dir=runs/tiny --set data.train_files='data/*.tfrecord' --set trainer.train_steps=1000

Runs from the latest checkpoint in --model_dir when there is one, and writes the model
directory (config.json, vocab.txt, model.weights.h5, task.json) there at the end.
"""

import argparse
import os
import sys


def build_parser():
    from tfbert.train.strategies import STRATEGIES

    parser = argparse.ArgumentParser(
        prog="python -m tfbert.train",
        description="Train BERT with tf.distribute from a YAML recipe.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Override any recipe key with --set key=value, e.g. --set trainer.train_steps=500",
    )
    parser.add_argument("--config", help="YAML recipe (configs/pretrain/*.yaml); defaults otherwise")
    parser.add_argument("--strategy", default="one_device", choices=STRATEGIES,
                        help="tf.distribute strategy (default: one_device)")
    parser.add_argument("--tpu", default=None, help="TPU name or grpc:// address (with --strategy=tpu)")
    parser.add_argument("--model_dir", required=True,
                        help="checkpoints, TensorBoard logs and the final model directory")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key (repeatable)")
    parser.add_argument("--mode", choices=("train", "eval", "train_and_eval", "predict"),
                        default="train_and_eval",
                        help="train, evaluate the latest checkpoint, both (default), or "
                             "predict on data.eval_files into --output_file")
    parser.add_argument("--output_file", help="where --mode=predict writes its predictions")
    return parser


def _vocabulary(config):
    from tfbert.models import presets

    if os.path.isdir(config.model.preset):
        return presets.load_vocabulary(config.model.preset), presets.load_config(
            config.model.preset).lowercase
    if not config.data.vocab_file:
        raise ValueError("data.vocab_file is required when model.preset is a size name")
    if not os.path.isfile(config.data.vocab_file):
        raise FileNotFoundError(f"data.vocab_file {config.data.vocab_file}: no such file")
    with open(config.data.vocab_file, encoding="utf-8") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f], config.data.lowercase


def run(args, out=None):
    from tfbert.config import ExperimentConfig
    from tfbert.train.strategies import make_strategy
    from tfbert.train.trainer import Trainer

    config = ExperimentConfig.load(args.config, args.overrides)
    from_tfds = config.data.format == "tfds"
    if args.mode in ("train", "train_and_eval") and not config.data.train_files and not from_tfds:
        raise ValueError("data.train_files is empty; set it in the recipe or with --set")
    vocabulary, lowercase = _vocabulary(config)
    strategy = make_strategy(args.strategy, tpu=args.tpu)
    trainer = Trainer(config, strategy, args.model_dir, out=out)
    metrics = {}
    if args.mode in ("train", "train_and_eval"):
        metrics = trainer.train()
        trainer.export_model_directory(vocabulary, lowercase)
        if trainer.chief:
            print(f"wrote the model directory {args.model_dir}", file=out or sys.stdout, flush=True)
    if args.mode in ("eval", "train_and_eval") and trainer.has_eval_data():
        if args.mode == "eval":
            trainer.restore()
        metrics = trainer.evaluate()
    if args.mode == "predict":
        if not args.output_file:
            raise ValueError("--mode=predict needs --output_file")
        trainer.restore()
        trainer.predict(args.output_file)
        print(f"wrote predictions to {args.output_file}", file=out or sys.stdout, flush=True)
    return metrics


_NOISE = ("[[", "Detected at node", "<stack traces", "Graph execution error", "File ")


def one_line(error):
    """The message of `error` on one line.

    Autograph wraps the real message in a traceback, and TF runtime errors wrap it in node
    names and stack markers; keep the line that says what went wrong.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if lines[0].startswith("in user code"):
        return lines[-1]
    meaningful = [line for line in lines if not line.startswith(_NOISE)]
    return (meaningful or lines)[0]


def main(argv=None):
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from tfbert.train.strategies import StrategyError
    from tfbert.train.trainer import TrainingDiverged

    try:
        run(args)
    except (ValueError, FileNotFoundError, StrategyError, TrainingDiverged,
            tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
