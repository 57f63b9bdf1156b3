"""`--from google`: parity with google-research/bert's own modeling.py and run_pretraining.py.

A tiny BertModel with run_pretraining.py's MLM and NSP heads is built by Google's code in a
TF 1 graph, given random non-trivial weights (biases, LayerNorm offsets and scales too, so
a swapped or dropped tensor shows), run on padded inputs and saved with a TF 1 Saver the
way Google's checkpoints are; the converted tfbert model must reproduce its outputs.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import google_reference
import helpers
from tfbert import features
from tfbert.convert import google
from tfbert.convert.__main__ import main as convert_main
from tfbert.models import presets

CONFIG = dict(
    vocab_size=99,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    max_position_embeddings=32,
    type_vocab_size=2,
    initializer_range=0.02,
)
BATCH, SEQ, PREDICTIONS = 3, 16, 5
TOLERANCE = 1e-4


def _inputs():
    inputs = helpers.random_inputs(BATCH, SEQ, CONFIG["vocab_size"], seed=1, pad_from=10)
    rng = np.random.default_rng(2)
    positions = rng.integers(1, 10, (BATCH, PREDICTIONS)).astype("int32")
    positions[1:, -1] = 0  # zero-padded predictions, as create_pretraining_data writes them
    inputs[features.MASKED_LM_POSITIONS] = positions
    return inputs


def _perturb(session, variables, seed=3):
    """Replaces Google's initial values (zero biases, unit LayerNorm scales, 0.02 kernels)
    with random ones of the scale a trained model has, so that every tensor matters."""
    rng = np.random.default_rng(seed)
    for v in variables:
        shape = v.shape.as_list()
        name = v.op.name
        if name.endswith("LayerNorm/gamma"):
            value = 1.0 + 0.3 * rng.standard_normal(shape)
        elif len(shape) == 1:  # biases and LayerNorm offsets
            value = 0.3 * rng.standard_normal(shape)
        elif "embeddings" in name or "output_weights" in name:
            value = 0.5 * rng.standard_normal(shape)
        else:  # kernels [in, out]: unit-variance pre-activations, so gelu's tails matter
            value = rng.standard_normal(shape) / np.sqrt(shape[0])
        v.load(value.astype("float32"), session)


@pytest.fixture(scope="module")
def google_checkpoint(tmp_path_factory):
    """Google's tiny pretraining model saved as uncased_L-2_H-64_A-4/bert_model.ckpt, and its
    outputs on `_inputs()`."""
    modeling = google_reference.google_module("modeling")
    run_pretraining = google_reference.google_module("run_pretraining")
    optimization = google_reference.google_module("optimization")
    v1 = tf.compat.v1
    directory = tmp_path_factory.mktemp("google") / "uncased_L-2_H-64_A-4"
    directory.mkdir()
    inputs = _inputs()
    config = modeling.BertConfig.from_dict(CONFIG)

    with tf.Graph().as_default():
        ph = {k: v1.placeholder(tf.int32, v.shape, name=k) for k, v in inputs.items()}
        model = modeling.BertModel(
            config=config,
            is_training=False,
            input_ids=ph[features.INPUT_WORD_IDS],
            input_mask=ph[features.INPUT_MASK],
            token_type_ids=ph[features.INPUT_TYPE_IDS],
        )
        mlm_loss, _, mlm_log_probs = run_pretraining.get_masked_lm_output(
            config, model.get_sequence_output(), model.get_embedding_table(),
            ph[features.MASKED_LM_POSITIONS],
            tf.zeros([BATCH, PREDICTIONS], tf.int32), tf.ones([BATCH, PREDICTIONS]),
        )
        nsp_loss, _, nsp_log_probs = run_pretraining.get_next_sentence_output(
            config, model.get_pooled_output(), tf.zeros([BATCH], tf.int32)
        )
        model_variables = v1.trainable_variables()
        # As run_pretraining.py trains: adds global_step and the adam_m / adam_v slots that
        # Google's released checkpoints carry, which the importer must skip by name.
        optimization.create_optimizer(mlm_loss + nsp_loss, 1e-4, 10, 1, use_tpu=False)
        # run_pretraining.py returns log-probabilities; their inputs are the logits.
        assert mlm_log_probs.op.type == nsp_log_probs.op.type == "LogSoftmax"
        fetches = {
            features.SEQUENCE_OUTPUT: model.get_sequence_output(),
            features.POOLED_OUTPUT: model.get_pooled_output(),
            features.ENCODER_OUTPUTS: model.get_all_encoder_layers(),
            features.MLM_LOGITS: mlm_log_probs.op.inputs[0],
            features.NSP_LOGITS: nsp_log_probs.op.inputs[0],
            "mlm_log_probs": mlm_log_probs,
        }
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            _perturb(session, model_variables)
            expected = session.run(fetches, {ph[k]: v for k, v in inputs.items()})
            saved = v1.train.Saver().save(session, str(directory / "bert_model.ckpt"))
            encoder_only = directory.parent / "encoder_only"
            encoder_only.mkdir()
            v1.train.Saver([v for v in model_variables if v.op.name.startswith("bert/")]).save(
                session, str(encoder_only / "bert_model.ckpt")
            )
            names = [v.op.name for v in v1.global_variables()]

    assert saved == str(directory / "bert_model.ckpt")
    assert "global_step" in names and any(n.endswith("/adam_m") for n in names)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"tok{i}" for i in range(CONFIG["vocab_size"] - len(vocab))]
    for d in (directory, encoder_only):
        (d / "bert_config.json").write_text(json.dumps(CONFIG, indent=2))
        (d / "vocab.txt").write_text("".join(t + "\n" for t in vocab))
    return dict(directory=directory, encoder_only=encoder_only, inputs=inputs, expected=expected)


def _run_cli(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [helpers.REPO_ROOT, os.environ.get("PYTHONPATH")])))
    return subprocess.run(
        [sys.executable, "-m", "tfbert.convert", *args],
        capture_output=True, text=True, env=env, cwd=helpers.REPO_ROOT, timeout=300,
    )


def test_pretraining_checkpoint_matches_google(google_checkpoint, tmp_path):
    output = tmp_path / "converted"
    result = _run_cli("--from=google", f"--input={google_checkpoint['directory']}",
                      f"--output={output}")
    assert result.returncode == 0, result.stderr

    config = json.loads((output / "config.json").read_text())
    assert config["hidden_act"] == "gelu_new"  # Google's "gelu" is the tanh form
    assert config["lowercase"] is True  # "uncased_..." directory
    assert json.loads((output / "task.json").read_text())["task"] == "pretraining"
    model = presets.load_task_model(str(output))
    inputs, expected = google_checkpoint["inputs"], google_checkpoint["expected"]
    got = model(inputs)

    diffs = {
        name: helpers.max_abs_diff(got[name], expected[name])
        for name in (features.SEQUENCE_OUTPUT, features.POOLED_OUTPUT,
                     features.ENCODER_OUTPUTS)
    }
    # Google's MLM output is [B*P, V] (gather_indexes flattens batch and predictions).
    mlm = np.reshape(got[features.MLM_LOGITS], (BATCH * PREDICTIONS, -1))
    diffs[features.MLM_LOGITS] = helpers.max_abs_diff(mlm, expected[features.MLM_LOGITS])
    diffs["mlm_log_probs"] = helpers.max_abs_diff(
        tf.nn.log_softmax(mlm), expected["mlm_log_probs"]
    )
    diffs[features.NSP_LOGITS] = helpers.max_abs_diff(
        got[features.NSP_LOGITS], expected[features.NSP_LOGITS]
    )
    print("max abs diff vs Google:", diffs)
    assert max(diffs.values()) <= TOLERANCE, diffs
    # The comparison is sharp enough to tell the two gelu forms apart.
    assert np.max(np.abs(expected[features.POOLED_OUTPUT])) > 0.1


def test_exact_gelu_would_not_match(google_checkpoint, tmp_path):
    """Why the importer writes "gelu_new": the exact erf gelu misses Google's outputs."""
    model = google.convert(str(google_checkpoint["directory"]), str(tmp_path / "m"))
    exact = presets.build_encoder(
        google.read_google_config(str(google_checkpoint["directory"] / "bert_config.json")),
        activation="gelu",
    )
    exact.set_weights(model.encoder.get_weights())
    inputs = {k: google_checkpoint["inputs"][k] for k in features.MODEL_INPUTS}
    diff = helpers.max_abs_diff(
        exact(inputs)[features.SEQUENCE_OUTPUT],
        google_checkpoint["expected"][features.SEQUENCE_OUTPUT],
    )
    assert diff > 3 * TOLERANCE, diff


