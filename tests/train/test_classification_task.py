"""Classification fine-tuning: `python -m tfbert.train` end to end, the task's loss and data
pipeline, TFDS through the trainer, and the README's Keras `model.fit` snippet."""

import json
import os
import random
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf

import helpers
import tfbert
from tfbert.config import ExperimentConfig
from tfbert.data.classification import load_classification_data
from tfbert.text import BertPreprocessor
from tfbert.train.__main__ import main as train_main

TINY = ("{num_layers: 1, hidden_dim: 32, num_heads: 2, intermediate_dim: 64, "
        "max_sequence_length: 32}")
POSITIVE = ["great", "wonderful", "superb", "brilliant", "delightful"]
NEGATIVE = ["awful", "boring", "terrible", "dreadful", "tedious"]
FILLER = ["the", "film", "movie", "was", "plot", "acting", "really", "quite", "story", "and"]


def sentiment_rows(count, seed):
    """Sentences whose label is told by one sentiment word among filler words."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 8))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
        rows.append((" ".join(words), ["neg", "pos"][label]))
    return rows


def write_csv(path, rows, header=("text", "label")):
    import csv

    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def vocab_file():
    return os.path.join(helpers.minilm_dir(), "vocab.txt")


@pytest.fixture(scope="module")
def sentiment_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sentiment")
    return (write_csv(root / "train.csv", sentiment_rows(96, seed=1)),
            write_csv(root / "dev.csv", sentiment_rows(40, seed=2)))


def write_recipe(path, vocab_file, data, trainer=""):
    path.write_text(
        "task: classification\n"
        "model:\n"
        "  preset: tiny\n"
        f"  encoder_overrides: {TINY}\n"
        "data:\n"
        f"  vocab_file: {vocab_file}\n"
        "  max_seq_length: 16\n"
        "  seed: 3\n"
        + "".join(f"  {line}\n" for line in data) +
        "trainer:\n"
        "  global_batch_size: 16\n"
        "  learning_rate: 3e-3\n"
        "  warmup_steps: 4\n"
        "  steps_per_loop: 10\n"
        "  checkpoint_interval: 0\n"
        + "".join(f"  {line}\n" for line in trainer)
    )
    return str(path)


def eval_metrics(out):
    line = [x for x in out.splitlines() if x.startswith("eval at step")][-1]
    fields = line.split("|")[1].split()
    return {k: float(v) for k, v in zip(fields[::2], fields[1::2])}


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ------------------------------------------------------------------ python -m tfbert.train


def test_cli_trains_evaluates_and_predicts(tmp_path, vocab_file, sentiment_files, capsys):
    train, dev = sentiment_files
    recipe = write_recipe(tmp_path / "r.yaml", vocab_file,
                          ["format: csv", f"train_files: {train}", f"eval_files: {dev}"],
                          ["train_steps: 100", "eval_steps: 3"])
    model_dir = str(tmp_path / "run")
    assert train_main(["--config", recipe, "--model_dir", model_dir]) == 0
    metrics = eval_metrics(capsys.readouterr().out)
    # The sentiment word decides the label: a working pipeline learns it.
    assert metrics["accuracy"] >= 0.95, metrics
    info = read_json(os.path.join(model_dir, "task.json"))
    assert info["task"] == "classification" and info["args"]["num_classes"] == 2
    assert info["label_names"] == ["neg", "pos"] and info["seq_length"] == 16
    assert info["inputs"] == ["text"] and info["regression"] is False

    # --mode eval restores the checkpoint and sees the same accuracy on all 40 examples
    # (3 batches of 16, the last padded).
    assert train_main(["--config", recipe, "--model_dir", model_dir, "--mode", "eval"]) == 0
    again = eval_metrics(capsys.readouterr().out)
    assert again["accuracy"] == pytest.approx(metrics["accuracy"])

    predictions = str(tmp_path / "dev.predictions.jsonl")
    assert train_main(["--config", recipe, "--model_dir", model_dir, "--mode", "predict",
                       "--output_file", predictions]) == 0
    rows = read_jsonl(predictions)
    assert len(rows) == 40 and rows[0]["text"] == sentiment_rows(40, seed=2)[0][0]
    assert all(sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5) for r in rows)
    accuracy = np.mean([r["label"] == r["gold"] for r in rows])
    assert accuracy == pytest.approx(metrics["accuracy"])
    assert "predict | accuracy" in capsys.readouterr().out

    # The written model directory is a preset: predict unlabelled text with it, label
    # names from its task.json, as TSV.
    new = write_csv(tmp_path / "new.csv", [("a really great movie",), ("awful and boring",)],
                    header=("text",))
    tsv = str(tmp_path / "new.tsv")
    assert train_main(["--config", recipe, "--model_dir", str(tmp_path / "fresh"),
                       "--mode", "predict", "--output_file", tsv,
                       "--set", f"model.preset={model_dir}", "--set", "data.train_files=",
                       "--set", f"data.eval_files={new}", "--set", "data.label_column="]) == 0
    with open(tsv, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert lines[0] == "text\tlabel\tgold\tp_neg\tp_pos"
    assert [line.split("\t")[1] for line in lines[1:]] == ["pos", "neg"]


def test_cli_sentence_pair_regression_from_jsonl(tmp_path, vocab_file, capsys):
    rng = random.Random(0)
    rows = []
    for _ in range(48):
        a, b = rng.choice(POSITIVE), rng.choice(POSITIVE + NEGATIVE)
        rows.append({"s1": f"the film was {a}", "s2": f"the film was {b}",
                     "score": 1.0 if (b in POSITIVE) else 0.0})
    path = tmp_path / "sts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = write_recipe(tmp_path / "r.yaml", vocab_file,
                          ["format: jsonl", f"train_files: {path}", f"eval_files: {path}",
                           "text_column: s1", "text_b_column: s2", "label_column: score",
                           "regression: true"],
                          ["train_steps: 150", "eval_steps: 3", "jit_compile: false"])
    model_dir = str(tmp_path / "run")
    assert train_main(["--config", recipe, "--model_dir", model_dir]) == 0
    metrics = eval_metrics(capsys.readouterr().out)
    assert set(metrics) == {"loss", "pearson"} and metrics["pearson"] > 0.9, metrics
    info = read_json(os.path.join(model_dir, "task.json"))
    assert info["args"]["num_classes"] == 1 and info["regression"] is True
    assert info["label_names"] == [] and info["inputs"] == ["text", "text_b"]
    out = str(tmp_path / "pred.jsonl")
    assert train_main(["--config", recipe, "--model_dir", model_dir, "--mode", "predict",
                       "--output_file", out]) == 0
    printed = capsys.readouterr().out
    assert "pearson" in printed and "spearman" in printed
    got = read_jsonl(out)
    assert len(got) == 48 and set(got[0]) == {"text", "text_b", "prediction", "gold"}
    assert got[0]["text_b"] == rows[0]["s2"] and got[0]["gold"] == rows[0]["score"]


def test_cli_bad_data_is_one_line_error(tmp_path, vocab_file, sentiment_files, capsys):
    train, _ = sentiment_files
    bad = write_csv(tmp_path / "bad.csv", [("fine", "pos"), ("odd", "neutral")])
    recipe = write_recipe(tmp_path / "r.yaml", vocab_file,
                          ["format: csv", f"train_files: {train}", f"eval_files: {bad}"],
                          ["train_steps: 1"])
    assert train_main(["--config", recipe, "--model_dir", str(tmp_path / "m"),
                       "--mode", "eval"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {bad}:3: unknown label 'neutral'; label names: neg, pos"
    assert train_main(["--config", recipe, "--model_dir", str(tmp_path / "m"),
                       "--set", "data.format=conll"]) == 1
    assert "not a classification format" in capsys.readouterr().err


# ----------------------------------------------------------------- the task, in process


def make_task(tmp_path, vocab_file, data_lines, trainer_lines=()):
    from tfbert.train.classification_task import ClassificationTask

    recipe = write_recipe(tmp_path / "task.yaml", vocab_file, data_lines, list(trainer_lines))
    return ClassificationTask(ExperimentConfig.load(recipe))


def test_loss_is_the_global_mean_over_real_examples(tmp_path, vocab_file, sentiment_files):
    train, _ = sentiment_files
    task = make_task(tmp_path, vocab_file, ["format: csv", f"train_files: {train}"])
    keras.utils.set_random_seed(0)
    model = task.build_model()
    texts = tf.constant(["great", "awful film", "padding", "the movie was boring"])
    inputs = task.preprocessor(texts)
    labels = {"label": tf.constant([1, 0, -1, 0]), "weight": tf.constant([1.0, 1.0, 0.0, 1.0])}
    denominators = task.denominators(labels)
    loss, sums = task.step(model, inputs, labels, denominators, training=False)
    logits = model(inputs, training=False)
    real = [0, 1, 3]
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        tf.gather(labels["label"], real), tf.gather(logits, real))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(sums["count"]) == 3.0

    # Two replicas, each with half the batch and the global denominators: their losses
    # add up to the global mean (so summed gradients are the global mean's gradient).
    halves = []
    for part in (slice(0, 2), slice(2, 4)):
        half_inputs = {k: v[part] for k, v in inputs.items()}
        half_labels = {k: v[part] for k, v in labels.items()}
        halves.append(task.step(model, half_inputs, half_labels, denominators, False)[0])
    assert float(halves[0] + halves[1]) == pytest.approx(float(loss), rel=1e-5)


def test_eval_batches_are_padded_and_cover_every_example_once(tmp_path, vocab_file):
    rows = sentiment_rows(10, seed=5)
    path = write_csv(tmp_path / "ten.csv", rows)
    task = make_task(tmp_path, vocab_file,
                     ["format: csv", f"train_files: {path}", f"eval_files: {path}"],
                     ["global_batch_size: 4"])
    assert task.num_eval_steps() == 3
    batches = list(task.dataset(None, training=False).take(4))
    weights = np.concatenate([b[1]["weight"].numpy() for b in batches])
    assert weights.tolist() == [1.0] * 10 + [0.0] * 6
    ids = batches[0][0]["input_word_ids"]
    assert ids.shape == (4, 16) and ids.dtype == tf.int32
    expected = task.preprocessor(tf.constant([r[0] for r in rows[:4]]))["input_word_ids"]
    np.testing.assert_array_equal(ids, expected)
    labels = np.concatenate([b[1]["label"].numpy() for b in batches[:3]])[:10]
    assert labels.tolist() == [["neg", "pos"].index(r[1]) for r in rows]
    # Training batches are shuffled, repeated and all full.
    train = list(task.dataset(None, training=True).take(5))
    assert all(b[0]["input_word_ids"].shape == (4, 16) for b in train)
    assert all(float(tf.reduce_sum(b[1]["weight"])) == 4.0 for b in train)


def test_trainer_layer_decay_and_full_pass_eval(tmp_path, vocab_file, sentiment_files):
    """trainer.layer_decay scales each layer's step; eval_steps 0 is one full pass."""
    from tfbert.train.strategies import make_strategy
    from tfbert.train.trainer import Trainer

    train, dev = sentiment_files
    lr = 1e-2
    recipe = write_recipe(tmp_path / "r.yaml", vocab_file,
                          ["format: csv", f"train_files: {train}", f"eval_files: {dev}"],
                          ["train_steps: 1", "steps_per_loop: 1", "warmup_steps: 0",
                           "decay: constant", f"learning_rate: {lr}", "weight_decay: 0.0",
                           "clip_norm: 0.0", "layer_decay: 0.5", "eval_steps: 0",
                           "jit_compile: false"])
    config = ExperimentConfig.load(recipe, ["trainer.warmup_steps=0"])
    trainer = Trainer(config, make_strategy("one_device"), str(tmp_path / "run"))
    model = trainer.model
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    trainer.train()
    moved = {v.path: np.abs(v.numpy() - before[v.path]).max() for v in model.trainable_variables}
    # Adam's first step moves an element by lr * scale * |g| / (|g| + epsilon): just under
    # lr * scale (tiny gradients, as in the query kernel, fall further short). One layer:
    # the embeddings learn at 0.5 ** 2, the transformer layer at 0.5, the head at 1.
    for path, scale in [("embeddings/word_embeddings/embeddings", 0.25),
                        ("transformer_layer_0/qkv/kernel", 0.5),
                        ("transformer_layer_0/output/kernel", 0.5),
                        ("classifier/kernel", 1.0)]:
        assert 0.8 * lr * scale < moved[path] <= lr * scale * (1 + 1e-4), (path, moved[path])
    # 40 evaluation examples at batch 16: three batches, the last padded.
    assert trainer.eval_steps() == 3
    assert trainer.evaluate()["accuracy"] >= 0.0
    with pytest.raises(ValueError, match="layer_decay must be in"):
        Trainer(ExperimentConfig.load(recipe, ["trainer.layer_decay=1.5"]),
                make_strategy("one_device"), str(tmp_path / "bad"))


