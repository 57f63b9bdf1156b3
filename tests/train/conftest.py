import os
import subprocess
import sys

import pytest

import helpers
import pretrain_corpus


@pytest.fixture(scope="session")
def pretraining_records(tmp_path_factory):
    """Google-format pretraining TFRecords made from real IMDB reviews with the real
    uncased vocab, by `python -m tfbert.data.create_pretraining_data`."""
    directory = tmp_path_factory.mktemp("records")
    vocab = os.path.join(helpers.minilm_dir(), "vocab.txt")
    records = {}
    for split, (count, start) in {"train": (160, 0), "eval": (40, 160)}.items():
        corpus = pretrain_corpus.write_imdb_corpus(str(directory / f"{split}.txt"), count, start=start)
        output = str(directory / f"{split}.tfrecord")
        records[split] = output + "-*"
        subprocess.run(
            [sys.executable, "-m", "tfbert.data.create_pretraining_data",
             f"--input_file={corpus}", f"--output_file={output}",
             f"--vocab_file={vocab}", "--do_lower_case=true", "--max_seq_length=64",
             "--max_predictions_per_seq=10", "--dupe_factor=1", "--random_seed=3",
             # Two files, so two workers can each read their own (file-level sharding).
             "--num_shards=2"],
            check=True, cwd=helpers.REPO_ROOT, capture_output=True,
        )
    return records, vocab
