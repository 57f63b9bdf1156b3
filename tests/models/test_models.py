import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import helpers
import tfbert
from tfbert import features

TINY = dict(
    vocabulary_size=97,
    num_layers=2,
    num_heads=2,
    hidden_dim=16,
    intermediate_dim=32,
    max_sequence_length=24,
)


def tiny_encoder(**kwargs):
    return tfbert.BertEncoder(**{**TINY, **kwargs})


def inputs(batch=3, seq=12, pad_from=7):
    return helpers.random_inputs(batch, seq, vocab_size=TINY["vocabulary_size"], pad_from=pad_from)


def with_positions(x):
    return {**x, features.MASKED_LM_POSITIONS: np.array([[1, 2, 5]] * len(x["input_mask"]), "int32")}


def build_all(encoder):
    return {
        "encoder": (encoder, lambda x: x),
        "pretrainer": (tfbert.BertPretrainer(encoder), with_positions),
        "classifier": (tfbert.BertClassifier(encoder, num_classes=3), lambda x: x),
        "regressor": (tfbert.BertClassifier(encoder, num_classes=1), lambda x: x),
        "token_classifier": (tfbert.BertTokenClassifier(encoder, num_classes=5), lambda x: x),
        "question_answerer": (tfbert.BertQuestionAnswerer(encoder), lambda x: x),
    }


def test_encoder_outputs_follow_tf_hub_names_and_shapes():
    out = tiny_encoder()(inputs())
    assert set(out) == {"sequence_output", "pooled_output", "encoder_outputs"}
    assert out["sequence_output"].shape == (3, 12, 16)
    assert out["pooled_output"].shape == (3, 16)
    assert len(out["encoder_outputs"]) == 2
    np.testing.assert_array_equal(out["encoder_outputs"][-1], out["sequence_output"])
    # The pooler is tanh(dense(first token)).
    assert np.all(np.abs(out["pooled_output"]) <= 1.0)


def test_task_model_output_shapes():
    models = build_all(tiny_encoder())
    x = inputs()
    out = {name: model(prep(x)) for name, (model, prep) in models.items()}
    assert out["pretrainer"]["mlm_logits"].shape == (3, 3, 97)
    assert out["pretrainer"]["nsp_logits"].shape == (3, 2)
    assert out["classifier"].shape == (3, 3)
    assert out["regressor"].shape == (3, 1)
    assert out["token_classifier"].shape == (3, 12, 5)
    assert out["question_answerer"]["start_logits"].shape == (3, 12)
    # QA never points into padding: padded logits sit far below every real one.
    start = np.asarray(out["question_answerer"]["start_logits"])
    assert start[1:, 7:].max() < start[1:, :7].min() - 1000


def test_padding_does_not_change_real_token_outputs():
    encoder = tiny_encoder()
    x = inputs(batch=2, seq=8, pad_from=None)
    x["input_mask"][1, 5:] = 0
    padded = {k: np.pad(v, ((0, 0), (0, 4))) for k, v in x.items()}
    a = encoder(x)["sequence_output"].numpy()
    b = encoder(padded)["sequence_output"].numpy()
    np.testing.assert_allclose(a[0], b[0, :8], atol=1e-5)
    np.testing.assert_allclose(a[1, :5], b[1, :5], atol=1e-5)


def test_any_sequence_length_up_to_max_positions():
    encoder = tiny_encoder()
    for seq in (2, 5, 24):
        assert encoder(inputs(batch=2, seq=seq, pad_from=None))["sequence_output"].shape == (2, seq, 16)
    with pytest.raises(Exception):
        encoder(inputs(batch=2, seq=25, pad_from=None))


