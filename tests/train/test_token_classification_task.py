"""The token classification (NER) task: `python -m tfbert.train` train -> model directory
-> eval -> predict on real WNUT-16 sentences with a tiny model, its loss normalisation
(one device and two mirrored replicas agree), TFDS conll2003 through the trainer, and
bad data failing with one line that names the file and line."""

import json
import os

import helpers
import numpy as np
import pytest

from tfbert.data import ner
from tfbert.train import ner_metrics
from tfbert.train.__main__ import main as train_main

TINY = ("{num_layers: 1, hidden_dim: 32, num_heads: 2, intermediate_dim: 64, "
        "max_sequence_length: 64}")


@pytest.fixture(scope="module")
def conll_files(tmp_path_factory):
    """The first 120 WNUT-16 sentences for training, the next 40 for evaluation."""
    examples = ner.read_conll(helpers.wnut_conll())
    directory = tmp_path_factory.mktemp("wnut")
    paths = {}
    for name, (start, stop) in {"train": (0, 120), "dev": (120, 160)}.items():
        paths[name] = str(directory / f"{name}.txt")
        ner.write_conll(paths[name], examples.words[start:stop], examples.tags[start:stop])
    return paths


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, conll_files):
    path = tmp_path_factory.mktemp("recipe") / "ner_tiny.yaml"
    path.write_text(
        "task: token_classification\n"
        "model:\n"
        "  preset: tiny\n"
        f"  encoder_overrides: {TINY}\n"
        "data:\n"
        "  format: conll\n"
        f"  train_files: {conll_files['train']}\n"
        f"  eval_files: {conll_files['dev']}\n"
        f"  vocab_file: {os.path.join(helpers.minilm_dir(), 'vocab.txt')}\n"
        "  max_seq_length: 32\n"
        "  seed: 7\n"
        "trainer:\n"
        "  train_steps: 12\n"
        "  global_batch_size: 8\n"
        "  learning_rate: 3e-3\n"
        "  warmup_steps: 2\n"
        "  steps_per_loop: 4\n"
        "  checkpoint_interval: 6\n"
        "  eval_steps: 5\n"          # 40 sentences / 8
    )
    return str(path)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def eval_line(out):
    lines = [line for line in out.splitlines() if line.startswith("eval at step")]
    assert lines, out
    values = lines[-1].split("|", 1)[1].split()
    return {k: float(v) for k, v in zip(values[::2], values[1::2])}


def test_cli_train_eval_predict_and_model_directory(recipe, conll_files, tmp_path, capsys):
    import tfbert
    from tfbert.text import BertPreprocessor

    model_dir = str(tmp_path / "run")
    assert train_main([f"--config={recipe}", f"--model_dir={model_dir}"]) == 0
    out = capsys.readouterr().out
    assert "step 12/12 |" in out
    trained = eval_line(out)
    assert set(trained) == {"loss", "accuracy", "precision", "recall", "f1", "dropped_words"}
    # 32 pieces drop a few words of the longest tweets.
    assert trained["dropped_words"] > 0

    info = json.loads(read(os.path.join(model_dir, "task.json")))
    train_tags = ner.read_conll(conll_files["train"]).tags
    expected_labels = ["O"] + sorted({t for s in train_tags for t in s} - {"O"})
    assert info["task"] == "token_classification"
    assert info["label_names"] == expected_labels and info["seq_length"] == 32
    assert info["args"]["num_classes"] == len(expected_labels)

    # Eval mode on the checkpoint reproduces the end-of-training evaluation.
    assert train_main([f"--config={recipe}", f"--model_dir={model_dir}", "--mode=eval"]) == 0
    again = eval_line(capsys.readouterr().out)
    for key, value in trained.items():
        assert again[key] == pytest.approx(value, abs=1e-4), key

    # Predict mode: word, gold, predicted for every evaluation word.
    predictions = str(tmp_path / "dev.pred.conll")
    assert train_main([f"--config={recipe}", f"--model_dir={model_dir}", "--mode=predict",
                       f"--output_file={predictions}"]) == 0
    out = capsys.readouterr().out
    assert f"wrote predictions to {predictions}" in out
    dev = ner.read_conll(conll_files["dev"])
    rows = [line.split("\t") for line in read(predictions).split("\n\n")[0].splitlines()]
    assert [r[0] for r in rows] == dev.words[0] and [r[1] for r in rows] == dev.tags[0]
    predicted = [[line.split("\t")[2] for line in block.splitlines()]
                 for block in read(predictions).strip().split("\n\n")]
    assert [len(p) for p in predicted] == [len(w) for w in dev.words]
    scores = ner_metrics.entity_scores(dev.tags, predicted)
    assert scores["f1"] == pytest.approx(trained["f1"], abs=1e-6)

    # The model directory alone predicts the same tags (labels from task.json).
    model = tfbert.BertTokenClassifier.from_preset(model_dir)
    preprocessor = BertPreprocessor.from_preset(model_dir, seq_length=info["seq_length"])
    assert ner.predict_words(model, preprocessor, dev.words, info["label_names"]) == predicted

    # Starting from the fine-tuned directory (no training data): its label list is used.
    fresh = str(tmp_path / "from_preset")
    assert train_main([f"--config={recipe}", f"--model_dir={fresh}", "--mode=eval",
                       "--set", f"model.preset={model_dir}", "--set", "data.train_files=''"]) == 0
    reloaded = eval_line(capsys.readouterr().out)
    assert reloaded["f1"] == pytest.approx(trained["f1"], abs=1e-6)
    assert reloaded["loss"] == pytest.approx(trained["loss"], abs=1e-4)


