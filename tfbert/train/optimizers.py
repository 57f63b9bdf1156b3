"""Learning-rate schedules and optimizers (Keras 3 AdamW and LAMB)."""

import math

import keras
import tensorflow as tf
from keras import ops

from tfbert.layers.dense import on_cpu_under_xla
from tfbert.train import fused_adamw, layer_decay

OPTIMIZERS = ("adamw", "lamb")
DECAYS = ("linear", "polynomial", "constant")
# BERT does not decay LayerNorm parameters or biases (Google's optimization.py).
NO_DECAY = ["gamma", "beta", "bias"]  # Keras matches variable names, not paths
# Below this many elements a variable's update stays one fusion: the conditional that
# splits it costs microseconds, more than the scalar loop loses on a bias or a LayerNorm.
SPLIT_UPDATE_MIN_SIZE = 1 << 16


@keras.saving.register_keras_serializable(package="tfbert")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `learning_rate`, then polynomial (power 1: linear) decay.

    The decay runs from the end of warmup to `decay_steps`, reaching `end_learning_rate`.
    """

    def __init__(self, learning_rate, decay_steps, warmup_steps=0, end_learning_rate=0.0,
                 power=1.0, decay="linear"):
        if decay not in DECAYS:
            raise ValueError(f"unknown decay {decay!r}; valid: {', '.join(DECAYS)}")
        self.learning_rate = learning_rate
        self.decay_steps = decay_steps
        self.warmup_steps = warmup_steps
        self.end_learning_rate = end_learning_rate
        self.power = power
        self.decay = decay

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = ops.cast(self.learning_rate, "float32")
        warmup = ops.cast(max(self.warmup_steps, 0), "float32")
        if self.decay == "constant":
            decayed = peak
        else:
            power = 1.0 if self.decay == "linear" else self.power
            span = max(self.decay_steps - self.warmup_steps, 1)
            frac = ops.clip((step - warmup) / float(span), 0.0, 1.0)
            decayed = (peak - self.end_learning_rate) * (1.0 - frac) ** power + self.end_learning_rate
        if self.warmup_steps > 0:
            warm = peak * (step + 1.0) / warmup
            return ops.where(step < warmup, warm, decayed)
        return decayed

    def get_config(self):
        return dict(learning_rate=self.learning_rate, decay_steps=self.decay_steps,
                    warmup_steps=self.warmup_steps, end_learning_rate=self.end_learning_rate,
                    power=self.power, decay=self.decay)


@keras.saving.register_keras_serializable(package="tfbert")
class AdamW(keras.optimizers.AdamW):
    """Keras AdamW with epsilon added to the bias-corrected second moment.

    Keras adds epsilon to sqrt(v) before bias correction, so its effective epsilon is
    epsilon / sqrt(1 - beta_2 ** t): 32x larger at step 1, still 2.5x at step 180. With
    BERT's epsilon of 1e-6 and fine-tuning gradients of 1e-6..1e-5 per element (a global
    norm of at most 1 over tens of millions of weights), that shrinks early updates by
    up to 4x, and fine-tuning, which is all early steps, learns measurably slower than
    the same recipe in PyTorch. Here the step is the Adam paper's (as torch.optim.AdamW):
    lr * m_hat / (sqrt(v_hat) + epsilon). Weight decay is Keras' (decoupled, lr * wd).

    Under XLA on a CPU each float32 variable's update (weight decay, the clip's scale if
    apply_scaled_gradients passes one, m, v, the step) is one pass of a C++ kernel
    (tfbert.train.fused_adamw); where that kernel cannot be built, and everywhere else,
    it is the ops below.
    """

    _gradient_scale = None  # set by apply_scaled_gradients for one apply_gradients call
    _kernel_decays = frozenset()  # keys of the variables the fused kernel decays

    def apply_scaled_gradients(self, grads_and_vars, scale):
        """apply_gradients for the gradients times `scale`, a scalar (the global-norm
        clip's), multiplied inside the update: XLA folds it into the loops that read the
        gradient, the fused CPU kernel into its one pass. Not with gradient accumulation,
        which would scale the accumulated sum by one step's factor."""
        if self.gradient_accumulation_steps:
            raise ValueError("apply_scaled_gradients cannot scale accumulated gradients")
        self._gradient_scale = scale
        try:
            return self.apply_gradients(grads_and_vars)
        finally:
            self._gradient_scale = None

    def updates_in_kernel(self, variable):
        """Whether `variable`'s update runs as tfbert.train.fused_adamw's CPU kernel: a
        float32 variable on a CPU, under XLA, where the kernel could be built."""
        return (not self.amsgrad
                and variable.dtype == "float32"
                and math.prod(int(dim) for dim in variable.shape) > 0
                and on_cpu_under_xla(variable)
                and fused_adamw.available())

    def _apply_weight_decay(self, variables):
        # The kernel decays its variables' weights in its own pass.
        in_kernel = {id(v) for v in variables if self.updates_in_kernel(v)}
        self._kernel_decays = frozenset(
            self._var_key(v) for v in variables
            if id(v) in in_kernel and self.weight_decay is not None
            and self._use_weight_decay(v))
        super()._apply_weight_decay([v for v in variables if id(v) not in in_kernel])

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        bias_1 = 1.0 - ops.power(ops.cast(self.beta_1, dtype), step)
        bias_2 = 1.0 - ops.power(ops.cast(self.beta_2, dtype), step)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        scale = self._gradient_scale
        if self.updates_in_kernel(variable):
            self._kernel_update(variable, gradient, m, v, lr, bias_1, bias_2, scale)
            return
        if scale is not None:
            gradient = ops.multiply(gradient, ops.cast(scale, dtype))
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1.0 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v),
                                        1.0 - self.beta_2))
        if self.amsgrad:
            v_max = self._velocity_hats[self._get_variable_index(variable)]
            self.assign(v_max, ops.maximum(v_max, v))
            v = v_max

        # m / bias_1 / (sqrt(v / bias_2) + eps), the divisions folded into scalars: one
        # square root and one division per element. The scalars are computed here, not
        # in direction(): see apart_from_in_place_update.
        m_scale = lr / bias_1
        v_scale = 1.0 / ops.sqrt(bias_2)

        def direction():
            denominator = ops.add(ops.multiply(ops.sqrt(v), v_scale), self.epsilon)
            return ops.divide(ops.multiply(m, m_scale), denominator)

        if split_in_place_update(variable):
            update = apart_from_in_place_update(direction, self.iterations)
        else:
            update = direction()
        self.assign_sub(variable, update)

    def _kernel_update(self, variable, gradient, m, v, lr, bias_1, bias_2, scale):
        decays = self._var_key(variable) in self._kernel_decays
        # The scalars the XLA path above computes, in the kernel's order.
        scalars = fused_adamw.pack_scalars([
            1.0 if scale is None else scale,
            1.0 - self.beta_1,
            1.0 - self.beta_2,
            lr / bias_1,
            1.0 / ops.sqrt(bias_2),
            self.epsilon,
            self.weight_decay if decays else 0.0,
            # Keras decays by the schedule's rate (not a layer-scaled one): as its
            # _apply_weight_decay, which skips the kernel's variables.
            self.learning_rate if decays else 0.0,
        ])
        weights, new_m, new_v = fused_adamw.update(
            ops.convert_to_tensor(variable), ops.convert_to_tensor(m),
            ops.convert_to_tensor(v), gradient, scalars)
        self.assign(m, new_m)
        self.assign(v, new_v)
        self.assign(variable, weights)


