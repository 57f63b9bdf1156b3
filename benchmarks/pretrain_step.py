"""Pretraining step throughput (masked LM + next sentence): tfbert beside KerasHub and
Model Garden, sequences/s and model FLOPs utilisation.

  python benchmarks/pretrain_step.py [--sizes mini,small,base --precisions fp32,bf16
      --batch_size 8 --steps 5 --xla step ...]

One training step: forward, loss, gradients, global-norm clipping at 1.0 and an AdamW
update (weight decay 0.01, none on LayerNorm and biases), dropout 0.1, on a fixed
synthetic batch of --batch_size sequences of --seq_length tokens (vocabulary 30,522,
every token real, two segments) with --max_predictions masked positions each. The batch
sits in memory, so the step is measured, not an input pipeline.

- tfbert: `tfbert.BertPretrainer` (an encoder of configs/models/<size>.json) driven by
  the trainer's own compiled loop (`tfbert.train.trainer.Trainer`, the code
  `python -m tfbert.train` runs, one step per call), loss from `PretrainingTask.step`
  (MLM mean over real predictions + NSP mean), optimizer from
  `tfbert.train.optimizers.make_optimizer`.
- KerasHub: `keras_hub.models.BertMaskedLM` over a `BertBackbone` of the same size,
  random weights, no preprocessor (token ids, padding mask, segment ids and mask
  positions fed directly, so its preprocessing is excluded), sparse cross-entropy on the
  masked positions. KerasHub has no NSP head: its step does the MLM loss only.
- Model Garden: `official.nlp.modeling.models.BertPretrainerV2` (tf_keras) over
  `networks.BertEncoder`, with a `layers.ClassificationHead(num_classes=2,
  name="next_sentence")` for NSP as Model Garden's own masked_lm task builds it, loss
  MLM + NSP, tf_keras AdamW.

XLA (--xla): `step` (default) compiles the whole step, optimizer included, each the way
it offers: tfbert's trainer does so itself on one device; KerasHub through its own
`compile(jit_compile=True)` + `train_on_batch`; Model Garden through one
`tf.function(jit_compile=True)` around its model, loss and tf_keras AdamW. `grads`
compiles forward + backward and leaves the optimizer update outside, which is how
tfbert's trainer splits its step on several replicas (the update holds cross-replica
merges that cannot sit in an XLA cluster); KerasHub and Model Garden get the same split
through a `tf.function(jit_compile=True)` gradient function. `off` runs plain
`tf.function` graphs (KerasHub `jit_compile=False`, tfbert's trainer with
`trainer.jit_compile=false`). The table says what each row ran.

Precision: fp32, or bf16 (Keras `mixed_bfloat16` dtype policy for tfbert and KerasHub,
tf_keras `mixed_bfloat16` global policy for Model Garden: bf16 matmuls, fp32 weights).
On a CPU without native bf16 instructions bf16 is emulated and slower than fp32.

XLA flags: on a CPU tfbert's trainer adds XLA flags where they apply
(tfbert/train/cpu_xla.py: XNNPACK matmuls in bf16 on CPUs with AVX512-BF16, 512-bit
vectors in fp32 on CPUs with AVX-512). The peers' processes get the same flags in
XLA_FLAGS, so all compile alike; a peer whose step fails to compile with them runs
without, and its XLA column says so.

Each implementation runs in its own process (this script re-run with hidden --worker
and --serve flags, talking JSON lines), so memory, threads and XLA state never leak
between them. The processes of one size and precision stay up side by side: each builds
its model and runs the first --warmup steps (graph tracing and XLA compilation, untimed
and reported separately) while the others wait, then they take turns of --steps timed
steps, the others idle, for --rounds rounds with the order rotating. A shared machine's
speed drifts by 10-20% over minutes; taking turns puts the drift on every implementation
alike. The table gives the median of each one's --steps x --rounds timed steps. Two
processes of the same code can also differ by 1-2% for as long as they run (measured on
a 2-core CPU at BERT-base: 17-37 ms a step, each keeping its offset over all rounds), so
one run's ratio carries that too; --processes N runs N processes of each implementation,
each taking its turn, and pools their steps (N times the memory: at base each process
holds 4-5 GB, so on 24 GB two processes each fit two implementations, not three).

Host memory (--host_memory): importing tfbert.train asks TensorFlow for its BFC pool on
the CPU (tfbert/train/host_memory.py), so a compiled step reuses its buffers instead of
faulting fresh pages in every step. By default every implementation gets that same
setting (TF_CPU_ALLOCATOR_USE_BFC=true in its environment), so the table compares the
implementations, not the allocators; `--host_memory as_shipped` runs each as its users
get it (tfbert pooled, KerasHub and Model Garden on TensorFlow's default: malloc,
or oneDNN's pool where TensorFlow turns oneDNN on, as it does by default on x86 CPUs with
AVX-512 VNNI/BF16 or AMX).

Model FLOPs per step (the work of the model, the same for every implementation, so the
utilisation compares like with like). With L layers, hidden H, intermediate I,
sequence S, P masked positions, vocabulary V and batch B, a forward pass of one
sequence does these matmuls (2 FLOPs per multiply-add):

    encoder dense   2 * S * L * (4 * H^2 + 2 * H * I)   QKV, attention output, FFN in/out
    attention       4 * L * S^2 * H                      Q K^T and probabilities @ V
    pooler + NSP    2 * (H^2 + 2 * H)                    on the [CLS] token only
    MLM head        2 * P * (H^2 + H * V)                on the P gathered positions only

and training costs three forward passes (the backward pass computes gradients with
respect to activations and to weights, two matmuls of the same size per forward one):

    FLOPs/step = B * (6 * [S * L * (4H^2 + 2HI) + H^2 + 2H + P * (H^2 + HV)]
                      + 12 * L * S^2 * H)

i.e. 6 x (parameters in matmuls) x (tokens through them) plus the attention matmuls.
Embedding lookups, softmax, LayerNorm, GELU, dropout and the optimizer are not counted
(they are memory-bound, not FLOPs). KerasHub, without NSP, computes 6 * B * (H^2 + 2H)
fewer FLOPs than counted here: under 0.01% at any size. tfbert computes its last block
only at the 1 + P rows its heads read (same loss and gradients): at seq 128 with 20
predictions that is 13% fewer FLOPs than counted at mini, 15% at small and 6% at base;
the notes under the table give the share for the sizes run.

The utilisation divides FLOPs/step / (median seconds/step) by this machine's MEASURED
matmul peak in the same precision: the best of several runs of a --peak_n square
`tf.linalg.matmul` (chained inside one `tf.function(jit_compile=True)`, so launch
overhead does not count), in its own process, before each size and precision's
implementations start (the best measurement is kept). On NVIDIA Ampere and
newer GPUs TensorFlow runs float32 matmuls as TF32 by default, in the models and in the
peak alike.
"""

