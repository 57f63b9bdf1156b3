"""Imports TF Model Garden BERT encoder checkpoints into tfbert model directories.

  python -m tfbert.convert --from=model_garden --input=DIR --output=MODEL_DIR

The input directory holds a TF 2 object-based checkpoint of tf-models-official's
`official.nlp.modeling.networks.BertEncoder`, saved as `tf.train.Checkpoint(encoder=...)`
the way Model Garden's own BERT checkpoints and its tf2_bert_encoder_checkpoint_converter
write them, plus `bert_config.json` (Google's fields) and `vocab.txt`.

An object-based checkpoint names tensors by object-graph position
(`encoder/layer_with_weights-4/_attention_layer/_query_dense/kernel/...`), not by
variable name, so the encoder is rebuilt with Model Garden's own code from the config
(as its converter's `_create_bert_model` does), restored, and then mapped by its
variables' names. Model Garden is written for Keras 2: this needs tf_keras, which
tf-models-official depends on. Its "gelu" is the tanh approximation
(`official.modeling.activations.gelu`), tfbert's "gelu_new"; every LayerNorm uses 1e-12.
"""

import os

import numpy as np

from tfbert.convert import google, mapping

# Checkpoint objects other than the encoder that may sit beside it (the root's save
# counter; a training run's optimizer and its per-variable slots).
IGNORED_ROOTS = ("save_counter", "optimizer", "_CHECKPOINTABLE_OBJECT_GRAPH")
ENCODER_ROOT = "encoder"


def build_model_garden_encoder(config_path):
    """(Model Garden BertEncoder, its BertConfig) from bert_config.json, as Model Garden
    builds it."""
    import tf_keras
    from official.legacy.bert import configs
    from official.modeling import tf_utils
    from official.nlp.modeling import networks

    try:
        cfg = configs.BertConfig.from_json_file(config_path)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{config_path}: {e}") from None
    if cfg.embedding_size not in (None, cfg.hidden_size):
        raise ValueError(
            f"{config_path}: embedding_size {cfg.embedding_size} != hidden_size "
            f"{cfg.hidden_size} (factorized embeddings) is not supported by tfbert"
        )
    encoder = networks.BertEncoder(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        activation=tf_utils.get_activation(cfg.hidden_act),
        dropout_rate=cfg.hidden_dropout_prob,
        attention_dropout_rate=cfg.attention_probs_dropout_prob,
        max_sequence_length=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size,
        initializer=tf_keras.initializers.TruncatedNormal(stddev=cfg.initializer_range),
        embedding_width=cfg.embedding_size,
    )
    return encoder, cfg


def _encoder_root(prefix):
    import tensorflow as tf

    keys = [name for name, _ in tf.train.list_variables(prefix)]
    roots = sorted({k.split("/", 1)[0] for k in keys} - set(IGNORED_ROOTS))
    if ENCODER_ROOT in roots:
        root = ENCODER_ROOT
    elif len(roots) == 1:
        root = roots[0]
    else:
        raise ValueError(
            f"{prefix}: expected the encoder saved as tf.train.Checkpoint(encoder=...); "
            f"found objects {', '.join(roots) or 'none'}"
        )
    # The encoder's own weights: optimizer slots hang off each variable in a training
    # checkpoint and are skipped by name.
    weights = [k for k in keys if k.startswith(root + "/") and ".OPTIMIZER_SLOT" not in k]
    return root, weights


