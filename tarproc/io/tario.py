"""Streaming tar reader and deterministic tar writer.

Formats follow POSIX.1-2001 (IEEE Std 1003.1-2001, ``pax`` utility: ustar
headers and pax extended headers, typeflags ``x``/``g``; Solaris ``X``) and GNU tar (GNU tar
manual, "Basic Tar Format": ``L``/``K`` long-name records, base-256 sizes).

The reader is strict: every header checksum is verified, a stream must end
with the end-of-archive marker (two zero blocks), a cut anywhere is an error
naming the byte offset, declared sizes are checked without allocating them,
and long-name/pax records are capped. Zero blocks followed by another valid
header are read through, so ``cat a.tar b.tar`` loses nothing.
"""

from __future__ import annotations

import os
import struct
from zlib import adler32 as _adler32
from dataclasses import dataclass
from typing import BinaryIO
from collections.abc import Iterator

from tarproc.io import spool
from tarproc.errors import ArchiveError, TruncatedError, UsageError, Warn
from tarproc.io.iov import whole_writes, write_all, write_out
from tarproc.io.spool import LargeField

BLOCK = 512
#: cap on a pax extended header or GNU long-name record, in bytes
MAX_RECORD = 1 << 20
#: data is read in pieces of at most this many bytes, so that a bogus size
#: never allocates more than the stream actually holds
READ_CHUNK = 1 << 24

ZERO_BLOCK = bytes(BLOCK)  # padding is a slice of it
#: a GNU sparse member is expanded (holes as zero bytes) up to this many bytes; a larger one is skipped with a warning
MAX_SPARSE = 1 << 32
_LARGE = spool.THRESHOLD
#: members smaller than this (bytes) are written in one piece with their header and padding
SMALL_MEMBER = 1 << 16
#: a sample's small members that add up to this many bytes or more go out
#: in one writev(2) from their own buffers when the writer has the stream's
#: fd (no join: a copy of that size costs more than a system call)
GATHER_MIN = 1 << 14
_CHK_UNSIGNED = struct.Struct("148B8x356B")
_CHK_SIGNED = struct.Struct("148b8x356b")

REGULAR_TYPES = (b"0", b"\0", b"7")
#: headers that describe the next member: GNU long name/link, pax, Solaris pax
_EXTENDED = frozenset((b"L", b"K", b"x", b"g", b"X"))  # a set: one lookup for the usual regular member
_TYPE_NAMES = {
    b"1": "hard link",
    b"2": "symbolic link",
    b"3": "character device",
    b"4": "block device",
    b"6": "FIFO",
    b"S": "GNU sparse file",
    b"V": "volume label",
    b"M": "multi-volume continuation",
    b"D": "GNU dump directory",
}



#: no pax records (read only: a member without them shares it)
_NO_PAX: dict[str, str] = {}


def _no_warn(message: str) -> None:
    pass


@dataclass(slots=True)
class Member:
    """One regular-file member of a tar stream.

    :ivar name: member path, decoded as UTF-8 with surrogateescape
    :ivar data: the member's bytes; for a member larger than
        :data:`tarproc.io.spool.THRESHOLD` bytes, a file-backed
        :class:`tarproc.io.spool.LargeField` (``bytes(data)`` loads it)
    :ivar offset: byte offset of its first header (the pax or GNU long-name
        header when there is one, like :attr:`tarfile.TarInfo.offset`) in
        the decompressed stream
    :ivar header: its 512-byte ustar header (``mode`` and ``mtime`` are
        parsed from it on demand, so reading stays fast)
    """

    name: str
    data: bytes | LargeField
    offset: int = 0
    header: bytes = b""

    @property
    def mode(self) -> int:
        """Permission bits from the header (0o644 when there is none)."""
        if not self.header:
            return 0o644
        return _number(self.header[100:108], "mode", self.offset) & 0o7777

    @property
    def mtime(self) -> int:
        """Modification time from the header, seconds since the epoch."""
        if not self.header:
            return 0
        return _number(self.header[136:148], "mtime", self.offset)


def _nts(field: bytes) -> bytes:
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