def test_mlm_decoder_is_tied_to_word_embeddings():
    encoder = tiny_encoder()
    pretrainer = tfbert.BertPretrainer(encoder)
    x = with_positions(inputs())
    before = pretrainer(x)["mlm_logits"].numpy()
    table = encoder.word_embeddings.embeddings
    table.assign(table.numpy() * 2.0)
    after = pretrainer(x)["mlm_logits"].numpy()
    assert np.abs(after - before).max() > 1e-3
    # No separate decoder matrix: the only [V, H] weight is the embedding table.
    vh = [w.path for w in pretrainer.weights if tuple(w.shape) == (97, 16)]
    assert vh == ["embeddings/word_embeddings/embeddings"]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_mlm_logits_are_the_transformed_rows_times_the_embedding_table_plus_bias(jit_compile):
    import tensorflow as tf

    encoder = tiny_encoder()
    pretrainer = tfbert.BertPretrainer(encoder)
    head = pretrainer.mlm_head
    head.output_bias.assign(np.linspace(-1, 1, 97).astype("float32"))
    x = with_positions(inputs())
    logits = tf.function(lambda x: pretrainer(x)["mlm_logits"], jit_compile=jit_compile)(x)
    sequence = encoder(x)["sequence_output"].numpy()
    rows = np.take_along_axis(sequence, x[features.MASKED_LM_POSITIONS][:, :, None], axis=1)
    rows = head.layer_norm(head.transform(rows)).numpy()                   # [B, P, H]
    table = encoder.word_embeddings.embeddings.numpy()                     # [V, H]
    expected = rows @ table.T + head.output_bias.numpy()
    assert logits.shape == (3, 3, 97)
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5)


def test_mlm_head_only_reads_masked_positions():
    encoder = tiny_encoder()
    pretrainer = tfbert.BertPretrainer(encoder)
    x = with_positions(inputs(pad_from=None))
    a = pretrainer(x)["mlm_logits"].numpy()
    y = {**x, features.MASKED_LM_POSITIONS: x[features.MASKED_LM_POSITIONS][:, ::-1].copy()}
    b = pretrainer(y)["mlm_logits"].numpy()
    np.testing.assert_allclose(a[:, ::-1], b, atol=1e-5)


@pytest.mark.parametrize("name", ["encoder", "pretrainer", "classifier", "token_classifier", "question_answerer"])
def test_keras_save_and_load_gives_identical_outputs(tmp_path, name):
    model, prep = build_all(tiny_encoder())[name]
    x = prep(inputs())
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    assert helpers.max_abs_diff(model(x), loaded(x)) == 0.0
    assert loaded.get_config() == model.get_config()


def test_get_config_round_trip_rebuilds_same_architecture():
    model = tfbert.BertClassifier(tiny_encoder(activation="gelu_new", dropout=0.2), num_classes=4)
    clone = tfbert.BertClassifier.from_config(model.get_config())
    assert clone.encoder.activation == "gelu_new"
    assert clone.encoder.dropout == 0.2
    assert clone.num_classes == 4
    assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_keeps_layer_norm_and_softmax_in_float32(policy):
    encoder = tiny_encoder(dtype=policy)
    pretrainer = tfbert.BertPretrainer(encoder)
    x = with_positions(inputs())
    out = pretrainer(x)
    half = "bfloat16" if policy == "mixed_bfloat16" else "float16"
    assert out["sequence_output"].dtype == half
    assert out["mlm_logits"].dtype == "float32"
    assert out["nsp_logits"].dtype == "float32"
    # Weights stay float32; layer norms compute in float32.
    assert all(w.dtype == "float32" for w in pretrainer.weights)
    norms = [l for l in encoder._flatten_layers() if isinstance(l, keras.layers.LayerNormalization)]
    assert norms and all(l.compute_dtype == "float32" for l in norms)
    # Half precision stays close to float32 with the same weights.
    full = tfbert.BertPretrainer(tiny_encoder())
    full.set_weights(pretrainer.get_weights())
    ref = full(x)
    np.testing.assert_allclose(
        np.asarray(out["mlm_logits"]), np.asarray(ref["mlm_logits"]), atol=0.1
    )


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_task_heads_compute_under_the_encoders_mixed_precision_policy(tmp_path, policy):
    # Keras keeps no policy for a functional model (its dtype_policy is the global
    # default), so heads take the policy of the encoder's layers, and cast their logits
    # to float32. The policy survives a .keras save and load.
    encoder = tiny_encoder(dtype=policy)
    assert encoder.layers_dtype_policy.name == policy
    half = "bfloat16" if policy == "mixed_bfloat16" else "float16"
    heads = {"pretrainer": ["mlm_head", "nsp_head"], "classifier": ["classifier"],
             "regressor": ["classifier"], "token_classifier": ["classifier"],
             "question_answerer": ["span_head"]}
    x = inputs()
    for name, (model, prep) in build_all(encoder).items():
        if name == "encoder":
            continue
        for head in heads[name]:
            assert model.get_layer(head).compute_dtype == half, (name, head)
        out = model(prep(x))
        if isinstance(out, dict):  # the pretrainer: the encoder's outputs and two logits
            out = {k: v for k, v in out.items() if k.endswith("logits")}
        logits = tf.nest.flatten(out)
        assert logits and all(v.dtype == "float32" for v in logits), name
    pretrainer = build_all(encoder)["pretrainer"][0]
    assert pretrainer.mlm_head.transform.compute_dtype == half
    assert pretrainer.mlm_head.layer_norm.compute_dtype == "float32"
    path = str(tmp_path / "pretrainer.keras")
    pretrainer.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.encoder.layers_dtype_policy.name == policy
    assert loaded.mlm_head.compute_dtype == half and loaded.nsp_head.compute_dtype == half
    x = with_positions(x)
    assert helpers.max_abs_diff(pretrainer(x)["mlm_logits"], loaded(x)["mlm_logits"]) == 0.0


