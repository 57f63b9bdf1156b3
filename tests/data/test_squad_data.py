"""SQuAD data: reading JSON and TFDS, doc-stride windows, character mapping, answers back.

Fixtures are hand-written SQuAD-format files (tests/fixtures/squad_v1.json, squad_v2.json):
a 327-piece paragraph on the Eddystone lighthouses that needs five windows at
max_seq_length 96 / doc_stride 64, and paragraphs with accents, CJK, Greek capitals, a soft
hyphen and a no-break space. The tokenizer is the real uncased vocabulary (MiniLM's).
Windows and answer positions are checked against google-research/bert's own run_squad.py.
"""

import json
import os
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
# Small windows, so the long paragraph needs several: 96 - 3 - question pieces per window.
SEQ, STRIDE, QUERY = 96, 64, 16


@pytest.fixture(scope="module")
def preprocessor():
    from tfbert.text import BertPreprocessor

    return BertPreprocessor(os.path.join(helpers.minilm_dir(), "vocab.txt"), seq_length=SEQ)


@pytest.fixture(scope="module")
def v1_examples():
    return squad.read_squad_json(V1)


@pytest.fixture(scope="module")
def v1_features(v1_examples, preprocessor):
    return squad.convert_examples_to_features(
        v1_examples, preprocessor, SEQ, STRIDE, QUERY, training=False)


def windows_of(features, examples, qas_id):
    index = [e.qas_id for e in examples].index(qas_id)
    return np.nonzero(features.example_index == index)[0], index


def labelled_text(features, examples, row):
    """The context characters the window's (start, end) label points at."""
    e = int(features.example_index[row])
    first = features.doc_start[row] + features.start_positions[row] - features.doc_offset[row]
    last = features.doc_start[row] + features.end_positions[row] - features.doc_offset[row]
    return examples[e].context[features.char_starts[e][first]:features.char_ends[e][last]]


# === Reading ===


def test_reads_squad_v1_and_v2_json(v1_examples):
    assert len(v1_examples) == 22
    by_id = {e.qas_id: e for e in v1_examples}
    assert by_id["dvorak-2"].answers == [
        ("Carnegie Hall", 330), ("at Carnegie Hall", 327),
        ("Carnegie Hall on 16 December 1893", 330)]
    assert by_id["names-5"].answers[0][0] == "212\u00a0km"
    assert not any(e.is_impossible for e in v1_examples)

    v2 = squad.read_squad_json(V2, version_2_with_negative=True)
    assert [(e.qas_id, e.is_impossible) for e in v2] == [
        ("bee-1", False), ("bee-2", False), ("bee-3", True), ("bee-4", True),
        ("eddy2-1", False), ("eddy2-2", True)]
    assert all(e.answers == [] for e in v2 if e.is_impossible)