def test_encoder_only_checkpoint_and_lowercase(google_checkpoint, tmp_path):
    expected = google_checkpoint["expected"]
    inputs = {k: google_checkpoint["inputs"][k] for k in features.MODEL_INPUTS}
    # The checkpoint prefix itself is accepted too; no heads -> an encoder directory.
    prefix = str(google_checkpoint["encoder_only"] / "bert_model.ckpt")
    output = tmp_path / "encoder"
    google.convert(prefix, str(output))
    assert not (output / "task.json").exists()
    encoder = presets.load_encoder(str(output))
    got = encoder(inputs)
    diff = helpers.max_abs_diff(
        [got[features.SEQUENCE_OUTPUT], got[features.POOLED_OUTPUT]],
        [expected[features.SEQUENCE_OUTPUT], expected[features.POOLED_OUTPUT]],
    )
    assert diff <= TOLERANCE, diff
    # "encoder_only" says neither cased nor uncased: lower-casing by default; an explicit
    # argument wins; a "cased_..." name means no lower-casing.
    assert presets.load_config(str(output)).lowercase is True
    google.convert(prefix, str(output), lowercase=False)
    assert presets.load_config(str(output)).lowercase is False
    assert google.infer_lowercase("/x/cased_L-12_H-768_A-12") is False
    assert google.infer_lowercase("/x/multi_cased_L-12_H-768_A-12/") is False
    assert google.infer_lowercase("/x/wwm_uncased_L-24_H-1024_A-16") is True


