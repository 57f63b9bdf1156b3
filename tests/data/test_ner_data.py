"""NER data: CoNLL reading and its errors, first-piece alignment with the real uncased
vocabulary, truncation, the evaluation padding, TFDS conll2003 (built locally from
CoNLL-2003-format files by TFDS's own builder), seqeval scoring and the Keras fit path."""

import os

import helpers
import numpy as np
import pytest
import tensorflow as tf

from tfbert.data import ner
from tfbert.train import ner_metrics

LABELS = ["O", "B-facility", "I-facility", "B-person", "I-person"]
# A WNUT-16 sentence whose words split into pieces in every way: "@paulwalk" -> @ paul
# ##walk (three pieces, two of them not "##" continuations), "ESB" -> es ##b.
WORDS = ["@paulwalk", "Empire", "State", "Building", "=", "ESB", "."]
TAGS = ["O", "B-facility", "I-facility", "I-facility", "O", "B-facility", "O"]


@pytest.fixture(scope="module")
def vocab():
    return os.path.join(helpers.minilm_dir(), "vocab.txt")


def preprocessor(vocab, seq_length):
    from tfbert.text import BertPreprocessor

    return BertPreprocessor(vocab, seq_length=seq_length)


def write(path, text):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return str(path)


# === Reading CoNLL ===


