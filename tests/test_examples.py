"""The scripts in examples/, each run as a user runs it (a subprocess, from another
directory) at a tiny size, with checks on what it prints and writes.

Most start from a tiny random encoder that has the real uncased vocabulary (what
`--model_dir` / `--encoder_dir` accept), so they test the scripts' plumbing in seconds; the
sentiment example runs its default path, importing the real MiniLM weights. Whether
fine-tuning the real weights learns is test_finetune_real.py's and the quickstart's job.
"""

import json
import os
import re
import subprocess
import sys

import pytest

import helpers

EXAMPLES = os.path.join(helpers.REPO_ROOT, "examples")


def run_example(name, *args, cwd, timeout=600):
    """Runs examples/<name> with `args` in `cwd`; returns its stdout (stderr on failure)."""
    env = dict(os.environ)
    # The examples import tfbert; make it this checkout's whatever the install.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (helpers.REPO_ROOT, env.get("PYTHONPATH")) if p)
    process = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name), *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert process.returncode == 0, (
        f"{name} exited {process.returncode}\n{process.stdout[-3000:]}\n{process.stderr[-5000:]}")
    return process.stdout


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory):
    """A random 2-layer, 128-wide BERT with the real uncased vocabulary, as a model dir."""
    import tfbert

    directory = str(tmp_path_factory.mktemp("tiny_encoder") / "encoder")
    encoder = tfbert.BertEncoder.from_preset("tiny", max_sequence_length=128)
    encoder.save_to_preset(directory, vocabulary=os.path.join(helpers.minilm_dir(), "vocab.txt"),
                           lowercase=True)
    return directory


