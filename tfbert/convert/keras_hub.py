"""Imports KerasHub BERT presets into tfbert model directories.

  python -m tfbert.convert --from=keras_hub --input=PRESET_DIR --output=MODEL_DIR

The input is a local preset directory as `BertBackbone.save_to_preset` and
`BertTokenizer.save_to_preset` write it: config.json, model.weights.h5, tokenizer.json,
assets/tokenizer/vocabulary.txt (and metadata.json). It is loaded with KerasHub itself
and its weights are mapped by `variable.path`.

KerasHub's BertBackbone fixes what Google's config leaves open: the feed-forward
activation is the tanh-approximate gelu (tfbert's "gelu_new"), every LayerNorm uses
epsilon 1e-12, and weights are initialised with stddev 0.02.
"""

import json
import os

from tfbert.config import BertConfig
from tfbert.convert import mapping

BACKBONE_CLASS = "BertBackbone"


def _read_json(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None


def _one_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_preset(directory):
    """(BertBackbone, BertTokenizer) from a local KerasHub preset directory, in float32."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: not a directory")
    config_path = os.path.join(directory, "config.json")
    class_name = _read_json(config_path).get("class_name")
    if class_name != BACKBONE_CLASS:
        raise ValueError(f"{config_path}: holds a {class_name!r}, not a KerasHub {BACKBONE_CLASS}")
    tokenizer_path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(tokenizer_path):
        raise FileNotFoundError(f"{tokenizer_path}: no such file (the vocabulary is needed)")
    import keras_hub

    try:
        backbone = keras_hub.models.BertBackbone.from_preset(directory, dtype="float32")
        tokenizer = keras_hub.models.BertTokenizer.from_preset(directory)
    except (ValueError, OSError, KeyError) as e:
        raise ValueError(f"{directory}: KerasHub cannot load this preset ({_one_line(e)})") from None
    return backbone, tokenizer


def encoder_table(num_layers):
    """(source path, target path, transform) rows for BertBackbone's weights."""
    t = mapping.identity
    table = [
        ("token_embedding/embeddings", "embeddings/word_embeddings/embeddings", t),
        ("position_embedding/embeddings", "embeddings/position_embeddings/embeddings", t),
        ("segment_embedding/embeddings", "embeddings/type_embeddings/embeddings", t),
        ("embeddings_layer_norm/gamma", "embeddings/layer_norm/gamma", t),
        ("embeddings_layer_norm/beta", "embeddings/layer_norm/beta", t),
    ]
    for i in range(num_layers):
        src = f"transformer_layer_{i}/"
        dst = f"transformer_layer_{i}/"
        attention = f"{src}self_attention_layer/"
        for w in ("kernel", "bias"):
            table += [
                # EinsumDense q, k, v: kernels [H, N, D], biases [N, D] -> fused [H, 3*N*D].
                (tuple(f"{attention}{n}/{w}" for n in ("query", "key", "value")),
                 f"{dst}qkv/{w}", mapping.concat_flat_heads),
                (f"{src}feedforward_intermediate_dense/{w}", f"{dst}intermediate/{w}", t),
                (f"{src}feedforward_output_dense/{w}", f"{dst}output/{w}", t),
            ]
        table += [
            # Output projection: kernel [N, D, H] -> [N*D, H]; bias [H].
            (f"{attention}attention_output/kernel", f"{dst}attention_output/kernel",
             mapping.merge_heads_in),
            (f"{attention}attention_output/bias", f"{dst}attention_output/bias", t),
        ]
        for w in ("gamma", "beta"):
            table += [
                (f"{src}self_attention_layer_norm/{w}", f"{dst}attention_layer_norm/{w}", t),
                (f"{src}feedforward_layer_norm/{w}", f"{dst}output_layer_norm/{w}", t),
            ]
    table += [
        ("pooled_dense/kernel", "pooler/kernel", t),
        ("pooled_dense/bias", "pooler/bias", t),
    ]
    return table


def convert(input, output, lowercase=None):
    """Converts a KerasHub BertBackbone preset directory to a tfbert model directory.

    `lowercase` defaults to the preset tokenizer's own setting.
    """
    from tfbert.models import presets

    backbone, tokenizer = load_preset(input)
    vocab = list(tokenizer.get_vocabulary())
    if lowercase is None:
        lowercase = bool(tokenizer.lowercase)
    config = BertConfig(
        vocab_size=backbone.vocabulary_size,
        hidden_size=backbone.hidden_dim,
        num_hidden_layers=backbone.num_layers,
        num_attention_heads=backbone.num_heads,
        intermediate_size=backbone.intermediate_dim,
        hidden_act="gelu_new",  # keras_hub's BertBackbone: gelu_approximate
        hidden_dropout_prob=backbone.dropout,
        attention_probs_dropout_prob=backbone.dropout,  # one rate for both in KerasHub
        max_position_embeddings=backbone.max_sequence_length,
        type_vocab_size=backbone.num_segments,
        initializer_range=0.02,  # bert_kernel_initializer
        layer_norm_eps=1e-12,
        lowercase=lowercase,
    )
    if len(vocab) != config.vocab_size:
        raise ValueError(
            f"{input}: the tokenizer has {len(vocab)} tokens but the backbone's "
            f"vocabulary_size is {config.vocab_size}"
        )
    source = {v.path: v.numpy() for v in backbone.weights}
    encoder = presets.build_encoder(config)
    mapping.apply_table(encoder, source, encoder_table(config.num_hidden_layers),
                        source_desc=os.path.join(input, "model.weights.h5"))
    presets.save_preset(encoder, output, vocabulary=vocab, lowercase=lowercase)
    return encoder
