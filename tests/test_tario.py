"""tarproc.io.tario against the references: the stdlib tarfile, CPython's own
test archive, GNU tar and webdataset, on valid input (bad input is in
test_malformed.py)."""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tarproc.io import tario
from tarproc.errors import TruncatedError, UsageError
from tarproc.samples import group_samples
from tarproc.io.sinks import open_sink
from tarproc.io.tario import BLOCK, TarWriter, checksum_ok, iter_members, member_header

SIZES = [0, 1, 100, 511, 512, 513, 1023, 1024, 1025, 4096, 10_000]
NAMES = [
    "a.txt",
    "dir/sub/b.bin",
    "n01440764_10026.JPEG",
    "x" * 99 + ".t",  # 101 bytes: prefix split needed
    "p" * 120 + "/" + "q" * 90 + ".data",  # 216 bytes: ustar prefix + name
    "/".join(["deep"] * 40) + "/leaf.txt",  # > 200 bytes, splittable
    "L" * 200 + "/" + "M" * 150 + ".long",  # > 256 bytes: pax or GNU long name only
    "ünïcødé/文件-ファイル.txt",
    "日本語" * 20 + "/" + "名前" * 20 + "/é.txt",  # > 256 bytes of UTF-8
    "space name/with  spaces.txt",
    "empty.file",
]


# ------------------------------------------------------------------ helpers
def reference(data: bytes) -> list[tuple[str, bytes]]:
    """Regular members (name, bytes) read by tarfile in stream mode."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tf:
        out = []
        for m in tf:
            if m.isreg():
                out.append((m.name, tf.extractfile(m).read()))
        return out


def ours(data: bytes, warn=None) -> list[tuple[str, bytes]]:
    return [(m.name, m.data) for m in iter_members(io.BytesIO(data), "test", warn or (lambda m: None))]


def payload(i: int, size: int) -> bytes:
    return bytes((i * 31 + j * 7) % 256 for j in range(size))


def tarfile_archive(fmt: int, names=NAMES, specials: bool = True) -> bytes:
    """An archive written by tarfile in ``fmt`` with files of many sizes,
    plus directories, links, a FIFO (which our reader skips)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8") as tf:
        for i, name in enumerate(names):
            if fmt == tarfile.USTAR_FORMAT and len(name.encode()) > 100 and tario._ustar_name(name.encode()) is None:
                continue  # ustar cannot hold it
            size = SIZES[i % len(SIZES)] if name != "empty.file" else 0
            info = tarfile.TarInfo(name)
            info.size = size
            info.mtime = 1_600_000_000 + i
            info.mode = 0o640
            tf.addfile(info, io.BytesIO(payload(i, size)))
            if specials and i % 4 == 0:
                d = tarfile.TarInfo(f"dir{i}")
                d.type = tarfile.DIRTYPE
                tf.addfile(d)
                link = tarfile.TarInfo(f"link{i}.lnk")
                link.type = tarfile.SYMTYPE
                link.linkname = "target"
                tf.addfile(link)
                fifo = tarfile.TarInfo(f"fifo{i}")
                fifo.type = tarfile.FIFOTYPE
                tf.addfile(fifo)
    return buf.getvalue()


class Trickle(io.RawIOBase):
    """A stream that returns short reads of random lengths, like a pipe."""

    def __init__(self, data: bytes, seed: int = 0, largest: int = 700):
        self.data = memoryview(data)
        self.rng = random.Random(seed)
        self.largest = largest

    def readable(self):
        return True

    def read(self, n=-1):
        if n is None or n < 0:
            n = len(self.data)
        n = min(n, self.rng.randint(1, self.largest))
        out, self.data = bytes(self.data[:n]), self.data[n:]
        return out


# ---------------------------------------------------- tarfile as reference
@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["ustar", "gnu", "pax"])
def test_same_as_tarfile(fmt):
    data = tarfile_archive(fmt)
    warnings = []
    got = ours(data, warnings.append)
    assert got == reference(data)
    assert len(got) >= 8
    assert {"a.txt", "ünïcødé/文件-ファイル.txt", "empty.file"} <= {n for n, _ in got}
    if fmt != tarfile.USTAR_FORMAT:
        assert "L" * 200 + "/" + "M" * 150 + ".long" in {n for n, _ in got}
    # links and FIFOs are skipped with a warning naming them; directories silently
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert len(warnings) == sum(1 for m in tf if m.issym() or m.isfifo()) >= 4
    assert any("symbolic link 'link0.lnk' -> 'target'" in w for w in warnings)
    assert any("FIFO 'fifo0'" in w for w in warnings)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT], ids=["ustar", "gnu", "pax"])