def restore(encoder, prefix):
    """Restores `encoder` from the object-based checkpoint; returns name -> numpy array.

    Every encoder variable must be restored and every encoder weight in the checkpoint
    used, else a one-line error names them.
    """
    import tensorflow as tf

    root, checkpoint_weights = _encoder_root(prefix)
    # Unrestored variables stay NaN, so a missing tensor is found by value, whatever
    # object-graph path the checkpoint would have given it.
    for v in encoder.weights:
        v.assign(np.full(v.shape, np.nan, v.dtype.as_numpy_dtype))
    try:
        tf.train.Checkpoint(**{root: encoder}).read(prefix).expect_partial()
    except (ValueError, tf.errors.OpError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{prefix}: cannot restore the Model Garden encoder ({message})") from None
    source = {v.name.split(":")[0]: v.numpy() for v in encoder.weights}
    missing = sorted(name for name, value in source.items() if np.isnan(value).any())
    if missing:
        raise mapping.ConversionError(
            f"{prefix}: no value in the checkpoint for {', '.join(missing)} "
            f"(it holds {len(checkpoint_weights)} weights under {root!r}; the encoder "
            f"built from bert_config.json has {len(source)})"
        )
    if len(checkpoint_weights) != len(source):
        raise mapping.ConversionError(
            f"{prefix}: {len(checkpoint_weights)} weights under {root!r} but the encoder "
            f"built from bert_config.json has {len(source)}; does the config match?"
        )
    return source


def encoder_table(num_layers):
    """(source name, target path, transform) rows for Model Garden's BertEncoder."""
    t = mapping.identity
    table = [
        ("word_embeddings/embeddings", "embeddings/word_embeddings/embeddings", t),
        ("position_embedding/embeddings", "embeddings/position_embeddings/embeddings", t),
        ("type_embeddings/embeddings", "embeddings/type_embeddings/embeddings", t),
        ("embeddings/layer_norm/gamma", "embeddings/layer_norm/gamma", t),
        ("embeddings/layer_norm/beta", "embeddings/layer_norm/beta", t),
    ]
    for i in range(num_layers):
        src = f"transformer/layer_{i}/"
        dst = f"transformer_layer_{i}/"
        for w in ("kernel", "bias"):
            table += [
                # EinsumDense q, k, v: kernels [H, N, D], biases [N, D] -> fused [H, 3*N*D].
                (tuple(f"{src}self_attention/{n}/{w}" for n in ("query", "key", "value")),
                 f"{dst}qkv/{w}", mapping.concat_flat_heads),
                (f"{src}intermediate/{w}", f"{dst}intermediate/{w}", t),
                (f"{src}output/{w}", f"{dst}output/{w}", t),
            ]
        table += [
            # Output projection: kernel [N, D, H] -> [N*D, H]; bias [H].
            (f"{src}self_attention/attention_output/kernel", f"{dst}attention_output/kernel",
             mapping.merge_heads_in),
            (f"{src}self_attention/attention_output/bias", f"{dst}attention_output/bias", t),
        ]
        for w in ("gamma", "beta"):
            table += [
                (f"{src}self_attention_layer_norm/{w}", f"{dst}attention_layer_norm/{w}", t),
                (f"{src}output_layer_norm/{w}", f"{dst}output_layer_norm/{w}", t),
            ]
    table += [
        ("pooler_transform/kernel", "pooler/kernel", t),
        ("pooler_transform/bias", "pooler/bias", t),
    ]
    return table


def convert(input, output, lowercase=None):
    """Converts a Model Garden BERT encoder checkpoint directory to a tfbert model directory.

    `lowercase` defaults to what the directory name says ("uncased" -> True, "cased" ->
    False, neither -> True).
    """
    from tfbert.models import presets

    directory, prefix = google.find_checkpoint(input)
    if lowercase is None:
        lowercase = google.infer_lowercase(directory, prefix)
    config_path = os.path.join(directory, google.CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path}: no such file")
    mg_encoder, mg_config = build_model_garden_encoder(config_path)
    # The tfbert config from the same parsed fields, so defaults (type_vocab_size=16 when
    # the file omits it) are Model Garden's.
    fields = {k: v for k, v in vars(mg_config).items() if k not in ("embedding_size",
                                                                    "backward_compatible")}
    config = google.google_config_from_dict(fields, source=config_path, lowercase=lowercase)
    vocab = google.read_vocab(os.path.join(directory, google.VOCAB_FILE), config.vocab_size)

    source = restore(mg_encoder, prefix)
    encoder = presets.build_encoder(config)
    mapping.apply_table(encoder, source, encoder_table(config.num_hidden_layers),
                        source_desc=prefix)
    presets.save_preset(encoder, output, vocabulary=vocab, lowercase=config.lowercase)
    return encoder
