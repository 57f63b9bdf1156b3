"""python -m tfbert.export: a tfbert model directory -> a TF Serving SavedModel version.

  python -m tfbert.export --model_dir=MODEL_DIR --export_dir=BASE_PATH [--version=N]
      [--seq_length=N]

The model directory's task.json says which task to export (classification,
token_classification, question_answering; none or pretraining: the encoder) and holds
its label names, sequence length and question-answering settings. The export goes to
BASE_PATH/<version>/ (the next free integer unless --version is given), written
atomically; an existing version is never overwritten.
"""

import argparse
import os
import sys


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m tfbert.export",
        description="Export a tfbert model directory as a SavedModel that takes raw strings "
                    "(in-graph tokenization), versioned for TF Serving.",
    )
    parser.add_argument("--model_dir", required=True,
                        help="tfbert model directory (config.json, vocab.txt, "
                             "model.weights.h5 [, task.json])")
    parser.add_argument("--export_dir", required=True,
                        help="TF Serving model base path; the export goes to <export_dir>/<version>")
    parser.add_argument("--version", type=int, default=None,
                        help="version number to write (default: highest existing + 1)")
    parser.add_argument("--seq_length", type=int, default=None,
                        help="sequence length of the exported model (default: task.json's "
                             "seq_length, else 128)")
    parser.add_argument("--max_text_bytes", type=int, default=None,
                        help="cut every input string to this many bytes before tokenizing "
                             "(default 65536; 16384 for question answering)")
    parser.add_argument("--doc_stride", type=int, default=None,
                        help="question answering: window stride in pieces (default: "
                             "task.json's, else 128)")
    parser.add_argument("--max_query_length", type=int, default=None,
                        help="question answering: question pieces kept (default: "
                             "task.json's, else 64)")
    parser.add_argument("--max_answer_length", type=int, default=None,
                        help="question answering: longest answer in pieces (default: "
                             "task.json's, else 30)")
    parser.add_argument("--no_check_ops", action="store_true",
                        help="skip the check that every op is a core TensorFlow or TF Text op")
    return parser


def _progress(message):
    print(f"[tfbert.export] {message}", file=sys.stderr, flush=True)


def run(args):
    # Imported here so that --help and flag errors answer at once.
    from tfbert.export.saved_model import export_saved_model, next_version
    from tfbert.models import presets
    from tfbert.text.bert_preprocessor import BertPreprocessor

    model_dir = args.model_dir
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"--model_dir {model_dir}: no such directory")
    if args.version is not None:
        # Refuse before the slow part (loading and tracing).
        target = os.path.join(args.export_dir, str(args.version))
        if os.path.exists(target):
            raise FileExistsError(
                f"{target} already exists; versions are never overwritten (next free: "
                f"{next_version(args.export_dir)})")
    info = presets.load_task_info(model_dir) or {}
    task = info.get("task")
    seq_length = args.seq_length or info.get("seq_length") or 128
    _progress(f"loading {model_dir} ({task or 'encoder'}, seq_length {seq_length})")
    if task in (None, "pretraining"):
        model = presets.load_encoder(model_dir)
    else:
        model = presets.load_task_model(model_dir)
    preprocessor = BertPreprocessor.from_preset(model_dir, seq_length=seq_length)
    # Label names, text pairs and question-answering settings come with the loaded model
    # (its task.json); flags given here override them.
    options = {}
    if task == "question_answering":
        options = {name: getattr(args, name) for name in
                   ("doc_stride", "max_query_length", "max_answer_length")}
    path = export_saved_model(
        model, preprocessor, args.export_dir, version=args.version,
        max_text_bytes=args.max_text_bytes,
        check_ops=not args.no_check_ops, progress=_progress, **options,
    )
    return path


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        path = run(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, OSError,
            RuntimeError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1
    print(f"exported {args.model_dir} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
