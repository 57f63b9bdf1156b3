"""Extractive QA answers from start/end logits, and SQuAD's official EM and F1.

`postprocess` is google-research/bert's write_predictions: per question, the n_best_size
best start and end positions of every window give candidate spans; a span must lie in the
window's context, be at most max_answer_length pieces long, and start at a piece for which
this window has the most context (so an answer cut by a window edge is read from a window
that holds it whole); the highest start + end logit wins. For SQuAD 2.0 the null answer
scores start + end logit of [CLS] in the window where that is lowest, and "" is predicted
when it beats the best span by more than null_score_diff_threshold. The answer text is the
context's own characters from the first piece's start to the last piece's end (see
tfbert/data/squad.py), so casing, accents and punctuation come back as written.

`evaluate` scores with the evaluation scripts shipped in tf-models-official
(official.nlp.tools.squad_evaluate_v1_1 / _v2_0), not a re-written metric.
"""

import collections
import math

import numpy as np

from tfbert import features
from tfbert.data.squad import squad_articles

# Google's placeholder when not one span of a question is valid (only possible in
# degenerate windows); it scores as a wrong answer, like Google's "empty".
NO_VALID_SPAN = ""


def max_context_mask(doc_starts, doc_lengths):
    """run_squad's _check_is_max_context for all windows of one example.

    A piece seen by several windows belongs to the one where min(left context, right
    context) + 0.01 * window length is highest (the first on a tie). Returns a list of
    bool arrays, one per window, over its context pieces.
    """
    total = max((int(s) + int(n) for s, n in zip(doc_starts, doc_lengths)), default=0)
    best_score = np.full(total, -np.inf)
    best_window = np.full(total, -1)
    for w, (start, length) in enumerate(zip(doc_starts, doc_lengths)):
        position = np.arange(start, start + length)
        score = (np.minimum(position - start, start + length - 1 - position)
                 + 0.01 * length)
        better = score > best_score[position]
        best_score[position[better]] = score[better]
        best_window[position[better]] = w
    return [best_window[s:s + n] == w for w, (s, n) in enumerate(zip(doc_starts, doc_lengths))]


def _best_indexes(logits, n_best_size):
    # A stable sort keeps Google's order among equal logits (lower position first).
    return np.argsort(-logits, kind="stable")[:n_best_size]


def _softmax(scores):
    if not scores:
        return []
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def postprocess(examples, squad_features, start_logits, end_logits, n_best_size=20,
                max_answer_length=30, version_2_with_negative=False,
                null_score_diff_threshold=0.0):
    """Answers from the windows' logits.

    Args:
      examples: the SquadExamples `squad_features` were made from.
      squad_features: their SquadFeatures.
      start_logits, end_logits: float arrays [N, S], one row per window, in order.

    Returns (predictions, nbest, null_odds): {qas_id: answer text}; {qas_id: [{text,
    probability, start_logit, end_logit}]} best first; and for SQuAD 2.0 {qas_id: null
    score minus best span score} (run_squad's null_odds.json; empty for v1.1).
    """
    start_logits = np.asarray(start_logits, np.float64)
    end_logits = np.asarray(end_logits, np.float64)
    if start_logits.shape[0] != len(squad_features) or end_logits.shape != start_logits.shape:
        raise ValueError(
            f"logits {start_logits.shape} / {end_logits.shape} do not match the "
            f"{len(squad_features)} windows"
        )
    windows_of = collections.defaultdict(list)
    for n, e in enumerate(squad_features.example_index):
        windows_of[int(e)].append(n)

    predictions, nbest_json, null_odds = {}, {}, {}
    for e, example in enumerate(examples):
        windows = windows_of[e]
        max_context = max_context_mask(squad_features.doc_start[windows],
                                       squad_features.doc_length[windows])
        prelim = []  # (score, start logit, end logit, window, start, end) in piece positions
        null = None  # (score, start logit, end logit) of the window with the lowest null
        for w, n in enumerate(windows):
            starts_row, ends_row = start_logits[n], end_logits[n]
            if version_2_with_negative:
                score = starts_row[0] + ends_row[0]
                if null is None or score < null[0]:
                    null = (score, starts_row[0], ends_row[0])
            offset = int(squad_features.doc_offset[n])
            length = int(squad_features.doc_length[n])
            # K=n_best_size candidates for each end.
            starts = _best_indexes(starts_row, n_best_size)                     # [K]
            ends = _best_indexes(ends_row, n_best_size)                         # [K]
            s, t = np.meshgrid(starts, ends, indexing="ij")                     # [K, K]
            in_doc = ((s >= offset) & (s < offset + length)
                      & (t >= offset) & (t < offset + length))
            valid = in_doc & (t >= s) & (t - s + 1 <= max_answer_length)
            valid[valid] &= max_context[w][s[valid] - offset]
            for i, j in zip(*np.nonzero(valid)):
                a, b = int(s[i, j]), int(t[i, j])
                prelim.append((starts_row[a] + ends_row[b], starts_row[a], ends_row[b], n, a, b))
        if version_2_with_negative:
            prelim.append((null[0], null[1], null[2], None, 0, 0))
        # Python's sort is stable: equal scores keep window, start, end order, as Google's.
        prelim.sort(key=lambda p: p[0], reverse=True)

        nbest, seen = [], set()
        for score, start_logit, end_logit, n, a, b in prelim:
            if len(nbest) >= n_best_size:
                break
            if n is None:
                text = ""
            else:
                e_start = int(squad_features.doc_start[n]) + a - int(squad_features.doc_offset[n])
                e_end = int(squad_features.doc_start[n]) + b - int(squad_features.doc_offset[n])
                text = example.context[squad_features.char_starts[e][e_start]:
                                       squad_features.char_ends[e][e_end]]
            if text in seen:
                continue
            seen.add(text)
            nbest.append({"text": text, "start_logit": float(start_logit),
                          "end_logit": float(end_logit)})
        if version_2_with_negative and "" not in seen:
            nbest.append({"text": "", "start_logit": float(null[1]), "end_logit": float(null[2])})
        if not nbest:
            nbest.append({"text": NO_VALID_SPAN, "start_logit": 0.0, "end_logit": 0.0})
        for entry, p in zip(nbest, _softmax([x["start_logit"] + x["end_logit"] for x in nbest])):
            entry["probability"] = p
        nbest_json[example.qas_id] = nbest

        if not version_2_with_negative:
            predictions[example.qas_id] = nbest[0]["text"]
            continue
        best_span = next((x for x in nbest if x["text"]), None)
        if best_span is None:
            # Not one valid span: the null answer wins whatever the threshold.
            null_odds[example.qas_id] = math.inf
            predictions[example.qas_id] = ""
            continue
        diff = float(null[0] - best_span["start_logit"] - best_span["end_logit"])
        null_odds[example.qas_id] = diff
        predictions[example.qas_id] = "" if diff > null_score_diff_threshold else best_span["text"]
    return predictions, nbest_json, null_odds


