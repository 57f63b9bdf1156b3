import json
import os
import subprocess
import sys

import helpers
import pytest
from tfbert.train import cpu_xla

FLAG = "--xla_cpu_use_xnnpack"
WIDTH = "--xla_cpu_prefer_vector_width"


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


def test_only_float32_under_xla_on_an_avx512_cpu_wants_wide_vectors(tmp_path, monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    avx512, avx2 = cpuinfo(tmp_path, "avx2 avx512f avx512bw"), str(tmp_path / "none")
    assert cpu_xla.wants_wide_vectors("float32", True, True, avx512)
    assert not cpu_xla.wants_wide_vectors("mixed_bfloat16", True, True, avx512)
    assert not cpu_xla.wants_wide_vectors("float32", False, True, avx512)
    assert not cpu_xla.wants_wide_vectors("float32", True, False, avx512)
    assert not cpu_xla.wants_wide_vectors("float32", True, True, avx2)
    monkeypatch.setenv("XLA_FLAGS", f"{WIDTH}=256")
    assert not cpu_xla.wants_wide_vectors("float32", True, True, avx512)


def test_tuned_flags_name_each_flag_for_its_precision(tmp_path, monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    both = cpuinfo(tmp_path, "avx512f avx512_bf16")
    assert cpu_xla.tuned_flags("float32", True, True, both) == [
        (f"{WIDTH}=512", "512-bit vectors")]
    assert cpu_xla.tuned_flags("mixed_bfloat16", True, True, both) == [
        (f"{FLAG}=true", "XNNPACK matmuls")]
    assert cpu_xla.tuned_flags("mixed_float16", True, True, both) == []
    assert cpu_xla.tuned_flags("float32", False, True, both) == []


def test_turning_them_on_keeps_the_other_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    both = cpuinfo(tmp_path, "avx512f avx512_bf16")
    assert cpu_xla.use_tuned_flags("mixed_bfloat16", True, True, both)
    assert os.environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {FLAG}=true"
    assert cpu_xla.use_tuned_flags("float32", True, True, both)
    assert os.environ["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {FLAG}=true {WIDTH}=512"
    assert cpu_xla.use_tuned_flags("float32", True, True, both) == []  # named now
    assert os.environ["XLA_FLAGS"].count(WIDTH) == 1


# Three pretraining steps of the tiny model through the trainer in the dtype given, in a
# fresh process (XLA reads its flags once per process): it prints the trainer's log and
# the losses.
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
    task="pretraining", model=ModelSection(preset="tiny", dtype=sys.argv[1]),
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


def train_steps(dtype, xla_flags):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    done = subprocess.run([sys.executable, "-c", STEP, dtype], env=env, capture_output=True,
                          text=True, cwd=helpers.REPO_ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not cpu_xla.cpu_has_bf16_dot(), reason="the CPU has no AVX512-BF16/AMX-BF16")
def test_a_bfloat16_step_under_xnnpack_trains_like_one_without():
    # The trainer turns XNNPACK on by itself here; every matmul of the step (the
    # attention's batched ones too) must compile under it, and learn the same.
    on, off = train_steps("mixed_bfloat16", None), train_steps("mixed_bfloat16", f"{FLAG}=false")
    assert f"mixed_bfloat16 under XLA on this CPU: XNNPACK matmuls ({FLAG}=true" in on["log"]
    assert "XNNPACK" not in off["log"]
    assert on["losses"][-1] < on["losses"][0]
    for a, b in zip(on["losses"], off["losses"]):
        assert abs(a - b) <= 0.02 * abs(b), (on["losses"], off["losses"])


@pytest.mark.skipif("avx512f" not in cpu_xla.cpu_flags(), reason="the CPU has no AVX-512")
def test_a_float32_step_with_wide_vectors_trains_like_one_without():
    # The trainer asks for 512-bit vectors by itself here; the step must compile with
    # them and compute what it does with XLA's default width, up to float rounding.
    on, off = train_steps("float32", None), train_steps("float32", f"{WIDTH}=256")
    assert f"float32 under XLA on this CPU: 512-bit vectors ({WIDTH}=512" in on["log"]
    assert "512-bit" not in off["log"]
    assert on["losses"][-1] < on["losses"][0]
    for a, b in zip(on["losses"], off["losses"]):
        assert abs(a - b) <= 1e-4 * abs(b), (on["losses"], off["losses"])