def test_reads_tab_and_space_columns_docstart_and_whitespace_separators(tmp_path):
    path = write(tmp_path / "a.conll",
                 "-DOCSTART- -X- -X- O\n"
                 "\n"
                 "EU NNP B-NP B-ORG\n"            # CoNLL-2003: 4 space-separated columns
                 "rejects VBZ B-VP O\n"
                 "\t\n"                           # WNUT's separator: a lone tab
                 "\n"
                 "Peter\tB-PER\r\n"               # tab separated, CRLF
                 "Blackburn\tI-PER\n"
                 "   \n"
                 "-DOCSTART-\tO\n"
                 "BRUSSELS\tB-LOC")               # no final newline
    examples = ner.read_conll(path)
    assert examples.words == [["EU", "rejects"], ["Peter", "Blackburn"], ["BRUSSELS"]]
    assert examples.tags == [["B-ORG", "O"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert examples.where(1, 1) == f"{path}:8"
    assert examples.where(2, 0) == f"{path}:11"
    assert ner.collect_label_names(examples) == ["O", "B-LOC", "B-ORG", "B-PER", "I-PER"]


def test_reads_comma_separated_globs_in_order(tmp_path):
    write(tmp_path / "p1.txt", "a\tO\n")
    write(tmp_path / "p2.txt", "b\tB-X\n\nc\tO\n")
    examples = ner.read_conll(f"{tmp_path}/p*.txt,{tmp_path}/p1.txt")
    assert examples.words == [["a"], ["b"], ["c"], ["a"]]


def test_real_wnut16_file():
    examples = ner.read_conll(helpers.wnut_conll())
    assert len(examples) == 2394
    labels = ner.collect_label_names(examples)
    assert labels[0] == "O" and len(labels) == 21
    assert {t[2:] for t in labels[1:]} == {
        "company", "facility", "geo-loc", "movie", "musicartist", "other", "person",
        "product", "sportsteam", "tvshow"}
    assert examples.words[0][:3] == ["@paulwalk", "It", "'s"]


def test_fixed_split_and_slices_keep_sentences_and_origins():
    examples = ner.read_conll(helpers.wnut_conll())
    train, dev, test = ner.split_examples(examples)
    # The 80/10/10 split of benchmarks/finetune_ner.py and examples/ner_wnut.py.
    assert (len(train), len(dev), len(test)) == (1915, 239, 240)
    everything = sorted(map(tuple, train.words + dev.words + test.words))
    assert everything == sorted(map(tuple, examples.words))
    # Same seed, same split; another seed, another one.
    assert ner.split_examples(examples)[2].words == test.words
    assert ner.split_examples(examples, seed=1)[2].words != test.words
    # Origins still name each sentence's file and line.
    i = examples.words.index(test.words[0])
    assert test.origins[0] == examples.origins[i] and test.tags[0] == examples.tags[i]
    head = train[:10]
    assert len(head) == 10 and head.words == train.words[:10]
    assert head.origins == train.origins[:10]
    with pytest.raises(TypeError, match="takes slices"):
        train[3]
    with pytest.raises(ValueError, match="sum to at most 1"):
        ner.split_examples(examples, (0.8, 0.3))


@pytest.mark.parametrize("line, reason", [
    ("lonely\n", "malformed CoNLL line 'lonely'"),                       # one column
    ("this is garbage\n", "'garbage' is not a tag"),                      # tab-less prose
    ("\tO\n", "malformed CoNLL line"),                                     # empty token
])
def test_malformed_line_names_file_and_line(tmp_path, line, reason):
    path = write(tmp_path / "bad.conll", "Peter\tB-PER\n\nok\tO\n" + line + "x\tO\n")
    with pytest.raises(ValueError) as e:
        ner.read_conll(path)
    message = str(e.value)
    assert message.startswith(f"{path}:4: ") and reason in message
    assert "\n" not in message


def test_bad_encoding_empty_file_and_missing_file(tmp_path):
    bad = tmp_path / "latin1.conll"
    bad.write_bytes(b"ok\tO\ncaf\xe9\tO\n")
    with pytest.raises(ValueError, match=f"^{bad}:2: not valid UTF-8"):
        ner.read_conll(str(bad))
    empty = write(tmp_path / "empty.conll", "\n\n-DOCSTART- O\n")
    with pytest.raises(ValueError, match="no sentences"):
        ner.read_conll(empty)
    with pytest.raises(FileNotFoundError, match="nope-"):
        ner.read_conll(str(tmp_path / "nope-*.conll"))


def test_unknown_tag_names_file_and_line(tmp_path):
    path = write(tmp_path / "eval.conll", "Peter\tB-person\n\nthe\tO\nESB\tB-company\n")
    examples = ner.read_conll(path)
    with pytest.raises(ValueError) as e:
        ner.tag_ids(examples, LABELS)
    assert str(e.value).startswith(f"{path}:4: unknown tag 'B-company'")
    with pytest.raises(ValueError, match=f"{path}:4: unknown tag"):
        ner.ner_dataset(examples, None, LABELS, batch_size=2)
    # Python lists name the example and word instead.
    with pytest.raises(ValueError, match="^examples example 1 word 2: unknown tag 'B-x'"):
        ner.ner_dataset(([["a"], ["b", "c"]], [["O"], ["O", "B-x"]]), None, LABELS, 2)
    with pytest.raises(ValueError, match="example 0: 2 words but 1 tags"):
        ner.NerExamples.from_lists([["a", "b"]], [["O"]])


# === Alignment ===


def ids_of(pre, tokens):
    return [pre.token_to_id(t) for t in tokens]


def aligned(pre, sentences, tags):
    return ner.align(pre, ner._ragged(sentences, tf.string),
                     ner._ragged([[LABELS.index(t) for t in s] for s in tags], tf.int32))


def test_first_piece_carries_the_label_by_hand(vocab):
    pre = preprocessor(vocab, 16)
    inputs, labels, positions = aligned(pre, [WORDS], [TAGS])
    pieces = ["[CLS]", "@", "paul", "##walk", "empire", "state", "building", "=", "es", "##b",
              ".", "[SEP]"]
    assert inputs["input_word_ids"].numpy()[0].tolist() == ids_of(pre, pieces) + [0] * 4
    assert inputs["input_mask"].numpy()[0].tolist() == [1] * 12 + [0] * 4
    assert inputs["input_type_ids"].numpy()[0].tolist() == [0] * 16
    O, B, I = 0, 1, 2
    #                                        [CLS] @  paul ##walk emp st  bld  =  es ##b  . [SEP]
    assert labels.numpy()[0].tolist() == [-1, O, -1, -1, B, I, I, O, B, -1, O, -1] + [-1] * 4
    assert positions.to_list() == [[1, 4, 5, 6, 7, 8, 10]]


def test_words_without_pieces_and_empty_sentences(vocab):
    pre = preprocessor(vocab, 8)
    # A zero-width space is deleted by BERT's normaliser: the word has no piece.
    inputs, labels, positions = aligned(pre, [["Peter", "\u200b", "Blackburn"], []],
                                        [["B-person", "O", "I-person"], []])
    assert inputs["input_word_ids"].numpy().tolist() == [
        ids_of(pre, ["[CLS]", "peter", "blackburn", "[SEP]"]) + [0] * 4,
        ids_of(pre, ["[CLS]", "[SEP]"]) + [0] * 6]
    assert labels.numpy().tolist() == [[-1, 3, 4, -1, -1, -1, -1, -1], [-1] * 8]
    assert positions.to_list() == [[1, -1, 2], []]


def test_truncation_drops_words_whose_first_piece_does_not_fit(vocab):
    O, B, I = 0, 1, 2
    # seq 8 keeps 6 pieces: @ paul ##walk empire state building; "=" (the 7th) is cut.
    inputs, labels, positions = aligned(preprocessor(vocab, 8), [WORDS], [TAGS])
    assert labels.numpy()[0].tolist() == [-1, O, -1, -1, B, I, I, -1]
    assert positions.to_list() == [[1, 4, 5, 6, -1, -1, -1]]
    # seq 10 keeps 8 pieces: ESB's first piece "es" fits, its "##b" does not; it keeps
    # its label.
    pre = preprocessor(vocab, 10)
    inputs, labels, positions = aligned(pre, [WORDS], [TAGS])
    assert inputs["input_word_ids"].numpy()[0].tolist()[-2:] == ids_of(pre, ["es", "[SEP]"])
    assert labels.numpy()[0].tolist() == [-1, O, -1, -1, B, I, I, O, B, -1]
    assert positions.to_list() == [[1, 4, 5, 6, 7, 8, -1]]


def test_dataset_shapes_shuffle_and_evaluation_padding(vocab):
    pre = preprocessor(vocab, 16)
    names = ["apple", "house", "river", "music", "paper", "green", "table", "water", "light",
             "stone"]
    sentences = [[name] * (i % 4 + 1) for i, name in enumerate(names)]
    tags = [["O"] * len(s) for s in sentences]

    def batches():
        train = ner.ner_dataset((sentences, tags), pre, LABELS, batch_size=4, shuffle=True,
                                repeat=True, drop_remainder=True, seed=3)
        return [x["input_word_ids"].numpy() for x, _ in train.take(5)]

    first = batches()
    assert all(b.shape == (4, 16) for b in first)
    # Seeded: a new pipeline (a resumed run) sees the same order.
    np.testing.assert_array_equal(np.stack(first), np.stack(batches()))
    # 5 batches of 4 = 2 passes of 10: each pass is a shuffled permutation of the data.
    order = [pre.id_to_token(i) for i in np.concatenate(first)[:, 1]]
    assert sorted(order[:10]) == sorted(names) and sorted(order[10:]) == sorted(names)
    assert order[:10] != names and order[:10] != order[10:]
    # Evaluation: every sentence once, then empty sentences that label nothing.
    evaluation = ner.ner_dataset((sentences, tags), pre, LABELS, batch_size=4, pad_forever=True)
    evaluated = list(evaluation.take(6))
    assert all(x["input_word_ids"].shape == (4, 16) for x, _ in evaluated)
    labelled = [int(np.sum(y.numpy() >= 0)) for _, y in evaluated]
    assert sum(labelled) == sum(len(s) for s in sentences) == 23
    assert labelled[3:] == [0, 0, 0]


# === TFDS conll2003 ===

CONLL2003 = (
    "-DOCSTART- -X- -X- O\n\n"
    "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\ncall NN I-NP O\n"
    "to TO B-VP O\nboycott VB I-VP O\nBritish JJ B-NP B-MISC\nlamb NN I-NP O\n. . O O\n\n"
    "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n\n"
    "BRUSSELS NNP B-NP B-LOC\n1996-08-22 CD I-NP O\n"
)


@pytest.fixture(scope="module")
def conll2003_dir(tmp_path_factory):
    """TFDS conll2003 prepared by TFDS's own builder from local CoNLL-2003-format files
    (its download is redirected to them: there is no internet here)."""
    from unittest import mock

    import tensorflow_datasets as tfds
    from etils import epath

    source = tmp_path_factory.mktemp("conll2003_source")
    for name in ("train.txt", "valid.txt", "test.txt"):
        (source / name).write_text(CONLL2003)
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    with mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                           return_value=epath.Path(source)):
        tfds.builder("conll2003", data_dir=data_dir).download_and_prepare()
    return data_dir


def test_tfds_conll2003(conll2003_dir, vocab):
    examples = ner.load_tfds("conll2003", "dev", data_dir=conll2003_dir)
    assert len(examples) == 3
    by_first = {s[0]: (s, t) for s, t in zip(examples.words, examples.tags)}
    assert by_first["EU"][1] == ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]
    assert by_first["Peter"] == (["Peter", "Blackburn"], ["B-PER", "I-PER"])
    labels = ner.collect_label_names(examples)
    assert labels == ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC",
                      "I-MISC"]  # the ClassLabel's order, not sorted
    dataset = ner.ner_dataset(examples, preprocessor(vocab, 16), labels, batch_size=3)
    (_, y), = list(dataset)
    assert int(np.sum(y.numpy() >= 0)) == 13
    with pytest.raises(ValueError, match="no feature 'text'; valid: .*tokens"):
        ner.load_tfds("conll2003", "dev", data_dir=conll2003_dir, words_feature="text")
    with pytest.raises(ValueError, match=r"^tfds conll2003 \[dev\] example \d word 1: unknown tag"):
        ner.tag_ids(examples, ["O"])