import argparse
import json
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import (  # noqa: E402
    REPO_ROOT,
    Report,
    add_host_memory_flag,
    failure_reason,
    host_allocator,
    host_memory_note,
    load_note,
    percentile,
    pin_cores,
    run_json_worker,
    set_host_memory,
)


def policy_of(precision):
    return "mixed_bfloat16" if precision == "bf16" else "float32"


def peer_env(precision, xla=True, xnnpack_only=False):
    """(environment, what it adds) with the XLA flags tfbert's trainer adds for this
    precision on this CPU (tfbert/train/cpu_xla.py: XNNPACK matmuls in bf16 on CPUs with
    AVX512-BF16, 512-bit vectors in fp32 on CPUs with AVX-512), so the peers compile
    under the same flags as tfbert; with `xnnpack_only`, the XNNPACK flag alone (the bf16
    peak's). (None, "") where it adds none, or where XLA_FLAGS already names the flag
    (then it holds for all)."""
    from tfbert.train import cpu_xla

    tuned = cpu_xla.tuned_flags(policy_of(precision), jit_compile=xla, on_cpu=True)
    if xnnpack_only:
        tuned = [(f, what) for f, what in tuned if f.startswith(f"{cpu_xla.XNNPACK_FLAG}=")]
    if not tuned:
        return None, ""
    env = {**os.environ, "XLA_FLAGS": cpu_xla.xla_flags_with(f for f, _ in tuned)}
    return env, " + ".join(what for _, what in tuned)


IMPLEMENTATIONS = ("tfbert", "keras_hub", "model_garden")
NAMES = {
    "tfbert": "tfbert BertPretrainer (trainer step)",
    "keras_hub": "KerasHub BertMaskedLM (no NSP)",
    "model_garden": "Model Garden BertPretrainerV2",
}
SHORT = {"tfbert": "tfbert", "keras_hub": "KerasHub", "model_garden": "Model Garden"}
PRECISIONS = ("fp32", "bf16")
XLA_MODES = ("step", "grads", "off")
PROFILE_STEPS = 2
SEED = 0


