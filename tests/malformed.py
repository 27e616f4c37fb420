"""The malformed-input corpus: bad tar streams with the expected outcome.

:func:`cases` returns a list of :class:`Case`, each holding the input bytes,
the exit status a tool must give, a regex for its one-line stderr message (or
for each warning), the library exception class, and the keys of the samples
that must survive (be yielded by the library and written by a tool) — the
complete samples before the fault, never the partial one.

Every case is built from a small well-formed shard of samples ``s000``,
``s001``, ... (fields ``cls`` and ``txt``), written by our own writer or by
:mod:`tarfile` for member types we never write, then damaged in one place.

    python tests/malformed.py DIR     # write the corpus as DIR/<name>.tar
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
import os
import sys
import tarfile
from dataclasses import dataclass, field

import zstandard

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tarproc.errors import ArchiveError, CompressionError, SampleError, TarprocError, TruncatedError
from tarproc.io.tario import BLOCK, MAX_RECORD, TarWriter, _byte_sum  # noqa: E402

KEYS = [f"s{i:03d}" for i in range(4)]


@dataclass
class Case:
    """One malformed (or tricky but valid) input.

    :ivar name: identifier, used as the test id
    :ivar data: the input bytes (possibly compressed)
    :ivar status: exit status of a tool reading it (0 success, 1 warnings,
        3 bad data)
    :ivar message: regex searched in the error line, or in each warning line
    :ivar survivors: keys of the samples that are yielded / written, in order
    :ivar error: library exception class raised while iterating (None: no error)
    :ivar warnings: number of warning lines (members skipped)
    """

    name: str
    data: bytes
    status: int
    message: str
    survivors: list[str]
    error: type[TarprocError] | None = None
    warnings: int = 0
    members: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def expected_members(self) -> list[tuple[str, bytes]]:
        """(name, bytes) of the surviving samples' members, sorted."""
        return sorted((n, d) for n, d in self.members.items() if n.split(".", 1)[0] in self.survivors)


def sample_members(keys=KEYS) -> dict[str, bytes]:
    """The members of the good samples, in order: ``key.cls``, ``key.txt``.

    ``txt`` sizes straddle the 512-byte block (0, 511, 512, 513, ...)."""
    out = {}
    for i, key in enumerate(keys):
        out[f"{key}.cls"] = str(i).encode()
        out[f"{key}.txt"] = bytes((i * 7 + j) % 251 for j in range((0, 511, 512, 513, 1500)[i % 5]))
    return out


def tar_bytes(members: dict[str, bytes] | list[tuple[str, bytes]], end: bool = True) -> bytes:
    """A tar stream of ``members`` written by our TarWriter (end marker when ``end``)."""
    out = io.BytesIO()
    writer = TarWriter(out)
    for name, data in members.items() if isinstance(members, dict) else members:
        writer.add(name, data)
    if end:
        writer.finish()
    return out.getvalue()


def offsets(data: bytes) -> dict[str, int]:
    """Header offset of every regular member of a (valid, uncompressed) tar."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return {m.name: m.offset for m in tf}


def set_field(data: bytes, header_offset: int, start: int, value: bytes, fix_checksum: bool = True) -> bytes:
    """Overwrite bytes ``start:start+len(value)`` of the header at
    ``header_offset`` and recompute its checksum."""
    buf = bytearray(data)
    h = header_offset
    buf[h + start : h + start + len(value)] = value
    if fix_checksum:
        buf[h + 148 : h + 156] = b"%06o\0 " % _byte_sum(bytes(buf[h : h + BLOCK]))
    return bytes(buf)


def special_member(name: str, kind: bytes, linkname: str = "") -> bytes:
    """A non-regular member (no data) as written by tarfile, without end marker."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def with_member_inserted(members: dict[str, bytes], before: str, chunk: bytes) -> bytes:
    """The good shard with raw header bytes ``chunk`` inserted before member ``before``."""
    good = tar_bytes(members)
    at = offsets(good)[before]
    return good[:at] + chunk + good[at:]


