"""Host memory for training on the CPU: TensorFlow's BFC allocator instead of malloc.

TensorFlow allocates host tensors with malloc unless told otherwise. A compiled training
step asks for its temporary buffers again on every step, and glibc serves large requests
with fresh mmaps: every step faults in and zeroes those pages anew. In BERT-base's
pretraining step (batch 8 x 128, 2-core CPU) the kernel's page-fault handling took
about 4% of the CPU time (perf), and the step took a median of 4,448 ms with malloc
against 3,926 ms with the BFC allocator, which keeps freed memory for the next step
(three runs of four steps each, alternating). TensorFlow already uses BFC on GPUs; on
the CPU it is one environment variable, TF_CPU_ALLOCATOR_USE_BFC, read once, when
TensorFlow creates its CPU device (at its first op).

Importing `tfbert.train` sets it (see `pool_host_memory`), so a training script that
imports tfbert.train before it runs TensorFlow gets it; `python -m tfbert.train` does. An
explicit TF_CPU_ALLOCATOR_USE_BFC=false keeps malloc. The pool never hands memory back
to the system, which suits a training process and is why only training turns it on.
Processes started from such a script inherit the variable (the quickstart's reference
server does; a short-lived one, so that is harmless there).

Where TensorFlow turns oneDNN on (by default on x86 CPUs with AVX-512 VNNI/BF16 or AMX;
it logs "oneDNN custom operations are on"; TF_ENABLE_ONEDNN_OPTS=1 elsewhere), its CPU
allocator is oneDNN's, which pools large buffers itself whatever TF_CPU_ALLOCATOR_USE_BFC
says: such a process is pooled from the start, and `host_memory_pooled` says so.
"""

import os

USE_BFC = "TF_CPU_ALLOCATOR_USE_BFC"
# TensorFlow caps the BFC pool at 64 GiB unless told otherwise; malloc has no such cap.
LIMIT_MB = "TF_CPU_BFC_MEM_LIMIT_IN_MB"


def physical_memory_mb():
    """The machine's memory in MiB, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    except (ValueError, OSError, AttributeError):
        return None


def pool_host_memory():
    """Asks TensorFlow for the BFC allocator on the CPU, capped at the machine's memory.

    Variables the user set are kept. Takes effect only if TensorFlow has not run an op
    yet; `host_memory_pooled` says afterwards whether it did.
    """
    os.environ.setdefault(USE_BFC, "true")
    memory = physical_memory_mb()
    if memory:
        os.environ.setdefault(LIMIT_MB, str(memory))


def host_memory_pooled():
    """Whether TensorFlow's CPU allocator is the BFC pool (it keeps statistics; malloc
    does not). Starts TensorFlow if it has not started."""
    import tensorflow as tf

    try:
        tf.config.experimental.get_memory_info("CPU:0")
    except ValueError:
        return False
    return True


def pooling_note():
    """One line for the training log when the pool was asked for but TensorFlow had
    started without it; None when there is nothing to say."""
    if os.environ.get(USE_BFC, "").lower() not in ("true", "1") or host_memory_pooled():
        return None
    return ("note: host memory is not pooled (TensorFlow ran an op before tfbert.train was "
            "imported), so steps on the CPU run slower; import tfbert.train first, or set "
            f"{USE_BFC}=true before starting Python")