def test_binary_metrics_f1_and_matthews():
    from tfbert.train.classification_task import _binary_metrics

    y = np.array([1, 1, 0, 0, 1, 0, 1, 0])
    p = np.array([1, 0, 0, 1, 1, 0, 1, 0])
    tp, fp, fn, tn = 3, 1, 1, 3
    got = _binary_metrics(tp, tp + fp, tp + fn, len(y))
    assert got["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert got["mcc"] == pytest.approx((tp * tn - fp * fn) / np.sqrt(4 * 4 * 4 * 4))
    assert (p == y).mean() == 0.75


# ------------------------------------------------------------------------- TFDS, trainer


@pytest.fixture(scope="module")
def sst2_data_dir(tmp_path_factory):
    """glue/sst2 built by TFDS's GLUE builder from local TSVs (only the download faked)."""
    import tensorflow_datasets as tfds

    root = tmp_path_factory.mktemp("glue")
    folder = root / "extracted" / "SST-2"
    folder.mkdir(parents=True)
    for name, rows in (("train.tsv", sentiment_rows(64, seed=7)),
                       ("dev.tsv", sentiment_rows(20, seed=8))):
        (folder / name).write_text(
            "sentence\tlabel\n" + "".join(f"{t}\t{int(y == 'pos')}\n" for t, y in rows))
    (folder / "test.tsv").write_text("index\tsentence\n0\tgreat\n")
    data_dir = str(root / "tfds")
    with mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                           lambda self, url: str(root / "extracted")):
        tfds.builder("glue/sst2", data_dir=data_dir).download_and_prepare()
    return data_dir


