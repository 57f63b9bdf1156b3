import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import helpers
from tfbert.train.__main__ import main as train_main

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_trainer.py")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, pretraining_records):
    """A tiny pretraining recipe over real IMDB records (see conftest)."""
    records, vocab_file = pretraining_records
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(
        "task: pretraining\n"
        "model:\n"
        "  preset: tiny\n"
        "  encoder_overrides: {num_layers: 1, hidden_dim: 32, num_heads: 2, intermediate_dim: 64,\n"
        "                      max_sequence_length: 64}\n"
        "data:\n"
        f"  train_files: {records['train']}\n"
        f"  eval_files: {records['eval']}\n"
        f"  vocab_file: {vocab_file}\n"
        "  max_seq_length: 64\n"
        "  max_predictions_per_seq: 10\n"
        "  shuffle_buffer: 100\n"
        "  seed: 7\n"
        "  deterministic: true\n"
        "trainer:\n"
        "  train_steps: 12\n"
        "  global_batch_size: 8\n"
        "  learning_rate: 1e-3\n"
        "  warmup_steps: 2\n"
        "  steps_per_loop: 2\n"
        "  checkpoint_interval: 4\n"
        "  eval_steps: 2\n"
    )
    return str(path)


def run_trainer(recipe, model_dir, strategy="one_device", cpu_devices=1, overrides=(), env=None,
                wait=True):
    weights = os.path.join(model_dir + ".weights.npz")
    cmd = [sys.executable, RUNNER, recipe, model_dir, strategy, weights,
           "--cpu_devices", str(cpu_devices)]
    for item in overrides:
        cmd += ["--set", item]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=helpers.REPO_ROOT)
    if not wait:
        return proc, weights
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return load_weights(weights), out


def load_weights(path):
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def assert_weights_close(a, b, atol):
    assert len(a) == len(b)
    worst = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
    assert worst <= atol, f"max abs weight difference {worst} > {atol}"


def test_cli_trains_evaluates_and_writes_a_model_directory(recipe, tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    assert train_main([f"--config={recipe}", f"--model_dir={model_dir}",
                       "--set", "trainer.train_steps=4"]) == 0
    out = capsys.readouterr().out
    assert "step 4/4 |" in out and "steps/s" in out and "ETA" in out
    assert "eval at step 4 | mlm_loss" in out
    for name in ("config.json", "vocab.txt", "model.weights.h5", "task.json"):
        assert os.path.isfile(os.path.join(model_dir, name)), name
    assert json.load(open(os.path.join(model_dir, "task.json")))["task"] == "pretraining"
    assert os.listdir(os.path.join(model_dir, "logs")) and os.path.isfile(
        os.path.join(model_dir, "checkpoints", "checkpoint"))
    # The written directory loads as an encoder.
    import tfbert
    encoder = tfbert.BertEncoder.from_preset(model_dir)
    assert encoder.hidden_dim == 32


@pytest.mark.parametrize("note", ["note: host memory is not pooled (test)", None])
def test_the_trainer_logs_the_note_once_on_the_cpu(recipe, tmp_path, capsys, monkeypatch, note):
    import tfbert.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "pooling_note", lambda: note)
    assert train_main([f"--config={recipe}", f"--model_dir={tmp_path / 'run'}", "--mode=train",
                       "--set", "trainer.train_steps=2"]) == 0
    out = capsys.readouterr().out
    assert out.count("host memory is not pooled") == (1 if note else 0)
    assert "step 2/2 |" in out


def test_mirrored_over_two_cpu_devices_equals_one_device(recipe, tmp_path):
    no_dropout = ["model.encoder_overrides.dropout=0.0",
                  "model.encoder_overrides.attention_dropout=0.0",
                  "trainer.train_steps=6"]
    one, _ = run_trainer(recipe, str(tmp_path / "one"), overrides=no_dropout)
    two, out = run_trainer(recipe, str(tmp_path / "two"), strategy="mirrored", cpu_devices=2,
                           overrides=no_dropout)
    # Training moved the weights, and both strategies moved them the same way.
    init, _ = run_trainer(recipe, str(tmp_path / "zero"), overrides=no_dropout + ["trainer.train_steps=0"])
    assert max(float(np.max(np.abs(x - y))) for x, y in zip(one, init)) > 1e-3
    assert_weights_close(one, two, atol=1e-5)