def test_header_fields_and_offsets_as_tarfile(fmt):
    data = tarfile_archive(fmt, specials=False)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        infos = [m for m in tf if m.isreg()]
    members = list(iter_members(io.BytesIO(data)))
    assert [m.name for m in members] == [i.name for i in infos]
    assert [m.mode for m in members] == [i.mode for i in infos]
    assert [m.mtime for m in members] == [i.mtime for i in infos]
    assert [m.offset for m in members] == [i.offset for i in infos]
    assert all(len(m.header) == BLOCK and checksum_ok(m.header) for m in members)


def test_short_reads_like_a_pipe():
    data = tarfile_archive(tarfile.PAX_FORMAT)
    expected = reference(data)
    for seed in range(5):
        assert [(m.name, m.data) for m in iter_members(Trickle(data, seed))] == expected


def test_member_larger_than_read_chunk(monkeypatch):
    """Data is read in pieces of READ_CHUNK bytes; the pieces are joined."""
    monkeypatch.setattr(tario, "READ_CHUNK", 1000)
    buf = io.BytesIO()
    writer = TarWriter(buf)
    big = payload(3, 10_007)
    writer.add("big.bin", big)
    writer.add("small.txt", b"x")
    writer.finish()
    assert ours(buf.getvalue()) == [("big.bin", big), ("small.txt", b"x")]
    assert ours(buf.getvalue()) == reference(buf.getvalue())
    with pytest.raises(TruncatedError, match=r"cut inside data at offset 5512 \(member header at offset 0\)"):
        ours(buf.getvalue()[:5512])


