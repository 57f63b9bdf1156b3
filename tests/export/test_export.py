"""SavedModel export: TF Serving compatibility, parity with Keras, warmup, atomicity.

One export per task (tiny random models on the real MiniLM vocabulary, plus the real
MiniLM encoder) is made once for the module; one fresh Python process that imports only
tensorflow and tensorflow_text (tfbert made unimportable) loads them all and runs every
call; the outputs are compared here with the Keras model's, post-processed by the
Python references in reference.py.
"""

import json
import os
import pickle
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import helpers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402

from tfbert import features  # noqa: E402
from tfbert.export import op_allowlist, saved_model, warmup  # noqa: E402
from tfbert.export import signatures as sig  # noqa: E402
from tfbert.export.__main__ import main as export_main  # noqa: E402
from tfbert.models import presets  # noqa: E402
from tfbert.models import (  # noqa: E402
    BertClassifier,
    BertEncoder,
    BertQuestionAnswerer,
    BertTokenClassifier,
)
from tfbert.text import BertPreprocessor  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TOLERANCE = 1e-5
MB = 1_000_000
# Text-only tensorflow_text ops an export may use (FastBertNormalizer and
# FastWordpieceTokenizer); a new one needs checking against TF Serving's ops_lib.
EXPECTED_TEXT_OPS = {"FastBertNormalize", "FastWordpieceTokenizeWithOffsets"}

NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
NLI_LABELS = ["contradiction", "entailment", "neutral"]


def vocab_file():
    return os.path.join(helpers.minilm_dir(), "vocab.txt")


