"""python -m tfbert.serve: a stand-in for tensorflow_model_server, with its flag names.

    python -m tfbert.serve --port=8500 --rest_api_port=8501 \\
        --model_name=bert --model_base_path=/abs/path/to/export

serves the latest integer version under --model_base_path over gRPC (PredictionService,
ModelService) and REST, picks up new versions as they appear, and stops gracefully on
SIGTERM or Ctrl-C (in-flight requests finish first). The same --model_config_file,
--batching_parameters_file and --monitoring_config_file that configure
`tensorflow/serving:2.20.*` (see serving/) configure this server.
"""

import argparse
import logging
import os
import signal
import sys
import threading

PROG = "tfbert.serve"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, like every tfbert CLI; --help has the details.
        self.exit(2, f"{PROG}: error: {message} (see --help)\n")


def _bool(text):
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser():
    p = _Parser(
        prog=f"python -m {PROG}",
        description="Serve SavedModels over TF Serving's gRPC and REST APIs (a Python "
        "stand-in for tensorflow_model_server; same flag names).",
    )
    p.add_argument("--port", type=int, default=8500,
                   help="gRPC port (0 disables gRPC). Default 8500.")
    p.add_argument("--rest_api_port", type=int, default=0,
                   help="HTTP/REST port (0 disables REST). Default 0.")
    p.add_argument("--host", default="0.0.0.0",
                   help="address to listen on (tfbert addition; TF Serving always uses 0.0.0.0).")
    p.add_argument("--model_name", default="default",
                   help="name of the model (ignored with --model_config_file).")
    p.add_argument("--model_base_path", default="",
                   help="directory whose integer subdirectories are versions of the model "
                   "(ignored with --model_config_file, otherwise required).")
    p.add_argument("--model_config_file", default="",
                   help="ModelServerConfig text proto: several models, version policies, labels.")
    p.add_argument("--model_config_file_poll_wait_seconds", type=int, default=0,
                   help="seconds between rereads of --model_config_file (0: read once).")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1,
                   help="seconds between looks for new model versions (0: look once). Default 1.")
    p.add_argument("--enable_batching", type=_bool, nargs="?", const=True, default=False,
                   help="merge concurrent requests into batches.")
    p.add_argument("--batching_parameters_file", default="",
                   help="BatchingParameters text proto (used with --enable_batching).")
    p.add_argument("--monitoring_config_file", default="",
                   help="MonitoringConfig text proto; enables Prometheus metrics on the REST port.")
    p.add_argument("--enable_model_warmup", type=_bool, nargs="?", const=True, default=True,
                   help="replay assets.extra/tf_serving_warmup_requests on load. Default true.")
    p.add_argument("--num_request_iterations_for_warmup", type=int, default=0,
                   help="replays per warmup record (used if > 0).")
    p.add_argument("--enable_signature_method_name_check", type=_bool, nargs="?", const=True,
                   default=False,
                   help="require classify/regress method names for Classify/Regress.")
    p.add_argument("--grpc_max_threads", type=int, default=0,
                   help="gRPC worker threads (default 4 per CPU).")
    p.add_argument("--version", action="store_true", help="print the version and exit.")
    return p


def _fail(message, code=1):
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _watch_config_file(server, path, every, stop):
    """Rereads --model_config_file every `every` seconds and reloads it when it changes."""
    from tfbert.serving.server_configs import ConfigError, read_model_server_config
    from tfbert.serving.serving_error import ServingError

    log = logging.getLogger(PROG)
    last = os.stat(path).st_mtime_ns
    while not stop.wait(every):
        try:
            mtime = os.stat(path).st_mtime_ns
            if mtime == last:
                continue
            last = mtime
            server.manager.reload_config(read_model_server_config(path))
            log.info("Reloaded model config from %s", path)
        except (OSError, ConfigError, ServingError) as e:
            log.error("Not reloading %s: %s", path, e)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.version:
        import tensorflow as tf

        from tfbert import __version__

        print(f"TensorFlow ModelServer: {PROG} {__version__}\nTensorFlow Library: {tf.__version__}")
        return 0
    if not args.model_config_file and not args.model_base_path:
        return _fail("--model_base_path is required unless --model_config_file is given", 2)
    for flag in ("port", "rest_api_port"):
        if not 0 <= getattr(args, flag) <= 65535:
            return _fail(f"--{flag} must be in 0..65535", 2)
    if args.port == 0 and args.rest_api_port == 0:
        return _fail("nothing to listen on: --port and --rest_api_port are both 0", 2)
    if args.port and args.port == args.rest_api_port:
        return _fail("--port and --rest_api_port must differ", 2)
    if args.model_base_path and not args.model_config_file and not os.path.isdir(
            args.model_base_path):
        return _fail(f"--model_base_path {args.model_base_path!r} is not a directory")

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger(PROG)

    from tfbert.serving import server_configs
    from tfbert.serving.server import ModelServer, ServerStartError
    from tfbert.serving.serving_error import ServingError

    try:
        if args.model_config_file:
            config = server_configs.read_model_server_config(args.model_config_file)
        else:
            config = server_configs.single_model_config(
                args.model_name, os.path.abspath(args.model_base_path))
        batching = None
        if args.enable_batching:
            batching = server_configs.read_batching_parameters(
                args.batching_parameters_file or None)
        elif args.batching_parameters_file:
            log.warning("--batching_parameters_file is ignored without --enable_batching")
        prometheus_path = None
        if args.monitoring_config_file:
            prometheus_path = server_configs.read_monitoring_config(args.monitoring_config_file)
            if prometheus_path and not args.rest_api_port:
                log.warning("Prometheus metrics need --rest_api_port; not exporting them")
        server = ModelServer(
            config,
            grpc_port=args.port or None,
            rest_api_port=args.rest_api_port or None,
            host=args.host,
            file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
            batching=batching,
            prometheus_path=prometheus_path,
            enable_model_warmup=args.enable_model_warmup,
            num_request_iterations_for_warmup=args.num_request_iterations_for_warmup or 1,
            grpc_max_threads=args.grpc_max_threads or None,
            enable_signature_method_name_check=args.enable_signature_method_name_check,
        )
    except (server_configs.ConfigError, ServingError) as e:
        return _fail(getattr(e, "message", str(e)))

    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("Received %s; finishing in-flight requests, then exiting",
                 signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            server.start()
        except (ServerStartError, ServingError) as e:
            return _fail(getattr(e, "message", str(e)))
        if args.model_config_file and args.model_config_file_poll_wait_seconds > 0:
            threading.Thread(
                target=_watch_config_file,
                args=(server, args.model_config_file, args.model_config_file_poll_wait_seconds,
                      stop),
                daemon=True).start()
        while not stop.wait(0.5):
            pass
        server.stop()
        log.info("Server stopped")
        return 0
    finally:
        stop.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
