"""Hugging Face BERT <-> tfbert: import safetensors checkpoints, export model directories.

  python -m tfbert.convert --from=hf --input=HF_DIR --output=MODEL_DIR
  python -m tfbert.convert --to=hf --input=MODEL_DIR --output=HF_DIR

An HF directory holds config.json (BertModel, BertForPreTraining or BertForMaskedLM
fields), vocab.txt, tokenizer_config.json and model.safetensors (or a sharded
model.safetensors.index.json). Only safetensors are read: PyTorch's pytorch_model.bin /
*.pt / *.ckpt files are pickles, and unpickling a file runs whatever code it names.

One table serves both directions. Each row is (HF tensor names, tfbert weight path,
kind); `kind` names a pair of transforms, HF -> tfbert and back. HF's Linear stores its
weight [out, in] and Keras's Dense its kernel [in, out]; tfbert fuses HF's separate
query, key and value projections into one [H, 3H] `qkv` kernel (order q, k, v).
"""

import json
import os
import re
import sys

import numpy as np

from tfbert.config import BertConfig
from tfbert.fileio import atomic_directory
from tfbert.convert.mapping import ConversionError, apply_table, concat_last, identity, transpose

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
# Files that are pickles (or that only PyTorch/other frameworks read): refused, by name.
PICKLE_PATTERNS = (r"\.bin$", r"\.pt$", r"\.pth$", r"\.ckpt$", r"\.pkl$", r"\.pickle$")

# HF BertConfig fields that are also Google's bert_config.json fields (tfbert.BertConfig).
# A field missing from config.json takes HF's default, which is also BertConfig's.
CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
)

# Kinds of rows: (HF tensors -> tfbert value, tfbert value -> tuple of HF tensors).
TRANSFORMS = {
    "copy": (identity, lambda x: (x,)),
    # nn.Linear weight [out, in] <-> Dense kernel [in, out].
    "linear": (transpose, lambda x: (np.transpose(x),)),
    # Three [H, H] Linear weights (q, k, v) <-> one [H, 3H] kernel.
    "fused_linear": (
        lambda q, k, v: concat_last(q.T, k.T, v.T),
        lambda x: tuple(np.transpose(w) for w in np.split(x, 3, axis=-1)),
    ),
    # Three [H] biases <-> one [3H] bias.
    "fused_bias": (concat_last, lambda x: tuple(np.split(x, 3, axis=-1))),
}

# Buffers PyTorch may save beside the weights; they are recomputed, never weights.
BUFFERS = (r"^(bert\.)?embeddings\.position_ids$", r"^(bert\.)?embeddings\.token_type_ids$")

# The heads' tensors, to tell which heads a checkpoint has.
MLM_PREFIX = "cls.predictions."
NSP_PREFIX = "cls.seq_relationship."
TIED_DECODER = "cls.predictions.decoder.weight"
DECODER_BIAS = "cls.predictions.decoder.bias"
OUTPUT_BIAS = "cls.predictions.bias"


def encoder_table(num_layers, pooler=True):
    """Rows for BertModel's tensors (names without the `bert.` prefix)."""
    rows = [
        ("embeddings.word_embeddings.weight",
         "embeddings/word_embeddings/embeddings", "copy"),
        ("embeddings.position_embeddings.weight",
         "embeddings/position_embeddings/embeddings", "copy"),
        ("embeddings.token_type_embeddings.weight",
         "embeddings/type_embeddings/embeddings", "copy"),
        ("embeddings.LayerNorm.weight", "embeddings/layer_norm/gamma", "copy"),
        ("embeddings.LayerNorm.bias", "embeddings/layer_norm/beta", "copy"),
    ]
    for i in range(num_layers):
        hf, tf = f"encoder.layer.{i}.", f"transformer_layer_{i}/"
        qkv = tuple(f"{hf}attention.self.{n}" for n in ("query", "key", "value"))
        rows += [
            (tuple(n + ".weight" for n in qkv), tf + "qkv/kernel", "fused_linear"),
            (tuple(n + ".bias" for n in qkv), tf + "qkv/bias", "fused_bias"),
            (hf + "attention.output.dense.weight", tf + "attention_output/kernel", "linear"),
            (hf + "attention.output.dense.bias", tf + "attention_output/bias", "copy"),
            (hf + "attention.output.LayerNorm.weight", tf + "attention_layer_norm/gamma", "copy"),
            (hf + "attention.output.LayerNorm.bias", tf + "attention_layer_norm/beta", "copy"),
            (hf + "intermediate.dense.weight", tf + "intermediate/kernel", "linear"),
            (hf + "intermediate.dense.bias", tf + "intermediate/bias", "copy"),
            (hf + "output.dense.weight", tf + "output/kernel", "linear"),
            (hf + "output.dense.bias", tf + "output/bias", "copy"),
            (hf + "output.LayerNorm.weight", tf + "output_layer_norm/gamma", "copy"),
            (hf + "output.LayerNorm.bias", tf + "output_layer_norm/beta", "copy"),
        ]
    return rows + POOLER_TABLE if pooler else rows


