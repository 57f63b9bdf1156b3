"""python -m tfbert.serve: flags, one-line errors, and a real process stopped by SIGTERM."""

import os
import signal
import socket
import subprocess
import sys
import threading

import grpc
import pytest
from serving_helpers import MODEL, REPO, SERVING_DIR, make_base, wait_for

from tfbert import serve
from tfbert.serving import Client, ServingError


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help(capsys):
    with pytest.raises(SystemExit) as info:
        serve.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--port", "--rest_api_port", "--model_name", "--model_base_path",
                 "--model_config_file", "--enable_batching", "--batching_parameters_file",
                 "--monitoring_config_file", "--file_system_poll_wait_seconds"):
        assert flag in out


@pytest.mark.parametrize("argv,code,message", [
    (["--bogus=1"], 2, "unrecognized arguments: --bogus=1"),
    (["--port=abc", "--model_base_path=."], 2, "argument --port: invalid int value: 'abc'"),
    (["--enable_batching=maybe", "--model_base_path=."], 2, "expected true or false"),
    (["--model_name=m"], 2, "--model_base_path is required unless --model_config_file"),
    (["--port=0", "--rest_api_port=0", "--model_base_path=."], 2, "nothing to listen on"),
    (["--port=9000", "--rest_api_port=9000", "--model_base_path=."], 2, "must differ"),
    (["--model_base_path=/no/such/dir"], 1, "--model_base_path '/no/such/dir' is not a directory"),
    (["--model_config_file=/no/such.config"], 1,
     "model config file '/no/such.config' does not exist"),
])
def test_bad_flags_fail_with_one_line(capsys, argv, code, message):
    try:
        result = serve.main(argv)
    except SystemExit as e:
        result = e.code
    assert result == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tfbert.serve: error: "), err
    assert message in err


def test_unloadable_model_fails_startup(tmp_path, capsys):
    base = tmp_path / "broken"
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    result = serve.main([f"--model_base_path={base}", "--port=0", f"--rest_api_port={_free_port()}",
                         "--host=127.0.0.1"])
    assert result == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("tfbert.serve: error: model default version 1 failed to load")


def test_process_serves_and_stops_gracefully_on_sigterm(tmp_path, model_versions):
    base = make_base(tmp_path, model_versions)
    grpc_port, rest_port = _free_port(), _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tfbert.serve", f"--port={grpc_port}",
         f"--rest_api_port={rest_port}", "--host=127.0.0.1", f"--model_name={MODEL}",
         f"--model_base_path={base}", "--enable_batching",
         f"--batching_parameters_file={os.path.join(SERVING_DIR, 'batching_parameters.config')}",
         f"--monitoring_config_file={os.path.join(SERVING_DIR, 'monitoring.config')}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        grpc_client = Client(f"127.0.0.1:{grpc_port}", MODEL, retries=0, timeout=10)
        rest_client = Client(None, MODEL, rest_url=f"http://127.0.0.1:{rest_port}", retries=0,
                             timeout=10)

        def up():
            assert process.poll() is None, process.communicate()[1][-3000:]
            try:
                return grpc_client.model_status()[0]["state"] == "AVAILABLE"
            except ServingError:
                return False

        wait_for(up, timeout=180, interval=0.5)
        assert grpc_client.predict(["over grpc"])["label"][0] in ("neg", "pos")
        assert rest_client.predict(["over rest"])["label"][0] in ("neg", "pos")

        # Keep requests flowing while SIGTERM arrives: each either completes or is refused
        # as UNAVAILABLE (the server stopped listening); none fails any other way.
        outcomes, stop = [], threading.Event()

        def load():
            while not stop.is_set():
                try:
                    grpc_client.predict(["during shutdown"] * 4)
                    outcomes.append("OK")
                except ServingError as e:
                    outcomes.append(e.code.name)
                    if e.code == grpc.StatusCode.UNAVAILABLE:
                        return

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(outcomes) >= 20, timeout=60)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        assert process.returncode == 0, err[-3000:]
        assert "Received SIGTERM" in err and "Server stopped" in err
        assert set(outcomes) <= {"OK", "UNAVAILABLE"}, set(outcomes)
        grpc_client.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
