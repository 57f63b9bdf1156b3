"""tfbert.data.tfrecord_file (numpy only) against TensorFlow's own TFRecord writer."""

import os
import random

import helpers
import numpy as np
import pytest
import tensorflow as tf

from tfbert.data import tfrecord_file


@pytest.fixture(params=["c", "numpy"])
def implementation(request, monkeypatch):
    """Runs a test with google-crc32c's C extension, then with the numpy fallback."""
    if request.param == "numpy":
        monkeypatch.setattr(tfrecord_file, "_C_CRC32C", None)
    elif tfrecord_file._C_CRC32C is None:
        pytest.fail("google-crc32c's C extension is not installed (a tfbert dependency)")
    return request.param


def test_crc32c_check_values(implementation):
    # The standard check value of CRC-32C ("123456789"), and RFC 3720 (iSCSI) B.4's
    # 32 zero bytes, 32 0xFF bytes and 0, 1, ..., 31.
    records = [b"123456789", bytes(32), b"\xff" * 32, bytes(range(32)), b""]
    assert tfrecord_file.crc32c(records).tolist() == [
        0xE3069283, 0x8A9136AA, 0x62A8AB43, 0x46DD794E, 0x00000000]


def _random_records(rng, count, max_length):
    return [rng.randbytes(rng.randrange(max_length)) for _ in range(count)]


def test_files_are_byte_identical_to_tensorflows(tmp_path, implementation):
    rng = random.Random(0)
    # Every length mod 4 around the word size, long records, and more records than one
    # CRC batch.
    records = [rng.randbytes(n) for n in (0, 1, 2, 3, 4, 5, 7, 8, 9, 31, 4097, 70_000)]
    records += _random_records(rng, 5000, 900)
    ours = str(tmp_path / "ours.tfrecord")
    theirs = str(tmp_path / "theirs.tfrecord")
    with tf.io.TFRecordWriter(theirs) as writer:
        for record in records:
            writer.write(record)
    f = tfrecord_file.AtomicRecordFile(ours)
    f.write_framed(tfrecord_file.frame(records[:100]))
    f.write_framed(tfrecord_file.frame(records[100:]))
    assert not os.path.exists(ours)  # the temporary name until commit
    f.commit()
    with open(ours, "rb") as a, open(theirs, "rb") as b:
        assert a.read() == b.read()
    assert sorted(os.listdir(tmp_path)) == ["ours.tfrecord", "theirs.tfrecord"]


def test_gzip_reads_back_in_tensorflow(tmp_path):
    records = _random_records(random.Random(1), 300, 2000)
    path = str(tmp_path / "ours.tfrecord.gz")
    f = tfrecord_file.AtomicRecordFile(path, gzip_compressed=True)
    f.write_framed(tfrecord_file.frame(records))
    f.commit()
    got = [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
    assert got == records


def test_abort_keeps_the_last_good_file(tmp_path):
    path = str(tmp_path / "data.tfrecord")
    good = tfrecord_file.AtomicRecordFile(path)
    good.write_framed(tfrecord_file.frame([b"good"]))
    good.commit()
    failed = tfrecord_file.AtomicRecordFile(path)
    failed.write_framed(tfrecord_file.frame([b"half-written"]))
    failed.abort()
    assert os.listdir(tmp_path) == ["data.tfrecord"]
    assert [r.numpy() for r in tf.data.TFRecordDataset(path)] == [b"good"]


def test_unwritable_path_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        tfrecord_file.AtomicRecordFile(str(tmp_path / "missing_dir" / "x.tfrecord"))
    with pytest.raises(OSError, match="nope"):
        tfrecord_file.open_file(str(tmp_path / "nope.txt"), "rb")


def test_numpy_and_c_agree_on_mixed_lengths(monkeypatch):
    rng = random.Random(2)
    records = _random_records(rng, 3000, 300) + [b"x" * 5000]
    rng.shuffle(records)
    c = tfrecord_file.crc32c(records)
    monkeypatch.setattr(tfrecord_file, "_C_CRC32C", None)
    batch = tfrecord_file.crc32c(records)
    single = np.concatenate([tfrecord_file.crc32c([r]) for r in records[:200]])
    np.testing.assert_array_equal(batch[:200], single)
    np.testing.assert_array_equal(batch, c)


def test_imports_no_tensorflow():
    helpers.assert_runs_without_tensorflow(
        "from tfbert.data import tfrecord_file as t\n"
        "assert len(t.frame([b'a', b'bc'])) == 2")
