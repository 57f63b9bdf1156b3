"""TF Serving's text-proto config files: models, batching parameters, monitoring.

The same files configure `tensorflow/serving:2.20.*` and `python -m tfbert.serve`, so they
are parsed with TF Serving's own message definitions. ModelServerConfig ships in
tensorflow-serving-api; BatchingParameters (servables/tensorflow/session_bundle_config.proto)
and MonitoringConfig (config/monitoring_config.proto) do not, so their messages are rebuilt
here field for field (names, numbers, types as in TF Serving 2.20) in a private descriptor
pool. Text format only cares about names and types, so a file that parses here parses there.
"""

import dataclasses
import os

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

_F = descriptor_pb2.FieldDescriptorProto


def _message_classes():
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)

    batching = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = batching.message_type.add(name="BatchingParameters")
    fields = [
        ("max_batch_size", 1, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, ".google.protobuf.StringValue"),
        ("enable_large_batch_splitting", 8, ".google.protobuf.BoolValue"),
        ("max_execution_batch_size", 9, ".google.protobuf.Int64Value"),
    ]
    for name, number, type_name in fields:
        message.field.add(
            name=name, number=number, label=_F.LABEL_OPTIONAL, type=_F.TYPE_MESSAGE,
            type_name=type_name,
        )
    message.field.add(
        name="allowed_batch_sizes", number=6, label=_F.LABEL_REPEATED, type=_F.TYPE_INT64
    )
    message.field.add(
        name="pad_variable_length_inputs", number=7, label=_F.LABEL_OPTIONAL, type=_F.TYPE_BOOL
    )
    pool.Add(batching)

    monitoring = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
    )
    prometheus = monitoring.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_BOOL)
    prometheus.field.add(name="path", number=2, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING)
    config = monitoring.message_type.add(name="MonitoringConfig")
    config.field.add(
        name="prometheus_config", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_MESSAGE,
        type_name=".tensorflow.serving.PrometheusConfig",
    )
    pool.Add(monitoring)

    def cls(name):
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))

    return cls("tensorflow.serving.BatchingParameters"), cls("tensorflow.serving.MonitoringConfig")


BatchingParameters, MonitoringConfig = _message_classes()

# PrometheusExporter::kPrometheusPath.
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


class ConfigError(ValueError):
    """A config file that is missing or does not parse; the message names the file."""


def _parse_file(path, message, what):
    if not os.path.isfile(path):
        raise ConfigError(f"{what} {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise ConfigError(f"{what} {path!r} does not parse as a {message.DESCRIPTOR.name}: {e}")
    return message


def read_model_server_config(path):
    """A ModelServerConfig text proto (TF Serving's --model_config_file)."""
    config = _parse_file(path, model_server_config_pb2.ModelServerConfig(), "model config file")
    if config.WhichOneof("config") != "model_config_list":
        raise ConfigError(
            f"model config file {path!r} has no model_config_list (the only kind supported)"
        )
    names = [c.name for c in config.model_config_list.config]
    for c in config.model_config_list.config:
        if not c.name or not c.base_path:
            raise ConfigError(f"model config file {path!r}: every config needs name and base_path")
        if c.model_platform not in ("", "tensorflow"):
            raise ConfigError(
                f"model config file {path!r}: model {c.name!r} has model_platform "
                f"{c.model_platform!r}; only 'tensorflow' is served"
            )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"model config file {path!r}: duplicate model names {duplicates}")
    return config


def single_model_config(model_name, model_base_path):
    """The config TF Serving builds from --model_name/--model_base_path."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = model_base_path
    model.model_platform = "tensorflow"
    return config


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """The BatchingParameters this server implements, with TF Serving's defaults.

    Defaults are SharedBatchScheduler's: batches of up to 1000, no waiting for more tasks,
    10 enqueued batches, one thread per CPU.
    """

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)


def read_batching_parameters(path=None):
    """BatchingOptions from a BatchingParameters text proto, or the defaults if path is None."""
    options = BatchingOptions()
    if path is None:
        return options
    params = _parse_file(path, BatchingParameters(), "batching parameters file")
    values = {}
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                 "num_batch_threads"):
        if params.HasField(name):
            values[name] = getattr(params, name).value
    options = dataclasses.replace(options, **values)
    if options.max_batch_size < 1 or options.num_batch_threads < 1:
        raise ConfigError(
            f"batching parameters file {path!r}: max_batch_size and num_batch_threads must be >= 1"
        )
    if options.batch_timeout_micros < 0 or options.max_enqueued_batches < 1:
        raise ConfigError(
            f"batching parameters file {path!r}: batch_timeout_micros must be >= 0 and "
            "max_enqueued_batches >= 1"
        )
    if params.allowed_batch_sizes and params.allowed_batch_sizes[-1] != options.max_batch_size:
        # BatchingSession's own check; the sizes themselves are a padding hint this server
        # does not need (it never pads a batch).
        raise ConfigError(
            f"batching parameters file {path!r}: the last entry in allowed_batch_sizes must "
            "equal max_batch_size"
        )
    return options


def read_monitoring_config(path):
    """The Prometheus path from a MonitoringConfig text proto, or None if not enabled."""
    config = _parse_file(path, MonitoringConfig(), "monitoring config file")
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or DEFAULT_PROMETHEUS_PATH
