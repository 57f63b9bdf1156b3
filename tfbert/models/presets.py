"""Model directories ("presets"): config.json, vocab.txt, model.weights.h5 [, task.json].

config.json holds bert_config.json's fields plus `lowercase`; task.json (fine-tuned and
pretraining models only) holds {"task": name, "args": constructor arguments, ...}.
"""

import json
import os

from tfbert.config import SIZES, BertConfig
from tfbert.fileio import atomic_directory, make_readable, write_text_atomic
from tfbert.models.bert_classifier import BertClassifier
from tfbert.models.bert_encoder import BertEncoder
from tfbert.models.bert_pretrainer import BertPretrainer
from tfbert.models.bert_question_answerer import BertQuestionAnswerer
from tfbert.models.bert_token_classifier import BertTokenClassifier

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"
WEIGHTS_FILE = "model.weights.h5"
TASK_FILE = "task.json"

# The task models by the name task.json gives them.
TASKS = {
    "pretraining": BertPretrainer,
    "classification": BertClassifier,
    "token_classification": BertTokenClassifier,
    "question_answering": BertQuestionAnswerer,
}
TASK_NAMES = {cls: name for name, cls in TASKS.items()}
# What task.json may hold beside "task" and "args": the settings a model directory's
# readers (the trainer, the exporter, BertPreprocessor.from_preset) take from it.
TASK_INFO_KEYS = (
    "label_names", "seq_length", "regression", "inputs",  # classification, NER
    "doc_stride", "max_query_length", "max_answer_length",  # question answering
    "version_2_with_negative", "null_score_diff_threshold",
)


def _require(directory, filename):
    path = os.path.join(directory, filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory}: not a tfbert model directory (no {filename})")
    return path


def load_config(directory):
    return BertConfig.from_json_file(_require(directory, CONFIG_FILE))


def load_vocabulary(directory):
    with open(_require(directory, VOCAB_FILE), encoding="utf-8") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f]


def load_task_info(directory):
    path = os.path.join(directory, TASK_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        info = json.load(f)
    if info.get("task") not in TASKS:
        raise ValueError(
            f"{path}: unknown task {info.get('task')!r}; valid: {', '.join(TASKS)}"
        )
    return info


def build_encoder(config, dtype=None, **overrides):
    kwargs = config.encoder_kwargs()
    kwargs.update(overrides)
    return BertEncoder(dtype=dtype, **kwargs)


def load_encoder(preset, dtype=None, **overrides):
    if preset in SIZES:
        return build_encoder(BertConfig.from_size(preset), dtype=dtype, **overrides)
    if not os.path.isdir(preset):
        raise FileNotFoundError(
            f"{preset!r} is neither a model directory nor a size ({', '.join(SIZES)})"
        )
    if load_task_info(preset) is not None:
        encoder = load_task_model(preset, dtype=dtype, **overrides).encoder
        # A token classifier or question answerer froze it; a new task may train it.
        encoder.pooler.trainable = True
        return encoder
    encoder = build_encoder(load_config(preset), dtype=dtype, **overrides)
    encoder.load_weights(_require(preset, WEIGHTS_FILE))
    return encoder


def load_task_model(directory, dtype=None, **encoder_overrides):
    info = load_task_info(directory)
    if info is None:
        raise FileNotFoundError(f"{directory}: no {TASK_FILE}; this is an encoder directory")
    encoder = build_encoder(load_config(directory), dtype=dtype, **encoder_overrides)
    model = TASKS[info["task"]](encoder, **info.get("args", {}))
    model.load_weights(_require(directory, WEIGHTS_FILE))
    # Label names, sequence length, ...: what export_saved_model and a later
    # save_to_preset need again.
    model.task_info = {k: v for k, v in info.items() if k not in ("task", "args")}
    return model


def check_task_info(task_info):
    """Refuses task.json entries no reader knows (a typo would otherwise pass silently)."""
    unknown = sorted(set(task_info) - set(TASK_INFO_KEYS))
    if unknown:
        raise ValueError(
            f"unknown task.json entr{'y' if len(unknown) == 1 else 'ies'} "
            f"{', '.join(unknown)}; valid: {', '.join(TASK_INFO_KEYS)}"
        )


def save_preset(model, directory, vocabulary, lowercase=True, **task_info):
    """Writes a model directory atomically (a temporary sibling, then a rename).

    `model` is a BertEncoder or a task model; `vocabulary` a list of tokens or the path of
    a vocab.txt. An existing directory is replaced only once the new one is complete.
    """
    with atomic_directory(directory) as tmp:
        write_preset_files(model, tmp, vocabulary, lowercase=lowercase, **task_info)


def write_preset_files(model, directory, vocabulary, lowercase=True, **task_info):
    """Writes the model directory's files into `directory`, each one atomically.

    Other files there (a trainer's checkpoints/ and logs/) are left alone.
    """
    check_task_info(task_info)
    if isinstance(vocabulary, (str, os.PathLike)):
        with open(vocabulary, encoding="utf-8") as f:
            vocabulary = [line.rstrip("\n").rstrip("\r") for line in f]
    encoder = model if isinstance(model, BertEncoder) else model.encoder
    if len(vocabulary) != encoder.vocabulary_size:
        raise ValueError(
            f"vocabulary has {len(vocabulary)} tokens but the model's vocabulary_size is "
            f"{encoder.vocabulary_size}"
        )
    os.makedirs(directory, exist_ok=True)
    BertConfig.from_encoder(encoder, lowercase=lowercase).to_json_file(
        os.path.join(directory, CONFIG_FILE)
    )
    write_text_atomic(os.path.join(directory, VOCAB_FILE), "".join(t + "\n" for t in vocabulary))
    weights = os.path.join(directory, WEIGHTS_FILE)
    tmp_weights = os.path.join(directory, f".tmp-{os.getpid()}-{WEIGHTS_FILE}")
    model.save_weights(tmp_weights)
    make_readable(tmp_weights)
    os.replace(tmp_weights, weights)
    if not isinstance(model, BertEncoder):
        # A model loaded from a directory keeps its entries unless they are given anew.
        info = {"task": TASK_NAMES[type(model)], "args": dict(model.task_args),
                **dict(getattr(model, "task_info", None) or {}), **task_info}
        write_text_atomic(os.path.join(directory, TASK_FILE), json.dumps(info, indent=2) + "\n")
