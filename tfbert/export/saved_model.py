"""export_saved_model: a SavedModel that takes raw strings, laid out for TF Serving.

  export_dir/
    <version>/                       an integer; TF Serving serves the highest
      saved_model.pb                 graph + signatures (see signatures.py)
      variables/                     the weights
      assets/vocab.txt               the vocabulary (the graph holds the compiled tokenizer)
      assets.extra/tf_serving_warmup_requests
      assets.extra/tfbert_export.json  task, signatures and limits, for clients
      fingerprint.pb

A version is written whole or not at all: everything is built in a dot-named temporary
sibling (TF Serving only looks at integer names) and renamed into place once complete
and checked; on any error the temporary is removed and no version appears.
"""

import json
import os
import shutil
import tempfile

import tensorflow as tf

from tfbert.export import op_allowlist, warmup
from tfbert.export import signatures as sig
from tfbert.fileio import make_readable
from tfbert.models import (
    BertClassifier,
    BertEncoder,
    BertPretrainer,
    BertQuestionAnswerer,
    BertTokenClassifier,
)

EXPORT_INFO_FILE = "tfbert_export.json"


def task_of(model):
    """The export task of a model: one of signatures.TASKS."""
    if isinstance(model, BertClassifier):
        return "regression" if model.num_classes == 1 else "classification"
    if isinstance(model, BertTokenClassifier):
        return "token_classification"
    if isinstance(model, BertQuestionAnswerer):
        return "question_answering"
    if isinstance(model, (BertEncoder, BertPretrainer)):
        return "encoder"
    raise TypeError(
        f"cannot export a {type(model).__name__}; expected a BertEncoder, BertPretrainer, "
        "BertClassifier, BertTokenClassifier or BertQuestionAnswerer"
    )