# === Metrics ===


def test_seqeval_scores_on_known_predictions():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O"]]
    # PER right; LOC missed; ORG with a wrong boundary; one spurious MISC.
    predicted = [["B-PER", "I-PER", "O", "O"], ["B-MISC", "B-ORG", "O", "O"]]
    scores = ner_metrics.entity_scores(gold, predicted)
    # 3 gold entities, 3 predicted (PER, MISC, ORG[1:2]), 1 correct.
    assert scores["precision"] == pytest.approx(1 / 3)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(1 / 3)
    assert scores["word_accuracy"] == pytest.approx(5 / 8)
    perfect = ner_metrics.entity_scores(gold, gold)
    assert perfect["f1"] == 1.0
    with pytest.raises(ValueError, match="sentence 1: 4 gold tags but 3"):
        ner_metrics.entity_scores(gold, [gold[0], gold[1][:3]])


def test_token_accuracy_leaves_out_ignored_positions():
    metric = ner_metrics.TokenAccuracy()
    logits = np.zeros((1, 4, 3), "float32")
    logits[0, :, 1] = 1.0  # predicts class 1 everywhere
    metric.update_state(np.array([[-1, 1, 0, -1]]), logits)
    assert float(metric.result()) == pytest.approx(0.5)


# === Keras model.fit ===


