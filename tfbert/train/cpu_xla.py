"""XLA flags the trainer adds for training on a CPU: XNNPACK dots in bfloat16, 512-bit
vectors in float32.

XNNPACK dots, for mixed_bfloat16 on CPUs with AVX512-BF16. XLA compiles a bfloat16
matmul on the CPU by converting both operands to float32 and multiplying in float32, so
mixed_bfloat16 training ran no faster than float32 there. XLA can hand matmuls to
XNNPACK instead (XLA_FLAGS=--xla_cpu_use_xnnpack=true), whose bf16 kernels use the
AVX512-BF16 dot-product instructions: 735-837 GFLOP/s against 366-379 for XLA's own on
BERT-base's shapes (2-core AMD EPYC with AVX512-BF16; the numbers and the gradient forms
that suit each are in `tfbert.layers.dense`). In float32 XNNPACK was slower than XLA's
own matmul, so only bfloat16 runs turn it on.

512-bit vectors, for float32 on CPUs with AVX-512. XLA compiles its loops (the fusions
around the matmuls: LayerNorm, GELU, softmax, dropout, the optimizer's update) for
256-bit vectors unless told otherwise (--xla_cpu_prefer_vector_width, 256 by default;
512-bit instructions lower the clock of some older Intel CPUs; the matmuls use AVX-512
either way). With 512 the BERT-base float32 pretraining step (batch 8 x 128, 2-core AMD
EPYC, Zen 5) took a median of 1,627 against 1,649 ms with the two processes taking turns
(6 turns of 3 steps), and 1,620 against 1,694 and 1,649 against 1,718 ms one process
after the other (6 steps each): 1-4% less. In mixed_bfloat16 the same flag made the step
slower (1,290 against 1,248 ms, taking turns), so bfloat16 runs keep XLA's default.

The flags are process-wide and XLA reads them once, at the process's first XLA compile,
so the trainer sets them (where they apply) before it compiles anything; a process that
has already compiled something keeps what it had. A flag XLA_FLAGS already names is left
as it is (--xla_cpu_use_xnnpack=false or --xla_cpu_prefer_vector_width=256 keep XLA's
choice).
"""

import os

from tfbert.layers.dense import XNNPACK_FLAG, xla_flag_value, xnnpack_setting

CPU_FLAGS_FILE = "/proc/cpuinfo"
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
WIDE_VECTOR_CPU_FLAG = "avx512f"
VECTOR_WIDTH_FLAG = "--xla_cpu_prefer_vector_width"


def cpu_flags(cpuinfo=CPU_FLAGS_FILE):
    """The CPU's feature flags (Linux x86: the flags line of /proc/cpuinfo); empty where
    the file is missing or has none."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16_dot(cpuinfo=CPU_FLAGS_FILE):
    """Whether the CPU has bfloat16 dot-product instructions."""
    return any(flag in cpu_flags(cpuinfo) for flag in BF16_CPU_FLAGS)


def wants_xnnpack(dtype_policy, jit_compile, on_cpu, cpuinfo=CPU_FLAGS_FILE):
    """Whether a run should use XNNPACK dots: mixed_bfloat16 under XLA on such a CPU, and
    XLA_FLAGS does not already say."""
    if dtype_policy != "mixed_bfloat16" or not jit_compile or not on_cpu:
        return False
    return xnnpack_setting() is None and cpu_has_bf16_dot(cpuinfo)


def wants_wide_vectors(dtype_policy, jit_compile, on_cpu, cpuinfo=CPU_FLAGS_FILE):
    """Whether a run should ask XLA for 512-bit vectors: float32 under XLA on a CPU with
    AVX-512, and XLA_FLAGS does not already say."""
    if dtype_policy != "float32" or not jit_compile or not on_cpu:
        return False
    return (xla_flag_value(VECTOR_WIDTH_FLAG) is None
            and WIDE_VECTOR_CPU_FLAG in cpu_flags(cpuinfo))


def tuned_flags(dtype_policy, jit_compile, on_cpu, cpuinfo=CPU_FLAGS_FILE):
    """[(flag=value, what it asks for)]: the XLA flags the trainer adds for such a run:
    XNNPACK matmuls for mixed_bfloat16 on a CPU with bf16 dot instructions, 512-bit
    vectors for float32 on a CPU with AVX-512, each unless XLA_FLAGS names its flag."""
    tuned = []
    if wants_xnnpack(dtype_policy, jit_compile, on_cpu, cpuinfo):
        tuned.append((f"{XNNPACK_FLAG}=true", "XNNPACK matmuls"))
    if wants_wide_vectors(dtype_policy, jit_compile, on_cpu, cpuinfo):
        tuned.append((f"{VECTOR_WIDTH_FLAG}=512", "512-bit vectors"))
    return tuned


def xla_flags_with(assignments):
    """XLA_FLAGS as it is, with `assignments` (flag=value strings) added at the end."""
    return " ".join([os.environ.get("XLA_FLAGS", "")] + list(assignments)).strip()


def use_tuned_flags(dtype_policy, jit_compile, on_cpu, cpuinfo=CPU_FLAGS_FILE):
    """Adds tuned_flags to XLA_FLAGS; returns them."""
    tuned = tuned_flags(dtype_policy, jit_compile, on_cpu, cpuinfo)
    if tuned:
        os.environ["XLA_FLAGS"] = xla_flags_with(flag for flag, _ in tuned)
    return tuned
