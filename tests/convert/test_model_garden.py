"""`--from model_garden`: parity with tf-models-official's own BertEncoder (tf_keras)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import helpers
from tfbert import features
from tfbert.convert import model_garden
from tfbert.convert.__main__ import main as convert_main
from tfbert.models import presets

CONFIG = dict(
    vocab_size=110,
    hidden_size=48,  # head size 12: 1/sqrt(D) is not a power of two, so scaling order shows
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=96,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    max_position_embeddings=32,
    type_vocab_size=2,
    initializer_range=0.02,
)
BATCH, SEQ = 3, 16
TOLERANCE = 1e-4


def _perturb(network, seed=0):
    """Random weights of a trained model's scale: biases and LayerNorm offsets nonzero,
    LayerNorm scales away from one, kernels giving unit-variance pre-activations."""
    rng = np.random.default_rng(seed)
    for v in network.weights:
        shape, name = tuple(v.shape), v.name
        if "gamma" in name:
            value = 1.0 + 0.3 * rng.standard_normal(shape)
        elif "bias" in name or "beta" in name:
            value = 0.3 * rng.standard_normal(shape)
        elif "embeddings" in name:
            value = 0.5 * rng.standard_normal(shape)
        else:  # kernels: [in, ...] or [N, D, out] for the attention output
            fan_in = int(np.prod(shape[:-1])) if "attention_output" in name else shape[0]
            value = rng.standard_normal(shape) / np.sqrt(fan_in)
        v.assign(value.astype("float32"))


def _mg_encoder(config):
    """Model Garden's BertEncoder as its tf2_bert_encoder_checkpoint_converter builds one."""
    import tf_keras
    from official.modeling import tf_utils
    from official.nlp.modeling import networks

    return networks.BertEncoder(
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        num_layers=config["num_hidden_layers"],
        num_attention_heads=config["num_attention_heads"],
        intermediate_size=config["intermediate_size"],
        activation=tf_utils.get_activation(config["hidden_act"]),
        dropout_rate=config["hidden_dropout_prob"],
        attention_dropout_rate=config["attention_probs_dropout_prob"],
        max_sequence_length=config["max_position_embeddings"],
        type_vocab_size=config["type_vocab_size"],
        initializer=tf_keras.initializers.TruncatedNormal(stddev=config["initializer_range"]),
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import tensorflow as tf

    network = _mg_encoder(CONFIG)
    _perturb(network)
    directory = tmp_path_factory.mktemp("model_garden") / "uncased_L-2_H-48_A-4"
    directory.mkdir()
    # As Model Garden's checkpoint converter writes it (create_v2_checkpoint: save()).
    tf.train.Checkpoint(encoder=network).save(str(directory / "bert_model.ckpt"))
    (directory / "bert_config.json").write_text(json.dumps(CONFIG, indent=2))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"tok{i}" for i in range(CONFIG["vocab_size"] - len(vocab))]
    (directory / "vocab.txt").write_text("".join(t + "\n" for t in vocab))
    inputs = helpers.random_inputs(BATCH, SEQ, CONFIG["vocab_size"], seed=1, pad_from=9)
    sequence_output, pooled_output = network(inputs, training=False)
    expected = {features.SEQUENCE_OUTPUT: sequence_output.numpy(),
                features.POOLED_OUTPUT: pooled_output.numpy()}
    return dict(directory=directory, inputs=inputs, expected=expected)


def test_checkpoint_matches_model_garden(checkpoint, tmp_path):
    output = tmp_path / "converted"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [helpers.REPO_ROOT, os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-m", "tfbert.convert", "--from=model_garden",
         f"--input={checkpoint['directory']}", f"--output={output}"],
        capture_output=True, text=True, env=env, cwd=helpers.REPO_ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads((output / "config.json").read_text())
    assert config["hidden_act"] == "gelu_new"  # Model Garden's gelu: tanh approximation
    assert config["lowercase"] is True

    got = presets.load_encoder(str(output))(checkpoint["inputs"])
    diffs = {
        name: helpers.max_abs_diff(got[name], checkpoint["expected"][name])
        for name in (features.SEQUENCE_OUTPUT, features.POOLED_OUTPUT)
    }
    print("max abs diff vs Model Garden:", diffs)
    assert max(diffs.values()) <= TOLERANCE, diffs
    assert np.max(np.abs(checkpoint["expected"][features.POOLED_OUTPUT])) > 0.1


def test_config_that_does_not_match_the_checkpoint(checkpoint, tmp_path, capsys):
    # In-process too (a second Model Garden encoder in one process keeps its names).
    model_garden.convert(str(checkpoint["directory"]), str(tmp_path / "ok"), lowercase=False)
    assert presets.load_config(str(tmp_path / "ok")).lowercase is False

    wrong = tmp_path / "three_layers"
    wrong.mkdir()
    for f in os.listdir(checkpoint["directory"]):
        (wrong / f).write_bytes((checkpoint["directory"] / f).read_bytes())
    (wrong / "bert_config.json").write_text(json.dumps(dict(CONFIG, num_hidden_layers=3)))
    code = convert_main(["--from=model_garden", f"--input={wrong}", f"--output={tmp_path / 'o'}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "transformer/layer_2/" in err and "pooler_transform/kernel" in err, err
    assert not (tmp_path / "o").exists()