def parse_args(argv=None):
    sizes = sorted(name[:-5] for name in os.listdir(os.path.join(REPO_ROOT, "configs", "models"))
                   if name.endswith(".json"))
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="The defaults fit a 2-core CPU in about 4-6 minutes (mini only, few steps). "
               "base is slow there: measured 80 s to compile and 16 s per batch-8 step for "
               "tfbert fp32 alone, so --sizes base takes ~20 minutes for all six rows. On "
               "real hardware: --sizes mini,small,base --batch_size 64 --steps 50.",
    )
    parser.add_argument("--sizes", default="mini",
                        help=f"comma-separated model sizes (configs/models): {', '.join(sizes)}")
    parser.add_argument("--precisions", default="fp32,bf16",
                        help="comma-separated: fp32, bf16 (mixed_bfloat16)")
    parser.add_argument("--implementations", default=",".join(IMPLEMENTATIONS),
                        help=f"comma-separated: {', '.join(IMPLEMENTATIONS)}")
    parser.add_argument("--batch_size", type=int, default=8, help="sequences per step")
    parser.add_argument("--seq_length", type=int, default=128)
    parser.add_argument("--max_predictions", type=int, default=20,
                        help="masked positions per sequence")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps first (the first one traces and compiles)")
    parser.add_argument("--xla", choices=XLA_MODES, default="step",
                        help="step: the whole step in XLA (the tfbert trainer on one "
                             "device); grads: XLA forward+backward, optimizer outside (the "
                             "trainer on several replicas); off: no XLA")
    parser.add_argument("--peak_n", type=int, default=2048,
                        help="size of the square matmul that measures the FLOP/s peak")
    parser.add_argument("--rounds", type=int, default=1,
                        help="turns each implementation gets to time --steps steps; the "
                             "turns alternate between the implementations' processes, "
                             "which stay up side by side (steadier on a shared machine)")
    parser.add_argument("--processes", type=int, default=1,
                        help="processes per implementation, each taking its turn in every "
                             "round; their steps are pooled (steadier against a process's "
                             "own offset, at N times the time and memory: a base process "
                             "holds 4-5 GB)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="CPU cores every implementation may use (default: all)")
    parser.add_argument("--profile", metavar="LOGDIR", default=None,
                        help="after the timed steps, trace %d more steps of each "
                             "implementation with the TF profiler (per-XLA-op events) into "
                             "LOGDIR/<implementation>-<size>-<precision> for TensorBoard, and "
                             "add a table of where each step's time goes" % PROFILE_STEPS)
    add_host_memory_flag(parser)
    parser.add_argument("--worker_timeout", type=float, default=1800,
                        help="seconds an implementation's process may take to build and "
                             "compile, or to run one turn of steps")
    # Internal: one implementation (or the matmul peak) in this process; prints JSON.
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = [s for s in args.sizes.split(",") if s]
    args.precisions = [p for p in args.precisions.split(",") if p]
    args.implementations = [i for i in args.implementations.split(",") if i]
    for what, values, valid in (("--sizes", args.sizes, sizes),
                                ("--precisions", args.precisions, PRECISIONS),
                                ("--implementations", args.implementations, IMPLEMENTATIONS)):
        unknown = [v for v in values if v not in valid]
        if unknown or not values:
            parser.error(f"{what}: unknown or empty {', '.join(unknown)!r}; "
                         f"valid: {', '.join(valid)}")
    for flag in ("batch_size", "seq_length", "max_predictions", "steps", "peak_n", "rounds",
                 "processes"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1")
    if args.max_predictions > args.seq_length - 1:
        parser.error("--max_predictions must be below --seq_length")
    return args


def model_config(size):
    """The encoder shape of configs/models/<size>.json (bert_config.json fields)."""
    with open(os.path.join(REPO_ROOT, "configs", "models", f"{size}.json"),
              encoding="utf-8") as f:
        config = json.load(f)
    return dict(layers=config["num_hidden_layers"], hidden=config["hidden_size"],
                heads=config["num_attention_heads"], intermediate=config["intermediate_size"],
                vocab=config["vocab_size"], max_positions=config["max_position_embeddings"],
                type_vocab=config["type_vocab_size"])


def model_flops(size, batch, seq, predictions):
    """Matmul FLOPs of one training step (forward + backward); see the module docstring."""
    c = model_config(size)
    L, H, V = c["layers"], c["hidden"], c["vocab"]
    inner = c["intermediate"]  # I in the docstring
    S, P = seq, predictions
    dense = S * L * (4 * H * H + 2 * H * inner) + H * H + 2 * H + P * (H * H + H * V)
    return batch * (6 * dense + 12 * L * S * S * H)


def tfbert_skipped_flops(size, batch, seq, predictions):
    """Counted FLOPs that tfbert's step does not do: its last block computes only the
    rows its heads read, the first token and the P masked positions (queries, attention
    output and FFN at those rows; keys and values at all S). Forward + backward."""
    c = model_config(size)
    H, inner = c["hidden"], c["intermediate"]
    S, R = seq, min(seq, 1 + predictions)
    full = 2 * S * (4 * H * H + 2 * H * inner) + 4 * S * S * H
    rows = 2 * S * 2 * H * H + 2 * R * (2 * H * H + 2 * H * inner) + 4 * R * S * H
    return batch * 3 * (full - rows)


# ------------------------------------------------------------------------------ workers


def synthetic_batch(args):
    """One fixed batch, numpy: the model inputs and the labels (google-research/bert names).

    B=batch, S=seq_length, P=max_predictions. Full-length sequences (pretraining records
    at seq 128 are nearly all full), segment A then B, P distinct masked positions per
    sequence (never [CLS]), all predictions real (weight 1).
    """
    import numpy as np

    rng = np.random.default_rng(SEED)
    B, S, P = args.batch_size, args.seq_length, args.max_predictions
    vocab = model_config(args.size)["vocab"]
    word_ids = rng.integers(1000, vocab, (B, S)).astype("int32")          # [B, S]
    type_ids = (np.arange(S)[None, :] >= S // 2).repeat(B, 0).astype("int32")  # [B, S]
    positions = np.sort(np.stack([rng.permutation(np.arange(1, S))[:P] for _ in range(B)]),
                        axis=1).astype("int32")                            # [B, P]
    inputs = {"input_word_ids": word_ids, "input_mask": np.ones((B, S), "int32"),
              "input_type_ids": type_ids, "masked_lm_positions": positions}
    labels = {"masked_lm_ids": rng.integers(1000, vocab, (B, P)).astype("int32"),
              "masked_lm_weights": np.ones((B, P), "float32"),
              "next_sentence_labels": rng.integers(0, 2, (B, 1)).astype("int32")}
    return inputs, labels


def time_steps(run_step, args):
    """Calls `run_step()` (which blocks until the step is done) warmup + steps times.

    Returns the seconds of the warmup calls and of the timed ones. Not common.timed:
    the warmup calls are timed too (compile time is reported, apart).
    """
    warmup = []
    for _ in range(args.warmup):
        started = time.perf_counter()
        run_step()
        warmup.append(time.perf_counter() - started)
    steps = []

    def timed_steps(count):
        times = []
        for _ in range(count):
            started = time.perf_counter()
            run_step()
            times.append(time.perf_counter() - started)
        steps.extend(times)
        return times

    if args.serve:
        # Idle until the driver gives this implementation its turn (see Server).
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            command = line.split()
            if command[:1] != ["time"]:
                break
            print(json.dumps({"timed": timed_steps(int(command[1]))}), flush=True)
    else:
        timed_steps(args.steps)
    if args.profile:
        args.profile_summary = profile_steps(run_step, args)
    return warmup, steps


def profile_steps(run_step, args):
    """Traces PROFILE_STEPS steps into LOGDIR/<worker>-<size>-<precision>; returns where
    their time went: {"kinds": {kind: ms per step}, "top": [[op, ms per step], ...]}.

    XLA on CPU emits one trace event per compiled op when --xla_cpu_enable_xprof_traceme
    is on (run_worker sets it). Each op's event lasts while the thread that runs it works
    on it; a matmul's shards on the other threads are inside that time, ops running side
    by side on different threads are counted each, so the kinds can sum past the step.
    """
    import collections
    import glob

    import tensorflow as tf

    logdir = os.path.join(args.profile, f"{args.worker}-{args.size}-{args.precision}")
    tf.profiler.experimental.start(logdir)
    try:
        for _ in range(PROFILE_STEPS):
            run_step()
    finally:
        tf.profiler.experimental.stop()
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(sorted(glob.glob(f"{logdir}/plugins/profile/*/*.xplane.pb"))[-1], "rb") as f:
        space.ParseFromString(f.read())
    kinds, ops = collections.Counter(), collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if line.name == "python":  # the Python thread: tf.function names, not XLA ops
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                kind = xla_op_kind(name)
                if kind:
                    ms = event.duration_ps / 1e9 / PROFILE_STEPS
                    kinds[kind] += ms
                    ops[name.removesuffix(".clone")] += ms
    return {"kinds": dict(kinds), "top": [[n, ms] for n, ms in ops.most_common(8)],
            "logdir": logdir}


def xla_op_kind(name):
    """The kind of an XLA CPU op from its trace event name (`dot.12`, `add_rsqrt_fusion`,
    `reduce-window.3.clone`), or None for other events: TensorFlow's own (CamelCase or
    with "::") and the `call.N` wrappers around fused ops, whose insides are traced too."""
    if not re.fullmatch(r"[a-z][a-z0-9_.-]*", name) or re.fullmatch(r"call\.\d+", name):
        return None
    op = name.split(".")[0]
    if op.startswith("dot") or "_dot" in op or "convolution" in op:
        return "matmul"
    if "rng" in op or "philox" in op or "threefry" in op:
        return "random bits"
    if "fusion" in op:
        return "fused elementwise / reductions"
    if op == "custom-call":  # tfbert's AdamW kernel (tfbert/train/fused_adamw.py)
        return "custom call"
    return op if op in ("reduce-window", "scatter", "gather", "sort", "copy", "concatenate",
                        "transpose", "reduce") else "other ops"


def split_xla_step(tf, grads_fn, apply_fn, xla):
    """The step as `grads_fn(inputs, labels) -> (loss, grads)` then `apply_fn(grads)`.

    xla=grads: forward+backward in one XLA cluster, the update outside; step: everything
    in one XLA cluster; off: plain graphs.
    """
    if xla == "step":
        @tf.function(jit_compile=True)
        def step(inputs, labels):
            loss, grads = grads_fn(inputs, labels)
            apply_fn(grads)
            return loss
        return step
    compute = tf.function(grads_fn, jit_compile=(xla == "grads"))

    @tf.function
    def step(inputs, labels):
        loss, grads = compute(inputs, labels)
        apply_fn(grads)
        return loss
    return step


def apply(optimizer, grads, variables):
    """The optimizer update, skipping variables the loss does not reach (as the trainer
    does), e.g. a pooler no head reads."""
    optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])


def worker_tfbert(args):
    import tensorflow as tf

    from tfbert.config import DataSection, ExperimentConfig, ModelSection, TrainerSection
    from tfbert.train.strategies import make_strategy
    from tfbert.train.trainer import Trainer

    inputs, labels = synthetic_batch(args)
    config = ExperimentConfig(
        task="pretraining",
        model=ModelSection(preset=args.size,
                           dtype=policy_of(args.precision)),
        data=DataSection(max_seq_length=args.seq_length,
                         max_predictions_per_seq=args.max_predictions),
        trainer=TrainerSection(global_batch_size=args.batch_size, learning_rate=1e-4,
                               weight_decay=0.01, clip_norm=1.0, train_steps=10**6,
                               jit_compile=args.xla != "off", seed=SEED),
    )
    trainer = Trainer(config, make_strategy("one_device"),
                      tempfile.mkdtemp(prefix="tfbert-bench-pretrain-"))
    if args.xla == "grads":
        # The split the trainer uses on several replicas: forward and backward in XLA,
        # the update outside (on one device the trainer fuses them).
        trainer._fuses_update = lambda: False
    # The trainer's compiled loop, one step per call, fed the same batch from memory.
    # Its input pipeline is replaced because the step, not tf.data, is measured here.
    dataset = tf.data.Dataset.from_tensors((inputs, labels)).repeat()
    trainer.task.dataset = lambda input_context, training: dataset
    iterator = iter(trainer._distributed_dataset(training=True))
    loop = trainer._build_train_loop()
    one = tf.constant(1)
    run = lambda: float(loop(iterator, one)["mlm_loss_sum"])  # noqa: E731
    what = {"step": "whole step (trainer loop: one device fuses the update)",
            "grads": "fwd+bwd; AdamW outside (trainer loop as on several replicas)",
            "off": "off (trainer loop, jit_compile=false)"}[args.xla]
    if args.xla == "step":
        from tfbert.train import fused_adamw

        what += (" + AdamW's fused CPU kernel" if fused_adamw.available()
                 else f" (AdamW's fused CPU kernel not built: {fused_adamw.unavailable_reason()})")
    params = sum(int(tf.size(v)) for v in trainer.model.trainable_variables)
    warmup, steps = time_steps(run, args)
    return {"warmup": warmup, "steps": steps, "xla": what, "params": params,
            "versions": f"tensorflow {tf.__version__}, keras {__import__('keras').__version__}"}


def worker_keras_hub(args):
    try:
        import keras
        import keras_hub
    except ImportError as e:
        return {"skip": f"not run: keras_hub cannot be imported ({e})"}
    import tensorflow as tf

    c = model_config(args.size)
    dtype = policy_of(args.precision)
    keras.utils.set_random_seed(SEED)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=c["vocab"], num_layers=c["layers"], num_heads=c["heads"],
        hidden_dim=c["hidden"], intermediate_dim=c["intermediate"], dropout=0.1,
        max_sequence_length=c["max_positions"], num_segments=c["type_vocab"], dtype=dtype)
    model = keras_hub.models.BertMaskedLM(backbone, preprocessor=None)
    optimizer = keras.optimizers.AdamW(1e-4, weight_decay=0.01, epsilon=1e-6,
                                       global_clipnorm=1.0)
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    inputs, labels = synthetic_batch(args)
    x = {"token_ids": tf.constant(inputs["input_word_ids"]),
         "padding_mask": tf.constant(inputs["input_mask"]),
         "segment_ids": tf.constant(inputs["input_type_ids"]),
         "mask_positions": tf.constant(inputs["masked_lm_positions"])}
    y = tf.constant(labels["masked_lm_ids"])
    w = tf.constant(labels["masked_lm_weights"])
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if args.xla in ("step", "off"):
        # KerasHub's own path: Task.compile (its MLM loss and weighted accuracy) and
        # Keras' compiled train function.
        model.compile(optimizer=optimizer, loss=loss_fn, jit_compile=args.xla == "step")
        run = lambda: float(  # noqa: E731
            model.train_on_batch(x, y, sample_weight=w, return_dict=True)["loss"])
        what = ("whole step (compile(jit_compile=True), train_on_batch)"
                if args.xla == "step" else "off (compile(jit_compile=False), train_on_batch)")
    else:
        model.build({k: v.shape for k, v in x.items()})
        optimizer.build(model.trainable_variables)
        # The pooler feeds nothing here (no NSP head): it gets no gradient.
        variables = model.trainable_variables

        def grads_fn(features, targets):
            with tf.GradientTape() as tape:
                logits = model(features, training=True)
                loss = loss_fn(targets[0], logits, sample_weight=targets[1])
            return loss, tape.gradient(loss, variables)

        step = split_xla_step(tf, grads_fn, lambda g: apply(optimizer, g, variables), "grads")
        run = lambda: float(step(x, (y, w)))  # noqa: E731
        what = "fwd+bwd; AdamW outside"
    params = sum(int(tf.size(v)) for v in model.trainable_variables)
    warmup, steps = time_steps(run, args)
    return {"warmup": warmup, "steps": steps, "xla": what, "params": params,
            "versions": f"keras-hub {keras_hub.__version__}"}