def test_under_xla_on_the_cpu_a_mixed_precision_mlm_decoder_stays_float32():
    # XLA on a CPU would run the half-precision decoder matmul in float32 anyway; the
    # head keeps it (logits, bias) in float32 there and skips the casts.
    head = tfbert.BertPretrainer(tiny_encoder(dtype="mixed_bfloat16")).mlm_head
    seq = tf.random.normal([2, 6, TINY["hidden_dim"]], seed=1)
    positions = tf.constant([[1, 2, 5], [0, 3, 4]])
    table = head.embeddings.embeddings

    @tf.function(jit_compile=True)
    def logits_and_reference(seq, positions):
        rows = head.layer_norm(head.transform(tf.gather(seq, positions, batch_dims=1)))
        reference = tf.einsum("bph,vh->bpv", tf.cast(rows, "float32"), table) + head.output_bias
        return tf.cast(head(seq, positions), "float32"), reference

    logits, reference = logits_and_reference(seq, positions)
    assert reference.dtype == "float32" and logits.shape == reference.shape
    # bfloat16 logits would be off by about 2**-8 of their size.
    scale = float(tf.reduce_max(tf.abs(reference)))
    assert helpers.max_abs_diff(logits, reference) <= 1e-5 * scale


def test_activation_forms_differ_and_unknown_is_rejected():
    x = inputs()
    exact = tiny_encoder(activation="gelu")
    approx = tiny_encoder(activation="gelu_new")
    approx.set_weights(exact.get_weights())
    diff = helpers.max_abs_diff(exact(x)["sequence_output"], approx(x)["sequence_output"])
    assert 0 < diff < 0.05
    with pytest.raises(ValueError, match="unknown activation 'swishy'"):
        tiny_encoder(activation="swishy")


def test_exact_gelu_is_the_erf_form_and_matches_keras():
    from tfbert.layers.activations import gelu_erf

    x = np.linspace(-12, 12, 20001).astype("float32")
    ours = np.asarray(gelu_erf(x))
    np.testing.assert_allclose(ours, np.asarray(keras.activations.gelu(x, approximate=False)),
                               atol=2e-6)
    # x * Phi(x) from the float64 erf.
    from math import erf, sqrt

    reference = np.array([v * 0.5 * (1 + erf(v / sqrt(2))) for v in x.astype("float64")])
    np.testing.assert_allclose(ours, reference, atol=2e-6)


@pytest.mark.parametrize("name", ["gelu", "gelu_new"])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_gelu_of_bfloat16_is_computed_in_float32(name, jit_compile):
    from tfbert.layers.activations import get_activation

    gelu = get_activation(name)
    x = tf.constant(np.linspace(-6, 6, 4001), tf.bfloat16)

    def value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = gelu(x)
        return y, tape.gradient(y, x)

    # The float32 reference runs the same way (graph optimizers may reorder the math).
    run = tf.function(value_and_grad, jit_compile=jit_compile)
    y, grad = run(x)
    assert y.dtype == grad.dtype == tf.bfloat16
    x32 = tf.cast(x, tf.float32)
    y32, grad32 = run(x32)
    # Within one bfloat16 step of float32's result rounded (atol: float32's own
    # cancellation in the far tails). GELU done in bfloat16 throughout misses this at
    # over a third of these points, in value and in gradient.
    for ours, reference in ((y, y32), (grad, grad32)):
        np.testing.assert_allclose(
            tf.cast(ours, tf.float32).numpy(),
            tf.cast(tf.cast(reference, tf.bfloat16), tf.float32).numpy(),
            rtol=2**-8, atol=1e-5)
    assert gelu(x32).dtype == tf.float32


