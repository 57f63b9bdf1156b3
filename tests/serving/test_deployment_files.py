"""serving/: the TF Serving deployment files, checked statically (no Docker here).

The text protos are parsed with TF Serving's message definitions, the compose file for its
pinned image, ports, mounts and flags, and every flag it passes must also be accepted by
`python -m tfbert.serve`, the stand-in.
"""

import os
import re
import shlex

import pytest
import yaml
from serving_helpers import SERVING_DIR
from tensorflow_serving.config import model_server_config_pb2

from tfbert.serve import build_parser
from tfbert.serving import server_configs


def _path(name):
    return os.path.join(SERVING_DIR, name)


def test_models_config():
    config = server_configs.read_model_server_config(_path("models.config"))
    assert isinstance(config, model_server_config_pb2.ModelServerConfig)
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (
        "bert", "/models/bert", "tensorflow")
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
    assert model.model_version_policy.latest.num_versions == 1


def test_batching_parameters_config():
    params = server_configs.BatchingParameters()
    from google.protobuf import text_format

    with open(_path("batching_parameters.config"), encoding="utf-8") as f:
        text_format.Parse(f.read(), params)
    for field in ("max_batch_size", "batch_timeout_micros", "num_batch_threads",
                  "max_enqueued_batches"):
        assert params.HasField(field), field
    options = server_configs.read_batching_parameters(_path("batching_parameters.config"))
    assert options == server_configs.BatchingOptions(
        max_batch_size=32, batch_timeout_micros=5000, max_enqueued_batches=100,
        num_batch_threads=4)


def test_monitoring_config():
    assert server_configs.read_monitoring_config(_path("monitoring.config")) == \
        "/monitoring/prometheus/metrics"


def test_docker_compose():
    with open(_path("docker-compose.yml"), encoding="utf-8") as f:
        compose = yaml.safe_load(f)
    (service,) = compose["services"].values()
    assert re.fullmatch(r"tensorflow/serving:2\.20\.\d+", service["image"]), service["image"]
    assert {"8500:8500", "8501:8501"} <= set(service["ports"])
    flags = dict(arg.split("=", 1) for arg in service["command"])
    assert flags["--port"] == "8500" and flags["--rest_api_port"] == "8501"
    assert flags["--enable_batching"] == "true"
    mounts = {}
    for volume in service["volumes"]:
        # SOURCE:TARGET[:MODE]; SOURCE may be "${VAR:-default}", which holds a colon.
        parts = volume.rsplit(":", 2)
        source, target = (parts[0], parts[1]) if parts[-1] in ("ro", "rw") else \
            volume.rsplit(":", 1)
        mounts[target] = source
    # Each config flag points at a mounted copy of the file in this directory.
    for flag, name in (("--model_config_file", "models.config"),
                       ("--batching_parameters_file", "batching_parameters.config"),
                       ("--monitoring_config_file", "monitoring.config")):
        assert mounts[flags[flag]] == f"./{name}", flag
        assert os.path.isfile(_path(name))
    # The model's base path in models.config is where the export is mounted.
    config = server_configs.read_model_server_config(_path("models.config"))
    assert mounts[config.model_config_list.config[0].base_path] == \
        "${TFBERT_EXPORT_DIR:-./models/bert}"
    # The stand-in server takes every one of these flags.
    args = build_parser().parse_args(service["command"])
    assert args.enable_batching is True and args.port == 8500


def test_readme_commands():
    with open(_path("README.md"), encoding="utf-8") as f:
        readme = f.read()
    for needle in ('{"instances": [', '{"inputs": {"text": [', ":classify", "/metadata",
                   "/versions/1", '{"b64": ', "/monitoring/prometheus/metrics",
                   "Client(\"localhost:8500\"", "rest_url=\"http://localhost:8501\"",
                   "docker compose -f serving/docker-compose.yml up"):
        assert needle in readme, needle
    # The stand-in command in the README parses with the real CLI.
    match = re.search(r"python -m tfbert\.serve (.*?)\n```", readme, re.DOTALL)
    argv = shlex.split(match.group(1).replace("\\\n", " "))
    args = build_parser().parse_args(argv)
    assert (args.port, args.rest_api_port, args.model_name) == (8500, 8501, "bert")
    assert os.path.normpath(args.batching_parameters_file) == os.path.join(
        "serving", "batching_parameters.config")


def test_bad_config_files_fail_with_the_file_name(tmp_path):
    bad = tmp_path / "batching.config"
    bad.write_text("max_batch_size { value: 32 }\nmax_batch_sise { value: 1 }\n")
    with pytest.raises(server_configs.ConfigError, match="batching.config.*max_batch_sise"):
        server_configs.read_batching_parameters(str(bad))
    bad.write_text("model_config_list { config { name: 'x' } }\n")
    with pytest.raises(server_configs.ConfigError, match="needs name and base_path"):
        server_configs.read_model_server_config(str(bad))
    with pytest.raises(server_configs.ConfigError, match="does not exist"):
        server_configs.read_monitoring_config(str(tmp_path / "missing.config"))