def big_text(max_bytes_list):
    """About 1 MB of real-looking text, aligned so that each cut in `max_bytes_list`
    falls inside a multi-byte character (exercising the UTF-8-safe truncation)."""
    unit = ("Zoë's café in München served crème brûlée — “délicieux”, said the critic. "
            "The ΣΟΦΙΑ exhibit opened in Athens; 東京 visitors queued for hours. ").encode()
    for pad in range(len(unit)):
        data = (b" " * pad + unit * (MB // len(unit) + 1))[:MB]
        if all((data[n] & 0xC0) == 0x80 for n in max_bytes_list):
            return data
    raise AssertionError("no alignment puts every cut inside a character")


BIG = big_text([sig.DEFAULT_MAX_TEXT_BYTES_OTHER, sig.DEFAULT_MAX_TEXT_BYTES["question_answering"]])
TEXTS = [
    b"Angela Merkel met Barack Obama in Berlin on Tuesday to discuss trade.",
    b"",
    "Ünïcödé ΣΑΣ ΟΔΥΣΣΕΥΣ naïve café ﬁne İstanbul 東京タワー don't stop".encode(),
    b"caf\xc3 \xff\xfe broken \xe2\x82 utf-8\x00 by\x01tes \xed\xa0\x80end",
    BIG,
]
TEXTS_B = [
    b"Two leaders met in Germany.",
    "Ça va très bien, merci!".encode(),
    b"",
    b"\xf0\x9f\x98\x80 emoji \xf0\x9f",
    b"A short second segment.",
]
QUESTIONS = [
    b"Who met Barack Obama?",
    b"What is this?",
    "Was ist ΣΑΣ?".encode(),
    b"broken \xff question",
    b"Where did the exhibit open?",
]


def tiny_encoder(seed):
    keras.utils.set_random_seed(seed)
    return BertEncoder(vocabulary_size=30522, num_layers=1, num_heads=2, hidden_dim=16,
                       intermediate_dim=32, max_sequence_length=64, dropout=0.0,
                       attention_dropout=0.0)


def examples(rows):
    """Serialized tf.Examples with the given {feature: bytes} rows."""
    out = []
    for row in rows:
        feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
                   for k, v in row.items()}
        out.append(tf.train.Example(
            features=tf.train.Features(feature=feature)).SerializeToString())
    return np.array(out, dtype=object)


def strings(values):
    return np.array(list(values), dtype=object)


def warmup_calls(path):
    """Each warmup record as a call of the fresh process (what TF Serving replays)."""
    calls = []
    for log in warmup.read_warmup_requests(path):
        kind = log.WhichOneof("log_type")
        if kind == "predict_log":
            request = log.predict_log.request
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        elif kind in ("classify_log", "regress_log"):
            request = getattr(log, kind).request
            inputs = {sig.EXAMPLES: strings(
                e.SerializeToString() for e in request.input.example_list.examples)}
        else:
            raise AssertionError(f"unexpected warmup record {kind}")
        calls.append({"signature": request.model_spec.signature_name, "inputs": inputs,
                      "warmup": kind})
    return calls


@pytest.fixture(scope="module")
def google():
    import google_reference

    tokenization = google_reference.google_tokenization()
    tokenizer = tokenization.FullTokenizer(vocab_file(), do_lower_case=True)
    return tokenization, tokenizer


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Every task exported once, the fresh process run once over all of them."""
    root = tmp_path_factory.mktemp("exports")
    pre32 = BertPreprocessor(vocab_file(), seq_length=32)
    made = {}

    # Classification (pairs) through the CLI, from a saved model directory.
    classifier = BertClassifier(tiny_encoder(1), num_classes=3, dropout=0.0)
    model_dir = str(root / "classifier_model")
    classifier.save_to_preset(model_dir, vocabulary=vocab_file(), lowercase=True,
                              label_names=NLI_LABELS, seq_length=32, inputs=["text", "text_b"])
    base = str(root / "classifier")
    assert export_main([f"--model_dir={model_dir}", f"--export_dir={base}"]) == 0
    made["classification"] = {
        "model": classifier, "pre": pre32, "path": os.path.join(base, "1"), "calls": [
            {"signature": "serving_default",
             "inputs": {"text": strings(TEXTS), "text_b": strings(TEXTS_B)}},
            {"signature": "serving_default",
             "inputs": {"text": strings([]), "text_b": strings([])}},
            {"signature": "classify", "inputs": {"inputs": examples(
                [{"text": a, "text_b": b} for a, b in zip(TEXTS, TEXTS_B)])}},
            {"signature": "serving_default", "timed": True, "repeat": 3,
             "inputs": {"text": strings([BIG]), "text_b": strings([BIG])}},
            {"signature": "classify", "inputs": {"inputs": strings([])}},
        ]}

    regressor = BertClassifier(tiny_encoder(2), num_classes=1, dropout=0.0)
    made["regression"] = {
        "model": regressor, "pre": pre32,
        "path": saved_model.export_saved_model(regressor, pre32, str(root / "regressor")),
        "calls": [
            {"signature": "serving_default", "inputs": {"text": strings(TEXTS)}},
            {"signature": "serving_default", "inputs": {"text": strings([])}},
            {"signature": "regress", "inputs": {"inputs": examples([{"text": t} for t in TEXTS])}},
            {"signature": "serving_default", "timed": True, "repeat": 3,
             "inputs": {"text": strings([BIG])}},
        ]}

    tagger = BertTokenClassifier(tiny_encoder(3), num_classes=len(NER_LABELS), dropout=0.0)
    made["token_classification"] = {
        "model": tagger, "pre": pre32,
        "path": saved_model.export_saved_model(tagger, pre32, str(root / "tagger"),
                                               label_names=NER_LABELS),
        "calls": [
            {"signature": "serving_default", "inputs": {"text": strings(TEXTS)}},
            {"signature": "serving_default", "inputs": {"text": strings([])}},
            {"signature": "serving_default", "timed": True, "repeat": 3,
             "inputs": {"text": strings([BIG])}},
        ]}

    pre48 = BertPreprocessor(vocab_file(), seq_length=48)
    answerer = BertQuestionAnswerer(tiny_encoder(4))
    qa_options = {"doc_stride": 8, "max_query_length": 12, "max_answer_length": 5}
    contexts = [TEXTS[0], TEXTS[1], TEXTS[2] * 3, TEXTS[3], BIG]
    made["question_answering"] = {
        "model": answerer, "pre": pre48, "options": qa_options,
        "path": saved_model.export_saved_model(answerer, pre48, str(root / "answerer"),
                                               **qa_options),
        "questions": QUESTIONS, "contexts": contexts,
        "calls": [
            {"signature": "serving_default",
             "inputs": {"question": strings(QUESTIONS), "context": strings(contexts)}},
            {"signature": "serving_default",
             "inputs": {"question": strings([]), "context": strings([])}},
            {"signature": "serving_default", "timed": True, "repeat": 3,
             "inputs": {"question": strings([QUESTIONS[4]]), "context": strings([BIG])}},
        ]}

    # The real MiniLM encoder, imported from its Hugging Face checkpoint.
    from tfbert.convert import hf

    minilm_dir = str(root / "minilm_model")
    hf.convert(helpers.minilm_dir(), minilm_dir)
    minilm = BertEncoder.from_preset(minilm_dir)
    pre128 = BertPreprocessor.from_preset(minilm_dir, seq_length=128)
    ids = pre128(tf.constant(TEXTS[:4]))
    made["encoder"] = {
        "model": minilm, "pre": pre128, "ids": {k: np.asarray(v) for k, v in ids.items()},
        "path": saved_model.export_saved_model(minilm, pre128, str(root / "minilm")),
        "calls": [
            {"signature": "serving_default", "inputs": {"text": strings(TEXTS)}},
            {"signature": "serving_default", "inputs": {"text": strings([])}},
            {"signature": "serve_ids", "inputs": {k: np.asarray(v) for k, v in ids.items()}},
            {"signature": "serving_default", "timed": True, "repeat": 3,
             "inputs": {"text": strings([BIG])}},
        ]}

    for entry in made.values():
        entry["warmup_calls"] = warmup_calls(entry["path"])
    spec = {"exports": [{"path": e["path"], "calls": e["calls"] + e["warmup_calls"]}
                        for e in made.values()]}
    spec_path, result_path = str(root / "spec.pkl"), str(root / "result.pkl")
    with open(spec_path, "wb") as f:
        pickle.dump(spec, f)
    # A clean environment: no PYTHONPATH (the repository is not importable from cwd).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "load_export.py"), spec_path, result_path],
        cwd=str(root), env=env, capture_output=True, text=True, timeout=1200, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(result_path, "rb") as f:
        result = pickle.load(f)
    for entry, loaded in zip(made.values(), result["exports"]):
        n = len(entry["calls"])
        entry["results"] = loaded["calls"][:n]
        entry["warmup_results"] = loaded["calls"][n:]
        for call, out in zip(entry["calls"] + entry["warmup_calls"], loaded["calls"]):
            assert out["error"] is None, (entry["path"], call["signature"], out["error"])
    return made, result


def outputs(entry, index):
    return entry["results"][index]["outputs"]


def assert_strings_equal(got, want):
    got = np.asarray(got, object)
    want = np.asarray(want, object)
    assert got.shape == want.shape, (got.shape, want.shape)
    for g, w in zip(got.reshape(-1), want.reshape(-1)):
        w = w.encode("utf-8") if isinstance(w, str) else w
        assert g == w, (g, w)


# ---------------------------------------------------------------- fresh process


def test_fresh_process_imported_no_tfbert(exports):
    _, result = exports
    assert result["tfbert_modules"] == []
    for loaded in result["exports"]:
        # A plain restored object: nothing of Keras or tfbert was needed to rebuild it.
        assert loaded["type"] == "_UserObject"
    # tensorflow (2.20) and tensorflow_text import Keras themselves; the loader never
    # does, and loading needs none of it (see _UserObject above).
    print(f"\nkeras imported by tensorflow/tensorflow_text in the fresh process: "
          f"{result['keras_imported']}")


def test_one_megabyte_string_under_one_second(exports):
    made, _ = exports
    seconds = {}
    for task, entry in made.items():
        for call, out in zip(entry["calls"], entry["results"]):
            if call.get("timed"):
                seconds[task] = out["seconds"]
    print("\n1 MB string, fastest of 3 (fresh process, CPU): "
          + ", ".join(f"{task} {s * 1000:.0f} ms" for task, s in seconds.items()))
    assert len(seconds) == len(made)
    assert max(seconds.values()) < 1.0, seconds


# ---------------------------------------------------------------- parity per task


def test_classification_matches_keras(exports):
    made, _ = exports
    entry = made["classification"]
    pre, model = entry["pre"], entry["model"]
    logits = np.asarray(model(pre(tf.constant(TEXTS), tf.constant(TEXTS_B)), training=False))
    probabilities = reference.softmax(logits)
    out = outputs(entry, 0)
    diff = np.max(np.abs(out["probabilities"] - probabilities))
    print(f"\nclassification probabilities max |diff| = {diff:.2e}")
    assert diff <= TOLERANCE
    np.testing.assert_array_equal(out["label_id"], np.argmax(logits, axis=-1))
    assert_strings_equal(out["label"], [NLI_LABELS[i] for i in np.argmax(logits, -1)])
    assert out["probabilities"].dtype == np.float32 and out["label_id"].dtype == np.int32

    empty = outputs(entry, 1)
    assert empty["probabilities"].shape == (0, 3) and empty["label"].shape == (0,)

    classify = outputs(entry, 2)
    assert np.max(np.abs(classify["scores"] - probabilities)) <= TOLERANCE
    assert_strings_equal(classify["classes"], [NLI_LABELS] * len(TEXTS))

    empty_classify = outputs(entry, 4)
    assert empty_classify["scores"].shape == (0, 3) and empty_classify["classes"].shape == (0, 3)

    timed = outputs(entry, 3)
    big_logits = model(pre(tf.constant([BIG]), tf.constant([BIG])), training=False)
    assert np.max(np.abs(timed["probabilities"] - reference.softmax(big_logits))) <= TOLERANCE


def test_regression_matches_keras(exports):
    made, _ = exports
    entry = made["regression"]
    pre, model = entry["pre"], entry["model"]
    want = np.asarray(model(pre(tf.constant(TEXTS)), training=False))[:, 0]
    out = outputs(entry, 0)
    assert set(out) == {"score"}
    diff = np.max(np.abs(out["score"] - want))
    print(f"\nregression score max |diff| = {diff:.2e}")
    assert diff <= TOLERANCE
    assert outputs(entry, 1)["score"].shape == (0,)
    assert np.max(np.abs(outputs(entry, 2)["outputs"] - want)) <= TOLERANCE
    assert np.max(np.abs(outputs(entry, 3)["score"] - want[-1:])) <= TOLERANCE


def test_token_classification_matches_keras(exports, google):
    made, _ = exports
    entry = made["token_classification"]
    pre, model = entry["pre"], entry["model"]
    tokenization, tokenizer = google
    limit = sig.DEFAULT_MAX_TEXT_BYTES_OTHER
    cut = [reference.truncate(t, limit) for t in TEXTS]
    assert len(cut[-1]) < limit  # the cut moved back out of a character

    def words_of(data):
        return reference.words_with_pieces(data, tokenization, tokenizer, lowercase=True)

    # The reference's pieces are the preprocessor's ids (checks the reference itself).
    ids = pre.tokenize(tf.constant(cut)).to_list()
    for data, row in zip(cut, ids):
        assert [p[0] for w in words_of(data)[1] for p in w["pieces"]] == row

    logits = np.asarray(model(pre(tf.constant(cut)), training=False))
    want = reference.token_classification(cut, logits, words_of, NER_LABELS, pre.seq_length)
    out = outputs(entry, 0)
    np.testing.assert_array_equal(out["num_words"], want["num_words"])
    assert_strings_equal(out["words"], want["words"])
    assert_strings_equal(out["labels"], want["labels"])
    np.testing.assert_array_equal(out["start_char"], want["start_char"])
    np.testing.assert_array_equal(out["end_char"], want["end_char"])
    # Words past the 32-piece window are labelled O; the long texts have some.
    assert out["num_words"][-1] > pre.seq_length and out["labels"][-1, -1] == b"O"
    # Words come from the request text, accents and case intact.
    assert "naïve".encode() in list(out["words"][2]) and b"\xce\xa3\xce\x91\xce\xa3" in list(out["words"][2])

    empty = outputs(entry, 1)
    assert empty["words"].shape == (0, 0) and empty["num_words"].shape == (0,)
    timed = outputs(entry, 2)
    np.testing.assert_array_equal(timed["num_words"], want["num_words"][-1:])
    assert_strings_equal(timed["words"][0, :5], want["words"][-1, :5])


def test_question_answering_matches_keras(exports, google):
    made, _ = exports
    entry = made["question_answering"]
    pre, model, options = entry["pre"], entry["model"], entry["options"]
    tokenization, tokenizer = google
    limit = sig.DEFAULT_MAX_TEXT_BYTES["question_answering"]
    questions = [reference.truncate(q, limit) for q in entry["questions"]]
    contexts = [reference.truncate(c, limit) for c in entry["contexts"]]

    def pieces_of(data):
        return reference.words_with_pieces(data, tokenization, tokenizer, lowercase=True)

    want = reference.question_answering(
        questions, contexts, model, pieces_of, pre.seq_length, cls_id=pre.cls_id,
        sep_id=pre.sep_id, **options)
    out = outputs(entry, 0)
    diff = max(np.max(np.abs(out["score"] - want["score"])),
               np.max(np.abs(out["null_score"] - want["null_score"])))
    print(f"\nquestion answering score max |diff| = {diff:.2e}; answers: "
          f"{[a.decode() for a in out['answer']]}")
    assert diff <= TOLERANCE
    np.testing.assert_array_equal(out["start_char"], want["start_char"])
    np.testing.assert_array_equal(out["end_char"], want["end_char"])
    assert_strings_equal(out["answer"], want["answer"])
    # The answer is the original text at those character offsets.
    for b, context in enumerate(contexts):
        text = context.decode("utf-8", errors="replace")
        s, e = out["start_char"][b], out["end_char"][b]
        assert out["answer"][b].decode() == (text[s:e] if s >= 0 else "")
    # The empty context has no span.
    assert out["answer"][1] == b"" and out["start_char"][1] == -1
    empty = outputs(entry, 1)
    assert all(v.shape == (0,) for v in empty.values())
    timed = outputs(entry, 2)
    assert timed["answer"][0] == out["answer"][4]


def test_question_answering_null_threshold(exports, google):
    """SQuAD 2.0 exports: the answer is empty when null_score - score > threshold."""
    made, _ = exports
    entry = made["question_answering"]
    pre, model, options = entry["pre"], entry["model"], entry["options"]
    tokenization, tokenizer = google
    questions, contexts = entry["questions"][:4], entry["contexts"][:4]
    first = outputs(entry, 0)
    gap = (first["null_score"] - first["score"])[[0, 2, 3]]
    # Between the gaps, so that some rows answer and some do not.
    threshold = float(np.sort(gap)[0] + np.sort(gap)[1]) / 2
    functions = sig.question_answering_functions(
        sig.Builder(model, pre, 16384), null_score_diff_threshold=threshold, **options)
    serve = functions["serving_default"][0]
    out = {k: v.numpy() for k, v in serve(tf.constant(questions), tf.constant(contexts)).items()}
    want = reference.question_answering(
        questions, contexts, model,
        lambda d: reference.words_with_pieces(d, tokenization, tokenizer, lowercase=True),
        pre.seq_length, cls_id=pre.cls_id, sep_id=pre.sep_id,
        null_score_diff_threshold=threshold, **options)
    assert_strings_equal(out["answer"], want["answer"])
    np.testing.assert_array_equal(out["start_char"], want["start_char"])
    assert np.max(np.abs(out["score"] - want["score"])) <= TOLERANCE
    answered = out["start_char"] >= 0
    assert answered[[0, 2, 3]].any() and not answered[[0, 2, 3]].all()
    assert np.all(out["score"][~answered] == out["null_score"][~answered])


def test_minilm_encoder_matches_keras(exports):
    made, _ = exports
    entry = made["encoder"]
    pre, model = entry["pre"], entry["model"]
    want = model(pre(tf.constant(TEXTS)), training=False)
    out = outputs(entry, 0)
    # Compared where the input is real. At padding positions (input_mask 0) the
    # encoder's outputs are unused and numerically touchy: there even the Keras model
    # eagerly vs under tf.function differs by ~5e-5; those get a loose bound.
    mask = np.asarray(pre(tf.constant(TEXTS))[features.INPUT_MASK]) > 0
    sequence_diff = np.abs(out[features.SEQUENCE_OUTPUT]
                           - np.asarray(want[features.SEQUENCE_OUTPUT]))
    diffs = {
        features.POOLED_OUTPUT: float(np.max(np.abs(
            out[features.POOLED_OUTPUT] - np.asarray(want[features.POOLED_OUTPUT])))),
        features.SEQUENCE_OUTPUT: float(np.max(sequence_diff[mask])),
        "sequence_output at padding": float(np.max(sequence_diff[~mask])),
    }
    print(f"\nMiniLM encoder max |diff|: {diffs}")
    assert diffs[features.POOLED_OUTPUT] <= TOLERANCE
    assert diffs[features.SEQUENCE_OUTPUT] <= TOLERANCE
    assert diffs["sequence_output at padding"] <= 1e-3
    assert out[features.SEQUENCE_OUTPUT].shape == (len(TEXTS), 128, 384)
    assert outputs(entry, 1)[features.POOLED_OUTPUT].shape == (0, 384)
    ids_out = outputs(entry, 2)
    assert np.max(np.abs(ids_out[features.POOLED_OUTPUT]
                         - np.asarray(want[features.POOLED_OUTPUT])[:4])) <= TOLERANCE


# ---------------------------------------------------------------- warmup


def test_warmup_records_replay(exports):
    made, _ = exports
    for task, entry in made.items():
        calls, results = entry["warmup_calls"], entry["warmup_results"]
        signatures = {c["signature"] for c in calls}
        # Every signature, at batch sizes 1 and 8.
        assert signatures == set(saved_model.describe_signatures(entry["path"]))
        batches = sorted(len(next(iter(c["inputs"].values()))) for c in calls)
        assert batches == sorted(list(warmup.BATCH_SIZES) * len(signatures))
        for call, out in zip(calls, results):
            first = next(iter(out["outputs"].values()))
            assert first.shape[0] == len(next(iter(call["inputs"].values()))), (task, call)


# ---------------------------------------------------------------- static checks


EXPECTED_SIGNATURES = {
    "classification": {
        "serving_default": ("tensorflow/serving/predict",
                            {"text": ("DT_STRING", (-1,)), "text_b": ("DT_STRING", (-1,))},
                            {"probabilities": ("DT_FLOAT", (-1, 3)), "label_id": ("DT_INT32", (-1,)),
                             "label": ("DT_STRING", (-1,))}),
        "classify": ("tensorflow/serving/classify", {"inputs": ("DT_STRING", (-1,))},
                     {"scores": ("DT_FLOAT", (-1, 3)), "classes": ("DT_STRING", (-1, 3))}),
    },
    "regression": {
        "serving_default": ("tensorflow/serving/predict", {"text": ("DT_STRING", (-1,))},
                            {"score": ("DT_FLOAT", (-1,))}),
        "regress": ("tensorflow/serving/regress", {"inputs": ("DT_STRING", (-1,))},
                    {"outputs": ("DT_FLOAT", (-1,))}),
    },
    "token_classification": {
        "serving_default": ("tensorflow/serving/predict", {"text": ("DT_STRING", (-1,))},
                            {"words": ("DT_STRING", (-1, -1)), "labels": ("DT_STRING", (-1, -1)),
                             "num_words": ("DT_INT32", (-1,)),
                             "start_char": ("DT_INT32", (-1, -1)),
                             "end_char": ("DT_INT32", (-1, -1))}),
    },
    "question_answering": {
        "serving_default": ("tensorflow/serving/predict",
                            {"question": ("DT_STRING", (-1,)), "context": ("DT_STRING", (-1,))},
                            {"answer": ("DT_STRING", (-1,)), "score": ("DT_FLOAT", (-1,)),
                             "start_char": ("DT_INT32", (-1,)), "end_char": ("DT_INT32", (-1,)),
                             "null_score": ("DT_FLOAT", (-1,))}),
    },
    "encoder": {
        "serving_default": ("tensorflow/serving/predict", {"text": ("DT_STRING", (-1,))},
                            {"pooled_output": ("DT_FLOAT", (-1, 384)),
                             "sequence_output": ("DT_FLOAT", (-1, 128, 384))}),
        "serve_ids": ("tensorflow/serving/predict",
                      {name: ("DT_INT32", (-1, -1)) for name in features.MODEL_INPUTS},
                      {"pooled_output": ("DT_FLOAT", (-1, 384)),
                       "sequence_output": ("DT_FLOAT", (-1, -1, 384))}),
    },
}


def test_signatures_and_layout(exports):
    made, _ = exports
    with open(vocab_file(), encoding="utf-8") as f:
        vocab = f.read()
    for task, entry in made.items():
        path = entry["path"]
        described = saved_model.describe_signatures(path)
        want = {name: {"method": m, "inputs": i, "outputs": o}
                for name, (m, i, o) in EXPECTED_SIGNATURES[task].items()}
        assert described == want, task
        # The version directory, alone in the base path (no temporary left).
        assert os.listdir(os.path.dirname(path)) == ["1"]
        names = set()
        for directory, _, files in os.walk(path):
            names.update(os.path.relpath(os.path.join(directory, f), path) for f in files)
        for required in ("saved_model.pb", "variables/variables.index", "assets/vocab.txt",
                         "assets.extra/tf_serving_warmup_requests"):
            assert required in names, (task, required, names)
        assert any(n.startswith("variables/variables.data-") for n in names)
        with open(os.path.join(path, "assets", "vocab.txt"), encoding="utf-8") as f:
            assert f.read() == vocab


def test_ops_are_core_tensorflow_or_tf_text(exports):
    made, result = exports
    allowed = (result["core_ops"] | result["text_ops"]) - op_allowlist.PYTHON_OPS
    # The export-time check computes the same sets in its own fresh process.
    registry = op_allowlist.registered_ops()
    assert registry["core"] == result["core_ops"] and registry["text"] == result["text_ops"]
    for task, entry in made.items():
        proto = op_allowlist.read_saved_model(entry["path"])
        used = op_allowlist.graph_ops(proto)
        assert op_allowlist.disallowed_ops(proto, allowed) == {}, task
        assert not set(used) & op_allowlist.PYTHON_OPS
        assert set(used) & result["text_ops"] <= EXPECTED_TEXT_OPS, task
        # The function library was read too: the model's matmuls live only there.
        assert any(p.startswith("function ") for p in used["MatMul"])
        op_allowlist.check_ops(entry["path"], allowed)


def test_check_ops_rejects_py_function_and_unknown_ops(tmp_path):
    def save(function, name):
        module = tf.Module()
        module.f = tf.function(function, input_signature=[tf.TensorSpec([None], tf.float32)])
        path = str(tmp_path / name)
        tf.saved_model.save(module, path, signatures=module.f.get_concrete_function())
        return path

    allowed = op_allowlist.allowed_ops()
    with_py = save(lambda x: tf.py_function(lambda v: v * 2, [x], tf.float32), "py")
    with pytest.raises(ValueError, match=r"op EagerPyFunc in function \S+ calls back into Python"):
        op_allowlist.check_ops(with_py, allowed)
    # An op outside the allowed set is named, with where it is used.
    plain = save(lambda x: x + 1.0, "plain")
    op_allowlist.check_ops(plain, allowed)
    with pytest.raises(ValueError, match="op AddV2 in function .* neither a core TensorFlow op"):
        op_allowlist.check_ops(plain, allowed - {"AddV2"})


# ---------------------------------------------------------------- versions and atomicity


def test_next_version_ignores_non_integer_names(tmp_path):
    for name in ("1", "7", "foo", ".8.tmp-abc", "12a"):
        (tmp_path / name).mkdir()
    (tmp_path / "9").write_text("a file, not a version")
    assert saved_model.next_version(str(tmp_path)) == 8
    assert saved_model.next_version(str(tmp_path / "missing")) == 1


def test_existing_version_is_refused(tmp_path, capsys):
    (tmp_path / "exports" / "3").mkdir(parents=True)
    model_dir = tmp_path / "model"
    BertClassifier(tiny_encoder(5), num_classes=2).save_to_preset(
        str(model_dir), vocabulary=vocab_file(), label_names=["a", "b"], seq_length=16)
    code = export_main([f"--model_dir={model_dir}", f"--export_dir={tmp_path / 'exports'}",
                        "--version=3"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: ") and "already exists" in err
    assert sorted(os.listdir(tmp_path / "exports")) == ["3"]
    pre = BertPreprocessor(vocab_file(), seq_length=16)
    with pytest.raises(FileExistsError, match="never overwritten"):
        saved_model.export_saved_model(BertEncoder.from_preset(str(model_dir)), pre,
                                       str(tmp_path / "exports"), version=3)


def test_question_answering_settings_default_to_the_model_directory(tmp_path):
    # What the trainer writes for a SQuAD 2.0 model; the Python API needs none of it again.
    model_dir = str(tmp_path / "model")
    BertQuestionAnswerer(tiny_encoder(8)).save_to_preset(
        model_dir, vocabulary=vocab_file(), seq_length=48, doc_stride=16, max_query_length=10,
        max_answer_length=7, version_2_with_negative=True, null_score_diff_threshold=1.5)
    model = presets.load_task_model(model_dir)
    pre = BertPreprocessor.from_preset(model_dir)
    # An argument given still wins over task.json.
    path = saved_model.export_saved_model(model, pre, str(tmp_path / "exports"),
                                          max_answer_length=9, check_ops=False)
    with open(os.path.join(path, "assets.extra", saved_model.EXPORT_INFO_FILE)) as f:
        info = json.load(f)
    assert (info["seq_length"], info["doc_stride"], info["max_query_length"],
            info["max_answer_length"], info["null_score_diff_threshold"]) == (48, 16, 10, 9, 1.5)


def test_cli_errors_are_one_line(tmp_path, capsys):
    code = export_main([f"--model_dir={tmp_path / 'nope'}", f"--export_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "no such directory" in err
    with pytest.raises(SystemExit):
        export_main(["--help"])
    assert "--model_dir" in capsys.readouterr().out


def test_failure_mid_export_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("injected failure after the SavedModel was written")

    monkeypatch.setattr(warmup, "write_warmup_requests", fail)
    pre = BertPreprocessor(vocab_file(), seq_length=16)
    model = BertClassifier(tiny_encoder(6), num_classes=2)
    base = tmp_path / "exports"
    with pytest.raises(RuntimeError, match="injected"):
        saved_model.export_saved_model(model, pre, str(base), check_ops=False)
    assert os.listdir(base) == []


def test_export_refuses_bad_arguments(tmp_path):
    pre = BertPreprocessor(vocab_file(), seq_length=128)
    with pytest.raises(ValueError, match="seq_length 128 exceeds the model's max_sequence_length 64"):
        saved_model.export_saved_model(tiny_encoder(7), pre, str(tmp_path))
    pre16 = BertPreprocessor(vocab_file(), seq_length=16)
    with pytest.raises(ValueError, match="pair=True applies to classification"):
        saved_model.export_saved_model(
            BertTokenClassifier(tiny_encoder(7), num_classes=2), pre16, str(tmp_path), pair=True)
    with pytest.raises(TypeError, match="cannot export a Dense"):
        saved_model.export_saved_model(keras.layers.Dense(2), pre16, str(tmp_path))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- served


def test_every_task_export_serves_through_the_reference_server_and_client(exports):
    """Each export behind `tfbert.serve`'s server answers gRPC and REST like the loaded graph."""
    from tfbert.serving import Client
    from tfbert.serving.server import ModelServer
    from tfbert.serving.server_configs import single_model_config

    made, _ = exports
    for task, entry in made.items():
        base = os.path.dirname(entry["path"])
        server = ModelServer(single_model_config(task, base), grpc_port=0, rest_api_port=0,
                             host="127.0.0.1", file_system_poll_wait_seconds=0).start()
        grpc_client = Client(f"127.0.0.1:{server.grpc_port}", task, timeout=60)
        rest_client = Client(None, task, rest_url=f"http://127.0.0.1:{server.rest_api_port}",
                             timeout=60)
        try:
            call = entry["calls"][0]
            inputs = call["inputs"]  # raw bytes: invalid UTF-8 and the 1 MB text included
            want = outputs(entry, 0)
            for client in (grpc_client, rest_client):
                got = client.predict(**inputs)
                assert set(got) == set(want), task
                for name, value in want.items():
                    value = np.asarray(value)
                    if value.dtype.kind in "OSU":
                        # The client decodes valid UTF-8 to str; compare as bytes.
                        as_bytes = [g.encode("utf-8") if isinstance(g, str) else g
                                    for g in np.asarray(got[name], object).reshape(-1)]
                        assert_strings_equal(np.asarray(as_bytes, object).reshape(
                            np.shape(got[name])), value)
                    else:
                        np.testing.assert_allclose(np.asarray(got[name], value.dtype), value,
                                                   atol=1e-5, err_msg=f"{task} {name}")
        finally:
            grpc_client.close()
            server.stop()


def test_classification_by_length_chunks_match_one_padded_call(tmp_path):
    """The export runs rows sorted by length in chunks cut to their longest row; with
    more rows than a chunk, mixed lengths and a duplicate, every row keeps its place and
    equals the model on the batch padded to seq_length."""
    classifier = BertClassifier(tiny_encoder(5), num_classes=3, dropout=0.0)
    pre = BertPreprocessor(vocab_file(), seq_length=32)
    path = saved_model.export_saved_model(classifier, pre, str(tmp_path / "chunks"))
    words = "the film was a gripping and beautifully acted thriller that never lets go".split()
    count = 3 * sig.ROWS_PER_CHUNK + 3
    texts = [" ".join(words[: 1 + (7 * i) % len(words)]) for i in range(count)]
    texts[5] = texts[17]
    serve = tf.saved_model.load(path).signatures["serving_default"]
    got = serve(text=tf.constant(texts))["probabilities"].numpy()
    want = reference.softmax(np.asarray(classifier(pre(tf.constant(texts)), training=False)))
    assert got.shape == (len(texts), 3)
    np.testing.assert_allclose(got, want, atol=TOLERANCE)
    np.testing.assert_array_equal(got[5], got[17])
