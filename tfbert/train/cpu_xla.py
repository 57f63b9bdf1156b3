"""XLA's XNNPACK dots for bfloat16 training on CPUs with AVX512-BF16.

XLA compiles a bfloat16 matmul on the CPU by converting both operands to float32 and
multiplying in float32, so mixed_bfloat16 training ran no faster than float32 there. XLA
can hand matmuls to XNNPACK instead (XLA_FLAGS=--xla_cpu_use_xnnpack=true), whose bf16
kernels use the AVX512-BF16 dot-product instructions: 735-837 GFLOP/s against 366-379
for XLA's own on BERT-base's shapes (2-core AMD EPYC with AVX512-BF16; the numbers and
the gradient forms that suit each are in `tfbert.layers.dense`). In float32 XNNPACK was
slower than XLA's own matmul, so only bfloat16 runs turn it on.

The flag is process-wide and XLA reads it once, at the process's first XLA compile, so
the trainer sets it (when it applies) before it compiles anything; a process that has
already compiled something keeps what it had. An XLA_FLAGS that names the flag is left
as it is (--xla_cpu_use_xnnpack=false keeps it off).
"""

import os

from tfbert.layers.dense import XNNPACK_FLAG, xnnpack_dots, xnnpack_setting

CPU_FLAGS_FILE = "/proc/cpuinfo"
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16_dot(cpuinfo=CPU_FLAGS_FILE):
    """Whether the CPU has bfloat16 dot-product instructions (Linux x86: /proc/cpuinfo)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in BF16_CPU_FLAGS)
    except OSError:
        pass
    return False


def wants_xnnpack(dtype_policy, jit_compile, on_cpu, cpuinfo=CPU_FLAGS_FILE):
    """Whether a run should use XNNPACK dots: mixed_bfloat16 under XLA on such a CPU, and
    XLA_FLAGS does not already say."""
    if dtype_policy != "mixed_bfloat16" or not jit_compile or not on_cpu:
        return False
    return xnnpack_setting() is None and cpu_has_bf16_dot(cpuinfo)


def xla_flags_with_xnnpack():
    """XLA_FLAGS as it is, with XNNPACK dots turned on at the end."""
    return f"{os.environ.get('XLA_FLAGS', '')} {XNNPACK_FLAG}=true".strip()


def use_xnnpack_dots():
    """Adds the flag to XLA_FLAGS; True when XNNPACK dots are now asked for."""
    os.environ["XLA_FLAGS"] = xla_flags_with_xnnpack()
    return xnnpack_dots()