def test_loss_is_the_mean_over_labelled_first_pieces(recipe):
    import tensorflow as tf

    from tfbert.config import ExperimentConfig
    from tfbert.train.tasks import get_task

    task = get_task(ExperimentConfig.load(recipe))
    model = task.build_model()
    inputs, labels = next(iter(task.dataset(None, training=True)))
    denominators = task.denominators(labels)
    loss, sums = task.step(model, inputs, labels, denominators, training=False)
    logits = model(inputs, training=False).numpy()
    y = labels.numpy()
    mask = y >= 0
    # Word-first pieces only: one label per kept word, none on [CLS]/[SEP]/pads/## pieces.
    assert mask.sum() == float(denominators["labelled"]) == float(sums["labelled"])
    assert np.all(y[:, 0] == -1)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_probs, np.maximum(y, 0)[..., None], -1)[..., 0]
    assert float(loss) == pytest.approx(ce[mask].mean(), rel=1e-5)
    correct = (logits.argmax(-1) == y)[mask].sum()
    assert float(sums["correct"]) == correct
    metrics = task.metrics({k: float(v) for k, v in sums.items()})
    assert metrics["accuracy"] == pytest.approx(correct / mask.sum())
    # A global denominator twice as large halves this replica's share of the loss.
    half, _ = task.step(model, inputs, labels,
                        {"labelled": tf.constant(2.0 * mask.sum(), tf.float32)}, training=False)
    assert float(half) == pytest.approx(float(loss) / 2, rel=1e-5)


def run_trainer(recipe, model_dir, strategy, cpu_devices, overrides):
    """Trains in its own process (tests/train/run_trainer.py); returns every weight."""
    import subprocess
    import sys

    runner = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_trainer.py")
    weights = model_dir + ".weights.npz"
    cmd = [sys.executable, runner, recipe, model_dir, strategy, weights,
           "--cpu_devices", str(cpu_devices)]
    for item in overrides:
        cmd += ["--set", item]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          cwd=helpers.REPO_ROOT, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout
    with np.load(weights) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def test_mirrored_over_two_cpu_devices_equals_one_device(recipe, tmp_path):
    """Two replicas see batches with different numbers of labelled pieces; only a loss
    normalised by the global count trains them exactly like one device."""
    settings = ["model.encoder_overrides.dropout=0.0",
                "model.encoder_overrides.attention_dropout=0.0", "trainer.train_steps=4",
                "trainer.jit_compile=false"]
    one = run_trainer(recipe, str(tmp_path / "one"), "one_device", 1, settings)
    two = run_trainer(recipe, str(tmp_path / "two"), "mirrored", 2, settings)
    worst = max(float(np.max(np.abs(x - y))) for x, y in zip(one, two))
    assert worst <= 1e-5, f"max abs weight difference {worst}"


