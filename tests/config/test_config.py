import glob
import json
import os

import pytest

import helpers
from tfbert.config import SIZES, BertConfig, apply_overrides, parse_override


def test_size_files_in_configs_match_the_size_table():
    files = sorted(glob.glob(os.path.join(helpers.REPO_ROOT, "configs", "models", "*.json")))
    assert {os.path.basename(f)[:-5] for f in files} == set(SIZES)
    for f in files:
        assert BertConfig.from_json_file(f) == BertConfig.from_size(os.path.basename(f)[:-5])


def test_reads_googles_bert_config_json(tmp_path):
    # The exact fields of Google's uncased_L-12_H-768_A-12/bert_config.json.
    google = {
        "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
        "max_position_embeddings": 512, "num_attention_heads": 12, "num_hidden_layers": 12,
        "type_vocab_size": 2, "vocab_size": 30522,
    }
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps(google))
    config = BertConfig.from_json_file(str(path))
    assert config == BertConfig()
    out = tmp_path / "out.json"
    config.to_json_file(str(out))
    written = json.loads(out.read_text())
    # Everything Google's BertConfig reads is there, with the same values.
    assert {k: written[k] for k in google} == google
    assert written["lowercase"] is True


def test_unknown_keys_are_errors_naming_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown key\(s\) hiden_size; valid keys: vocab_size, hidden_size"):
        BertConfig.from_dict({"hiden_size": 10})


def test_invalid_values_are_rejected():
    with pytest.raises(ValueError, match="not a multiple of num_attention_heads"):
        BertConfig(hidden_size=100, num_attention_heads=12)
    with pytest.raises(ValueError, match="hidden_act 'swish' is not supported"):
        BertConfig(hidden_act="swish")
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        BertConfig.from_size("huge")


def test_bad_json_names_the_file(tmp_path):
    path = tmp_path / "bert_config.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="bert_config.json: not valid JSON"):
        BertConfig.from_json_file(str(path))


def test_set_overrides_keep_types_and_reject_unknown_keys():
    data = {"trainer": {"train_steps": 10, "learning_rate": 1e-4}, "model": {"preset": "tiny"}}
    out = apply_overrides(data, ["trainer.train_steps=250", "model.preset=base", "trainer.learning_rate=3e-5"])
    assert out == {"trainer": {"train_steps": 250, "learning_rate": 3e-5}, "model": {"preset": "base"}}
    assert data["trainer"]["train_steps"] == 10  # the input is not modified
    with pytest.raises(ValueError, match="no key 'steps' under trainer; valid: learning_rate, train_steps"):
        apply_overrides(data, ["trainer.steps=1"])
    with pytest.raises(ValueError, match="expected key=value"):
        parse_override("trainer.train_steps")


def test_yaml_reads_exponent_floats(tmp_path):
    from tfbert.config import load_yaml

    path = tmp_path / "recipe.yaml"
    path.write_text("trainer:\n  learning_rate: 3e-5\n  name: 1e\n")
    assert load_yaml(str(path)) == {"trainer": {"learning_rate": 3e-5, "name": "1e"}}
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: [1,\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        load_yaml(str(bad))


def test_every_recipe_in_configs_loads():
    from tfbert.config import ExperimentConfig

    recipes = sorted(glob.glob(os.path.join(helpers.REPO_ROOT, "configs", "*", "*.yaml")))
    assert any("pretrain" in r for r in recipes)
    for path in recipes:
        config = ExperimentConfig.load(path)  # unknown keys would fail here, naming the file
        assert config.trainer.train_steps > 0, path