def _fast_number(field: bytes, what: str, offset: int) -> int:
    """:func:`_number` with a fast path for the usual ``%0*o\\0`` layout."""
    if field[-1] in (0, 32):  # terminated: a field of 12 digits uses every byte
        try:
            return int(field[:-1], 8)
        except ValueError:
            pass
    return _number(field, what, offset)


def _number(field: bytes, what: str, offset: int) -> int:
    """Parse an octal or GNU base-256 numeric header field."""
    if field[:1] and field[0] & 0x80:
        if field[0] == 0xFF:  # negative base-256
            value = int.from_bytes(field, "big", signed=True)
        else:
            value = int.from_bytes(b"\0" + field[1:], "big") | ((field[0] & 0x7F) << (8 * (len(field) - 1)))
        return value
    text = _nts(field).strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise ArchiveError(f"bad {what} field {field!r} in header at offset {offset}") from None


def _decode(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


def _byte_sum(block: bytes) -> int:
    """Sum of the bytes of a 512-byte block with the checksum field read as
    spaces. Adler-32's first half is 1 + the byte sum mod 65521 (RFC 1950),
    exact for up to 256 bytes (at most 65280), so three calls on the parts
    around the checksum field (148, 228 and 128 bytes; no copy of the block
    with spaces put in) plus the 8 spaces give the exact sum in a fraction of
    the time of ``sum(block)``."""
    return (_adler32(block[:148]) & 0xFFFF) + (_adler32(block[156:384]) & 0xFFFF) + (_adler32(block[384:512]) & 0xFFFF) + 253


def _checksum_fast(header: bytes) -> bool:
    """The usual case: a ``%06o\\0 `` checksum field matching the unsigned sum."""
    try:
        return int(header[148:154], 8) == _byte_sum(header)
    except ValueError:
        return False


def checksum_ok(header: bytes) -> bool:
    """True when the header's checksum field matches its bytes (unsigned or,
    as some old writers did, signed sum; POSIX ``pax`` "ustar Interchange
    Format")."""
    try:
        stored = int(_nts(header[148:156]).strip(b" ") or b"-1", 8)
    except ValueError:
        return False
    if stored == _byte_sum(header):
        return True
    return stored == sum(_CHK_SIGNED.unpack_from(header)) + 256


def parse_pax(data: bytes, offset: int) -> dict[str, str]:
    """Parse pax extended header records ``"%d %s=%s\\n"`` (POSIX pax,
    "pax Extended Header").

    :raises ArchiveError: on a malformed record
    """
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # NUL padding some writers leave
            break
        space = data.find(b" ", pos)
        if space < 0:
            raise ArchiveError(f"malformed pax record at offset {offset}")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise ArchiveError(f"malformed pax record length at offset {offset}") from None
        end = pos + length
        if length <= 0 or end > len(data) or data[end - 1 : end] != b"\n":
            raise ArchiveError(f"malformed pax record at offset {offset}")
        keyval = data[space + 1 : end - 1]
        eq = keyval.find(b"=")
        if eq < 0:
            raise ArchiveError(f"malformed pax record at offset {offset}")
        key = keyval[:eq].decode("utf-8", "surrogateescape")
        value = keyval[eq + 1 :].decode("utf-8", "surrogateescape")
        if key in ("GNU.sparse.offset", "GNU.sparse.numbytes"):
            # GNU sparse 0.0 repeats these two keys, in order: kept as 0.1's GNU.sparse.map
            before = records.get("GNU.sparse.map")
            records["GNU.sparse.map"] = value if before is None else f"{before},{value}"
        else:
            records[key] = value
        pos = end
    return records


def _garbage_after_end(source: str, offset: int) -> ArchiveError:
    """The error for bytes after a complete archive: every member before it
    was read whole, so ``after_end_marker`` tells the grouping stage that its
    last sample is complete and may be passed on before the error."""
    error = ArchiveError(f"{source}: garbage after the end-of-archive marker at offset {offset}")
    error.after_end_marker = True
    return error


def _cut_marker(source: str, offset: int) -> TruncatedError:
    """The error for a stream cut inside its end-of-archive marker, after one
    whole zero block: every member was read whole, so ``after_end_marker``
    lets the grouping stage pass the last sample on before the error."""
    error = TruncatedError(
        f"{source}: stream is cut inside the end-of-archive marker: a lone zero block at offset {offset}"
        " (the marker is two zero blocks)"
    )
    error.after_end_marker = True
    return error


class TarReader:
    """Iterate the regular-file members of an (uncompressed) tar stream.

    Memory is bounded by :data:`tarproc.io.spool.THRESHOLD` (plus one read
    buffer): a larger member is copied in pieces to a spool file and given
    as a :class:`tarproc.io.spool.LargeField`. Sizes are checked against what
    the stream actually holds, never allocated up front.

    :param stream: a binary stream with ``read(n)``; see
        :func:`tarproc.io.compress.decompressing_reader` for compressed input
    :param source: a name for messages
    :param warn: called with a one-line message for every member skipped
        (links, devices, FIFOs, unknown types, a GNU sparse file expanding
        beyond :data:`MAX_SPARSE` bytes)

    GNU sparse members (old GNU typeflag ``S``, pax formats 0.0, 0.1 and
    1.0; GNU tar manual, "Storing Sparse Files") are read as the file they
    stand for, holes as zero bytes.
    :raises ArchiveError: bad checksum (``not a tar archive`` when the
        first block is no tar header), bad size or field, malformed pax
        record, oversized long-name record, a sparse map that does not fit
        its member, garbage after the end marker
    :raises TruncatedError: the stream ends inside a header or data, or
        without the end-of-archive marker
    """

    def __init__(self, stream: BinaryIO, source: str = "-", warn: Warn = _no_warn):
        self.stream = stream
        self.source = source
        self.warn = warn
        self.offset = 0  # bytes consumed so far
        self._pad = 0  # padding of the last member, read with the next header
        self._pad_start = 0  # header offset of the member that padding belongs to
        self._read = stream.read

    def _read_exact(self, n: int, what: str, start: int) -> bytes:
        """Read exactly ``n`` bytes or raise :class:`TruncatedError`."""
        data = self._read(n) if n <= READ_CHUNK else b""
        if len(data) == n:
            self.offset += n
            return data
        parts = [data] if data else []
        got = len(data)
        while got < n:
            chunk = self._read(min(n - got, READ_CHUNK))
            if not chunk:
                raise TruncatedError(
                    f"{self.source}: stream is cut inside {what} at offset {self.offset + got}"
                    f" (member header at offset {start})"
                )
            parts.append(chunk)
            got += len(chunk)
        self.offset += n
        return b"".join(parts)

    def _spool(self, n: int, start: int) -> LargeField:
        """A member's ``n`` data bytes copied to a spool file, in pieces
        (:class:`TruncatedError` as :meth:`_read_exact`'s; the file is
        removed on any error)."""
        fd, path = spool.new_file()
        field = LargeField(path, n)  # owned: removed with the field, also on an error
        try:
            with open(fd, "wb", buffering=0) as out:
                write = out.write
                got = 0
                while got < n:
                    chunk = self._read(min(n - got, spool.CHUNK))
                    if not chunk:
                        raise TruncatedError(
                            f"{self.source}: stream is cut inside data at offset {self.offset + got}"
                            f" (member header at offset {start})"
                        )
                    write_out(write, chunk)
                    got += len(chunk)
        except BaseException:
            del field
            raise
        self.offset += n
        return field

    def _skip(self, n: int, what: str, start: int) -> None:
        while n > 0:
            step = min(n, READ_CHUNK)
            self._read_exact(step, what, start)
            n -= step

    def _header(self, after_end: bool = False, in_marker: bool = False) -> bytes | None:
        """The next 512-byte block, or None at a clean end of stream.

        The previous member's zero padding is read in the same call. After
        the end-of-archive marker (``after_end``) a short tail of zero bytes
        is a clean end and any other short tail is garbage; after one zero
        block (``in_marker``) a short tail of zeros is a cut marker."""
        pad = self._pad
        self._pad = 0
        want = pad + BLOCK
        block = self._read(want)
        if len(block) == want:
            self.offset += want
            return block[pad:] if pad else block
        return self._short_header(block, pad, after_end, in_marker)

    def _short_header(self, block: bytes, pad: int, after_end: bool, in_marker: bool) -> bytes | None:
        """:meth:`_header` after a read of padding and header that came back
        short (``block``): the end of the stream, or a pipe's short read."""
        self.offset += len(block)
        if len(block) < pad:  # cut inside the padding
            self._read_exact(pad - len(block), "data padding", self._pad_start)
            block = b""
        else:
            block = block[pad:]
        if not block:
            block = self._read(BLOCK)
            if not block:
                return None
            self.offset += len(block)
        if len(block) < BLOCK:  # a short read on a pipe: gather the rest
            start = self.offset - len(block)
            if not after_end:
                while in_marker and len(block) < BLOCK and block.count(0) == len(block):
                    # the second block of the end-of-archive marker may be cut
                    rest = self._read(BLOCK - len(block))
                    if not rest:
                        raise _cut_marker(self.source, start - BLOCK)
                    block += rest
                    self.offset += len(rest)
                if len(block) == BLOCK:
                    return block
                return block + self._read_exact(BLOCK - len(block), "a header", start)
            while len(block) < BLOCK:
                chunk = self._read(BLOCK - len(block))
                if not chunk:
                    if block.count(0) == len(block):
                        return None
                    raise _garbage_after_end(self.source, start)
                self.offset += len(chunk)
                block += chunk
        return block

    def __iter__(self) -> Iterator[Member]:
        read_any = False
        zero_blocks = 0
        long_name: str | None = None
        long_link: str | None = None
        first: int | None = None  # offset of the first extended header of a member
        pax: dict[str, str] = {}
        global_pax: dict[str, str] = {}
        read = self._read
        while True:
            # the usual case of _header inline (this loop runs once per member): the
            # previous member's padding and the next header in one whole read
            pad = self._pad
            block = read(pad + BLOCK)
            if len(block) == pad + BLOCK:
                self._pad = 0
                self.offset += pad + BLOCK
                header = block[pad:] if pad else block
            else:
                self._pad = 0
                header = self._short_header(block, pad, zero_blocks >= 2, zero_blocks == 1)
            start = self.offset - BLOCK
            if header is None:
                start = self.offset
                if not read_any:
                    raise TruncatedError(f"{self.source}: empty input, no tar data")
                if zero_blocks >= 2:
                    return
                if long_name is not None or long_link is not None or pax:
                    raise TruncatedError(
                        f"{self.source}: stream is cut after an extended header at offset {start}"
                    )
                if zero_blocks == 1:
                    raise _cut_marker(self.source, start - BLOCK)
                raise TruncatedError(
                    f"{self.source}: stream is cut at offset {start}: no end-of-archive marker"
                )
            read_any = True
            if header == ZERO_BLOCK:
                zero_blocks += 1
                continue
            try:  # _checksum_fast inline: a "%06o\0 " field matching the unsigned sum (_byte_sum)
                chk = int(header[148:154], 8) == (_adler32(header[:148]) & 0xFFFF) + (
                    _adler32(header[156:384]) & 0xFFFF) + (_adler32(header[384:512]) & 0xFFFF) + 253
            except ValueError:
                chk = False
            if not (chk or checksum_ok(header)):
                if zero_blocks >= 2:
                    raise _garbage_after_end(self.source, start)
                if start == 0 and header[257:262] != b"ustar":
                    raise ArchiveError(f"{self.source}: not a tar archive (no tar header at offset 0)")
                raise ArchiveError(f"{self.source}: bad header checksum at offset {start}")
            zero_blocks = 0
            typeflag = header[156:157]
            try:
                size = _fast_number(header[124:136], "size", start)
            except ArchiveError as exc:
                raise ArchiveError(f"{self.source}: {exc}") from None
            if size < 0:
                raise ArchiveError(f"{self.source}: negative size {size} in header at offset {start}")
            if pax and "size" in pax and typeflag not in _EXTENDED:  # the size of the next real member
                try:
                    size = int(pax["size"])
                except ValueError:
                    raise ArchiveError(f"{self.source}: bad pax size at offset {start}") from None
                if size < 0:
                    raise ArchiveError(f"{self.source}: negative size {size} in header at offset {start}")
            padded = (size + BLOCK - 1) & ~(BLOCK - 1)

            if typeflag in _EXTENDED:
                if size > MAX_RECORD:
                    raise ArchiveError(
                        f"{self.source}: extended header of {size} bytes at offset {start}"
                        f" exceeds the {MAX_RECORD}-byte limit"
                    )
                data = self._read_exact(padded, "an extended header", start)[:size]
                if first is None:
                    first = start
                if typeflag == b"L":
                    long_name = _decode(_nts(data))
                elif typeflag == b"K":
                    long_link = _decode(_nts(data))
                elif typeflag in (b"x", b"g", b"X"):
                    try:
                        (global_pax if typeflag == b"g" else pax).update(parse_pax(data, start))
                    except ArchiveError as exc:
                        raise ArchiveError(f"{self.source}: {exc}") from None
                continue

            if pax and "path" in pax:
                name = pax["path"]
            elif long_name is not None:
                name = long_name
            elif global_pax and "path" in global_pax:
                name = global_pax["path"]
            else:
                end = header.find(b"\0", 0, 100)
                raw = header[:end] if end >= 0 else header[:100]
                if header[345] and header[257:263] == b"ustar\x00":  # POSIX ustar: prefix field
                    raw = _nts(header[345:500]) + b"/" + raw
                name = raw.decode("utf-8", "surrogateescape")
            sparse = typeflag == b"S"
            sparse_info: dict[str, str] = _NO_PAX
            link_name = long_link
            if pax:
                link_name = pax.get("linkpath", link_name)
                if any(k.startswith("GNU.sparse.") for k in pax):
                    # GNU pax sparse formats 0.0/0.1/1.0: the stored data is not the file
                    sparse = typeflag in REGULAR_TYPES
                    sparse_info = pax
                    name = pax.get("GNU.sparse.name", name)
                pax = {}
            long_name = long_link = None

            if typeflag in REGULAR_TYPES and not sparse:
                if name.endswith("/"):  # old-style directory
                    first = None
                    self._skip(padded, "data", start)
                    continue
                if size <= _LARGE:
                    data = self._read_exact(size, "data", start)
                else:
                    data = self._spool(size, start)
                self._pad = padded - size
                self._pad_start = start
                yield Member(name, data, start if first is None else first, header)
                first = None
                continue
            if sparse:
                data = self._sparse_data(header, sparse_info, name, size, start)
                if data is not None:
                    yield Member(name, data, start if first is None else first, header)
                first = None
                continue
            first = None
            if typeflag == b"5":  # directory: ignored
                self._skip(padded, "data", start)
                continue
            kind = _TYPE_NAMES.get(typeflag, f"unknown type {typeflag!r}")
            if typeflag in (b"1", b"2"):
                target = link_name if link_name is not None else _decode(_nts(header[157:257]))
                self.warn(f"{self.source}: skipping {kind} {name!r} -> {target!r} at offset {start}")
            else:
                self.warn(f"{self.source}: skipping {kind} {name!r} at offset {start}")
            # hard links and devices carry no data; sparse/unknown types may
            self._skip(padded if typeflag not in (b"1", b"2", b"3", b"4", b"6") else 0, "data", start)


    def _sparse_map(self, header: bytes, info: dict[str, str], size: int, start: int) -> tuple[list, int, int]:
        """``(map, real size, bytes of the map read from the data)`` of a GNU
        sparse member: old GNU (typeflag ``S``: 4 map entries in the header,
        21 in each extension block while ``isextended``), pax 0.0 (repeated
        ``GNU.sparse.offset``/``numbytes``, see :func:`parse_pax`), 0.1
        (``GNU.sparse.map``) or 1.0 (the map in decimal lines at the start
        of the data, padded to a block). GNU tar manual, "Storing Sparse Files"."""
        where = f"sparse member at offset {start}"
        entries: list[tuple[int, int]] = []
        if not info:  # old GNU
            def take(block: bytes, count: int) -> None:
                for i in range(count):
                    entry = block[i * 24 : i * 24 + 24]
                    if entry[0] == 0:  # an unused entry: the map ends
                        return
                    entries.append((_number(entry[:12], "sparse offset", start), _number(entry[12:], "sparse size", start)))

            take(header[386:482], 4)
            realsize = _number(header[483:495], "sparse real size", start)
            extended = header[482]
            while extended:
                block = self._read_exact(BLOCK, "a sparse header", start)
                take(block, 21)
                extended = block[504]
            return entries, realsize, 0
        try:
            if info.get("GNU.sparse.major") == "1" and info.get("GNU.sparse.minor", "0") == "0":
                realsize = int(info["GNU.sparse.realsize"])
                numbers: list[int] = []
                text = b""
                read = 0
                count = None
                while count is None or len(numbers) < 2 * count:
                    if b"\n" not in text:
                        if read + BLOCK > size or read >= MAX_RECORD:
                            raise ArchiveError(f"{self.source}: bad map of the {where}")
                        text += self._read_exact(BLOCK, "a sparse map", start)
                        read += BLOCK
                        continue
                    line, text = text.split(b"\n", 1)
                    if count is None:
                        count = int(line)
                    else:
                        numbers.append(int(line))
                return list(zip(numbers[::2], numbers[1::2])), realsize, read
            numbers = [int(x) for x in info["GNU.sparse.map"].split(",")] if info.get("GNU.sparse.map") else []
            realsize = int(info["GNU.sparse.size"])
        except (KeyError, ValueError):
            raise ArchiveError(f"{self.source}: bad map of the {where}") from None
        if len(numbers) % 2:
            raise ArchiveError(f"{self.source}: bad map of the {where}")
        return list(zip(numbers[::2], numbers[1::2])), realsize, 0

    def _sparse_data(self, header: bytes, info: dict[str, str], name: str, size: int, start: int) -> bytes | None:
        """The bytes of a GNU sparse member (holes as zero bytes), or None
        when it is skipped with a warning (it expands beyond
        :data:`MAX_SPARSE` bytes); the stream is left at its padding.

        :raises ArchiveError: a map that does not fit the member
        """
        entries, realsize, map_bytes = self._sparse_map(header, info, size, start)
        stored = size - map_bytes
        end = 0
        for offset, n in entries:
            if offset < end or n < 0 or offset + n > realsize:
                raise ArchiveError(f"{self.source}: bad map of the sparse member {name!r} at offset {start}")
            end = offset + n
        if sum(n for _, n in entries) != stored or realsize < 0:
            raise ArchiveError(f"{self.source}: the map of the sparse member {name!r} at offset {start}"
                               f" does not add up to its {stored} stored bytes")
        self._pad = ((size + BLOCK - 1) & ~(BLOCK - 1)) - size
        self._pad_start = start
        if realsize > MAX_SPARSE:
            self.warn(f"{self.source}: skipping GNU sparse file {name!r} at offset {start}: it expands to"
                      f" {realsize} bytes (more than {MAX_SPARSE})")
            self._skip(stored, "data", start)
            return None
        data = bytearray(realsize)
        for offset, n in entries:
            data[offset : offset + n] = self._read_exact(n, "data", start)
        return bytes(data)


def iter_members(stream: BinaryIO, source: str = "-", warn: Warn = _no_warn) -> Iterator[Member]:
    """Yield the regular-file :class:`Member` s of an uncompressed tar stream.

    See :class:`TarReader` for the rules and the errors raised.
    """
    return iter(TarReader(stream, source, warn))


# ---------------------------------------------------------------- writing


def _octal(value: int, width: int) -> bytes:
    """A NUL-terminated octal field of ``width`` bytes."""
    return b"%0*o\0" % (width - 1, value)


def _ustar_name(name: bytes) -> tuple[bytes, bytes] | None:
    """Split a name into (prefix, name) fitting ustar's 155+100 bytes."""
    if len(name) <= 100:
        return b"", name
    if len(name) > 256:
        return None
    # the prefix ends at a slash; the rest must fit in 100 bytes
    cut = name.find(b"/", len(name) - 101)
    while 0 < cut <= 155:
        if len(name) - cut - 1 <= 100:
            return name[:cut], name[cut + 1 :]
        cut = name.find(b"/", cut + 1)
    return None


_MAX_OCTAL_SIZE = 8**11 - 1


#: (mode, mtime, typeflag) -> the fixed parts of a header (see _header)
_FIXED: dict[tuple[int, int, bytes], tuple[bytes, bytes, bytes, int]] = {}


def _fixed_fields(mode: int, mtime: int, typeflag: bytes) -> tuple[bytes, bytes, bytes, int]:
    """The parts of a header that depend only on (mode, mtime, typeflag):
    bytes 100..124 (mode, uid, gid), 136..148 (mtime), 156..345 (typeflag,
    linkname, magic, version, uname, gname, devmajor, devminor), and the byte
    sum of those parts plus the checksum field read as spaces."""
    key = (mode, mtime, typeflag)
    fixed = _FIXED.get(key)
    if fixed is None:
        ids = _octal(mode, 8) + _octal(0, 8) + _octal(0, 8)  # mode, uid, gid
        times = _octal(mtime, 12)
        tail = typeflag + bytes(100) + b"ustar\x0000" + bytes(64) + _octal(0, 8) + _octal(0, 8)
        fixed = (ids, times, tail, sum(ids) + sum(times) + 8 * 32 + sum(tail))
        if len(_FIXED) < 64:
            _FIXED[key] = fixed
    return fixed


_NO_PREFIX = bytes(155 + 12)


def _header(name: bytes, size: int, mode: int, mtime: int, typeflag: bytes, prefix: bytes = b"") -> bytes:
    """A ustar header block (POSIX ustar): ``name`` (at most 100 bytes),
    ``prefix`` (at most 155), uid/gid 0, empty user and group names.

    Only name, size and prefix vary per member: the rest comes from a
    template (:func:`_fixed_fields`), and the checksum is the template's byte
    sum plus the sums of name, size field and prefix. Adler-32's first half
    is 1 + the byte sum mod 65521 (RFC 1950), exact for name + size field
    (at most 112 bytes) and for a prefix (at most 155 bytes)."""
    ids, times, tail, fixed_sum = _FIXED.get((mode, mtime, typeflag)) or _fixed_fields(mode, mtime, typeflag)
    size_field = b"%011o\0" % size
    total = fixed_sum + (_adler32(size_field, _adler32(name)) & 0xFFFF) - 1
    if prefix:
        total += (_adler32(prefix) & 0xFFFF) - 1
        end = prefix.ljust(155, b"\0") + bytes(12)
    else:
        end = _NO_PREFIX
    return b"".join((name.ljust(100, b"\0"), ids, size_field, times, b"%06o\0 " % total, tail, end))


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode() + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def _fits_ustar(mode: int, mtime: int) -> bool:
    """Whether ``mode`` and ``mtime`` fit their ustar header fields."""
    return 0 <= mtime <= _MAX_OCTAL_SIZE and 0 <= mode <= 0o7777777


def member_header(name: str, size: int, mode: int = 0o444, mtime: int = 0) -> bytes:
    """The header block(s) for a regular-file member.

    A ustar header (POSIX ustar, name split into prefix/name where needed),
    preceded by a pax extended header carrying ``path`` (and ``size`` for
    8 GiB and above) when they don't fit ustar. Owner is uid/gid 0 with empty
    user/group names, so the bytes depend only on the arguments.

    :param name: member path
    :param size: data length in bytes
    :param mode: permission bits
    :param mtime: seconds since the epoch
    :returns: a multiple of 512 bytes
    :raises UsageError: ``mtime`` or ``mode`` does not fit its ustar field
        (0 to 8**11 - 1 seconds, 0 to 0o7777777)
    """
    if not _fits_ustar(mode, mtime):
        raise UsageError(
            f"mtime {mtime} or mode {mode:o} out of range: ustar headers hold"
            f" mtime 0..{_MAX_OCTAL_SIZE} seconds and mode 0..7777777 (octal)"
        )
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= 100 and 0 <= size <= _MAX_OCTAL_SIZE:  # the usual case: one plain ustar header
        return _header(raw, size, mode, mtime, b"0")
    split = _ustar_name(raw)
    pax = b""
    if split is None:
        pax += _pax_record("path", raw)
        split = (b"", raw[:100])
    big = size > _MAX_OCTAL_SIZE
    if big:
        pax += _pax_record("size", str(size).encode())
    header = _header(split[1], 0 if big else size, mode, mtime, b"0", split[0])
    if not pax:
        return header
    pax_name = b"PaxHeaders/" + os.path.basename(raw)[:80]
    block = _header(pax_name, len(pax), 0o444, mtime, b"x")
    return block + pax + bytes(-len(pax) % BLOCK) + header


class TarWriter:
    """Write regular-file members as a deterministic tar stream.

    Same calls, same bytes: fixed mtime (default 0), uid/gid 0, empty user and
    group names, fixed mode. The end-of-archive marker (two zero blocks,
    POSIX ustar) is written only by :meth:`finish`, so a stream cut short by
    an error is recognisably incomplete.

    :param stream: a writable binary stream; it is not closed. A raw
        (unbuffered) one is wrapped so that a short write is resumed
        (:func:`tarproc.io.iov.whole_writes`)
    :param mtime: modification time stored in every header, seconds
    :param mode: permission bits stored in every header
    :param fd: the blocking file descriptor ``stream`` writes to, when
        ``stream`` is a buffered writer of it with nothing in between (no
        compression): :meth:`add_all` then writes a sample of
        :data:`GATHER_MIN` bytes or more with one ``writev(2)`` after
        flushing ``stream`` (the same bytes, in the same order), as long as
        :attr:`stream` is still that stream (a caller may wrap it, e.g. to
        hash what is written: then every byte goes through the wrapper)
    """

    def __init__(self, stream: BinaryIO, mtime: int = 0, mode: int = 0o444, fd: int | None = None):
        stream = whole_writes(stream)
        self.stream = stream
        self.mtime = mtime
        self.mode = mode
        self.fd = fd
        self._fd_stream = stream  # the stream fd belongs to
        #: bytes written so far
        self.bytes_written = 0
        self.members_written = 0
        self.finished = False

    def add(self, name: str, data: bytes | LargeField) -> None:
        """Write one member: header(s), data, zero padding to 512 bytes. A
        :class:`tarproc.io.spool.LargeField` is copied from its file in pieces."""
        header = member_header(name, len(data), self.mode, self.mtime)
        pad = -len(data) % BLOCK
        write = self.stream.write
        if len(data) < SMALL_MEMBER:
            chunk = header + data + ZERO_BLOCK[:pad]
            write(chunk)
            self.bytes_written += len(chunk)
        else:
            write(header)
            if data.__class__ is LargeField:
                data.write_to(write)  # in pieces, from its file
            else:
                write(data)
            if pad:
                write(ZERO_BLOCK[:pad])
            self.bytes_written += len(header) + len(data) + pad
        self.members_written += 1

    def add_all(self, members) -> None:
        """Write ``(name, data)`` members, the same bytes as :meth:`add` for
        each, the small ones gathered into one write (a sample's members,
        typically; one ``writev(2)`` of their own buffers from
        :data:`GATHER_MIN` bytes on, with ``fd``). The counters count what
        was written."""
        mode, mtime = self.mode, self.mtime
        plain = _fits_ustar(mode, mtime)  # once for all the members (else member_header raises)
        write = self.stream.write
        parts: list = []
        size = count = 0
        for name, data in members:
            n = len(data)
            if n >= SMALL_MEMBER:
                if parts:
                    write(b"".join(parts))
                    self.bytes_written += size
                    self.members_written += count
                    parts = []
                    size = count = 0
                self.add(name, data)
                continue
            raw = name.encode("utf-8", "surrogateescape")
            # member_header's usual case (a name of at most 100 bytes; n is small), without its call
            if plain and len(raw) <= 100:
                header = _header(raw, n, mode, mtime, b"0")
            else:
                header = member_header(name, n, mode, mtime)
            pad = -n % BLOCK
            parts += (header, data, ZERO_BLOCK[:pad])
            size += len(header) + n + pad
            count += 1
        if parts:
            if size >= GATHER_MIN and self.fd is not None and self.stream is self._fd_stream:
                self.stream.flush()  # what is buffered goes first
                write_all(self.fd, parts, size)
            else:
                write(b"".join(parts))
            self.bytes_written += size
            self.members_written += count

    def finish(self) -> None:
        """Write the end-of-archive marker (two zero blocks)."""
        self.stream.write(bytes(2 * BLOCK))
        self.bytes_written += 2 * BLOCK
        self.finished = True
