"""The distributed training loop: `strategy.run` over a `tf.function` step.

Keras 3 `model.fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), so
the trainer drives a Keras 3 model and optimizer itself. One call of the compiled loop runs
`steps_per_loop` steps on device, which keeps TPUs busy and host round trips rare.
"""

import math
import os
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from tfbert.models import presets
from tfbert.train import cpu_xla
from tfbert.train.host_memory import pooling_note
from tfbert.train.optimizers import (
    clip_scale, make_optimizer, set_layer_decay, takes_gradient_scale,
)
from tfbert.train.strategies import is_chief
from tfbert.train.tasks import get_task

CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was left untouched."""


def _seed_states(model):
    """Dropout RNG states: checkpointed so a resumed run draws the same masks."""
    return [
        layer.seed_generator.state
        for layer in model._flatten_layers()
        if getattr(layer, "seed_generator", None) is not None
    ]


def _format_duration(seconds):
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Trainer:
    """Trains `config.task` under `strategy`, checkpointing into `model_dir`.

    model_dir receives checkpoints/ (tf.train.CheckpointManager), logs/ (TensorBoard) and,
    at the end, the model directory files (config.json, vocab.txt, model.weights.h5,
    task.json).
    """

    def __init__(self, config, strategy, model_dir, out=None):
        self.config = config
        self.strategy = strategy
        self.model_dir = model_dir
        self.out = out  # None: sys.stdout at the time of printing
        self.task = get_task(config)
        self.chief = is_chief(strategy)
        trainer = config.trainer
        if trainer.global_batch_size % strategy.num_replicas_in_sync:
            raise ValueError(
                f"trainer.global_batch_size {trainer.global_batch_size} is not divisible by "
                f"the {strategy.num_replicas_in_sync} replicas"
            )
        on_cpu = all("CPU" in device.upper() for device in strategy.extended.worker_devices)
        # Before anything compiles: XLA reads its flags once (tfbert/train/cpu_xla.py).
        for flag, what in cpu_xla.use_tuned_flags(config.model.dtype, trainer.jit_compile,
                                                  on_cpu):
            self._log(f"{config.model.dtype} under XLA on this CPU: {what} ({flag} added "
                      f"to XLA_FLAGS; name {flag.partition('=')[0]} there to choose)")
        # Same seed, same initial weights and dropout masks: runs are reproducible and
        # comparable across strategies.
        keras.utils.set_random_seed(trainer.seed)
        with strategy.scope():
            self.model = self.task.build_model()
            fp16 = config.model.dtype == "mixed_float16"
            # With fp16 loss scaling, Keras unscales before it clips, so it clips there.
            self._clip_norm = 0.0 if fp16 else trainer.clip_norm
            self.optimizer = make_optimizer(trainer, mixed_float16=fp16, clip_in_optimizer=fp16)
            self.optimizer.build(self.model.trainable_variables)
            set_layer_decay(self.optimizer, self.model, trainer.layer_decay)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, step=self.step,
            seeds=_seed_states(self.model),
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            directory=self._checkpoint_dir(),
            max_to_keep=trainer.max_checkpoints,
            step_counter=self.step,
        )
        self._train_loop = None
        self._eval_loop = None

    # === Checkpoints ===

    def _checkpoint_dir(self):
        if self.chief:
            return os.path.join(self.model_dir, CHECKPOINT_DIR)
        # Every worker must take part in a multi-worker save; only the chief's copy is kept.
        task_id = self.strategy.cluster_resolver.task_id
        return os.path.join(self.model_dir, f".worker-{task_id}-checkpoints")

    def restore(self):
        """Restores the latest checkpoint; returns the step it holds (0 when none)."""
        latest = tf.train.latest_checkpoint(os.path.join(self.model_dir, CHECKPOINT_DIR))
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            self._log(f"resumed from {latest} at step {int(self.step.numpy())}")
        return int(self.step.numpy())

    def save(self):
        path = self.manager.save(checkpoint_number=self.step)
        if not self.chief:
            shutil.rmtree(self._checkpoint_dir(), ignore_errors=True)
        return path

    # === Data ===

    def _distributed_dataset(self, training, skip_steps=0):
        def make(input_context):
            ds = self.task.dataset(input_context, training)
            if skip_steps:
                # Each step takes one batch per replica of this pipeline; skipping what the
                # interrupted run consumed resumes the same example order.
                per_pipeline = (input_context.num_replicas_in_sync
                                // input_context.num_input_pipelines)
                ds = ds.skip(skip_steps * per_pipeline)
            return ds

        return self.strategy.distribute_datasets_from_function(make)

    # === Compiled steps ===

    def _global_denominators(self, labels):
        """The task's loss denominators summed over all replicas."""
        local = self.task.denominators(labels)
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync == 1:
            return local
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, local)

    def _replica_grads(self, inputs, labels, denominators):
        with tf.GradientTape() as tape:
            loss, sums = self.task.step(self.model, inputs, labels, denominators, training=True)
            scaled = loss
            if hasattr(self.optimizer, "scale_loss"):
                scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, self.model.trainable_variables)
        # Embedding gradients come as IndexedSlices; Keras' optimizers sum them wrongly
        # across replicas (mirrored runs drift from one-device ones by 1e-3), and TPUs want
        # dense tensors anyway.
        grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        return grads, sums

    def _apply_clipped(self, grads, variables):
        """Applies the gradients clipped by the norm of their sum over all replicas, as one
        device would.

        The optimizer sums gradients over replicas again, so each replica hands it 1/N of
        the clipped sum. This costs a second all-reduce when there are several replicas.
        On one replica tfbert's AdamW takes the clip's scale into its update instead of
        clipped copies of the gradients: on a CPU under XLA its fused kernel multiplies in
        the pass it makes anyway (tfbert.train.fused_adamw).
        """
        ctx = tf.distribute.get_replica_context()
        replicas = ctx.num_replicas_in_sync if ctx is not None else 1
        if replicas == 1 and takes_gradient_scale(self.optimizer):
            scale = clip_scale(grads, self._clip_norm)
            return self.optimizer.apply_scaled_gradients(zip(grads, variables), scale)
        if replicas > 1:
            grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        grads, _ = tf.clip_by_global_norm(grads, self._clip_norm)
        if replicas > 1:
            grads = [g / replicas for g in grads]
        return self.optimizer.apply_gradients(zip(grads, variables))

    def _fuses_update(self):
        """Whether the optimizer update compiles into the XLA step with the gradients.

        On OneDeviceStrategy (one replica) there is no cross-replica merge, so forward,
        backward, clipping and the AdamW update form one XLA cluster: the update's many
        small per-variable ops fuse instead of running one by one (BERT-mini pretraining on
        a 2-core CPU: 486 and 533 ms a step against 501 and 555 split, two runs each of
        benchmarks/pretrain_step.py --xla step / grads). Mirrored and
        multi-worker steps keep the update outside, where it merges across replicas; TPU
        steps are compiled whole by the TPU strategy anyway.
        """
        return (self.config.trainer.jit_compile
                and isinstance(self.strategy, tf.distribute.OneDeviceStrategy))

    def _build_train_loop(self):
        variables = self.model.trainable_variables

        def update(grads):
            # Variables the loss does not reach (e.g. the pooler in NER and QA) get no
            # gradient; skip them rather than all-reduce a None.
            pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
            grads = [g for g, _ in pairs]
            if self._clip_norm:
                self._apply_clipped(grads, [v for _, v in pairs])
            else:
                self.optimizer.apply_gradients(pairs)

        fused = self._fuses_update()
        compute = self._replica_grads
        if self.config.trainer.jit_compile and not fused:
            # XLA compiles forward and backward; the optimizer update stays outside
            # because its cross-replica merge cannot live inside an XLA cluster.
            compute = tf.function(self._replica_grads, jit_compile=True)

        def compute_and_update(inputs, labels, denominators):
            grads, sums = compute(inputs, labels, denominators)
            update(grads)
            return sums

        if fused:
            compute_and_update = tf.function(compute_and_update, jit_compile=True)

        def replica_step(inputs, labels):
            return compute_and_update(inputs, labels, self._global_denominators(labels))

        def one_step(iterator):
            sums = self._reduce(self.strategy.run(replica_step, args=next(iterator)))
            self.step.assign_add(1)
            return sums

        return self._looped(one_step)

    def _reduce(self, per_replica):
        return {k: self.strategy.reduce("SUM", v, axis=None) for k, v in per_replica.items()}

    @staticmethod
    def _looped(one_step):
        """A tf.function running `one_step(iterator)` `steps` times, adding up its sums."""

        @tf.function
        def loop(iterator, steps):
            # The first step runs outside the loop so the accumulators get their structure.
            totals = one_step(iterator)
            for _ in tf.range(steps - 1):
                sums = one_step(iterator)
                totals = {k: totals[k] + sums[k] for k in totals}
            return totals

        return loop

    def _build_eval_loop(self):
        def replica_step(inputs, labels):
            denominators = self._global_denominators(labels)
            return self.task.step(self.model, inputs, labels, denominators, training=False)[1]

        return self._looped(
            lambda iterator: self._reduce(self.strategy.run(replica_step, args=next(iterator)))
        )

    # === Loops ===

    def _log(self, message):
        if self.chief:
            print(message, file=self.out or sys.stdout, flush=True)

    def _writer(self, name):
        if not self.chief:
            return tf.summary.create_noop_writer()
        return tf.summary.create_file_writer(os.path.join(self.model_dir, LOG_DIR, name))

    def train(self):
        """Runs to trainer.train_steps from the latest checkpoint; returns final metrics."""
        trainer = self.config.trainer
        start_step = self.restore()
        total = trainer.train_steps
        if start_step >= total:
            self._log(f"already at step {start_step} of {total}; nothing to train")
        elif all("CPU" in d.upper() for d in self.strategy.extended.worker_devices):
            note = pooling_note()
            if note:
                self._log(note)
        if self._train_loop is None:
            self._train_loop = self._build_train_loop()
        iterator = iter(self._distributed_dataset(training=True, skip_steps=start_step))
        writer = self._writer("train")
        step = start_step
        last_saved = start_step
        metrics = {}
        started = time.time()
        while step < total:
            steps = min(trainer.steps_per_loop, total - step)
            if trainer.checkpoint_interval:
                # End a loop on every checkpoint boundary so saves land on exact steps.
                to_boundary = trainer.checkpoint_interval - step % trainer.checkpoint_interval
                steps = min(steps, to_boundary)
            sums = self._train_loop(iterator, tf.constant(steps))
            sums = {k: float(v.numpy()) for k, v in sums.items()}
            metrics = self.task.metrics(sums)
            if not all(math.isfinite(v) for v in metrics.values()):
                raise TrainingDiverged(
                    f"loss is not finite at step {step + steps} "
                    f"({', '.join(f'{k}={v}' for k, v in metrics.items())}); the last good "
                    f"checkpoint is {tf.train.latest_checkpoint(self._checkpoint_dir())}"
                )
            step += steps
            lr = float(self.optimizer.learning_rate.numpy()) if hasattr(
                self.optimizer.learning_rate, "numpy") else float(trainer.learning_rate)
            with writer.as_default(step=step):
                for k, v in metrics.items():
                    tf.summary.scalar(k, v)
                tf.summary.scalar("learning_rate", lr)
            elapsed = time.time() - started
            rate = (step - start_step) / max(elapsed, 1e-9)
            self._log(
                f"step {step}/{total} | "
                + " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                + f" | {rate:.2f} steps/s {rate * trainer.global_batch_size:.1f} examples/s"
                + f" | ETA {_format_duration((total - step) / rate if rate else float('inf'))}"
            )
            if trainer.checkpoint_interval and step % trainer.checkpoint_interval == 0:
                self.save()
                last_saved = step
            if (trainer.eval_interval and step % trainer.eval_interval == 0 and step < total
                    and self.has_eval_data()):
                self.evaluate(step)
        if step != last_saved:
            self.save()
        writer.flush()
        return metrics

    def has_eval_data(self):
        data = self.config.data
        return bool(data.eval_files) or (data.format == "tfds" and bool(data.eval_split))

    def eval_steps(self):
        """trainer.eval_steps, or with 0 the batches of one full pass over the eval data."""
        steps = self.config.trainer.eval_steps
        if steps > 0:
            return steps
        if not hasattr(self.task, "num_eval_steps"):
            raise ValueError(
                f"trainer.eval_steps: 0 (a full pass) needs a task that knows its evaluation "
                f"size; task {self.config.task!r} does not, so set a number of batches"
            )
        steps = self.task.num_eval_steps()
        if steps is None:
            raise ValueError("trainer.eval_steps: 0 (a full pass) needs the evaluation size, "
                             "which this dataset does not record; set a number of batches")
        return steps

    def evaluate(self, step=None):
        """Metrics over trainer.eval_steps batches of the evaluation data."""
        if not self.has_eval_data():
            raise ValueError("data.eval_files is empty; nothing to evaluate")
        if self._eval_loop is None:
            self._eval_loop = self._build_eval_loop()
        iterator = iter(self._distributed_dataset(training=False))
        sums = self._eval_loop(iterator, tf.constant(self.eval_steps()))
        metrics = self.task.metrics({k: float(v.numpy()) for k, v in sums.items()})
        if hasattr(self.task, "host_metrics"):
            # Metrics over whole examples that need Python post-processing (seqeval entity
            # F1, SQuAD EM/F1 over all windows of a context).
            metrics.update(self.task.host_metrics(self.model))
        step = int(self.step.numpy()) if step is None else step
        with self._writer("eval").as_default(step=step):
            for k, v in metrics.items():
                tf.summary.scalar(k, v)
        self._log(f"eval at step {step} | " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    def export_model_directory(self, vocabulary, lowercase):
        """Writes config.json, vocab.txt, model.weights.h5 and task.json into model_dir.

        task.json gets the task's own entries too (label names, sequence length, ...).
        """
        if self.chief:
            task_info = self.task.task_info() if hasattr(self.task, "task_info") else {}
            presets.write_preset_files(
                self.model, self.model_dir, vocabulary=vocabulary, lowercase=lowercase,
                **task_info,
            )

    def predict(self, output_file):
        """Writes the task's predictions on data.eval_files to `output_file`."""
        if not hasattr(self.task, "predict"):
            raise ValueError(f"task {self.config.task!r} has no prediction mode")
        return self.task.predict(self.model, output_file)

    def weights(self):
        return [np.asarray(v) for v in self.model.weights]
