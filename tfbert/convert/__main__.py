"""python -m tfbert.convert: import BERT checkpoints into tfbert model directories, or
export a tfbert model directory to Hugging Face's format.

  python -m tfbert.convert --from=hf --input=DIR --output=MODEL_DIR
  python -m tfbert.convert --from=google --input=DIR_OR_CKPT --output=MODEL_DIR
  python -m tfbert.convert --from=keras_hub --input=PRESET_DIR --output=MODEL_DIR
  python -m tfbert.convert --from=model_garden --input=DIR --output=MODEL_DIR
  python -m tfbert.convert --to=hf --input=MODEL_DIR --output=HF_DIR
"""

import argparse
import importlib
import inspect
import sys

# Each source format: the module holding `convert(input, output)`.
IMPORTERS = {
    "google": "tfbert.convert.google",
    "hf": "tfbert.convert.hf",
    "keras_hub": "tfbert.convert.keras_hub",
    "model_garden": "tfbert.convert.model_garden",
}
# Each target format: the module holding `export(model_dir, output)`.
EXPORTERS = {
    "hf": "tfbert.convert.hf",
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m tfbert.convert",
        description="Convert BERT checkpoints to and from tfbert model directories.",
    )
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="source", choices=sorted(IMPORTERS),
                           help="import a checkpoint of this format into a tfbert model directory")
    direction.add_argument("--to", dest="target", choices=sorted(EXPORTERS),
                           help="export a tfbert model directory to this format")
    parser.add_argument("--input", required=True, help="the checkpoint or model directory to read")
    parser.add_argument("--output", required=True, help="the directory to write (replaced atomically)")
    parser.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=None,
                        help="whether the vocabulary is uncased (default: read or inferred "
                             "from the source)")
    parser.add_argument("--init_missing", action="store_true",
                        help="hf: initialise a missing pooler or NSP head randomly instead of "
                             "failing (e.g. for BertForMaskedLM checkpoints)")
    return parser


def _options(function, args):
    """The optional flags given on the command line that `function` accepts."""
    accepted = inspect.signature(function).parameters
    given = {"lowercase": args.lowercase, "init_missing": args.init_missing or None}
    unsupported = [f"--{k}" for k, v in given.items() if v is not None and k not in accepted]
    if unsupported:
        raise ValueError(f"{', '.join(unsupported)} does not apply to this conversion")
    return {k: v for k, v in given.items() if v is not None}


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.source:
            module = importlib.import_module(IMPORTERS[args.source])
            module.convert(args.input, args.output, **_options(module.convert, args))
            print(f"wrote tfbert model directory {args.output} (from {args.source}: {args.input})")
        else:
            module = importlib.import_module(EXPORTERS[args.target])
            module.export(args.input, args.output, **_options(module.export, args))
            print(f"wrote {args.target} model {args.output} (from {args.input})")
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
