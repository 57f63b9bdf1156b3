"""Hugging Face import (--from=hf) and export (--to=hf).

Parity with transformers is checked against tests/fixtures/hf_minilm_reference.npz (made
by tests/fixtures/make_hf_reference.py with torch), so CI needs no torch; where torch and
transformers import, test_export_loads_in_transformers also runs the exports through them.
"""

import importlib.util
import json
import os
import pickle

import numpy as np
import pytest
import safetensors.numpy

import helpers
import tfbert
from tfbert.convert import hf
from tfbert.convert.__main__ import main
from tfbert.convert.mapping import ConversionError

INPUTS = ("input_word_ids", "input_mask", "input_type_ids")


def _load_script(name):
    path = os.path.join(helpers.FIXTURES, name + ".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Tiny random models and their inputs, shared with the torch-side check.
check = _load_script("check_hf_export")


def _hf_keys(num_layers, pretrainer):
    """The state-dict keys of transformers 5.24's BertModel / BertForPreTraining, as
    printed by `model.state_dict()` for a 1-layer model (its non-persistent buffers
    position_ids / token_type_ids excluded), less the tied `cls.predictions.decoder.*`."""
    layer = [
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.0.attention.self.query.bias",
        "encoder.layer.0.attention.self.key.weight",
        "encoder.layer.0.attention.self.key.bias",
        "encoder.layer.0.attention.self.value.weight",
        "encoder.layer.0.attention.self.value.bias",
        "encoder.layer.0.attention.output.dense.weight",
        "encoder.layer.0.attention.output.dense.bias",
        "encoder.layer.0.attention.output.LayerNorm.weight",
        "encoder.layer.0.attention.output.LayerNorm.bias",
        "encoder.layer.0.intermediate.dense.weight",
        "encoder.layer.0.intermediate.dense.bias",
        "encoder.layer.0.output.dense.weight",
        "encoder.layer.0.output.dense.bias",
        "encoder.layer.0.output.LayerNorm.weight",
        "encoder.layer.0.output.LayerNorm.bias",
    ]
    keys = [
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "embeddings.LayerNorm.bias",
        *[k.replace("layer.0.", f"layer.{i}.") for i in range(num_layers) for k in layer],
        "pooler.dense.weight",
        "pooler.dense.bias",
    ]
    if not pretrainer:
        return set(keys)
    return {"bert." + k for k in keys} | {
        "cls.predictions.bias",
        "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias",
        "cls.seq_relationship.weight",
        "cls.seq_relationship.bias",
    }


def _export(model, tmp_path, lowercase=False):
    """Saves `model` as a tfbert directory and exports it with the CLI; returns the HF dir."""
    model.save_to_preset(str(tmp_path / "tfbert"), vocabulary=check.tiny_vocabulary(64),
                         lowercase=lowercase)
    hf_dir = str(tmp_path / "hf")
    assert main(["--to=hf", f"--input={tmp_path / 'tfbert'}", f"--output={hf_dir}"]) == 0
    return hf_dir


def _rewrite_weights(hf_dir, edit):
    """Replaces model.safetensors with edit(tensors)."""
    path = os.path.join(hf_dir, hf.WEIGHTS_FILE)
    tensors = edit(dict(safetensors.numpy.load_file(path)))
    safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})


def _read_json(directory, name):
    with open(os.path.join(directory, name), encoding="utf-8") as f:
        return json.load(f)


def _outputs(model, inputs):
    return {k: np.asarray(v) for k, v in model(inputs).items() if k != "encoder_outputs"}