def complete_before(good: bytes, members: dict[str, bytes], n: int) -> list[str]:
    """Keys of the samples a strict reader can pass on when only the first
    ``n`` bytes of ``good`` arrive: a sample is complete once the first member
    of the next sample has been read whole (header and data)."""
    off = offsets(good)
    names = sorted(off, key=off.get)
    keys = []
    for name in names:
        key = name.split(".", 1)[0]
        if keys and keys[-1][0] == key:
            continue
        keys.append((key, off[name] + BLOCK + len(members[name])))
    return [key for (key, _), (_, end) in zip(keys, keys[1:]) if end <= n]


DECOMPRESSORS = {
    "bzip2": bz2.BZ2Decompressor,
    "xz": lzma.LZMADecompressor,
    "zstd": lambda: zstandard.ZstdDecompressor().decompressobj(),
}


def recoverable(decompressor, data: bytes) -> int:
    """How many bytes a streaming decompressor yields from a cut stream."""
    return len(decompressor.decompress(data))


def cases() -> list[Case]:
    """The whole corpus (about 40 cases), deterministic bytes."""
    members = sample_members()
    good = tar_bytes(members)
    body = good[: -2 * BLOCK]  # no end marker
    off = offsets(good)
    all_keys = list(KEYS)
    before_last = all_keys[:-1]
    out: list[Case] = []

    def add(name, data, status, message, survivors, error=None, warnings=0, extra=None):
        m = dict(members)
        if extra:
            m.update(extra)
        out.append(Case(name, data, status, message, list(survivors), error, warnings, m))

    # -------------------------------------------------------- not tar at all
    add("empty", b"", 3, r"empty input, no tar data", [], TruncatedError)
    add("garbage", b"this is not a tar archive\n" * 40, 3, r"not a tar archive \(no tar header at offset 0\)", [],
        ArchiveError)
    add("garbage-short", b"hello\n", 3, r"cut inside a header at offset 6\b", [], TruncatedError)

    # ------------------------------------------------------------------ cuts
    h = off["s002.txt"]  # second member of the third sample
    add("cut-inside-header", good[: h + 100], 3, rf"cut inside a header at offset {h + 100}\b.*'s001'",
        KEYS[:2], TruncatedError)
    add("cut-inside-data", good[: h + BLOCK + 200], 3, rf"cut inside data at offset {h + BLOCK + 200}\b.*'s001'",
        KEYS[:2], TruncatedError)
    h1 = off["s001.txt"]  # 511 bytes of data, 1 byte of padding
    add("cut-inside-padding", good[: h1 + BLOCK + 511], 3, r"cut inside data padding", KEYS[:1], TruncatedError)
    add("cut-at-member-boundary", body, 3, rf"cut at offset {len(body)}: no end-of-archive marker.*'s002'",
        before_last, TruncatedError)
    # cut after one whole zero block of the marker: every member is whole, so the last sample is passed on
    add("cut-inside-end-marker", body + bytes(BLOCK + 188), 3,
        rf"cut inside the end-of-archive marker: a lone zero block at offset {len(body)}\b.*'s003'",
        KEYS, TruncatedError)
    add("lone-zero-block-at-end", body + bytes(BLOCK), 3, rf"lone zero block at offset {len(body)}\b.*'s003'",
        KEYS, TruncatedError)
    add("cut-inside-first-marker-block", body + bytes(188), 3, rf"cut inside a header at offset {len(body) + 188}\b.*'s002'",
        before_last, TruncatedError)

    # ------------------------------------------------------------- checksums
    add("bad-checksum-first-header", set_field(good, 0, 0, b"X", fix_checksum=False), 3,
        r"bad header checksum at offset 0\b", [], ArchiveError)
    h = off["s002.cls"]
    add("bad-checksum-later-header", set_field(good, h, 0, b"X", fix_checksum=False), 3,
        rf"bad header checksum at offset {h}\b.*'s000'", KEYS[:1], ArchiveError)
    add("bad-checksum-field-not-octal", set_field(good, h, 148, b"zzzzzz\0 ", fix_checksum=False), 3,
        rf"bad header checksum at offset {h}\b", KEYS[:1], ArchiveError)

    # ----------------------------------------------------------------- sizes
    h = off["s002.txt"]
    add("negative-size-octal", set_field(good, h, 124, b"-0000000001\0"), 3, rf"negative size -1 .*offset {h}\b",
        KEYS[:2], ArchiveError)
    add("negative-size-base256", set_field(good, h, 124, b"\xff" * 12), 3, rf"negative size -1 .*offset {h}\b",
        KEYS[:2], ArchiveError)
    add("absurd-size-octal", set_field(good, h, 124, b"77777777777\0"), 3, rf"cut inside data .*header at offset {h}\b",
        KEYS[:2], TruncatedError)
    add("absurd-size-base256", set_field(good, h, 124, b"\x80" + (1 << 80).to_bytes(11, "big")), 3,
        rf"cut inside data .*header at offset {h}\b", KEYS[:2], TruncatedError)
    add("bad-size-field", set_field(good, h, 124, b"12x45678901\0"), 3, rf"bad size field .*offset {h}\b",
        KEYS[:2], ArchiveError)

    # ------------------------------------------------------ extended headers
    huge = MAX_RECORD * 4
    h = off["s001.cls"]
    for kind, label in ((b"L", "gnu-longname"), (b"x", "pax")):
        header = set_field(tar_bytes({"././@LongLink": b""}, end=False), 0, 156, kind)
        record = set_field(header, 0, 124, b"%011o\0" % huge)
        add(f"huge-{label}-record", with_member_inserted(members, "s001.cls", record + bytes(4 * BLOCK)), 3,
            rf"extended header of {huge} bytes at offset {h} exceeds", [], ArchiveError)
    pax = set_field(tar_bytes({"PaxHeaders/x": b"12 path=abc\n" + b"9 bad\n"}, end=False), 0, 156, b"x")
    add("malformed-pax-record", with_member_inserted(members, "s001.cls", pax), 3, rf"malformed pax record .*offset {h}\b",
        [], ArchiveError)
    longname = set_field(tar_bytes({"././@LongLink": b"s009.txt\0"}, end=False), 0, 156, b"L")
    add("cut-after-long-name", body + longname, 3, r"cut after an extended header", before_last, TruncatedError)

    # -------------------------------------------- zero blocks, concatenation
    h = off["s002.cls"]
    add("zero-block-mid-stream", good[:h] + bytes(BLOCK) + good[h:], 0, "", all_keys)
    add("two-zero-blocks-mid-stream", good[:h] + bytes(2 * BLOCK) + good[h:], 0, "", all_keys)
    other = {f"t{i:03d}.txt": b"other %d\n" % i for i in range(3)}
    add("concatenated-archives", good + tar_bytes(other), 0, "", all_keys + ["t000", "t001", "t002"], extra=other)
    add("concatenated-archives-padded", good + bytes(10 * BLOCK) + tar_bytes(other), 0, "",
        all_keys + ["t000", "t001", "t002"], extra=other)
    add("trailing-zero-padding", good + bytes(20 * BLOCK), 0, "", all_keys)
    add("trailing-zero-bytes-short", good + bytes(100), 0, "", all_keys)
    # the archive before the garbage is complete, so all its samples are passed on before the error
    add("garbage-after-end-marker", good + b"garbage!" * 64, 3,
        rf"garbage after the end-of-archive marker at offset {len(good)}\b.*'s003'", all_keys, ArchiveError)
    add("garbage-after-end-marker-short", good + bytes(BLOCK) + b"oops\n", 3,
        rf"garbage after the end-of-archive marker at offset {len(good) + BLOCK}\b", all_keys, ArchiveError)

    # ----------------------------------------------------------- compression
    gz = gzip.compress(good, mtime=0)
    bad_crc = bytearray(gz)
    bad_crc[-8] ^= 0xFF
    add("gzip-bad-crc", bytes(bad_crc), 3, r"corrupt gzip stream: CRC-32 or length check failed", [], CompressionError)
    # everything decompressed before the cut is passed on: no complete sample is lost
    cut = gz[: len(gz) // 2]
    add("gzip-truncated", cut, 3, r"gzip stream is truncated",
        complete_before(good, members, recoverable(zlib.decompressobj(31), cut)), CompressionError)
    add("gzip-truncated-trailer", gz[:-4], 3, r"gzip stream is truncated", before_last, CompressionError)
    thirds = (0, len(good) // 3 + 77, 2 * len(good) // 3 + 5, len(good))
    multi = b"".join(gzip.compress(good[a:b], mtime=0) for a, b in zip(thirds, thirds[1:]))
    add("gzip-several-members", multi, 0, "", all_keys)
    add("gzip-corrupt-deflate", gz[:10] + b"\xff" * 40 + gz[50:], 3, r"corrupt gzip stream", [], CompressionError)
    for label, compress in (
        ("bzip2", bz2.compress),
        ("xz", lzma.compress),
        ("zstd", zstandard.ZstdCompressor().compress),
    ):
        z = compress(good)
        cut = z[: len(z) * 2 // 3]
        n = recoverable(DECOMPRESSORS[label](), cut)
        add(f"{label}-truncated", cut, 3, rf"{label} stream is truncated", complete_before(good, members, n),
            CompressionError)
    zst = zstandard.ZstdCompressor()
    add("zstd-several-frames", zst.compress(good[:3000]) + zst.compress(good[3000:]), 0, "", all_keys)

    # ------------------------------------------------ members we never follow
    for kind, label, link, what in (
        (tarfile.SYMTYPE, "symlink", "/etc/passwd", r"symbolic link 's001\.lnk' -> '/etc/passwd'"),
        (tarfile.LNKTYPE, "hardlink", "s000.cls", r"hard link 's001\.lnk' -> 's000\.cls'"),
        (tarfile.CHRTYPE, "char-device", "", r"character device 's001\.lnk'"),
        (tarfile.BLKTYPE, "block-device", "", r"block device 's001\.lnk'"),
        (tarfile.FIFOTYPE, "fifo", "", r"FIFO 's001\.lnk'"),
    ):
        add(f"{label}-member", with_member_inserted(members, "s001.txt", special_member("s001.lnk", kind, link)), 1,
            rf"skipping {what} at offset {off['s001.txt']}\b", all_keys, warnings=1)
    add("directory-member", with_member_inserted(members, "s001.cls", special_member("s001", tarfile.DIRTYPE)),
        0, "", all_keys)

    # ------------------------------------------------------------ bad names
    for name, label, why in (
        ("../tarproc-malformed-escape.txt", "dotdot-name", r"member name contains '\.\.'"),
        ("s001/../../tarproc-malformed-escape.txt", "inner-dotdot-name", r"member name contains '\.\.'"),
        ("/tmp/tarproc-malformed-absolute.txt", "absolute-name", r"absolute member name"),
    ):
        data = with_member_inserted(members, "s002.cls", tar_bytes({name: b"evil\n"}, end=False))
        add(label, data, 1, rf"{why}: '{name}'", all_keys, warnings=1)
    add("member-without-key", with_member_inserted(members, "s002.cls", tar_bytes({"README": b"hi\n"}, end=False)),
        1, r"member has no key .*'README'", all_keys, warnings=1)
    add("member-with-leading-dot", with_member_inserted(members, "s002.cls", tar_bytes({"d/.hidden": b"x"}, end=False)),
        1, r"member has no key .*'d/\.hidden'", all_keys, warnings=1)

    # --------------------------------------------------------------- samples
    dup = [(n, d) for n, d in members.items()]
    dup.insert(4, ("s001.cls", b"again"))  # after s001.cls, s001.txt
    add("duplicate-field", tar_bytes(dup), 3, r"field 'cls' repeated in sample 's001'", KEYS[:1], SampleError)
    back = list(members.items()) + [("s000.extra", b"late")]
    add("non-adjacent-key", tar_bytes(back), 3, r"key 's000' comes back .*tarsort", all_keys, SampleError)
    return out


def write_corpus(directory: str) -> list[str]:
    """Write every case as ``DIRECTORY/<name>.tar``; returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for case in cases():
        path = os.path.join(directory, case.name + ".tar")
        with open(path, "wb") as f:
            f.write(case.data)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_corpus(sys.argv[1] if len(sys.argv) > 1 else "malformed"):
        print(p)