def split_in_place_update(variable):
    """Whether `variable`'s update should compute its square roots apart: XLA on CPU
    (where the fused kernel is not used).

    XLA updates a donated variable in place: the fusion that reads the variable writes
    its buffer. LLVM vectorises such an elementwise loop only behind a run-time check
    that the output aliases none of the inputs, and in place it does, so the whole update
    runs as a scalar loop. For the cheap multiply-adds of m and v that costs little; for
    Adam's square root and division it is 2-3x slower than the vector loop. Measured on a
    2-core CPU: the update of a 30,522 x 256 variable took 13 ms written in place and 5 ms
    written to another buffer; in BERT-mini's pretraining step the embedding's update
    held the threads 11.8 ms in place and 5.7 ms split (profile, summed over threads).
    GPUs and TPUs have no such check, and splitting would only add a pass over memory.
    """
    if math.prod(int(dim) for dim in variable.shape) < SPLIT_UPDATE_MIN_SIZE:
        return False
    return on_cpu_under_xla(variable)


def apart_from_in_place_update(compute, iterations):
    """compute() in a buffer of its own, not fused into the in-place update that uses it.

    A conditional is a fusion boundary, but XLA turns one whose branches are all
    elementwise into a select and fuses that; a reversal in the branch that never runs
    (the optimizer's step count is never negative) keeps it a conditional.

    compute() should compute no scalars: XLA's buffer assignment gives the scalar
    temporaries of every variable's branches one and the same slice, and its CPU runtime
    runs ops that write one slice in turn, which chained all the conditionals one after
    another (a profile of the base pretraining step showed each thread idle a quarter of
    the update's second half). Computed outside, the scalars are the branches' operands.
    On a 2-core CPU the step took as long either way: the update is bound by memory
    bandwidth, which the two threads share.
    """
    return tf.cond(iterations >= 0, compute, lambda: tf.reverse(compute(), [0]))


