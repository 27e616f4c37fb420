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

from tarproc.errors import CompressionError, UsageError

try:  # ISA-L gzip: several times faster than zlib
    from isal import igzip as _gzip
    from isal.isal_zlib import decompressobj as _gzip_decompressobj
    from isal.isal_zlib import error as _isal_error
except ImportError:  # pragma: no cover - isal is a dependency, fallback kept
    import gzip as _gzip  # type: ignore[no-redef]

    _gzip_decompressobj = zlib.decompressobj  # type: ignore[assignment]
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
#: the suffix a tar name gets for each compression (``out`` -> ``out.tar.gz``)
TAR_SUFFIX = {"none": ".tar", "gzip": ".tar.gz", "bzip2": ".tar.bz2", "xz": ".tar.xz", "zstd": ".tar.zst"}
#: every suffix of a tar shard's name, longest first (``.tar.gz`` before ``.gz``)
TAR_SUFFIXES = tuple(sorted({*TAR_SUFFIX.values(), *SUFFIXES}, key=len, reverse=True))


def split_tar_suffix(name: str) -> tuple[str, str]:
    """``name`` as (stem, tar suffix): ``train.tar.gz`` -> (``train``,
    ``.tar.gz``); (``name``, ``""``) when it has no tar or compression suffix."""
    lower = name.lower()
    for suffix in TAR_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    return name, ""


def named_compression(name: str) -> str | None:
    """The compression a file name states by its suffix: ``gzip`` for
    ``.gz``/``.tgz`` (``bzip2``, ``xz``, ``zstd`` likewise), ``none`` for
    ``.tar``; None when the name says nothing (``out``, ``data.bin``)."""
    suffix = split_tar_suffix(name)[1].lower()
    if not suffix:
        return None
    return "none" if suffix == ".tar" else compression_for_name(suffix)


def output_compression(name: str, compression: str | None = None) -> str:
    """The compression of an output file called ``name``: ``compression``
    when given, else the one its suffix states (``none`` if it states none).

    :raises UsageError: ``compression`` contradicts the name (gzip into
        ``x.tar``, none into ``x.tgz``): the file would not be what it says
    """
    named = named_compression(name)
    if compression is None:
        return named or "none"
    if named is not None and named != compression:
        said = "an uncompressed tar" if named == "none" else f"{named}-compressed"
        asked = "no compression" if compression == "none" else f"{compression} compression"
        raise UsageError(f"output {name!r} is named as {said}, but {asked} was asked for:"
                         f" name it {split_tar_suffix(name)[0]}{TAR_SUFFIX[compression]}")
    return compression


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
        # readinto1: what is there (one read of a pipe), not a full buffer, so
        # a slow producer's samples flow on instead of waiting for 1 MiB or EOF
        readinto = getattr(self._stream, "readinto1", None) or getattr(self._stream, "readinto", None)
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
        except _DECOMPRESS_ERRORS as exc:
            message = str(exc)
            if self._name == "gzip" and "check" in message.lower():
                # zlib: "incorrect data/length check"; ISA-L: "Incorrect checksum found"
                message = f"CRC-32 or length check failed ({message})"
            raise CompressionError(f"{self._source}: corrupt {self._name} stream: {message}") from None

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
    return io.BufferedReader(_Checked(_StreamDecompressor(raw, kind), kind, source), buffer_size)


def stream_compression(reader) -> str:
    """The compression :func:`decompressing_reader` detected for ``reader``
    (one it returned): ``"none"``, ``"gzip"``, ``"bzip2"``, ``"xz"`` or
    ``"zstd"``."""
    raw = getattr(reader, "raw", None)
    return raw._name if isinstance(raw, _Checked) else "none"


_DECOMPRESS_ERRORS = (OSError, ValueError, EOFError, lzma.LZMAError, zlib.error, _isal_error, zstandard.ZstdError)


def _new_decompressor(kind: str):
    """A fresh one-member decompressor object for ``kind``."""
    if kind == "gzip":
        return _gzip_decompressobj(wbits=31)  # RFC 1952 member: header, deflate, CRC-32, ISIZE
    if kind == "bzip2":
        return bz2.BZ2Decompressor()
    if kind == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    return zstandard.ZstdDecompressor().decompressobj()


class _StreamDecompressor(io.RawIOBase):
    """Decompress a sequence of members (gzip members, bzip2/xz streams,
    zstd frames) from a raw stream.

    Every byte decompressed before a fault is returned before the fault is
    raised, so a cut or corrupt shard loses nothing that was already read:
    :class:`EOFError` when the input ends inside a member (zstandard's own
    ``stream_reader`` would return a silent short read there), the
    decompressor's error for corrupt data or a bad CRC. Zero padding after a
    gzip member or xz stream is allowed (gzip(1) and the xz format's stream
    padding); any other trailing bytes must form another member.
    """

    def __init__(self, stream, kind: str, chunk_size: int = 1 << 18):
        self._stream = stream
        self._kind = kind
        self._chunk_size = chunk_size
        self._dobj = _new_decompressor(kind)
        self._in_member = False
        self._pending = memoryview(b"")
        self._error: BaseException | None = None
        self._zero_padding = kind in ("gzip", "xz")

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while not self._pending:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            chunk = self._stream.read(self._chunk_size)
            if not chunk:
                if self._in_member:
                    raise EOFError(f"input ended inside a {self._kind} member")
                return 0
            self._pending = memoryview(self._feed(chunk))
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _feed(self, data: bytes) -> bytes:
        out = []
        try:
            while data:
                if not self._in_member and self._zero_padding:
                    data = data.lstrip(b"\0")
                    if not data:
                        break
                self._in_member = True
                out.append(self._dobj.decompress(data))
                if not self._dobj.eof:
                    break
                self._in_member = False
                data = self._dobj.unused_data
                self._dobj = _new_decompressor(self._kind)
        except _DECOMPRESS_ERRORS as exc:  # raised after the good bytes are returned
            if not out:
                raise
            self._error = exc
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