def worker_model_garden(args):
    try:
        import tf_keras
        from official.nlp.modeling import layers, models, networks
    except ImportError as e:
        return {"skip": f"not run: tf-models-official / tf_keras cannot be imported ({e})"}
    import tensorflow as tf

    if args.precision == "bf16":
        tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
    tf.random.set_seed(SEED)
    c = model_config(args.size)
    encoder = networks.BertEncoder(
        vocab_size=c["vocab"], hidden_size=c["hidden"], num_layers=c["layers"],
        num_attention_heads=c["heads"], inner_dim=c["intermediate"],
        max_sequence_length=c["max_positions"], type_vocab_size=c["type_vocab"],
        dropout_rate=0.1, attention_dropout_rate=0.1)
    nsp_head = layers.ClassificationHead(inner_dim=c["hidden"], num_classes=2,
                                         dropout_rate=0.1, name="next_sentence")
    model = models.BertPretrainerV2(encoder, mlm_activation=tf_keras.activations.gelu,
                                    classification_heads=[nsp_head])
    # tf_keras' optimizers XLA-compile their per-variable update by default; off means off.
    optimizer = tf_keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=0.01,
                                          epsilon=1e-6, global_clipnorm=1.0,
                                          jit_compile=args.xla != "off")
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    inputs, labels = synthetic_batch(args)
    x = {k: tf.constant(v) for k, v in inputs.items()}
    y = {k: tf.constant(v) for k, v in labels.items()}
    model(x)
    variables = model.trainable_variables
    optimizer.build(variables)

    def grads_fn(features, targets):
        with tf.GradientTape() as tape:
            out = model(features, training=True)
            weights = targets["masked_lm_weights"]
            mlm = tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=targets["masked_lm_ids"], logits=tf.cast(out["mlm_logits"], tf.float32))
            loss = tf.reduce_sum(mlm * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)
            nsp = tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.reshape(targets["next_sentence_labels"], [-1]),
                logits=tf.cast(out["next_sentence"], tf.float32))
            loss += tf.reduce_mean(nsp)
        # The encoder's own pooler gets no gradient (the NSP head pools for itself).
        return loss, tape.gradient(loss, variables)

    step = split_xla_step(tf, grads_fn, lambda g: apply(optimizer, g, variables), args.xla)
    run = lambda: float(step(x, y))  # noqa: E731
    what = {"grads": "fwd+bwd; AdamW outside (tf_keras XLA-compiles its per-variable update)",
            "step": "whole step",
            "off": "off (optimizer jit_compile=False too)"}[args.xla]
    params = sum(int(tf.size(v)) for v in variables)
    warmup, steps = time_steps(run, args)
    import official

    return {"warmup": warmup, "steps": steps, "xla": what, "params": params,
            "versions": f"tf-models-official {getattr(official, '__version__', '2.20')}, "
                        f"tf_keras {tf_keras.__version__}"}


