"""Loads exports the way a server without tfbert would: tensorflow + tensorflow_text only.

Run as `python load_export.py SPEC.pkl RESULT.pkl` in a fresh process. SPEC is a pickled
{"exports": [{"path": ..., "calls": [{"signature", "inputs": {name: numpy array},
"repeat": n}]}]}; RESULT gets each call's outputs (numpy), its fastest time over the
repeats, and what this process had imported. tfbert is made unimportable here, so a
SavedModel that needed it would fail to load.
"""

import os
import pickle
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class _Hidden:
    """Wraps a meta path finder so that it cannot find tfbert."""

    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tfbert":
            return None
        find = getattr(self.inner, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attr):
        return getattr(self.inner, attr)


sys.meta_path[:] = [_Hidden(finder) for finder in sys.meta_path]
sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]


def _registered_ops(tf_session, op_def_pb2):
    buf = tf_session.TF_GetAllOpList()
    try:
        data = tf_session.TF_GetBuffer(buf)
    finally:
        tf_session.TF_DeleteBuffer(buf)
    ops = op_def_pb2.OpList()
    ops.ParseFromString(data)
    return {op.name for op in ops.op}


def main(spec_path, result_path):
    import tensorflow as tf
    from tensorflow.core.framework import op_def_pb2
    from tensorflow.python.client import pywrap_tf_session

    core_ops = _registered_ops(pywrap_tf_session, op_def_pb2)
    import tensorflow_text  # noqa: F401  (registers the TF Text ops the exports use)

    text_ops = _registered_ops(pywrap_tf_session, op_def_pb2) - core_ops

    with open(spec_path, "rb") as f:
        spec = pickle.load(f)
    results = {"exports": []}
    for export in spec["exports"]:
        started = time.perf_counter()
        loaded = tf.saved_model.load(export["path"])
        load_s = time.perf_counter() - started
        calls = []
        for call in export["calls"]:
            function = loaded.signatures[call["signature"]]
            inputs = {name: tf.constant(value) for name, value in call["inputs"].items()}
            try:
                best = None
                for _ in range(call.get("repeat", 1)):
                    started = time.perf_counter()
                    outputs = function(**inputs)
                    outputs = {k: v.numpy() for k, v in outputs.items()}
                    elapsed = time.perf_counter() - started
                    best = elapsed if best is None else min(best, elapsed)
                calls.append({"outputs": outputs, "seconds": best, "error": None})
            except Exception as e:  # reported back to the test, which fails on it
                calls.append({"outputs": None, "seconds": None,
                              "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"})
        results["exports"].append({"load_seconds": load_s, "calls": calls,
                                   "type": type(loaded).__name__})
    results["tfbert_modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "tfbert")
    results["keras_imported"] = "keras" in sys.modules
    results["core_ops"] = core_ops
    results["text_ops"] = text_ops
    with open(result_path, "wb") as f:
        pickle.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