POOLER_TABLE = [
    ("pooler.dense.weight", "pooler/kernel", "linear"),
    ("pooler.dense.bias", "pooler/bias", "copy"),
]

# BertForPreTraining's heads (names are absolute: HF puts no `bert.` before `cls.`). The
# decoder weight is tied to the word embeddings, so it has no row of its own.
MLM_TABLE = [
    ("cls.predictions.transform.dense.weight", "mlm_head/transform/kernel", "linear"),
    ("cls.predictions.transform.dense.bias", "mlm_head/transform/bias", "copy"),
    ("cls.predictions.transform.LayerNorm.weight", "mlm_head/layer_norm/gamma", "copy"),
    ("cls.predictions.transform.LayerNorm.bias", "mlm_head/layer_norm/beta", "copy"),
    (OUTPUT_BIAS, "mlm_head/output_bias", "copy"),
]
NSP_TABLE = [
    ("cls.seq_relationship.weight", "nsp_head/kernel", "linear"),
    ("cls.seq_relationship.bias", "nsp_head/bias", "copy"),
]


# ----------------------------------------------------------------------------- reading


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_config(input_dir, lowercase):
    """tfbert.BertConfig from HF's config.json; non-BERT architectures are refused."""
    path = os.path.join(input_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{input_dir}: no {CONFIG_FILE} (not a Hugging Face model directory)"
        )
    data = _read_json(path)
    model_type = data.get("model_type")
    architectures = data.get("architectures") or []
    if model_type is not None and model_type != "bert":
        raise ValueError(
            f"{path}: model_type {model_type!r} is not BERT; tfbert imports model_type 'bert' only"
        )
    if model_type is None and any(not a.startswith("Bert") for a in architectures):
        raise ValueError(
            f"{path}: architectures {architectures} are not BERT; tfbert imports BERT only"
        )
    position_type = data.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ValueError(
            f"{path}: position_embedding_type {position_type!r} is not supported "
            "(tfbert has BERT's absolute position embeddings only)"
        )
    # A decoder BERT has the same tensors but causal attention: it would convert silently wrong.
    for flag in ("is_decoder", "add_cross_attention"):
        if data.get(flag):
            raise ValueError(f"{path}: {flag} is true; tfbert's BERT is an encoder only")
    try:
        return BertConfig(**{k: data[k] for k in CONFIG_FIELDS if k in data}, lowercase=lowercase)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def read_lowercase(input_dir):
    """Whether the tokenizer lowercases: tokenizer_config.json's do_lower_case, else
    tokenizer.json's normalizer, else the model's name ("cased" but not "uncased" means
    False), else True as in BERT's uncased default."""
    path = os.path.join(input_dir, TOKENIZER_CONFIG_FILE)
    if os.path.isfile(path):
        value = _read_json(path).get("do_lower_case")
        if value is not None:
            return bool(value)
    path = os.path.join(input_dir, TOKENIZER_FILE)
    if os.path.isfile(path):
        normalizer = _read_json(path).get("normalizer") or {}
        if normalizer.get("type") == "BertNormalizer" and "lowercase" in normalizer:
            return bool(normalizer["lowercase"])
    names = [os.path.basename(os.path.normpath(input_dir))]
    config_path = os.path.join(input_dir, CONFIG_FILE)
    if os.path.isfile(config_path):
        names.append(str(_read_json(config_path).get("_name_or_path", "")))
    for name in names:
        name = name.lower()
        if "uncased" in name:
            return True
        if "cased" in name:
            return False
    return True


