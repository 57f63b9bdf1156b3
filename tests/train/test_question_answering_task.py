"""SQuAD question answering: post-processing, the official metric, the trainer task and
the Keras path, on the hand-written SQuAD files in tests/fixtures (see
tests/data/test_squad_data.py) with the real uncased vocabulary and tiny models.
"""

import json
import math
import os
import sys
from unittest import mock

import numpy as np
import pytest

import helpers
from tfbert.data import squad
from tfbert.train import qa_postprocess

V1 = os.path.join(helpers.FIXTURES, "squad_v1.json")
V2 = os.path.join(helpers.FIXTURES, "squad_v2.json")
BAD_ANSWER = os.path.join(helpers.FIXTURES, "squad_bad_answer.json")
MALFORMED = os.path.join(helpers.FIXTURES, "squad_malformed.json")
SEQ, STRIDE, QUERY = 96, 64, 16
TINY = {"num_layers": 2, "hidden_dim": 64, "num_heads": 2, "intermediate_dim": 128,
        "max_sequence_length": SEQ, "dropout": 0.0, "attention_dropout": 0.0}


def vocab_file():
    return os.path.join(helpers.minilm_dir(), "vocab.txt")


@pytest.fixture(scope="module")
def preprocessor():
    from tfbert.text import BertPreprocessor

    return BertPreprocessor(vocab_file(), seq_length=SEQ)


@pytest.fixture(scope="module")
def v1(preprocessor):
    examples = squad.read_squad_json(V1)
    return examples, squad.convert_examples_to_features(examples, preprocessor, SEQ, STRIDE, QUERY)


@pytest.fixture(scope="module")
def v2(preprocessor):
    examples = squad.read_squad_json(V2, version_2_with_negative=True)
    return examples, squad.convert_examples_to_features(examples, preprocessor, SEQ, STRIDE, QUERY)


def base_logits(features, value=-5.0):
    """Flat logits over real positions, padding at -1e4 as BertQuestionAnswerer gives."""
    logits = np.where(features.input_mask == 1, value, -1e4).astype(np.float32)
    return logits.copy(), logits.copy()


def oracle_logits(features, high=10.0):
    """What a perfect model says: the labelled start and end of every window that holds
    the whole answer."""
    start, end = base_logits(features)
    for n in np.nonzero(features.start_positions)[0]:
        start[n, features.start_positions[n]] = high
        end[n, features.end_positions[n]] = high
    return start, end


def rows_of(features, examples, qas_id):
    index = [e.qas_id for e in examples].index(qas_id)
    return np.nonzero(features.example_index == index)[0]


def position(features, row, piece):
    """Sequence position in window `row` of the example's context piece `piece`."""
    return int(features.doc_offset[row] + piece - features.doc_start[row])


# === Post-processing ===


def test_answer_logits_give_back_every_answer_exactly(v1):
    examples, features = v1
    start, end = oracle_logits(features)
    predictions, nbest, null_odds = qa_postprocess.postprocess(examples, features, start, end)
    assert predictions == {e.qas_id: e.answers[0][0] for e in examples}
    # Accents, CJK, Greek capitals, the soft hyphen and the no-break space come back as
    # written in the context, not as the lower-cased, accent-stripped pieces.
    assert predictions["dvorak-1"] == "Antonín Dvořák"
    assert predictions["names-2"] == "Edo (江戸)"
    assert predictions["names-3"] == "ΟΔΥΣΣΕΥΣ"
    assert predictions["names-5"] == "212\u00a0km"
    assert predictions["names-6"] == "Zu\u00adrich"
    assert null_odds == {}
    for entries in nbest.values():
        assert len(entries) <= 20
        assert math.isclose(sum(x["probability"] for x in entries), 1.0, rel_tol=1e-9)
        assert entries[0]["probability"] > 0.99