def test_bad_data_fails_with_one_line_naming_file_and_line(recipe, conll_files, tmp_path, capsys):
    bad = tmp_path / "bad.conll"
    bad.write_text("Peter\tB-person\nParker\n")
    assert train_main([f"--config={recipe}", f"--model_dir={tmp_path / 'a'}",
                       "--set", f"data.train_files={bad}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}:2: malformed CoNLL line")

    unknown = tmp_path / "unknown.conll"
    unknown.write_text("Peter\tB-person\n\nthe\tO\nMoon\tB-planet\n")
    assert train_main([f"--config={recipe}", f"--model_dir={tmp_path / 'b'}",
                       "--set", "trainer.train_steps=1", "--set", "trainer.steps_per_loop=1",
                       "--set", f"data.eval_files={unknown}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {unknown}:4: unknown tag 'B-planet'")

    assert train_main([f"--config={recipe}", f"--model_dir={tmp_path / 'c'}",
                       "--set", "data.format=csv"]) == 1
    assert "data.format 'csv' is not a token classification format" in capsys.readouterr().err


CONLL2003 = (
    "-DOCSTART- -X- -X- O\n\n"
    "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\ncall NN I-NP O\n"
    "to TO B-VP O\nboycott VB I-VP O\nBritish JJ B-NP B-MISC\nlamb NN I-NP O\n. . O O\n\n"
    "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n\n"
    "BRUSSELS NNP B-NP B-LOC\n1996-08-22 CD I-NP O\n"
)


def test_tfds_conll2003_through_the_cli(tmp_path, capsys):
    """TFDS conll2003, prepared locally by TFDS's own builder from CoNLL-2003-format files
    (its download redirected to them: no internet here), trained, evaluated and predicted
    by `python -m tfbert.train` with configs/finetune/conll2003.yaml and a tiny model."""
    from unittest import mock

    import tensorflow_datasets as tfds
    from etils import epath

    source = tmp_path / "source"
    source.mkdir()
    for name in ("train.txt", "valid.txt", "test.txt"):
        (source / name).write_text(CONLL2003)
    data_dir = str(tmp_path / "tfds")
    with mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                           return_value=epath.Path(source)):
        tfds.builder("conll2003", data_dir=data_dir).download_and_prepare()

    model_dir = str(tmp_path / "run")
    flags = [f"--config={os.path.join(helpers.REPO_ROOT, 'configs', 'finetune', 'conll2003.yaml')}",
             f"--model_dir={model_dir}",
             "--set", "model.preset=tiny", "--set", f"model.encoder_overrides={TINY}",
             "--set", f"data.vocab_file={os.path.join(helpers.minilm_dir(), 'vocab.txt')}",
             "--set", f"data.tfds_data_dir={data_dir}", "--set", "data.max_seq_length=16",
             "--set", "trainer.train_steps=2", "--set", "trainer.global_batch_size=2",
             "--set", "trainer.steps_per_loop=1", "--set", "trainer.eval_steps=2"]
    assert train_main(flags) == 0
    assert set(eval_line(capsys.readouterr().out)) == {
        "loss", "accuracy", "precision", "recall", "f1", "dropped_words"}
    info = json.loads(read(os.path.join(model_dir, "task.json")))
    # The dataset's ClassLabel order, not sorted.
    assert info["label_names"] == ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC",
                                   "B-MISC", "I-MISC"]
    output = str(tmp_path / "dev.pred.conll")
    assert train_main(flags + ["--mode=predict", f"--output_file={output}"]) == 0
    blocks = read(output).strip().split("\n\n")
    assert sorted(b.splitlines()[0].split("\t")[0] for b in blocks) == ["BRUSSELS", "EU", "Peter"]
    assert "Blackburn\tI-PER\t" in read(output)