def test_kill_and_resume_ends_equal_to_an_uninterrupted_run(recipe, tmp_path):
    settings = ["trainer.train_steps=16", "trainer.checkpoint_interval=4"]
    straight, _ = run_trainer(recipe, str(tmp_path / "straight"), overrides=settings)

    model_dir = str(tmp_path / "killed")
    proc, _ = run_trainer(recipe, model_dir, overrides=settings, wait=False)
    marker = os.path.join(model_dir, "checkpoints", "ckpt-8.index")
    deadline = time.time() + 300
    while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(model_dir, "model.weights.h5"))

    resumed, out = run_trainer(recipe, model_dir, overrides=settings)
    assert "resumed from" in out
    assert "step 16/16" in out
    assert_weights_close(straight, resumed, atol=1e-5)


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(recipe, tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    assert train_main([f"--config={recipe}", f"--model_dir={model_dir}", "--mode=train",
                       "--set", "trainer.train_steps=4"]) == 0
    ckpt = os.path.join(model_dir, "checkpoints")
    before = {f: open(os.path.join(ckpt, f), "rb").read() for f in os.listdir(ckpt)}
    capsys.readouterr()
    # An absurd learning rate without clipping blows the weights up within a few steps.
    code = train_main([f"--config={recipe}", f"--model_dir={model_dir}", "--mode=train",
                       "--set", "trainer.train_steps=40", "--set", "trainer.learning_rate=1e30",
                       "--set", "trainer.clip_norm=0", "--set", "trainer.warmup_steps=0",
                       "--set", "trainer.checkpoint_interval=1000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("error: loss is not finite at step")
    assert "ckpt-4" in err[0]
    after = {f: open(os.path.join(ckpt, f), "rb").read() for f in os.listdir(ckpt)}
    assert after == before


def test_tpu_strategy_without_a_tpu_fails_with_one_line(recipe, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tfbert.train", f"--config={recipe}",
         f"--model_dir={tmp_path / 'run'}", "--strategy=tpu"],
        capture_output=True, text=True, cwd=helpers.REPO_ROOT, timeout=300,
    )
    assert proc.returncode == 1
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert lines[-1].startswith("error: --strategy=tpu: no TPU")
    assert "Traceback" not in proc.stderr


def test_bad_override_and_missing_files_fail_with_one_line(recipe, tmp_path, capsys):
    assert train_main([f"--config={recipe}", f"--model_dir={tmp_path}", "--set", "trainer.steps=3"]) == 1
    assert "no key 'steps' under trainer" in capsys.readouterr().err
    assert train_main([f"--config={recipe}", f"--model_dir={tmp_path}",
                       "--set", "data.train_files=/nonexistent/*.tfrecord"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/nonexistent/*.tfrecord" in err[0]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_multi_worker_mirrored_finish_with_identical_weights(recipe, tmp_path):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    settings = ["trainer.train_steps=4", "trainer.checkpoint_interval=2",
                "trainer.jit_compile=false"]
    procs = []
    for index in range(2):
        env = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(run_trainer(recipe, str(tmp_path / f"w{index}"), strategy="multi_worker_mirrored",
                                 overrides=settings, env=env, wait=False))
    outputs = []
    for proc, _ in procs:
        out, _ = proc.communicate(timeout=600)
        outputs.append(out)
        assert proc.returncode == 0, out
    w0, w1 = (load_weights(path) for _, path in procs)
    assert_weights_close(w0, w1, atol=0.0)
    # Only the chief (worker 0) keeps checkpoints.
    assert os.path.exists(tmp_path / "w0" / "checkpoints" / "checkpoint")
    assert not os.path.exists(tmp_path / "w1" / "checkpoints")


@pytest.mark.parametrize("overrides", [
    ["model.dtype=mixed_bfloat16"],
    ["model.dtype=mixed_float16"],
    ["trainer.optimizer=lamb"],
    ["trainer.gradient_accumulation_steps=2", "trainer.decay=polynomial", "trainer.decay_power=2.0"],
], ids=["bf16", "fp16", "lamb", "accumulation"])
def test_precision_and_optimizer_options_train_with_finite_loss(recipe, tmp_path, capsys, overrides):
    args = [f"--config={recipe}", f"--model_dir={tmp_path / 'run'}", "--mode=train",
            "--set", "trainer.train_steps=4"]
    for item in overrides:
        args += ["--set", item]
    assert train_main(args) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("step 4/4")][0]
    assert "nan" not in line and "inf" not in line


@pytest.mark.parametrize("nsp", [True, False])
def test_trains_from_raw_text_with_dynamic_masking(recipe, tmp_path, capsys, nsp):
    import pretrain_corpus

    corpus = pretrain_corpus.write_imdb_corpus(str(tmp_path / "imdb.txt"), 60)
    assert train_main([f"--config={recipe}", f"--model_dir={tmp_path / 'run'}",
                       "--set", "data.dynamic_masking=true", "--set", f"data.nsp={str(nsp).lower()}",
                       "--set", f"data.train_files={corpus}", "--set", f"data.eval_files={corpus}",
                       "--set", "trainer.train_steps=4"]) == 0
    out = capsys.readouterr().out
    line = [l for l in out.splitlines() if l.startswith("step 4/4")][0]
    assert "mlm_loss" in line and "nan" not in line
    # Without NSP there is no NSP metric (its labels would all be 0).
    assert ("nsp_accuracy" in line) == nsp
