import json
import os
import subprocess
import sys

import helpers
import pytest
from tfbert.train import cpu_xla

FLAG = "--xla_cpu_use_xnnpack"


def cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\n")
    return str(path)


def test_the_cpu_check_reads_the_flags_line(tmp_path):
    assert cpu_xla.cpu_has_bf16_dot(cpuinfo(tmp_path, "fpu sse2 avx512f avx512_bf16"))
    assert cpu_xla.cpu_has_bf16_dot(cpuinfo(tmp_path, "fpu amx_tile amx_bf16"))
    assert not cpu_xla.cpu_has_bf16_dot(cpuinfo(tmp_path, "fpu sse2 avx2 avx512f avx512_vnni"))
    assert not cpu_xla.cpu_has_bf16_dot(str(tmp_path / "missing"))


def test_only_bfloat16_under_xla_on_such_a_cpu_wants_xnnpack(tmp_path, monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    bf16, plain = cpuinfo(tmp_path, "avx512f avx512_bf16"), str(tmp_path / "none")
    assert cpu_xla.wants_xnnpack("mixed_bfloat16", True, True, bf16)
    assert not cpu_xla.wants_xnnpack("float32", True, True, bf16)
    assert not cpu_xla.wants_xnnpack("mixed_float16", True, True, bf16)
    assert not cpu_xla.wants_xnnpack("mixed_bfloat16", False, True, bf16)
    assert not cpu_xla.wants_xnnpack("mixed_bfloat16", True, False, bf16)
    assert not cpu_xla.wants_xnnpack("mixed_bfloat16", True, True, plain)


@pytest.mark.parametrize("flags", [f"{FLAG}=false", f"{FLAG}=true", f"--xla_dump_to=/x {FLAG}"])
def test_an_xla_flags_that_names_it_is_left_alone(tmp_path, monkeypatch, flags):
    monkeypatch.setenv("XLA_FLAGS", flags)
    assert not cpu_xla.wants_xnnpack("mixed_bfloat16", True, True,
                                     cpuinfo(tmp_path, "avx512_bf16"))


def test_turning_it_on_keeps_the_other_flags(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    assert cpu_xla.use_xnnpack_dots()
    assert os.environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {FLAG}=true"


# A bfloat16 pretraining step of the tiny model through the trainer, in a fresh process
# (XLA reads its flags once per process): it prints the trainer's log and the losses.
STEP = """
import json, sys, tempfile
import tfbert.train
import numpy as np
import tensorflow as tf
from tfbert.config import DataSection, ExperimentConfig, ModelSection, TrainerSection
from tfbert.train.strategies import make_strategy
from tfbert.train.trainer import Trainer

rng = np.random.default_rng(0)
B, S, P = 4, 32, 5
inputs = {"input_word_ids": rng.integers(5, 100, (B, S)).astype("int32"),
          "input_mask": np.ones((B, S), "int32"),
          "input_type_ids": (np.arange(S)[None] >= S // 2).repeat(B, 0).astype("int32"),
          "masked_lm_positions": np.sort(rng.permutation(np.arange(1, S))[:P])[None].repeat(B, 0).astype("int32")}
labels = {"masked_lm_ids": rng.integers(5, 100, (B, P)).astype("int32"),
          "masked_lm_weights": np.ones((B, P), "float32"),
          "next_sentence_labels": rng.integers(0, 2, (B, 1)).astype("int32")}
config = ExperimentConfig(
    task="pretraining", model=ModelSection(preset="tiny", dtype="mixed_bfloat16"),
    data=DataSection(max_seq_length=S, max_predictions_per_seq=P),
    trainer=TrainerSection(global_batch_size=B, learning_rate=1e-3, train_steps=10, seed=0,
                           jit_compile=True))
log = []
class Out:
    def write(self, text): log.append(text)
    def flush(self): pass
trainer = Trainer(config, make_strategy("one_device"), tempfile.mkdtemp(), out=Out())
ds = tf.data.Dataset.from_tensors((inputs, labels)).repeat()
trainer.task.dataset = lambda input_context, training: ds
iterator = iter(trainer._distributed_dataset(training=True))
loop = trainer._build_train_loop()
losses = [float(loop(iterator, tf.constant(1))["mlm_loss_sum"]) for _ in range(3)]
print(json.dumps({"log": "".join(log), "losses": losses}))
"""


def bf16_step(xla_flags):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    done = subprocess.run([sys.executable, "-c", STEP], env=env, capture_output=True,
                          text=True, cwd=helpers.REPO_ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not cpu_xla.cpu_has_bf16_dot(), reason="the CPU has no AVX512-BF16/AMX-BF16")
def test_a_bfloat16_step_under_xnnpack_trains_like_one_without():
    # The trainer turns XNNPACK on by itself here; every matmul of the step (the
    # attention's batched ones too) must compile under it, and learn the same.
    on, off = bf16_step(None), bf16_step(f"{FLAG}=false")
    assert "XNNPACK matmuls on" in on["log"]
    assert "XNNPACK" not in off["log"]
    assert on["losses"][-1] < on["losses"][0]
    for a, b in zip(on["losses"], off["losses"]):
        assert abs(a - b) <= 0.02 * abs(b), (on["losses"], off["losses"])