@pytest.mark.parametrize("policy", [None, "mixed_bfloat16"])
@pytest.mark.parametrize("rows", ["first_token_only", "query_positions"])
def test_block_at_some_rows_equals_the_full_block_at_those_rows(policy, rows):
    encoder = tiny_encoder(dtype=policy)
    x = inputs(batch=3, seq=12, pad_from=7)
    hidden = encoder.embeddings(x["input_word_ids"], x["input_type_ids"])
    block = encoder.transformer_layers[0]
    full = block(hidden, x["input_mask"])                                  # [B, S, H]
    if rows == "first_token_only":
        positions = np.zeros([3, 1], "int32")
        part = block(hidden, x["input_mask"], first_token_only=True)       # [B, 1, H]
    else:
        # Repeats, the first token, the last and padded positions.
        positions = np.array([[0, 4, 4, 11], [0, 1, 9, 0], [0, 10, 3, 7]], "int32")
        part = block(hidden, x["input_mask"], query_positions=positions)   # [B, Q, H]
    assert part.shape == (*positions.shape, TINY["hidden_dim"]) and part.dtype == full.dtype
    expected = np.take_along_axis(np.asarray(full, "float32"), positions[:, :, None], axis=1)
    atol = 2e-2 if policy else 1e-6
    np.testing.assert_allclose(np.asarray(part, "float32"), expected, atol=atol)


@pytest.mark.parametrize("jit_compile,num_layers", [(False, 2), (True, 2), (False, 0)])
def test_pretraining_logits_and_gradients_equal_the_full_models(jit_compile, num_layers):
    # The pretraining step calls BertPretrainer.pretraining_logits, which runs the last
    # block for the first token and the masked positions only: the heads' logits and
    # every weight's gradient must be those of the whole model.
    model = tfbert.BertPretrainer(tiny_encoder(num_layers=num_layers))
    x = inputs(batch=3, seq=12, pad_from=7)
    x[features.MASKED_LM_POSITIONS] = np.array([[1, 3, 3, 0], [2, 5, 0, 0], [11, 4, 9, 1]],
                                               "int32")

    def logits_and_grads(x):
        with tf.GradientTape(persistent=True) as tape:
            full = model(x, training=False)
            fast = model.pretraining_logits(x, training=False)
            losses = [tf.reduce_sum(out["mlm_logits"] ** 2) + tf.reduce_sum(out["nsp_logits"] ** 2)
                      for out in (full, fast)]
        grads = [tape.gradient(loss, model.trainable_variables) for loss in losses]
        return full, fast, grads

    full, fast, (full_grads, fast_grads) = tf.function(
        logits_and_grads, jit_compile=jit_compile)(x)
    assert set(fast) == {"mlm_logits", "nsp_logits"}
    for name in fast:
        assert fast[name].dtype == tf.float32 and fast[name].shape == full[name].shape
        np.testing.assert_allclose(np.asarray(fast[name]), np.asarray(full[name]), atol=1e-5)
    assert len(fast_grads) == len(model.trainable_variables)
    for variable, want, got in zip(model.trainable_variables, full_grads, fast_grads):
        want, got = tf.convert_to_tensor(want).numpy(), tf.convert_to_tensor(got).numpy()
        assert np.abs(want).max() > 0, variable.path
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max(),
                                   err_msg=variable.path)


@pytest.mark.parametrize("jit_compile,num_layers", [(False, 3), (True, 3), (False, 0)])
def test_classifier_logits_equal_the_encoders_pooled_output_through_the_head(jit_compile,
                                                                              num_layers):
    # BertClassifier.call runs the last block for the first token only; the logits must be
    # those of the full encoder's pooled output, with and without XLA.
    import tensorflow as tf

    encoder = tiny_encoder(num_layers=num_layers)
    model = tfbert.BertClassifier(encoder, num_classes=3)
    x = inputs(batch=5, seq=12, pad_from=6)
    full = model.classifier(encoder(x)["pooled_output"])
    logits = tf.function(lambda x: model(x, training=False), jit_compile=jit_compile)(x)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(full), atol=1e-5)
    np.testing.assert_allclose(np.asarray(encoder.pooled_output(x)),
                               np.asarray(encoder(x)["pooled_output"]), atol=1e-6)