def read_vocabulary(input_dir):
    """vocab.txt's tokens, or, without one, the WordPiece vocabulary of tokenizer.json."""
    path = os.path.join(input_dir, VOCAB_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n").rstrip("\r") for line in f], path
    path = os.path.join(input_dir, TOKENIZER_FILE)
    if os.path.isfile(path):
        model = _read_json(path).get("model") or {}
        if model.get("type") == "WordPiece" and isinstance(model.get("vocab"), dict):
            by_id = sorted(model["vocab"].items(), key=lambda item: item[1])
            if [i for _, i in by_id] != list(range(len(by_id))):
                raise ValueError(f"{path}: WordPiece vocabulary ids are not 0..N-1")
            return [token for token, _ in by_id], path
        raise ValueError(f"{path}: not a WordPiece tokenizer, and {input_dir} has no {VOCAB_FILE}")
    raise FileNotFoundError(f"{input_dir}: no {VOCAB_FILE} (nor {TOKENIZER_FILE})")


def _load_safetensors_file(path):
    # ml_dtypes (a TensorFlow dependency) registers bfloat16 with numpy; without it
    # safetensors.numpy cannot read the bfloat16 checkpoints many HF models ship.
    import ml_dtypes
    import safetensors.numpy

    try:
        tensors = safetensors.numpy.load_file(path)
    except Exception as e:  # safetensors raises its own SafetensorError
        reason = str(e).replace("\n", " ")
        raise ValueError(f"{path}: not a readable safetensors file ({reason})") from None
    # Widen bfloat16 to float32 exactly, so transforms and checks see plain numpy floats.
    return {
        name: value.astype("float32") if value.dtype == ml_dtypes.bfloat16 else value
        for name, value in tensors.items()
    }


def find_weights(input_dir):
    """(safetensors files, the file to name in errors) of an HF directory.

    Refuses pickles: a directory with only pytorch_model.bin (or *.pt, *.ckpt, ...) is
    an error saying how to make a model.safetensors; nothing in it is opened.
    """
    single = os.path.join(input_dir, WEIGHTS_FILE)
    index = os.path.join(input_dir, WEIGHTS_INDEX_FILE)
    if os.path.isfile(single):
        return [single], single
    if os.path.isfile(index):
        weight_map = _read_json(index).get("weight_map") or {}
        shards = sorted(set(weight_map.values()))
        if not shards:
            raise ValueError(f"{index}: no weight_map")
        return [os.path.join(input_dir, s) for s in shards], index
    present = sorted(os.listdir(input_dir))
    pickles = [n for n in present if any(re.search(p, n) for p in PICKLE_PATTERNS)]
    if pickles:
        raise ValueError(
            f"{input_dir}: has {', '.join(pickles)} but no {WEIGHTS_FILE}; tfbert refuses "
            "pickle checkpoints (loading one runs arbitrary code). Convert it where you trust "
            "the file: transformers' from_pretrained(dir) then save_pretrained(dir), with the "
            "class config.json's architectures names, writes model.safetensors"
        )
    raise FileNotFoundError(f"{input_dir}: no {WEIGHTS_FILE} (nor {WEIGHTS_INDEX_FILE})")


def read_tensors(input_dir):
    """(name -> numpy array, the file to name in errors) from model.safetensors or shards."""
    files, desc = find_weights(input_dir)
    tensors = {}
    for path in files:
        tensors.update(_load_safetensors_file(path))
    return tensors, desc


# ----------------------------------------------------------------------------- import


def _resolver(tensors, prefix):
    """Maps a canonical HF name to the name in `tensors`: adds `prefix` to encoder names
    and accepts the legacy `LayerNorm.gamma` / `LayerNorm.beta` of TF-converted files."""

    def resolve(name):
        full = name if name.startswith("cls.") else prefix + name
        candidates = [full]
        if full.endswith("LayerNorm.weight"):
            candidates.append(full[: -len("weight")] + "gamma")
        if full.endswith("LayerNorm.bias"):
            candidates.append(full[: -len("bias")] + "beta")
        if full == OUTPUT_BIAS:  # some files keep only the decoder's (tied) copy
            candidates.append(DECODER_BIAS)
        return next((c for c in candidates if c in tensors), full)

    return resolve


def _keep_initial(model, rows):
    """Rows for tfbert weights with no source: they keep their random initialisation."""
    weights = {w.path: w for w in model.weights}
    return [((), path, (lambda v=weights[path]: np.asarray(v.numpy()))) for _, path, _ in rows]


def load(input_dir, init_missing=False):
    """Reads a Hugging Face BERT directory; returns (model, vocabulary, lowercase).

    `model` is a tfbert.BertPretrainer when the checkpoint has BERT's pretraining heads
    (`cls.predictions.*`, `cls.seq_relationship.*`), else a tfbert.BertEncoder, with
    dropout rates as config.json gives them. A checkpoint without the pooler
    (BertForMaskedLM saves none) or with only one of the two heads is an error, unless
    `init_missing` is true: then those weights keep their random initialisation and a
    line on stderr names them.
    """
    from tfbert.models.bert_encoder import BertEncoder
    from tfbert.models.bert_pretrainer import BertPretrainer

    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f"{input_dir}: no such directory")
    lowercase = read_lowercase(input_dir)
    config = read_config(input_dir, lowercase)
    find_weights(input_dir)  # refuse a pickle-only directory before anything else
    vocabulary, vocab_path = read_vocabulary(input_dir)
    if len(vocabulary) != config.vocab_size:
        raise ValueError(
            f"{vocab_path}: {len(vocabulary)} tokens but {CONFIG_FILE} has vocab_size "
            f"{config.vocab_size}"
        )
    tensors, desc = read_tensors(input_dir)

    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in tensors else ""
    resolve = _resolver(tensors, prefix)
    has_mlm = any(n.startswith(MLM_PREFIX) for n in tensors)
    has_nsp = any(n.startswith(NSP_PREFIX) for n in tensors)
    has_pooler = any(resolve(n) in tensors for n, _, _ in POOLER_TABLE)

    encoder = BertEncoder(**config.encoder_kwargs())
    model = BertPretrainer(encoder) if (has_mlm or has_nsp) else encoder

    # (rows, present in the checkpoint, what they are) for each part of the model.
    parts = [
        (encoder_table(config.num_hidden_layers, pooler=False), True, "the encoder"),
        (POOLER_TABLE, has_pooler, f"the pooler ({prefix}pooler.dense.*)"),
    ]
    if model is not encoder:
        parts += [
            (MLM_TABLE, has_mlm, f"the masked-LM head ({MLM_PREFIX}*)"),
            (NSP_TABLE, has_nsp, f"the next-sentence head ({NSP_PREFIX}*)"),
        ]
    missing = [what for _, present, what in parts if not present]
    if missing and not init_missing:
        raise ConversionError(
            f"{desc}: no tensors for {' or '.join(missing)}; pass init_missing=True to "
            "tfbert.convert.hf.load/convert to start them from random weights"
        )
    for what in missing:
        print(f"warning: {desc}: no tensors for {what}; it keeps its random initialisation",
              file=sys.stderr)

    table = []
    for rows, present, _ in parts:
        if not present:
            table += _keep_initial(model, rows)
            continue
        for names, path, kind in rows:
            names = (names,) if isinstance(names, str) else names
            table.append((tuple(resolve(n) for n in names), path, TRANSFORMS[kind][0]))
    ignore = list(BUFFERS)
    if has_mlm:
        ignore += _check_tied_decoder(tensors, resolve, desc)
    apply_table(model, tensors, table, ignore=ignore, source_desc=desc)
    return model, vocabulary, lowercase


