"""tarproc.io.compress: detection by magic bytes, decompression of every format
(multi-member/multi-frame, corrupt and truncated input), deterministic
compressed output."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random

import pytest
import zstandard

from tarproc.io import compress
from tarproc.io.compress import compressing_writer, compression_for_name, decompressing_reader, detect
from tarproc.errors import CompressionError

DATA = b"".join(b"line %d of some tar-like data\n" % i for i in range(20_000)) + bytes(range(256)) * 100
FORMATS = ("gzip", "bzip2", "xz", "zstd")
STDLIB = {
    "gzip": lambda d: gzip.compress(d, mtime=0),
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zstd": lambda d: zstandard.ZstdCompressor(write_checksum=True).compress(d),  # as the zstd tool writes
}
DECOMPRESS = {
    "gzip": gzip.decompress,
    "bzip2": bz2.decompress,
    "xz": lzma.decompress,
    "zstd": lambda d: zstandard.ZstdDecompressor().decompressobj().decompress(d),
}


class Trickle(io.RawIOBase):
    """Non-seekable stream with short reads, like a pipe or stdin."""

    def __init__(self, data: bytes, seed: int = 1):
        self.data = memoryview(data)
        self.rng = random.Random(seed)

    def readable(self):
        return True

    def seekable(self):
        return False

    def readinto(self, buf):
        n = min(len(buf), self.rng.randint(1, 5000), len(self.data))
        buf[:n] = self.data[:n]
        self.data = self.data[n:]
        return n


def read_all(data: bytes, source: str = "src") -> bytes:
    return decompressing_reader(io.BytesIO(data), source).read()


def compressed(fmt: str, data: bytes = DATA, level=None) -> bytes:
    out = io.BytesIO()
    with compressing_writer(out, fmt, level) as w:
        w.write(data)
    return out.getvalue()


# ------------------------------------------------------------- detection
@pytest.mark.parametrize("fmt", FORMATS)
def test_detect_by_magic(fmt):
    assert detect(STDLIB[fmt](b"x")[: compress.MAGIC_LEN]) == fmt


@pytest.mark.parametrize("prefix", [b"", b"\x1f", b"BZ", b"\xfd7zXZ", b"ustar\0", b"\x28\xb5\x2f", b"hello!"])
def test_detect_none(prefix):
    assert detect(prefix) == "none"


@pytest.mark.parametrize(
    "name,expected",
    [("a.tar", "none"), ("a.tar.gz", "gzip"), ("A.TGZ", "gzip"), ("a.tar.bz2", "bzip2"), ("a.tbz2", "bzip2"),
     ("a.tar.xz", "xz"), ("a.txz", "xz"), ("a.tar.zst", "zstd"), ("a.tzst", "zstd"), ("-", "none"),
     ("gz", "none"), ("a.gz.tar", "none")],
)
def test_compression_for_name(name, expected):
    assert compression_for_name(name) == expected


# ----------------------------------------------------------- decompression
@pytest.mark.parametrize("fmt", FORMATS)
def test_reads_stdlib_output_from_a_pipe(fmt):
    assert decompressing_reader(Trickle(STDLIB[fmt](DATA))).read() == DATA


@pytest.mark.parametrize("data", [b"", b"ab", b"plain text, not compressed\n" * 10, bytes(5000)])
def test_uncompressed_passes_through(data):
    assert read_all(data) == data
    assert decompressing_reader(Trickle(data)).read() == data


@pytest.mark.parametrize("fmt", FORMATS)
def test_several_members_read_to_the_end(fmt):
    parts = [DATA[:1000], DATA[1000:50_000], b"", DATA[50_000:]]
    data = b"".join(STDLIB[fmt](p) for p in parts)
    assert read_all(data) == DATA
    assert decompressing_reader(Trickle(data, 7)).read() == DATA


def test_gzip_trailing_zero_padding_is_ignored():
    assert read_all(STDLIB["gzip"](DATA) + bytes(300)) == DATA


def corrupt(fmt: str, what: str) -> bytes:
    data = bytearray(STDLIB[fmt](DATA))
    if what == "truncated":
        return bytes(data[: len(data) * 3 // 4])
    if what == "crc":
        data[-8] ^= 0xFF  # gzip trailer: CRC-32 then ISIZE
    elif what == "isize":
        data[-1] ^= 0x01
    elif what == "body":
        mid = len(data) // 2
        data[mid : mid + 64] = b"\xff" * 64
    return bytes(data)


@pytest.mark.parametrize(
    "fmt,what,message",
    [
        ("gzip", "truncated", r"src: gzip stream is truncated"),
        ("gzip", "crc", r"src: corrupt gzip stream: CRC-32 or length check failed"),
        ("gzip", "isize", r"src: corrupt gzip stream: CRC-32 or length check failed"),
        ("gzip", "body", r"src: corrupt gzip stream"),
        ("bzip2", "truncated", r"src: bzip2 stream is truncated"),
        ("bzip2", "body", r"src: corrupt bzip2 stream"),
        ("xz", "truncated", r"src: xz stream is truncated"),
        ("xz", "body", r"src: corrupt xz stream"),
        ("zstd", "truncated", r"src: zstd stream is truncated"),
        ("zstd", "body", r"src: corrupt zstd stream"),
    ],
)
def test_corrupt_input_raises_compression_error(fmt, what, message):
    with pytest.raises(CompressionError, match=message) as info:
        read_all(corrupt(fmt, what))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_bytes_before_a_cut_are_all_returned(fmt):
    """Nothing decompressed before a fault is lost: a reader gets every byte
    the intact part of the stream holds, then the error."""
    member = STDLIB[fmt](DATA)
    cut = member + STDLIB[fmt](DATA)[:100]
    reader = decompressing_reader(io.BytesIO(cut), "src")
    assert reader.read(len(DATA)) == DATA
    with pytest.raises(CompressionError, match="truncated"):
        reader.read()  # the cut second member


def test_gzip_garbage_after_member_is_an_error():
    with pytest.raises(CompressionError):
        read_all(STDLIB["gzip"](DATA) + b"not gzip at all")


def test_zstd_garbage_after_frame_is_an_error():
    with pytest.raises(CompressionError, match="corrupt zstd stream"):
        read_all(STDLIB["zstd"](DATA) + b"garbage!")


def test_zlib_fallback(monkeypatch):
    """Without isal, the stdlib gzip module reads and reports the same way."""
    import zlib

    monkeypatch.setattr(compress, "_gzip", gzip)
    monkeypatch.setattr(compress, "_gzip_decompressobj", zlib.decompressobj)
    good = STDLIB["gzip"](DATA)
    assert read_all(good + good) == DATA + DATA
    with pytest.raises(CompressionError, match="CRC-32 or length check failed"):
        read_all(corrupt("gzip", "crc"))
    with pytest.raises(CompressionError, match="truncated"):
        read_all(corrupt("gzip", "truncated"))
    with pytest.raises(CompressionError, match="corrupt gzip stream"):
        read_all(corrupt("gzip", "body"))
    assert gzip.decompress(compressed("gzip")) == DATA


# ------------------------------------------------------------- compression
@pytest.mark.parametrize("fmt", FORMATS)
def test_compressing_writer_round_trip(fmt):
    out = compressed(fmt)
    assert detect(out[:6]) == fmt
    assert DECOMPRESS[fmt](out) == DATA  # readable by the reference tools
    assert read_all(out) == DATA
    assert compressed(fmt) == out  # deterministic
    assert DECOMPRESS[fmt](compressed(fmt, level=1)) == DATA


def test_zstd_output_has_a_checksum():
    out = bytearray(compressed("zstd"))
    assert zstandard.get_frame_parameters(bytes(out)).has_checksum
    out[len(out) // 2] ^= 0x55
    with pytest.raises(CompressionError, match="corrupt zstd stream"):
        read_all(bytes(out))


def test_gzip_output_has_no_name_and_no_mtime():
    out = compressed("gzip")
    assert out[:3] == b"\x1f\x8b\x08"
    assert out[3] & 0x08 == 0  # FNAME flag not set
    assert out[4:8] == b"\0\0\0\0"  # MTIME 0


def test_none_is_the_stream_itself_and_close_keeps_the_stream_open():
    raw = io.BytesIO()
    assert compressing_writer(raw, "none") is raw
    for fmt in FORMATS:
        raw = io.BytesIO()
        w = compressing_writer(raw, fmt)
        w.write(b"abc")
        w.close()
        assert not raw.closed
        assert DECOMPRESS[fmt](raw.getvalue()) == b"abc"


def test_unknown_compression():
    with pytest.raises(ValueError, match="unknown compression"):
        compressing_writer(io.BytesIO(), "lz4")
