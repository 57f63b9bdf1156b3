import os

from tfbert import quickstart


def test_quickstart_imports_real_minilm_and_finds_the_similar_sentences(tmp_path, capsys):
    assert quickstart.main(["--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert os.path.isfile(tmp_path / "minilm" / "model.weights.h5")
    assert "6-layer, 384-wide encoder" in out
    # Real sentence embeddings put the two negative reviews nearest to each other.
    lines = out.splitlines()
    dull = lines.index("  'A dull, lifeless comedy with jokes that fall flat.'")
    assert "I was bored from start to finish" in lines[dull + 1]