def evaluate(examples, predictions, null_odds=None, version_2_with_negative=False):
    """SQuAD EM and F1 (percent) by tf-models-official's copy of the official scripts.

    v1.1: {exact_match, f1}. v2.0: also has_answer_* / no_answer_* (the HasAns / NoAns
    splits) with their counts, and with `null_odds` the script's best_exact / best_f1 and
    the null-odds thresholds that reach them (to tune null_score_diff_threshold).
    exact_match and f1 score the predictions as given (already thresholded).
    """
    articles = squad_articles(examples)
    if not version_2_with_negative:
        from official.nlp.tools import squad_evaluate_v1_1

        unanswered = [e.source for e in examples if not e.answers]
        if unanswered:
            raise ValueError(f"{unanswered[0]}: no gold answers to score against")
        # This copy returns fractions; the official script prints percentages.
        result = squad_evaluate_v1_1.evaluate(articles, predictions)
        return {"exact_match": 100.0 * result["exact_match"], "f1": 100.0 * result["final_f1"],
                "total": float(len(examples))}

    from official.nlp.tools import squad_evaluate_v2_0

    # Without na_probs the script takes the predictions as they are; its "final_*" then
    # only search a meaningless all-zero threshold, so they are dropped here.
    result = squad_evaluate_v2_0.evaluate(articles, predictions)
    metrics = {"exact_match": result["exact"], "f1": result["f1"], "total": float(result["total"])}
    for split, name in (("HasAns", "has_answer"), ("NoAns", "no_answer")):
        if f"{split}_exact" in result:
            metrics[f"{name}_exact_match"] = result[f"{split}_exact"]
            metrics[f"{name}_f1"] = result[f"{split}_f1"]
            metrics[f"{name}_total"] = float(result[f"{split}_total"])
    if null_odds:
        tuned = squad_evaluate_v2_0.evaluate(articles, predictions, na_probs=null_odds)
        metrics["best_exact_match"] = tuned["final_exact"]
        metrics["best_exact_match_threshold"] = float(tuned["final_exact_thresh"])
        metrics["best_f1"] = tuned["final_f1"]
        metrics["best_f1_threshold"] = float(tuned["final_f1_thresh"])
    return {k: float(v) for k, v in metrics.items()}


def predict_logits(model, squad_features, batch_size=32):
    """Runs `model` over every window on this host: (start_logits, end_logits) [N, S].

    The last batch is padded to batch_size so one traced function serves every batch.
    """
    import tensorflow as tf

    @tf.function
    def call(inputs):
        outputs = model(inputs, training=False)
        return outputs[features.START_LOGITS], outputs[features.END_LOGITS]

    inputs = squad_features.inputs()
    count = len(squad_features)
    starts, ends = [], []
    for first in range(0, count, batch_size):
        batch = {k: v[first:first + batch_size] for k, v in inputs.items()}
        real = len(batch[features.INPUT_WORD_IDS])
        if real < batch_size:
            batch = {k: np.concatenate([v, np.zeros((batch_size - real,) + v.shape[1:], v.dtype)])
                     for k, v in batch.items()}
        start, end = call(batch)
        starts.append(np.asarray(start)[:real])
        ends.append(np.asarray(end)[:real])
    if not starts:
        seq = squad_features.input_word_ids.shape[1]
        return np.zeros((0, seq), np.float32), np.zeros((0, seq), np.float32)
    return np.concatenate(starts), np.concatenate(ends)