@pytest.mark.slow
def test_minilm_import_matches_transformers(tmp_path, capsys):
    ref = np.load(os.path.join(helpers.FIXTURES, "hf_minilm_reference.npz"))
    out_dir = tmp_path / "minilm"
    assert main(["--from=hf", f"--input={helpers.minilm_dir()}", f"--output={out_dir}"]) == 0
    assert sorted(os.listdir(out_dir)) == ["config.json", "model.weights.h5", "vocab.txt"]
    assert json.loads((out_dir / "config.json").read_text())["lowercase"] is True

    encoder = tfbert.BertEncoder.from_preset(str(out_dir))
    outputs = encoder({k: ref[k] for k in INPUTS})
    # Padded positions too: both mask padded keys, so even their rows agree.
    sequence_diff = helpers.max_abs_diff(outputs["sequence_output"], ref["sequence_output"])
    pooled_diff = helpers.max_abs_diff(outputs["pooled_output"], ref["pooled_output"])
    with capsys.disabled():
        print(f"\nMiniLM vs transformers ({ref['versions']}): sequence_output "
              f"{sequence_diff:.3g}, pooled_output {pooled_diff:.3g}")
    assert sequence_diff <= 1e-4
    assert pooled_diff <= 1e-4
    # The sentences are real and the batch really is padded and has pairs.
    assert ref["input_mask"].sum(axis=1).min() < ref["input_mask"].shape[1] // 2
    assert (ref["input_type_ids"].max(axis=1) == 1).sum() >= 8