def test_tfds_glue_through_the_cli(tmp_path, vocab_file, sst2_data_dir, capsys):
    recipe = write_recipe(tmp_path / "sst2.yaml", vocab_file,
                          ["format: tfds", "tfds_name: glue/sst2",
                           f"tfds_data_dir: {sst2_data_dir}"],
                          ["train_steps: 100", "eval_steps: 2", "jit_compile: false"])
    model_dir = str(tmp_path / "run")
    assert train_main(["--config", recipe, "--model_dir", model_dir]) == 0
    assert eval_metrics(capsys.readouterr().out)["accuracy"] >= 0.9
    info = read_json(os.path.join(model_dir, "task.json"))
    assert info["label_names"] == ["negative", "positive"] and info["inputs"] == ["text"]
    out = str(tmp_path / "dev.jsonl")
    assert train_main(["--config", recipe, "--model_dir", model_dir, "--mode", "predict",
                       "--output_file", out]) == 0
    rows = read_jsonl(out)
    assert len(rows) == 20 and {r["gold"] for r in rows} == {"negative", "positive"}
    assert np.mean([r["label"] == r["gold"] for r in rows]) >= 0.9


# ---------------------------------------------------------------------- Keras model.fit


def test_keras_fit_snippet_runs_exactly_as_documented(tmp_path, vocab_file, sentiment_files):
    train_file, dev_file = sentiment_files
    keras.utils.set_random_seed(0)
    encoder = tfbert.BertEncoder.from_preset(
        "tiny", num_layers=1, hidden_dim=32, num_heads=2, intermediate_dim=64,
        max_sequence_length=32)
    preprocessor = BertPreprocessor(vocab_file, seq_length=16)
    train_ds = load_classification_data(train_file).dataset(batch_size=16, shuffle=True, seed=0)

    model = tfbert.BertClassifier(encoder, num_classes=2)
    model.compile(optimizer=keras.optimizers.AdamW(3e-5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(train_ds.map(lambda x, y: (preprocessor(x), y)), epochs=1, verbose=0)
    assert set(history.history) == {"loss", "accuracy"}
    assert np.isfinite(history.history["loss"][0])
    assert any(np.abs(w.numpy() - b).max() > 0 for w, b in zip(model.trainable_weights, before))

    # The same path learns the task with a fine-tuning rate for a model this small.
    model.compile(optimizer=keras.optimizers.AdamW(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(train_ds.map(lambda x, y: (preprocessor(x), y)), epochs=16, verbose=0)
    dev_ds = load_classification_data(dev_file, label_names=["neg", "pos"]).dataset(16)
    _, accuracy = model.evaluate(dev_ds.map(lambda x, y: (preprocessor(x), y)), verbose=0)
    assert accuracy >= 0.95


def test_keras_fit_on_sentence_pairs(tmp_path, vocab_file):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(
        json.dumps({"premise": "the film was great", "hypothesis": h, "label": y}) + "\n"
        for h, y in [("it was good", "entailment"), ("it was bad", "contradiction")] * 8))
    data = load_classification_data(str(path), text_column="premise",
                                    text_b_column="hypothesis")
    encoder = tfbert.BertEncoder.from_preset(
        "tiny", num_layers=1, hidden_dim=32, num_heads=2, intermediate_dim=64,
        max_sequence_length=32)
    preprocessor = BertPreprocessor(vocab_file, seq_length=16)
    (x, _), = data.dataset(batch_size=4).take(1)
    packed = preprocessor(x)
    # [CLS] the film was great [SEP] it was good [SEP]: the second segment has type 1.
    assert packed["input_type_ids"].numpy()[0].tolist() == [0] * 6 + [1] * 4 + [0] * 6
    model = tfbert.BertClassifier(encoder, num_classes=data.num_classes)
    model.compile(optimizer=keras.optimizers.AdamW(3e-5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    history = model.fit(data.dataset(batch_size=4).map(lambda x, y: (preprocessor(x), y)),
                        epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