def takes_gradient_scale(optimizer):
    """Whether `optimizer` has apply_scaled_gradients and can use it (no accumulation)."""
    return isinstance(optimizer, AdamW) and not optimizer.gradient_accumulation_steps


def clip_scale(grads, clip_norm):
    """The factor tf.clip_by_global_norm multiplies `grads` by: clip_norm / max(norm,
    clip_norm), NaN where their global norm is not finite (as there, every gradient turns
    NaN rather than being clipped by a meaningless factor)."""
    norm = tf.linalg.global_norm(grads)
    scale = clip_norm * tf.minimum(1.0 / norm, 1.0 / clip_norm)
    return tf.where(tf.math.is_finite(norm), scale, tf.constant(float("nan"), norm.dtype))


def make_optimizer(trainer, mixed_float16=False, clip_in_optimizer=True):
    """The optimizer for a TrainerSection: schedule, weight decay, clipping, accumulation.

    Keras clips each replica's gradients before they are summed, so under tf.distribute
    the trainer clips the summed gradients itself and passes clip_in_optimizer=False.
    """
    if trainer.optimizer not in OPTIMIZERS:
        raise ValueError(
            f"unknown optimizer {trainer.optimizer!r}; valid: {', '.join(OPTIMIZERS)}"
        )
    schedule = WarmupDecay(
        trainer.learning_rate,
        decay_steps=trainer.train_steps,
        warmup_steps=trainer.warmup_steps,
        end_learning_rate=trainer.end_learning_rate,
        power=trainer.decay_power,
        decay=trainer.decay,
    )
    common = dict(
        learning_rate=schedule,
        weight_decay=trainer.weight_decay,
        global_clipnorm=(trainer.clip_norm or None) if clip_in_optimizer else None,
        epsilon=1e-6,
    )
    if trainer.gradient_accumulation_steps > 1:
        common["gradient_accumulation_steps"] = trainer.gradient_accumulation_steps
    cls = AdamW if trainer.optimizer == "adamw" else keras.optimizers.Lamb
    if not 0.0 < trainer.layer_decay <= 1.0:
        raise ValueError(f"trainer.layer_decay must be in (0, 1], got {trainer.layer_decay}")
    if trainer.layer_decay < 1.0:
        # The per-variable scales are set once the model exists: set_layer_decay().
        cls = layer_decay.layerwise(cls)
    optimizer = cls(**common)
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    if mixed_float16:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def set_layer_decay(optimizer, model, decay):
    """Gives `model`'s variables their layer-wise rates in an optimizer from make_optimizer."""
    if decay >= 1.0:
        return
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # under fp16 loss scaling
    inner.set_learning_rate_scales(layer_decay.layer_scales(model, decay))
