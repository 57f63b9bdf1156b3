"""TFRecord files written with numpy alone: the framing, its CRC32C, atomic writers.

For host-side jobs that must not import TensorFlow (`create_pretraining_data` and its
worker processes). The files are byte-identical to `tf.io.TFRecordWriter`'s (tested); a
path with a scheme (gs://, s3://, ...) is written through `tf.io.gfile` instead, the only
case that imports TensorFlow.

A record on disk is
    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)
little-endian, where masked_crc32c(x) = rotate_right(crc32c(x), 15) + 0xA282EAD8.

CRC32C comes from google-crc32c's C extension (a dependency; hardware CRC instructions)
when it is there. Otherwise numpy computes it on many records at once: the records are
right-aligned in a zero-padded matrix and its columns are folded in 32-bit words (slicing
by four), so the Python loop runs over the longest record's words, not over records or
bytes. With a zero register, leading zero bytes leave a CRC unchanged; the standard
all-ones start register is added afterwards, and since a CRC is linear over GF(2) its
effect depends only on the length.
"""

import functools
import gzip
import os
import struct

import numpy as np

_POLY = 0x82F63B78  # CRC32C (Castagnoli), reflected
_MASK_DELTA = 0xA282EAD8
# Records per CRC batch: bounds the padded matrix (rows x longest record).
_CRC_BATCH = 1024


@functools.lru_cache(maxsize=1)
def _tables():
    """Slicing-by-four tables [4, 256] uint32; row 0 is the byte-at-a-time table."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(_POLY), table >> 1)
    tables = [table.astype(np.uint32)]
    for _ in range(3):
        previous = tables[-1]
        tables.append((previous >> 8) ^ tables[0][previous & 0xFF])
    return np.stack(tables)


@functools.lru_cache(maxsize=8)
def _start_register_effect(max_length):
    """[max_length + 1] uint32: CRC register after n zero bytes from all ones, n = 0..max."""
    table = _tables()[0].tolist()
    out, register = [0] * (max_length + 1), 0xFFFFFFFF
    for n in range(max_length + 1):
        out[n] = register
        register = table[register & 0xFF] ^ (register >> 8)
    return np.array(out, np.uint32)


def _c_crc32c():
    """google_crc32c.value if its C extension is installed, else None."""
    try:
        import google_crc32c
    except ImportError:
        return None
    return google_crc32c.value if google_crc32c.implementation == "c" else None


# Tests set this to None to check the numpy path.
_C_CRC32C = _c_crc32c()


def crc32c(records):
    """CRC32C of each bytes object in `records`, as a uint32 array."""
    if _C_CRC32C is not None:
        return np.fromiter(map(_C_CRC32C, records), np.uint32, len(records))
    out = np.empty(len(records), np.uint32)
    for start in range(0, len(records), _CRC_BATCH):
        out[start:start + _CRC_BATCH] = _crc32c_batch(records[start:start + _CRC_BATCH])
    return out


def _crc32c_batch(records):
    lengths = np.fromiter(map(len, records), np.int64, len(records))  # [N]
    if not len(records):
        return np.zeros(0, np.uint32)
    width = -(-int(lengths.max()) // 4) * 4  # bytes per row, a multiple of 4
    # Right-aligned rows: record i fills columns width - len_i .. width - 1.
    flat = np.frombuffer(b"".join(records), np.uint8)
    padded = np.zeros((len(records), width), np.uint8)  # [N, W]
    row_end = np.arange(1, len(records) + 1, dtype=np.int64) * width
    shift = np.repeat(row_end - np.cumsum(lengths), lengths)  # [bytes]: flat -> padded
    shift += np.arange(flat.size)
    padded.reshape(-1)[shift] = flat
    words = np.ascontiguousarray(padded.view("<u4").T)  # [W / 4, N], one column per step
    t0, t1, t2, t3 = _tables()
    register = np.zeros(len(records), np.uint32)
    for word in words:
        register ^= word
        register = (t3[register & 0xFF] ^ t2[(register >> 8) & 0xFF]
                    ^ t1[(register >> 16) & 0xFF] ^ t0[register >> 24])
    return register ^ _start_register_effect(width)[lengths] ^ np.uint32(0xFFFFFFFF)


def masked_crc32c(records):
    crc = crc32c(records).astype(np.uint64)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(records):
    """The on-disk bytes of each record (a list of bytes objects, one per record)."""
    if not records:
        return []
    # Records of one batch have few distinct lengths: one header per length.
    lengths = list(map(len, records))
    distinct = sorted(set(lengths))
    length_bytes = [struct.pack("<Q", n) for n in distinct]
    headers = {n: b + struct.pack("<I", c) for n, b, c in
               zip(distinct, length_bytes, masked_crc32c(length_bytes).tolist())}
    footers = map(struct.Struct("<I").pack, masked_crc32c(records).tolist())
    return [b"".join((headers[n], record, footer))
            for n, record, footer in zip(lengths, records, footers)]


def is_url(path):
    """Whether `path` names a file system only TensorFlow reads (gs://, s3://, hdfs://)."""
    return "://" in path


def open_file(path, mode):
    """A binary file object; a URL is opened through tf.io.gfile, whose errors become
    OSError like the local ones."""
    if not is_url(path):
        return open(path, mode)
    import tensorflow as tf

    try:
        f = tf.io.gfile.GFile(path, mode)
        if "r" in mode:
            f.size()  # GFile opens lazily; fail here, as open() does
        return f
    except tf.errors.OpError as e:
        raise OSError(f"{path}: {e.message}") from None


class AtomicRecordFile:
    """Framed records to a temporary name, renamed onto `path` by commit().

    `gzip` writes GZIP-compressed TFRecords (TFRecordDataset(compression_type="GZIP")).
    abort() removes the temporary file and leaves `path` as it was.
    """

    def __init__(self, path, gzip_compressed=False):
        self.path = path
        self.temp_path = f"{path}.tmp-{os.getpid()}"
        self._raw = open_file(self.temp_path, "wb")
        self._file = (gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6, mtime=0)
                      if gzip_compressed else self._raw)

    def write_framed(self, framed):
        """Writes already framed records (see frame())."""
        self._file.write(b"".join(framed))

    def _close(self):
        if self._file is not self._raw:
            self._file.close()
        self._raw.close()

    def commit(self):
        self._close()
        if is_url(self.path):
            import tensorflow as tf

            tf.io.gfile.rename(self.temp_path, self.path, overwrite=True)
        else:
            os.replace(self.temp_path, self.path)

    def abort(self):
        try:
            self._close()
        except Exception:  # noqa: BLE001 - cleaning up after a failure already raised
            pass
        try:
            if is_url(self.path):
                import tensorflow as tf

                if tf.io.gfile.exists(self.temp_path):
                    tf.io.gfile.remove(self.temp_path)
            elif os.path.exists(self.temp_path):
                os.remove(self.temp_path)
        except Exception:  # noqa: BLE001
            pass