def _with_size_field(value: bytes, data: bytes = b"z" * 668) -> bytes:
    """One ustar member whose size field is written as ``value``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo("f.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    raw = bytearray(buf.getvalue())
    raw[124:136] = value
    raw[148:156] = b"%06o\0 " % tario._byte_sum(bytes(raw[:BLOCK]))
    return bytes(raw)


@pytest.mark.parametrize(
    "field",
    [
        b"%011o\0" % 668,  # the usual layout
        b"%011o " % 668,  # space-terminated
        b"%012o" % 668,  # all 12 digits, no terminator (GNU tar accepts it)
        b"  %08o\0 " % 668,  # leading spaces
        b"\x80" + (668).to_bytes(11, "big"),  # GNU base-256
    ],
    ids=["nul", "space", "twelve-digits", "leading-spaces", "base256"],
)
def test_numeric_field_layouts(field):
    data = _with_size_field(field)
    assert reference(data) == [("f.txt", b"z" * 668)]
    assert ours(data) == [("f.txt", b"z" * 668)]


def test_signed_checksum_accepted():
    """Old writers summed signed bytes; POSIX readers accept both sums."""
    header = bytearray(member_header("é.txt", 0))
    signed = sum(b - 256 if b > 127 else b for b in header[:148] + b" " * 8 + header[156:])
    header[148:156] = b"%06o\0 " % signed
    assert checksum_ok(bytes(header))
    assert ours(bytes(header) + bytes(2 * BLOCK)) == [("é.txt", b"")]


def test_old_gnu_sparse_member_with_extension_blocks():
    """An old-format GNU sparse member whose map continues in extension
    blocks (4 entries in the header, 21 in each extension block) is read
    with its holes as zero bytes, and the next member is read."""
    chunks = [(i * 1000, 10) for i in range(30)]  # 4 in the header, 21 + 5 in two extension blocks
    entry = b"".join(b"%011o\0%011o\0" % pair for pair in chunks)
    header = bytearray(member_header("sparse.bin", 300))
    header[156:157] = b"S"
    header[386:482] = entry[: 4 * 24]
    header[482] = 1  # isextended
    header[483:495] = b"%011o\0" % 30000
    header[148:156] = b"%06o\0 " % tario._byte_sum(bytes(header))
    first = bytearray(BLOCK)
    first[: 21 * 24] = entry[4 * 24 : 25 * 24]
    first[504] = 1
    second = bytearray(BLOCK)
    second[: 5 * 24] = entry[25 * 24 :]
    stored = b"".join(bytes([i + 1]) * 10 for i in range(30))
    tail = member_header("next.txt", 2) + b"ok" + bytes(510) + bytes(2 * BLOCK)
    data = bytes(header) + bytes(first) + bytes(second) + stored + bytes(BLOCK - 300) + tail
    expected = bytearray(30000)
    for i, (offset, n) in enumerate(chunks):
        expected[offset : offset + n] = bytes([i + 1]) * n
    warnings = []
    assert ours(data, warnings.append) == [("sparse.bin", bytes(expected)), ("next.txt", b"ok")]
    assert warnings == []
    # a map that does not add up to the stored bytes is bad data
    header[495 - 12 : 495] = b"%011o\0" % 100  # a real size the map overflows
    header[148:156] = b"%06o\0 " % tario._byte_sum(bytes(header))
    with pytest.raises(tario.ArchiveError, match="bad map of the sparse member 'sparse.bin' at offset 0"):
        ours(bytes(header) + bytes(first) + bytes(second) + stored + bytes(BLOCK - 300) + tail)


def _sparse_files(directory: Path) -> list[Path]:
    """Two sparse files: one with two data runs and a hole at its end, one
    with 40 runs (more than an old GNU header and one extension block hold)."""
    one = directory / "holes.bin"
    with open(one, "wb") as handle:
        handle.seek(100_000)
        handle.write(b"hello" * 1000)
        handle.seek(3_000_000)
        handle.write(b"world" * 300)
        handle.truncate(5_000_000)
    many = directory / "many.bin"
    with open(many, "wb") as handle:
        for i in range(40):
            handle.seek(i * 70_000)
            handle.write(bytes([i + 1]) * 1000)
        handle.truncate(3_000_000)
    return [one, many]


GNU_SPARSE_FORMATS = [["--format=pax", "--sparse-version=0.0"], ["--format=pax", "--sparse-version=0.1"],
                      ["--format=pax", "--sparse-version=1.0"], ["-H", "gnu"]]


def _gnu_tar() -> str | None:
    tar = shutil.which("tar")
    if tar is None or b"GNU tar" not in subprocess.run([tar, "--version"], capture_output=True).stdout:
        return None
    return tar


@pytest.mark.skipif(_gnu_tar() is None, reason="needs GNU tar")
@pytest.mark.parametrize("options", GNU_SPARSE_FORMATS, ids=["pax-0.0", "pax-0.1", "pax-1.0", "old-gnu"])
def test_gnu_sparse_members_made_by_gnu_tar_are_read(tmp_path, options):
    files = _sparse_files(tmp_path)
    archive = tmp_path / "sparse.tar"
    subprocess.run([_gnu_tar(), "--sparse", *options, "-cf", str(archive), "-C", str(tmp_path), "holes.bin", "many.bin"],
                   check=True)
    assert archive.stat().st_size < 1_000_000  # stored sparse: only the data runs
    warnings = []
    assert ours(archive.read_bytes(), warnings.append) == [(f.name, f.read_bytes()) for f in files]
    assert warnings == []


@pytest.mark.skipif(_gnu_tar() is None, reason="needs GNU tar")
def test_tools_copy_gnu_sparse_members_whole(tmp_path):
    from conftest import run

    files = _sparse_files(tmp_path)
    archive = tmp_path / "sparse.tar"
    subprocess.run([_gnu_tar(), "--sparse", "-H", "gnu", "-cf", str(archive), "-C", str(tmp_path), "holes.bin",
                    "many.bin"], check=True)
    out = run(["tarcats", str(archive), "-o", "-"])
    assert out.returncode == 0 and out.stderr == b"", out.stderr
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tf:
        assert [(m.name, tf.extractfile(m).read()) for m in tf] == [(f.name, f.read_bytes()) for f in files]


def test_zero_blocks_read_through_and_concatenation():
    a = tarfile_archive(tarfile.GNU_FORMAT, NAMES[:3], specials=False)
    b = tarfile_archive(tarfile.PAX_FORMAT, NAMES[3:6], specials=False)
    assert ours(a + b) == reference(a) + reference(b)
    assert ours(a + bytes(BLOCK * 7) + b + bytes(BLOCK * 3)) == reference(a) + reference(b)


# -------------------------------------------------------- CPython testtar
def find_testtar() -> Path | None:
    try:
        import test
    except ImportError:
        return None
    base = os.path.dirname(test.__file__)
    for candidate in (os.path.join(base, "testtar.tar"), os.path.join(base, "archivetestdata", "testtar.tar")):
        if os.path.exists(candidate):
            return Path(candidate)
    return None


def test_cpython_testtar():
    path = find_testtar()
    if path is None:
        pytest.skip("CPython's test package (test/testtar.tar) is not installed")
    data = path.read_bytes()
    with tarfile.open(path) as tf:
        # sparse files (old GNU, pax 0.0, 0.1, 1.0) are expanded, by tarfile and by us
        expected = [(m.name, tf.extractfile(m).read()) for m in tf if m.isreg()]
        sparse = [m.name for m in tf if m.isreg() and m.sparse is not None]
    warnings = []
    got = ours(data, warnings.append)
    assert got == expected
    assert len(got) >= 20 and len(sparse) >= 4
    assert not [w for w in warnings if "unknown type" in w or "sparse" in w]
    assert any("hard link" in w for w in warnings) and any("character device" in w for w in warnings)


# --------------------------------------------------- shared real shards
def test_shared_testdata_same_as_tarfile_and_webdataset(testdata):
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    from tarproc.io.compress import decompressing_reader

    shards = sorted(p for p in testdata.iterdir() if p.suffix in (".tar", ".tgz", ".gz"))
    assert shards
    for path in shards:
        with open(path, "rb") as f:
            members = list(iter_members(decompressing_reader(f, str(path)), str(path)))
        got = [(m.name, m.data) for m in members]
        assert got == reference(path.read_bytes()), path
        with open(path, "rb") as f:
            wds = [(d["fname"], d["data"]) for d in tar_file_iterator(f, skip_meta=None)]
        assert got == wds, path
        samples = list(group_samples(members, str(path)))
        with open(path, "rb") as f:
            files = ({**d, "__url__": str(path)} for d in tar_file_iterator(f, skip_meta=None))
            wds_samples = list(group_by_keys(files, lcase=False))
        assert [s["__key__"] for s in samples] == [s["__key__"] for s in wds_samples], path
        for mine, theirs in zip(samples, wds_samples):
            assert {k: v for k, v in mine.items() if not k.startswith("__")} == {
                k: v for k, v in theirs.items() if not k.startswith("__")
            }


# ------------------------------------------------------------- GNU tar
def gnu_tar() -> str:
    tar = shutil.which("tar") or "/usr/bin/tar"
    try:
        out = subprocess.run([tar, "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        out = ""
    if "GNU tar" not in out:
        pytest.skip("GNU tar is not installed")
    return tar


def written_archive(names=NAMES) -> tuple[bytes, list[tuple[str, bytes]]]:
    members = [(name, payload(i, SIZES[i % len(SIZES)])) for i, name in enumerate(names)]
    buf = io.BytesIO()
    writer = TarWriter(buf, mtime=1_700_000_000, mode=0o644)
    for name, data in members:
        writer.add(name, data)
    writer.finish()
    return buf.getvalue(), members


def test_gnu_tar_lists_and_extracts_what_we_write(tmp_path):
    tar = gnu_tar()
    data, members = written_archive()
    path = tmp_path / "ours.tar"
    path.write_bytes(data)
    env = dict(os.environ, LC_ALL="C.UTF-8")
    listing = subprocess.run([tar, "tf", str(path)], capture_output=True, env=env, check=True)
    with tarfile.open(path, encoding="utf-8") as tf:
        names = tf.getnames()
    assert listing.stdout.decode().splitlines() == names == [n for n, _ in members]
    assert listing.stderr == b""
    out = tmp_path / "x"
    out.mkdir()
    extract = subprocess.run([tar, "xf", str(path), "-C", str(out)], capture_output=True, env=env)
    assert extract.returncode == 0, extract.stderr
    for name, payload_ in members:
        assert (out / name).read_bytes() == payload_, name
    env["TZ"] = "UTC"
    verbose = subprocess.run([tar, "tvf", str(path), "--numeric-owner"], capture_output=True, env=env, check=True)
    first = verbose.stdout.decode().splitlines()[0]
    assert first.startswith("-rw-r--r-- 0/0 ") and "2023-11-14" in first


def test_we_read_what_gnu_tar_writes(tmp_path):
    tar = gnu_tar()
    src = tmp_path / "src"
    for i, name in enumerate(NAMES):
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload(i, SIZES[i % len(SIZES)]))
    for fmt in ("gnu", "posix", "oldgnu"):
        out = subprocess.run(
            [tar, "cf", "-", f"--format={fmt}", "--sort=name", "-C", str(src), "."],
            capture_output=True,
            check=True,
            env=dict(os.environ, LC_ALL="C.UTF-8"),
        ).stdout
        got = ours(out)
        assert got == reference(out), fmt
        assert len(got) == len(NAMES)


# ---------------------------------------------------------------- writer
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.lists(
                st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=40),
                min_size=1,
                max_size=8,
            ).map("/".join),
            st.binary(max_size=1600),
        ),
        max_size=6,
    ),
    st.integers(0, 8**11 - 1),
)
def test_round_trip_write_read_is_identity(members, mtime):
    buf = io.BytesIO()
    writer = TarWriter(buf, mtime=mtime)
    for name, data in members:
        writer.add(name, data)
    writer.finish()
    out = buf.getvalue()
    assert len(out) % BLOCK == 0
    got = list(iter_members(io.BytesIO(out)))
    assert [(m.name, m.data) for m in got] == members
    assert all(m.mtime == mtime and m.mode == 0o444 for m in got)
    assert reference(out) == members  # tarfile agrees


def test_writer_is_deterministic(tmp_path):
    first, _ = written_archive()
    second, _ = written_archive()
    assert first == second
    samples = [{"__key__": f"k{i}", "__source__": "x", "txt": b"%d" % i, "cls": b"1"} for i in range(5)]
    outputs = []
    for n in range(2):
        path = tmp_path / f"o{n}.tar"
        with open_sink(str(path)) as sink:
            for sample in samples:
                sink.write(sample)
        outputs.append(path.read_bytes())
    assert outputs[0] == outputs[1]
    with tarfile.open(tmp_path / "o0.tar") as tf:
        infos = tf.getmembers()
    assert [i.name for i in infos] == [f"k{i}.{f}" for i in range(5) for f in ("txt", "cls")]
    assert {(i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode) for i in infos} == {(0, 0, 0, "", "", 0o444)}


def test_writer_headers():
    # ustar where the name fits, prefix split where it can, pax path otherwise
    assert len(member_header("a" * 100, 5)) == BLOCK
    split = member_header("p" * 150 + "/" + "n" * 100, 5)
    assert len(split) == BLOCK and split[345:495] == b"p" * 150
    long = member_header("n" * 300, 5)
    assert len(long) == 3 * BLOCK and long[156:157] == b"x" and b" path=" + b"n" * 300 + b"\n" in long
    with pytest.raises(UsageError, match="mtime -1"):
        member_header("a", 1, mtime=-1)
    with pytest.raises(UsageError):
        TarWriter(io.BytesIO(), mtime=8**11).add("a.txt", b"")
    for bad in (TarWriter(io.BytesIO(), mtime=8**11), TarWriter(io.BytesIO(), mode=0o10000000)):
        with pytest.raises(UsageError, match="out of range"):  # add_all's fast path checks it too
            bad.add_all([("a.txt", b"x")])
        assert bad.stream.getvalue() == b"" and bad.bytes_written == 0
        bad.add_all([])  # nothing to write: nothing to refuse
    end = io.BytesIO()
    writer = TarWriter(end)
    writer.add("a.txt", b"x")
    assert not end.getvalue().endswith(bytes(2 * BLOCK))
    writer.finish()
    assert end.getvalue().endswith(bytes(2 * BLOCK)) and writer.bytes_written == len(end.getvalue()) == 4 * BLOCK


def test_webdataset_reads_what_we_write(tmp_path):
    import webdataset

    samples = [
        {"__key__": f"dir/n0144_{i:04d}", "__source__": "x", "jpg": payload(i, 700 + i), "cls": b"%d" % (i % 3),
         "meta.json": b'{"i": %d}' % i}
        for i in range(20)
    ]
    path = tmp_path / "wds.tar"
    with open_sink(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    got = list(webdataset.WebDataset(str(path), shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in got] == [s["__key__"] for s in samples]
    for mine, theirs in zip(samples, got):
        assert {k: v for k, v in theirs.items() if not k.startswith("__")} == {
            k: v for k, v in mine.items() if not k.startswith("__")
        }


def test_add_all_writes_the_same_bytes_as_add_one_by_one():
    # a sample's members gathered into one write: small, empty, exactly one
    # block, the 64 KiB threshold on both sides, a pax long name
    members = [("k.a", b"x" * 10), ("k.empty", b""), ("k.block", b"b" * 512), ("k.big", bytes(range(256)) * 256),
               ("k.under", b"u" * 65535), ("k.tail", b"t" * 513), ("d" * 300 + "/k.long", b"long name")]
    one, together = io.BytesIO(), io.BytesIO()
    w1, w2 = TarWriter(one, mtime=7, mode=0o644), TarWriter(together, mtime=7, mode=0o644)
    for name, data in members:
        w1.add(name, data)
    w2.add_all(iter(members))
    assert together.getvalue() == one.getvalue()
    assert (w2.bytes_written, w2.members_written) == (w1.bytes_written, w1.members_written) == (len(one.getvalue()), 7)
