"""Python references for what the exported signatures compute in the graph.

Written independently of the in-graph code: characters come from Python's
`bytes.decode("utf-8", errors="replace")`, words from Google's BasicTokenizer rules
applied one character at a time (so each word keeps the indices of the characters it
came from), word pieces from Google's own WordpieceTokenizer (bert-tensorflow), and the
question-answering windows, max-context rule and span search follow run_squad.py's
loops literally, over the Keras model's logits.
"""

import numpy as np

from tfbert.text import normalization


def truncate(data, max_bytes):
    """The export's cut: `max_bytes` bytes, moved back while the first byte dropped is a
    UTF-8 continuation byte (at most 3 bytes, and only to a non-continuation byte)."""
    if len(data) <= max_bytes:
        return data
    cont = lambda i: i >= 0 and (data[i] & 0xC0) == 0x80  # noqa: E731
    back = 0
    while back < 3 and cont(max_bytes - back):
        back += 1
    if back == 3 and cont(max_bytes - 3):
        back = 0
    return data[:max(max_bytes - back, 0)]


def _is_space(char):
    return char in " \t\n\r" or char.isspace() or normalization.unicodedata.category(char) == "Zs"


def words_with_pieces(data, tokenization, tokenizer, lowercase):
    """Google's words of `data` (bytes) with their word pieces and character spans.

    Returns (text, words): text is data decoded with errors="replace"; each word is a
    dict with start, end (character offsets into text) and pieces, a list of
    (id, start, end). `tokenization` is Google's module, `tokenizer` its FullTokenizer.
    """
    text = data.decode("utf-8", errors="replace")
    # (normalised character, index of the character it came from), in order.
    stream = []
    for i, char in enumerate(text):
        for out in normalization.google_normalize_char(char, lowercase):
            stream.append((out, i))
    words, current = [], []
    for out, i in stream:
        if _is_space(out):
            if current:
                words.append(current)
            current = []
        elif normalization.is_punctuation(out) or normalization.is_cjk(ord(out)):
            if current:
                words.append(current)
            words.append([(out, i)])
            current = []
        else:
            current.append((out, i))
    if current:
        words.append(current)

    google_words = tokenizer.basic_tokenizer.tokenize(tokenization.convert_to_unicode(text))
    assert len(google_words) == len(words), (google_words, ["".join(c for c, _ in w) for w in words])
    result = []
    for word, google_word in zip(words, google_words):
        assert len(google_word) == len(word), (google_word, word)
        sources = [i for _, i in word]
        start, end = sources[0], sources[-1] + 1
        pieces = tokenizer.wordpiece_tokenizer.tokenize(google_word)
        ids = tokenizer.convert_tokens_to_ids(pieces)
        spans = []
        if pieces == [tokenizer.wordpiece_tokenizer.unk_token]:
            spans.append((ids[0], start, end))
        else:
            at = 0
            for k, (piece, piece_id) in enumerate(zip(pieces, ids)):
                length = len(piece) - 2 if k > 0 and piece.startswith("##") else len(piece)
                spans.append((piece_id, sources[at], sources[at + length - 1] + 1))
                at += length
            assert at == len(word)
        result.append({"start": start, "end": end, "pieces": spans})
    return text, result


def softmax(logits):
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def token_classification(texts, logits, words_of, label_names, seq_length, outside="O"):
    """The expected serving_default outputs of a token classifier.

    `logits` [B, S, C] come from the Keras model on the preprocessor's inputs;
    `words_of(data)` is words_with_pieces for one text.
    """
    predicted = np.argmax(logits, axis=-1)
    rows = []
    for b, data in enumerate(texts):
        text, words = words_of(data)
        piece = 0
        labels = []
        for word in words:
            position = piece + 1
            labels.append(label_names[predicted[b, position]] if position < seq_length - 1
                          else outside)
            piece += len(word["pieces"])
        rows.append({
            "words": [text[w["start"]:w["end"]] for w in words],
            "labels": labels,
            "start_char": [w["start"] for w in words],
            "end_char": [w["end"] for w in words],
        })
    width = max([len(r["words"]) for r in rows], default=0)

    def pad(key, value, dtype):
        return np.array([r[key] + [value] * (width - len(r[key])) for r in rows],
                        dtype=dtype).reshape(len(rows), width)

    return {
        "words": pad("words", "", object),
        "labels": pad("labels", "", object),
        "num_words": np.array([len(r["words"]) for r in rows], np.int32),
        "start_char": pad("start_char", 0, np.int32),
        "end_char": pad("end_char", 0, np.int32),
    }