def one_line_error(call, *args, **kwargs):
    with pytest.raises(ValueError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_answer_not_at_its_start_names_file_question_and_json_path():
    message = one_line_error(squad.read_squad_json, BAD_ANSWER)
    assert message.startswith(f"{BAD_ANSWER}: question bee-shifted at "
                              "data[0].paragraphs[0].qas[1].answers[0]: ")
    assert "'a few hundred' is not at answer_start 41" in message
    assert "'few hundred d'" in message


def test_malformed_json_names_file_and_line():
    message = one_line_error(squad.read_squad_json, MALFORMED)
    assert message.startswith(f"{MALFORMED}:11: not valid JSON (Expecting ',' delimiter")


def test_missing_fields_and_v2_data_without_the_v2_flag_fail_naming_the_question(tmp_path):
    message = one_line_error(squad.read_squad_json, V2)
    assert message == (f"{V2}: question bee-3 at data[0].paragraphs[0].qas[2]: question is "
                       "unanswerable (is_impossible); set data.version_2_with_negative=true for "
                       "SQuAD 2.0 data")
    path = tmp_path / "no_question.json"
    path.write_text(json.dumps({"data": [{"paragraphs": [
        {"context": "abc", "qas": [{"id": "q1", "answers": []}]}]}]}))
    assert one_line_error(squad.read_squad_json, str(path)) == (
        f"{path}: question q1 at data[0].paragraphs[0].qas[0]: missing 'question'")


def test_training_needs_an_answer_for_every_v1_question(preprocessor, tmp_path):
    path = tmp_path / "unanswered.json"
    qa = {"id": "q1", "question": "Who?", "answers": []}
    path.write_text(json.dumps(
        {"data": [{"paragraphs": [{"context": "Bees make honey.", "qas": [qa]}]}]}))
    examples = squad.read_squad_json(str(path))  # fine for prediction
    message = one_line_error(squad.convert_examples_to_features, examples, preprocessor,
                             SEQ, STRIDE, QUERY, training=True)
    assert message == (f"{path}: question q1 at data[0].paragraphs[0].qas[0]: question has no "
                       "answer to train on")


# === Characters <-> word pieces ===


@pytest.mark.parametrize("word, expected", [
    ("Dvořák,", ["D", "voř", "ák", ","]),
    ("(東京,", ["(", "東", "京", ","]),
    ("Müller's", ["Müller", "'", "s"]),
    ("ΟΔΥΣΣΕΥΣ", list("ΟΔΥΣΣΕΥΣ")),        # the last Σ lower-cases to final ς
    ("Zu\u00adrich", ["Zu\u00adrich"]),       # the soft hyphen is dropped inside the piece
    ("İstanbul", ["İstanbul"]),              # İ lower-cases to two characters
    ("Ǆemal", ["Ǆemal"]),                    # [UNK] covers its whole sub-word
    ("Straße", ["St", "raße"]),
    ("x\x00y", ["x", "y"]),                  # NUL is removed, not a piece
])
def test_pieces_map_to_the_characters_they_came_from(preprocessor, word, expected):
    pieces = squad.WordPieces(preprocessor)
    spans = pieces.spans(word)
    assert len(spans) == len(pieces.ids(word))
    assert [word[a:b] for a, b in spans] == expected


def test_pieces_that_do_not_spell_the_word_fall_back_to_the_whole_word():
    assert squad.piece_char_spans("Müller", ["mul", "##ler"], lowercase=True) == [(0, 3), (3, 6)]
    assert squad.piece_char_spans("Müller", ["mul", "##xer"], lowercase=True) is None
    assert squad.piece_char_spans("Müller", ["muller", "##s"], lowercase=True) is None


def test_every_label_points_at_exactly_the_answer_characters(v1_examples, v1_features):
    labelled = 0
    for row in np.nonzero(v1_features.start_positions)[0]:
        example = v1_examples[v1_features.example_index[row]]
        assert labelled_text(v1_features, v1_examples, row) == example.answers[0][0], example.qas_id
        labelled += 1
    # Each of the 22 questions is labelled in at least one window.
    assert len(set(v1_features.example_index[np.nonzero(v1_features.start_positions)[0]])) == 22
    assert labelled >= 22


# === Windows ===


def test_window_layout_is_cls_question_sep_context_sep(v1_examples, v1_features, preprocessor):
    rows, e = windows_of(v1_features, v1_examples, "eddy-06")
    query = preprocessor.tokenize(v1_examples[e].question).numpy().tolist()
    doc_ids = squad.context_pieces(v1_examples[e].context, squad.WordPieces(preprocessor))[0]
    assert len(doc_ids) == 327
    assert [(int(v1_features.doc_start[r]), int(v1_features.doc_length[r])) for r in rows] == [
        (0, 85), (64, 85), (128, 85), (192, 85), (256, 71)]
    for r in rows:
        start, length = v1_features.doc_start[r], v1_features.doc_length[r]
        used = len(query) + length + 3
        expected = ([preprocessor.cls_id] + query + [preprocessor.sep_id]
                    + doc_ids[start:start + length].tolist() + [preprocessor.sep_id])
        assert v1_features.input_word_ids[r, :used].tolist() == expected
        assert not v1_features.input_word_ids[r, used:].any()
        assert v1_features.input_mask[r].tolist() == [1] * used + [0] * (SEQ - used)
        assert v1_features.input_type_ids[r].tolist() == (
            [0] * (len(query) + 2) + [1] * (length + 1) + [0] * (SEQ - used))
    # Every window but the last is full: question + context fill max_seq_length.
    assert v1_features.input_mask[rows[:-1]].sum(axis=1).tolist() == [SEQ] * 4


def test_answers_in_middle_windows_at_edges_and_across_a_boundary(v1_examples, v1_features):
    def labels(qas_id):
        rows, _ = windows_of(v1_features, v1_examples, qas_id)
        return rows, [(int(v1_features.start_positions[r]), int(v1_features.end_positions[r]))
                      for r in rows]

    # Only the middle (third of five) window holds "ninety-four years old" (pieces 174-178).
    rows, positions = labels("eddy-06")
    assert [p != (0, 0) for p in positions] == [False, False, True, False, False]
    # "during the worst storm the sea could send" (pieces 79-86) starts in window 0, which
    # ends at piece 81, and is whole in window 1: window 0 must not label a cut answer.
    rows, positions = labels("eddy-04")
    last_of_first = v1_features.doc_start[rows[0]] + v1_features.doc_length[rows[0]] - 1
    assert last_of_first == 81
    assert positions[0] == (0, 0) and positions[1] != (0, 0)
    # "the worst storm" ends on the last context piece of window 0 (just before its [SEP]).
    rows, positions = labels("eddy-11")
    assert positions[0][1] == v1_features.doc_offset[rows[0]] + v1_features.doc_length[rows[0]] - 1
    assert v1_features.input_mask[rows[0]].sum() == positions[0][1] + 2
    assert positions[1] != (0, 0)
    # "under water" starts on the first context piece of window 4 (right after its [SEP]).
    rows, positions = labels("eddy-08")
    assert positions[4][0] == v1_features.doc_offset[rows[4]]
    assert positions[3] != (0, 0)
    # "The Eddystone Rocks" starts the context.
    rows, positions = labels("eddy-01")
    assert positions[0][0] == v1_features.doc_offset[rows[0]]


def test_unanswerable_questions_point_every_window_at_cls(preprocessor):
    examples = squad.read_squad_json(V2, version_2_with_negative=True)
    f = squad.convert_examples_to_features(
        examples, preprocessor, SEQ, STRIDE, QUERY, training=True)
    for e, example in enumerate(examples):
        rows = np.nonzero(f.example_index == e)[0]
        labelled = [r for r in rows if f.start_positions[r] or f.end_positions[r]]
        assert bool(labelled) != example.is_impossible, example.qas_id
    rows, _ = windows_of(f, examples, "eddy2-2")
    assert len(rows) == 5


def test_max_query_length_cuts_the_question(v1_examples, preprocessor):
    f = squad.convert_examples_to_features(v1_examples[:1], preprocessor, SEQ, STRIDE, 4)
    assert f.doc_offset.tolist() == [6] * len(f)  # [CLS] + 4 pieces + [SEP]
    with pytest.raises(ValueError, match="leaves no room"):
        squad.convert_examples_to_features(v1_examples[:1], preprocessor, 20, 8, 17)


# === google-research/bert's run_squad.py as the reference ===


def google_run_squad():
    """bert-tensorflow's run_squad.py under TF 2, with tests/google_reference.py's shims."""
    import tensorflow as tf

    import google_reference

    module, tokenization = google_reference.google_run_squad()
    tf.compat.v1.logging.set_verbosity(tf.compat.v1.logging.WARN)
    return module, tokenization


@pytest.mark.parametrize("training", [False, True])
def test_windows_and_positions_match_google_run_squad(tmp_path, preprocessor, training):
    run_squad, tokenization = google_run_squad()
    path = V1
    if training:
        # Google trains on exactly one answer per question: keep the first. It also drops
        # "212\u00a0km" ("Could not find answer": its words split on no-break spaces,
        # its answer check does not), which we label correctly (see the test above).
        with open(V1, encoding="utf-8") as f:
            data = json.load(f)
        for article in data["data"]:
            for paragraph in article["paragraphs"]:
                paragraph["qas"] = [qa for qa in paragraph["qas"] if qa["id"] != "names-5"]
                for qa in paragraph["qas"]:
                    qa["answers"] = qa["answers"][:1]
        path = str(tmp_path / "first_answers.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)
    google_examples = run_squad.read_squad_examples(path, is_training=training)
    tokenizer = tokenization.FullTokenizer(
        os.path.join(helpers.minilm_dir(), "vocab.txt"), do_lower_case=True)
    google = []
    run_squad.convert_examples_to_features(
        google_examples, tokenizer, SEQ, STRIDE, QUERY, training, google.append)

    ours = squad.convert_examples_to_features(
        squad.read_squad_json(path), preprocessor, SEQ, STRIDE, QUERY, training=training)
    assert len(ours) == len(google) == (77 if training else 80)
    masks = {}
    for n, g in enumerate(google):
        assert ours.input_word_ids[n].tolist() == g.input_ids, n
        assert ours.input_mask[n].tolist() == g.input_mask, n
        assert ours.input_type_ids[n].tolist() == g.segment_ids, n
        assert ours.example_index[n] == g.example_index
        if training:
            assert (ours.start_positions[n], ours.end_positions[n]) == (
                g.start_position, g.end_position), n
        e = int(ours.example_index[n])
        if e not in masks:
            rows = np.nonzero(ours.example_index == e)[0]
            masks[e] = dict(zip(rows, qa_postprocess.max_context_mask(
                ours.doc_start[rows], ours.doc_length[rows])))
        offset = ours.doc_offset[n]
        google_max = [g.token_is_max_context[offset + i] for i in range(ours.doc_length[n])]
        assert masks[e][n].tolist() == google_max, n


# === TFDS ===


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """TFDS's real `squad` builder, prepared from the hand-written files.

    Only the download is replaced: DownloadManager hands the builder our JSON files instead
    of fetching rajpurkar.github.io's, and TFDS then generates, shuffles and writes its own
    TFRecords exactly as it does for the real data.
    """
    import tensorflow_datasets as tfds

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    for config, path in (("v1.1", V1), ("v2.0", V2)):
        with mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                               lambda self, urls, path=path: dict.fromkeys(urls, path)):
            tfds.builder(f"squad/{config}", data_dir=data_dir).download_and_prepare()
    return data_dir


def test_tfds_squad_examples_match_the_json_ones(tfds_dir, v1_examples):
    for name, path, v2 in (("squad/v1.1", V1, False), ("squad/v2.0", V2, True)):
        from_json = {e.qas_id: e for e in squad.read_squad_json(path, v2)}
        from_tfds = squad.load_tfds_examples(name, "validation", data_dir=tfds_dir,
                                             version_2_with_negative=v2)
        assert sorted(e.qas_id for e in from_tfds) == sorted(from_json)
        for e in from_tfds:
            j = from_json[e.qas_id]
            assert (e.question, e.context, e.answers, e.is_impossible, e.title) == (
                j.question, j.context, j.answers, j.is_impossible, j.title)


def test_tfds_errors_name_dataset_split_and_question(tfds_dir):
    message = one_line_error(squad.load_tfds_examples, "squad/v2.0", "train", data_dir=tfds_dir)
    assert message.startswith("tfds squad/v2.0 split train: question bee-")
    assert "set data.version_2_with_negative=true" in message


# === tf.data ===


def test_dataset_yields_model_inputs_and_position_labels(v1_features):
    batches = list(squad.make_dataset(v1_features, 16).as_numpy_iterator())
    assert [len(b[0]["input_word_ids"]) for b in batches] == [16] * 5
    inputs, labels = batches[0]
    assert sorted(inputs) == ["input_mask", "input_type_ids", "input_word_ids"]
    assert sorted(labels) == ["end_logits", "start_logits"]
    assert inputs["input_word_ids"].dtype == np.int32
    assert inputs["input_word_ids"].shape == (16, SEQ)
    np.testing.assert_array_equal(labels["start_logits"], v1_features.start_positions[:16])
    shuffled = squad.make_dataset(v1_features, 16, training=True, seed=1)
    starts = np.concatenate([b[1]["start_logits"] for b in shuffled.as_numpy_iterator()])
    assert len(starts) == 80 and sorted(starts) == sorted(v1_features.start_positions)
    # model.fit's epoch over fewer windows than a batch still trains on all of them.
    small = list(squad.make_dataset(v1_features, 100, training=True, seed=1).as_numpy_iterator())
    assert [len(b[1]["start_logits"]) for b in small] == [80]
    # A repeated stream has full batches only, with a static batch size.
    repeated = squad.make_dataset(v1_features, 48, training=True, repeat=True, seed=1)
    assert repeated.element_spec[0]["input_word_ids"].shape.as_list() == [48, SEQ]
    assert [len(b[1]["start_logits"]) for b in repeated.take(3).as_numpy_iterator()] == [48] * 3