def test_an_answer_cut_by_a_window_edge_is_read_from_the_window_with_most_context(v1):
    examples, features = v1
    start, end = oracle_logits(features)
    rows = rows_of(features, examples, "eddy-04")
    # Window 0 holds context pieces 0-81; the answer is pieces 79-86. A model sure of the
    # cut span "during the worst" (79-81) in window 0 scores it above the true answer in
    # window 1, but piece 79 has more context in window 1.
    first = rows[0]
    last_piece = features.doc_start[first] + features.doc_length[first] - 1
    start[first, position(features, first, 79)] = 20.0
    end[first, position(features, first, last_piece)] = 20.0
    predictions, nbest, _ = qa_postprocess.postprocess(examples, features, start, end)
    assert predictions["eddy-04"] == "during the worst storm the sea could send"
    assert "during the worst" not in [x["text"] for x in nbest["eddy-04"]]
    # The same cut span in window 1, where piece 79 has its most context, does win.
    start[rows[1], position(features, rows[1], 79)] = 20.0
    end[rows[1], position(features, rows[1], 81)] = 20.0
    predictions, _, _ = qa_postprocess.postprocess(examples, features, start, end)
    assert predictions["eddy-04"] == "during the worst"


def test_max_answer_length_and_n_best_size(v1):
    examples, features = v1
    start, end = oracle_logits(features)
    # "during the worst storm the sea could send" is 8 pieces.
    predictions, nbest, _ = qa_postprocess.postprocess(
        examples, features, start, end, n_best_size=3, max_answer_length=7)
    assert predictions["eddy-04"] != "during the worst storm the sea could send"
    assert predictions["eddy-06"] == "ninety-four years old"  # 5 pieces
    assert all(1 <= len(entries) <= 3 for entries in nbest.values())


def test_v2_null_answer_and_threshold(v2):
    examples, features = v2
    start, end = base_logits(features)
    impossible = {e.qas_id for e in examples if e.is_impossible}
    decoys = {}
    for e, example in enumerate(examples):
        rows = np.nonzero(features.example_index == e)[0]
        for n in rows:
            # [CLS] ("no answer"): 4 + 4 for answerable questions, 8 + 8 for the others.
            start[n, 0] = end[n, 0] = 8.0 if example.is_impossible else 4.0
            if features.start_positions[n]:
                start[n, features.start_positions[n]] = 6.0
                end[n, features.end_positions[n]] = 6.0
        if example.is_impossible:
            # A decoy one-piece span (5 + 5) at the first context piece of the first window.
            n = rows[0]
            start[n, features.doc_offset[n]] = end[n, features.doc_offset[n]] = 5.0
            decoys[example.qas_id] = example.context[:features.char_ends[e][0]]

    predictions, nbest, null_odds = qa_postprocess.postprocess(
        examples, features, start, end, version_2_with_negative=True)
    for example in examples:
        if example.is_impossible:
            assert predictions[example.qas_id] == ""
            assert null_odds[example.qas_id] == 16.0 - 10.0
        else:
            assert predictions[example.qas_id] == example.answers[0][0]
            assert null_odds[example.qas_id] == 8.0 - 12.0
        assert "" in [x["text"] for x in nbest[example.qas_id]]
    assert decoys == {"bee-3": "A", "bee-4": "A", "eddy2-2": "The"}

    # The threshold moves the line: above 6 the decoys answer, below -4 nothing does.
    predictions, _, _ = qa_postprocess.postprocess(
        examples, features, start, end, version_2_with_negative=True,
        null_score_diff_threshold=6.5)
    assert {q: predictions[q] for q in impossible} == decoys
    predictions, _, _ = qa_postprocess.postprocess(
        examples, features, start, end, version_2_with_negative=True,
        null_score_diff_threshold=-4.5)
    assert set(predictions.values()) == {""}


def google_run_squad():
    import google_reference

    return google_reference.google_run_squad()


