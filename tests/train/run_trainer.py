"""Runs the trainer in its own process for the distribution tests.

  python run_trainer.py CONFIG MODEL_DIR STRATEGY WEIGHTS_OUT [--cpu_devices N] [--set k=v ...]

Splits the CPU into N logical devices first (so MirroredStrategy has replicas on a CPU-only
machine), trains, and saves every model weight to WEIGHTS_OUT (.npz) for comparison.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("model_dir")
    parser.add_argument("strategy")
    parser.add_argument("weights_out")
    parser.add_argument("--cpu_devices", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    if args.cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.cpu_devices
        )
    from tfbert.config import ExperimentConfig
    from tfbert.train.strategies import make_strategy
    from tfbert.train.trainer import Trainer

    config = ExperimentConfig.load(args.config, args.overrides)
    strategy = make_strategy(args.strategy)
    trainer = Trainer(config, strategy, args.model_dir)
    trainer.train()
    np.savez(args.weights_out, *trainer.weights())
    return 0


if __name__ == "__main__":
    sys.exit(main())
