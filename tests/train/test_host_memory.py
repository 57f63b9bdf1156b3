import json
import os
import platform
import subprocess
import sys

import helpers
import pytest
from tfbert.train import host_memory

# Each case needs a fresh process: TensorFlow reads the allocator setting once.
PROBE = """
import json, os, sys
if sys.argv[1] == "op_first":
    import tensorflow as tf
    tf.constant(1.0) + 1.0
import tfbert.train
import tensorflow as tf
from tfbert.train import host_memory
(tf.ones([256, 256]) @ tf.ones([256, 256])).numpy()
print(json.dumps({"pooled": host_memory.host_memory_pooled(),
                  "note": host_memory.pooling_note(),
                  "use_bfc": os.environ.get(host_memory.USE_BFC),
                  "limit_mb": os.environ.get(host_memory.LIMIT_MB)}))
"""


# On CPUs with AVX-512 VNNI/BF16 or AMX TensorFlow turns oneDNN on by default, and
# oneDNN's CPU allocator pools large buffers whatever TF_CPU_ALLOCATOR_USE_BFC says. The
# cases about TensorFlow's own choice between BFC and malloc turn oneDNN off, so that they
# test the same thing on every CPU.
ONEDNN = "TF_ENABLE_ONEDNN_OPTS"


def probe(order, **env):
    environ = {k: v for k, v in os.environ.items()
               if k not in (host_memory.USE_BFC, host_memory.LIMIT_MB, ONEDNN)}
    env.setdefault(ONEDNN, "0")
    done = subprocess.run([sys.executable, "-c", PROBE, order], env={**environ, **env},
                          capture_output=True, text=True, cwd=helpers.REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_tfbert_train_first_pools_host_memory_up_to_the_machines_memory():
    result = probe("import_first")
    assert result["pooled"] is True
    assert result["note"] is None
    assert result["use_bfc"] == "true"
    assert int(result["limit_mb"]) == host_memory.physical_memory_mb() > 0


def test_after_tensorflow_started_the_pool_is_missing_and_a_note_says_how_to_get_it():
    result = probe("op_first")
    assert result["pooled"] is False
    assert result["note"].startswith("note: host memory is not pooled")
    assert "import tfbert.train first" in result["note"] and host_memory.USE_BFC in result["note"]


def test_the_users_own_settings_are_kept():
    result = probe("import_first", TF_CPU_ALLOCATOR_USE_BFC="false",
                   TF_CPU_BFC_MEM_LIMIT_IN_MB="512")
    assert result == {"pooled": False, "note": None, "use_bfc": "false", "limit_mb": "512"}


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="TensorFlow's oneDNN CPU ops are an x86 build option")
def test_with_onednn_on_the_cpu_is_pooled_however_late_and_no_note_is_logged():
    result = probe("op_first", TF_ENABLE_ONEDNN_OPTS="1")
    assert result["pooled"] is True
    assert result["note"] is None