def test_postprocess_matches_google_write_predictions(tmp_path, preprocessor):
    """Random logits through Google's run_squad.write_predictions and ours.

    Google maps a span back to text with get_final_text, which gives up (returns whole
    words) when normalisation changes a span's length (the soft hyphen, the no-break space
    of the "Names" paragraph) and takes the first match of the span's text in its words;
    ours reads each piece's own characters. On the other paragraphs both must agree.
    """
    run_squad, tokenization = google_run_squad()
    tokenizer = tokenization.FullTokenizer(vocab_file(), do_lower_case=True)
    compared = 0
    for path, v2 in ((V1, False), (V2, True)):
        run_squad.FLAGS.version_2_with_negative = v2
        google_examples = run_squad.read_squad_examples(path, is_training=False)
        google_features = []
        run_squad.convert_examples_to_features(
            google_examples, tokenizer, SEQ, STRIDE, QUERY, False, google_features.append)
        examples = squad.read_squad_json(path, v2)
        features = squad.convert_examples_to_features(examples, preprocessor, SEQ, STRIDE, QUERY)
        for seed in range(4):
            rng = np.random.default_rng(seed)
            start, end = base_logits(features)
            real = features.input_mask == 1
            start[real] = rng.normal(size=real.sum())
            end[real] = rng.normal(size=real.sum())
            results = [run_squad.RawResult(unique_id=g.unique_id, start_logits=start[n].tolist(),
                                           end_logits=end[n].tolist())
                       for n, g in enumerate(google_features)]
            files = [str(tmp_path / f"{name}.json") for name in ("pred", "nbest", "odds")]
            run_squad.write_predictions(google_examples, google_features, results, 20, 30,
                                        True, *files)
            google = []
            for f in files:
                if os.path.exists(f):  # null odds: v2.0 only
                    with open(f, encoding="utf-8") as opened:
                        google.append(json.load(opened))
            predictions, nbest, null_odds = qa_postprocess.postprocess(
                examples, features, start, end, version_2_with_negative=v2)
            for qas_id, text in google[0].items():
                if qas_id.startswith("names-"):
                    continue
                assert predictions[qas_id] == text, (seed, qas_id)
                compared += 1
                if v2:
                    assert null_odds[qas_id] == pytest.approx(google[2][qas_id], abs=1e-4)
                    assert [x["text"] for x in nbest[qas_id]] == [
                        x["text"] for x in google[1][qas_id]]
                    assert [x["probability"] for x in nbest[qas_id]] == pytest.approx(
                        [x["probability"] for x in google[1][qas_id]], abs=1e-5)
    assert compared == 4 * (16 + 6)


# === The official metric ===


def test_official_v1_metric_on_known_predictions(v1):
    examples, _ = v1
    predictions = {e.qas_id: e.answers[0][0] for e in examples}
    # Gold "the Great Storm of November 1703" -> 5 normalised tokens; 2 predicted, both
    # right: precision 1, recall 2/5, F1 4/7.
    predictions["eddy-05"] = "Great Storm"
    # Three golds; the best is "Carnegie Hall on 16 December 1893": 5 of its 6 tokens,
    # F1 10/11.
    predictions["dvorak-2"] = "Carnegie Hall on 16 December"
    metrics = qa_postprocess.evaluate(examples, predictions)
    assert metrics["exact_match"] == pytest.approx(100 * 20 / 22, rel=1e-12)
    assert metrics["f1"] == pytest.approx(100 * (20 + 4 / 7 + 10 / 11) / 22, rel=1e-12)
    # Articles, punctuation and case do not count.
    predictions = {e.qas_id: e.answers[0][0] for e in examples}
    predictions["eddy-07"] = "TRUNK of an oak-tree!"
    predictions["eddy-01"] = "Eddystone Rocks"
    assert qa_postprocess.evaluate(examples, predictions)["exact_match"] == pytest.approx(
        100 * 21 / 22, rel=1e-12)