def test_fit_memorises_a_fixed_batch():
    encoder = tiny_encoder(dropout=0.0, attention_dropout=0.0)
    model = tfbert.BertClassifier(encoder, num_classes=2, dropout=0.0)
    model.compile(
        optimizer=keras.optimizers.AdamW(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = inputs(batch=8, seq=10, pad_from=6)
    y = np.array([0, 1] * 4)
    first = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=40, verbose=0)
    assert model.evaluate(x, y, verbose=0) < first * 0.3


def test_preset_round_trip_for_encoder_and_task(tmp_path):
    vocab = [f"tok{i}" for i in range(97)]
    encoder = tiny_encoder()
    encoder.save_to_preset(str(tmp_path / "enc"), vocabulary=vocab, lowercase=False)
    assert sorted(os.listdir(tmp_path / "enc")) == ["config.json", "model.weights.h5", "vocab.txt"]
    config = json.loads((tmp_path / "enc" / "config.json").read_text())
    assert config["hidden_size"] == 16 and config["lowercase"] is False
    loaded = tfbert.BertEncoder.from_preset(str(tmp_path / "enc"))
    x = inputs()
    assert helpers.max_abs_diff(encoder(x), loaded(x)) == 0.0

    clf = tfbert.BertClassifier(encoder, num_classes=3)
    clf.save_to_preset(str(tmp_path / "clf"), vocabulary=vocab, label_names=["a", "b", "c"], seq_length=12)
    task = json.loads((tmp_path / "clf" / "task.json").read_text())
    assert task == {"task": "classification", "args": {"num_classes": 3, "dropout": 0.1},
                    "label_names": ["a", "b", "c"], "seq_length": 12}
    clf2 = tfbert.BertClassifier.from_preset(str(tmp_path / "clf"))
    assert helpers.max_abs_diff(clf(x), clf2(x)) == 0.0
    # The encoder of a fine-tuned directory loads on its own too.
    enc2 = tfbert.BertEncoder.from_preset(str(tmp_path / "clf"))
    assert helpers.max_abs_diff(encoder(x), enc2(x)) == 0.0
    with pytest.raises(ValueError, match="not a BertQuestionAnswerer"):
        tfbert.BertQuestionAnswerer.from_preset(str(tmp_path / "clf"))


def test_preset_write_is_atomic_and_keeps_the_old_directory_on_failure(tmp_path):
    vocab = [f"tok{i}" for i in range(97)]
    target = tmp_path / "model"
    encoder = tiny_encoder()
    encoder.save_to_preset(str(target), vocabulary=vocab)
    before = (target / "model.weights.h5").read_bytes()
    with pytest.raises(ValueError, match="vocabulary has 3 tokens"):
        tiny_encoder().save_to_preset(str(target), vocabulary=["a", "b", "c"])
    assert (target / "model.weights.h5").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temporary left behind


def test_from_preset_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a model directory nor a size"):
        tfbert.BertEncoder.from_preset("huge")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        tfbert.BertEncoder.from_preset(str(tmp_path))


@pytest.mark.parametrize("size,layers,hidden", [("tiny", 2, 128), ("mini", 4, 256), ("small", 4, 512)])
def test_size_presets_match_google_small_berts(size, layers, hidden):
    encoder = tfbert.BertEncoder.from_preset(size)
    assert (encoder.num_layers, encoder.hidden_dim, encoder.num_heads) == (layers, hidden, hidden // 64)
    assert encoder.vocabulary_size == 30522
    assert encoder.intermediate_dim == 4 * hidden


def test_task_json_entries_are_checked_kept_and_read_back(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"tok{i}" for i in range(92)]
    clf = tfbert.BertClassifier(tiny_encoder(), num_classes=2)
    # A misspelt entry would land in task.json where nothing reads it.
    with pytest.raises(ValueError, match="unknown task.json entry label_name; valid: label_names"):
        clf.save_to_preset(str(tmp_path / "typo"), vocabulary=vocab, label_name=["n", "p"])
    assert not (tmp_path / "typo").exists()

    clf.save_to_preset(str(tmp_path / "clf"), vocabulary=vocab, label_names=["neg", "pos"],
                       seq_length=20)
    loaded = tfbert.BertClassifier.from_preset(str(tmp_path / "clf"))
    assert loaded.task_info == {"label_names": ["neg", "pos"], "seq_length": 20}
    # Saved again without them, a loaded model keeps its label names and length; a new
    # value replaces the old one.
    loaded.save_to_preset(str(tmp_path / "again"), vocabulary=vocab, seq_length=16)
    task = json.loads((tmp_path / "again" / "task.json").read_text())
    assert task["label_names"] == ["neg", "pos"] and task["seq_length"] == 16
    # The preprocessor of a fine-tuned directory takes its sequence length; an encoder
    # directory (no task.json) gets 128; an explicit one wins.
    assert tfbert.BertPreprocessor.from_preset(str(tmp_path / "clf")).seq_length == 20
    assert tfbert.BertPreprocessor.from_preset(str(tmp_path / "clf"), seq_length=8).seq_length == 8
    loaded.encoder.save_to_preset(str(tmp_path / "enc"), vocabulary=vocab)
    assert tfbert.BertPreprocessor.from_preset(str(tmp_path / "enc")).seq_length == 128


def test_sequences_longer_than_the_position_table_are_refused_under_xla():
    import tensorflow as tf

    encoder = tiny_encoder()
    # XLA (and GPUs) would clamp position 24 to 23 silently; the static length is checked.
    compiled = tf.function(lambda x: encoder(x)["sequence_output"], jit_compile=True)
    with pytest.raises(ValueError, match="25 tokens are longer than the model's "
                                         "max_sequence_length 24"):
        compiled(inputs(batch=2, seq=25, pad_from=None))
    assert compiled(inputs(batch=2, seq=24, pad_from=None)).shape == (2, 24, 16)


@pytest.mark.parametrize("make", [
    lambda encoder: tfbert.BertTokenClassifier(encoder, num_classes=3),
    lambda encoder: tfbert.BertQuestionAnswerer(encoder),
])
def test_span_and_token_models_freeze_the_pooler_they_never_read(make):
    model = make(tiny_encoder())
    names = [v.path for v in model.trainable_variables]
    assert not [n for n in names if "pooler" in n]
    assert any("pooler" in v.path for v in model.non_trainable_variables)
    # Every trainable variable gets a gradient, so model.fit has nothing to warn about.
    import tensorflow as tf

    x = inputs()
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = sum(tf.reduce_sum(t) for t in tf.nest.flatten(out))
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None for g in grads)


def test_encoder_of_a_token_classifier_directory_trains_its_pooler_again(tmp_path):
    vocab = [f"tok{i}" for i in range(97)]
    tagger = tfbert.BertTokenClassifier(tiny_encoder(), num_classes=3)
    assert not tagger.encoder.pooler.trainable
    tagger.save_to_preset(str(tmp_path / "ner"), vocabulary=vocab, label_names=["O", "B-X", "I-X"])
    encoder = tfbert.BertEncoder.from_preset(str(tmp_path / "ner"))
    classifier = tfbert.BertClassifier(encoder, num_classes=2)
    assert any("pooler" in v.path for v in classifier.trainable_variables)


def test_import_tfbert_is_enough_to_load_a_saved_keras_model(tmp_path):
    # `import tfbert` registers its Keras classes, as keras.models.load_model needs.
    import subprocess
    import sys

    encoder = tfbert.BertEncoder(vocabulary_size=100, num_layers=1, hidden_dim=16,
                                 num_heads=2, intermediate_dim=32, max_sequence_length=16)
    ids = np.ones((1, 8), "int32")
    encoder({"input_word_ids": ids, "input_mask": ids, "input_type_ids": 0 * ids})
    path = str(tmp_path / "encoder.keras")
    encoder.save(path)
    code = ("import keras, tfbert; "
            f"model = keras.models.load_model({path!r}); "
            "assert type(model).__name__ == 'BertEncoder', type(model)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
