"""Configuration: frozen dataclasses, Google's bert_config.json, YAML files and --set overrides."""

import dataclasses
import json
from typing import Any

from tfbert.fileio import write_text_atomic  # noqa: F401  (re-exported)

# Google's BERT sizes (github.com/google-research/bert, "BERT-Tiny" .. "BERT-Large"):
# (layers, hidden size). Heads = hidden / 64, intermediate = 4 * hidden.
SIZES = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
    "large": (24, 1024),
}


def _check_keys(cls, data, source):
    """Raises ValueError naming unknown keys and the valid ones."""
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}"
        )


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The fields of google-research/bert's bert_config.json, plus `lowercase`.

    Read and written as that JSON file, so a config.json from Google's checkpoints loads
    unchanged and ours loads in Google's `modeling.BertConfig.from_json_file`.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    lowercase: bool = True

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not supported; "
                f"valid: {', '.join(sorted(ACTIVATIONS))}"
            )

    @classmethod
    def from_size(cls, name, **overrides):
        """A config for one of Google's sizes (see SIZES) with the uncased vocab size."""
        if name not in SIZES:
            raise ValueError(f"unknown model size {name!r}; valid: {', '.join(SIZES)}")
        layers, hidden = SIZES[name]
        fields = dict(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=hidden // 64,
            intermediate_size=4 * hidden,
        )
        fields.update(overrides)
        return cls(**fields)

    @classmethod
    def from_dict(cls, data, source="config"):
        _check_keys(cls, data, source)
        return cls(**data)

    @classmethod
    def from_json_file(cls, path):
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None
        # Google's bert_config.json has no `lowercase`; a few of its files carry extra
        # bookkeeping keys, which are dropped rather than rejected here.
        known = {f.name for f in dataclasses.fields(cls)}
        return cls.from_dict({k: v for k, v in data.items() if k in known}, source=path)

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json_file(self, path):
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def encoder_kwargs(self):
        """Constructor arguments of `tfbert.BertEncoder` for this config."""
        return dict(
            vocabulary_size=self.vocab_size,
            num_layers=self.num_hidden_layers,
            num_heads=self.num_attention_heads,
            hidden_dim=self.hidden_size,
            intermediate_dim=self.intermediate_size,
            activation=self.hidden_act,
            dropout=self.hidden_dropout_prob,
            attention_dropout=self.attention_probs_dropout_prob,
            max_sequence_length=self.max_position_embeddings,
            type_vocabulary_size=self.type_vocab_size,
            initializer_range=self.initializer_range,
            layer_norm_epsilon=self.layer_norm_eps,
        )

    @classmethod
    def from_encoder(cls, encoder, lowercase=True):
        return cls(
            vocab_size=encoder.vocabulary_size,
            hidden_size=encoder.hidden_dim,
            num_hidden_layers=encoder.num_layers,
            num_attention_heads=encoder.num_heads,
            intermediate_size=encoder.intermediate_dim,
            hidden_act=encoder.activation,
            hidden_dropout_prob=encoder.dropout,
            attention_probs_dropout_prob=encoder.attention_dropout,
            max_position_embeddings=encoder.max_sequence_length,
            type_vocab_size=encoder.type_vocabulary_size,
            initializer_range=encoder.initializer_range,
            layer_norm_eps=encoder.layer_norm_epsilon,
            lowercase=lowercase,
        )


# `hidden_act` names: "gelu" is the exact erf form (HF's meaning of the word);
# "gelu_new", "gelu_approximate" and "gelu_pytorch_tanh" are the tanh approximation.
# google-research/bert's modeling.py has computed "gelu" with the tanh form since
# February 2019, as do Model Garden and KerasHub, so their importers write "gelu_new".
ACTIVATIONS = {
    "gelu": ("gelu", False),
    "gelu_new": ("gelu", True),
    "gelu_approximate": ("gelu", True),
    "gelu_pytorch_tanh": ("gelu", True),
    "relu": ("relu", None),
    "tanh": ("tanh", None),
}


def _yaml_loader():
    """A SafeLoader that also reads `3e-5` as a float.

    YAML 1.1 (PyYAML) wants a dot in a float's mantissa, so learning rates written the
    usual way would silently load as strings.
    """
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def parse_override(text):
    """Parses `key.sub=value` (a --set flag) into (["key", "sub"], value).

    The value is read as YAML, so numbers, booleans and lists keep their types.
    """
    import yaml

    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected key=value")
    key, value = text.split("=", 1)
    if not key:
        raise ValueError(f"--set {text!r}: empty key")
    return key.split("."), yaml.load(value, Loader=_yaml_loader())