def test_official_v2_metric_on_known_predictions(v2):
    examples, _ = v2
    predictions = {
        "bee-1": "about six weeks",          # right
        "bee-2": "two thousand",             # gold "up to two thousand": F1 2/3
        "bee-3": "",                         # right: unanswerable
        "bee-4": "the queen",                # wrong: unanswerable
        "eddy2-1": "ninety-four years old",  # right
        "eddy2-2": "",                       # right: unanswerable
    }
    metrics = qa_postprocess.evaluate(examples, predictions, version_2_with_negative=True)
    assert metrics == pytest.approx({
        "exact_match": 100 * 4 / 6, "f1": 100 * (4 + 2 / 3) / 6, "total": 6.0,
        "has_answer_exact_match": 100 * 2 / 3, "has_answer_f1": 100 * (2 + 2 / 3) / 3,
        "has_answer_total": 3.0,
        "no_answer_exact_match": 100 * 2 / 3, "no_answer_f1": 100 * 2 / 3, "no_answer_total": 3.0,
    }, rel=1e-12)
    # With null odds the script searches the best threshold: answering only bee-1,
    # eddy2-1 and bee-2 (odds <= -1) gets 5 2/3 of 6 for F1, and 5 of 6 exact at -2.
    null_odds = {"bee-1": -3.0, "eddy2-1": -2.0, "bee-2": -1.0, "bee-4": 1.5, "bee-3": 2.0,
                 "eddy2-2": 4.0}
    metrics = qa_postprocess.evaluate(
        examples, predictions, null_odds, version_2_with_negative=True)
    assert metrics["best_exact_match"] == pytest.approx(100 * 5 / 6, rel=1e-12)
    assert metrics["best_exact_match_threshold"] == -2.0
    assert metrics["best_f1"] == pytest.approx(100 * (5 + 2 / 3) / 6, rel=1e-12)
    assert metrics["best_f1_threshold"] == -1.0
    assert metrics["exact_match"] == pytest.approx(100 * 4 / 6, rel=1e-12)


# === The trainer task ===


def qa_config(extra=(), **data):
    from tfbert.config import ExperimentConfig

    overrides = [
        "task=question_answering", "model.preset=tiny",
        f"data.vocab_file={vocab_file()}", f"data.max_seq_length={SEQ}",
        f"data.doc_stride={STRIDE}", f"data.max_query_length={QUERY}",
        "data.format=squad", f"data.train_files={V1}", f"data.eval_files={V1}",
        "trainer.global_batch_size=16",
    ] + [f"data.{k}={v}" for k, v in data.items()] + list(extra)
    overrides.append("model.encoder_overrides={" + ", ".join(
        f"{k}: {v}" for k, v in TINY.items()) + "}")
    return ExperimentConfig.load(None, overrides)


@pytest.fixture(scope="module")
def task():
    import keras

    from tfbert.train.tasks import get_task

    qa_task = get_task(qa_config())
    keras.utils.set_random_seed(1)
    return qa_task, qa_task.build_model()


def test_loss_is_googles_mean_of_start_and_end_cross_entropy(task):
    import tensorflow as tf

    qa_task, model = task
    inputs, labels = next(iter(qa_task.dataset(None, training=True)))
    denominators = qa_task.denominators(labels)
    loss, sums = qa_task.step(model, inputs, labels, denominators, training=False)
    outputs = model(inputs, training=False)

    def mean_ce(logits, positions):
        logits = np.asarray(logits, np.float64)
        log_softmax = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(
            1, keepdims=True)) - logits.max(1, keepdims=True)
        return -np.mean(log_softmax[np.arange(len(positions)), np.asarray(positions)])

    expected = (mean_ce(outputs["start_logits"], labels["start_logits"])
                + mean_ce(outputs["end_logits"], labels["end_logits"])) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(sums["windows"]) == 16.0
    metrics = qa_task.metrics({k: float(v) for k, v in sums.items()})
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)
    # Two replicas with 8 windows each: each one's share, over the global count, adds up
    # to the global mean (the trainer sums their gradients).
    halves = [({k: v[i:i + 8] for k, v in inputs.items()},
               {k: v[i:i + 8] for k, v in labels.items()}) for i in (0, 8)]
    assert float(qa_task.denominators(halves[0][1])["windows"]) == 8.0
    shares = [qa_task.step(model, x, y, denominators, training=False)[0] for x, y in halves]
    assert float(tf.add_n(shares)) == pytest.approx(expected, rel=1e-5)