def worker_peak(args):
    """Best FLOP/s of chained square matmuls in one XLA function, per precision."""
    import tensorflow as tf

    n = args.peak_n
    peaks = {}
    for precision in args.precisions:
        dtype = tf.bfloat16 if precision == "bf16" else tf.float32
        a = tf.cast(tf.random.stateless_normal((n, n), (SEED, 1)), dtype)
        # Scaled so repeated products keep their magnitude (no overflow to inf).
        b = tf.cast(tf.random.stateless_normal((n, n), (SEED, 2)) / n**0.5, dtype)

        def chain(reps):
            @tf.function(jit_compile=True)
            def products(x, w):
                for _ in range(reps):
                    x = tf.linalg.matmul(x, w)
                return tf.reduce_sum(tf.cast(x, tf.float32))  # forces every product
            return products

        reps, f = 1, chain(1)
        for _ in range(2):
            float(f(a, b))
        started = time.perf_counter()
        float(f(a, b))
        once = time.perf_counter() - started
        if once < 0.1:
            # A GPU multiplies 2048^2 in microseconds: chain enough to time ~0.2 s.
            reps = min(200, int(0.2 / max(once, 1e-6)) + 1)
            f = chain(reps)
            float(f(a, b))
        best = min(timed_once(f, a, b) for _ in range(5))
        peaks[precision] = 2 * n**3 * reps / best
    return {"peaks": peaks, "n": n,
            "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU"}


