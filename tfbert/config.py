"""Configuration: frozen dataclasses, Google's bert_config.json, YAML files and --set overrides."""

import dataclasses
import json
import os
import tempfile
from typing import Any

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


def write_text_atomic(path, text):
    """Writes `text` to `path` through a temporary sibling and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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


# Google's names: "gelu" is the exact erf form in modeling.py; "gelu_new" (HF) and
# "gelu_approximate" are the tanh approximation.
ACTIVATIONS = {
    "gelu": ("gelu", False),
    "gelu_new": ("gelu", True),
    "gelu_approximate": ("gelu", True),
    "gelu_pytorch_tanh": ("gelu", True),
    "relu": ("relu", None),
    "tanh": ("tanh", None),
}


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
    return key.split("."), yaml.safe_load(value)


def apply_overrides(data: dict, overrides) -> dict:
    """Applies --set overrides to a nested dict; a key that does not exist is an error."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path):
            if not isinstance(node, dict) or part not in node:
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
            return yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})".replace("\n", " ")) from None