def apply_overrides(data: dict, overrides, open_keys=()) -> dict:
    """Applies --set overrides to a nested dict; a key that does not exist is an error.

    Mappings named in `open_keys` (dotted paths) are free-form: new keys may be added.
    """
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path):
            is_open = ".".join(path[:i]) in open_keys and isinstance(node, dict)
            if not is_open and (not isinstance(node, dict) or part not in node):
                where = ".".join(path[:i]) or "top level"
                valid = ", ".join(sorted(node)) if isinstance(node, dict) else "none"
                raise ValueError(f"--set {text}: no key {part!r} under {where}; valid: {valid}")
            if i == len(path) - 1:
                node[part] = value
            else:
                node = node[part]
    return data


def load_yaml(path) -> Any:
    import yaml

    with open(path, encoding="utf-8") as f:
        try:
            return yaml.load(f, Loader=_yaml_loader()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})".replace("\n", " ")) from None


# === Experiment configs (python -m tfbert.train) ===


@dataclasses.dataclass(frozen=True)
class ModelSection:
    # A size name (tiny .. large) or a tfbert model directory to start from.
    preset: str = "tiny"
    # float32, mixed_bfloat16 or mixed_float16 (fp16 adds dynamic loss scaling).
    dtype: str = "float32"
    # Encoder constructor overrides, e.g. {dropout: 0.0}.
    encoder_overrides: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DataSection:
    train_files: str = ""      # comma-separated globs
    eval_files: str = ""
    vocab_file: str = ""       # needed when model.preset is a size name
    lowercase: bool = True
    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    shuffle_buffer: int = 10000
    seed: int = 12345
    deterministic: bool = False
    # --- pretraining from raw text (tfbert.data.dynamic_masking) ---
    dynamic_masking: bool = False      # train_files are text (one sentence per line), masked anew each epoch
    nsp: bool = True                   # False: RoBERTa-style packing, no NSP loss
    whole_word_masking: bool = False
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    # --- fine-tuning data ---
    # tfrecord (pretraining), csv, tsv, jsonl, conll, squad, or tfds.
    format: str = "tfrecord"
    tfds_name: str = ""        # e.g. glue/sst2, imdb_reviews, conll2003, squad/v1.1
    tfds_data_dir: str = ""
    train_split: str = "train"
    eval_split: str = "validation"
    text_column: str = "text"
    text_b_column: str = ""    # set for sentence-pair tasks
    label_column: str = "label"
    label_names: tuple = ()    # empty: read from the data (sorted)
    regression: bool = False   # numeric labels, one output, MSE (as STS-B)
    # --- question answering ---
    doc_stride: int = 128
    max_query_length: int = 64
    max_answer_length: int = 30
    n_best_size: int = 20
    version_2_with_negative: bool = False
    null_score_diff_threshold: float = 0.0


@dataclasses.dataclass(frozen=True)
class TrainerSection:
    train_steps: int = 1000
    global_batch_size: int = 32
    learning_rate: float = 1e-4
    optimizer: str = "adamw"           # adamw | lamb
    weight_decay: float = 0.01
    warmup_steps: int = 0
    decay: str = "linear"              # linear | polynomial | constant
    end_learning_rate: float = 0.0
    decay_power: float = 1.0
    clip_norm: float = 1.0             # global-norm clipping; 0 turns it off
    # Layer-wise learning-rate decay for fine-tuning: transformer layer i of L learns at
    # learning_rate * layer_decay ** (L - i), the embeddings at ** (L + 1); 1.0 turns it off.
    layer_decay: float = 1.0
    # k > 1 applies the mean gradient of k batches at once (effective batch
    # k * global_batch_size); train_steps and the schedule still count batches.
    gradient_accumulation_steps: int = 1
    steps_per_loop: int = 10
    checkpoint_interval: int = 100
    max_checkpoints: int = 3
    eval_interval: int = 0             # 0: evaluate at the end only
    eval_steps: int = 20               # 0: one full pass over the evaluation data
    jit_compile: bool = True
    seed: int = 42                     # weight initialisation and dropout


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    task: str = "pretraining"
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    trainer: TrainerSection = dataclasses.field(default_factory=TrainerSection)

    @classmethod
    def from_dict(cls, data, source="config"):
        _check_keys(cls, data, source)
        data = dict(data)
        for name, section_cls in SECTIONS.items():
            if name in data:
                if not isinstance(data[name], dict):
                    raise ValueError(f"{source}: {name} must be a mapping")
                _check_keys(section_cls, data[name], f"{source}: {name}")
                data[name] = section_cls(**data[name])
        return cls(**data)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def load(cls, path=None, overrides=()):
        """Reads a YAML recipe (or the defaults) and applies --set overrides."""
        data = cls().to_dict()
        if path:
            loaded = load_yaml(path)
            probe = cls.from_dict(loaded, source=path)  # unknown keys fail naming the file
            data = _merge(data, loaded)
            del probe
        data = apply_overrides(data, overrides, open_keys=("model.encoder_overrides",))
        return cls.from_dict(data, source=path or "config")


SECTIONS = {"model": ModelSection, "data": DataSection, "trainer": TrainerSection}


def _merge(base, update):
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "encoder_overrides":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
