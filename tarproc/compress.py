"""Compression detected from magic bytes on input, chosen by name on output.

Input formats and their magic numbers: gzip ``1f 8b`` (RFC 1952), bzip2
``BZh``, xz ``fd 37 7a 58 5a 00`` and zstd ``28 b5 2f fd`` (RFC 8878). gzip
uses python-isal (ISA-L) when installed and falls back to :mod:`zlib`;
multi-member gzip is read to the end and every member's CRC-32 and length
are checked.
"""

from __future__ import annotations

import bz2
import io
import lzma
import zlib
from typing import BinaryIO

from .errors import CompressionError

try:  # ISA-L gzip: several times faster than zlib
    from isal import igzip as _gzip
    from isal.isal_zlib import error as _isal_error
except ImportError:  # pragma: no cover - isal is a dependency, fallback kept
    import gzip as _gzip  # type: ignore[no-redef]

    _isal_error = zlib.error  # type: ignore[misc,assignment]

import zstandard

#: bytes needed to tell every supported format apart
MAGIC_LEN = 6

_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)

#: output suffix -> compression name
SUFFIXES = {
    ".gz": "gzip",
    ".tgz": "gzip",
    ".bz2": "bzip2",
    ".tbz2": "bzip2",
    ".xz": "xz",
    ".txz": "xz",
    ".zst": "zstd",
    ".tzst": "zstd",
}
COMPRESSIONS = ("none", "gzip", "bzip2", "xz", "zstd")


def detect(prefix: bytes) -> str:
    """Name the compression of a stream from its first bytes.

    :param prefix: the first :data:`MAGIC_LEN` bytes (fewer at end of stream)
    :returns: ``"gzip"``, ``"bzip2"``, ``"xz"``, ``"zstd"`` or ``"none"``
    """
    for magic, name in _MAGIC:
        if prefix.startswith(magic):
            return name
    return "none"


def compression_for_name(name: str) -> str:
    """The compression an output file name asks for by its suffix
    (``.gz``/``.tgz``, ``.bz2``, ``.xz``, ``.zst``), else ``"none"``."""
    lower = name.lower()
    for suffix, comp in SUFFIXES.items():
        if lower.endswith(suffix):
            return comp
    return "none"


class _Prefixed(io.RawIOBase):
    """A raw stream that returns ``prefix`` and then the rest of ``stream``."""

    def __init__(self, prefix: bytes, stream: BinaryIO):
        self._prefix = memoryview(prefix)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        if self._prefix:
            n = min(len(buf), len(self._prefix))
            buf[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        readinto = getattr(self._stream, "readinto", None)
        if readinto is not None:
            return readinto(buf)
        data = self._stream.read(len(buf))
        buf[: len(data)] = data
        return len(data)


class _Checked(io.RawIOBase):
    """Translate a decompressor's exceptions into :class:`CompressionError`."""

    def __init__(self, stream, name: str, source: str):
        self._stream = stream
        self._name = name
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        try:
            return self._stream.readinto(buf)
        except EOFError as exc:
            raise CompressionError(
                f"{self._source}: {self._name} stream is truncated ({exc})"
            ) from None
        except (OSError, ValueError, lzma.LZMAError, zlib.error, _isal_error, zstandard.ZstdError) as exc:
            raise CompressionError(f"{self._source}: corrupt {self._name} stream: {exc}") from None

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            super().close()


def _read_prefix(stream: BinaryIO, n: int) -> bytes:
    parts = []
    got = 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def decompressing_reader(stream: BinaryIO, source: str = "-", buffer_size: int = 1 << 20) -> BinaryIO:
    """Wrap a binary stream so that reads return decompressed bytes.

    The format is detected from the magic bytes, so this works on pipes and
    stdin; an uncompressed stream is passed through (buffered).

    :param stream: any object with ``read(n)``; it is not seeked
    :param source: a name for error messages
    :param buffer_size: read buffer in bytes
    :returns: a buffered binary reader of the decompressed bytes
    :raises CompressionError: (from later reads) when the data is corrupt or truncated
    """
    prefix = _read_prefix(stream, MAGIC_LEN)
    raw = _Prefixed(prefix, stream)
    kind = detect(prefix)
    if kind == "none":
        return io.BufferedReader(raw, buffer_size)
    buffered = io.BufferedReader(raw, buffer_size)
    if kind == "gzip":
        inner = _gzip.GzipFile(fileobj=buffered, mode="rb")
    elif kind == "bzip2":
        inner = bz2.BZ2File(buffered, mode="rb")
    elif kind == "xz":
        inner = lzma.LZMAFile(buffered, mode="rb")
    else:
        inner = _ZstdReader(buffered)
    return io.BufferedReader(_Checked(inner, kind, source), buffer_size)


class _ZstdReader(io.RawIOBase):
    """Decompress a sequence of zstd frames (RFC 8878), raising
    :class:`EOFError` when the input ends inside a frame (zstandard's own
    ``stream_reader`` returns a silent short read there)."""

    def __init__(self, stream: BinaryIO, chunk_size: int = 1 << 18):
        self._stream = stream
        self._chunk_size = chunk_size
        self._dctx = zstandard.ZstdDecompressor()
        self._dobj = self._dctx.decompressobj()
        self._in_frame = False
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while not self._pending:
            chunk = self._stream.read(self._chunk_size)
            if not chunk:
                if self._in_frame:
                    raise EOFError("zstd stream ended inside a frame")
                return 0
            self._pending = memoryview(self._feed(chunk))
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _feed(self, chunk: bytes) -> bytes:
        out = []
        while chunk:
            self._in_frame = True
            out.append(self._dobj.decompress(chunk))
            if not self._dobj.eof:
                break
            self._in_frame = False
            chunk = self._dobj.unused_data
            self._dobj = self._dctx.decompressobj()
        return b"".join(out)


def compressing_writer(stream: BinaryIO, compression: str, level: int | None = None) -> BinaryIO:
    """Wrap a binary stream so that writes are compressed deterministically.

    gzip is written with mtime 0 and no file name, so that the same input
    gives the same bytes.

    :param compression: one of :data:`COMPRESSIONS`
    :param level: compression level, or the format's default
    :returns: a writable binary stream; closing it flushes the trailer but
        does not close ``stream``
    """
    if compression == "none":
        return stream
    if compression == "gzip":
        kwargs = {} if level is None else {"compresslevel": level}
        return _gzip.GzipFile(fileobj=stream, mode="wb", mtime=0, filename="", **kwargs)
    if compression == "bzip2":
        return bz2.BZ2File(stream, mode="wb", compresslevel=level or 9)
    if compression == "xz":
        return lzma.LZMAFile(stream, mode="wb", preset=level)
    if compression == "zstd":
        # with a content checksum, like the zstd tool, so corruption is detected
        cctx = zstandard.ZstdCompressor(level=level or 3, write_checksum=True)
        return cctx.stream_writer(stream, closefd=False)
    raise ValueError(f"unknown compression {compression!r}")