def bf16_note(device, peaks):
    """What the table's bf16 rows mean on a CPU, from the measured peaks (empty otherwise).

    TensorFlow 2.20's XLA on CPU multiplies bf16 matrices with its float32 matmul,
    converting the operands (the step's profile shows the conversions), so that peak
    measures like the fp32 one even on CPUs with avx512_bf16; on those the driver also
    measures XLA's XNNPACK matmul (peer_env's XNNPACK flag), which uses the bf16
    instructions, and keeps the better.
    """
    if device != "CPU" or "bf16" not in peaks or "fp32" not in peaks:
        return ""
    if peaks["bf16"] < 1.25 * peaks["fp32"]:
        return (" On this CPU bf16 matmuls ran no faster than fp32 (the peaks above: XLA "
                "converts bf16 operands and multiplies in float32), so bf16 rows pay for "
                "the conversions; compare them with each other, not with fp32.")
    return (" On this CPU bf16 matmuls ran faster than fp32 (the peaks above), so bf16 "
            "MFUs are against the higher bf16 peak.")


def timed_once(f, *a):
    started = time.perf_counter()
    float(f(*a))
    return time.perf_counter() - started


WORKERS = {"tfbert": worker_tfbert, "keras_hub": worker_keras_hub,
           "model_garden": worker_model_garden, "peak": worker_peak}


