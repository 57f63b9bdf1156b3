"""Vocabulary building (tfbert.text.build_vocabulary and `python -m tfbert.text.vocab`) on
real IMDB reviews."""

import subprocess
import sys

import helpers
import pytest
import tensorflow as tf
from text_corpora import movie_reviews

from tfbert.text import BertPreprocessor, build_vocabulary
from tfbert.text import vocab as vocab_module


@pytest.fixture(scope="module")
def imdb():
    return [t.replace("\n", " ") for t, source in movie_reviews() if source == "imdb"]


def test_build_from_2000_imdb_reviews(imdb, tmp_path):
    corpus = tmp_path / "imdb.txt"
    corpus.write_text("".join(t + "\n" for t in imdb[:2000]), encoding="utf-8")
    output = tmp_path / "out" / "vocab.txt"
    vocabulary = build_vocabulary([str(corpus)], 3000, output=str(output))

    assert vocabulary[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert 0.95 * 3000 <= len(vocabulary) <= 3000
    assert len(set(vocabulary)) == len(vocabulary)
    assert output.read_text(encoding="utf-8").splitlines() == vocabulary
    # Uncased: no capital letters outside the reserved tokens; suffix pieces exist.
    assert not any(c.isupper() for t in vocabulary[5:] for c in t)
    assert "the" in vocabulary and "##s" in vocabulary

    preprocessor = BertPreprocessor(str(output), seq_length=128)
    held_out = preprocessor.tokenize(tf.constant(imdb[2000:2500])).flat_values.numpy()
    assert len(held_out) > 100_000
    assert (held_out == preprocessor.unk_id).mean() < 0.002
    packed = preprocessor(tf.constant(imdb[2000:2004]))
    assert packed["input_word_ids"].numpy()[:, 0].tolist() == [2] * 4  # [CLS] is id 2


def test_build_from_a_dataset_cased(imdb):
    # Batched or not, a dataset of strings works; cased keeps capitals (the Rotten
    # Tomatoes sentences are lower-case already, so IMDB here).
    dataset = tf.data.Dataset.from_tensor_slices(imdb[:100]).batch(64)
    vocabulary = build_vocabulary(dataset, 500, lowercase=False)
    assert len(vocabulary) <= 500
    assert "The" in vocabulary


def test_words_split_like_google(google_tokenization):
    texts = ["Héllo, WORLD! 中文 it's ΟΔΟΣ", "a\u200bb\tc"]
    words = vocab_module.word_splitter(lowercase=True)(tf.constant(texts)).to_list()
    basic = google_tokenization.BasicTokenizer(do_lower_case=True)
    assert [[w.decode() for w in row] for row in words] == [basic.tokenize(t) for t in texts]


def test_vocabulary_size_too_small():
    with pytest.raises(ValueError, match="reserved tokens"):
        build_vocabulary(tf.data.Dataset.from_tensor_slices(["a b"]), 5)


def test_cli(tmp_path):
    corpus = tmp_path / "rt.txt"
    sentences = [t for t, source in movie_reviews() if source == "rotten_tomatoes"][:300]
    corpus.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    output = tmp_path / "vocab.txt"
    result = subprocess.run(
        [sys.executable, "-m", "tfbert.text.vocab", f"--input={tmp_path}/r*.txt,{corpus}",
         f"--output={output}", "--vocab_size=400"],
        check=False, capture_output=True, text=True, cwd=helpers.REPO_ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[vocab] wrote" in result.stderr
    vocabulary = output.read_text(encoding="utf-8").splitlines()
    assert vocabulary[0] == "[PAD]" and len(vocabulary) <= 400


def test_cli_help_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        vocab_module.main(["--help"])
    assert exit_info.value.code == 0
    assert "--vocab_size" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit_info:
        vocab_module.main(["--input=x"])
    assert exit_info.value.code == 2
    assert "required" in capsys.readouterr().err.strip().splitlines()[-1]

    missing = f"{tmp_path}/missing*.txt"
    assert vocab_module.main([f"--input={missing}", "--output=v.txt",
                              "--vocab_size=400"]) == 1
    assert capsys.readouterr().err.strip() == f"error: no file matches '{missing}'"
    assert vocab_module.main([f"--input={missing}", "--output=v.txt",
                              "--vocab_size=3"]) == 1
    assert "reserved tokens" in capsys.readouterr().err