def test_evaluation_counts_every_window_once(task):
    qa_task, model = task
    assert qa_task.num_eval_steps() == 5  # 80 windows / 16
    batches = list(qa_task.dataset(None, training=False).take(7).as_numpy_iterator())
    weights = np.concatenate([labels["weight"] for _, labels in batches])
    assert weights.sum() == 80 and weights[:80].all() and not weights[80:].any()
    starts = np.concatenate([labels["start_logits"] for _, labels in batches])[:80]
    np.testing.assert_array_equal(starts, qa_task.features(False).start_positions)
    # Padding windows add nothing to the sums.
    inputs, labels = batches[6]
    _, sums = qa_task.step(model, inputs, labels, qa_task.denominators(labels), training=False)
    assert {k: float(v) for k, v in sums.items()} == {
        "start_loss_sum": 0.0, "end_loss_sum": 0.0, "start_correct": 0.0, "end_correct": 0.0,
        "windows": 0.0}


def test_task_info_and_v2_prediction_files(tmp_path):
    import keras

    from tfbert.train.tasks import get_task

    qa_task = get_task(qa_config(version_2_with_negative="true", eval_files=V2,
                                 null_score_diff_threshold=-1.5))
    assert qa_task.task_info() == {
        "seq_length": SEQ, "doc_stride": STRIDE, "max_query_length": QUERY,
        "max_answer_length": 30, "version_2_with_negative": True,
        "null_score_diff_threshold": -1.5}
    keras.utils.set_random_seed(2)
    model = qa_task.build_model()
    output = str(tmp_path / "predictions.json")
    metrics = qa_task.predict(model, output)
    with open(output, encoding="utf-8") as f:
        predictions = json.load(f)
    with open(tmp_path / "predictions_null_odds.json", encoding="utf-8") as f:
        null_odds = json.load(f)
    with open(tmp_path / "predictions_nbest.json", encoding="utf-8") as f:
        nbest = json.load(f)
    ids = ["bee-1", "bee-2", "bee-3", "bee-4", "eddy2-1", "eddy2-2"]
    assert list(predictions) == list(null_odds) == list(nbest) == ids
    # The threshold decides: "" exactly where the null odds exceed it.
    assert all((predictions[q] == "") == (null_odds[q] > -1.5) for q in ids)
    assert metrics["total"] == 6 and "has_answer_f1" in metrics and "best_f1" in metrics


def test_recipes_load_and_name_the_squad_settings():
    from tfbert.config import ExperimentConfig
    from tfbert.train.tasks import get_task

    for name, v2, tfds_name, lr in (("squad", False, "squad/v1.1", 3e-5),
                                    ("squad_v2", True, "squad/v2.0", 5e-5)):
        config = ExperimentConfig.load(
            os.path.join(helpers.REPO_ROOT, "configs", "finetune", f"{name}.yaml"))
        assert config.task == "question_answering"
        assert (config.data.format, config.data.tfds_name) == ("tfds", tfds_name)
        assert (config.data.max_seq_length, config.data.doc_stride,
                config.data.max_query_length) == (384, 128, 64)
        assert config.data.version_2_with_negative is v2
        assert config.trainer.learning_rate == lr
        assert type(get_task(config)).__name__ == "QuestionAnsweringTask"


def test_unknown_format_fails_listing_the_valid_ones():
    from tfbert.train.tasks import get_task

    with pytest.raises(ValueError, match="not a question answering format; valid: squad, tfds"):
        get_task(qa_config(format="csv"))


# === python -m tfbert.train, end to end ===


