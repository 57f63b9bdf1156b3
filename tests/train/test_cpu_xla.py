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


WANTS = {"xnnpack": (cpu_xla.wants_xnnpack, "mixed_bfloat16", "avx512f avx512_bf16"),
         "wide vectors": (cpu_xla.wants_wide_vectors, "float32", "avx2 avx512f avx512bw")}


@pytest.mark.parametrize("name", sorted(WANTS))
def test_each_flag_is_wanted_for_its_dtype_under_xla_on_such_a_cpu_only(tmp_path, monkeypatch,
                                                                         name):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    wants, dtype, flags = WANTS[name]
    such, plain = cpuinfo(tmp_path, flags), str(tmp_path / "none")
    assert wants(dtype, True, True, such)
    for other in sorted({"float32", "mixed_bfloat16", "mixed_float16"} - {dtype}):
        assert not wants(other, True, True, such)
    assert not wants(dtype, False, True, such)
    assert not wants(dtype, True, False, such)
    assert not wants(dtype, True, True, plain)


@pytest.mark.parametrize("name, flags", [
    ("xnnpack", f"{FLAG}=false"), ("xnnpack", f"{FLAG}=true"),
    ("xnnpack", f"--xla_dump_to=/x {FLAG}"),
    ("wide vectors", f"{WIDTH}=256"), ("wide vectors", f"--xla_dump_to=/x {WIDTH}=512")])
def test_an_xla_flags_that_names_it_is_left_alone(tmp_path, monkeypatch, name, flags):
    monkeypatch.setenv("XLA_FLAGS", flags)
    wants, dtype, cpu = WANTS[name]
    assert not wants(dtype, True, True, cpuinfo(tmp_path, cpu))


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
          "masked_lm_positions": np.sort(rng.permutation(np.arange(1, S))[:P])[None]
                                 .repeat(B, 0).astype("int32")}
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


# (dtype, the flag the trainer adds, how its log names it, XLA_FLAGS that keeps XLA's
# default, relative loss tolerance): the step must compile with the flag (XNNPACK: every
# matmul, the attention's batched ones too) and learn what it does without.
ADDED = {
    "xnnpack": ("mixed_bfloat16", f"{FLAG}=true", "XNNPACK matmuls", f"{FLAG}=false", 0.02),
    "wide vectors": ("float32", f"{WIDTH}=512", "512-bit vectors", f"{WIDTH}=256", 1e-4),
}


@pytest.mark.parametrize("name", [
    pytest.param("xnnpack", marks=pytest.mark.skipif(
        not cpu_xla.cpu_has_bf16_dot(), reason="the CPU has no AVX512-BF16/AMX-BF16")),
    pytest.param("wide vectors", marks=pytest.mark.skipif(
        "avx512f" not in cpu_xla.cpu_flags(), reason="the CPU has no AVX-512")),
])
def test_a_step_with_the_flag_the_trainer_adds_trains_like_one_without(name):
    dtype, flag, what, default, tolerance = ADDED[name]
    on, off = train_steps(dtype, None), train_steps(dtype, default)
    assert f"{dtype} under XLA on this CPU: {what} ({flag}" in on["log"]
    assert what not in off["log"]
    assert on["losses"][-1] < on["losses"][0]
    for a, b in zip(on["losses"], off["losses"]):
        assert abs(a - b) <= tolerance * abs(b), (on["losses"], off["losses"])
