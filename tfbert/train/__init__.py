"""Training: tasks, optimizers, strategies and the trainer (`python -m tfbert.train`).

Importing this package asks TensorFlow to pool host memory (see `host_memory`): it must
come before TensorFlow's first op to take effect.
"""

from tfbert.train.host_memory import pool_host_memory

pool_host_memory()
