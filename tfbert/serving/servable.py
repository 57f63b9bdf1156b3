"""Servable: one loaded version of a SavedModel, called by signature name.

The MetaGraphDef is read from saved_model.pb as TF Serving reads it (GetModelMetadata
returns its signature_def map verbatim, `__saved_model_init_op` included); the signatures
run as the restored concrete functions of `tf.saved_model.load`.
"""

import os
import threading

import grpc
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the TF Text ops TF Serving's binary links)
from tensorflow.core.protobuf import saved_model_pb2

from tfbert.serving.serving_error import (
    ServingError,
    code_from_number,
    invalid_argument,
)

# TF Serving's --saved_model_tags default.
SERVE_TAGS = ("serve",)


def read_meta_graph(path, tags=SERVE_TAGS):
    """The MetaGraphDef of the SavedModel at `path` whose tag set is exactly `tags`."""
    pb = os.path.join(path, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    if os.path.isfile(pb):
        with open(pb, "rb") as f:
            saved_model.ParseFromString(f.read())
    else:
        from google.protobuf import text_format

        with open(os.path.join(path, "saved_model.pbtxt"), encoding="utf-8") as f:
            text_format.Parse(f.read(), saved_model)
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == set(tags):
            return meta_graph
    available = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise ValueError(
        f"SavedModel at {path} has no MetaGraphDef with tags {sorted(tags)}; it has {available}"
    )


def is_saved_model_dir(path):
    return os.path.isfile(os.path.join(path, "saved_model.pb")) or os.path.isfile(
        os.path.join(path, "saved_model.pbtxt")
    )


class Servable:
    """A loaded model version: its signature defs, and a way to run them.

    `acquire()`/`release()` count in-flight requests so the manager can unload a version
    only once every request that holds it has finished.
    """

    def __init__(self, name, version, path):
        self.name = name
        self.version = version
        self.path = path
        self.meta_graph = read_meta_graph(path)
        self.signature_defs = dict(self.meta_graph.signature_def)
        self._module = tf.saved_model.load(path, tags=list(SERVE_TAGS))
        self._functions = dict(self._module.signatures)
        self._in_flight = 0
        self._idle = threading.Condition()

    def has_function(self, signature_name):
        return signature_name in self._functions

    def acquire(self):
        with self._idle:
            self._in_flight += 1

    def release(self):
        with self._idle:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout=None):
        """Blocks until no request holds this version; False if `timeout` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def unload(self):
        self._functions = {}
        self._module = None

    def run(self, signature_name, inputs):
        """Runs a signature on validated numpy inputs; returns every output as numpy.

        TensorFlow's own errors keep their canonical code (a bad input makes the graph raise
        InvalidArgumentError, which stays INVALID_ARGUMENT).
        """
        function = self._functions.get(signature_name)
        if function is None:
            raise ServingError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f'Serving signature key "{signature_name}" not found.',
            )
        infos = self.signature_defs[signature_name].inputs
        try:
            # The signature's dtype, not numpy's guess: an empty batch of strings is an
            # empty object array, which numpy would call float.
            tensors = {k: tf.constant(v, dtype=tf.as_dtype(infos[k].dtype))
                       for k, v in inputs.items()}
            outputs = function(**tensors)
        except tf.errors.OpError as e:
            raise ServingError(code_from_number(e.error_code), e.message) from None
        except UnicodeDecodeError:
            # TF echoed the (binary) input in its error message and could not decode it: the
            # op rejected the client's bytes.
            raise invalid_argument(
                f"signature {signature_name!r} rejected the input (TensorFlow's error "
                "message was not valid UTF-8)"
            ) from None
        except (TypeError, ValueError) as e:
            # Inputs were checked against the signature, so this is the function refusing
            # the values themselves.
            raise invalid_argument(str(e)) from None
        return {k: np.asarray(v.numpy()) for k, v in outputs.items()}