def run_worker(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    if args.profile:
        # One trace event per XLA op (see profile_steps); set before TensorFlow starts.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_enable_xprof_traceme=true").strip()
    result = WORKERS[args.worker](args)
    if args.worker != "peak":
        result["host_memory"] = host_allocator()
    if getattr(args, "profile_summary", None):
        result["profile"] = args.profile_summary
    print(json.dumps(result), flush=True)


# ------------------------------------------------------------------------------ driver


def worker_command(args, worker, size=None, precision=None):
    command = [sys.executable, os.path.abspath(__file__), "--worker", worker,
               "--precisions", ",".join(args.precisions),
               "--batch_size", str(args.batch_size), "--seq_length", str(args.seq_length),
               "--max_predictions", str(args.max_predictions), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--xla", args.xla, "--peak_n", str(args.peak_n)]
    if args.profile and worker != "peak":
        command += ["--profile", os.path.abspath(args.profile)]
    if size:
        command += ["--size", size, "--precision", precision]
    return command


def run_one(args, worker, what, size=None, precision=None, env=None):
    """A worker's JSON result, or {"skip": reason} when it failed or timed out."""
    import subprocess

    print(f"[pretrain_step] {what}", file=sys.stderr, flush=True)
    try:
        result, wall, _ = run_json_worker(worker_command(args, worker, size, precision), what,
                                          env=env, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        return {"skip": f"stopped after {args.worker_timeout:.0f} s (--worker_timeout)"}
    except SystemExit as e:
        return {"skip": failure_reason(e)}
    result["wall"] = wall
    return result


class Server:
    """One implementation's worker process (--serve): it compiles its step, then times
    steps when told to, idle in between, and prints its whole result when told to quit."""

    def __init__(self, args, impl, size, precision, env=None):
        import queue
        import subprocess
        import threading

        self.what = f"{size} {precision} {impl}" + (" (XLA flags added)" if env else "")
        self.timeout = args.worker_timeout
        self.failure = None
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.lines = queue.Queue()
        print(f"[pretrain_step] {self.what}: building and compiling", file=sys.stderr,
              flush=True)
        self.proc = subprocess.Popen(
            worker_command(args, impl, size, precision) + ["--serve"], cwd=REPO_ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        self._next()  # {"ready": true} once its first (compiling) steps are done

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("{"):
                try:
                    self.lines.put(json.loads(line))
                except ValueError:
                    pass
        self.lines.put(None)

    def _next(self):
        """The worker's next JSON line; None, with the reason kept, once it has failed."""
        import queue

        if self.failure:
            return None
        try:
            item = self.lines.get(timeout=self.timeout)
        except queue.Empty:
            self.failure = f"stopped after {self.timeout:.0f} s (--worker_timeout)"
            self.kill()
            return None
        if item is None:
            code = self.proc.wait()
            self.stderr.seek(0)
            self.failure = failure_reason(self.stderr.read()[-20000:] or f"exit {code}")
        return item

    def _send(self, command):
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except OSError:  # it died: _next() says why
            pass

    def take_turn(self, steps, label):
        if not self.failure:
            print(f"[pretrain_step] {label}: {self.what}", file=sys.stderr, flush=True)
            self._send(f"time {steps}")
            self._next()

    def finish(self):
        """Its result over all its turns, or {"skip": why it has none}."""
        if not self.failure:
            self._send("quit")
            result = self._next()
            if result is not None and "steps" in result:
                self.proc.wait()
                return result
        return {"skip": self.failure or "no result"}

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def interleaved(args, size, precision, env=None, env_what=""):
    """{implementation: result} for one size and precision; the peers run with `env` (see
    peer_env; `env_what` says what it adds) where it is given.

    All the implementations' processes stay up side by side. Each builds and compiles
    while the others wait; then they take turns of --steps timed steps, the others idle,
    for --rounds rounds with the order rotating, so a change in a shared machine's speed
    falls on all of them alike rather than on whichever ran at that moment.
    """
    servers, env_failed = {}, {}
    try:
        for impl in args.implementations:  # one at a time: compiles never overlap
            # tfbert's trainer adds its XLA flags by itself where they apply; the peers
            # get them from XLA_FLAGS, and run without them where their step fails to
            # compile.
            impl_env = env if impl != "tfbert" else None
            servers[impl] = []
            for _ in range(args.processes):
                server = Server(args, impl, size, precision, impl_env)
                if impl_env and server.failure:
                    env_failed[impl] = server.failure
                    impl_env = None
                    server = Server(args, impl, size, precision)
                servers[impl].append(server)
        order = list(args.implementations)
        for round_ in range(args.rounds):
            turn = order[round_ % len(order):] + order[:round_ % len(order)]
            for impl in turn:
                for server in servers[impl]:
                    server.take_turn(args.steps, f"round {round_ + 1}/{args.rounds}")
        results = {impl: pooled([server.finish() for server in group], args.steps)
                   for impl, group in servers.items()}
        for impl, result in results.items():
            if "xla" not in result:
                continue
            if impl in env_failed:
                reason = env_failed[impl].removeprefix("failed: ")
                result["xla"] += (f" (without {env_what}: with them the step failed: "
                                  f"{reason[:160]})")
            elif env:
                result["xla"] += f" + {env_what}"
        return results
    finally:
        for group in servers.values():
            for server in group:
                server.kill()


def processes_note(args, results):
    """With --processes: how many each implementation ran, and each one's own median."""
    if args.processes == 1:
        return ""
    medians = "; ".join(
        f"{size} {precision} {SHORT[impl]} "
        + ", ".join(f"{1e3 * m:,.0f}" for m in r["process_medians"])
        for (size, precision, impl), r in results.items() if "process_medians" in r)
    return (f", pooled from {args.processes} processes of each implementation, which took "
            f"their turns one after the other (their own medians, ms: {medians})")


def pooled(results, steps):
    """One implementation's result from its processes' (see --processes): the first one's,
    with every process's timed steps, round by round (each round's turns one after the
    other, so round_ratios sees a round as `steps` x processes steps), and with the
    processes' own medians kept; {"skip": ...} when any of them has none."""
    for result in results:
        if "steps" not in result:
            return result
    if len(results) == 1:
        return results[0]
    rounds = min(len(r["steps"]) for r in results) // steps
    merged = dict(results[0])
    merged["steps"] = [t for r in range(rounds) for result in results
                       for t in result["steps"][r * steps:(r + 1) * steps]]
    merged["process_medians"] = [percentile(r["steps"], 50) for r in results]
    return merged


def round_ratios(ours, peer, steps):
    """tfbert / peer speed, one per round: the medians of each round's `steps` timed
    steps (a worker's step times come turn after turn); [] with fewer than two rounds."""
    rounds = min(len(ours), len(peer)) // steps
    if rounds < 2:
        return []
    return [percentile(peer[r * steps:(r + 1) * steps], 50)
            / percentile(ours[r * steps:(r + 1) * steps], 50) for r in range(rounds)]


def profile_report(report, args, results):
    """Tables of where each profiled step's time went (see profile_steps)."""
    kinds = ["matmul", "fused elementwise / reductions", "random bits", "reduce-window",
             "scatter", "gather", "sort", "copy", "concatenate", "transpose", "reduce",
             "custom call", "other ops"]
    rows, top_rows = [], []
    for (size, precision, impl), r in results.items():
        profile = r.get("profile")
        if not profile:
            continue
        step_ms = percentile(r["steps"], 50) * 1000
        shown = [k for k in kinds if profile["kinds"].get(k, 0) >= 1]
        rows.append([size, precision, NAMES[impl], f"{step_ms:.0f}"]
                    + [", ".join(f"{k} {profile['kinds'][k]:.0f}" for k in shown)])
        top_rows.append([size, precision, NAMES[impl],
                         ", ".join(f"{n} {ms:.1f}" for n, ms in profile["top"])])
    report.note(
        f"Profile (--profile {args.profile}): {PROFILE_STEPS} more steps per row traced with "
        "the TF profiler, one event per XLA op (`tensorboard --logdir "
        f"{args.profile}` shows the traces). Milliseconds per step each kind of op held "
        "the thread that ran it; ops on different threads overlap, so kinds can sum past "
        "the step, and the gap below it is time no XLA op ran (framework, waiting).")
    report.table(["size", "precision", "implementation", "ms/step",
                  "ms per step in XLA ops, by kind"], rows)
    report.note("The longest ops (ms per step):")
    report.table(["size", "precision", "implementation", "ops"], top_rows)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)

    # Before any worker starts: they inherit the affinity and size their pools from it.
    pin_cores(args.threads)
    set_host_memory(args.host_memory)
    load = load_note()
    started = time.time()
    results, peak, peaks, xnnpack_peak = {}, {}, {}, {}
    for size in args.sizes:
        for precision in args.precisions:
            # The peak is measured again before every group, while nothing else runs, and
            # the best kept: one slow moment of a shared machine would otherwise
            # understate it (and overstate every MFU).
            measured = run_one(args, "peak", f"{size} {precision}: measuring the matmul peak")
            if measured.get("peaks") or not peak:
                peak = measured
            for name, value in measured.get("peaks", {}).items():
                peaks[name] = max(value, peaks.get(name, 0.0))
            on_cpu = measured.get("device", "CPU") == "CPU"
            env = peer_env(precision, xnnpack_only=True)[0] if on_cpu else None
            if env:  # bf16 through XNNPACK: the better of the two is the bf16 peak
                with_xnnpack = run_one(args, "peak", f"{size} {precision}: the peak with "
                                       "XNNPACK", env=env).get("peaks", {})
                if "bf16" in with_xnnpack:
                    xnnpack_peak["bf16"] = max(with_xnnpack["bf16"], xnnpack_peak.get("bf16", 0.0))
                    peaks["bf16"] = max(with_xnnpack["bf16"], peaks.get("bf16", 0.0))
            flags_env, flags_what = (peer_env(precision, args.xla != "off") if on_cpu
                                     else (None, ""))
            for impl, result in interleaved(args, size, precision, flags_env,
                                            flags_what).items():
                results[size, precision, impl] = result

    report = Report("pretrain_step", "Pretraining step (MLM + NSP): sequences/s and MFU")
    report.note(
        f"Batch {args.batch_size} x seq {args.seq_length}, {args.max_predictions} masked "
        f"positions per sequence, vocabulary 30,522, dropout 0.1, AdamW + global-norm "
        f"clipping; --xla {args.xla}. Each implementation ran in its own process, all "
        f"pinned to the same {args.threads} core(s) and up side by side: each built and "
        f"compiled while the others waited ({args.warmup} untimed step(s); the first "
        f"step's seconds are the 'first step' column), then they took turns of "
        f"{args.steps} timed steps, the others idle, for {args.rounds} round(s) with the "
        f"order rotating, so the machine's speed changes fall on all alike. ms/step is "
        f"the median of an implementation's {args.steps * args.rounds * args.processes} "
        f"timed steps{processes_note(args, results)}; {load}.")
    if peaks:
        report.note(f"Measured matmul peak (best of 5 before each size and precision, "
                    f"{peak['n']}^3 chained "
                    f"in one XLA function, {peak['device']}): "
                    + ", ".join(f"{p} {v / 1e9:,.1f} GFLOP/s" for p, v in peaks.items()) + "."
                    + (f" The bf16 peak is the better of XLA's own matmul and its XNNPACK "
                       f"one ({xnnpack_peak['bf16'] / 1e9:,.1f} GFLOP/s), which uses the "
                       f"CPU's bf16 dot instructions." if xnnpack_peak else ""))
    else:
        report.note(f"Matmul peak not measured ({peak.get('skip', 'unknown')}): no MFU.")

    header = ["size", "precision", "implementation", "XLA", "first step s", "ms/step",
              "sequences/s", "GFLOP/step", "MFU", "vs tfbert"]
    rows, ratio_rows = [], []
    labels, groups = [], {SHORT[i]: [] for i in args.implementations}
    versions, allocators = {}, {}
    for size in args.sizes:
        for precision in args.precisions:
            flops = model_flops(size, args.batch_size, args.seq_length, args.max_predictions)
            rates = {}
            for impl in args.implementations:
                r = results[size, precision, impl]
                if "steps" in r:
                    seconds = percentile(r["steps"], 50)
                    rates[impl] = args.batch_size / seconds
                    versions[impl] = r.get("versions", "")
                    allocators.setdefault(impl, set()).add(r.get("host_memory", "unknown"))
            labels.append(f"{size} {precision}")
            ours = rates.get("tfbert")
            for impl in args.implementations:
                r = results[size, precision, impl]
                groups[SHORT[impl]].append(rates.get(impl))
                if impl not in rates:
                    rows.append([size, precision, NAMES[impl], r.get("skip", "not run"),
                                 "", "", "", "", "", ""])
                    continue
                seconds = args.batch_size / rates[impl]
                mfu = (f"{flops / seconds / peaks[precision] * 100:.1f}%"
                       if precision in peaks else "n/a")
                vs = f"{rates[impl] / ours:.2f}x" if ours else "n/a"
                rows.append([size, precision, NAMES[impl], r["xla"],
                             f"{sum(r['warmup'][:1]):.1f}", f"{seconds * 1000:.0f}",
                             f"{rates[impl]:.2f}", f"{flops / 1e9:.1f}", mfu, vs])
            peers = {i: v for i, v in rates.items() if i != "tfbert"}
            if ours and peers:
                best = max(peers, key=peers.get)
                spread = round_ratios(results[size, precision, "tfbert"]["steps"],
                                      results[size, precision, best]["steps"],
                                      args.steps * args.processes)
                ratio_rows.append([size, precision, NAMES[best], f"{ours / peers[best]:.2f}x",
                                   f"{min(spread):.2f}x-{max(spread):.2f}x" if spread else "-"])
            else:
                ratio_rows.append([size, precision, "-", "n/a (a side did not run)", "-"])
            report.target(f"pretraining step, {size} {precision}: tfbert / fastest peer",
                          ours / max(peers.values()) if ours and peers else None, 1.3)
            if size == "base" and ours and precision in peaks:
                report.target(f"MFU, base {precision}",
                              100 * flops * ours / args.batch_size / peaks[precision], 50,
                              unit="%")
    report.table(header, rows)
    report.note("tfbert / fastest peer (sequences/s; > 1: tfbert faster). The last column "
                "is the range of the same ratio taken round by round (each side's median "
                "step in its turn of that round; the turns of a round run one after the "
                "other), so it shows how far the machine's drift moves the ratio. With "
                "few steps a turn, the whole run's ratio (of the medians over all turns) "
                "can fall outside that range:")
    report.table(["size", "precision", "fastest peer", "tfbert / fastest peer",
                  "round by round"], ratio_rows)

    def skipped_percent(size):
        shape = (1, args.seq_length, args.max_predictions)
        return 100 * tfbert_skipped_flops(size, *shape) / model_flops(size, *shape)

    report.note(
        "Notes: KerasHub has no NSP head, so its step does less (MLM only; pooler + NSP "
        "are 6H^2 + 12H of the FLOPs counted per sequence). Model FLOPs per step follow the "
        "formula in this script's docstring (6 x matmul parameters x tokens + 12 L S^2 H "
        "per sequence, the MLM head on the masked positions only) and are the same for "
        "every row. MFU = model FLOPs / step time / the measured peak of that precision. "
        "tfbert's step computes its last encoder block only at the rows its heads read "
        f"(the first token and the {args.max_predictions} masked positions; keys and "
        "values at every row): the same loss and gradients for "
        + ", ".join(f"{skipped_percent(size):.0f}% fewer FLOPs than counted at {size}"
                    for size in args.sizes)
        + ", so its MFU counts work it skips."
        + bf16_note(peak.get("device"), peaks)
        + " " + host_memory_note(args.host_memory, {SHORT[k]: " / ".join(sorted(v))
                                                    for k, v in allocators.items()})
        + " Versions: " + "; ".join(f"{SHORT[k]}: {v}"
                                    for k, v in versions.items() if v) + ".")
    if args.profile:
        profile_report(report, args, results)
    report.note(f"Total wall time {time.time() - started:.0f} s.")
    report.bar_chart(labels, None, "sequences/s", groups=groups)
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