# Enough steps to learn all 22 answers whichever float rounding order the CPU kernels
# take. Where TensorFlow turns oneDNN on, at 300 and at 400 steps (every window right
# at 400) one question still took another question's answer from a window that lacks
# its own: across windows the best span wins, and the tiny model's scores there were
# not yet apart. At 600 all 22 were right with oneDNN on and off.
TRAIN_STEPS = 600


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("qa_recipe") / "squad_tiny.yaml"
    overrides = ", ".join(f"{k}: {v}" for k, v in TINY.items())
    path.write_text(
        "task: question_answering\n"
        "model:\n"
        "  preset: tiny\n"
        f"  encoder_overrides: {{{overrides}}}\n"
        "data:\n"
        "  format: squad\n"
        f"  train_files: {V1}\n"
        f"  eval_files: {V1}\n"
        f"  vocab_file: {vocab_file()}\n"
        f"  max_seq_length: {SEQ}\n"
        f"  doc_stride: {STRIDE}\n"
        f"  max_query_length: {QUERY}\n"
        "  seed: 3\n"
        "trainer:\n"
        f"  train_steps: {TRAIN_STEPS}\n"
        "  global_batch_size: 16\n"
        "  learning_rate: 3e-3\n"
        "  warmup_steps: 20\n"
        "  steps_per_loop: 50\n"
        "  checkpoint_interval: 0\n"
        "  eval_steps: 5\n"
        "  jit_compile: false\n"
    )
    return str(path)


def test_cli_trains_evaluates_predicts_and_learns_the_answers(recipe, tmp_path, capsys):
    """Train a tiny BERT on the 22 questions (80 windows) until it knows them, then
    predict every answer exactly, through the model directory it wrote."""
    from tfbert.train.__main__ import main

    model_dir = str(tmp_path / "run")
    assert main([f"--config={recipe}", f"--model_dir={model_dir}"]) == 0
    out = capsys.readouterr().out
    with open(os.path.join(model_dir, "task.json"), encoding="utf-8") as f:
        info = json.load(f)
    assert info["task"] == "question_answering"
    assert (info["seq_length"], info["doc_stride"], info["max_query_length"]) == (
        SEQ, STRIDE, QUERY)
    for name in ("config.json", "vocab.txt", "model.weights.h5"):
        assert os.path.isfile(os.path.join(model_dir, name))
    # The evaluation line: window-level loss and accuracy, then EM/F1 over the questions.
    eval_line = next(line for line in out.splitlines() if line.startswith(f"eval at step {TRAIN_STEPS}"))
    assert "exact_match 100.0000 f1 100.0000" in eval_line, out

    output = str(tmp_path / "predictions.json")
    assert main([f"--config={recipe}", f"--model_dir={model_dir}", "--mode=predict",
                 f"--output_file={output}"]) == 0
    with open(output, encoding="utf-8") as f:
        predictions = json.load(f)
    gold = {e.qas_id: e.answers[0][0] for e in squad.read_squad_json(V1)}
    assert predictions == gold
    assert os.path.isfile(str(tmp_path / "predictions_nbest.json"))

    # The model directory is a preset: a fresh run predicts the same from it alone.
    again = str(tmp_path / "again.json")
    assert main([f"--config={recipe}", f"--model_dir={tmp_path / 'fresh'}", "--mode=predict",
                 f"--set=model.preset={model_dir}", "--set=model.encoder_overrides={}",
                 f"--output_file={again}"]) == 0
    with open(again, encoding="utf-8") as f:
        assert json.load(f) == gold


def test_two_replicas_train_exactly_like_one_device(recipe, tmp_path):
    """Two mirrored CPU replicas of 8 windows end where one device with 16 does.

    It also guards the unused pooler: a variable without gradient makes the trainer's
    cross-replica all-reduce fail ("None values not supported") unless it is frozen.
    """
    import subprocess

    from tfbert.config import ExperimentConfig
    from tfbert.train.strategies import make_strategy
    from tfbert.train.trainer import Trainer

    overrides = ["trainer.train_steps=3", "trainer.steps_per_loop=3"]
    # Mirrored needs the CPU split into two devices before TensorFlow starts: its own
    # process (tests/train/run_trainer.py); one device runs here.
    runner = os.path.join(helpers.REPO_ROOT, "tests", "train", "run_trainer.py")
    out = str(tmp_path / "mirrored.npz")
    command = [sys.executable, runner, recipe, str(tmp_path / "mirrored"), "mirrored", out,
               "--cpu_devices", "2"]
    for item in overrides:
        command += ["--set", item]
    done = subprocess.run(command, check=False, cwd=helpers.REPO_ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    with np.load(out) as data:
        mirrored = [data[f"arr_{i}"] for i in range(len(data.files))]
    trainer = Trainer(ExperimentConfig.load(recipe, overrides), make_strategy("one_device"),
                      str(tmp_path / "one_device"))
    trainer.train()
    one_device = trainer.weights()
    assert len(one_device) == len(mirrored)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(one_device, mirrored))
    assert worst < 1e-5


