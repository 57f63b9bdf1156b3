"""Serving: a TF Serving client and a reference TF Serving server.

`Client` talks to `tensorflow/serving` (or to `python -m tfbert.serve`) over gRPC or REST;
`ModelServer` is the Python PredictionService behind `python -m tfbert.serve`.
"""

from tfbert.serving.client import Client
from tfbert.serving.server import ModelServer
from tfbert.serving.serving_error import ServingError

__all__ = ["Client", "ModelServer", "ServingError"]
