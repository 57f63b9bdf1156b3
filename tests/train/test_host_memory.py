import json
import os
import subprocess
import sys

import helpers
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


def probe(order, **env):
    environ = {k: v for k, v in os.environ.items()
               if k not in (host_memory.USE_BFC, host_memory.LIMIT_MB)}
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