def test_keras_fit_with_ignore_class_and_predict_words(vocab):
    import keras

    import tfbert

    examples = ner.read_conll(helpers.wnut_conll())
    sentences = examples.words[:16]
    tags = examples.tags[:16]
    labels = ner.collect_label_names(ner.NerExamples(tags=tags, words=sentences, origins=[]))
    pre = preprocessor(vocab, 32)
    keras.utils.set_random_seed(1)
    encoder = tfbert.BertEncoder.from_preset(
        "tiny", num_layers=1, hidden_dim=32, num_heads=2, intermediate_dim=64,
        max_sequence_length=32)
    model = tfbert.BertTokenClassifier(encoder, num_classes=len(labels))
    encoder.pooler.trainable = False  # token labels never reach it
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=ner.IGNORE)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3), loss=loss,
                  metrics=[ner_metrics.TokenAccuracy()])

    data = ner.ner_dataset((sentences, tags), pre, labels, batch_size=16)
    (x, y), = list(data)
    # Keras' ignore_class on [B, S, C] logits is the mean over the labelled pieces.
    logits = model(x)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.maximum(y, 0), logits=logits)
    mask = tf.cast(y >= 0, tf.float32)
    expected = float(tf.reduce_sum(ce * mask) / tf.reduce_sum(mask))
    before = model.evaluate(data, verbose=0, return_dict=True)
    assert before["loss"] == pytest.approx(expected, rel=1e-5)

    train = ner.ner_dataset((sentences, tags), pre, labels, batch_size=8, shuffle=True,
                            repeat=True, seed=0)
    history = model.fit(train, epochs=1, steps_per_epoch=50, verbose=0)
    after = model.evaluate(data, verbose=0, return_dict=True)
    assert after["loss"] < 0.5 * before["loss"], history.history["loss"]
    assert after["accuracy"] > before["accuracy"]

    predicted = ner.predict_words(model, pre, sentences, labels)
    ids = ner.predict_words(model, pre, sentences)
    argmax = np.argmax(model(x).numpy(), axis=-1)
    _, _, positions = ner.align(pre, ner._ragged(sentences, tf.string))
    for row, word_positions in enumerate(positions.to_list()):
        assert len(predicted[row]) == len(sentences[row])
        for word, position in enumerate(word_positions):
            if position < 0:
                assert predicted[row][word] == "O" and ids[row][word] == -1
            else:
                assert ids[row][word] == argmax[row, position]
                assert predicted[row][word] == labels[argmax[row, position]]