def read_json(*parts):
    with open(os.path.join(*parts), encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.slow
def test_classify_sentiment_imports_minilm_fits_and_predicts(tmp_path):
    sentences = ["What a wonderful, moving film.", "Boring and far too long."]
    out = run_example(
        "classify_sentiment.py", "--output_dir", tmp_path / "run", "--train_examples", 32,
        "--test_examples", 40, "--seq_length", 32, "--batch_size", 16,
        "--sentence", sentences[0], "--sentence", sentences[1], cwd=tmp_path)
    assert os.path.isfile(tmp_path / "run" / "minilm" / "model.weights.h5")
    assert "train: ClassificationData(rotten_tomatoes[train]: 32 examples" in out
    accuracy = re.search(r"^test accuracy: ([0-9.]+) \(40 sentences\)$", out, re.M)
    assert accuracy and 0.0 <= float(accuracy.group(1)) <= 1.0, out
    predictions = re.findall(r"^prediction: (negative|positive) \((0\.\d+|1\.0+)\) '(.*)'$",
                             out, re.M)
    assert [text for _, _, text in predictions] == sentences, out
    assert all(float(p) >= 0.5 for _, p, _ in predictions)
    task = read_json(tmp_path, "run", "model", "task.json")
    assert task["task"] == "classification"
    assert task["label_names"] == ["negative", "positive"] and task["seq_length"] == 32


def test_ner_wnut_fits_scores_entities_and_tags_words(tmp_path, tiny_encoder_dir):
    sentence = "Barack Obama flew to Paris on Monday"
    out = run_example(
        "ner_wnut.py", "--output_dir", tmp_path, "--model_dir", tiny_encoder_dir,
        "--train_sentences", 48, "--test_sentences", 24, "--epochs", 1, "--seq_length", 32,
        "--batch_size", 16, "--sentence", sentence, cwd=tmp_path)
    assert "48 training and 24 test sentences; 21 tags: O B-company" in out
    scores = re.search(r"^test entity precision ([0-9.]+) recall ([0-9.]+) F1 ([0-9.]+); "
                       r"word accuracy ([0-9.]+) \(24 sentences\)$", out, re.M)
    assert scores, out
    assert all(0.0 <= float(v) <= 1.0 for v in scores.groups())
    assert "micro avg" in out  # seqeval's per-type report
    # Every word comes back, in order, each with at most one tag.
    (tagged,) = re.findall(r"^tagged: (.*)$", out, re.M)
    words = [w.split("/")[0] for w in tagged.split()]
    assert words == sentence.split()
    tags = [w.split("/", 1)[1] for w in tagged.split() if "/" in w]
    assert all(re.fullmatch(r"[BI]-[a-z-]+", tag) for tag in tags), tagged
    task = read_json(tmp_path, "model", "task.json")
    assert task["task"] == "token_classification" and task["label_names"][0] == "O"
    assert len(task["label_names"]) == 21


def test_qa_squad_writes_its_data_fits_and_gives_n_best_answers(tmp_path, tiny_encoder_dir):
    out = run_example(
        "qa_squad.py", "--output_dir", tmp_path, "--model_dir", tiny_encoder_dir,
        "--epochs", 2, "--seq_length", 64, "--doc_stride", 32, "--max_query_length", 16,
        "--n_best_size", 3, "--show", 2, cwd=tmp_path)
    assert os.path.isfile(tmp_path / "tiny_squad.json")
    assert re.search(r"^15 training questions in \d+ windows of 64 pieces", out, re.M), out
    metrics = re.search(r"^exact match ([0-9.]+), F1 ([0-9.]+) \(15 questions", out, re.M)
    assert metrics and 0 <= float(metrics.group(1)) <= float(metrics.group(2)) <= 100, out
    assert "Q: How many queens does a honey bee colony have?\n   gold: a single queen" in out
    predictions = read_json(tmp_path, "predictions.json")
    nbest = read_json(tmp_path, "nbest_predictions.json")
    squad = read_json(tmp_path, "tiny_squad.json")
    contexts = {qa["id"]: paragraph["context"] for article in squad["data"]
                for paragraph in article["paragraphs"] for qa in paragraph["qas"]}
    assert set(predictions) == set(nbest) == set(contexts)
    for qas_id, candidates in nbest.items():
        assert 1 <= len(candidates) <= 3
        assert candidates[0]["text"] == predictions[qas_id]
        # Answers are spans of the context, in its own characters.
        assert all(c["text"] in contexts[qas_id] for c in candidates)
        assert sum(c["probability"] for c in candidates) == pytest.approx(1.0)
    task = read_json(tmp_path, "model", "task.json")
    assert task["task"] == "question_answering" and task["doc_stride"] == 32


@pytest.mark.slow
def test_export_and_query_answers_the_same_from_savedmodel_grpc_and_rest(
        tmp_path, tiny_encoder_dir):
    sentences = ["A joyous, clever comedy.", "Dreary and dull."]
    out = run_example(
        "export_and_query.py", "--output_dir", tmp_path, "--encoder_dir", tiny_encoder_dir,
        "--train_examples", 32, "--seq_length", 32,
        "--sentence", sentences[0], "--sentence", sentences[1], cwd=tmp_path)
    version = tmp_path / "export" / "1"
    assert os.path.isfile(version / "saved_model.pb")
    assert os.path.isfile(version / "assets.extra" / "tf_serving_warmup_requests")
    assert "signature serving_default (tensorflow/serving/predict): text DT_STRING[-1]" in out
    assert "model status: version 1 AVAILABLE" in out
    answers = {}
    for way in ("saved_model", "grpc predict", "rest predict"):
        found = re.findall(rf"^{way}: (negative|positive) .*?'(.*)'$", out, re.M)
        assert [text for _, text in found] == sentences, (way, out)
        answers[way] = [label for label, _ in found]
    # The server runs the export it was given: all three ways agree.
    assert answers["saved_model"] == answers["grpc predict"] == answers["rest predict"]
    saved = re.findall(r"^saved_model: \w+ \(([0-9.]+)\)", out, re.M)
    served = re.findall(r"^grpc predict: \w+ \(([0-9.]+)\)", out, re.M)
    assert saved == served
    classify = re.findall(r"^grpc classify: negative ([0-9.]+), positive ([0-9.]+) ", out, re.M)
    assert len(classify) == 2 and all(
        float(a) + float(b) == pytest.approx(1.0, abs=2e-3) for a, b in classify)
    assert "server stopped" in out


@pytest.mark.slow
def test_pretrain_tiny_imdb_runs_the_whole_pipeline(tmp_path):
    work = tmp_path / "work"
    out = run_example(
        "pretrain_tiny_imdb.py", "--work_dir", work, "--train_reviews", 120,
        "--eval_reviews", 30, "--vocab_reviews", 120, "--vocab_size", 600,
        "--max_seq_length", 64, "--dupe_factor", 1, "--train_steps", 6, "--batch_size", 8,
        "--eval_interval", 3, "--eval_steps", 2, cwd=tmp_path)
    with open(work / "vocab.txt", encoding="utf-8") as f:
        vocab = f.read().split("\n")
    assert "[CLS]" in vocab and "[MASK]" in vocab and len(vocab) >= 300
    assert any(name.startswith("train.tfrecord") for name in os.listdir(work))
    # Held-out MLM and NSP metrics at every --eval_interval, then the model directory.
    evals = re.findall(r"^eval at step (\d+) \| mlm_loss ([0-9.]+) mlm_accuracy ([0-9.]+) "
                       r"nsp_loss ([0-9.]+) nsp_accuracy ([0-9.]+)$", out, re.M)
    assert [int(e[0]) for e in evals] == [3, 6], out
    assert all(0 <= float(e[2]) <= 1 and 0 <= float(e[4]) <= 1 for e in evals)
    assert f"wrote the model directory {work / 'model'}" in out
    assert read_json(work, "model", "task.json")["task"] == "pretraining"
    assert os.path.isfile(work / "model" / "model.weights.h5")