def squad_windows(num_doc, max_tokens_for_doc, doc_stride):
    """run_squad.py's doc spans: [(start, length)]."""
    spans, start = [], 0
    while start < num_doc:
        length = min(num_doc - start, max_tokens_for_doc)
        spans.append((start, length))
        if start + length == num_doc:
            break
        start += min(length, doc_stride)
    return spans


def is_max_context(spans, span_index, position):
    """run_squad.py's _check_is_max_context."""
    best_score, best_index = None, None
    for index, (start, length) in enumerate(spans):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best_index = score, index
    return span_index == best_index


def question_answering(questions, contexts, model, pieces_of, seq_length, doc_stride,
                       max_query_length, max_answer_length, null_score_diff_threshold=None,
                       cls_id=101, sep_id=102):
    """Expected serving_default outputs of a question answerer, from the Keras model.

    `pieces_of(data)` -> (text, words) as words_with_pieces returns.
    """
    out = {"answer": [], "score": [], "start_char": [], "end_char": [], "null_score": []}
    for question, context in zip(questions, contexts):
        _, q_words = pieces_of(question)
        q_ids = [p[0] for w in q_words for p in w["pieces"]][:max_query_length]
        text, c_words = pieces_of(context)
        doc = [p for w in c_words for p in w["pieces"]]
        room = seq_length - len(q_ids) - 3
        spans = squad_windows(len(doc), room, doc_stride) or [(0, 0)]
        ids = np.zeros((len(spans), seq_length), np.int32)
        mask = np.zeros_like(ids)
        types = np.zeros_like(ids)
        for n, (start, length) in enumerate(spans):
            row = [cls_id] + q_ids + [sep_id] + [p[0] for p in doc[start:start + length]]
            # (run_squad makes no window at all for an empty context; the export makes
            # one of just [CLS] question [SEP], packed like a single segment.)
            row += [sep_id] if length else []
            ids[n, :len(row)] = row
            mask[n, :len(row)] = 1
            types[n, len(q_ids) + 2:len(row)] = 1
        logits = model({"input_word_ids": ids, "input_mask": mask, "input_type_ids": types},
                       training=False)
        start_logits = np.asarray(logits["start_logits"], np.float64)
        end_logits = np.asarray(logits["end_logits"], np.float64)
        best = None  # (score, doc_start, doc_end)
        for n, (start, length) in enumerate(spans):
            offset = len(q_ids) + 2
            for i in range(length):
                if not is_max_context(spans, n, start + i):
                    continue
                for e in range(i, min(length, i + max_answer_length)):
                    score = start_logits[n, offset + i] + end_logits[n, offset + e]
                    if best is None or score > best[0]:
                        best = (score, start + i, start + e)
        null = min(start_logits[n, 0] + end_logits[n, 0] for n in range(len(spans)))
        answered = best is not None
        if answered and null_score_diff_threshold is not None:
            answered = null - best[0] <= null_score_diff_threshold
        if answered:
            s, e = doc[best[1]][1], doc[best[2]][2]
            out["answer"].append(text[s:e])
            out["score"].append(best[0])
            out["start_char"].append(s)
            out["end_char"].append(e)
        else:
            out["answer"].append("")
            out["score"].append(null)
            out["start_char"].append(-1)
            out["end_char"].append(-1)
        out["null_score"].append(null)
    return {
        "answer": np.array(out["answer"], object),
        "score": np.array(out["score"], np.float64),
        "start_char": np.array(out["start_char"], np.int32),
        "end_char": np.array(out["end_char"], np.int32),
        "null_score": np.array(out["null_score"], np.float64),
    }
