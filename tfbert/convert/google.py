"""Imports google-research/bert TF 1 checkpoints into tfbert model directories.

  python -m tfbert.convert --from=google --input=uncased_L-12_H-768_A-12 --output=MODEL_DIR

The input is a directory holding `bert_model.ckpt.*` (or any one TF 1 checkpoint),
`bert_config.json` and `vocab.txt`, or the checkpoint prefix itself. The checkpoint is read
tensor by tensor (`tf.train.load_checkpoint`); no TF 1 graph is built. A checkpoint with
the pretraining heads (`cls/...`, as Google released them) becomes a BertPretrainer
directory (task.json "pretraining"); one without becomes an encoder directory.

Activation: Google's modeling.py has computed "gelu" with the tanh approximation since
the TF Hub release (google-research/bert commit bee6030, 2019-02-07; the first release
used the exact erf form), and Model Garden and KerasHub compute it the same way. tfbert
reads "gelu" as the exact erf form (Hugging Face's convention) and "gelu_new" as the tanh
form, so this importer writes "gelu_new" to reproduce Google's code numerically. The two
forms differ by at most 4.7e-4 per activation (at |x| = 2.7), which after a few layers
is well above a 1e-4 parity tolerance (tests/convert/test_google.py measures it).
"""

import collections.abc
import json
import os
import re

from tfbert.config import BertConfig
from tfbert.convert import mapping

CONFIG_FILE = "bert_config.json"
VOCAB_FILE = "vocab.txt"
DEFAULT_PREFIX = "bert_model.ckpt"

# Google's `hidden_act` names -> tfbert's (see the module docstring for "gelu").
GOOGLE_ACTIVATIONS = {"gelu": "gelu_new", "relu": "relu", "tanh": "tanh"}

# Checkpoint entries that are not model weights. Each is named here on purpose: anything
# else the table does not use is an error.
IGNORED = (
    r"^global_step$",
    r"/adam_[mv]$",  # google-research/bert's AdamWeightDecayOptimizer slots
    r"/Adam(_1)?$",  # tf.train.AdamOptimizer slots
    r"^beta[12]_power$",  # tf.train.AdamOptimizer accumulators
    r"(^|/)(current_loss_scale|good_steps)$",  # TF's dynamic loss scale (mixed precision)
)


def find_checkpoint(path):
    """Returns (directory, checkpoint prefix) for a directory or a checkpoint prefix."""
    if os.path.isdir(path):
        directory = path
        if os.path.isfile(os.path.join(path, DEFAULT_PREFIX + ".index")):
            return directory, os.path.join(path, DEFAULT_PREFIX)
        prefixes = sorted(f[: -len(".index")] for f in os.listdir(path) if f.endswith(".index"))
        if len(prefixes) > 1:
            import tensorflow as tf

            latest = tf.train.latest_checkpoint(path)  # the `checkpoint` file, if any
            if latest:
                return directory, latest
            raise FileNotFoundError(
                f"{path}: {len(prefixes)} checkpoints ({', '.join(prefixes)}); "
                "pass one prefix as --input"
            )
        if not prefixes:
            raise FileNotFoundError(f"{path}: no TF checkpoint (no *.index file)")
        return directory, os.path.join(path, prefixes[0])
    # A prefix, or one of its files (prefix.index, prefix.data-00000-of-00001).
    prefix = re.sub(r"\.(index|meta|data-\d+-of-\d+)$", "", path)
    if not os.path.isfile(prefix + ".index"):
        raise FileNotFoundError(f"{path}: neither a directory nor a TF checkpoint prefix")
    return os.path.dirname(os.path.abspath(prefix)), prefix


class CheckpointTensors(collections.abc.Mapping):
    """A TF checkpoint's tensors as a read-only mapping name -> numpy array.

    Each tensor is read when first asked for, so optimizer slots (twice the model's size
    in a training checkpoint) are never loaded.
    """

    def __init__(self, prefix):
        import tensorflow as tf

        try:
            self._reader = tf.train.load_checkpoint(prefix)
        except (tf.errors.OpError, ValueError) as e:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{prefix}: cannot read checkpoint ({message})") from None
        self._shapes = self._reader.get_variable_to_shape_map()

    def __getitem__(self, name):
        if name not in self._shapes:
            raise KeyError(name)
        return self._reader.get_tensor(name)

    def __contains__(self, name):
        return name in self._shapes

    def __iter__(self):
        return iter(self._shapes)

    def __len__(self):
        return len(self._shapes)