def _save_subset(google_checkpoint, directory, drop=(), extra=None):
    """Copies the test checkpoint without the tensors in `drop`, plus `extra` ones."""
    reader = tf.train.load_checkpoint(str(google_checkpoint["directory"] / "bert_model.ckpt"))
    directory.mkdir()
    for name in ("bert_config.json", "vocab.txt"):
        (directory / name).write_text((google_checkpoint["directory"] / name).read_text())
    with tf.Graph().as_default():
        variables = [
            tf.compat.v1.Variable(reader.get_tensor(name), name=name)
            for name in reader.get_variable_to_shape_map()
            if name not in drop
        ]
        variables += [tf.compat.v1.Variable(v, name=k) for k, v in (extra or {}).items()]
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver(variables).save(session, str(directory / "bert_model.ckpt"))


def test_cli_errors_name_the_problem(google_checkpoint, tmp_path, capsys):
    result = _run_cli("--from=google", "--input=/nonexistent/bert", f"--output={tmp_path}/o")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "/nonexistent/bert" in lines[0], result.stderr

    missing = "bert/encoder/layer_1/attention/self/key/bias"
    _save_subset(google_checkpoint, tmp_path / "missing", drop={missing})
    code = convert_main(["--from=google", f"--input={tmp_path / 'missing'}",
                         f"--output={tmp_path / 'o'}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and missing in err, err
    assert not (tmp_path / "o").exists()

    # A tensor the table does not know (here a run_classifier.py head) is listed, not
    # skipped; optimizer slots and global_step are the only entries skipped by name.
    _save_subset(google_checkpoint, tmp_path / "extra",
                 extra={"output_weights": np.zeros((3, 64), "float32")})
    code = convert_main(["--from=google", f"--input={tmp_path / 'extra'}",
                         f"--output={tmp_path / 'o'}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "output_weights" in err and "adam" not in err, err

    bad = tmp_path / "badvocab"
    shutil.copytree(google_checkpoint["encoder_only"], bad)
    with open(bad / "vocab.txt", "a") as f:
        f.write("extra\n")
    code = convert_main(["--from=google", f"--input={bad}", f"--output={tmp_path / 'o'}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "vocab.txt" in err and "100 tokens" in err, err