def test_encoder_round_trip_through_hf(tmp_path):
    model = check.tiny_model()
    hf_dir = _export(model, tmp_path, lowercase=False)

    assert sorted(os.listdir(hf_dir)) == [
        "config.json", "model.safetensors", "tokenizer_config.json", "vocab.txt"]
    tensors = safetensors.numpy.load_file(os.path.join(hf_dir, "model.safetensors"))
    assert set(tensors) == _hf_keys(2, pretrainer=False)
    config = _read_json(hf_dir, "config.json")
    assert config["architectures"] == ["BertModel"] and config["model_type"] == "bert"
    sizes = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
    assert [config[k] for k in sizes] == [32, 48, 4, 2]
    assert _read_json(hf_dir, "tokenizer_config.json")["do_lower_case"] is False
    # HF's Linear weights are [out, in]: the intermediate projection is [48, 32].
    assert tensors["encoder.layer.0.intermediate.dense.weight"].shape == (48, 32)

    back = tmp_path / "back"
    assert main(["--from=hf", f"--input={hf_dir}", f"--output={back}"]) == 0
    loaded = tfbert.BertEncoder.from_preset(str(back))
    assert json.loads((back / "config.json").read_text())["lowercase"] is False
    assert (back / "vocab.txt").read_text().split("\n")[:-1] == check.tiny_vocabulary(64)
    inputs = {k: v for k, v in check.tiny_inputs().items() if k in INPUTS}
    assert helpers.max_abs_diff(_outputs(loaded, inputs), _outputs(model, inputs)) <= 1e-6

    # The same weights in two shards with an index, as save_pretrained writes big models.
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    for shard, shard_names in shards.items():
        safetensors.numpy.save_file({n: tensors[n] for n in shard_names},
                                    os.path.join(hf_dir, shard), metadata={"format": "pt"})
    with open(os.path.join(hf_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": {n: s for s, ns in shards.items() for n in ns}}, f)
    os.remove(os.path.join(hf_dir, "model.safetensors"))
    sharded, _, _ = hf.load(hf_dir)
    assert helpers.max_abs_diff(_outputs(sharded, inputs), _outputs(model, inputs)) <= 1e-6


def test_pretrainer_round_trip_and_legacy_names(tmp_path):
    model = check.tiny_model(pretrainer=True, seed=3)
    hf_dir = _export(model, tmp_path)
    tensors = safetensors.numpy.load_file(os.path.join(hf_dir, "model.safetensors"))
    assert set(tensors) == _hf_keys(2, pretrainer=True)
    assert _read_json(hf_dir, "config.json")["architectures"] == ["BertForPreTraining"]

    inputs = check.tiny_inputs(seed=3)
    expected = _outputs(model, inputs)
    loaded, vocabulary, lowercase = hf.load(hf_dir)
    assert isinstance(loaded, tfbert.BertPretrainer)
    assert vocabulary == check.tiny_vocabulary(64) and lowercase is False
    assert helpers.max_abs_diff(_outputs(loaded, inputs), expected) <= 1e-6

    # Older files: TF-style LayerNorm.gamma/beta, the tied decoder saved explicitly,
    # the decoder's bias instead of cls.predictions.bias, and the position_ids buffer.
    def legacy(t):
        t = {k.replace("LayerNorm.weight", "LayerNorm.gamma")
              .replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in t.items()}
        t["cls.predictions.decoder.weight"] = t["bert.embeddings.word_embeddings.weight"].copy()
        t["cls.predictions.decoder.bias"] = t.pop("cls.predictions.bias")
        t["bert.embeddings.position_ids"] = np.arange(24, dtype="int64")[None]
        return t

    _rewrite_weights(hf_dir, legacy)
    legacy_model, _, _ = hf.load(hf_dir)
    assert helpers.max_abs_diff(_outputs(legacy_model, inputs), expected) <= 1e-6
    assert np.abs(expected["mlm_logits"]).max() > 1.0  # the check sees real logits

    # An untied decoder cannot be represented: refused, naming the tensor.
    def untie(t):
        t["cls.predictions.decoder.weight"] = t["cls.predictions.decoder.weight"] + 1.0
        return t

    _rewrite_weights(hf_dir, untie)
    with pytest.raises(ConversionError,
                       match=r"model\.safetensors: cls\.predictions\.decoder\.weight differs"):
        hf.load(hf_dir)

    # Both biases saved but different: refused too.
    def two_biases(t):
        t["cls.predictions.decoder.weight"] = t["bert.embeddings.word_embeddings.weight"]
        t["cls.predictions.bias"] = t["cls.predictions.decoder.bias"] + 1.0
        return t

    _rewrite_weights(hf_dir, two_biases)
    with pytest.raises(ConversionError, match=r"cls\.predictions\.decoder\.bias differs from "
                                              r"cls\.predictions\.bias"):
        hf.load(hf_dir)


def test_bert_prefix_and_missing_pooler(tmp_path):
    model = check.tiny_model(seed=4)
    hf_dir = _export(model, tmp_path)
    inputs = {k: v for k, v in check.tiny_inputs(seed=4).items() if k in INPUTS}
    expected = _outputs(model, inputs)

    # Weights saved from a BERT task model carry a `bert.` prefix.
    _rewrite_weights(hf_dir, lambda t: {"bert." + k: v for k, v in t.items()})
    prefixed, _, _ = hf.load(hf_dir)
    assert helpers.max_abs_diff(_outputs(prefixed, inputs), expected) <= 1e-6

    # BertForMaskedLM-style: no pooler, a masked-LM head and no NSP head.
    def masked_lm(t):
        del t["bert.pooler.dense.weight"], t["bert.pooler.dense.bias"]
        t["cls.predictions.bias"] = np.zeros(64, "float32")
        for name, shape in [("dense.weight", (32, 32)), ("dense.bias", (32,)),
                            ("LayerNorm.weight", (32,)), ("LayerNorm.bias", (32,))]:
            t["cls.predictions.transform." + name] = np.ones(shape, "float32")
        return t

    _rewrite_weights(hf_dir, masked_lm)
    with pytest.raises(ConversionError) as e:
        hf.load(hf_dir)
    assert "the pooler (bert.pooler.dense.*)" in str(e.value)
    assert "the next-sentence head (cls.seq_relationship.*)" in str(e.value)
    assert "init_missing=True" in str(e.value)
    assert main(["--from=hf", f"--input={hf_dir}", f"--output={tmp_path / 'out'}"]) == 1
    assert not (tmp_path / "out").exists()

    partial, _, _ = hf.load(hf_dir, init_missing=True)
    assert isinstance(partial, tfbert.BertPretrainer)
    got = _outputs(partial.encoder, inputs)
    assert helpers.max_abs_diff(got["sequence_output"], expected["sequence_output"]) <= 1e-6
    np.testing.assert_array_equal(partial.get_layer("mlm_head").transform.kernel.numpy(), 1.0)


def test_pickle_only_directory_is_refused_without_unpickling(tmp_path, capsys):
    class Payload:
        def __reduce__(self):  # unpickling this creates the sentinel file
            return (open, (str(tmp_path / "UNPICKLED"), "w"))

    src = tmp_path / "hf"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 64}))
    (src / "vocab.txt").write_text("".join(t + "\n" for t in check.tiny_vocabulary(64)))
    (src / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))

    assert main(["--from=hf", f"--input={src}", f"--output={tmp_path / 'out'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pytorch_model.bin" in err and "refuses pickle" in err and "model.safetensors" in err
    assert not (tmp_path / "UNPICKLED").exists()
    assert not (tmp_path / "out").exists()


def test_unexpected_tensor_and_shape_mismatch_are_named(tmp_path):
    hf_dir = _export(check.tiny_model(seed=5), tmp_path)

    def extra(t):
        t["encoder.layer.1.attention.self.rotary.weight"] = np.zeros((4, 4), "float32")
        return t

    _rewrite_weights(hf_dir, extra)
    with pytest.raises(ConversionError, match=r"model\.safetensors: 1 source tensor\(s\) not used "
                       r"by the conversion: encoder\.layer\.1\.attention\.self\.rotary\.weight$"):
        hf.load(hf_dir)

    def wrong_shape(t):
        del t["encoder.layer.1.attention.self.rotary.weight"]
        t["encoder.layer.1.output.dense.weight"] = t["encoder.layer.1.output.dense.weight"].T.copy()
        return t

    _rewrite_weights(hf_dir, wrong_shape)
    with pytest.raises(ConversionError) as e:
        hf.load(hf_dir)
    message = str(e.value)
    assert "model.safetensors: encoder.layer.1.output.dense.weight (48, 32)" in message
    assert "transformer_layer_1/output/kernel needs (48, 32)" in message and "\n" not in message


def test_config_of_another_architecture_is_refused(tmp_path):
    for change, expected in [
        ({"model_type": "roberta"}, "model_type 'roberta' is not BERT"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key'"),
        ({"is_decoder": True}, "is_decoder is true"),
        ({"hidden_act": "quick_gelu"}, "hidden_act 'quick_gelu' is not supported"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", **change}))
        with pytest.raises(ValueError, match="config.json: " + expected):
            hf.read_config(str(tmp_path), lowercase=True)


def test_lowercase_is_read_or_inferred(tmp_path):
    cased = tmp_path / "bert-base-cased"
    cased.mkdir()
    assert hf.read_lowercase(str(cased)) is False
    (cased / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    assert hf.read_lowercase(str(cased)) is True
    unnamed = tmp_path / "model"
    unnamed.mkdir()
    assert hf.read_lowercase(str(unnamed)) is True
    (unnamed / "tokenizer.json").write_text(
        json.dumps({"normalizer": {"type": "BertNormalizer", "lowercase": False}}))
    assert hf.read_lowercase(str(unnamed)) is False
    assert hf.read_lowercase(helpers.minilm_dir()) is True


def test_bfloat16_safetensors_are_widened_exactly(tmp_path):
    # numpy has no bfloat16, so write the file by hand: a JSON header, then raw bytes.
    values = np.array([[1.0, -2.5], [3.140625, 1e-3]], "float32")
    bf16 = (values.view("<u4") >> 16).astype("<u2")
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}).encode()
    raw = len(header).to_bytes(8, "little") + header + bf16.tobytes()
    (tmp_path / "model.safetensors").write_bytes(raw)
    tensors, _ = hf.read_tensors(str(tmp_path))
    np.testing.assert_array_equal(tensors["w"], (bf16.astype("<u4") << 16).view("<f4"))
    assert tensors["w"].dtype == np.float32 and abs(tensors["w"][1, 0] - 3.140625) < 1e-6


def test_unreadable_safetensors_file_is_named(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"PK\x03\x04 this is a zip, not safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        hf.read_tensors(str(tmp_path))


def test_export_loads_in_transformers(tmp_path, capsys):
    # CI installs neither torch nor transformers (they are reference tools only), so this
    # check is skipped there; it runs wherever both import.
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    minilm = check.check_minilm(str(tmp_path), helpers.minilm_dir())
    pretrainer = check.check_pretrainer(str(tmp_path))
    with capsys.disabled():
        print(f"\n--to=hf vs transformers: MiniLM {minilm}, tiny pretrainer {pretrainer}")
    assert max(minilm.values()) <= check.TOLERANCE
    assert max(pretrainer.values()) <= check.TOLERANCE
