"""The template-based ustar header builder gives the same bytes as the plain
field-by-field construction it replaced (and tarfile reads them alike)."""

from __future__ import annotations

import io
import random
import tarfile

import pytest

from tarproc.io import tario
from tarproc.io.tario import BLOCK, member_header


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def reference_header(name: bytes, size: int, mode: int, mtime: int, typeflag: bytes, prefix: bytes = b"") -> bytes:
    """The former ``tario._header``: every field spelled out, checksum summed
    over the whole block (POSIX ustar: unsigned sum, checksum field as spaces)."""
    header = b"".join(
        (
            name.ljust(100, b"\0"),
            _octal(mode, 8),
            _octal(0, 8),
            _octal(0, 8),
            _octal(size, 12),
            _octal(mtime, 12),
            b"        ",
            typeflag,
            bytes(100),
            b"ustar\x0000",
            bytes(32),
            bytes(32),
            _octal(0, 8),
            _octal(0, 8),
            prefix.ljust(155, b"\0"),
            bytes(12),
        )
    )
    return header[:148] + b"%06o\0 " % sum(header) + header[156:]


def _names(rng: random.Random, n: int) -> list[bytes]:
    alphabet = [bytes([b]) for b in range(1, 256) if b != ord("/")]
    names = [b"", b"a", b"x" * 100, b"\xff" * 100, b"\x01" * 100, "é/ü.txt".encode()]
    for _ in range(n):
        names.append(b"".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 101))))
    return names


def test_header_bytes_equal_the_reference_for_many_names_sizes_modes_mtimes():
    rng = random.Random(4)
    sizes = [0, 1, 511, 512, 513, 8**11 - 1] + [rng.randrange(0, 8**11) for _ in range(50)]
    prefixes = [b"", b"p", b"\xff" * 155, "dir/ü".encode() * 20]
    checked = 0
    for name in _names(rng, 300):
        size = rng.choice(sizes)
        mode = rng.choice([0o444, 0o644, 0, 0o7777777])
        mtime = rng.choice([0, 1, 1700000000, 8**11 - 1])
        typeflag = rng.choice([b"0", b"x"])
        prefix = rng.choice(prefixes)
        got = tario._header(name, size, mode, mtime, typeflag, prefix)
        assert got == reference_header(name, size, mode, mtime, typeflag, prefix), (name, size, mode, mtime, prefix)
        assert len(got) == BLOCK and tario.checksum_ok(got)
        checked += 1
    assert checked == 306


@pytest.mark.parametrize("name", ["a.txt", "d/" * 60 + "f.txt", "x" * 300 + ".bin", "ü" * 80 + "/a.txt"])
@pytest.mark.parametrize("size", [0, 5, 8**11 - 1, 8**11 + 3])
def test_member_header_blocks_match_the_reference_and_tarfile(name, size):
    """The whole member header (with pax path/size when needed) is built
    from blocks equal to the reference's, and tarfile reads the name and size."""
    got = member_header(name, size, 0o444, 7)
    assert len(got) % BLOCK == 0
    last = got[-BLOCK:]
    expected = reference_header(last[:100].rstrip(b"\0"), int(last[124:135], 8), 0o444, 7, b"0",
                                last[345:500].rstrip(b"\0"))
    assert last == expected
    if len(got) > BLOCK:  # pax header block first
        first = got[:BLOCK]
        assert first == reference_header(first[:100].rstrip(b"\0"), int(first[124:135], 8), 0o444, 7, b"x")
    if size < 1000:  # small enough to give tarfile the data too
        body = bytes(size) + bytes(-size % BLOCK)
        info = tarfile.open(fileobj=io.BytesIO(got + body + bytes(2 * BLOCK))).next()
        assert (info.name, info.size, info.mtime, info.mode) == (name, size, 7, 0o444)
