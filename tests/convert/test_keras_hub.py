"""`--from keras_hub`: parity with KerasHub's own BertBackbone on a saved preset."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import helpers
from tfbert import features
from tfbert.convert import keras_hub as keras_hub_convert
from tfbert.convert.__main__ import main as convert_main
from tfbert.models import presets

VOCAB_SIZE, SEQ, BATCH = 120, 16, 3
TOLERANCE = 1e-4


def _perturb(model, seed=0):
    """Random weights of a trained model's scale: biases and LayerNorm offsets nonzero,
    LayerNorm scales away from one, kernels giving unit-variance pre-activations."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape = tuple(v.shape)
        if v.path.endswith("gamma"):
            value = 1.0 + 0.3 * rng.standard_normal(shape)
        elif v.path.endswith("bias") or v.path.endswith("beta"):
            value = 0.3 * rng.standard_normal(shape)
        elif v.path.endswith("embeddings"):
            value = 0.5 * rng.standard_normal(shape)
        else:  # kernels: [in, ...] or [N, D, out] for the attention output
            fan_in = int(np.prod(shape[:-1])) if "attention_output" in v.path else shape[0]
            value = rng.standard_normal(shape) / np.sqrt(fan_in)
        v.assign(value.astype("float32"))


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB_SIZE, num_layers=2, num_heads=4, hidden_dim=48,  # head size 12
        intermediate_dim=96, max_sequence_length=32, dropout=0.1,
    )
    _perturb(backbone)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"tok{i}" for i in range(VOCAB_SIZE - len(vocab))]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocab, lowercase=False)
    directory = tmp_path_factory.mktemp("keras_hub") / "bert_tiny_cased"
    backbone.save_to_preset(str(directory))
    tokenizer.save_to_preset(str(directory))
    inputs = helpers.random_inputs(BATCH, SEQ, VOCAB_SIZE, seed=1, pad_from=9)
    expected = backbone({
        "token_ids": inputs[features.INPUT_WORD_IDS],
        "segment_ids": inputs[features.INPUT_TYPE_IDS],
        "padding_mask": inputs[features.INPUT_MASK],
    })
    expected = {k: np.asarray(v) for k, v in expected.items()}
    return dict(directory=directory, vocab=vocab, inputs=inputs, expected=expected)


def test_preset_matches_keras_hub(preset, tmp_path):
    output = tmp_path / "converted"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [helpers.REPO_ROOT, os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-m", "tfbert.convert", "--from=keras_hub",
         f"--input={preset['directory']}", f"--output={output}"],
        capture_output=True, text=True, env=env, cwd=helpers.REPO_ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads((output / "config.json").read_text())
    assert config["hidden_act"] == "gelu_new"  # KerasHub's gelu_approximate
    assert config["lowercase"] is False  # from the preset's tokenizer
    assert (output / "vocab.txt").read_text().split("\n")[:-1] == preset["vocab"]

    got = presets.load_encoder(str(output))(preset["inputs"])
    diffs = {
        name: helpers.max_abs_diff(got[name], preset["expected"][name])
        for name in (features.SEQUENCE_OUTPUT, features.POOLED_OUTPUT)
    }
    print("max abs diff vs KerasHub:", diffs)
    assert max(diffs.values()) <= TOLERANCE, diffs
    # Padding matters here: the padded rows differ from unpadded ones.
    assert np.max(np.abs(preset["expected"][features.POOLED_OUTPUT])) > 0.1


def test_lowercase_override_and_errors(preset, tmp_path, capsys):
    keras_hub_convert.convert(str(preset["directory"]), str(tmp_path / "m"), lowercase=True)
    assert presets.load_config(str(tmp_path / "m")).lowercase is True

    code = convert_main(["--from=keras_hub", f"--input={tmp_path / 'nope'}",
                         f"--output={tmp_path / 'o'}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "nope" in err, err

    # A tfbert model directory is not a KerasHub preset; the error says what it holds.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"class_name": "GPT2Backbone"}))
    code = convert_main(["--from=keras_hub", f"--input={tmp_path / 'other'}",
                         f"--output={tmp_path / 'o'}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "GPT2Backbone" in err and len(err.splitlines()) == 1, err