def _check_tied_decoder(tensors, resolve, desc):
    """Checks that the MLM decoder's weight and bias, where a file holds them, are the
    word embeddings and the output bias (HF ties them; tfbert has one copy of each).
    Returns ignore patterns for those duplicates."""
    ignore = []
    words = tensors.get(resolve("embeddings.word_embeddings.weight"))
    if TIED_DECODER in tensors:
        if words is None or not np.array_equal(tensors[TIED_DECODER], words):
            raise ConversionError(
                f"{desc}: {TIED_DECODER} differs from the word embeddings; tfbert ties the "
                "masked-LM decoder to them and cannot import an untied one"
            )
        ignore.append("^" + re.escape(TIED_DECODER) + "$")
    if DECODER_BIAS in tensors and OUTPUT_BIAS in tensors:
        if not np.array_equal(tensors[DECODER_BIAS], tensors[OUTPUT_BIAS]):
            raise ConversionError(
                f"{desc}: {DECODER_BIAS} differs from {OUTPUT_BIAS}; HF ties them and "
                "tfbert has one output bias"
            )
        ignore.append("^" + re.escape(DECODER_BIAS) + "$")
    return ignore


def convert(input_dir, output_dir, init_missing=False, lowercase=None):
    """Imports a Hugging Face BERT directory into a tfbert model directory (atomically).

    `lowercase` overrides what the tokenizer files say (None: read them).
    """
    from tfbert.models import presets

    model, vocabulary, read_lowercase = load(input_dir, init_missing=init_missing)
    lowercase = read_lowercase if lowercase is None else lowercase
    presets.save_preset(model, output_dir, vocabulary=vocabulary, lowercase=lowercase)
    return model


