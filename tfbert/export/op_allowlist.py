"""Which ops an export may use: core TensorFlow's and TF Text's, never a Python function.

TF Serving 2.20 is a C++ binary linking core TensorFlow's kernels and TF Text's
`ops_lib`; a SavedModel holding any other op fails to load there (NotFound: Op type not
registered), and `PyFunc` / `EagerPyFunc` (tf.py_function, tf.numpy_function) need a
Python interpreter it does not have. The check reads the ops straight from
saved_model.pb: the graph's nodes and the nodes of every function in its library.

The allowed set is computed, not typed in: the ops registered in a fresh Python process
that imports only tensorflow (core), plus the ops that `import tensorflow_text` adds
there (TF Text), minus the Python-function ops.
"""

import functools
import json
import os
import subprocess
import sys

from tensorflow.core.protobuf import saved_model_pb2

# Registered by core TensorFlow's Python build, but they call back into Python.
PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})

_REGISTRY_SCRIPT = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
from tensorflow.core.framework import op_def_pb2
from tensorflow.python.client import pywrap_tf_session

def registered():
    buf = pywrap_tf_session.TF_GetAllOpList()
    try:
        data = pywrap_tf_session.TF_GetBuffer(buf)
    finally:
        pywrap_tf_session.TF_DeleteBuffer(buf)
    ops = op_def_pb2.OpList()
    ops.ParseFromString(data)
    return {op.name for op in ops.op}

core = registered()
import tensorflow_text  # noqa: F401
text = registered() - core
json.dump({"tensorflow": tf.__version__, "tensorflow_text": tensorflow_text.__version__,
           "core": sorted(core), "text": sorted(text)}, sys.stdout)
"""


@functools.lru_cache(maxsize=1)
def registered_ops():
    """{"core": frozenset, "text": frozenset, "tensorflow": version, "tensorflow_text":
    version}: the ops each registers, read in a fresh process (once per process)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", _REGISTRY_SCRIPT], capture_output=True, text=True, env=env,
        timeout=600, check=False,
    )
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"could not list the registered TensorFlow ops: {tail[0]}")
    info = json.loads(result.stdout)
    info["core"] = frozenset(info["core"])
    info["text"] = frozenset(info["text"])
    return info


def allowed_ops():
    """Core TensorFlow ops and TF Text ops, without the Python-function ops."""
    info = registered_ops()
    return (info["core"] | info["text"]) - PYTHON_OPS


def read_saved_model(export_path):
    """The SavedModel protobuf of an export directory (its saved_model.pb)."""
    path = os.path.join(export_path, "saved_model.pb")
    proto = saved_model_pb2.SavedModel()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def graph_ops(saved_model):
    """{op name: sorted places it is used ("graph" or "function <name>")} over every
    meta graph's nodes and every node of every function in its library. A node whose
    op is a library function's name is a call, not an op; that function's own nodes
    are counted instead."""
    uses = {}
    for meta_graph in saved_model.meta_graphs:
        graph = meta_graph.graph_def
        functions = {f.signature.name for f in graph.library.function}
        for node in graph.node:
            if node.op not in functions:
                uses.setdefault(node.op, set()).add("graph")
        for function in graph.library.function:
            for node in function.node_def:
                if node.op not in functions:
                    uses.setdefault(node.op, set()).add(f"function {function.signature.name}")
    return {op: sorted(places) for op, places in uses.items()}


def disallowed_ops(saved_model, allowed=None):
    """{op: places} of the ops that are not allowed (empty when the export is clean)."""
    allowed = allowed_ops() if allowed is None else allowed
    return {op: places for op, places in graph_ops(saved_model).items()
            if op not in allowed or op in PYTHON_OPS}


def check_ops(export_path, allowed=None):
    """Raises ValueError naming the first offending op if the export at `export_path`
    uses an op that is neither core TensorFlow nor TF Text, or a Python function."""
    bad = disallowed_ops(read_saved_model(export_path), allowed)
    if bad:
        op = min(bad)
        why = ("calls back into Python" if op in PYTHON_OPS
               else "is neither a core TensorFlow op nor a TF Text op")
        more = f" (and {len(bad) - 1} more: {', '.join(sorted(bad)[1:])})" if len(bad) > 1 else ""
        raise ValueError(
            f"{export_path}: op {op} in {bad[op][0]} {why}; TF Serving cannot run it{more}"
        )