@pytest.mark.parametrize("path, expected", [
    (BAD_ANSWER, (f"error: {BAD_ANSWER}: question bee-shifted at "
                  "data[0].paragraphs[0].qas[1].answers[0]: answer 'a few hundred' is not at "
                  "answer_start 41 of the context ('few hundred d' is there)")),
    (MALFORMED, f"error: {MALFORMED}:11: not valid JSON (Expecting ',' delimiter, column 8)"),
])
def test_cli_bad_data_fails_with_one_line(recipe, tmp_path, capsys, path, expected):
    from tfbert.train.__main__ import main

    assert main([f"--config={recipe}", f"--model_dir={tmp_path}", "--mode=train",
                 f"--set=data.train_files={path}"]) == 1
    assert capsys.readouterr().err.strip() == expected


# === TFDS ===


def test_tfds_squad_trains_through_the_task(tmp_path):
    """TFDS's real squad/v1.1 builder, prepared from the hand-written file (only the
    download is replaced), read by the task, and a few training steps on it."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from tfbert.train.trainer import Trainer

    data_dir = str(tmp_path / "tfds")
    with mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                           lambda self, urls: {k: V1 for k in urls}):
        tfds.builder("squad/v1.1", data_dir=data_dir).download_and_prepare()
    config = qa_config(
        format="tfds", tfds_name="squad/v1.1", tfds_data_dir=data_dir, train_files="",
        eval_files="",
        extra=["trainer.train_steps=2", "trainer.steps_per_loop=2",
               "trainer.checkpoint_interval=0", "trainer.jit_compile=false"])
    trainer = Trainer(config, tf.distribute.OneDeviceStrategy("/cpu:0"), str(tmp_path / "run"))
    examples = trainer.task.examples(True)
    assert sorted(e.qas_id for e in examples) == sorted(e.qas_id for e in squad.read_squad_json(V1))
    assert len(trainer.task.features(True)) == 80
    metrics = trainer.train()
    assert math.isfinite(metrics["loss"]) and int(trainer.step.numpy()) == 2
    # EM / F1 over TFDS's validation split (the same 22 questions).
    scores = trainer.task.host_metrics(trainer.model)
    assert scores["total"] == 22 and 0 <= scores["f1"] <= 100


# === Keras: model.fit ===


def test_keras_fit_on_the_squad_dataset(v1, task):
    import keras

    import tfbert

    examples, features = v1
    keras.utils.set_random_seed(4)
    encoder = tfbert.BertEncoder.from_preset("tiny", **TINY)
    model = tfbert.BertQuestionAnswerer(encoder)
    model.compile(
        optimizer=keras.optimizers.AdamW(3e-3),
        loss={"start_logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              "end_logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
    )
    train = squad.make_dataset(features, 16, training=True, seed=1)
    before = model.evaluate(squad.make_dataset(features, 80), verbose=0)
    history = model.fit(train, epochs=4, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    # Keras adds the two mean cross-entropies; the trainer task halves their sum.
    qa_task, _ = task
    inputs, labels = next(iter(squad.make_dataset(features, 80)))
    labels = dict(labels, weight=np.ones(80, np.float32))
    loss, _ = qa_task.step(model, inputs, labels, qa_task.denominators(labels), training=False)
    after = model.evaluate(squad.make_dataset(features, 80), verbose=0)
    after = after[0] if isinstance(after, list) else after
    before = before[0] if isinstance(before, list) else before
    assert after == pytest.approx(2 * float(loss), rel=1e-4)
    assert after < before
    # Answers come out of the Keras model the same way.
    start, end = qa_postprocess.predict_logits(model, features, batch_size=32)
    predictions, _, _ = qa_postprocess.postprocess(examples, features, start, end)
    assert set(predictions) == {e.qas_id for e in examples}