# ----------------------------------------------------------------------------- export


def hf_tensors(model):
    """HF state-dict tensors (name -> numpy array) of a tfbert BertEncoder or BertPretrainer.

    A BertEncoder gives BertModel's names; a BertPretrainer gives BertForPreTraining's
    (`bert.` before the encoder's names, `cls.*` heads). The tied decoder weight and
    bias are left out, as transformers' own save_pretrained does; the loader re-ties them.
    """
    from tfbert.models.bert_encoder import BertEncoder
    from tfbert.models.bert_pretrainer import BertPretrainer

    if isinstance(model, BertEncoder):
        encoder, prefix, rows = model, "", []
    elif isinstance(model, BertPretrainer):
        encoder, prefix, rows = model.encoder, "bert.", MLM_TABLE + NSP_TABLE
    else:
        raise ValueError(f"cannot export a {type(model).__name__} to Hugging Face BERT")
    rows = [
        (tuple(prefix + n for n in ((names,) if isinstance(names, str) else names)), path, kind)
        for names, path, kind in encoder_table(encoder.num_layers)
    ] + [((names,), path, kind) for names, path, kind in rows]
    weights = {w.path: w for w in model.weights}
    tensors = {}
    for names, path, kind in rows:
        values = TRANSFORMS[kind][1](np.asarray(weights[path].numpy()))
        for name, value in zip(names, values):
            tensors[name] = np.ascontiguousarray(value)
    return tensors


def hf_config(encoder, architecture, pad_token_id=0):
    """HF config.json contents for a tfbert encoder."""
    config = BertConfig.from_encoder(encoder).to_dict()
    config.pop("lowercase")
    return {
        "architectures": [architecture],
        "model_type": "bert",
        **config,
        "pad_token_id": pad_token_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }


def tokenizer_config(lowercase, model_max_length):
    return {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": lowercase,
        "do_basic_tokenize": True,
        "tokenize_chinese_chars": True,
        "strip_accents": None,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "model_max_length": model_max_length,
    }


def export(model_dir, output_dir):
    """Writes a tfbert model directory (an encoder or a pretraining model) as a Hugging
    Face BERT directory: config.json, model.safetensors, vocab.txt, tokenizer_config.json.

    The output directory is written beside its final place and renamed into it, so an
    existing one is replaced only once the new one is complete.
    """
    import safetensors.numpy

    from tfbert.models import presets

    config = presets.load_config(model_dir)
    info = presets.load_task_info(model_dir)
    if info is None:
        model = presets.load_encoder(model_dir)
        encoder, architecture = model, "BertModel"
    elif info["task"] == "pretraining":
        model = presets.load_task_model(model_dir)
        encoder, architecture = model.encoder, "BertForPreTraining"
    else:
        raise ValueError(
            f"{os.path.join(model_dir, presets.TASK_FILE)}: task {info['task']!r} has no Hugging "
            "Face export; export an encoder or a pretraining model directory"
        )
    vocabulary = presets.load_vocabulary(model_dir)
    tensors = hf_tensors(model)
    pad_token_id = vocabulary.index("[PAD]") if "[PAD]" in vocabulary else 0

    with atomic_directory(output_dir) as tmp:
        def write_json(name, data):
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, sort_keys=True)
                f.write("\n")

        write_json(CONFIG_FILE, hf_config(encoder, architecture, pad_token_id))
        write_json(TOKENIZER_CONFIG_FILE,
                   tokenizer_config(config.lowercase, encoder.max_sequence_length))
        with open(os.path.join(tmp, VOCAB_FILE), "w", encoding="utf-8") as f:
            f.write("".join(t + "\n" for t in vocabulary))
        # The metadata save_pretrained writes; transformers 4.x checks "format" on load.
        safetensors.numpy.save_file(
            tensors, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt"}
        )