def existing_versions(export_dir):
    """The integer version directories under `export_dir`, ascending."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(name) for name in os.listdir(export_dir)
                  if name.isdigit() and os.path.isdir(os.path.join(export_dir, name)))


def next_version(export_dir):
    """One more than the highest existing version (1 for an empty export_dir)."""
    versions = existing_versions(export_dir)
    return versions[-1] + 1 if versions else 1


def export_saved_model(
    model,
    preprocessor,
    export_dir,
    version=None,
    label_names=None,
    *,
    pair=None,
    max_text_bytes=None,
    doc_stride=None,
    max_query_length=None,
    max_answer_length=None,
    null_score_diff_threshold=None,
    check_ops=True,
    progress=None,
):
    """Writes `model` with in-graph tokenization to `export_dir/<version>/`.

    Args:
      model: a BertClassifier (num_classes=1: regression), BertTokenClassifier,
        BertQuestionAnswerer, BertEncoder or BertPretrainer (its encoder is exported).
      preprocessor: the BertPreprocessor the model was trained with; its seq_length is
        the exported sequence length.
      export_dir: the TF Serving model base path; created if missing.
      version: the integer version to write; default the next free one (highest + 1).
        An existing version is never overwritten.
      label_names: class names (classification, token classification); default the
        model directory's (task.json's label_names, for a model loaded with
        `from_preset`), else "0", "1", ...
      pair: classification only: the model takes text pairs (`text`, `text_b`); default
        task.json's `inputs` for a model loaded with `from_preset`, else False.
      max_text_bytes: every input string is cut to this many bytes (at a character
        boundary) before tokenization; default 64 KiB, 16 KiB for question answering.
      doc_stride, max_query_length, max_answer_length, null_score_diff_threshold:
        question answering, as in google-research/bert's run_squad (a threshold makes
        empty answers possible, for SQuAD 2.0 models); see signatures.py. Each defaults
        to the model directory's task.json (a SQuAD 2.0 model's threshold, 0.0 when it
        names none), else run_squad's 128, 64, 30 and no threshold.
      check_ops: refuse to publish an export that uses an op TF Serving lacks.
      progress: called with a one-line message at each stage (the CLI prints them).

    Returns:
      The path of the version directory written.
    """
    say = progress or (lambda message: None)
    task = task_of(model)
    # What a model loaded from a directory already knows need not be given again.
    known = dict(getattr(model, "task_info", None) or {})
    if label_names is None:
        label_names = known.get("label_names")
    if pair is None:
        pair = "text_b" in known.get("inputs", ["text"])
    if doc_stride is None:
        doc_stride = known.get("doc_stride", 128)
    if max_query_length is None:
        max_query_length = known.get("max_query_length", 64)
    if max_answer_length is None:
        max_answer_length = known.get("max_answer_length", 30)
    if null_score_diff_threshold is None and known.get("version_2_with_negative"):
        null_score_diff_threshold = known.get("null_score_diff_threshold", 0.0)
    if isinstance(model, BertPretrainer):
        model = model.encoder
    export_dir = os.path.abspath(os.fspath(export_dir))
    if version is None:
        version = next_version(export_dir)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version!r}")
    target = os.path.join(export_dir, str(version))
    if os.path.exists(target):
        raise FileExistsError(
            f"{target} already exists; versions are never overwritten (pick another "
            f"--version, or leave it out for the next free one, {next_version(export_dir)})"
        )
    if task != "classification" and task != "regression" and pair:
        raise ValueError(f"pair=True applies to classification, not {task}")
    encoder = model if isinstance(model, BertEncoder) else model.encoder
    if preprocessor.seq_length > encoder.max_sequence_length:
        raise ValueError(
            f"seq_length {preprocessor.seq_length} exceeds the model's "
            f"max_sequence_length {encoder.max_sequence_length}")
    if preprocessor.vocabulary_size != encoder.vocabulary_size:
        raise ValueError(
            f"the preprocessor's vocabulary has {preprocessor.vocabulary_size} tokens but "
            f"the model's vocabulary_size is {encoder.vocabulary_size}")
    if max_text_bytes is None:
        max_text_bytes = sig.DEFAULT_MAX_TEXT_BYTES.get(task, sig.DEFAULT_MAX_TEXT_BYTES_OTHER)
    if max_text_bytes < 1:
        raise ValueError(f"max_text_bytes must be positive, got {max_text_bytes}")

    builder = sig.Builder(model, preprocessor, max_text_bytes)
    root = tf.__internal__.tracking.AutoTrackable()
    # What the SavedModel must hold besides the functions: the weights (as Keras's own
    # ExportArchive tracks them) and the vocabulary asset.
    root.variables = list(model.variables)
    root.trainable_variables = list(model.trainable_variables)
    root.vocabulary_file = preprocessor.vocabulary_file
    info = {"task": task, "seq_length": preprocessor.seq_length,
            "lowercase": preprocessor.lowercase, "max_text_bytes": max_text_bytes}
    if task in ("classification", "regression"):
        functions, label_names = sig.classification_functions(builder, label_names, pair)
        info.update(pair=bool(pair), label_names=label_names)
    elif task == "token_classification":
        functions, label_names = sig.token_classification_functions(builder, label_names)
        info.update(label_names=label_names, outside_label=sig.OUTSIDE_LABEL)
    elif task == "question_answering":
        functions = sig.question_answering_functions(
            builder, doc_stride=doc_stride, max_query_length=max_query_length,
            max_answer_length=max_answer_length,
            null_score_diff_threshold=null_score_diff_threshold)
        info.update(doc_stride=doc_stride, max_query_length=max_query_length,
                    max_answer_length=max_answer_length,
                    null_score_diff_threshold=null_score_diff_threshold)
    else:
        functions, root.__call__ = sig.encoder_functions(builder)
    for name, (function, _) in functions.items():
        setattr(root, f"_signature_{name}", function)
    info["signatures"] = {name: method for name, (_, method) in functions.items()}

    os.makedirs(export_dir, exist_ok=True)
    # Dot-named: TF Serving scans export_dir for integer names and must not see this.
    tmp = tempfile.mkdtemp(dir=export_dir, prefix=f".{version}.tmp-")
    try:
        say(f"tracing the {task} signatures ({', '.join(functions)})")
        concrete = {name: function.get_concrete_function()
                    for name, (function, _) in functions.items()}
        say("writing the SavedModel")
        tf.saved_model.save(root, tmp, signatures=concrete)
        set_method_names(tmp, {name: method for name, (_, method) in functions.items()})
        say("writing warmup requests")
        warmup.write_warmup_requests(
            tmp, warmup.warmup_logs(task, preprocessor=preprocessor, pair=pair))
        with open(os.path.join(tmp, warmup.WARMUP_DIR, EXPORT_INFO_FILE), "w",
                  encoding="utf-8") as f:
            json.dump(info, f, indent=2)
            f.write("\n")
        if check_ops:
            say("checking the graph's ops against core TensorFlow and TF Text")
            op_allowlist.check_ops(tmp)
        make_readable(tmp)
        if os.path.exists(target):
            raise FileExistsError(f"{target} appeared while exporting; not overwritten")
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"wrote {target}")
    return target


def set_method_names(export_path, methods):
    """Sets the SignatureDef method names TF Serving dispatches on (Classify, Regress).

    `tf.saved_model.save` writes every signature as tensorflow/serving/predict; TF
    Serving's Classify and Regress APIs accept only signatures whose method_name says
    so. TF2's loader reads signatures from the object graph and ignores method_name,
    so rewriting it changes nothing else; the fingerprint is recomputed after.
    """
    proto = op_allowlist.read_saved_model(export_path)
    changed = False
    for meta_graph in proto.meta_graphs:
        for name, method in methods.items():
            signature = meta_graph.signature_def[name]
            if signature.method_name != method:
                signature.method_name = method
                changed = True
    if not changed:
        return
    path = os.path.join(export_path, "saved_model.pb")
    with open(path + ".tmp", "wb") as f:
        f.write(proto.SerializeToString())
    os.replace(path + ".tmp", path)
    _rewrite_fingerprint(export_path)


def _rewrite_fingerprint(export_path):
    # fingerprint.pb hashes saved_model.pb; TF only reads it for metrics, but a stale one
    # would misreport the model's identity.
    path = os.path.join(export_path, "fingerprint.pb")
    if not os.path.exists(path):
        return
    try:
        from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting
    except ImportError:
        os.remove(path)
        return
    with open(path, "wb") as f:
        f.write(fingerprinting.CreateFingerprintDef(export_path))


def describe_signatures(export_path):
    """{signature: {"method": str, "inputs": {key: (dtype, shape)}, "outputs": {...}}}
    read from saved_model.pb (dtype as its name, e.g. "DT_STRING"; -1 = any size)."""
    from tensorflow.core.framework import types_pb2

    proto = op_allowlist.read_saved_model(export_path)
    out = {}
    for name, signature in proto.meta_graphs[0].signature_def.items():
        if name.startswith("__"):
            continue  # __saved_model_init_op

        def tensors(mapping):
            return {
                key: (types_pb2.DataType.Name(t.dtype),
                      tuple(d.size for d in t.tensor_shape.dim)
                      if not t.tensor_shape.unknown_rank else None)
                for key, t in mapping.items()
            }

        out[name] = {"method": signature.method_name, "inputs": tensors(signature.inputs),
                     "outputs": tensors(signature.outputs)}
    return out