def read_google_config(path, lowercase=True):
    """A Google bert_config.json as a tfbert BertConfig with Google's numerics."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    return google_config_from_dict(data, source=path, lowercase=lowercase)


def google_config_from_dict(data, source, lowercase=True):
    """bert_config.json's fields as a tfbert BertConfig with Google's numerics.

    Keys tfbert does not know are dropped (as BertConfig.from_json_file does); a wrong
    shape they would imply still fails the converters' shape checks.
    """
    data = dict(data)
    act = data.get("hidden_act", "gelu")
    if act not in GOOGLE_ACTIVATIONS:
        raise ValueError(
            f"{source}: hidden_act {act!r} is not supported; valid: "
            f"{', '.join(sorted(GOOGLE_ACTIVATIONS))}"
        )
    data["hidden_act"] = GOOGLE_ACTIVATIONS[act]
    # modeling.layer_norm is tf.contrib.layers.layer_norm: epsilon 1e-12, not configurable.
    data["layer_norm_eps"] = 1e-12
    data["lowercase"] = bool(lowercase)
    known = set(BertConfig.__dataclass_fields__)
    try:
        return BertConfig.from_dict({k: v for k, v in data.items() if k in known}, source=source)
    except (TypeError, ValueError) as e:  # e.g. a missing field, heads not dividing H
        raise ValueError(f"{source}: {e}") from None


def read_vocab(path, vocab_size):
    """vocab.txt as a list of tokens; its length must be the config's vocab_size."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        tokens = [line.rstrip("\n").rstrip("\r") for line in f]
    if len(tokens) != vocab_size:
        raise ValueError(f"{path}: {len(tokens)} tokens but vocab_size is {vocab_size}")
    return tokens


def infer_lowercase(*paths):
    """True for "uncased" names, False for "cased" ones (Google's naming), else True."""
    for path in paths:
        name = os.path.basename(os.path.abspath(path)).lower()
        if "uncased" in name:
            return True
        if "cased" in name:
            return False
    return True


def encoder_table(num_layers, prefix="bert/"):
    """(source, target, transform) rows for Google's BertModel variables."""
    t = mapping.identity
    table = [
        (f"{prefix}embeddings/word_embeddings", "embeddings/word_embeddings/embeddings", t),
        (f"{prefix}embeddings/position_embeddings",
         "embeddings/position_embeddings/embeddings", t),
        (f"{prefix}embeddings/token_type_embeddings", "embeddings/type_embeddings/embeddings", t),
        (f"{prefix}embeddings/LayerNorm/gamma", "embeddings/layer_norm/gamma", t),
        (f"{prefix}embeddings/LayerNorm/beta", "embeddings/layer_norm/beta", t),
    ]
    for i in range(num_layers):
        src = f"{prefix}encoder/layer_{i}/"
        dst = f"transformer_layer_{i}/"
        for w in ("kernel", "bias"):
            # Google keeps q, k, v as three [H, H] denses; tfbert fuses them into [H, 3H]
            # in q, k, v order. Google's [H, H] attention output kernel is read as
            # [N, D, H] (dense_layer_3d_proj), the same head-major rows as tfbert's.
            table += [
                (tuple(f"{src}attention/self/{n}/{w}" for n in ("query", "key", "value")),
                 f"{dst}qkv/{w}", mapping.concat_last),
                (f"{src}attention/output/dense/{w}", f"{dst}attention_output/{w}", t),
                (f"{src}intermediate/dense/{w}", f"{dst}intermediate/{w}", t),
                (f"{src}output/dense/{w}", f"{dst}output/{w}", t),
            ]
        for w in ("gamma", "beta"):
            table += [
                (f"{src}attention/output/LayerNorm/{w}", f"{dst}attention_layer_norm/{w}", t),
                (f"{src}output/LayerNorm/{w}", f"{dst}output_layer_norm/{w}", t),
            ]
    table += [
        (f"{prefix}pooler/dense/kernel", "pooler/kernel", t),
        (f"{prefix}pooler/dense/bias", "pooler/bias", t),
    ]
    return table


def heads_table():
    """Rows for run_pretraining.py's heads (the MLM decoder is the word embeddings)."""
    t = mapping.identity
    return [
        ("cls/predictions/transform/dense/kernel", "mlm_head/transform/kernel", t),
        ("cls/predictions/transform/dense/bias", "mlm_head/transform/bias", t),
        ("cls/predictions/transform/LayerNorm/gamma", "mlm_head/layer_norm/gamma", t),
        ("cls/predictions/transform/LayerNorm/beta", "mlm_head/layer_norm/beta", t),
        ("cls/predictions/output_bias", "mlm_head/output_bias", t),
        # output_weights is [2, H] (matmul with transpose_b); a Dense kernel is [H, 2].
        ("cls/seq_relationship/output_weights", "nsp_head/kernel", mapping.transpose),
        ("cls/seq_relationship/output_bias", "nsp_head/bias", t),
    ]


def convert(input, output, lowercase=None):
    """Converts a Google BERT checkpoint directory (or prefix) to a tfbert model directory.

    `lowercase` (the tokenizer's lower-casing) defaults to what the directory name says:
    "uncased" -> True, "cased" -> False, neither -> True.
    """
    from tfbert.models import presets
    from tfbert.models.bert_pretrainer import BertPretrainer

    directory, prefix = find_checkpoint(input)
    if lowercase is None:
        lowercase = infer_lowercase(directory, prefix)
    config = read_google_config(os.path.join(directory, CONFIG_FILE), lowercase=lowercase)
    vocab = read_vocab(os.path.join(directory, VOCAB_FILE), config.vocab_size)
    source = CheckpointTensors(prefix)

    with_heads = any(name.startswith("cls/") for name in source)
    encoder = presets.build_encoder(config)
    model = BertPretrainer(encoder) if with_heads else encoder
    table = encoder_table(config.num_hidden_layers)
    if with_heads:
        table += heads_table()
    mapping.apply_table(model, source, table, ignore=IGNORED, source_desc=prefix)
    presets.save_preset(model, output, vocabulary=vocab, lowercase=config.lowercase)
    return model
